"""``mope bench MODEL... | --paper``: latency per model x backend x batch size, as a table, JSON and a plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer
from rich import box
from rich.progress import Progress
from rich.table import Table

from ..progress import progress_bar
from ..vocab import TOWERS
from .common import FORCE_HELP, MODEL_HELP, UsageError, console, user_errors

BACKEND_HELP = ("torch, torch-compile, open_clip (an open_clip name, eager), onnxruntime, onnxruntime-int8, openvino "
                "(OpenVINO IR; pip install 'mope-deploy[openvino]'), tensorrt (an export bundle with engines; CUDA). "
                "Repeat or separate with commas.")


def _progress(quiet: bool) -> Progress:
    return progress_bar(not quiet, console=console)


def results_tables(report: dict[str, Any]) -> list[Table]:
    """One table per tower: latency per call (ms), throughput, block params, GFLOPs per item."""
    tables = []
    for tower, unit in zip(TOWERS, ("img/s", "txt/s")):
        rows = [r for r in report["results"] if r["tower"] == tower]
        if not rows:
            continue
        t = Table(title=f"{tower} tower: latency per call (ms)", box=box.SIMPLE_HEAD, pad_edge=False)
        for col in ("model", "backend", "B", "median", "p90", "min", unit, "Mparams", "GFLOPs"):
            left = col in ("model", "backend")
            t.add_column(col, justify="left" if left else "right", overflow="fold", no_wrap=not left,
                         min_width=8 if col == "model" else (11 if col == "backend" else None))
        for r in rows:
            t.add_row(r["model"], r["backend"], str(r["batch"]), f"{r['median_ms']:.2f}", f"{r['p90_ms']:.2f}",
                      f"{r['min_ms']:.2f}", f"{r['throughput']:.1f}", f"{r['params'] / 1e6:.1f}", f"{r['gflops']:.2f}")
        tables.append(t)
    return tables


def paper_rich_tables(report: dict[str, Any]) -> list[Table]:
    """Measured Table 7 beside the paper's, one table per backend: latency (ms), speed-up, FLOP ratio and
    their ratio (eff: 1.0 = the speed-up the FLOPs promise)."""
    p = report["paper"]
    tables = []
    for backend in p["backends"]:
        t = Table(box=box.SIMPLE_HEAD, pad_edge=False,
                  title=f"Table 7 here: {backend}, batch {p['batch']}, {p['device']} (paper: V100, batch 64)")
        cols = ["model", "Mpar", "GFLOP", "ms", "speedup", "flop x", "eff", "paper ms", "paper x"]
        if "reference" in report:
            cols.append("vs oc")
        for c in cols:
            t.add_column(c, justify="left" if c == "model" else "right", no_wrap=True)
        for r in (r for r in report["paper_table"] if r["backend"] == backend):
            row = [r["model"].replace("MoPE-CLIP ", "").replace("CLIP-", ""), f"{r['params_m']:.0f}",
                   f"{r['gflops']:.1f}", f"{r['latency_ms']:.1f}", f"{r['speedup']:.2f}x", f"{r['flop_ratio']:.2f}x",
                   f"{r['efficiency']:.2f}", f"{r['paper_latency_ms']:.1f}", f"{r['paper_speedup']:.2f}x"]
            if "reference" in report:
                row.append(f"{r['speedup_vs_reference']:.2f}x")
            t.add_row(*row)
        tables.append(t)
    return tables


def bench(
    models: Optional[List[str]] = typer.Argument(None, help=MODEL_HELP + " Also an export bundle directory."),
    backend: List[str] = typer.Option(["torch"], "--backend", "-b", help=BACKEND_HELP),
    batch_sizes: Optional[str] = typer.Option(None, "--batch-sizes", help="Comma-separated batch sizes (default 1,8; "
                                              "--paper: 64 on a GPU, 8 on a CPU)."),
    warmup: int = typer.Option(3, "--warmup", min=0, help="Untimed calls before timing (compilation, caches)."),
    iters: int = typer.Option(10, "--iters", min=1, help="Timed calls per model, backend, batch size and tower."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Intra-op threads for torch and ONNX "
                                          "Runtime (default: their own defaults)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    ort_settings: Optional[str] = typer.Option(None, "--ort-settings", help="ONNX Runtime session settings, "
                                               "KEY=VALUE,... with KEY graph_optimization (disabled|basic|extended|"
                                               "all), allow_spinning, cpu_mem_arena (1|0), inter_op_threads; "
                                               "recorded in the report."),
    paper: bool = typer.Option(False, "--paper", help="Benchmark the paper's ViT-L/14 teacher and MoPE-CLIP "
                               "large/base/small shapes (random weights) and compare with its Table 7."),
    teacher: str = typer.Option("ViT-L-14", "--teacher", help="With --paper: the teacher whose shape the students "
                                "are cut from (the paper's is ViT-L-14; any MODEL works, e.g. a saved directory)."),
    reference: Optional[str] = typer.Option(None, "--reference", help="With --paper: 'open_clip' also times the "
                                            "teacher in open_clip eager and reports speed-ups against it."),
    interleave: Optional[bool] = typer.Option(None, "--interleave/--sequential", help="Time all encoders "
                                              "round-robin (fair on a busy machine; all models in memory at once) or "
                                              "one after another (default; --paper defaults to --interleave)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full report to this JSON file (absent, "
                                            "or a report mope wrote)."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write latency vs parameters to this PNG."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Time encoders: median / p90 / min latency and throughput per tower, with params and GFLOPs."""
    from ..bench.request import BenchRequest, run_request
    from ..bench.run import BenchSettings, parse_batch_sizes, parse_list, write_json

    with user_errors():
        from ..runtime.ort_settings import SessionSettings

        try:
            ort_opts = SessionSettings.parse(ort_settings, threads=threads) if ort_settings else None
        except ValueError as e:
            raise UsageError(f"--ort-settings: {e}") from None
        settings = BenchSettings(batch_sizes=parse_batch_sizes(batch_sizes) if batch_sizes else None,
                                 warmup=warmup, iters=iters, threads=threads, device=device, interleave=interleave,
                                 ort_settings=ort_opts)
        request = BenchRequest(models=list(models or ()), backends=parse_list(backend, "backend"), settings=settings,
                               paper=paper, teacher=teacher, reference=reference).check()
        _check_outputs(json_out, plot, force)          # before any timing is spent
        if request.notice():
            console.print(f"[yellow]{request.notice()}[/]")
        with _progress(quiet) as prog:
            task = prog.add_task("starting", total=request.total_steps())
            report = run_request(request, on_step=lambda s: prog.update(task, description=s),
                                 on_iter=lambda: prog.advance(task))
        for table in results_tables(report):
            console.print(table)
        if paper:
            for table in paper_rich_tables(report):
                console.print(table)
            console.print(f"[dim]{report['paper']['latency']}; {report['paper']['note']}; eff = speedup / flop x"
                          + ("; vs oc = speed-up against the teacher in open_clip eager" if "reference" in report
                             else "") + "[/]")
        env = report["environment"]
        console.print(f"[dim]device {env['device']} ({env['gpu'] or env['cpu']}), torch threads "
                      f"{env['threads']['torch_intra_op']}, ONNX Runtime threads {env['threads']['onnxruntime_intra_op']}"
                      f"{', env ' + str(env['env']) if env['env'] else ''}[/]")
        if json_out:
            write_json(report, json_out, force)
            console.print(f"report written to {json_out}")
        if plot:
            from ..bench.plot import plot_latency
            plot_latency(report, plot, force=force)
            console.print(f"plot written to {plot}")


def _check_outputs(json_out: Optional[Path], plot: Optional[Path], force: bool) -> None:
    from ..atomic import check_file_target
    from ..bench.plot import check_plot_path
    from ..bench.run import REPORT_FILE

    if json_out is not None:
        check_file_target(json_out, REPORT_FILE, force)
    if plot is not None:
        check_plot_path(plot, force)
