"""OpenVINO IR for both towers: fp32, and int8 by NNCF (static activation scales calibrated on the evaluation
inputs, ``model_type=TRANSFORMER``), each under the gates the ONNX variants pass.

- fp32 IR (``ov.convert_model`` of the plain fp32 ONNX graph): within ``atol`` of torch on random and real inputs.
- int8 IR (``nncf.quantize``): its Recall Mean at most ``max_recall_drop`` points below the fp32 IR's. When it
  loses more, it is quantised again with the layers that hurt most kept in fp32 (NNCF's ignored scope: the
  output projection and the first block's attention input projection, where int8 error is measured to hurt most in
  the ONNX sensitivity pass, docs/RESULTS.md); still failing, it is refused and its files are removed.
- Each variant records whether an input's embedding is the same alone and inside batches of 3 and 8
  (``batch_invariant``: static scales make it so). Per tower, the int8 IR is timed next to ONNX Runtime's int8
  graph at export time, and the faster one is what the ``openvino`` runtime opens for that tower (the record's
  ``runtime``: ``{tower: variant}``, the manifest's ``runtime["openvino"]``).
- Inference precision is always set explicitly (``f32`` by default): OpenVINO's CPU default is bf16 on any
  CPU with AVX-512 BF16, which was 1.2-1.6x slower than f32 on a CPU without AMX and changes the numbers.

Needs the optional ``openvino`` extra (``pip install 'mope-deploy[openvino]'``: openvino, nncf).
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..device import BackendUnavailableError
from ..vocab import TOWERS
from ..bundle.names import DEPLOY_NAMES
from .config import FP32_ATOL, MAX_RECALL_DROP

INSTALL = "pip install 'mope-deploy[openvino]' (openvino and nncf)"
FP32, INT8 = "openvino", "openvino-int8"
VARIANTS = (FP32, INT8)
INFERENCE_PRECISIONS = ("f32", "bf16", "f16")
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT")
INVARIANCE_BATCHES = (3, 8)
INVARIANCE_TOL = 1e-6  # on L2-normalised embeddings


class OpenVINOUnavailableError(BackendUnavailableError):
    """openvino (or nncf, for int8) is not installed."""


def openvino_missing(int8: bool = False) -> str | None:
    """None when OpenVINO (and NNCF for ``int8``) can be imported, else why not with the install command."""
    for mod in ("openvino",) + (("nncf",) if int8 else ()):
        try:
            found = importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return f"{mod} is not installed ({INSTALL})"
    return None


def require_openvino(int8: bool = False):
    """The ``openvino`` module, or :class:`OpenVINOUnavailableError` naming the install command."""
    why = openvino_missing(int8)
    if why is None:
        try:
            import openvino as ov
            return ov
        except ImportError as e:
            why = f"openvino cannot be imported ({e}); {INSTALL}"
    raise OpenVINOUnavailableError(why)


def ir_name(tower: str, variant: str = FP32) -> str:
    """``image_encoder.openvino.xml`` / ``image_encoder.openvino-int8.xml`` (weights: the same name, ``.bin``)."""
    if tower not in TOWERS or variant not in VARIANTS:
        raise ValueError(f"ir_name({tower!r}, {variant!r}): tower in {TOWERS}, variant in {VARIANTS}")
    return f"{DEPLOY_NAMES[tower]}_encoder.{variant}.xml"


def ir_files(variant: str) -> dict[str, str]:
    return {t: ir_name(t, variant) for t in TOWERS}


@dataclass(frozen=True)
class OpenVINOExportConfig:
    """Settings of the OpenVINO step. ``max_recall_drop``: Recall Mean points the int8 IR may lose vs the fp32
    IR (a negative value demands a gain: tests use it to force a refusal); ``calibration_limit`` inputs in
    batches of ``calibration_batch`` calibrate NNCF; ``ignored``: op names kept fp32 from the start;
    ``auto_ignore``: on a failed recall gate, retry once with the sensitive layers fp32; ``smooth_quant``: NNCF's
    SmoothQuant pass (off: it cost fidelity on the demo); no ``--eval-data``: calibration on the seeded synthetic
    set and no recall gate; ``time_batch`` /
    ``time_iters``: the per-tower speed measurement behind ``runtime``."""

    int8: bool = True
    atol: float = FP32_ATOL
    normalize: bool = False
    max_recall_drop: float = MAX_RECALL_DROP
    skip_recall_gate: bool = False
    calibration_limit: int = 64
    calibration_batch: int = 8
    ignored: tuple[str, ...] = ()
    auto_ignore: bool = True
    smooth_quant: bool = False
    inference_precision: str = "f32"
    threads: int | None = None
    time_batch: int = 8
    time_iters: int = 3

    @classmethod
    def from_export(cls, config: Any) -> "OpenVINOExportConfig":
        """The OpenVINO settings an :class:`~.config.ExportConfig` implies (same gates as the ONNX variants)."""
        return cls(atol=config.atol, normalize=config.normalize, max_recall_drop=config.max_recall_drop,
                   skip_recall_gate=config.skip_recall_gate)

    def check(self) -> "OpenVINOExportConfig":
        from .config import ExportConfigError

        if self.inference_precision not in INFERENCE_PRECISIONS:
            raise ExportConfigError(f"unknown OpenVINO inference precision {self.inference_precision!r}: use one "
                                    f"of {', '.join(INFERENCE_PRECISIONS)}")
        if self.calibration_limit < 1 or self.calibration_batch < 1 or self.time_batch < 1 or self.time_iters < 1:
            raise ExportConfigError("calibration_limit, calibration_batch, time_batch and time_iters must be >= 1")
        return self


def compile_ir(path: str | Path, threads: int | None = None, precision: str = "f32", hint: str = "LATENCY",
               core: Any = None) -> Any:
    """An OpenVINO ``CompiledModel`` on the CPU with the inference precision and performance hint set
    explicitly (and ``threads`` inference threads when given)."""
    ov = require_openvino()
    import openvino.properties as props
    import openvino.properties.hint as hints

    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(f"inference precision {precision!r}: use one of {', '.join(INFERENCE_PRECISIONS)}")
    if hint not in PERFORMANCE_HINTS:
        raise ValueError(f"performance hint {hint!r}: use one of {', '.join(PERFORMANCE_HINTS)}")
    cfg: dict[Any, Any] = {hints.inference_precision: getattr(ov.Type, precision),
                           hints.performance_mode: getattr(hints.PerformanceMode, hint)}
    if threads:
        cfg[props.inference_num_threads] = int(threads)
    core = core or ov.Core()
    return core.compile_model(str(path), "CPU", cfg)


def run_compiled(compiled: Any, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The first output of ``compiled`` on ``x`` in chunks of ``batch_size`` rows (float32)."""
    req = compiled.create_infer_request()
    outs = []
    for i in range(0, len(x), batch_size):
        req.infer({0: np.ascontiguousarray(x[i:i + batch_size])})
        outs.append(np.array(req.get_output_tensor(0).data, dtype=np.float32))
    return np.concatenate(outs)


