"""TensorRT 10 engines from the bundle's fp32 ONNX graphs (TensorRT Python API).

Per encoder: ``trt.Builder`` -> network from ``trt.OnnxParser`` -> builder config with an optimisation
profile (min/opt/max batch), the precision flags of ``export/tensorrt/profiles.json`` (fp16: LayerNorm,
Softmax, reductions and the EOT ArgMax pinned to fp32 with ``OBEY_PRECISION_CONSTRAINTS``; int8: an
``IInt8EntropyCalibrator2`` over evaluation inputs), optional 2:4 ``SPARSE_WEIGHTS``, a persistent timing
cache, then ``build_serialized_network``. Writes ``{image,text}_encoder.{precision}.engine``,
``tensorrt_build.log`` and ``tensorrt_timing.cache``. Needs a CUDA GPU and ``tensorrt>=10``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from ..models.slim_clip import SlimCLIP
from .onnx import IMAGE_FILE, TEXT_FILE, ExportError

PROFILES_FILE = Path(__file__).resolve().parents[2] / "export" / "tensorrt" / "profiles.json"
MIN_VERSION = 10
TIMING_CACHE_FILE = "tensorrt_timing.cache"
BUILD_LOG_FILE = "tensorrt_build.log"
CALIB_DEVICE = "cuda"  # where calibration batches live (TensorRT reads them through device pointers)


class TensorRTUnavailableError(RuntimeError):
    """TensorRT (or a CUDA GPU) is not available on this machine."""


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def require_tensorrt():
    """Import ``tensorrt`` (>= 10) and check for a CUDA device; a clear error otherwise."""
    try:
        import tensorrt as trt
    except ImportError:
        raise TensorRTUnavailableError(
            "TensorRT is not installed: `pip install tensorrt` (>= 10, needs an NVIDIA GPU and driver), or export "
            "--format onnx here and build engines on the GPU machine") from None
    major = int(str(getattr(trt, "__version__", "0")).split(".")[0] or 0)
    if major < MIN_VERSION:
        raise TensorRTUnavailableError(f"TensorRT {trt.__version__} is too old: engines need TensorRT >= {MIN_VERSION}")
    if not _cuda_available():
        raise TensorRTUnavailableError("TensorRT engines are built on a CUDA GPU and none is visible here "
                                       "(torch.cuda.is_available() is False); run the export on the GPU machine")
    return trt


def load_profiles(path: str | Path = PROFILES_FILE) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TensorRT build profiles not found at {path} (the top-level export/ folder of the "
                                "mope-deploy checkout)")
    return json.loads(path.read_text())


def _make_logger(trt, lines: list[str]):
    class BuildLogger(trt.ILogger):
        """Keeps every builder message for ``tensorrt_build.log``."""

        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            lines.append(f"[{getattr(severity, 'name', severity)}] {msg}")

    return BuildLogger()


def make_calibrator(trt, inputs: torch.Tensor, input_name: str, batch_size: int, cache_file: Path,
                    device: str = "cuda", max_batches: int = 32):
    """An ``IInt8EntropyCalibrator2`` feeding ``inputs`` (preprocessed images or int32 tokens) in batches."""

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            n = min(len(inputs), batch_size * max_batches)
            self.batches = [inputs[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]
            if not self.batches:
                raise ExportError(f"int8 calibration needs at least {batch_size} inputs, got {len(inputs)}: "
                                  "use more --eval-data or a smaller OPT batch size")
            self.index, self.current = 0, None
            self.fed = 0

        def get_batch_size(self):
            return batch_size

        def get_batch(self, names):
            if self.index >= len(self.batches):
                return None
            # the device buffer must stay alive until the next call: keep a reference
            self.current = self.batches[self.index].contiguous().to(device)
            self.index += 1
            self.fed += 1
            return [int(self.current.data_ptr()) for _ in names]

        def read_calibration_cache(self):
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache):
            cache_file.write_bytes(bytes(cache))

    return Calibrator()


def pin_fp32(trt, network, layer_types: Sequence[str]) -> list[str]:
    """Force layers of the given ``trt.LayerType`` names to run and output in fp32; returns their names."""
    wanted = {getattr(trt.LayerType, t) for t in layer_types}
    pinned = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type not in wanted:
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype in (trt.float32, trt.float16):
                layer.set_output_type(j, trt.float32)
        pinned.append(layer.name)
    return pinned


def build_engine(onnx_path: str | Path, engine_path: str | Path, input_name: str, input_shape: Sequence[int],
                 batch_sizes: tuple[int, int, int], precision: str = "fp16", calib_inputs: torch.Tensor | None = None,
                 sparse: bool = False, workspace_gb: float = 4.0, timing_cache: str | Path | None = None,
                 log_lines: list[str] | None = None, calib_device: str = "cuda") -> dict[str, Any]:
    """Build one serialized engine; returns what was set (flags, pinned layers, profile, timings)."""
    trt = require_tensorrt()
    profiles = load_profiles()
    if precision not in profiles or precision.startswith("_"):
        raise ValueError(f"no TensorRT build profile for precision {precision!r} in {PROFILES_FILE}")
    prof = profiles[precision]
    lines = log_lines if log_lines is not None else []
    logger = _make_logger(trt, lines)
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    t0 = time.perf_counter()

    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # by path, so external weight files are found
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(f"TensorRT could not parse {onnx_path.name}: " + "; ".join(errors))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    bmin, bopt, bmax = batch_sizes
    profile = builder.create_optimization_profile()
    shape = tuple(int(d) for d in input_shape)
    shapes = {"min": (bmin, *shape), "opt": (bopt, *shape), "max": (bmax, *shape)}
    profile.set_shape(input_name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)

    flags = [f for f in prof.get("flags", [])]
    if sparse:
        flags.append("SPARSE_WEIGHTS")  # 2:4 structured-sparse kernels where the weights allow (Ampere+)
    for name in flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in prof.get("clear_flags", []):  # fp32 means fp32: no TF32 matmuls (parity 1e-4)
        config.clear_flag(getattr(trt.BuilderFlag, name))
    pinned = pin_fp32(trt, network, prof.get("pin_fp32", [])) if precision != "fp32" else []

    calibrator = None
    if precision == "int8":
        if calib_inputs is None:
            raise ValueError("TensorRT int8 needs calibration inputs (--eval-data SPEC)")
        calib = prof.get("calibration", {})
        calibrator = make_calibrator(trt, calib_inputs, input_name, bopt,
                                     engine_path.with_suffix(".calib.cache"), device=calib_device,
                                     max_batches=int(calib.get("max_batches", 32)))
        config.int8_calibrator = calibrator
        config.set_calibration_profile(profile)

    cache_path = Path(timing_cache) if timing_cache else engine_path.parent / TIMING_CACHE_FILE
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        tail = "\n".join(lines[-10:])
        raise ExportError(f"TensorRT failed to build {engine_path.name}; last builder messages:\n{tail}")
    engine_path.write_bytes(bytes(serialized))
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"file": engine_path.name, "onnx": onnx_path.name, "precision": precision, "flags": flags,
            "cleared_flags": list(prof.get("clear_flags", [])), "pinned_fp32_layers": pinned,
            "profile": {k: list(v) for k, v in shapes.items()}, "input": input_name,
            "calibration_batches": getattr(calibrator, "fed", None), "workspace_gb": workspace_gb,
            "build_seconds": round(time.perf_counter() - t0, 2), "timing_cache": cache_path.name}


def build_engines(out_dir: str | Path, model: SlimCLIP, precision: str = "fp16",
                  batch_sizes: tuple[int, int, int] = (1, 8, 64), calib=None, sparse: bool = False,
                  workspace_gb: float = 4.0, timing_cache: str | Path | None = None,
                  calib_device: str | None = None) -> dict[str, Any]:
    """Engines for both encoders of the bundle in ``out_dir``; ``calib`` = (images, tokens, ...) for int8."""
    trt = require_tensorrt()
    out_dir = Path(out_dir)
    v, t = model.config.vision, model.config.text
    lines: list[str] = [f"TensorRT {trt.__version__}, precision {precision}, batch min/opt/max {batch_sizes}, "
                        f"sparse={sparse}"]
    engines = {}
    for tower, onnx_file, name, shape, data in (
        ("image", IMAGE_FILE, "image", (3, v.image_size, v.image_size), None if calib is None else calib[0].float()),
        ("text", TEXT_FILE, "tokens", (t.context_length,), None if calib is None else calib[1].to(torch.int32)),
    ):
        lines.append(f"--- {tower} encoder: {onnx_file}")
        engines[tower] = build_engine(out_dir / onnx_file, out_dir / f"{Path(onnx_file).stem}.{precision}.engine",
                                      name, shape, batch_sizes, precision=precision, calib_inputs=data, sparse=sparse,
                                      workspace_gb=workspace_gb, timing_cache=timing_cache, log_lines=lines,
                                      calib_device=calib_device or CALIB_DEVICE)
        info = engines[tower]
        lines.append(f"flags {info['flags']} cleared {info['cleared_flags']}; {len(info['pinned_fp32_layers'])} "
                     f"layers pinned to fp32; built in {info['build_seconds']} s")
    (out_dir / BUILD_LOG_FILE).write_text("\n".join(lines) + "\n")
    return {"version": str(trt.__version__), "precision": precision, "engines": engines, "log": BUILD_LOG_FILE,
            "sparse": sparse}
