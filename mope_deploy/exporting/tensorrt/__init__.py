"""TensorRT and torch-tensorrt: gated engines (:mod:`.engines`) built through the 10.x/11.x builder shims
(:mod:`.api`, :mod:`.weak` for TensorRT 10's calibrator), run by :mod:`.runner` (shared with the runtime),
judged by :mod:`.gate`; torch-tensorrt programs (:mod:`.torch_trt`, release shims :mod:`.torch_trt_api`).

Nothing here imports ``tensorrt``/``torch_tensorrt`` at import time: :func:`require_tensorrt` does, on use.
"""

from ...device import TensorRTUnavailableError
from .engines import EngineBuild, build_engines, load_profiles, require_tensorrt
from .torch_trt import compile_torch_tensorrt, require_torch_tensorrt

__all__ = ["EngineBuild", "build_engines", "load_profiles", "require_tensorrt", "compile_torch_tensorrt",
           "require_torch_tensorrt", "TensorRTUnavailableError"]