def convert_to_ir(onnx_path: str | Path, xml: str | Path) -> dict[str, Any]:
    """fp32 IR of an ONNX graph (weights kept fp32: ``compress_to_fp16=False``)."""
    ov = require_openvino()
    m = ov.convert_model(str(onnx_path))
    ov.save_model(m, str(xml), compress_to_fp16=False)
    return {"from": Path(onnx_path).name, "openvino": ov.get_version()}


def quantize_ir(fp32_xml: str | Path, int8_xml: str | Path, batches: Sequence[np.ndarray],
                ignored: Sequence[str] = (), smooth_quant: bool = False) -> dict[str, Any]:
    """NNCF post-training int8 (``model_type=TRANSFORMER``) of an fp32 IR, calibrated on ``batches`` (one
    input array per batch); ``ignored``: op names kept fp32. ``smooth_quant`` off by default: on the demo
    teacher it cut the mean cosine vs fp32 from 0.99989 to 0.99933 (vision) and from 0.99993 to 0.99777 (text),
    min 0.983, and it changes no kernel."""
    ov = require_openvino(int8=True)
    import logging

    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    batches = [np.ascontiguousarray(b) for b in batches]
    if not batches:
        raise ValueError("no calibration batches: give --eval-data")
    scope = nncf.IgnoredScope(names=list(ignored), validate=False) if ignored else None
    advanced = None if smooth_quant else AdvancedQuantizationParameters(
        smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1))  # a negative alpha turns it off
    m = ov.Core().read_model(str(fp32_xml))
    nncf_log = logging.getLogger("nncf")  # nncf logs every step at INFO on its own handler: quiet it, then restore
    level = nncf_log.level
    nncf_log.setLevel(logging.WARNING)
    try:
        q = nncf.quantize(m, nncf.Dataset(batches), model_type=nncf.ModelType.TRANSFORMER,
                          subset_size=len(batches), ignored_scope=scope, advanced_parameters=advanced)
    finally:
        nncf_log.setLevel(level)
    ov.save_model(q, str(int8_xml), compress_to_fp16=False)
    return {"method": "nncf.quantize", "model_type": "TRANSFORMER", "nncf": nncf.__version__,
            "calibration_batches": len(batches), "calibration_inputs": int(sum(len(b) for b in batches)),
            "smooth_quant": smooth_quant, "ignored": list(ignored)}


