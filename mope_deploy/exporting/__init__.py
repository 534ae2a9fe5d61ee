"""Export a SlimCLIP for deployment: parity-gated ONNX (+ optimised / int8 / fp16 variants), TensorRT engines,
torch-tensorrt programs and a Triton model repository, each bundle described by ``manifest.json``.

:mod:`.bundle` owns the bundle format, :mod:`.config` the run's settings, :mod:`.pipeline` runs the exporters.
"""

from ..vocab import FORMATS, PRECISIONS
from .bundle import Bundle, BundleError
from .config import EvalInputs, ExportConfig, ExportConfigError
from .onnx import ExportError, parity_check
from .pipeline import export_bundle, export_onnx

__all__ = ["FORMATS", "PRECISIONS", "Bundle", "BundleError", "EvalInputs", "ExportConfig", "ExportConfigError",
           "export_bundle", "ExportError", "export_onnx", "parity_check"]
