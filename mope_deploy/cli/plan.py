"""``mope plan TEACHER --backend B (--latency MS | --speedup X)``: the student shapes that meet a latency budget,
predicted from a few shapes timed on the backend (cached per teacher, backend, batch, tower and machine)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.table import Table

from .common import FORCE_HELP, MODEL_HELP, console, user_errors


def plan(
    teacher: str = typer.Argument(..., help=MODEL_HELP),
    backend: str = typer.Option("onnxruntime", "--backend", "-b", help="Deployment backend the shapes are timed on "
                                "(as mope bench: torch, onnxruntime, onnxruntime-int8, tensorrt, ...)."),
    batch: int = typer.Option(1, "--batch", min=1, help="Batch size the budget is for."),
    tower: str = typer.Option("both", "--tower", help="vision, text or both (the budget covers their sum)."),
    latency: Optional[float] = typer.Option(None, "--latency", help="Budget in ms per batch."),
    speedup: Optional[float] = typer.Option(None, "--speedup", help="Budget as a speed-up over the teacher's "
                                            "predicted latency on the same backend."),
    scores: Optional[Path] = typer.Option(None, "--scores", help="A MoPE score table (mope importance): rank by the "
                                          "importance the shapes keep instead of by parameters."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the plan (cost models, checks, shapes) here."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG of parameters vs predicted latency."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    top: int = typer.Option(10, "--top", min=1, help="Shapes listed."),
    verify: int = typer.Option(0, "--verify", min=0, help="Build and time the best N shapes at full size "
                               "(round-robin) and print measured beside predicted."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Intra-op threads of the timed encoders."),
    iters: int = typer.Option(5, "--iters", min=1, help="Timed rounds per shape (median)."),
    clock: str = typer.Option("wall", "--clock", help="wall (latency as a caller sees it) or cpu (the process's CPU "
                              "time per call: with --threads 1, the latency alone on the machine; steadier on a "
                              "machine shared with other jobs)."),
    max_depth: int = typer.Option(4, "--max-depth", min=1, help="Deepest shape timed for the cost model."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Cost-model cache (default $MOPE_PLAN_CACHE "
                                             "or ~/.cache/mope-deploy/plans)."),
    lock: Optional[str] = typer.Option(None, "--timing-lock", help="A lock file held (flock) during the timed rounds "
                                       "only, e.g. /tmp/mope-timing.lock on a machine shared with other benchmarks; "
                                       "building and exporting the shapes runs outside it."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    record: bool = typer.Option(False, "--record", help="TEACHER is a finished `mope compress` run whose recipe had "
                                "prune.latency: time its student on the planned backend and batch and write "
                                "latency.measured_ms into its report.json (beside the prediction)."),
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="With --record: time this export bundle of the "
                                          "student (mope export) instead of the run folder's model."),
) -> None:
    """List the shapes MoPE's pruning can make from TEACHER that meet the budget, best first."""
    if record:
        return _record(Path(teacher), bundle, iters)
    from ..atomic import check_file_target
    from ..bench.plot import check_plot_path
    from ..importance import ScoreTable
    from ..planning import PLAN_FILE, MeasureSettings, PlanRequest, measure_candidates, write_plan
    from ..planning import plan as run_plan

    with user_errors():
        if json_out is not None:                        # the outputs before any timing is spent
            check_file_target(json_out, PLAN_FILE, force)
        if plot is not None:
            check_plot_path(plot, force)
        settings = MeasureSettings(backend=backend, batch=batch, threads=threads, iters=iters, progress=not quiet,
                                   clock=clock, lock=lock)
        table = ScoreTable.load(scores) if scores else None
        request = PlanRequest(teacher, latency_ms=latency, speedup=speedup, tower=tower, settings=settings,
                              scores=table, max_depth=max_depth, cache_dir=cache_dir).check()
        result = run_plan(request)
        measured = measure_candidates(result, result.candidates[:verify]) if verify else []
        data = result.to_dict(top=top)
        for row, m in zip(data["candidates"], measured):
            row["measured_ms"] = sum(m.values())
            for t, ms in m.items():
                row["towers"][t]["measured_ms"] = ms
        if json_out:
            write_plan(data, json_out, force)
        if plot:
            from ..planning.plot import plot_plan
            plot_plan(result, plot, force)
    console.print(summary(data))
    console.print(shapes_table(data))
    if json_out:
        console.print(f"plan written to {json_out}")


def _record(run: Path, bundle: Optional[Path], iters: int) -> None:
    from ..planning import record_measured

    with user_errors():
        lat = record_measured(run, bundle, iters=iters)
    console.print(f"{run}: measured {lat['measured_ms']:.1f} ms per batch of {lat.get('batch', 1)} on "
                  f"{lat['backend']} (predicted {lat.get('predicted_ms', float('nan')):.1f} ms); written to "
                  f"{run / 'report.json'}", highlight=False)


def summary(data: dict) -> str:
    checks = ", ".join(f"{t} {c['max_abs_error'] * 100:.1f}%" for t, c in data["checks"].items()
                       if c.get("max_abs_error") is not None)
    hits = ", ".join(f"{t} {'cached' if c['hit'] else 'measured'}" for t, c in data["cache"].items())
    teacher = sum(data["teacher_predicted_ms"].values())
    return (f"budget {data['budget_ms']:.1f} ms per batch of {data['batch']} on {data['backend']} (teacher predicted "
            f"{teacher:.1f} ms); {data['n_meeting_budget']} of {data['n_candidates']} shapes meet it; cost model "
            f"held-out error at most: {checks or 'n/a'} ({hits})")


def shapes_table(data: dict) -> Table:
    towers = list(data["teacher_predicted_ms"])
    t = Table(title="shapes meeting the budget, best first", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ["#", *[f"{x} width x depth" for x in towers], "Mparams", "importance", "predicted ms", "measured ms",
                "speed-up"]:
        t.add_column(col, justify="right", no_wrap=True)
    teacher = sum(data["teacher_predicted_ms"].values())
    for i, c in enumerate(data["candidates"], 1):
        shapes = [f"{c['towers'][x]['width']} x {c['towers'][x]['depth']}" for x in towers]
        imp = f"{c['importance']:.3f}" if c["importance"] is not None else "-"
        meas = f"{c['measured_ms']:.1f}" if "measured_ms" in c else "-"
        t.add_row(str(i), *shapes, f"{c['params'] / 1e6:.2f}", imp, f"{c['predicted_ms']:.1f}", meas,
                  f"{teacher / c['predicted_ms']:.2f}x")
    return t
