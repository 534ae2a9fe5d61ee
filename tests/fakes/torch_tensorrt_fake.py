"""A stand-in for ``torch_tensorrt`` with the signatures of several releases (pytorch/TensorRT
``py/torch_tensorrt/_compile.py`` and ``dynamo/_compiler.py``), to put in ``sys.modules["torch_tensorrt"]``.

``make(release)``:

* ``"2.5"``: ``dynamo.compile(..., enabled_precisions, disable_tf32, min_block_size)`` (weak typing, no
  ``use_explicit_typing``); ``save(module, file_path, *, output_format, inputs, arg_inputs, kwarg_inputs,
  retrace=False)``: no ``dynamic_shapes``; ``retrace=False`` keeps the compiled graph's symbolic batch.
* ``"2.9"``: like 2.5 but ``save`` re-traces by default (``retrace=True``) and has no ``dynamic_shapes``: a program
  saved without ``retrace=False`` is fixed to the example's batch.
* ``"2.12"``: ``use_explicit_typing=True`` by default; fp16 in ``enabled_precisions`` with explicit typing raises
  ``ValueError``; ``save(..., retrace=True, dynamic_shapes=None)``.
* ``"2.14"``: ``dynamo.compile`` has neither ``enabled_precisions`` (the top-level ``compile`` accepts and ignores
  it for ``ir="dynamo"``, with a warning) nor ``use_explicit_typing`` (types follow the module);
  ``save(..., dynamic_shapes=None)``.

The "compiled" module runs the original module (on the CPU here); ``save`` writes a real
``torch.export`` program, so loading it back and running other batch sizes behaves as it would.
"""

from __future__ import annotations

import importlib.machinery
import types
import warnings

import torch

CALLS: list = []


class Input:
    def __init__(self, min_shape=None, opt_shape=None, max_shape=None, dtype=torch.float32, shape=None):
        self.min_shape, self.opt_shape, self.max_shape = min_shape or shape, opt_shape or shape, max_shape or shape
        self.dtype = dtype


class Compiled(torch.nn.Module):
    def __init__(self, module, spec: Input, kwargs):
        super().__init__()
        self.module, self.spec, self.kwargs = module, spec, kwargs

    def forward(self, x):
        return self.module(x)


def _dynamo_compile_25(exported_program=None, inputs=None, *, arg_inputs=None, kwarg_inputs=None, device=None,
                       disable_tf32=False, enabled_precisions=None, min_block_size=5, **kwargs):
    return kwargs


def _dynamo_compile_212(exported_program=None, inputs=None, *, arg_inputs=None, kwarg_inputs=None, device=None,
                        disable_tf32=False, enabled_precisions=None, min_block_size=5, use_explicit_typing=True,
                        use_fp32_acc=False, **kwargs):
    return kwargs


def _dynamo_compile_214(exported_program=None, inputs=None, *, arg_inputs=None, kwarg_inputs=None, device=None,
                        disable_tf32=False, min_block_size=5, use_fp32_acc=False, **kwargs):
    return kwargs


def _make_compile(release, dyn):
    import inspect

    allowed = set(inspect.signature(dyn).parameters) - {"kwargs"}

    def compile(module, ir="default", inputs=None, arg_inputs=None, kwarg_inputs=None,  # noqa: A001
                enabled_precisions=None, **kwargs):
        assert ir == "dynamo"
        unknown = set(kwargs) - allowed
        if unknown:
            raise TypeError(f"compile() got unexpected keyword argument(s) {sorted(unknown)}")
        if enabled_precisions is not None and "enabled_precisions" not in allowed:
            warnings.warn("enabled_precisions is not used for the Dynamo path", stacklevel=2)
        explicit = kwargs.get("use_explicit_typing", release == "2.12")
        if release == "2.12" and explicit and enabled_precisions and torch.float16 in enabled_precisions:
            raise ValueError("use_explicit_typing is enabled; enabled_precisions must only contain torch.float32")
        spec = (arg_inputs or inputs)[0]
        CALLS.append(("compile", release, dict(kwargs, enabled_precisions=enabled_precisions), spec))
        return Compiled(module, spec, kwargs)

    return compile


def _export(module: Compiled, example, dynamic_shapes):
    return torch.export.export(module.module, (example,), dynamic_shapes=dynamic_shapes, strict=False)


def _symbolic(module: Compiled):
    lo, hi = module.spec.min_shape[0], module.spec.max_shape[0]
    return ({0: torch.export.Dim("batch", min=lo, max=hi)},)


def _save_25(module, file_path="", *, output_format="exported_program", inputs=None, arg_inputs=None,
             kwarg_inputs=None, retrace=False):
    example = (arg_inputs or inputs)[0]
    ep = _export(module, example, None if retrace else _symbolic(module))
    CALLS.append(("save", "2.5", {"retrace": retrace}))
    torch.export.save(ep, file_path)


def _save_29(module, file_path="", *, output_format="exported_program", inputs=None, arg_inputs=None,
             kwarg_inputs=None, retrace=True, **kwargs):  # extra keywords are swallowed
    example = (arg_inputs or inputs)[0]
    ep = _export(module, example, None if retrace else _symbolic(module))
    CALLS.append(("save", "2.9", {"retrace": retrace, **kwargs}))
    torch.export.save(ep, file_path)


def _save_212(module, file_path="", *, output_format="exported_program", inputs=None, arg_inputs=None,
              kwarg_inputs=None, retrace=True, dynamic_shapes=None):
    example = (arg_inputs or inputs)[0]
    shapes = dynamic_shapes if retrace else _symbolic(module)
    ep = _export(module, example, shapes)
    CALLS.append(("save", "2.12", {"retrace": retrace, "dynamic_shapes": dynamic_shapes}))
    torch.export.save(ep, file_path)


def _save_214(module, file_path="", *, output_format="exported_program", arg_inputs=None, kwarg_inputs=None,
              dynamic_shapes=None, **kwargs):
    example = arg_inputs[0]
    ep = _export(module, example, dynamic_shapes)
    CALLS.append(("save", "2.14", {"dynamic_shapes": dynamic_shapes}))
    torch.export.save(ep, file_path)


RELEASES = {"2.5": (_dynamo_compile_25, _save_25), "2.9": (_dynamo_compile_25, _save_29),
            "2.12": (_dynamo_compile_212, _save_212), "2.14": (_dynamo_compile_214, _save_214)}


def make(release: str = "2.12") -> types.ModuleType:
    dyn, save = RELEASES[release]
    CALLS.clear()
    mod = types.ModuleType("torch_tensorrt")
    mod.__spec__ = importlib.machinery.ModuleSpec("torch_tensorrt", None)  # torch._dynamo calls find_spec on it
    mod.__version__ = release + ".0"
    mod.Input, mod.save = Input, save
    mod.compile = _make_compile(release, dyn)
    mod.dynamo = types.SimpleNamespace(compile=dyn)
    mod.CALLS = CALLS
    return mod
