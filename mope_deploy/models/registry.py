"""One way to name a model everywhere: ``demo``, a saved model directory, or an open_clip name.

``load("demo")``, ``load("runs/student")``, ``load("ViT-L-14", pretrained="openai")`` and
``load("ViT-L-14:openai")`` all return a :class:`SlimCLIP`.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn

from ..errors import MopeError
from .config import CLIPConfig
from .io import CONFIG_FILE, ModelFileError, load_model, read_config
from .processing import ASSETS
from .slim_clip import SlimCLIP

DEMO_DIR = ASSETS / "demo"


class ModelNotFoundError(MopeError, ValueError):
    """MODEL names nothing we can load."""


def load_teacher(name: str, pretrained: str | None = None, device: str = "cpu") -> nn.Module:
    """An open_clip model: ``name`` is an architecture (``ViT-L-14``), ``pretrained`` a tag (``openai``,
    downloaded by open_clip) or a local checkpoint path (open_clip's own format, loaded weights-only)."""
    import open_clip

    if name not in open_clip.list_models() and not name.startswith(("hf-hub:", "local-dir:")):
        raise ModelNotFoundError(_not_found_message(name))
    if pretrained and Path(pretrained).suffix and not Path(pretrained).is_file() and "/" in pretrained:
        raise FileNotFoundError(f"checkpoint {pretrained} not found")
    if not (pretrained and Path(pretrained).is_file()):
        return open_clip.create_model(name, pretrained=pretrained or None, device=device, weights_only=True).eval()
    try:
        model = open_clip.create_model(name, pretrained=pretrained, device=device, weights_only=True)
    except pickle.UnpicklingError:
        # torch's message suggests weights_only=False, i.e. running whatever code the file carries: never say that
        raise ModelFileError(f"checkpoint {pretrained} was refused: it is not a plain weights checkpoint (it holds "
                             "Python objects other than tensors and plain data, or is not a torch file at all); mope "
                             "only loads weights (torch.load weights_only=True, or .safetensors)") from None
    except torch.OutOfMemoryError:
        raise                               # the machine, not the file
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError, IndexError,
            StopIteration, zipfile.BadZipFile, SafetensorError) as e:
        # the architecture built: whatever fails now is the file (corrupt, empty, or another model's weights)
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        if "weights_only" in first:
            first = type(e).__name__
        raise ModelFileError(f"checkpoint {pretrained} cannot be loaded into {name} ({first}): give an open_clip "
                             f"checkpoint of that architecture (a state dict of tensors)") from None
    return model.eval()


def _not_found_message(spec: str) -> str:
    return (f"model {spec!r} not found: MODEL is 'demo', a directory with {CONFIG_FILE} and model.safetensors, "
            "or an open_clip architecture name such as ViT-L-14 (optionally NAME:PRETRAINED, e.g. ViT-L-14:openai); "
            "`python -c 'import open_clip; print(open_clip.list_models())'` lists the names")


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"ViT-L-14:openai"`` -> ``("ViT-L-14", "openai")``; other specs pass through."""
    import open_clip

    if ":" in spec and not spec.startswith(("hf-hub:", "local-dir:")):
        name, tag = spec.split(":", 1)
        if name in open_clip.list_models():
            return name, tag
    return spec, None


def resolve(spec: str | Path) -> Path | None:
    """The model directory ``spec`` points to (``demo`` included), or None for an open_clip name."""
    if str(spec) == "demo":
        if not (DEMO_DIR / CONFIG_FILE).is_file():
            raise ModelNotFoundError(f"the demo teacher is not installed ({DEMO_DIR} has no {CONFIG_FILE}); "
                                     "rebuild it with `python benchmarks/train_demo.py`")
        return DEMO_DIR
    p = Path(spec)
    if p.is_dir():
        return p
    return None


def load(spec: str | Path, pretrained: str | None = None, device: str = "cpu",
         dtype: torch.dtype | None = torch.float32) -> SlimCLIP:
    """Load MODEL in any of its three forms as a SlimCLIP (fp32 by default; ``dtype=None`` keeps the saved one)."""
    from .convert import from_open_clip

    directory = resolve(spec)
    if directory is not None:
        model = load_model(directory, device=device)
    else:
        name, tag = split_spec(str(spec))
        pretrained = pretrained or tag
        model = from_open_clip(load_teacher(name, pretrained, device=device), name=name, pretrained=pretrained)
    return model.to(dtype=dtype) if dtype is not None else model


def load_config(spec: str | Path) -> CLIPConfig:
    """Architecture of MODEL without loading weights where possible (open_clip names build on the meta device)."""
    directory = resolve(spec)
    if directory is not None:
        return read_config(directory)
    name, tag = split_spec(str(spec))
    with torch.device("meta"):
        model = load_teacher(name, None, device="meta")
    from .convert import _text_config, _text_parts, _vision_config, _preprocess_settings

    vcfg = _vision_config(model.visual)
    return CLIPConfig(embed_dim=model.visual.proj.shape[1], vision=vcfg, text=_text_config(_text_parts(model)),
                      preprocess=_preprocess_settings(model, vcfg.image_size),
                      tokenizer={"type": "open_clip", "name": name},
                      provenance={"source": "open_clip", "teacher": name, "pretrained": tag}).validate()
