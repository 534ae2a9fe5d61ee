"""What travels with a model besides weights: its image preprocessing and its tokenizer.

Both are rebuilt from plain settings in the model's config (open_clip's own transform and tokenizers),
so a saved model directory is all a service needs to turn PIL images and strings into inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .config import CLIPConfig, ConfigError

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def build_preprocess(config: CLIPConfig) -> Callable:
    """open_clip's evaluation transform (resize, centre crop, normalise) for this model."""
    from open_clip.transform import image_transform

    p: dict[str, Any] = config.preprocess
    return image_transform(
        p.get("size", config.vision.image_size), is_train=False,
        mean=tuple(p["mean"]) if "mean" in p else None, std=tuple(p["std"]) if "std" in p else None,
        resize_mode=p.get("resize_mode"), interpolation=p.get("interpolation"),
    )


def build_tokenizer(config: CLIPConfig) -> Callable:
    """The tokenizer described by ``config.tokenizer``.

    ``{"type": "open_clip", "name": "ViT-L-14"}``: open_clip's tokenizer for that architecture.
    ``{"type": "bpe", "bpe_file": "demo_bpe.txt.gz"}``: open_clip's ``SimpleTokenizer`` over a BPE merges
    file shipped in ``mope_deploy/assets`` (or an absolute path), e.g. a truncated vocabulary.

    A ``SimpleTokenizer`` (every OpenAI-CLIP architecture) is built without importing the ``open_clip`` package
    (its model zoo pulls in torchvision and costs seconds); other tokenizers (HF, SigLIP) go through open_clip.
    """
    t = dict(config.tokenizer) or {"type": "open_clip", "name": "ViT-B-32"}
    ctx = t.get("context_length", config.text.context_length)
    kind = t.get("type", "open_clip")
    if kind == "open_clip":
        name = t.get("name") or "ViT-B-32"
        text_cfg = _zoo_text_config(name)
        if text_cfg is None or text_cfg.get("hf_tokenizer_name") is not None or "siglip" in name.lower():
            import open_clip
            return open_clip.get_tokenizer(name, context_length=ctx)
        return _simple_tokenizer_class()(context_length=ctx, **text_cfg.get("tokenizer_kwargs", {}))
    if kind == "bpe":
        path = Path(t["bpe_file"])
        path = path if path.is_absolute() else ASSETS / path
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer BPE file {path} not found (config.tokenizer.bpe_file)")
        return _simple_tokenizer_class()(bpe_path=str(path), context_length=ctx)
    raise ConfigError(f"unknown tokenizer type {kind!r} in config.tokenizer; use 'open_clip' or 'bpe'")


def _open_clip_dir() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("open_clip")      # finds the package without running its __init__
    return Path(spec.origin).parent if spec is not None and spec.origin else None


def _zoo_text_config(name: str) -> dict[str, Any] | None:
    """``text_cfg`` of open_clip's built-in config ``name`` read from its JSON file (None: not a built-in name)."""
    import json

    root = _open_clip_dir()
    path = root / "model_configs" / f"{name}.json" if root is not None else None
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8")).get("text_cfg", {})


def _simple_tokenizer_class():
    """open_clip's ``SimpleTokenizer``, its module loaded on its own (it imports only ftfy, regex, numpy, torch)."""
    import importlib.util
    import sys

    name = "mope_deploy._open_clip_tokenizer"
    module = sys.modules.get(name) or sys.modules.get("open_clip.tokenizer")
    if module is None:
        root = _open_clip_dir()
        if root is None:
            import open_clip.tokenizer as module       # noqa: F811  (raises the usual ImportError)
        else:
            spec = importlib.util.spec_from_file_location(name, root / "tokenizer.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
    return module.SimpleTokenizer
