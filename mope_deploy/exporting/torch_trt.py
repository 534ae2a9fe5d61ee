"""torch-tensorrt: the alternative to ONNX -> TensorRT. Each encoder is compiled ahead of time with
``torch_tensorrt.compile(ir="dynamo")`` over a dynamic batch range and saved as an ExportedProgram
(``{image,text}_encoder.{precision}.ep``, load with ``torch.export.load`` after ``import torch_tensorrt``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from ..models.slim_clip import SlimCLIP
from .onnx import IMAGE_FILE, TEXT_FILE, ImageEncoder, TextEncoder, random_tokens
from . import tensorrt as _trt
from .tensorrt import TensorRTUnavailableError

DEVICE = "cuda"


def require_torch_tensorrt():
    try:
        import torch_tensorrt
    except ImportError:
        raise TensorRTUnavailableError("torch-tensorrt is not installed: `pip install torch-tensorrt` (matching your "
                                       "torch version; needs an NVIDIA GPU), or use --format tensorrt") from None
    if not _trt._cuda_available():
        raise TensorRTUnavailableError("torch-tensorrt compiles on a CUDA GPU and none is visible here "
                                       "(torch.cuda.is_available() is False)")
    return torch_tensorrt


def compile_torch_tensorrt(model: SlimCLIP, out_dir: str | Path, precision: str = "fp16",
                           batch_sizes: tuple[int, int, int] = (1, 8, 64), normalize: bool = False,
                           device: str | None = None) -> dict[str, Any]:
    """Compile and save both encoders; fp32 or fp16 (int8 needs ModelOpt quantisation, not done here)."""
    torch_tensorrt = require_torch_tensorrt()
    if precision == "int8":
        raise ValueError("torch-tensorrt int8 needs a ModelOpt-quantised model; use --format tensorrt for int8 "
                         "(calibrated engines) or --precision fp16")
    out_dir = Path(out_dir)
    device = device or DEVICE
    model = copy.deepcopy(model).float().eval()  # moved to the GPU below; the caller's copy stays put
    bmin, bopt, bmax = batch_sizes
    dtype = torch.float16 if precision == "fp16" else torch.float32
    v, t = model.config.vision, model.config.text
    out: dict[str, Any] = {"version": getattr(torch_tensorrt, "__version__", None), "precision": precision, "files": {}}
    for tower, module, shape, in_dtype, name in (
        ("image", ImageEncoder(model, normalize), (3, v.image_size, v.image_size), torch.float32, "image"),
        ("text", TextEncoder(model, normalize), (t.context_length,), torch.int32, "tokens"),
    ):
        module = module.eval().to(device)
        spec = torch_tensorrt.Input(min_shape=(bmin, *shape), opt_shape=(bopt, *shape), max_shape=(bmax, *shape),
                                    dtype=in_dtype)
        trt_gm = torch_tensorrt.compile(module, ir="dynamo", arg_inputs=[spec], enabled_precisions={dtype},
                                        min_block_size=1)
        example = (torch.randn(bopt, *shape, device=device) if tower == "image"
                   else random_tokens(model, bopt).to(device))
        # without explicit dynamic_shapes the saved program would be re-traced at the example's batch size
        batch = torch.export.Dim("batch", min=bmin, max=bmax)
        file = f"{Path(IMAGE_FILE if tower == 'image' else TEXT_FILE).stem}.{precision}.ep"
        torch_tensorrt.save(trt_gm, str(out_dir / file), output_format="exported_program", arg_inputs=[example],
                            dynamic_shapes={name: {0: batch}})
        out["files"][tower] = file
        out.setdefault("inputs", {})[tower] = {"name": name, "min": [bmin, *shape], "opt": [bopt, *shape],
                                               "max": [bmax, *shape], "dtype": str(in_dtype).replace("torch.", "")}
    return out
