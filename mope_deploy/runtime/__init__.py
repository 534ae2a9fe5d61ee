"""One encoder API over several backends.

    from mope_deploy.runtime import open_encoder
    enc = open_encoder("runs/student", backend="onnxruntime")     # or a SlimCLIP, or an export bundle
    img = enc.encode_images([pil_image, ...])                      # (N, E) float32, unit rows
    txt = enc.encode_texts(["a dog on a beach", ...])

Backends: ``torch`` (SlimCLIP eager), ``torch-compile``, ``open_clip`` (an open_clip name, eager; the
reference), ``onnxruntime`` and ``onnxruntime-int8`` (an export bundle; CPU, or CUDA/TensorRT providers
when installed), ``tensorrt`` (engines in an export bundle; CUDA GPU).
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .base import BackendUnavailableError, Encoder, EncoderInputError, l2_normalize
from .onnxruntime_backend import IMAGE_FILE, MANIFEST_FILE, BundleError

BACKENDS = ("torch", "torch-compile", "open_clip", "onnxruntime", "onnxruntime-int8", "tensorrt")


def backend_status(name: str) -> str | None:
    """None when ``name`` can run here, else why not."""
    if name not in BACKENDS:
        return f"unknown backend {name!r}"
    if name == "torch-compile":
        # inductor compiles C++ kernels on the CPU
        import torch
        if not torch.cuda.is_available() and not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
            return "torch.compile on the CPU needs a C++ compiler (g++) on PATH"
    if name == "open_clip" and importlib.util.find_spec("open_clip") is None:
        return "open_clip is not installed (pip install open_clip_torch)"
    if name.startswith("onnxruntime") and importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed (pip install onnxruntime)"
    if name == "tensorrt":
        if importlib.util.find_spec("tensorrt") is None:
            return "TensorRT 10 is not installed (pip install tensorrt; needs a CUDA GPU)"
        import torch
        if not torch.cuda.is_available():
            return "no CUDA GPU visible to torch"
    return None


def available_backends() -> list[str]:
    """The backends that can run on this machine."""
    return [b for b in BACKENDS if backend_status(b) is None]


def check_backend(name: str) -> None:
    """Raise :class:`BackendUnavailableError` naming the problem and the backends that do work here."""
    why = backend_status(name)
    if why is not None:
        raise BackendUnavailableError(f"backend {name!r} cannot run: {why}. Available here: "
                                      f"{', '.join(available_backends())} (all: {', '.join(BACKENDS)})")


def is_bundle(path: Any) -> bool:
    """Whether ``path`` is an export bundle directory (``manifest.json`` + ``image_encoder.onnx``)."""
    try:
        p = Path(path)
        return (p / MANIFEST_FILE).is_file() and (p / IMAGE_FILE).is_file()
    except TypeError:
        return False


def export_bundle(model: Any, out_dir: str | Path, int8: bool = False) -> Path:
    """Export a SlimCLIP to an ONNX bundle with the exporter (unnormalised embeddings: the encoder
    normalises): fp32 graphs, ORT-optimised ones, and with ``int8`` dynamically quantised ones (no
    recall gate: there is no evaluation data here; the bundle's parity gate still runs)."""
    from ..exporting.bundle import export_bundle as _export

    _export(model, out_dir, formats=("onnx",), precision="int8" if int8 else "fp32", normalize=False,
            optimize=True, skip_recall_gate=int8)
    return Path(out_dir)


def open_encoder(model: Any, backend: str = "torch", *, device: str | None = None, threads: int | None = None,
                 providers: list[str] | None = None, work_dir: str | Path | None = None,
                 compile_mode: str | None = None, variant: str | None = None) -> Encoder:
    """An :class:`Encoder` for ``model`` on ``backend``.

    ``model``: a SlimCLIP, a model spec (``demo``, a model directory, an open_clip name) or an export bundle
    directory. ONNX backends export a SlimCLIP into ``work_dir`` (a temporary directory when not given,
    removed with the encoder); ``tensorrt`` needs a bundle with engines. ``threads`` sets torch's and ONNX
    Runtime's intra-op threads; ``variant`` picks a bundle's ONNX graphs (fp32, optimized, fp16).
    """
    check_backend(backend)
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    if backend == "open_clip":
        return _open_clip(model, device)
    if backend in ("torch", "torch-compile"):
        from .torch_backend import TorchEncoder
        return TorchEncoder(as_slimclip(model, backend), device=device, compile=backend == "torch-compile",
                            compile_mode=compile_mode)
    if backend.startswith("onnxruntime"):
        from .onnxruntime_backend import OnnxRuntimeEncoder
        bundle, tmp = _bundle(model, work_dir, int8=backend.endswith("int8"))
        if backend.endswith("int8") and work_dir is None and tmp is None:
            tmp = tempfile.TemporaryDirectory(prefix="mope-int8-")  # never write into the user's bundle
        enc = OnnxRuntimeEncoder(bundle, providers=providers, threads=threads,
                                 variant="int8" if backend.endswith("int8") else variant,
                                 work_dir=work_dir or (tmp.name if tmp else None))
        enc._tmp = tmp  # keeps the temporary export alive as long as the encoder
        return enc
    from .tensorrt_backend import TensorRTEncoder
    if not is_bundle(model):
        raise BundleError("the tensorrt backend runs prebuilt engines: pass an export bundle directory holding "
                          "TensorRT engines (mope export MODEL --format tensorrt --out DIR, on the GPU that runs them)")
    return TensorRTEncoder(model, device=device or "cuda")


def as_slimclip(model: Any, backend: str = "torch"):
    """``model`` as a SlimCLIP (loading a spec); an export bundle without weights is a clear error."""
    from ..models import SlimCLIP, load
    if isinstance(model, SlimCLIP):
        return model
    if is_bundle(model) and not (Path(model) / "model.safetensors").is_file():
        raise BundleError(f"{model} is an export bundle (ONNX files); the {backend} backend needs the model itself: "
                          "pass the model directory or name, or use --backend onnxruntime")
    return load(model)


def _open_clip(model: Any, device: str | None) -> Encoder:
    from ..models import load_config, load_teacher
    from ..models.registry import split_spec
    from .torch_backend import OpenClipEncoder
    if not isinstance(model, (str, Path)) or is_bundle(model) or Path(str(model)).is_dir():
        raise ValueError(f"the open_clip backend runs open_clip models by name (e.g. ViT-L-14 or ViT-L-14:openai); "
                         f"{model!r} is not one")
    name, tag = split_spec(str(model))
    return OpenClipEncoder(load_teacher(name, tag), load_config(str(model)), device=device)


def _bundle(model: Any, work_dir: str | Path | None, int8: bool = False) -> tuple[Path, Any]:
    """(bundle dir, temporary directory object or None) for ONNX backends."""
    if is_bundle(model):
        return Path(model), None
    if isinstance(model, (str, Path)) and Path(model).is_dir() and (Path(model) / MANIFEST_FILE).is_file():
        raise BundleError(f"{model}: {MANIFEST_FILE} found but {IMAGE_FILE} is missing; re-export the bundle")
    slim = as_slimclip(model, "onnxruntime")
    tmp = None
    if work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="mope-onnx-")
        work_dir = tmp.name
    return export_bundle(slim, Path(work_dir) / "bundle", int8=int8), tmp


__all__ = ["BACKENDS", "BackendUnavailableError", "BundleError", "Encoder", "EncoderInputError", "available_backends",
           "as_slimclip", "backend_status", "check_backend", "export_bundle", "is_bundle", "l2_normalize", "open_encoder"]
