"""Gated TensorRT engines for both encoders of a bundle (TensorRT 10.x and 11.x).

Per encoder: the precision's ONNX graph (fp32 as exported; fp16 with fp32 islands; int8 Q/DQ calibrated on the
evaluation inputs: :mod:`..graph_precision`) -> strongly typed engine (:mod:`.api`) -> numeric gate vs the
torch model at batch 1/OPT/MAX, and for fp16/int8 a recall gate (:mod:`.gate`) -> written only when both
pass. ``typing="weak"`` keeps TensorRT 10's flag-based build (fp32 graph + FP16/INT8 flags, fp32 pins from
``export/tensorrt/profiles.json``, an int8 calibrator) where the installed module still has those flags.
Writes ``{image,text}_encoder.{precision}.engine``, the graphs they were built from
(``*.trt-{fp16,int8}.onnx``), ``tensorrt_build.log`` and ``tensorrt_timing.cache``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ... import device as _device
from ...device import TensorRTUnavailableError
from ...models.slim_clip import SlimCLIP
from ...resources import TEMPLATES, read_text
from ...vocab import TOWERS
from . import gate as eg
from ...bundle.manifest import Engine, EngineSet
from ...bundle.names import (BUILD_LOG_FILE, INPUT_NAMES, TIMING_CACHE_FILE, calibration_cache_name, engine_name,
                             onnx_name, trt_graph_name)
from ..config import EvalInputs, ExportConfig, ExportConfigError
from ...atomic import atomic_write_bytes, atomic_write_text
from ..onnx import ExportError, input_shape, random_tokens
from .api import BuildOptions, LogSink, build_serialized, detect

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


@dataclass(frozen=True)
class EngineBuild:
    """How to build and gate the engines of one export (TensorRT and torch-tensorrt alike).

    ``batch_sizes``: MIN,OPT,MAX of the profile (MIN is raised to 1); ``sparse`` sets
    ``BuilderFlag.SPARSE_WEIGHTS`` (2:4 sparse models); ``typing``: ``strong`` (precision from the graph) or
    ``weak`` (TensorRT 10 flags); ``max_recall_drop``: Recall Mean points an fp16/int8 pair may lose vs torch fp32
    (None: no recall gate); ``thresholds``: the numeric gate's (default per precision); ``device``: where the gate
    runs the engines; ``normalize``: torch-tensorrt programs output unit embeddings."""

    precision: str = "fp16"
    batch_sizes: tuple[int, int, int] = (1, 8, 64)
    sparse: bool = False
    workspace_gb: float = 4.0
    timing_cache: str | None = None
    typing: str = "strong"
    max_recall_drop: float | None = 1.0
    thresholds: dict[str, float] | None = field(default=None, hash=False)
    device: str | None = None
    normalize: bool = False

    @classmethod
    def from_export(cls, config: ExportConfig, sparse: bool) -> "EngineBuild":
        """The engine settings an :class:`~..config.ExportConfig` asks for (``sparse``: decided from the model)."""
        return cls(precision=config.precision, batch_sizes=config.batch_range, sparse=sparse,
                   workspace_gb=config.workspace_gb, timing_cache=config.timing_cache, normalize=config.normalize,
                   max_recall_drop=None if config.skip_recall_gate else config.max_recall_drop)

    def profile(self) -> tuple[int, int]:
        """(OPT, MAX) batch of the profile."""
        _, bopt, bmax = (int(b) for b in self.batch_sizes)
        return bopt, bmax


def _graph_for(out_dir: Path, tower: str, precision: str, calib: torch.Tensor | None) -> tuple[Path, Any]:
    """The ONNX graph an engine of ``precision`` is built from (written beside the fp32 one when needed)."""
    from ..graph_precision import convert_fp16_graph, quantize_qdq_graph

    src = out_dir / onnx_name(tower)
    if precision == "fp32":
        return src, None
    dst = out_dir / trt_graph_name(tower, precision)
    if precision == "fp16":
        return dst, convert_fp16_graph(src, dst)
    if calib is None:
        raise ExportConfigError("int8 engines are calibrated on real inputs: give --eval-data SPEC")
    return dst, quantize_qdq_graph(src, dst, calib)


def tower_cases(model: SlimCLIP, tower: str, real: torch.Tensor | None, n: int,
                seed: int = 7) -> dict[str, torch.Tensor]:
    """The gate's inputs for ``tower``: ``n`` random rows, and real ones (``real``, else the sample captions
    through the model's tokenizer) when there are any."""
    g = torch.Generator().manual_seed(seed)
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