def sensitive_ops(xml: str | Path) -> list[str]:
    """The ops whose int8 error hurts embeddings most (the ONNX sensitivity pass, docs/RESULTS.md): the last
    MatMul (the output projection) and the first MatMul (the first block's attention input projection)."""
    ov = require_openvino()
    mm = [op.get_friendly_name() for op in ov.Core().read_model(str(xml)).get_ordered_ops()
          if op.get_type_name() == "MatMul"]
    return list(dict.fromkeys([mm[-1], mm[0]])) if mm else []


def _normalized(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-30)


def batch_invariance(compiled: Any, x: np.ndarray, batch_sizes: Sequence[int] = INVARIANCE_BATCHES) -> float:
    """Largest element difference of an input's normalised embedding alone vs inside batches of each size."""
    n = max(batch_sizes)
    alone = _normalized(np.concatenate([run_compiled(compiled, x[i:i + 1]) for i in range(n)]))
    worst = 0.0
    for b in batch_sizes:
        m = n - n % b
        together = _normalized(np.concatenate([run_compiled(compiled, x[i:i + b]) for i in range(0, m, b)]))
        worst = max(worst, float(np.abs(together - alone[:m]).max()))
    return worst


@dataclass
class _Inputs:
    """What the gates run: parity inputs per tower (random + real), labelled eval data (or None)."""

    parity: dict[str, list[np.ndarray]]
    calib: dict[str, list[np.ndarray]]
    images: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    txt2img: torch.Tensor | None = None
    invariance: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def labelled(self) -> bool:
        return self.images is not None and self.tokens is not None and self.txt2img is not None


def _inputs(model: Any, ev: Any, config: OpenVINOExportConfig) -> _Inputs:
    from .onnx import random_tokens

    g = torch.Generator().manual_seed(0)
    s = model.config.vision.image_size
    rand = {"vision": [torch.randn(b, 3, s, s, generator=g).numpy() for b in (1, 3)],
            "text": [random_tokens(model, b, g).numpy().astype(np.int32) for b in (1, 3)]}
    real = {"vision": None if ev is None or ev.images is None else ev.images.float().numpy(),
            "text": None if ev is None or ev.tokens is None else ev.tokens.to(torch.int32).numpy()}
    parity, calib, inv = {}, {}, {}
    n_inv = max(INVARIANCE_BATCHES)
    synthetic = None
    for t in TOWERS:
        r = real[t]
        parity[t] = rand[t] + ([r[:8]] if r is not None else [])
        if r is None:  # no --eval-data: calibrate on the seeded synthetic set through the model's own processing
            from .quantize import synthetic_calibration

            synthetic = synthetic or synthetic_calibration(model.config, config.calibration_limit,
                                                           config.calibration_batch)
            r = np.concatenate(synthetic[t])
        src = r
        lim = src[:config.calibration_limit]
        calib[t] = [lim[i:i + config.calibration_batch] for i in range(0, len(lim), config.calibration_batch)]
        pool = src if len(src) >= n_inv else np.concatenate([src] + rand[t] * n_inv)
        inv[t] = pool[:n_inv]
    return _Inputs(parity, calib, getattr(ev, "images", None), getattr(ev, "tokens", None),
                   getattr(ev, "txt2img", None), inv)


