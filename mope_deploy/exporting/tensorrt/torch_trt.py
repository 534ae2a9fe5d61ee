"""torch-tensorrt: the alternative to ONNX -> TensorRT, numerically gated like the TensorRT engines.

Each encoder (fp32, or fp16 by converting the module: :mod:`.torch_trt_api`) is compiled ahead of time with
``torch_tensorrt.compile(ir="dynamo")`` over the batch range 1..max, saved as an ExportedProgram, loaded back
(``torch.export.load(path).module()``, as a deployment would) and run at the profile's min/opt/max batch
against the torch model (:func:`.gate.gate_encoder`). A program that misses its gate, including one
whose batch axis the installed release fixed on save, is deleted and the export refused.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ... import device as _device
from ...device import TensorRTUnavailableError
from ...models.slim_clip import SlimCLIP
from ...vocab import TOWERS
from . import gate as eg
from . import torch_trt_api as api
from ...bundle.manifest import Engine, EngineSet
from ...bundle.names import INPUT_NAMES, program_name
from ..config import EvalInputs, ExportConfigError
from .engines import EngineBuild, _reference, eval_tensor, tower_cases
from ..onnx import ExportError, ImageEncoder, TextEncoder, input_shape, random_tokens

DEVICE = "cuda"


def require_torch_tensorrt():
    """Import ``torch_tensorrt`` and check for a CUDA device; a clear error otherwise."""
    return _device.import_torch_tensorrt()


def load_program(path: str | Path, device: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A saved program as a callable (``import torch_tensorrt`` first: it registers the engine op)."""
    return torch.export.load(str(path)).module().to(device)


def _compile_one(torch_tensorrt, feats, model: SlimCLIP, tower: str, out_dir: Path, build: EngineBuild,
                 say: Callable[[str], None]) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """Compile and save one tower's program; returns (path, compile kwargs, save kwargs)."""
    bopt, bmax = build.profile()
    device = build.device or DEVICE
    shape = input_shape(model, tower)
    in_dtype = torch.float32 if tower == "vision" else torch.int32
    module = (ImageEncoder if tower == "vision" else TextEncoder)(model, build.normalize).eval()
    if build.precision == "fp16":
        module = api.Fp16Module(module)
    module = module.to(device)
    spec = torch_tensorrt.Input(min_shape=(1, *shape), opt_shape=(bopt, *shape), max_shape=(bmax, *shape),
                                dtype=in_dtype)
    ckw = api.compile_kwargs(torch_tensorrt, feats, build.precision)
    say(f"torch-tensorrt {tower} encoder: compiling ({build.precision})")
    with torch.no_grad():
        trt_gm = torch_tensorrt.compile(module, ir="dynamo", arg_inputs=[spec], **ckw)
    g = torch.Generator().manual_seed(3)
    example = (torch.randn(max(bopt, 2), *shape, generator=g) if tower == "vision"
               else random_tokens(model, max(bopt, 2), g)).to(device)
    skw = api.save_kwargs(feats, INPUT_NAMES[tower], bmax)
    path = out_dir / program_name(tower, build.precision)
    torch_tensorrt.save(trt_gm, str(path), arg_inputs=[example], **skw)
    details = {"compile_kwargs": {k: (sorted(str(d) for d in v) if isinstance(v, set) else v) for k, v in ckw.items()},
               "save_kwargs": sorted(skw), "input": {"name": INPUT_NAMES[tower], "dtype": str(in_dtype)[6:]}}
    if build.precision == "fp16":
        details["fp32_layernorms"] = api.fp32_layernorms(module)
    return path, details, skw


