"""Export a SlimCLIP for deployment: parity-gated ONNX (+ optimised / int8 / fp16 variants), TensorRT engines,
torch-tensorrt programs and a Triton model repository, each bundle described by ``manifest.json``."""

from .bundle import FORMATS, PRECISIONS, export_bundle
from .onnx import ExportError, export_onnx, parity_check

__all__ = ["FORMATS", "PRECISIONS", "export_bundle", "ExportError", "export_onnx", "parity_check"]