@torch.no_grad()
def _parity(model: Any, compiled: dict[str, Any], inputs: _Inputs, config: OpenVINOExportConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"atol": config.atol}
    worst = 0.0
    for t in TOWERS:
        diffs = []
        for x in inputs.parity[t]:
            xt = torch.from_numpy(x)
            ref = (model.encode_image(xt.float(), normalize=config.normalize) if t == "vision" else
                   model.encode_text(xt.long(), normalize=config.normalize)).float().numpy()
            diffs.append(float(np.abs(run_compiled(compiled[t], x) - ref).max()))
        out[t] = {"max_abs": max(diffs), "batches": [len(x) for x in inputs.parity[t]]}
        worst = max(worst, max(diffs))
    out.update(max_abs=worst, passed=worst <= config.atol)
    return out


def _recall(compiled: dict[str, Any], inputs: _Inputs) -> dict[str, float]:
    from ..eval.retrieval import retrieval_metrics

    img = run_compiled(compiled["vision"], inputs.images.float().numpy(), 32)
    txt = run_compiled(compiled["text"], inputs.tokens.to(torch.int32).numpy(), 64)
    m = retrieval_metrics(torch.from_numpy(_normalized(img)).float(), torch.from_numpy(_normalized(txt)).float(),
                          inputs.txt2img)
    return {k: float(v) for k, v in m.items()}


def _compile_all(root: Path, variant: str, config: OpenVINOExportConfig) -> dict[str, Any]:
    ov = require_openvino()
    core = ov.Core()
    return {t: compile_ir(root / ir_name(t, variant), config.threads, config.inference_precision, core=core)
            for t in TOWERS}


def _invariance(compiled: dict[str, Any], inputs: _Inputs) -> dict[str, Any]:
    inv = {t: batch_invariance(compiled[t], inputs.invariance[t]) for t in TOWERS}
    return {"batch_invariant": all(v <= INVARIANCE_TOL for v in inv.values()),
            "batch_invariance": {"max_abs": inv, "batches": list(INVARIANCE_BATCHES), "tolerance": INVARIANCE_TOL,
                                 "on": "L2-normalised embeddings, each input alone vs inside a batch"}}


def _remove(root: Path, variant: str) -> None:
    for t in TOWERS:
        xml = root / ir_name(t, variant)
        for f in (xml, xml.with_suffix(".bin")):
            f.unlink(missing_ok=True)