def _reference(model: SlimCLIP, tower: str, normalize: bool = False) -> Callable[[torch.Tensor], np.ndarray]:
    @torch.no_grad()
    def ref(x: torch.Tensor) -> np.ndarray:
        if tower == "vision":
            return model.encode_image(x.float(), normalize=normalize).float().numpy()
        return model.encode_text(x.to(torch.int64), normalize=normalize).float().numpy()

    return ref


def _run_all(runner, x: torch.Tensor, batch: int) -> np.ndarray:
    return np.concatenate([runner(x[i:i + batch]) for i in range(0, len(x), batch)])


def eval_tensor(ev: EvalInputs | None, tower: str) -> torch.Tensor | None:
    """All evaluation inputs of ``tower`` as the graphs take them (float32 images / int32 tokens), or None."""
    if ev is None or ev.images is None:
        return None
    return ev.images.float() if tower == "vision" else ev.tokens.to(torch.int32)


def _options(trt, out_dir: Path, tower: str, build: EngineBuild, data: torch.Tensor | None) -> BuildOptions:
    bopt, bmax = build.profile()
    weak = build.typing == "weak"
    cache = Path(build.timing_cache) if build.timing_cache else out_dir / TIMING_CACHE_FILE
    opts = BuildOptions(graph_precision="fp32" if weak else build.precision, batch_sizes=(1, bopt, bmax),
                        workspace_gb=build.workspace_gb, typing=build.typing, sparse_weights=build.sparse,
                        timing_cache=cache, extra={"weak_precision": build.precision} if weak else {})
    if weak:
        prof = load_profiles().get(build.precision, {})
        opts.extra["pin_fp32"] = prof.get("pin_fp32", [])
        if build.precision == "int8":
            from .weak import make_calibrator

            opts.calibrator = make_calibrator(trt, data, INPUT_NAMES[tower], bopt,
                                              out_dir / calibration_cache_name(tower), device=build.device or GATE_DEVICE,
                                              max_batches=int(prof.get("calibration", {}).get("max_batches", 32)))
    return opts


def _build_one(trt, out_dir: Path, model: SlimCLIP, tower: str, build: EngineBuild, ev: EvalInputs | None,
               lines: list[str], say: Callable[[str], None]) -> tuple[bytes, dict[str, Any], Any]:
    """Build and numerically gate one tower's engine; returns (plan, info, runner). Nothing is written here."""
    from .runner import load_runner

    bopt, bmax = build.profile()
    data = eval_tensor(ev, tower)
    real = None if ev is None or ev.images is None else (ev.parity_images() if tower == "vision"
                                                         else ev.parity_tokens())
    say(f"TensorRT {tower} encoder: {build.precision} graph")
    src, conversion = _graph_for(out_dir, tower, "fp32" if build.typing == "weak" else build.precision, data)
    opts = _options(trt, out_dir, tower, build, data)
    sink = LogSink()
    lines.append(f"--- {tower} encoder: {src.name}")
    say(f"TensorRT {tower} encoder: building")
    try:
        plan, info = build_serialized(trt, src, INPUT_NAMES[tower], input_shape(model, tower), opts, sink)
    finally:
        lines += sink.lines
    say(f"TensorRT {tower} encoder: numeric gate at batch 1/{bopt}/{bmax}")
    runner = load_runner(trt, plan, INPUT_NAMES[tower], device=build.device or GATE_DEVICE)
    cases = tower_cases(model, tower, real, max(bmax, 4))
    gate = eg.gate_encoder(runner, _reference(model, tower), cases, (1, bopt, bmax), build.precision,
                           build.thresholds)
    info.update(gate=gate, graph_conversion=conversion, source_graph=src.name)
    lines.append(f"gate: min cos {gate['min_cosine']:.6f}, max|diff| {gate['max_abs']:.3g} -> "
                 f"{'passed' if gate['passed'] else 'REFUSED'}")
    if not gate["passed"]:
        atomic_write_text(out_dir / BUILD_LOG_FILE, "\n".join(lines) + "\n")
        raise ExportError(f"TensorRT {build.precision} {tower} engine refused by the numeric gate vs torch: "
                          f"{eg.gate_summary(gate)}; nothing was written")
    return plan, info, runner


