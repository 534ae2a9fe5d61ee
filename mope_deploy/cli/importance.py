"""``mope importance MODEL --data SPEC --out scores.json``: MoPE (or baseline) cost tables; torchrun-aware."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from ..progress import progress_bar
from .common import MODEL_HELP, UsageError, console, user_errors


def importance(
    model: str = typer.Argument(..., help=MODEL_HELP),
    data: str = typer.Option(None, "--data", help="Validation set: synthetic:val, a captions CSV/TSV, a Karpathy "
                             "JSON or WebDataset shards (not needed for --method magnitude)."),
    split: str = typer.Option("val", help="Split of --data to score on (Karpathy JSON / CSV with a split column)."),
    tower: str = typer.Option("both", help="vision, text or both."),
    metric: str = typer.Option("recall_mean", help="recall_mean, tr_mean (vision, TR) or ir_mean (text, IR)."),
    method: str = typer.Option("mope", help="mope, gradient (DynaCLIP) or magnitude (MagnCLIP; no data)."),
    groups: int = typer.Option(32, help="FFN neuron groups per block (after loss-gradient rewiring)."),
    batch_size: int = typer.Option(64, help="Sequences per forward pass."),
    probe_batch: int = typer.Option(16, help="Probes evaluated together in one batch."),
    max_images: int = typer.Option(None, help="Use only the first N images of --data (quick runs)."),
    naive: bool = typer.Option(False, "--naive", help="Reference mode: re-encode both towers for every probe."),
    device: str = typer.Option(None, help="cpu, cuda, cuda:1 (default: cuda:LOCAL_RANK when available)."),
    out: Path = typer.Option(..., "--out", help="Score table JSON to write."),
) -> None:
    """Score every head, FFN neuron group and block (MoPE = metric(full) - metric(module removed)).

    Under `torchrun --nproc_per_node N $(which mope) importance ...` the probes are sharded across ranks and
    rank 0 writes the gathered table.
    """
    import torch

    from .. import distributed as D
    from ..device import default_device
    from ..importance import score
    from ..models import load

    from ..vocab import TOWERS

    with user_errors():
        if tower not in (*TOWERS, "both"):
            raise UsageError(f"--tower must be {', '.join(TOWERS)} or both, got {tower!r}")
        towers = TOWERS if tower == "both" else (tower,)
        if method != "magnitude" and not data:
            raise UsageError(f"--method {method} measures the model on data: give --data (e.g. synthetic:val)")
        rank, world = D.init_from_env()
        dev = device or default_device()
        if dev == "cuda":  # under torchrun each rank has set its own current device
            dev = f"cuda:{torch.cuda.current_device()}"
        t0 = time.perf_counter()
        net = load(model, device=dev).eval()
        images = tokens = txt2img = None
        name = None
        if method != "magnitude":
            from ..data.datasets import load_dataset
            from ..eval.retrieval import encode_inputs

            ds = load_dataset(data, split=split)
            if max_images is not None:
                if max_images < 1:
                    raise UsageError(f"--max-images must be positive, got {max_images}")
                ds = ds.head(max_images)
            images, tokens, txt2img = encode_inputs(net, ds, batch_size=batch_size)
            name = ds.name if hasattr(ds, "name") else data
        with progress_bar(rank == 0 and method == "mope", console=console) as bar:
            task = bar.add_task(f"{method} probes" + (f" (rank 0 of {world})" if world > 1 else ""), total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            kwargs = dict(metric=metric, batch_size=batch_size, probe_batch=probe_batch, cached=not naive,
                          dataset=name, progress=progress) if method == "mope" else dict(batch_size=batch_size,
                                                                                        dataset=name)
            table = score(net, images, tokens, txt2img, method=method, towers=towers, n_groups=groups, **kwargs)
        table.meta["total_seconds"] = round(time.perf_counter() - t0, 3)
        if rank == 0:
            table.save(out)
            full = f", full-model {table.metric} {table.full_metric:.2f}" if table.full_metric is not None else ""
            console.print(f"wrote {out}: {method} scores for {', '.join(towers)}{full} "
                          f"in {table.meta['total_seconds']:.1f}s")
        D.destroy()

