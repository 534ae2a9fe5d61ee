"""TensorRT backend: serialized engines (``{image,text}_encoder.<precision>.engine``, listed in the manifest's
``tensorrt.engines``) beside an export bundle's ``manifest.json``, run with the TensorRT 10/11 Python API on one
CUDA GPU.

Per call (:class:`~mope_deploy.exporting.tensorrt.runner.TrtEngineRunner`, shared with the exporter's gate):
``set_input_shape`` for the batch, ``set_tensor_address`` for the input and output buffers (torch CUDA tensors),
``execute_async_v3`` on the runner's own CUDA stream, not the legacy default stream, which would serialise with
all other work on the device. Batches outside the engine's optimisation profile are refused with its range.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..device import BackendUnavailableError, import_tensorrt
from ..bundle import INPUT_NAMES, Bundle, BundleError
from ..exporting.tensorrt.runner import EngineError, TrtEngineRunner
from ..models.config import CLIPConfig
from .base import Encoder, EncoderInputError


def _runner(trt, runtime, path: Path, input_name: str, device: torch.device) -> TrtEngineRunner:
    if not path.is_file():
        raise BundleError(f"{path} not found: build the TensorRT engines first (mope export MODEL --format tensorrt "
                          "--out DIR, on the GPU that will run them)")
    try:
        runner = TrtEngineRunner(trt, runtime, path.read_bytes(), input_name, device, name=path.name)
    except EngineError as e:
        raise BundleError(f"{path}: {str(e).split(': ', 1)[-1]}") from None
    runner.path = path
    return runner


class TensorRTEncoder(Encoder):
    """An export bundle's TensorRT engines on a CUDA GPU."""

    backend = "tensorrt"

    def __init__(self, bundle: str | Path, device: str = "cuda", config: CLIPConfig | None = None):
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise BackendUnavailableError(f"the tensorrt backend runs engines on a CUDA GPU, not on {device!r}: pass "
                                          "device='cuda' (or 'cuda:N'), or use the torch or onnxruntime backend here")
        trt = import_tensorrt(purpose="TensorRT engines run", need_cuda=True)
        b = Bundle(bundle)
        super().__init__(config or b.config())
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.bundle = b.root
        self.image_engine = _runner(trt, self.runtime, b.engine("vision"), INPUT_NAMES["vision"], self.device)
        self.text_engine = _runner(trt, self.runtime, b.engine("text"), INPUT_NAMES["text"], self.device)
        s = self.config.vision.image_size
        self._check_static(self.image_engine, (3, s, s))
        self._check_static(self.text_engine, (self.context_length,))
        self.max_batch = min(self.image_engine.max_batch, self.text_engine.max_batch)
        self.trt_version = str(getattr(trt, "__version__", "?"))

    @staticmethod
    def _check_static(engine: TrtEngineRunner, dims: tuple[int, ...]) -> None:
        lo, hi = engine.profile_shapes
        if lo[1:] != dims or hi[1:] != dims:
            raise BundleError(f"{engine.path}: the engine takes {lo[1:]} per item but the bundle's config says {dims}; "
                              "the engine and the manifest belong to different models")

    def _enqueue(self, engine: TrtEngineRunner, x: torch.Tensor) -> torch.Tensor:
        try:
            return engine.enqueue(x)
        except EngineError as e:
            raise EncoderInputError(str(e)) from None

    def _run(self, engine: TrtEngineRunner, x: np.ndarray) -> np.ndarray:
        out = self._enqueue(engine, engine.prepare(torch.from_numpy(x)))
        engine.synchronize()
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
        try:
            engine.check(tuple(x.shape))
        except EngineError as e:
            raise EncoderInputError(str(e)) from None
        x = engine.prepare(x)  # on the device once: the timed call is the engine alone
        return lambda: engine.enqueue(x)

    def synchronize(self) -> None:
        """Wait for both engines' streams (what a benchmark times)."""
        self.image_engine.synchronize()
        self.text_engine.synchronize()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "device": str(self.device), "tensorrt": self.trt_version,
                "batch_range": [max(self.image_engine.min_batch, self.text_engine.min_batch), self.max_batch],
                "streams": "own CUDA stream per engine"}
