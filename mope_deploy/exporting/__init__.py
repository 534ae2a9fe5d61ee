"""Export a SlimCLIP for deployment: parity-gated ONNX (+ optimised / fused / int8 / fp16 variants), TensorRT
engines, torch-tensorrt programs and a Triton model repository, each bundle described by its typed manifest
(:mod:`mope_deploy.bundle`).

:mod:`.config` holds the run's settings, :mod:`.steps` the steps (each returns a manifest record),
:mod:`.pipeline` the orchestrator.
"""

from ..bundle import Bundle, BundleError
from ..vocab import FORMATS, PRECISIONS
from .config import EvalInputs, ExportConfig, ExportConfigError
from .onnx import ExportError, parity_check
from .pipeline import export_bundle, export_spec, preflight
from .steps import export_onnx

__all__ = ["FORMATS", "PRECISIONS", "Bundle", "BundleError", "EvalInputs", "ExportConfig", "ExportConfigError",
           "export_bundle", "export_spec", "ExportError", "export_onnx", "parity_check", "preflight"]
