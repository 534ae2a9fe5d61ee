"""``mope prune MODEL [--scores scores.json] TARGETS --out DIR``: plan + physically smaller model directory."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .app import MODEL_HELP, app
from .common import console, user_errors


@app.command()
def prune(
    model: str = typer.Argument(..., help=MODEL_HELP),
    scores: Optional[List[Path]] = typer.Option(None, "--scores", help="Score table(s) from `mope importance` "
                                                "(repeat to give e.g. a mope and a gradient table)."),
    tower: str = typer.Option("both", help="Tower(s) to prune: vision, text or both."),
    width: Optional[int] = typer.Option(None, help="Attention width W per kept block (W/64 heads), FFN = 4W."),
    depth: Optional[int] = typer.Option(None, help="Blocks to keep per pruned tower."),
    params: Optional[int] = typer.Option(None, help="Block-parameter budget for the pruned tower(s) (decides W)."),
    method: str = typer.Option("mope", help="Width ranking: mope, magnitude (from weights) or gradient."),
    depth_method: str = typer.Option("mope", help="Depth ranking: mope, every-other, top (drop the last blocks), "
                                     "bottom (drop the first blocks) or gradient."),
    allocation: str = typer.Option("per-block", help="per-block (paper: top-k in every block) or global."),
    groups: int = typer.Option(32, help="FFN neuron groups for --method magnitude computed here."),
    plan_file: Optional[Path] = typer.Option(None, "--plan", help="Re-apply an existing plan.json instead."),
    out: Path = typer.Option(..., "--out", help="Model directory to write (config.json, model.safetensors, "
                             "plan.json)."),
) -> None:
    """Make a pruning plan from score tables and a target, apply it, and save the smaller model."""
    from ..importance import ScoreTable, magnitude_table
    from ..models import load, model_stats, save_model
    from ..pruning import PruningPlan, Target, apply_plan, make_plan

    with user_errors():
        teacher = load(model).eval()
        if plan_file is not None:
            plan = PruningPlan.load(plan_file)
        else:
            target = Target(tower=tower, width=width, depth=depth, params=params, depth_method=depth_method,
                            allocation=allocation)
            target.check()
            tables = {}
            for path in scores or []:
                t = ScoreTable.load(path)
                tables.setdefault(t.method, t)
            towers = target.towers()
            needs_width = width is not None or params is not None
            if method not in ("mope", "magnitude", "gradient"):
                raise ValueError(f"--method must be mope, magnitude or gradient, got {method!r}")
            wanted = {method} if needs_width else set()
            if depth is not None and depth_method in ("mope", "gradient", "magnitude"):
                wanted.add(depth_method)
            for m in sorted(wanted):
                if m not in tables:
                    if m == "magnitude":
                        tables[m] = magnitude_table(teacher, towers, groups)
                    else:
                        raise ValueError(f"no {m} score table given: run `mope importance {model} --data SPEC "
                                         f"--method {m} --out {m}.json` and pass --scores {m}.json"
                                         + (" (or use --depth-method every-other/top/bottom)" if m == depth_method
                                            else ""))
            plan = make_plan(teacher.config, target, width_table=tables.get(method) if needs_width else None,
                             depth_table=tables.get(depth_method), teacher=model)
        student = apply_plan(teacher, plan)
        save_model(student, out, extra_files={"plan.json": plan.to_json()})
    before, after = model_stats(teacher.config), model_stats(student.config)
    for name in ("vision", "text"):
        b, a = before[name], after[name]
        console.print(f"{name}: {b['depth']} -> {a['depth']} blocks, block params {b['params'] / 1e6:.2f}M -> "
                      f"{a['params'] / 1e6:.2f}M")
    console.print(f"wrote {out} ({after['params_total'] / 1e6:.2f}M params, was {before['params_total'] / 1e6:.2f}M); "
                  f"`mope info {out}` shows the new shape")
