"""``mope index DATA --model MODEL --out INDEX``: bulk-embed a dataset into a FAISS retrieval index;
``mope index --compact INDEX``: fold an index's write-ahead log into its files."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import FORCE_HELP, MODEL_HELP, UsageError, console, err_console, user_errors

BACKEND_HELP = ("An encoder backend of the runtime registry: onnxruntime, onnxruntime-int8, openvino, torch, tensorrt, ... "
                "(default: onnxruntime for an export bundle, torch for a model).")

DATA_HELP = ("'synthetic[:SPLIT]', a CSV/TSV (or a folder with captions.csv), a Karpathy JSON, WebDataset shards "
             "('shards/{000..009}.tar'), or a folder of images.")


def index(
    data: Optional[str] = typer.Argument(None, help=DATA_HELP),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Export bundle directory, or " + MODEL_HELP),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Index directory (written atomically)."),
    backend: Optional[str] = typer.Option(None, "--backend", help=BACKEND_HELP),
    split: str = typer.Option("test", "--split",
                              help="Split of a Karpathy JSON, a CSV with a split column, or synthetic."),
    image_root: Optional[Path] = typer.Option(None, "--image-root", help="Folder image paths are relative to."),
    captions: bool = typer.Option(True, "--captions/--no-captions",
                                  help="Also index the captions (image->text search)."),
    kind: str = typer.Option("auto", "--kind", help="exact (FAISS flat inner product) | hnsw | auto (hnsw from "
                                                    "100k images; its recall@10 vs exact is measured and stored)."),
    chunk_size: Optional[int] = typer.Option(None, "--chunk-size", min=1,
                                             help="Images per committed chunk (the resume unit of a killed build). "
                                                  "Default: at least 8 chunks, at most 1024 images each."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Encoder intra-op threads."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    compact: Optional[Path] = typer.Option(None, "--compact", help="Fold the write-ahead log of this index (items "
                                           "added through /index/items) into its files, atomically; no DATA."),
    use_ray: bool = typer.Option(False, "--ray", help="Embed images on Ray Data (map_batches over encoder actors)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: start a local Ray)."),
    ray_workers: Optional[int] = typer.Option(None, "--ray-workers", min=1,
                                              help="Ray encoder actors, 1 CPU each (default: the cluster's CPUs - 1, "
                                                   "at least 1; more than it holds is refused)."),
    ray_timeout: float = typer.Option(600.0, "--ray-timeout", min=1,
                                      help="Fail when Ray delivers no chunk for this many seconds."),
    allow_remote: bool = typer.Option(False, "--allow-remote", help="Start a local Ray on the host network (its "
                                      "services listen on every interface) instead of a private loopback-only "
                                      "one."),
    img_key: Optional[str] = typer.Option(None, "--csv-img-key", help="CSV column with image paths."),
    caption_key: Optional[str] = typer.Option(None, "--csv-caption-key", help="CSV column with captions."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Embed every image (and caption) of DATA with MODEL into a FAISS index; a killed run resumes."""
    from ..serve.build import IndexJob, RayOptions, build
    from ..serve.build import compact as compact_index

    def say(msg: str) -> None:
        console.print(f"[dim]·[/] {msg}", highlight=False)

    with user_errors():
        if compact is not None:
            if data is not None or model is not None or out is not None:
                raise UsageError("--compact INDEX takes no DATA, --model or --out: mope index --compact INDEX")
            summary = compact_index(compact, log=say)
        else:
            missing = [n for n, v in (("DATA", data), ("--model", model), ("--out", out)) if v is None]
            if missing:
                raise UsageError(f"missing {', '.join(missing)}: mope index DATA --model MODEL --out INDEX "
                                 "(or mope index --compact INDEX)")
            ray = RayOptions(address, ray_workers, allow_remote, ray_timeout) if use_ray else None
            job = IndexJob(data, model, out, backend=backend, split=split,
                           image_root=str(image_root) if image_root else None, img_key=img_key,
                           caption_key=caption_key, captions=captions, kind=kind, chunk_size=chunk_size,
                           batch_size=batch_size, threads=threads, force=force, ray=ray, progress=not quiet)
            meta = build(job, log=say)
    if compact is not None:
        console.print(f"[green]compacted[/] {compact}: {summary['folded']} log record(s) folded into generation "
                      f"{summary['generation']} ({summary['items']} items)")
        return
    skipped = meta["skipped"]
    if skipped["n_skipped"]:
        err_console.print(f"[yellow]skipped {skipped['n_skipped']} image(s): {skipped['counts']}[/]", highlight=False)
    line = f"[green]indexed[/] {meta['n_items']} images, {meta['n_captions']} captions -> {out} ({meta['kind']}"
    if meta.get("approx_recall_at_10") is not None:
        line += f", recall@10 vs exact {meta['approx_recall_at_10']:.4f}"
    console.print(line + ")")