def _fp32_variant(model: Any, root: Path, onnx_files: dict[str, Path], inputs: _Inputs,
                  config: OpenVINOExportConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    info = {t: convert_to_ir(onnx_files[t], root / ir_name(t, FP32)) for t in TOWERS}
    compiled = _compile_all(root, FP32, config)
    parity = _parity(model, compiled, inputs, config)
    rec: dict[str, Any] = {"files": ir_files(FP32), "precision": "fp32", "runtimes": ["openvino"],
                           "inference_precision": config.inference_precision, "made_from": "fp32",
                           "converted_from": info["vision"]["from"],
                           "parity": parity}
    rec.update(_invariance(compiled, inputs))
    if not parity["passed"]:
        raise ValueError(f"the OpenVINO fp32 IR differs from torch by {parity['max_abs']:.3g} (> atol "
                         f"{config.atol:g})")
    if inputs.labelled:
        rec["recall"] = _recall(compiled, inputs)
    return rec, compiled


def _int8_try(root: Path, inputs: _Inputs, config: OpenVINOExportConfig, ignored: dict[str, list[str]],
              fp32: dict[str, Any]) -> dict[str, Any]:
    method = {t: quantize_ir(root / ir_name(t, FP32), root / ir_name(t, INT8), inputs.calib[t], ignored[t],
                             config.smooth_quant) for t in TOWERS}
    compiled = _compile_all(root, INT8, config)
    rec: dict[str, Any] = {"files": ir_files(INT8), "precision": "int8", "runtimes": ["openvino"],
                           "inference_precision": config.inference_precision, "made_from": FP32,
                           "method": {k: v for k, v in method["vision"].items() if k != "ignored"},
                           "ignored": {t: method[t]["ignored"] for t in TOWERS}}
    rec.update(_invariance(compiled, inputs))
    agreement = {}
    for t in TOWERS:
        x = np.concatenate([p for p in inputs.parity[t]])
        ref = _normalized(run_compiled(fp32["compiled"][t], x))
        agreement[t] = {"min_cosine": float((ref * _normalized(run_compiled(compiled[t], x))).sum(-1).min())}
    rec["agreement_vs_fp32"] = agreement
    rec["compiled"] = compiled
    if inputs.labelled:
        rec["recall"] = _recall(compiled, inputs)
        rec["recall_delta"] = rec["recall"]["recall_mean"] - fp32["recall"]["recall_mean"]
    return rec


def _int8_variant(root: Path, inputs: _Inputs, config: OpenVINOExportConfig, fp32: dict[str, Any],
                  say: Callable[[str], None]) -> dict[str, Any]:
    """The NNCF int8 IR under the recall gate, retried once with the sensitive ops fp32; raises ValueError
    (files removed) when it still loses too much."""
    ignored = {t: list(config.ignored) for t in TOWERS}
    rec = _int8_try(root, inputs, config, ignored, fp32)
    gated = inputs.labelled and not config.skip_recall_gate

    def fails(r: dict[str, Any]) -> bool:
        return gated and -r["recall_delta"] > config.max_recall_drop

    if fails(rec) and config.auto_ignore:
        say(f"OpenVINO int8 loses {-rec['recall_delta']:.2f} points of Recall Mean; retrying with the sensitive "
            "layers in fp32")
        ignored = {t: list(dict.fromkeys(ignored[t] + sensitive_ops(root / ir_name(t, FP32)))) for t in TOWERS}
        first = -rec["recall_delta"]
        rec = _int8_try(root, inputs, config, ignored, fp32)
        rec["first_try_recall_drop"] = first
    if fails(rec):
        _remove(root, INT8)
        raise ValueError(f"the OpenVINO int8 IR loses {-rec['recall_delta']:.2f} points of Recall Mean vs fp32 "
                         f"(allowed {config.max_recall_drop:g})")
    rec["recall_gate"] = ("passed" if gated else
                          "skipped by --skip-recall-gate" if config.skip_recall_gate else "no --eval-data")
    return rec


def _median_ms(fns: dict[str, Callable[[], Any]], iters: int) -> dict[str, float]:
    """Median ms of each callable, called round-robin (one warm-up each)."""
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(iters):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: float(np.median(v)) for k, v in times.items()}


