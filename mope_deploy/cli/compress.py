"""``mope compress [RECIPE] [--out DIR]``: run a compression recipe end to end (resumable)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..vocab import TOWERS
from .common import console, user_errors


def compress(
    recipe: str = typer.Argument("demo", help="A recipe YAML path or the name of a shipped recipe (default: demo)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default: runs/<recipe name>): absent, "
                                       "empty, or a run folder mope wrote, which is resumed; anything else is refused, "
                                       "naming what is there (compress writes in place, so it has no --force)."),
    resume: bool = typer.Option(True, "--resume/--restart", help="Continue an interrupted run in --out (default), "
                                "or start over: deletes only the files an earlier mope run wrote there (a folder "
                                "without its state.json is never cleared)."),
    overrides: Optional[List[str]] = typer.Option(None, "--set", help="Override a recipe field, KEY=VALUE (YAML "
                                                  "value), validated with the recipe; repeatable. E.g. --set "
                                                  "train.epochs=1 --set data.val_max_images=50."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch intra-op threads (default: "
                                          "torch's choice; 1 is fastest for the demo on a busy 2-core machine)."),
) -> None:
    """Score, prune and distil a CLIP model as the recipe says; print the before/after table."""
    import torch

    from ..compress import compress as run_compress
    from ..compress import load_recipe

    if threads:
        torch.set_num_threads(threads)

    with user_errors():
        r = load_recipe(recipe, overrides or ())
        from ..planning import resolve_recipe  # prune.latency -> widths and depths (the planner is above compress)
        r, predicted = resolve_recipe(r, progress=not quiet)
        if predicted is not None:
            console.print(predicted.describe(), highlight=False)
        out = out or Path("runs") / r.name      # the name is a plain file name (validated with the recipe)
        console.print(f"[bold]mope compress[/]: recipe {r.name} ({r.stage} stage, teacher {r.teacher}) -> {out}")
        report = run_compress(r, out, progress=not quiet, log=lambda m: console.print(m, highlight=False),
                              restart=not resume)
    console.print(report_table(report))
    console.print(f"model, plan, scores, metrics and report.json in {out}")


def report_table(report: dict) -> Table:
    """Teacher vs student: size, compute and test recall."""
    t, s = report["teacher"], report["student"]
    table = Table(title=f"{report['recipe']}: teacher vs student on {report.get('test_data', 'test')}")
    for col in ("", "teacher", "student", "ratio"):
        table.add_column(col, justify="right")

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b else "-"

    table.add_row("block params (M)", f"{t['params'] / 1e6:.2f}", f"{s['params'] / 1e6:.2f}",
                  ratio(t["params"], s["params"]))
    for tower in TOWERS:
        table.add_row(f"  {tower} (M)", f"{t['towers'][tower]['params'] / 1e6:.2f}",
                      f"{s['towers'][tower]['params'] / 1e6:.2f}",
                      ratio(t["towers"][tower]["params"], s["towers"][tower]["params"]))
    table.add_row("all params (M)", f"{t['params_total'] / 1e6:.2f}", f"{s['params_total'] / 1e6:.2f}",
                  ratio(t["params_total"], s["params_total"]))
    table.add_row("GFLOPs", f"{t['gflops']:.3f}", f"{s['gflops']:.3f}", ratio(t["gflops"], s["gflops"]))
    for k in ("tr1", "tr5", "tr10", "ir1", "ir5", "ir10", "recall_mean"):
        table.add_row(k, f"{t[k]:.2f}", f"{s[k]:.2f}", f"{s[k] / t[k] * 100:.1f}%" if t[k] else "-")
    return table
