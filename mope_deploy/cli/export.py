"""``mope export MODEL --format onnx|tensorrt|torch-tensorrt|triton --out DIR``: parity-gated deployment bundles."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer

from .app import MODEL_HELP, app
from .common import console, user_errors


def _batch_sizes(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--batch-sizes {text!r}: give MIN,OPT,MAX integers, e.g. 1,8,64") from None


@app.command()
def export(
    model: str = typer.Argument(..., help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle directory (written atomically; replaced on success)."),
    formats: List[str] = typer.Option(["onnx"], "--format", "-f",
                                      help="onnx | tensorrt | torch-tensorrt | triton (repeatable)."),
    precision: str = typer.Option("fp32", "--precision", "-p", help="fp32 | fp16 | int8."),
    batch_sizes: str = typer.Option("1,8,64", "--batch-sizes", help="MIN,OPT,MAX of the dynamic batch axis."),
    eval_data: Optional[str] = typer.Option(None, "--eval-data",
                                            help="Dataset for the recall gate / int8 calibration (load_dataset spec)."),
    eval_limit: int = typer.Option(200, "--eval-limit", help="Evaluate on the first N images of --eval-data."),
    max_recall_drop: float = typer.Option(1.0, "--max-recall-drop",
                                          help="Refuse a variant losing more Recall Mean points than this vs fp32."),
    skip_recall_gate: bool = typer.Option(False, "--skip-recall-gate", help="Keep fp16/int8 variants unevaluated."),
    normalize: bool = typer.Option(False, "--normalize", help="Graphs output L2-normalised embeddings."),
    optimize: bool = typer.Option(True, "--optimize/--no-optimize", help="Also write ORT transformer-fused graphs."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (>= 17)."),
    exporter: str = typer.Option("auto", "--exporter", help="auto | legacy | dynamo (torch.onnx exporter)."),
    atol: float = typer.Option(1e-4, "--atol", help="Parity tolerance, ONNX Runtime vs torch (fp32)."),
    sparse: bool = typer.Option(False, "--sparse", help="TensorRT: enable 2:4 sparse kernels (SPARSE_WEIGHTS)."),
    workspace_gb: float = typer.Option(4.0, "--workspace-gb", help="TensorRT builder workspace."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help="TensorRT timing cache to reuse."),
) -> None:
    """Export MODEL as ONNX graphs (+ optimised/int8/fp16 variants), TensorRT engines, torch-tensorrt
    programs and/or a Triton repository, refusing any output that fails its parity or recall gate."""
    from ..exporting.bundle import export_bundle
    from ..models import load

    with user_errors():
        sizes = _batch_sizes(batch_sizes)
        console.print(f"[dim]·[/] loading {model}")
        m = load(model)
        t0 = time.perf_counter()
        # one line per stage (with elapsed time); evaluation passes show rich progress bars with an ETA
        manifest = export_bundle(
            m, out, formats=formats, precision=precision, batch_sizes=sizes, opset=opset, normalize=normalize,
            exporter=exporter, atol=atol, optimize=optimize, eval_data=eval_data, eval_limit=eval_limit,
            max_recall_drop=max_recall_drop, skip_recall_gate=skip_recall_gate, sparse=sparse,
            workspace_gb=workspace_gb, timing_cache=timing_cache, source=model, progress=True,
            log=lambda msg: console.print(f"[dim]· {time.perf_counter() - t0:6.1f}s[/] {msg}"))
    p = manifest["parity"]
    console.print(f"[green]exported[/] {model} -> {out} ({', '.join(manifest['formats'])}, {precision})")
    console.print(f"  parity ONNX Runtime vs torch: max |diff| {p['max_abs']:.2e} (atol {p['atol']:g})")
    for name, v in manifest["variants"].items():
        r = v.get("recall")
        line = f"  {name:9s} {v['files']['image']}, {v['files']['text']}"
        if r:
            line += f"  Recall Mean {r['recall_mean']:.2f}"
            if "recall_delta" in v:
                line += f" ({v['recall_delta']:+.2f} vs fp32)"
        console.print(line)
    for tower, e in ((manifest.get("tensorrt") or {}).get("engines") or {}).items():
        console.print(f"  TensorRT {tower}: {e['file']} ({e['build_seconds']} s)")
    if manifest.get("triton"):
        console.print(f"  Triton repository: {out / manifest['triton']['repository']} "
                      f"({', '.join(manifest['triton']['models'])})")
