"""PyTorch backends: SlimCLIP eager (``torch``), SlimCLIP under ``torch.compile`` (``torch-compile``), and the
original open_clip model in eager mode (``open_clip``, the un-converted teacher used as a reference)."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from ..device import default_device
from ..models.config import CLIPConfig
from ..models.slim_clip import SlimCLIP
from .base import BackendUnavailableError, Encoder


def _check_device(device: str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(f"device {device!r} asked for but torch sees no CUDA GPU; use device='cpu'")
    return dev


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` for the block and restored after (None: leave it alone), so an
    encoder's setting never leaks into the rest of the process."""
    if not n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _TorchBase(Encoder):
    """Runs two callables (pixels -> emb, tokens -> emb) under ``inference_mode`` on one device, with
    ``threads`` intra-op threads for each call (restored after it)."""

    def __init__(self, config: CLIPConfig, image_fn: Callable, text_fn: Callable, device: torch.device,
                 dtype: torch.dtype, threads: int | None = None):
        super().__init__(config)
        self.device, self.dtype, self.threads = device, dtype, threads
        self._image_fn, self._text_fn = image_fn, text_fn

    def _pixels(self, pixels: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.check_pixels(pixels)).to(self.device, self.dtype)

    def _tokens(self, tokens: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.check_tokens(tokens).astype(np.int64)).to(self.device)

    def run_images(self, pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), torch_threads(self.threads):
            return self._image_fn(self._pixels(pixels)).float().cpu().numpy()

    def run_texts(self, tokens: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), torch_threads(self.threads):
            return self._text_fn(self._tokens(tokens)).float().cpu().numpy()

    def timing_fn(self, tower: str, inputs: np.ndarray) -> Callable[[], Any]:
        """The forward pass alone, inputs already on the device, output left there (sync via synchronize)."""
        x = self._pixels(inputs) if tower == "vision" else self._tokens(inputs)
        fn = self._image_fn if tower == "vision" else self._text_fn

        def run() -> Any:
            with torch.inference_mode(), torch_threads(self.threads):
                return fn(x)
        return run

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
                "threads": self.threads or torch.get_num_threads()}


class TorchEncoder(_TorchBase):
    """SlimCLIP in PyTorch, eager or (``compile=True``) through ``torch.compile`` (compiled on first call
    of each input shape, so benchmark warm-up absorbs it)."""

    def __init__(self, model: SlimCLIP, device: str | None = None, compile: bool = False,
                 dtype: torch.dtype = torch.float32, compile_mode: str | None = None,
                 compile_backend: str = "inductor", threads: int | None = None):
        if not isinstance(model, SlimCLIP):
            raise TypeError(f"TorchEncoder takes a SlimCLIP, got {type(model).__name__}")
        dev = _check_device(device or default_device())
        model = model.to(dev, dtype).eval()
        self.model, self.compiled = model, compile
        self.backend = "torch-compile" if compile else "torch"
        vis: Callable = model.visual
        txt: Callable = model.text
        if compile:
            vis = torch.compile(model.visual, mode=compile_mode, backend=compile_backend)
            txt = torch.compile(model.text, mode=compile_mode, backend=compile_backend)
        super().__init__(model.config, vis, txt, dev, dtype, threads)


class OpenClipEncoder(_TorchBase):
    """An open_clip ``CLIP`` model as-is (eager): the reference the paper's numbers and our speed-ups are
    measured against."""

    backend = "open_clip"

    def __init__(self, model: nn.Module, config: CLIPConfig, device: str | None = None,
                 dtype: torch.dtype = torch.float32, threads: int | None = None):
        if not hasattr(model, "encode_image") or not hasattr(model, "encode_text"):
            raise TypeError(f"OpenClipEncoder takes an open_clip CLIP model, got {type(model).__name__}")
        dev = _check_device(device or default_device())
        self.model = model.to(dev, dtype).eval()
        super().__init__(config, self.model.encode_image, self.model.encode_text, dev, dtype, threads)
