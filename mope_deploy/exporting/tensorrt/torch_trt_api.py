"""torch-tensorrt calls that work across releases 2.4-2.14, chosen by the installed signatures.

Checked against pytorch/TensorRT (``py/torch_tensorrt/_compile.py``, ``dynamo/_compiler.py``) and the
torch-tensorrt 2.14.0 wheel itself (the release for torch 2.14: ``dynamo.compile`` has neither
``enabled_precisions`` nor ``use_explicit_typing``; ``save`` has ``retrace=True`` and ``dynamic_shapes``):

* ``torch_tensorrt.compile(module, ir="dynamo", arg_inputs=[Input(min_shape, opt_shape, max_shape, dtype)], ...)``
  forwards extra keywords to ``torch_tensorrt.dynamo.compile``. On the dynamo path ``enabled_precisions`` is
  not used by recent releases ("Default for legacy FX/TS frontends; not used for the Dynamo path"), and
  releases with explicit typing (``use_explicit_typing``) reject fp16 there. So fp16 is done by converting the
  module (fp16 weights and activations; LayerNorm, and the final L2 norm, computed in fp32 by explicit casts)
  and compiling it with ``use_explicit_typing=True`` where that parameter exists; only releases without it
  get ``enabled_precisions`` (weak typing, the 2.4-era behaviour).
* ``torch_tensorrt.save(..., output_format="exported_program", arg_inputs=..., dynamic_shapes=...)``: the
  ``dynamic_shapes`` parameter only exists in newer releases; older ones have ``retrace`` (``False`` keeps the
  compiled graph's symbolic batch instead of re-tracing at the example's batch). Which of the two a release
  honours is checked afterwards anyway: the saved program is loaded back and run at the profile's min/opt/max
  batch by the engine gate, and a program whose batch got fixed is refused.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _params(fn) -> set[str]:
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


def features(torch_tensorrt) -> dict[str, Any]:
    """Signature facts of the installed torch-tensorrt (no version parsing)."""
    dyn = getattr(getattr(torch_tensorrt, "dynamo", None), "compile", None)
    cparams = _params(dyn) if dyn is not None else set()
    sparams = _params(torch_tensorrt.save)
    return {"version": str(getattr(torch_tensorrt, "__version__", "?")),
            "use_explicit_typing": "use_explicit_typing" in cparams,
            "enabled_precisions": "enabled_precisions" in cparams or not cparams,
            "disable_tf32": "disable_tf32" in cparams,
            "save_dynamic_shapes": "dynamic_shapes" in sparams, "save_retrace": "retrace" in sparams}


class Fp32LayerNorm(nn.Module):
    """LayerNorm computed in fp32 on fp16 activations (explicit casts the strongly typed engine keeps)."""

    def __init__(self, ln: nn.LayerNorm):
        super().__init__()
        self.normalized_shape, self.eps = ln.normalized_shape, ln.eps
        self.weight = nn.Parameter(ln.weight.detach().float().clone())
        self.bias = nn.Parameter(ln.bias.detach().float().clone()) if ln.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


class Fp16Module(nn.Module):
    """``module`` with fp16 weights/activations and fp32 LayerNorms; float inputs are cast to fp16 inside and the
    output returned as fp32, so the I/O contract matches the fp32 encoders."""

    def __init__(self, module: nn.Module):
        super().__init__()
        m = copy.deepcopy(module).half()
        for name, child in list(m.named_modules()):
            for cname, c in list(child.named_children()):
                if isinstance(c, nn.LayerNorm):
                    setattr(child, cname, Fp32LayerNorm(c))
        self.inner = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point():
            x = x.half()
        return self.inner(x).float()


def fp32_layernorms(module: nn.Module) -> int:
    return sum(isinstance(m, Fp32LayerNorm) for m in module.modules())


def compile_kwargs(torch_tensorrt, feats: dict[str, Any], precision: str) -> dict[str, Any]:
    """Extra ``torch_tensorrt.compile`` keywords for ``precision`` on this release."""
    kw: dict[str, Any] = {"min_block_size": 1}
    if feats["use_explicit_typing"]:
        kw["use_explicit_typing"] = True  # types follow the (converted) module; no enabled_precisions
    elif feats["enabled_precisions"]:
        kw["enabled_precisions"] = {torch.float32, torch.float16} if precision == "fp16" else {torch.float32}
    if precision == "fp32" and feats["disable_tf32"]:
        kw["disable_tf32"] = True
    return kw


def save_kwargs(feats: dict[str, Any], input_name: str, bmax: int) -> dict[str, Any]:
    """``torch_tensorrt.save`` keywords that keep the batch dynamic on this release."""
    kw: dict[str, Any] = {"output_format": "exported_program"}
    if feats["save_dynamic_shapes"]:
        # positional form: the compiled module's forward argument may not be named like the graph input
        kw["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=bmax)},)
    elif feats["save_retrace"]:
        kw["retrace"] = False  # keep the compiled graph's symbolic batch; re-tracing would fix the example's
    return kw
