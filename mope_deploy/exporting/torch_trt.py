"""torch-tensorrt: the alternative to ONNX -> TensorRT, numerically gated like the TensorRT engines.

Each encoder (fp32, or fp16 by converting the module: :mod:`.torch_trt_api`) is compiled ahead of time with
``torch_tensorrt.compile(ir="dynamo")`` over the batch range 1..max, saved as an ExportedProgram, loaded back
(``torch.export.load(path).module()``, as a deployment would) and run at the profile's min/opt/max batch
against the torch model (:func:`.engine_gate.gate_encoder`). A program that misses its gate, including one
whose batch axis the installed release fixed on save, is deleted and the export refused.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import device as _device
from ..device import TensorRTUnavailableError
from ..models.slim_clip import SlimCLIP
from ..vocab import TOWERS
from . import engine_gate as eg
from . import torch_trt_api as api
from .bundle import INPUT_NAMES, program_name
from .config import EvalInputs, ExportConfigError
from .onnx import ExportError, ImageEncoder, TextEncoder, input_shape, random_tokens

DEVICE = "cuda"


def require_torch_tensorrt():
    """Import ``torch_tensorrt`` and check for a CUDA device; a clear error otherwise."""
    return _device.import_torch_tensorrt()


def load_program(path: str | Path, device: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A saved program as a callable (``import torch_tensorrt`` first: it registers the engine op)."""
    return torch.export.load(str(path)).module().to(device)


def compile_torch_tensorrt(model: SlimCLIP, out_dir: str | Path, precision: str = "fp16",
                           batch_sizes: tuple[int, int, int] = (1, 8, 64), normalize: bool = False,
                           device: str | None = None, thresholds: dict[str, float] | None = None,
                           real_images: torch.Tensor | None = None, real_tokens: torch.Tensor | None = None,
                           say: Callable[[str], None] | None = None, calib: EvalInputs | None = None,
                           max_recall_drop: float | None = 1.0) -> dict[str, Any]:
    """Compile, save, reload and gate both encoders; returns what was done (files, features, gate reports).
    With labelled ``calib`` (the evaluation inputs) an fp16 pair must also keep Recall Mean within
    ``max_recall_drop`` points of torch fp32 (None: no recall gate)."""
    torch_tensorrt = require_torch_tensorrt()
    if precision not in ("fp32", "fp16"):
        raise ExportConfigError("torch-tensorrt int8 needs a ModelOpt-quantised model: use --format tensorrt for int8 "
                                "(Q/DQ engines) or --precision fp16")
    say = say or (lambda m: None)
    out_dir = Path(out_dir)
    device = device or DEVICE
    feats = api.features(torch_tensorrt)
    _, bopt, bmax = (int(b) for b in batch_sizes)
    model = copy.deepcopy(model).float().eval()  # the caller's copy stays on its device
    out: dict[str, Any] = {"version": feats["version"], "features": feats, "precision": precision, "files": {},
                           "gates": {}, "compile_kwargs": {}, "save_kwargs": {}, "recall_gate": None}
    g = torch.Generator().manual_seed(3)
    embeddings: dict[str, np.ndarray] = {}
    for tower in TOWERS:
        shape, name = input_shape(model, tower), INPUT_NAMES[tower]
        in_dtype = torch.float32 if tower == "vision" else torch.int32
        module = (ImageEncoder if tower == "vision" else TextEncoder)(model, normalize).eval()
        if precision == "fp16":
            module = api.Fp16Module(module)
        module = module.to(device)
        spec = torch_tensorrt.Input(min_shape=(1, *shape), opt_shape=(bopt, *shape), max_shape=(bmax, *shape),
                                    dtype=in_dtype)
        ckw = api.compile_kwargs(torch_tensorrt, feats, precision)
        say(f"torch-tensorrt {tower} encoder: compiling ({precision})")
        with torch.no_grad():
            trt_gm = torch_tensorrt.compile(module, ir="dynamo", arg_inputs=[spec], **ckw)
        example = (torch.randn(max(bopt, 2), *shape, generator=g) if tower == "vision"
                   else random_tokens(model, max(bopt, 2), g)).to(device)
        skw = api.save_kwargs(feats, name, bmax)
        file = program_name(tower, precision)
        path = out_dir / file
        torch_tensorrt.save(trt_gm, str(path), arg_inputs=[example], **skw)
        say(f"torch-tensorrt {tower} encoder: numeric gate at batch 1/{bopt}/{bmax}")
        prog = load_program(path, device)

        @torch.no_grad()
        def run(x: torch.Tensor, prog=prog) -> np.ndarray:
            return prog(x.to(device)).float().cpu().numpy()

        @torch.no_grad()
        def ref(x: torch.Tensor, tower=tower) -> np.ndarray:
            if tower == "vision":
                return model.cpu().encode_image(x.float(), normalize=normalize).numpy()
            return model.cpu().encode_text(x.long(), normalize=normalize).numpy()

        s = model.config.vision.image_size
        if tower == "vision":
            cases = {"random": torch.randn(max(bmax, 4), 3, s, s, generator=g)}
            real = real_images.float() if real_images is not None else None
        else:
            cases = {"random": random_tokens(model, max(bmax, 4), g)}
            real = eg.sample_tokens(model, real_tokens)
        if real is not None:
            cases["real"] = real
        gate = eg.gate_encoder(run, ref, cases, (1, bopt, bmax), precision, thresholds)
        out["gates"][tower] = gate
        if not gate["passed"]:
            path.unlink(missing_ok=True)  # written by this run a moment ago
            raise ExportError(f"torch-tensorrt {precision} {tower} program refused by the numeric gate vs torch: "
                              f"{eg.gate_summary(gate)}; torch-tensorrt {feats['version']} save kwargs "
                              f"{sorted(skw)}")
        if calib is not None and calib.labelled and max_recall_drop is not None and precision != "fp32":
            x = calib.images.float() if tower == "vision" else calib.tokens.to(torch.int32)
            embeddings[tower] = np.concatenate([run(x[i:i + bmax]) for i in range(0, len(x), bmax)])
        out["files"][tower] = file
        out["compile_kwargs"][tower] = {k: (sorted(str(d) for d in v) if isinstance(v, set) else v)
                                        for k, v in ckw.items()}
        out["save_kwargs"][tower] = sorted(skw)
        out.setdefault("inputs", {})[tower] = {"name": name, "min": [1, *shape], "opt": [bopt, *shape],
                                               "max": [bmax, *shape], "dtype": str(in_dtype).replace("torch.", "")}
        if precision == "fp16":
            out.setdefault("fp32_layernorms", {})[tower] = api.fp32_layernorms(module)
    if embeddings:
        say("torch-tensorrt recall gate")
        recall = eg.recall_gate(embeddings["vision"], embeddings["text"], calib.txt2img, eg.torch_recall(model, calib),
                                max_recall_drop)
        out["recall_gate"] = recall
        if not recall["passed"]:
            for f in out["files"].values():
                (out_dir / f).unlink(missing_ok=True)  # written by this run
            raise ExportError(f"torch-tensorrt {precision} programs refused: Recall Mean "
                              f"{recall['recall']['recall_mean']:.2f} is {-recall['recall_delta']:.2f} points below "
                              f"torch fp32 (allowed {max_recall_drop:g})")
    return out


__all__ = ["compile_torch_tensorrt", "require_torch_tensorrt", "load_program", "TensorRTUnavailableError"]
