"""``mope prune MODEL [--scores scores.json] TARGETS --out DIR``: plan + physically smaller model directory."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..vocab import TOWERS
from .common import FORCE_HELP, MODEL_HELP, console, user_errors


def prune(
    model: str = typer.Argument(..., help=MODEL_HELP),
    scores: Optional[List[Path]] = typer.Option(None, "--scores", help="Score table(s) from `mope importance` "
                                                "(repeat to give e.g. a mope and a gradient table)."),
    tower: str = typer.Option("both", help="Tower(s) to prune: vision, text or both."),
    width: Optional[int] = typer.Option(None, help="Attention width W per kept block (W/head_dim heads); FFN keeps "
                                        "the teacher's FFN/width ratio (4W for CLIP)."),
    depth: Optional[int] = typer.Option(None, help="Blocks to keep per pruned tower."),
    params: Optional[int] = typer.Option(None, help="Block-parameter budget for the pruned tower(s) (decides W)."),
    method: str = typer.Option("mope", help="Width ranking: mope, magnitude (from weights) or gradient."),
    depth_method: str = typer.Option("mope", help="Depth ranking: mope, every-other, top (drop the last blocks), "
                                     "bottom (drop the first blocks) or gradient."),
    allocation: str = typer.Option("per-block", help="per-block (paper: top-k in every block) or global."),
    groups: int = typer.Option(32, help="FFN neuron groups for --method magnitude computed here."),
    plan_file: Optional[Path] = typer.Option(None, "--plan", help="Re-apply an existing plan.json instead."),
    out: Path = typer.Option(..., "--out", help="Model directory to write (config.json, model.safetensors, "
                             "plan.json): absent, empty, or a model directory mope wrote before."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Make a pruning plan from score tables and a target, apply it, and save the smaller model."""
    from ..models import model_stats
    from ..pruning import Target
    from ..pruning.job import PruneJob, run_prune

    with user_errors():
        target = None if plan_file is not None else Target(
            tower=tower, width=width, depth=depth, params=params, depth_method=depth_method, allocation=allocation,
            method=method)
        job = PruneJob(model=model, out=out, target=target, scores=tuple(scores or ()), plan_file=plan_file,
                       groups=groups, force=force)
        teacher, student = run_prune(job)
    before, after = model_stats(teacher.config), model_stats(student.config)
    for name in TOWERS:
        b, a = before[name], after[name]
        console.print(f"{name}: {b['depth']} -> {a['depth']} blocks, block params {b['params'] / 1e6:.2f}M -> "
                      f"{a['params'] / 1e6:.2f}M")
    console.print(f"wrote {out} ({after['params_total'] / 1e6:.2f}M params, was {before['params_total'] / 1e6:.2f}M); "
                  f"`mope info {out}` shows the new shape")