def _pick(compiled: dict[str, Any], ort_int8: tuple[str, dict[str, Path]] | None, inputs: _Inputs,
          config: OpenVINOExportConfig) -> dict[str, Any]:
    """Per tower: the int8 IR and ONNX Runtime's int8 graph (``ort_int8 = (variant name, {tower: path})``)
    timed side by side at ``time_batch``; ``{tower: {median_ms, variant}}`` with the faster one's variant."""
    from .onnx import ort_session

    out: dict[str, Any] = {"batch": config.time_batch, "iters": config.time_iters, "threads": config.threads}
    for t in TOWERS:
        pool = inputs.invariance[t]
        x = np.concatenate([pool] * (config.time_batch // len(pool) + 1))[:config.time_batch]
        req = compiled[t].create_infer_request()
        fns: dict[str, Callable[[], Any]] = {INT8: lambda req=req, x=x: req.infer({0: x})}
        if ort_int8 is not None and Path(ort_int8[1][t]).is_file():
            s = ort_session(ort_int8[1][t], threads=config.threads)
            feed = {s.get_inputs()[0].name: x}
            fns[ort_int8[0]] = lambda s=s, feed=feed: s.run(None, feed)
        ms = _median_ms(fns, config.time_iters)
        out[t] = {"median_ms": ms, "variant": min(ms, key=ms.get)}
    return out


def export_openvino(model: Any, root: str | Path, onnx_files: dict[str, Path], ev: Any = None,
                    config: OpenVINOExportConfig | None = None,
                    ort_int8: tuple[str, dict[str, Path]] | None = None,
                    say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write the OpenVINO IR variants of ``model`` into ``root`` from its fp32 ONNX graphs ``onnx_files``
    (``{tower: path}``) and return ``{variants: {name: variant record}, refused: {name: why}, runtime:
    {tower: variant}, versions}``; each variant record has the manifest's ``Variant`` fields (the rest goes
    to its ``details``). ``ev``: :class:`~.config.EvalInputs` (calibration and the recall gate); ``ort_int8``:
    ``(variant name, {tower: path})`` of ONNX Runtime's int8 graphs, timed against the int8 IR per tower
    (``runtime`` names the faster). A variant that fails its gate is not written."""
    config = (config or OpenVINOExportConfig()).check()
    require_openvino(int8=config.int8)
    say = say or (lambda msg: None)
    root = Path(root)
    inputs = _inputs(model, ev, config)
    record: dict[str, Any] = {"variants": {}, "refused": {}, "runtime": {}}
    say("OpenVINO fp32 IR")
    try:
        fp32, compiled = _fp32_variant(model, root, onnx_files, inputs, config)
    except ValueError as e:
        _remove(root, FP32)
        record["refused"][FP32] = str(e)
        return record
    record["variants"][FP32] = fp32
    record["runtime"] = {t: FP32 for t in TOWERS}
    if config.int8:
        say("OpenVINO int8 IR (NNCF)")
        try:
            rec = _int8_variant(root, inputs, config, {**fp32, "compiled": compiled}, say)
        except ValueError as e:
            record["refused"][INT8] = str(e)
            say(f"OpenVINO int8 IR not kept: {e}")
        else:
            timing = _pick(rec.pop("compiled"), ort_int8, inputs, config)
            rec["speed_at_export"] = timing
            record["variants"][INT8] = rec
            record["runtime"] = {t: timing[t]["variant"] for t in TOWERS}
    import openvino as ov

    record["versions"] = {"openvino": ov.get_version()}
    if config.int8:
        import nncf

        record["versions"]["nncf"] = nncf.__version__
    return record


def add_to_bundle(root: str | Path, model: Any, ev: Any = None, config: OpenVINOExportConfig | None = None,
                  say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """:func:`export_openvino` on an existing bundle (its fp32 ONNX graphs; its ONNX Runtime int8 variant, when
    present and batch-invariant, is the per-tower alternative), recorded in its manifest: the IR variants in
    ``variants``, the refused ones in ``refused_variants``, the per-tower choice in ``runtime["openvino"]``.
    Returns the record."""
    from ..bundle import Bundle, Variant

    b = Bundle(root)
    m = b.manifest
    onnx_files = {t: b.root / m.variants["fp32"].files[t] for t in TOWERS}
    ort = m.variants.get("int8")
    # only a batch-invariant int8 graph may stand in for the IR: the backend's embeddings must not move with the batch
    ort_int8 = ("int8", {t: b.root / ort.files[t] for t in TOWERS}) if ort is not None and ort.batch_invariant else None
    rec = export_openvino(model, b.root, onnx_files, ev, config, ort_int8, say)
    for name in VARIANTS:
        m.variants.pop(name, None)
        m.refused_variants.pop(name, None)
    m.variants.update({n: Variant.from_dict(v) for n, v in rec["variants"].items()})
    m.refused_variants.update(rec["refused"])
    if rec["runtime"]:
        m.runtime["openvino"] = dict(rec["runtime"])
    b.write_manifest(m)
    return rec


__all__ = ["OpenVINOExportConfig", "OpenVINOUnavailableError", "export_openvino", "add_to_bundle", "convert_to_ir",
           "quantize_ir",
           "compile_ir", "run_compiled", "batch_invariance", "sensitive_ops", "ir_name", "ir_files",
           "openvino_missing", "require_openvino", "INSTALL", "FP32", "INT8", "VARIANTS", "INFERENCE_PRECISIONS",
           "PERFORMANCE_HINTS"]
