"""What this machine can run: the default device and the optional GPU libraries (TensorRT, torch-tensorrt).

One rule each, shared by exporters, runtimes, benchmarks and the CLI.
"""

from __future__ import annotations

from .errors import MopeError

TENSORRT_MIN_VERSION = 10


class BackendUnavailableError(MopeError, RuntimeError):
    """A library or device the requested work needs is not available here (or the backend does not exist)."""


class TensorRTUnavailableError(BackendUnavailableError):
    """TensorRT / torch-tensorrt (or a CUDA GPU for them) is not available on this machine."""


def cuda_available() -> bool:
    """Whether torch sees a CUDA GPU (the one check every GPU path uses; tests replace it)."""
    import torch

    return torch.cuda.is_available()


def default_device() -> str:
    """``"cuda"`` when torch sees a CUDA GPU, else ``"cpu"``."""
    return "cuda" if cuda_available() else "cpu"


def import_tensorrt(purpose: str = "TensorRT runs", need_cuda: bool = True):
    """The ``tensorrt`` module (10.x or 11.x), checking for a CUDA GPU when ``need_cuda``; a clear error otherwise.

    "New enough" is decided by the API, not the version string: strongly typed networks
    (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``, TensorRT >= 10; accepted and ignored in 11) and the named
    I/O tensor runtime (``ICudaEngine.get_tensor_name``), which is what the exporter and runtime call."""
    try:
        import tensorrt as trt
    except ImportError:
        raise TensorRTUnavailableError(
            "TensorRT is not installed (pip install 'mope-deploy[gpu]': TensorRT 10.x/11.x, needs an NVIDIA GPU and "
            "driver): export --format onnx and use the torch or onnxruntime backends here, and build engines on the "
            "GPU machine") from None
    ndcf = getattr(trt, "NetworkDefinitionCreationFlag", None)
    if ndcf is None or not hasattr(ndcf, "STRONGLY_TYPED") or not hasattr(trt, "Runtime"):
        raise TensorRTUnavailableError(f"TensorRT {getattr(trt, '__version__', '?')} is too old: this needs strongly "
                                       f"typed networks (TensorRT >= {TENSORRT_MIN_VERSION}; pip install "
                                       "'mope-deploy[gpu]')")
    if need_cuda and not cuda_available():
        raise TensorRTUnavailableError(f"{purpose} on a CUDA GPU and none is visible here "
                                       "(torch.cuda.is_available() is False); run this on the GPU machine")
    return trt


def import_torch_tensorrt():
    """The ``torch_tensorrt`` module, with a CUDA GPU; a clear error otherwise."""
    try:
        import torch_tensorrt
    except ImportError:
        raise TensorRTUnavailableError("torch-tensorrt is not installed: `pip install 'mope-deploy[gpu]'` (the release "
                                       "built for your torch; needs an NVIDIA GPU), or use --format tensorrt") from None
    if not cuda_available():
        raise TensorRTUnavailableError("torch-tensorrt compiles on a CUDA GPU and none is visible here "
                                       "(torch.cuda.is_available() is False)")
    return torch_tensorrt


__all__ = ["BackendUnavailableError", "TensorRTUnavailableError", "cuda_available", "default_device",
           "import_tensorrt", "import_torch_tensorrt", "TENSORRT_MIN_VERSION"]
