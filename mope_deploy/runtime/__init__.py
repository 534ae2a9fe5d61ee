"""One encoder API over several backends.

    from mope_deploy.runtime import open_encoder
    enc = open_encoder("runs/student", backend="onnxruntime")     # or a SlimCLIP, or an export bundle
    img = enc.encode_images([pil_image, ...])                      # (N, E) float32, unit rows
    txt = enc.encode_texts(["a dog on a beach", ...])

Backends (:mod:`.registry`, where a new one registers): ``torch`` (SlimCLIP eager), ``torch-compile``,
``open_clip`` (an open_clip name, eager; the reference), ``onnxruntime`` and ``onnxruntime-int8`` (an export
bundle; CPU, or CUDA/TensorRT providers when installed), ``tensorrt`` (engines in an export bundle; CUDA GPU).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..bundle import Bundle, BundleError
from .base import BackendUnavailableError, Encoder, EncoderInputError, l2_normalize
from .registry import (Backend, OpenOptions, as_slimclip, available_backends, backend_names, backend_status,
                       check_backend, check_backends, register)

is_bundle = Bundle.is_bundle


def open_encoder(model: Any, backend: str = "torch", *, device: str | None = None, threads: int | None = None,
                 providers: list[str] | None = None, work_dir: str | Path | None = None,
                 compile_mode: str | None = None, variant: str | None = None,
                 ort_settings: Any = None) -> Encoder:
    """An :class:`Encoder` for ``model`` on ``backend``.

    ``model``: a SlimCLIP, a model spec (``demo``, a model directory, an open_clip name) or an export bundle
    directory. ONNX backends export a SlimCLIP into ``work_dir`` (a temporary directory the encoder owns when
    not given); ``tensorrt`` needs a bundle with engines. ``threads``: the encoder's intra-op threads (ONNX
    Runtime's session options; torch encoders set torch's count around each call and restore it, so the process
    setting is never changed); ``variant`` overrides the graphs the bundle's manifest names for the runtime
    (fp32, fused, optimized, int8, fp16); ``ort_settings`` (a :class:`~.ort_settings.SessionSettings`) sets ONNX
    Runtime's session options.
    """
    b = check_backend(backend)
    return b.open(model, OpenOptions(device=device, threads=threads, providers=providers, work_dir=work_dir,
                                     compile_mode=compile_mode, variant=variant, ort_settings=ort_settings))


def __getattr__(name: str) -> Any:
    if name == "BACKENDS":  # live: includes backends registered after import
        return backend_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BACKENDS", "Backend", "BackendUnavailableError", "BundleError", "Encoder", "EncoderInputError",
           "OpenOptions", "available_backends", "as_slimclip", "backend_names", "backend_status", "check_backend",
           "check_backends", "is_bundle", "l2_normalize", "open_encoder", "register"]
