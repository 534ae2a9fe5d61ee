"""Gated TensorRT engines for both encoders of a bundle (TensorRT 10.x and 11.x).

Per encoder: the precision's ONNX graph (fp32 as exported; fp16 with fp32 islands; int8 Q/DQ calibrated on the
evaluation inputs: :mod:`.graph_precision`) -> strongly typed engine (:mod:`.trt_api`) -> numeric gate vs the
torch model at batch 1/OPT/MAX, and for fp16/int8 a recall gate (:mod:`.engine_gate`) -> written only when both
pass. ``typing="weak"`` keeps TensorRT 10's flag-based build (fp32 graph + FP16/INT8 flags, fp32 pins from
``export/tensorrt/profiles.json``, an int8 calibrator) where the installed module still has those flags.
Writes ``{image,text}_encoder.{precision}.engine``, the graphs they were built from
(``*.trt-{fp16,int8}.onnx``), ``tensorrt_build.log`` and ``tensorrt_timing.cache``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import device as _device
from ..device import TensorRTUnavailableError
from ..models.slim_clip import SlimCLIP
from ..resources import TEMPLATES, read_text
from ..vocab import TOWERS
from . import engine_gate as eg
from .bundle import BUILD_LOG_FILE, INPUT_NAMES, TIMING_CACHE_FILE, engine_name, onnx_name
from .config import EvalInputs, ExportConfigError
from .onnx import ExportError, input_shape, random_tokens
from .trt_api import BuildOptions, LogSink, build_serialized, detect

PROFILES = ("tensorrt", "profiles.json")  # weak-typing settings, in mope_deploy.templates (the repo's export/)
GATE_DEVICE = "cuda"
TYPINGS = ("strong", "weak")


def require_tensorrt():
    """Import ``tensorrt`` (10.x/11.x, by feature detection) and check for a CUDA device; a clear error otherwise."""
    return _device.import_tensorrt(purpose="TensorRT engines are built", need_cuda=True)


def load_profiles(path: str | Path | None = None) -> dict[str, Any]:
    """The weak-typing (TensorRT 10 flag) settings per precision: the shipped ``export/tensorrt/profiles.json``."""
    if path is not None:
        return json.loads(Path(path).read_text())
    return json.loads(read_text(TEMPLATES, *PROFILES))


def _graph_for(out_dir: Path, tower_file: str, precision: str, calib: torch.Tensor | None) -> tuple[Path, Any]:
    """The ONNX graph an engine of ``precision`` is built from (written beside the fp32 one when needed)."""
    from .graph_precision import convert_fp16_graph, quantize_qdq_graph

    src = out_dir / tower_file
    if precision == "fp32":
        return src, None
    dst = out_dir / f"{Path(tower_file).stem}.trt-{precision}.onnx"
    if precision == "fp16":
        return dst, convert_fp16_graph(src, dst)
    if calib is None:
        raise ExportConfigError("int8 engines are calibrated on real inputs: give --eval-data SPEC")
    return dst, quantize_qdq_graph(src, dst, calib)


def _cases(model: SlimCLIP, tower: str, real: torch.Tensor | None, n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    if tower == "vision":
        s = model.config.vision.image_size
        cases = {"random": torch.randn(n, 3, s, s, generator=g)}
        if real is not None:
            cases["real"] = real.float()
    else:
        cases = {"random": random_tokens(model, n, g)}
        tokens = eg.sample_tokens(model, real)
        if tokens is not None:
            cases["real"] = tokens
    return cases


def _reference(model: SlimCLIP, tower: str) -> Callable[[torch.Tensor], np.ndarray]:
    @torch.no_grad()
    def ref(x: torch.Tensor) -> np.ndarray:
        if tower == "vision":
            return model.encode_image(x.float()).float().numpy()
        return model.encode_text(x.to(torch.int64)).float().numpy()

    return ref


def _run_all(runner, x: torch.Tensor, batch: int) -> np.ndarray:
    return np.concatenate([runner(x[i:i + batch]) for i in range(0, len(x), batch)])


def build_engines(out_dir: str | Path, model: SlimCLIP, precision: str = "fp16",
                  batch_sizes: tuple[int, int, int] = (1, 8, 64), calib: EvalInputs | None = None,
                  sparse: bool = False, workspace_gb: float = 4.0, timing_cache: str | Path | None = None,
                  typing: str = "strong", max_recall_drop: float | None = 1.0,
                  thresholds: dict[str, float] | None = None, device: str | None = None,
                  say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build, gate and write ``{image,text}_encoder.{precision}.engine`` in ``out_dir`` (which holds the fp32
    graphs). ``calib``: the evaluation inputs (int8 calibration, real parity inputs, and the recall gate when
    labelled; ``max_recall_drop=None`` skips the recall gate). ``sparse`` sets ``BuilderFlag.SPARSE_WEIGHTS``
    (for models made 2:4 sparse). Raises :class:`ExportError` naming the failed case when an engine misses its
    gate; nothing is written then."""
    from ..atomic import atomic_write_bytes, atomic_write_text
    from .trt_engine import load_runner

    trt = require_tensorrt()
    if typing not in TYPINGS:
        raise ExportConfigError(f"unknown TensorRT typing {typing!r}: use one of {', '.join(TYPINGS)}")
    if precision == "int8" and (calib is None or calib.images is None):
        raise ExportConfigError("TensorRT int8 calibrates on real inputs: give --eval-data SPEC")
    say = say or (lambda m: None)
    out_dir = Path(out_dir)
    model = model.float().eval()
    device = device or GATE_DEVICE
    bmin, bopt, bmax = (int(b) for b in batch_sizes)
    features = detect(trt)
    lines: list[str] = [f"TensorRT {features.version} ({'strongly typed' if typing == 'strong' else 'weak typing'}), "
                        f"precision {precision}, batch 1/{bopt}/{bmax}, sparse_weights={sparse}"]
    if bmin != 1:
        lines.append(f"profile min batch raised from {bmin} to 1 (smaller last chunks and Triton batches must fit)")
    cache = Path(timing_cache) if timing_cache else out_dir / TIMING_CACHE_FILE
    engines: dict[str, Any] = {}
    embeddings: dict[str, np.ndarray] = {}
    ev = calib
    labelled = ev is not None and ev.labelled and max_recall_drop is not None and precision != "fp32"
    for tower in TOWERS:
        onnx_file, name, shape = onnx_name(tower), INPUT_NAMES[tower], input_shape(model, tower)
        data = real = None
        if ev is not None and ev.images is not None:
            data = ev.images.float() if tower == "vision" else ev.tokens.to(torch.int32)
            real = ev.parity_images() if tower == "vision" else ev.parity_tokens()
        say(f"TensorRT {tower} encoder: {precision} graph")
        weak = typing == "weak"
        src, conversion = _graph_for(out_dir, onnx_file, "fp32" if weak else precision, data)
        opts = BuildOptions(graph_precision="fp32" if weak else precision, batch_sizes=(1, bopt, bmax),
                            workspace_gb=workspace_gb, typing=typing, sparse_weights=sparse,
                            timing_cache=cache, extra={"weak_precision": precision} if weak else {})
        if weak:
            prof = load_profiles().get(precision, {})
            opts.extra["pin_fp32"] = prof.get("pin_fp32", [])
            if precision == "int8":
                from .tensorrt_weak import make_calibrator

                opts.calibrator = make_calibrator(trt, data, name, bopt, out_dir / f"{Path(onnx_file).stem}.int8.calib.cache",
                                                  device=device,
                                                  max_batches=int(prof.get("calibration", {}).get("max_batches", 32)))
        sink = LogSink()
        lines.append(f"--- {tower} encoder: {src.name}")
        say(f"TensorRT {tower} encoder: building")
        try:
            plan, info = build_serialized(trt, src, name, shape, opts, sink)
        finally:
            lines += sink.lines
        say(f"TensorRT {tower} encoder: numeric gate at batch 1/{bopt}/{bmax}")
        runner = load_runner(trt, plan, name, device=device)
        cases = _cases(model, tower, real, max(bmax, 4))
        gate = eg.gate_encoder(runner, _reference(model, tower), cases, (1, bopt, bmax), precision, thresholds)
        info["gate"] = gate
        info["graph_conversion"] = conversion
        lines.append(f"gate: min cos {gate['min_cosine']:.6f}, max|diff| {gate['max_abs']:.3g} -> "
                     f"{'passed' if gate['passed'] else 'REFUSED'}")
        if not gate["passed"]:
            atomic_write_text(out_dir / BUILD_LOG_FILE, "\n".join(lines) + "\n")
            raise ExportError(f"TensorRT {precision} {tower} engine refused by the numeric gate vs torch: "
                              f"{eg.gate_summary(gate)}; nothing was written")
        if labelled:
            x = ev.images.float() if tower == "vision" else ev.tokens.to(torch.int32)
            embeddings[tower] = _run_all(runner, x, bmax)
        file = engine_name(tower, precision)
        info.update(file=file, source_graph=src.name)
        engines[tower] = (file, plan, info)
    recall = None
    if labelled:
        say("TensorRT recall gate")
        ref = eg.torch_recall(model, ev)
        recall = eg.recall_gate(embeddings["vision"], embeddings["text"], ev.txt2img, ref, max_recall_drop)
        lines.append(f"recall mean {recall['recall']['recall_mean']:.2f} vs torch fp32 {ref['recall_mean']:.2f} "
                     f"({'passed' if recall['passed'] else 'REFUSED'})")
        if not recall["passed"]:
            atomic_write_text(out_dir / BUILD_LOG_FILE, "\n".join(lines) + "\n")
            raise ExportError(f"TensorRT {precision} engines refused: Recall Mean {recall['recall']['recall_mean']:.2f}"
                              f" is {-recall['recall_delta']:.2f} points below torch fp32 (allowed {max_recall_drop:g})")
    out: dict[str, Any] = {}
    for tower, (file, plan, info) in engines.items():
        atomic_write_bytes(out_dir / file, plan)
        out[tower] = info
    atomic_write_text(out_dir / BUILD_LOG_FILE, "\n".join(lines) + "\n")
    return {"version": features.version, "features": features.to_dict(), "precision": precision, "typing": typing,
            "engines": out, "log": BUILD_LOG_FILE, "sparse_weights": sparse, "recall_gate": recall,
            "batch_sizes": {"min": 1, "opt": bopt, "max": bmax, "requested_min": bmin}}


__all__ = ["build_engines", "require_tensorrt", "load_profiles", "TensorRTUnavailableError", "TYPINGS"]
