"""TensorRT backend: serialized engines (``{image,text}_encoder.<precision>.engine``, listed in the manifest's
``tensorrt.engines``) beside an export bundle's ``manifest.json``, run with the TensorRT 10 Python API on one CUDA GPU.

Per call: ``set_input_shape`` for the batch, ``set_tensor_address`` for the input and output buffers (torch CUDA
tensors), ``execute_async_v3`` on torch's current stream. Batches outside the engine's optimisation profile
are refused with the profile's range.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models.config import CLIPConfig
from .base import BackendUnavailableError, Encoder, EncoderInputError
from .onnxruntime_backend import MANIFEST_FILE, BundleError, read_bundle_config, read_manifest

IMAGE_ENGINE, TEXT_ENGINE = "image_encoder.engine", "text_encoder.engine"


def import_tensorrt():
    """The ``tensorrt`` module, or a clear error saying how to get it."""
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailableError("the tensorrt backend needs NVIDIA TensorRT 10 (pip install tensorrt) and a CUDA "
                                      "GPU; neither is needed for the torch and onnxruntime backends") from None
    major = str(getattr(trt, "__version__", "10")).split(".")[0]
    if major.isdigit() and int(major) < 10:
        raise BackendUnavailableError(f"TensorRT {trt.__version__} found; this backend uses the TensorRT 10 API "
                                      "(pip install 'tensorrt>=10')")
    return trt


def engine_file(bundle: Path, engines: dict[str, Any], tower: str) -> Path:
    """The engine of ``tower`` ("image"/"text"): as the manifest lists it (``tensorrt.engines.<tower>.file``),
    else the one ``<tower>_encoder*.engine`` in the bundle."""
    entry = engines.get(tower)
    name = entry.get("file") if isinstance(entry, dict) else entry
    if name:
        return bundle / name
    found = sorted(bundle.glob(f"{tower}_encoder*.engine"))
    if len(found) > 1:
        raise BundleError(f"{bundle} holds several {tower} engines ({[f.name for f in found]}) and the manifest does "
                          "not say which to use; re-export the bundle")
    return found[0] if found else bundle / (IMAGE_ENGINE if tower == "image" else TEXT_ENGINE)


def _torch_dtype(np_dtype: Any) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=np_dtype)).dtype


class _Engine:
    """One deserialized engine with one input and one output tensor and its execution context."""

    def __init__(self, trt, runtime, path: Path, input_name: str, device: torch.device):
        if not path.is_file():
            raise BundleError(f"{path} not found: build the TensorRT engines first (mope export MODEL --format tensorrt "
                              "--out DIR, on the GPU that will run them)")
        self.path, self.device = path, device
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise BundleError(f"{path}: TensorRT could not deserialize the engine; engines only load with the TensorRT "
                              "version and GPU model that built them: rebuild it here")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if inputs != [input_name] or len(outputs) != 1:
            raise BundleError(f"{path}: expected one input {input_name!r} and one output, found inputs {inputs} and "
                              f"outputs {outputs}; the engine was not built from this bundle's encoders")
        self.engine, self.input, self.output = engine, input_name, outputs[0]
        lo, _opt, hi = engine.get_tensor_profile_shape(input_name, 0)
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        self.profile_shapes = (tuple(int(v) for v in lo), tuple(int(v) for v in hi))
        self.in_dtype = _torch_dtype(trt.nptype(engine.get_tensor_dtype(input_name)))
        self.out_dtype = _torch_dtype(trt.nptype(engine.get_tensor_dtype(self.output)))
        self.context = engine.create_execution_context()
        self._keep: tuple = ()

    def check(self, shape: tuple[int, ...]) -> None:
        lo, hi = self.profile_shapes
        if len(shape) != len(lo) or any(not (a <= s <= b) for s, a, b in zip(shape, lo, hi)):
            raise EncoderInputError(f"{self.path.name}: input shape {tuple(shape)} is outside the engine's optimisation "
                                    f"profile (min {lo}, max {hi}); use a batch between {self.min_batch} and "
                                    f"{self.max_batch} or rebuild the engine with a wider profile")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Enqueue the engine on ``x`` (already on the device); returns the output tensor (not yet synced)."""
        self.check(tuple(x.shape))
        x = x.to(self.device, self.in_dtype).contiguous()
        if not self.context.set_input_shape(self.input, tuple(x.shape)):
            raise EncoderInputError(f"{self.path.name}: TensorRT refused input shape {tuple(x.shape)}")
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=self.out_dtype, device=self.device)
        self.context.set_tensor_address(self.input, x.data_ptr())
        self.context.set_tensor_address(self.output, out.data_ptr())
        stream = torch.cuda.current_stream(self.device).cuda_stream if self.device.type == "cuda" else 0
        if not self.context.execute_async_v3(stream):
            raise RuntimeError(f"{self.path.name}: TensorRT execution failed (see the TensorRT log above)")
        self._keep = (x, out)  # buffers must outlive the asynchronous execution
        return out


