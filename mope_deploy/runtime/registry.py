"""Runtime backends by name: each one registered once with what it runs, what it needs and how to open it.

A backend name is validated here and nowhere else (``mope bench``, :func:`~mope_deploy.runtime.open_encoder`
and the benchmark harness all call :func:`check_backend`). A new backend registers itself::

    from mope_deploy.runtime.registry import Backend, OpenOptions, register, MODEL
    register(Backend("my-backend", source=MODEL, open=lambda model, opts: MyEncoder(model, opts.device),
                     requires=lambda: None if have_my_lib() else "my_lib is not installed (pip install my_lib)",
                     help="SlimCLIP on my_lib"))
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..device import BackendUnavailableError
from ..bundle import Bundle, BundleError, onnx_name
from .base import Encoder

class UnknownBackendError(BackendUnavailableError, ValueError):
    """A backend name that is not registered."""


#: what a backend runs: a SlimCLIP (or spec), an open_clip model by name, an ONNX bundle (a model is exported
#: into one first), or a bundle holding prebuilt engines
MODEL, OPEN_CLIP, ONNX, ENGINES = "model", "open_clip", "onnx", "engines"


@dataclass(frozen=True)
class OpenOptions:
    """Settings an encoder may use (each backend reads the ones it understands)."""

    device: str | None = None
    threads: int | None = None
    providers: list[str] | None = None
    work_dir: str | Path | None = None
    compile_mode: str | None = None
    variant: str | None = None
    ort_settings: Any = None  # runtime.ort_settings.SessionSettings for ONNX Runtime backends (None: defaults)


@dataclass(frozen=True)
class Backend:
    """One runtime backend: ``open(model, options) -> Encoder``; ``requires() -> None`` when it can run here,
    else why not; ``source`` says what ``model`` it takes; ``precision``: the ONNX precision an ``onnx``
    backend exports a model to."""

    name: str
    source: str
    open: Callable[[Any, OpenOptions], Encoder]
    requires: Callable[[], str | None] = lambda: None
    precision: str = "fp32"
    help: str = ""

    @property
    def uses_device(self) -> bool:
        """Whether the backend places work on a torch device (ONNX Runtime picks its own providers)."""
        return self.source != ONNX


_REGISTRY: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    """Add ``backend``; its name must be new."""
    if backend.name in _REGISTRY:
        raise ValueError(f"backend {backend.name!r} is already registered")
    if backend.source not in (MODEL, OPEN_CLIP, ONNX, ENGINES):
        raise ValueError(f"backend {backend.name!r}: source must be one of {MODEL}, {OPEN_CLIP}, {ONNX}, {ENGINES}")
    _REGISTRY[backend.name] = backend
    return backend


def backend_names() -> tuple[str, ...]:
    """Every registered backend, in registration order."""
    return tuple(_REGISTRY)


def backend_status(name: str) -> str | None:
    """None when ``name`` can run here, else why not."""
    b = _REGISTRY.get(name)
    return f"unknown backend {name!r}" if b is None else b.requires()


def available_backends() -> list[str]:
    """The backends that can run on this machine."""
    return [n for n, b in _REGISTRY.items() if b.requires() is None]


def check_backend(name: str) -> Backend:
    """The backend called ``name``; :class:`BackendUnavailableError` naming the problem and the backends that
    do work here when it is unknown or cannot run."""
    why = backend_status(name)
    if why is not None:
        kind = UnknownBackendError if name not in _REGISTRY else BackendUnavailableError
        raise kind(f"backend {name!r} cannot run: {why}. Available here: {', '.join(available_backends())} "
                   f"(all: {', '.join(_REGISTRY)})")
    return _REGISTRY[name]


def check_backends(names: list[str] | tuple[str, ...]) -> list[Backend]:
    """:func:`check_backend` for each name (all validated before any work)."""
    return [check_backend(n) for n in names]


# ----------------------------------------------------------------------------------------- built-ins
def as_slimclip(model: Any, backend: str = "torch"):
    """``model`` as a SlimCLIP (loading a spec); an export bundle without weights is a clear error."""
    from ..models import SlimCLIP, load
    if isinstance(model, SlimCLIP):
        return model
    if Bundle.is_bundle(model) and not (Path(model) / "model.safetensors").is_file():
        raise BundleError(f"{model} is an export bundle (ONNX files); the {backend} backend needs the model itself: "
                          "pass the model directory or name, or use --backend onnxruntime")
    return load(model)


def _needs(module: str, message: str) -> Callable[[], str | None]:
    return lambda: None if importlib.util.find_spec(module) is not None else message


def _compile_requires() -> str | None:
    import torch
    # inductor compiles C++ kernels on the CPU
    if not torch.cuda.is_available() and not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        return "torch.compile on the CPU needs a C++ compiler (g++) on PATH"
    return None


def _tensorrt_requires() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (pip install 'mope-deploy[gpu]': TensorRT 10.x/11.x; needs a CUDA GPU)"
    import torch
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch"
    return None


def _open_torch(compile: bool) -> Callable[[Any, OpenOptions], Encoder]:
    def open_(model: Any, o: OpenOptions) -> Encoder:
        from .torch_backend import TorchEncoder
        return TorchEncoder(as_slimclip(model, "torch-compile" if compile else "torch"), device=o.device,
                            compile=compile, compile_mode=o.compile_mode, threads=o.threads)
    return open_


def _open_open_clip(model: Any, o: OpenOptions) -> Encoder:
    from ..models import load_config, load_teacher
    from ..models.registry import split_spec
    from .torch_backend import OpenClipEncoder
    if not isinstance(model, (str, Path)) or Bundle.is_bundle(model) or Path(str(model)).is_dir():
        raise BundleError(f"the open_clip backend runs open_clip models by name (e.g. ViT-L-14 or ViT-L-14:openai); "
                          f"{model!r} is not one")
    name, tag = split_spec(str(model))
    return OpenClipEncoder(load_teacher(name, tag), load_config(str(model)), device=o.device, threads=o.threads)


def _open_onnxruntime(int8: bool) -> Callable[[Any, OpenOptions], Encoder]:
    def open_(model: Any, o: OpenOptions) -> Encoder:
        from .onnxruntime_backend import OnnxRuntimeEncoder
        variant = "int8" if int8 else o.variant
        if Bundle.is_bundle(model):
            return OnnxRuntimeEncoder(model, providers=o.providers, threads=o.threads, variant=variant,
                                      work_dir=o.work_dir, settings=o.ort_settings)
        if isinstance(model, (str, Path)) and Path(model).is_dir() and Bundle(model).manifest_path.is_file():
            raise BundleError(f"{model}: {Bundle(model).manifest_path.name} found but {onnx_name('vision')} is "
                              "missing; re-export the bundle")
        return OnnxRuntimeEncoder.from_model(as_slimclip(model, "onnxruntime"), int8=int8, work_dir=o.work_dir,
                                             providers=o.providers, threads=o.threads, variant=o.variant,
                                             settings=o.ort_settings)
    return open_


def _open_tensorrt(model: Any, o: OpenOptions) -> Encoder:
    from .tensorrt_backend import TensorRTEncoder
    if not Bundle.is_bundle(model):
        raise BundleError("the tensorrt backend runs prebuilt engines: pass an export bundle directory holding "
                          "TensorRT engines (mope export MODEL --format tensorrt --out DIR, on the GPU that runs them)")
    return TensorRTEncoder(model, device=o.device or "cuda")


def _open_openvino(model: Any, o: OpenOptions) -> Encoder:
    from .openvino_backend import OpenVINOEncoder
    if Bundle.is_bundle(model):
        return OpenVINOEncoder(model, threads=o.threads, variant=o.variant, ort_settings=o.ort_settings)
    return OpenVINOEncoder.from_model(as_slimclip(model, "openvino"), work_dir=o.work_dir, threads=o.threads,
                                      variant=o.variant, ort_settings=o.ort_settings)


def _openvino_requires() -> str | None:
    from .openvino_backend import openvino_status
    return openvino_status()


_ORT_MISSING = "onnxruntime is not installed (pip install onnxruntime)"
register(Backend("torch", MODEL, _open_torch(False), help="SlimCLIP eager"))
register(Backend("torch-compile", MODEL, _open_torch(True), _compile_requires, help="SlimCLIP under torch.compile"))
register(Backend("open_clip", OPEN_CLIP, _open_open_clip,
                 _needs("open_clip", "open_clip is not installed (pip install open_clip_torch)"),
                 help="an open_clip name, eager (the reference)"))
register(Backend("onnxruntime", ONNX, _open_onnxruntime(False), _needs("onnxruntime", _ORT_MISSING),
                 help="an export bundle's graphs, the variant its manifest names for ONNX Runtime"))
register(Backend("onnxruntime-int8", ONNX, _open_onnxruntime(True), _needs("onnxruntime", _ORT_MISSING),
                 precision="int8", help="the bundle's int8 graphs (quantised into work_dir when absent)"))
register(Backend("tensorrt", ENGINES, _open_tensorrt, _tensorrt_requires,
                 help="an export bundle with TensorRT engines (CUDA)"))
register(Backend("openvino", ONNX, _open_openvino, _openvino_requires, precision="int8",
                 help="a bundle's OpenVINO IR (mope export -f openvino), per tower the faster of the NNCF int8 IR "
                      "and ONNX Runtime's int8 graph"))


__all__ = ["Backend", "OpenOptions", "UnknownBackendError", "MODEL", "OPEN_CLIP", "ONNX", "ENGINES", "register",
           "backend_names", "backend_status", "available_backends", "check_backend", "check_backends", "as_slimclip"]