def _gate_one(model: SlimCLIP, tower: str, path: Path, build: EngineBuild, calib: EvalInputs | None,
              version: str, skw: dict[str, Any]) -> tuple[dict[str, Any], Callable]:
    """Reload the saved program and run the numeric gate vs torch; a refused program is deleted."""
    bopt, bmax = build.profile()
    device = build.device or DEVICE
    prog = load_program(path, device)

    @torch.no_grad()
    def run(x: torch.Tensor) -> np.ndarray:
        return prog(x.to(device)).float().cpu().numpy()

    real = None if calib is None else (calib.parity_images() if tower == "vision" else calib.parity_tokens())
    cases = tower_cases(model, tower, real, max(bmax, 4), seed=3)
    gate = eg.gate_encoder(run, _reference(model.cpu(), tower, build.normalize), cases, (1, bopt, bmax),
                           build.precision, build.thresholds)
    if not gate["passed"]:
        path.unlink(missing_ok=True)  # written by this run a moment ago
        raise ExportError(f"torch-tensorrt {build.precision} {tower} program refused by the numeric gate vs torch: "
                          f"{eg.gate_summary(gate)}; torch-tensorrt {version} save kwargs {sorted(skw)}")
    return gate, run


def compile_torch_tensorrt(model: SlimCLIP, out_dir: str | Path, build: EngineBuild | None = None,
                           calib: EvalInputs | None = None,
                           say: Callable[[str], None] | None = None) -> EngineSet:
    """Compile, save, reload and gate both encoders; returns their record for the manifest. With labelled
    ``calib`` (the evaluation inputs) an fp16 pair must also keep Recall Mean within ``build.max_recall_drop``
    points of torch fp32 (None: no recall gate)."""
    build = build or EngineBuild()
    torch_tensorrt = require_torch_tensorrt()
    if build.precision not in ("fp32", "fp16"):
        raise ExportConfigError("torch-tensorrt int8 needs a ModelOpt-quantised model: use --format tensorrt for int8 "
                                "(Q/DQ engines) or --precision fp16")
    say = say or (lambda m: None)
    out_dir = Path(out_dir)
    feats = api.features(torch_tensorrt)
    bopt, bmax = build.profile()
    model = copy.deepcopy(model).float().eval()  # the caller's copy stays on its device
    engines: dict[str, Engine] = {}
    runs: dict[str, Callable] = {}
    for tower in TOWERS:
        path, details, skw = _compile_one(torch_tensorrt, feats, model, tower, out_dir, build, say)
        say(f"torch-tensorrt {tower} encoder: numeric gate at batch 1/{bopt}/{bmax}")
        gate, runs[tower] = _gate_one(model, tower, path, build, calib, feats["version"], skw)
        shape = list(input_shape(model, tower))
        engines[tower] = Engine(file=path.name, precision=build.precision, made_from="module",
                                profile={"min": [1, *shape], "opt": [bopt, *shape], "max": [bmax, *shape]},
                                gate=gate, details=details)
    recall = None
    if calib is not None and calib.labelled and build.max_recall_drop is not None and build.precision != "fp32":
        recall = _recall_gate(model, calib, runs, build, [out_dir / e.file for e in engines.values()], say)
    return EngineSet(format="torch-tensorrt", version=feats["version"], precision=build.precision, engines=engines,
                     recall_gate=recall, details={"features": feats})


def _recall_gate(model, calib: EvalInputs, runs, build: EngineBuild, files: list[Path], say) -> dict[str, Any]:
    say("torch-tensorrt recall gate")
    _, bmax = build.profile()
    emb = {t: np.concatenate([runs[t](x[i:i + bmax]) for i in range(0, len(x), bmax)])
           for t, x in ((t, eval_tensor(calib, t)) for t in TOWERS)}
    recall = eg.recall_gate(emb["vision"], emb["text"], calib.txt2img, eg.torch_recall(model, calib),
                            build.max_recall_drop)
    if not recall["passed"]:
        for f in files:
            f.unlink(missing_ok=True)  # written by this run
        raise ExportError(f"torch-tensorrt {build.precision} programs refused: Recall Mean "
                          f"{recall['recall']['recall_mean']:.2f} is {-recall['recall_delta']:.2f} points below "
                          f"torch fp32 (allowed {build.max_recall_drop:g})")
    return recall


__all__ = ["compile_torch_tensorrt", "require_torch_tensorrt", "load_program", "TensorRTUnavailableError"]
