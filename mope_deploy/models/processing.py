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
    """
    import open_clip
    from open_clip.tokenizer import SimpleTokenizer

    t = dict(config.tokenizer) or {"type": "open_clip", "name": "ViT-B-32"}
    ctx = t.get("context_length", config.text.context_length)
    kind = t.get("type", "open_clip")
    if kind == "open_clip":
        return open_clip.get_tokenizer(t.get("name") or "ViT-B-32", context_length=ctx)
    if kind == "bpe":
        path = Path(t["bpe_file"])
        path = path if path.is_absolute() else ASSETS / path
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer BPE file {path} not found (config.tokenizer.bpe_file)")
        return SimpleTokenizer(bpe_path=str(path), context_length=ctx)
    raise ConfigError(f"unknown tokenizer type {kind!r} in config.tokenizer; use 'open_clip' or 'bpe'")