class TensorRTEncoder(Encoder):
    """An export bundle's TensorRT engines on a CUDA GPU (``device='cpu'`` only serves tests with a fake module)."""

    backend = "tensorrt"

    def __init__(self, bundle: str | Path, device: str = "cuda", config: CLIPConfig | None = None):
        trt = import_tensorrt()
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError("the tensorrt backend needs a CUDA GPU and torch sees none; use the torch or "
                                          "onnxruntime backend on this machine")
        bundle = Path(bundle)
        if not (bundle / MANIFEST_FILE).is_file():
            raise BundleError(f"{bundle} is not an export bundle ({MANIFEST_FILE} not found)")
        super().__init__(config or read_bundle_config(bundle))
        manifest = read_manifest(bundle)
        engines = (manifest.get("tensorrt") or {}).get("engines") or manifest.get("engines") or {}
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.bundle = bundle
        self.image_engine = _Engine(trt, self.runtime, engine_file(bundle, engines, "image"), "image", self.device)
        self.text_engine = _Engine(trt, self.runtime, engine_file(bundle, engines, "text"), "tokens", self.device)
        s = self.config.vision.image_size
        self._check_static(self.image_engine, (3, s, s))
        self._check_static(self.text_engine, (self.context_length,))
        self.max_batch = min(self.image_engine.max_batch, self.text_engine.max_batch)
        self.trt_version = str(getattr(trt, "__version__", "?"))

    @staticmethod
    def _check_static(engine: _Engine, dims: tuple[int, ...]) -> None:
        lo, hi = engine.profile_shapes
        if lo[1:] != dims or hi[1:] != dims:
            raise BundleError(f"{engine.path}: the engine takes {lo[1:]} per item but the bundle's config says {dims}; "
                              "the engine and the manifest belong to different models")

    def _run(self, engine: _Engine, x: np.ndarray) -> np.ndarray:
        out = engine(torch.from_numpy(x).to(self.device))
        self.synchronize()
        return out.float().cpu().numpy()

    def run_images(self, pixels: np.ndarray) -> np.ndarray:
        return self._run(self.image_engine, self.check_pixels(pixels))

    def run_texts(self, tokens: np.ndarray) -> np.ndarray:
        return self._run(self.text_engine, self.check_tokens(tokens).astype(np.int32))

    def timing_fn(self, tower: str, inputs: np.ndarray):
        if tower == "vision":
            engine, x = self.image_engine, torch.from_numpy(self.check_pixels(inputs))
        else:
            engine, x = self.text_engine, torch.from_numpy(self.check_tokens(inputs).astype(np.int32))
        engine.check(tuple(x.shape))
        x = x.to(self.device, engine.in_dtype).contiguous()
        return lambda: engine(x)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "device": str(self.device), "tensorrt": self.trt_version,
                "batch_range": [max(self.image_engine.min_batch, self.text_engine.min_batch), self.max_batch]}
