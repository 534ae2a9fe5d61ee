"""``mope export MODEL --format onnx|tensorrt|torch-tensorrt|triton --out DIR``: parity-gated deployment bundles."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer

from .common import FORCE_HELP, MODEL_HELP, UsageError, console, user_errors


def export(
    model: str = typer.Argument(..., help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle directory: absent, empty, or an earlier bundle "
                             "(written atomically; replaced only when the new bundle is complete)."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    formats: List[str] = typer.Option(["onnx"], "--format", "-f",
                                      help="onnx | tensorrt | torch-tensorrt | triton | openvino "
                                           "(repeatable or comma-separated)."),
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
    fused: bool = typer.Option(True, "--fused/--no-fused", help="Also write ONNX Runtime graphs with one fused "
                               "com.microsoft Attention per block (kept only if they pass the gates; int8 is "
                               "quantised from them, attention included)."),
    int8_method: str = typer.Option("calibrated", "--int8-method", help="calibrated (fixed activation scales from "
                                    "--eval-data: an input's embedding does not depend on its batch) | dynamic "
                                    "(per-batch scales: embeddings move with batch-mates) | static (QDQ calibrated on "
                                    "--eval-data; standard ops, also read by TensorRT)."),
    int8_fp32_nodes: int = typer.Option(0, "--int8-fp32-nodes", min=0, help="Keep the N nodes whose int8 error "
                                        "hurts the embeddings most (measured on --eval-data) in fp32."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (>= 17)."),
    exporter: str = typer.Option("auto", "--exporter", help="auto | legacy | dynamo (torch.onnx exporter)."),
    atol: float = typer.Option(1e-4, "--atol", help="Parity tolerance, ONNX Runtime vs torch (fp32)."),
    sparse: bool = typer.Option(False, "--sparse", help="TensorRT: enable 2:4 sparse kernels (SPARSE_WEIGHTS)."),
    workspace_gb: float = typer.Option(4.0, "--workspace-gb", help="TensorRT builder workspace."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help="TensorRT timing cache to reuse."),
) -> None:
    """Export MODEL as ONNX graphs (+ optimised/int8/fp16 variants), TensorRT engines, torch-tensorrt
    programs and/or a Triton repository, refusing any output that fails its parity or recall gate."""
    from ..exporting import ExportConfig, export_spec

    with user_errors():
        try:
            sizes = tuple(int(x) for x in batch_sizes.split(",") if x.strip())
        except ValueError:
            raise UsageError(f"--batch-sizes {batch_sizes!r}: give MIN,OPT,MAX integers, e.g. 1,8,64") from None
        formats = [f.strip() for spec in formats for f in spec.split(",") if f.strip()]
        config = ExportConfig(formats=tuple(formats), precision=precision, batch_sizes=sizes, opset=opset,
                              normalize=normalize, exporter=exporter, atol=atol, optimize=optimize,
                              fused=fused, int8_method=int8_method, int8_fp32_nodes=int8_fp32_nodes,
                              eval_data=eval_data, eval_limit=eval_limit, max_recall_drop=max_recall_drop,
                              skip_recall_gate=skip_recall_gate, sparse=sparse, workspace_gb=workspace_gb,
                              timing_cache=str(timing_cache) if timing_cache else None, source=model)
        t0 = time.perf_counter()
        # one line per stage (with elapsed time); evaluation passes show rich progress bars with an ETA
        manifest = export_spec(model, out, config, progress=True, force=force,
                               log=lambda msg: console.print(f"[dim]· {time.perf_counter() - t0:6.1f}s[/] {msg}"))
    _print_manifest(manifest, model, out)


def _print_manifest(manifest, model: str, out: Path) -> None:
    p = manifest.parity or {}
    console.print(f"[green]exported[/] {model} -> {out} ({', '.join(manifest.formats)}, {manifest.precision})")
    console.print(f"  parity ONNX Runtime vs torch: max |diff| {p.get('max_abs', 0):.2e} (atol {manifest.gates.parity_atol:g})")
    for name, v in manifest.variants.items():
        line = f"  {name:9s} {v.files['vision']}, {v.files['text']}"
        if v.recall:
            line += f"  Recall Mean {v.recall['recall_mean']:.2f}"
            if v.recall_delta is not None:
                line += f" ({v.recall_delta:+.2f} vs fp32)"
        if v.runtimes == ["onnxruntime"]:
            line += "  [ONNX Runtime only]"
        console.print(line)
    for name, why in manifest.refused_variants.items():
        console.print(f"  [yellow]{name} not written[/]: {why}")
    for fmt, es in manifest.engines.items():
        for tower, e in es.engines.items():
            console.print(f"  {fmt} {tower}: {e.file} ({e.details.get('build_seconds', '?')} s)")
    if manifest.triton:
        console.print(f"  Triton repository: {out / manifest.triton['repository']} "
                      f"({', '.join(manifest.triton['models'])})")