def _check(build: EngineBuild, calib: EvalInputs | None) -> None:
    if build.typing not in TYPINGS:
        raise ExportConfigError(f"unknown TensorRT typing {build.typing!r}: use one of {', '.join(TYPINGS)}")
    if build.precision == "int8" and (calib is None or calib.images is None):
        raise ExportConfigError("TensorRT int8 calibrates on real inputs: give --eval-data SPEC")


def build_engines(out_dir: str | Path, model: SlimCLIP, build: EngineBuild | None = None,
                  calib: EvalInputs | None = None, say: Callable[[str], None] | None = None) -> EngineSet:
    """Build, gate and write ``{image,text}_encoder.{precision}.engine`` in ``out_dir`` (which holds the fp32
    graphs). ``calib``: the evaluation inputs (int8 calibration, real parity inputs, and the recall gate when
    labelled). Raises :class:`ExportError` naming the failed case when an engine misses its gate; nothing is
    written then. Returns the engines' record for the manifest."""
    build = build or EngineBuild()
    trt = require_tensorrt()
    _check(build, calib)
    say = say or (lambda m: None)
    out_dir = Path(out_dir)
    model = model.float().eval()
    bmin, (bopt, bmax) = int(build.batch_sizes[0]), build.profile()
    features = detect(trt)
    lines: list[str] = [f"TensorRT {features.version} ({'strongly typed' if build.typing == 'strong' else 'weak typing'}"
                        f"), precision {build.precision}, batch 1/{bopt}/{bmax}, sparse_weights={build.sparse}"]
    if bmin != 1:
        lines.append(f"profile min batch raised from {bmin} to 1 (smaller last chunks and Triton batches must fit)")
    built, embeddings = {}, {}
    labelled = (calib is not None and calib.labelled and build.max_recall_drop is not None
                and build.precision != "fp32")
    for tower in TOWERS:
        plan, info, runner = _build_one(trt, out_dir, model, tower, build, calib, lines, say)
        if labelled:
            embeddings[tower] = _run_all(runner, eval_tensor(calib, tower), bmax)
        built[tower] = (plan, info)
    recall = _recall_gate(model, calib, embeddings, build, lines, say, out_dir) if labelled else None
    engines = {}
    for tower, (plan, info) in built.items():
        file = engine_name(tower, build.precision)
        atomic_write_bytes(out_dir / file, plan)
        engines[tower] = Engine(file=file, precision=build.precision, made_from=info.pop("source_graph"),
                                profile=info.pop("profile"), gate=info.pop("gate"), details=info)
    atomic_write_text(out_dir / BUILD_LOG_FILE, "\n".join(lines) + "\n")
    return EngineSet(format="tensorrt", version=features.version, precision=build.precision, engines=engines,
                     recall_gate=recall,
                     details={"features": features.to_dict(), "typing": build.typing, "log": BUILD_LOG_FILE,
                              "sparse_weights": build.sparse,
                              "batch_sizes": {"min": 1, "opt": bopt, "max": bmax, "requested_min": bmin}})


def _recall_gate(model, calib, embeddings, build: EngineBuild, lines, say, out_dir: Path) -> dict[str, Any]:
    say("TensorRT recall gate")
    ref = eg.torch_recall(model, calib)
    recall = eg.recall_gate(embeddings["vision"], embeddings["text"], calib.txt2img, ref, build.max_recall_drop)
    lines.append(f"recall mean {recall['recall']['recall_mean']:.2f} vs torch fp32 {ref['recall_mean']:.2f} "
                 f"({'passed' if recall['passed'] else 'REFUSED'})")
    if not recall["passed"]:
        atomic_write_text(out_dir / BUILD_LOG_FILE, "\n".join(lines) + "\n")
        raise ExportError(f"TensorRT {build.precision} engines refused: Recall Mean "
                          f"{recall['recall']['recall_mean']:.2f} is {-recall['recall_delta']:.2f} points below torch "
                          f"fp32 (allowed {build.max_recall_drop:g})")
    return recall


__all__ = ["EngineBuild", "build_engines", "require_tensorrt", "load_profiles", "tower_cases", "eval_tensor",
           "TensorRTUnavailableError", "TYPINGS"]
