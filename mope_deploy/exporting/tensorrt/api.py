"""The TensorRT builder calls, written once for TensorRT 10.x and 11.x (Python bindings).

What differs between the two generations is found by feature detection on the imported module (``hasattr``
on the real enums and classes), never by parsing version strings:

* ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` exists in 10.x (opt-in) and in 11.x, where it is accepted
  and ignored because every network is strongly typed (TensorRT 11.0 Python API, ``Builder`` page:
  "Deprecated in TensorRT 11.0. Strongly typed mode is always enabled. This flag is retained for API
  compatibility but is ignored"). We always set it when present.
* ``BuilderFlag.FP16/INT8/OBEY_PRECISION_CONSTRAINTS``, ``IBuilderConfig.int8_calibrator``,
  ``set_calibration_profile``, ``ILayer.precision``/``set_output_type`` and the ``IInt8*Calibrator`` classes
  are gone in 11.x ("Removed Python APIs and Replacements", TensorRT 10.x -> 11.x migration guide: replaced by
  strong typing and explicit Q/DQ quantisation). The flag-based ("weak") path is therefore only offered where
  the installed module still has them (:attr:`TrtFeatures.weak_typing`).
* ``BuilderFlag.TF32``/``SPARSE_WEIGHTS`` are not precision-enabling flags and stay in both; in a strongly
  typed network precision-enabling flags are not allowed (``STRONGLY_TYPED`` doc: "Setting layer precision
  and layer output types is not allowed"), so the strong path sets none of them.

Checked against the real bindings as well as the docs: the strings of ``tensorrt_bindings/tensorrt.so`` in the
``tensorrt-cu12-bindings`` 10.13.3.9 wheel name ``STRONGLY_TYPED``, ``EXPLICIT_BATCH``,
``OBEY_PRECISION_CONSTRAINTS``, ``IInt8EntropyCalibrator2``, ``int8_calibrator``, ``set_calibration_profile``,
``set_output_type``; those of ``tensorrt-cu13-bindings`` 11.1.0.106 (what torch-tensorrt 2.14 pins) keep only
``STRONGLY_TYPED``, ``TF32`` and ``SPARSE_WEIGHTS``, and document ``IBuilderConfig.set_timing_cache`` as returning
a bool and ``get_timing_cache`` as "None if no timing cache is set".

Precision therefore lives in the ONNX graph (:mod:`.graph_precision`: fp16 with fp32 islands, int8 as Q/DQ) and
the engine follows the graph's types.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..onnx import ExportError

#: ILogger.Severity values (TensorRT C++ ``ILogger::Severity``: kINTERNAL_ERROR=0, kERROR=1, kWARNING=2,
#: kINFO=3, kVERBOSE=4; the Python enum has the same members and converts with ``int()``)
SEVERITY_NAMES = {0: "INTERNAL_ERROR", 1: "ERROR", 2: "WARNING", 3: "INFO", 4: "VERBOSE"}
KEEP_SEVERITY = 3  # INFO and above go to the build log; VERBOSE (thousands of tactic lines) is dropped
ERROR_SEVERITY = 1
MAX_LOG_LINES = 2000
#: layer types whose float math is pinned to fp32 on the weak (flag-based) path only
WEAK_PIN_FP32 = ("NORMALIZATION", "SOFTMAX", "REDUCE", "TOPK")


@dataclass(frozen=True)
class TrtFeatures:
    """What the imported ``tensorrt`` module offers (by ``hasattr``; the version is only reported)."""

    version: str
    strongly_typed_flag: bool        # NetworkDefinitionCreationFlag.STRONGLY_TYPED exists
    weak_typing: bool                # BuilderFlag.FP16/INT8/OBEY_PRECISION_CONSTRAINTS + calibrators exist
    tf32_flag: bool
    sparse_weights_flag: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def detect(trt) -> TrtFeatures:
    flag = getattr(trt, "BuilderFlag", None)
    ndcf = getattr(trt, "NetworkDefinitionCreationFlag", None)
    weak = (flag is not None and all(hasattr(flag, n) for n in ("FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"))
            and hasattr(trt, "IInt8EntropyCalibrator2"))
    return TrtFeatures(version=str(getattr(trt, "__version__", "?")),
                       strongly_typed_flag=ndcf is not None and hasattr(ndcf, "STRONGLY_TYPED"),
                       weak_typing=weak, tf32_flag=flag is not None and hasattr(flag, "TF32"),
                       sparse_weights_flag=flag is not None and hasattr(flag, "SPARSE_WEIGHTS"))


def _severity(sev) -> int:
    try:
        return int(sev)
    except (TypeError, ValueError):
        name = getattr(sev, "name", str(sev)).upper()
        return next((k for k, v in SEVERITY_NAMES.items() if v == name), 3)


class LogSink:
    """Collects builder messages at INFO and above (VERBOSE is not kept: it floods the log and buries the
    cause of a failure) and keeps the errors apart, so a failure message quotes the errors themselves."""

    def __init__(self, lines: list[str] | None = None, keep: int = KEEP_SEVERITY):
        self.lines = lines if lines is not None else []
        self.errors: list[str] = []
        self.dropped = 0
        self.keep = keep

    def __call__(self, severity, msg: str) -> None:
        level = _severity(severity)
        if level <= ERROR_SEVERITY:
            self.errors.append(f"[{SEVERITY_NAMES.get(level, level)}] {msg}")
        if level > self.keep:
            self.dropped += 1
            return
        if len(self.lines) < MAX_LOG_LINES:
            self.lines.append(f"[{SEVERITY_NAMES.get(level, level)}] {msg}")

    def tail(self, n: int = 10) -> str:
        """The errors when there are any, else the last ``n`` kept messages."""
        picked = self.errors[-n:] if self.errors else self.lines[-n:]
        return "\n".join(picked) if picked else "(TensorRT logged nothing at INFO or above)"


def make_logger(trt, sink: LogSink):
    """A ``trt.ILogger`` subclass forwarding to ``sink`` (custom loggers receive every severity)."""

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            sink(severity, msg)

    return _Logger()


def create_network(trt, builder, features: TrtFeatures, strong: bool):
    """An explicit-batch network, strongly typed when ``strong`` (TensorRT 10: ``1 << STRONGLY_TYPED``;
    11: the same flag, ignored because every network is)."""
    flags = 0
    if strong and features.strongly_typed_flag:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    elif strong and features.weak_typing:
        raise ExportError(f"TensorRT {features.version} has neither strongly typed networks nor the builder flags "
                          "of weak typing; upgrade to TensorRT >= 10")
    return builder.create_network(flags)


def parse_onnx(trt, network, logger, onnx_path: Path) -> None:
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # by path, so external weight files are found
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(f"TensorRT could not parse {onnx_path.name}: " + "; ".join(errors))


def attach_timing_cache(config, cache_path: Path, sink: LogSink) -> dict[str, Any]:
    """Load ``cache_path`` into the config; a stale or foreign cache (another TensorRT version or GPU) is
    reported and replaced by an empty one instead of failing the build later.

    ``IBuilderConfig.create_timing_cache(blob)`` returns None for a blob it cannot read, and
    ``set_timing_cache(cache, ignore_mismatch)`` returns a bool (False: rejected, e.g. a header mismatch); a
    rejected cache leaves ``get_timing_cache()`` without a cache, so ``serialize()`` would crash after the
    build. Both results are checked here.
    """
    data = cache_path.read_bytes() if cache_path.is_file() else b""
    state = "new" if not data else "loaded"
    cache = config.create_timing_cache(data) if data else None
    ok = bool(cache is not None and config.set_timing_cache(cache, False))
    if data and not ok:
        sink(2, f"timing cache {cache_path.name} was refused (another TensorRT version or GPU); starting a new one")
        state = "stale, replaced"
    if not ok:
        cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, False):
            sink(2, "TensorRT refused an empty timing cache; building without one")
            return {"file": cache_path.name, "state": "unavailable"}
    return {"file": cache_path.name, "state": state}


def save_timing_cache(config, cache_path: Path, info: dict[str, Any]) -> None:
    if info.get("state") == "unavailable":
        return
    cache = config.get_timing_cache()
    if cache is None:
        info["state"] = "not saved (TensorRT returned no cache)"
        return
    from ...atomic import atomic_write_bytes

    atomic_write_bytes(cache_path, bytes(cache.serialize()))


def _float_types(trt) -> tuple:
    return tuple(getattr(trt, n) for n in ("float32", "float16") if hasattr(trt, n))


def pin_fp32(trt, network, layer_types: Sequence[str] = WEAK_PIN_FP32) -> list[str]:
    """Weak path only: pin float layers of the given ``trt.LayerType`` names to fp32 (``layer.precision`` and
    float output types). Layers with no float output (int32 reductions over token ids, the int32 indices of a
    TopK made from ArgMax) are left alone and not counted: they do not compute in floating point."""
    floats = _float_types(trt)
    wanted = {getattr(trt.LayerType, t) for t in layer_types if hasattr(trt.LayerType, t)}
    pinned = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type not in wanted:
            continue
        outs = [layer.get_output(j) for j in range(layer.num_outputs)]
        float_outs = [j for j, t in enumerate(outs) if t.dtype in floats]
        if not float_outs:
            continue
        layer.precision = trt.float32
        for j in float_outs:
            layer.set_output_type(j, trt.float32)
        pinned.append(layer.name)
    return pinned


@dataclass
class BuildOptions:
    """How to build one engine. ``graph_precision`` is what the ONNX graph carries (fp32, fp16 with fp32
    islands, int8 Q/DQ). ``typing="strong"`` (default) builds a strongly typed network from it;
    ``"weak"`` uses the TensorRT 10 builder flags on an fp32 graph, only where the installed module has them.
    ``sparse_weights`` sets ``BuilderFlag.SPARSE_WEIGHTS`` (2:4 structured-sparse kernels, Ampere+) for models
    whose weights were made 2:4 sparse."""

    graph_precision: str = "fp32"
    batch_sizes: tuple[int, int, int] = (1, 8, 64)
    workspace_gb: float = 4.0
    typing: str = "strong"
    sparse_weights: bool = False
    allow_tf32: bool = False
    timing_cache: Path | None = None
    calibrator: Any = None  # weak int8 only
    extra: dict[str, Any] = field(default_factory=dict)


def profile_shapes(input_shape: Sequence[int], batch_sizes: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """min/opt/max shapes; the min batch is always 1 so the last, smaller chunk of any request (and Triton's
    dynamic batcher, which sends any batch up to max_batch_size) fits the profile."""
    _, bopt, bmax = (int(b) for b in batch_sizes)
    shape = tuple(int(d) for d in input_shape)
    return {"min": (1, *shape), "opt": (bopt, *shape), "max": (bmax, *shape)}


def build_serialized(trt, onnx_path: str | Path, input_name: str, input_shape: Sequence[int],
                     opts: BuildOptions, sink: LogSink) -> tuple[bytes, dict[str, Any]]:
    """Parse ``onnx_path`` and build one serialized engine; returns (plan bytes, what was set).

    Nothing is written except the timing cache: the caller gates the engine before writing it.
    """
    features = detect(trt)
    onnx_path = Path(onnx_path)
    if opts.typing not in ("strong", "weak"):
        raise ValueError(f"unknown TensorRT typing {opts.typing!r}: use 'strong' or 'weak'")
    if opts.typing == "weak" and not features.weak_typing:
        raise ExportError(f"TensorRT {features.version} has no weak-typing builder flags (FP16/INT8/"
                          "OBEY_PRECISION_CONSTRAINTS were removed in TensorRT 11): build strongly typed engines "
                          "from fp16/int8 ONNX graphs (the default)")
    if opts.typing == "weak" and opts.graph_precision != "fp32":
        raise ValueError("the weak (flag-based) path builds from the fp32 graph; pass graph_precision='fp32'")
    if opts.sparse_weights and not features.sparse_weights_flag:
        raise ExportError(f"TensorRT {features.version} has no BuilderFlag.SPARSE_WEIGHTS")
    t0 = time.perf_counter()
    logger = make_logger(trt, sink)
    builder = trt.Builder(logger)
    network = create_network(trt, builder, features, strong=opts.typing == "strong")
    parse_onnx(trt, network, logger, onnx_path)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_gb * (1 << 30)))
    shapes = profile_shapes(input_shape, opts.batch_sizes)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)

    flags: list[str] = []
    cleared: list[str] = []
    pinned: list[str] = []
    if features.tf32_flag and not opts.allow_tf32 and opts.graph_precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32: TF32 matmuls miss a 1e-4 parity budget
        cleared.append("TF32")
    if opts.sparse_weights:
        flags.append("SPARSE_WEIGHTS")
    precision = opts.graph_precision
    if opts.typing == "weak" and opts.extra.get("weak_precision", "fp32") != "fp32":
        precision = opts.extra["weak_precision"]
        flags += ["FP16", "OBEY_PRECISION_CONSTRAINTS"] + (["INT8"] if precision == "int8" else [])
        pinned = pin_fp32(trt, network, opts.extra.get("pin_fp32") or WEAK_PIN_FP32)
        if precision == "int8":
            if opts.calibrator is None:
                raise ValueError("weak int8 needs a calibrator (calibration inputs)")
            config.int8_calibrator = opts.calibrator
            config.set_calibration_profile(profile)
    for name in flags:
        config.set_flag(getattr(trt.BuilderFlag, name))

    cache_info = None
    if opts.timing_cache is not None:
        cache_info = attach_timing_cache(config, Path(opts.timing_cache), sink)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path.name}; TensorRT said:\n{sink.tail()}")
    if cache_info is not None:
        save_timing_cache(config, Path(opts.timing_cache), cache_info)
    info = {"onnx": onnx_path.name, "precision": precision, "typing": opts.typing,
            "strongly_typed": opts.typing == "strong", "flags": flags, "cleared_flags": cleared,
            "pinned_fp32_layers": pinned, "profile": {k: list(v) for k, v in shapes.items()}, "input": input_name,
            "workspace_gb": opts.workspace_gb, "timing_cache": cache_info, "tensorrt": features.version,
            "build_seconds": round(time.perf_counter() - t0, 2), "verbose_messages_dropped": sink.dropped}
    return bytes(serialized), info
