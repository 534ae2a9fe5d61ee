"""``mope importance MODEL --data SPEC --out scores.json``: MoPE (or baseline) cost tables; torchrun-aware."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from ..progress import progress_bar
from .common import FORCE_HELP, MODEL_HELP, UsageError, console, user_errors


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
    out: Path = typer.Option(..., "--out", help="Score table JSON to write (absent, or a score table mope wrote)."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Score every head, FFN neuron group and block (MoPE = metric(full) - metric(module removed)).

    Under `torchrun --nproc_per_node N $(which mope) importance ...` the probes are sharded across ranks and
    rank 0 writes the gathered table.
    """
    from ..importance.job import ScoringJob, run_scoring
    from ..vocab import TOWERS

    with user_errors():
        if tower not in (*TOWERS, "both"):
            raise UsageError(f"--tower must be {', '.join(TOWERS)} or both, got {tower!r}")
        job = ScoringJob(model=model, out=out, data=data, split=split, towers=TOWERS if tower == "both" else (tower,),
                         method=method, metric=metric, groups=groups, batch_size=batch_size, probe_batch=probe_batch,
                         max_images=max_images, naive=naive, device=device, force=force)
        rank = int(os.environ.get("RANK", "0"))   # torchrun's; rank 0 shows progress and writes
        with progress_bar(method == "mope" and rank == 0, console=console) as bar:
            task = bar.add_task(f"{method} probes", total=None)
            table = run_scoring(job, progress=lambda done, total: bar.update(task, completed=done, total=total))
        if rank == 0:
            full = f", full-model {table.metric} {table.full_metric:.2f}" if table.full_metric is not None else ""
            console.print(f"wrote {out}: {method} scores for {', '.join(job.towers)}{full} "
                          f"in {table.meta['total_seconds']:.1f}s")
