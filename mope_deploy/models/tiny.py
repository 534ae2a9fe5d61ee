"""Tiny architectures for tests, examples and quick experiments (seconds on a CPU)."""

from __future__ import annotations

from .config import CLIPConfig, TextConfig, VisionConfig, uniform_blocks


def tiny_config(width: int = 64, depth: int = 2, heads: int = 4, head_dim: int = 16, mlp_ratio: int = 4,
                image_size: int = 32, patch_size: int = 8, context_length: int = 16, vocab_size: int = 49408,
                embed_dim: int = 32, act: str = "gelu", text_depth: int | None = None) -> CLIPConfig:
    """A small CLIP config (same tokenizer as open_clip's ViT-B-32 unless ``vocab_size`` says otherwise)."""
    td = depth if text_depth is None else text_depth
    vision = VisionConfig(width=width, head_dim=head_dim, blocks=uniform_blocks(depth, heads, width * mlp_ratio),
                          act=act, image_size=image_size, patch_size=patch_size)
    text = TextConfig(width=width, head_dim=head_dim, blocks=uniform_blocks(td, heads, width * mlp_ratio), act=act,
                      context_length=context_length, vocab_size=vocab_size, eos_id=vocab_size - 1)
    return CLIPConfig(
        embed_dim=embed_dim, vision=vision, text=text,
        preprocess={"size": image_size, "mean": [0.48145466, 0.4578275, 0.40821073],
                    "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic", "resize_mode": "shortest"},
        tokenizer={"type": "open_clip", "name": "ViT-B-32", "context_length": context_length},
        provenance={"source": "tiny"},
    ).validate()
