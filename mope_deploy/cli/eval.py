"""``mope eval MODEL --data SPEC``: retrieval recall (or zero-shot accuracy) as a table and JSON."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .common import FORCE_HELP, MODEL_HELP, console, err_console, user_errors


class Task(str, Enum):
    retrieval = "retrieval"
    zeroshot = "zeroshot"


DATA_HELP = ("retrieval: 'synthetic[:SPLIT]', a CSV/TSV (or a folder with captions.csv), a Karpathy JSON, or "
             "WebDataset shards ('shards/{000..009}.tar'); zeroshot: a folder with one sub-folder per class.")


def eval_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    data: str = typer.Option(..., "--data", "-d", help=DATA_HELP),
    split: str = typer.Option("test", "--split",
                              help="Split of a Karpathy JSON, a CSV with a split column, or synthetic."),
    image_root: Optional[Path] = typer.Option(None, "--image-root",
                                              help="Folder image paths are relative to (default: the file's folder, "
                                                   "then its images/ subfolder)."),
    task: Task = typer.Option(Task.retrieval, "--task", help="retrieval (TR/IR@k) or zeroshot (top-1/top-5)."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ..."),
    workers: int = typer.Option(0, "--workers", min=0, help="Image decoding worker processes."),
    img_key: Optional[str] = typer.Option(None, "--csv-img-key", help="CSV column with image paths."),
    caption_key: Optional[str] = typer.Option(None, "--csv-caption-key", help="CSV column with captions."),
    separator: Optional[str] = typer.Option(None, "--csv-separator", help="CSV separator (default: tab for .tsv, "
                                                                          "else comma)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results to this JSON file (absent, "
                                            "or a results file mope wrote)."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Evaluate MODEL: image-text retrieval (TR@1/5/10, IR@1/5/10, Recall Mean) or zero-shot classification."""
    from ..data.datasets import load_dataset, load_image_folder
    from ..eval.retrieval import evaluate
    from ..eval.zeroshot import evaluate_zeroshot
    from ..models import load

    from ..eval.results import check_result_path, write_result

    with user_errors():
        if json_out is not None:
            check_result_path(json_out, force)        # before any work is spent
        if task is Task.zeroshot:
            dataset = load_image_folder(data)
        else:
            csv_options = {k: v for k, v in (("img_key", img_key), ("caption_key", caption_key),
                                             ("separator", separator)) if v is not None}
            dataset = load_dataset(data, split=split, image_root=image_root, **csv_options)
        net = load(model, device=device)
        if task is Task.zeroshot:
            result = evaluate_zeroshot(net, dataset, batch_size=batch_size, progress=not quiet, num_workers=workers)
        else:
            result = evaluate(net, dataset, batch_size=batch_size, progress=not quiet, num_workers=workers)

    if len(dataset.report):
        err_console.print(f"[yellow]{dataset.report.summary()}[/]", highlight=False)
    table = Table(title=f"{model} on {dataset.name} ({task.value})")
    if task is Task.zeroshot:
        cols = [("top-1", "top1"), ("top-5", "top5")]
        sub = f"{result['n_images']} images, {result['n_classes']} classes"
    else:
        cols = [("TR@1", "tr1"), ("TR@5", "tr5"), ("TR@10", "tr10"), ("IR@1", "ir1"), ("IR@5", "ir5"),
                ("IR@10", "ir10"), ("Recall Mean", "recall_mean")]
        sub = f"{result['n_images']} images, {result['n_captions']} captions"
    for title, _ in cols:
        table.add_column(title, justify="right")
    table.add_row(*(f"{result[k]:.2f}" for _, k in cols))
    table.caption = sub + (f", {result['n_skipped']} skipped" if result["n_skipped"] else "")
    console.print(table)
    if json_out is not None:
        payload = {**result, "model": model, "data": data, "task": task.value, "dataset": dataset.name,
                   "skipped": dataset.report.to_dict()}
        if task is Task.retrieval:
            payload["split"] = split
        with user_errors():
            write_result(json_out, payload, force)
        console.print(f"wrote {json_out}")
