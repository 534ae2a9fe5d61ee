"""Analytic parameter and FLOP counts from a config alone (a multiply-add counts as 2 FLOPs).

FLOPs cover the matrix products (patch embedding, q/k/v, attention scores and mixing, output projection,
FFN, final projection); LayerNorm, softmax, activations and biases are left out, as is usual. The text
tower is counted at its full context length.
"""

from __future__ import annotations

from typing import Any

from .config import BlockConfig, CLIPConfig, TextConfig, TowerConfig, VisionConfig


def block_params(width: int, head_dim: int, b: BlockConfig) -> int:
    d, inner = width, b.heads * head_dim
    attn = (d * 3 * inner + 3 * inner + inner * d + d) if b.heads else d
    mlp = (d * b.mlp + b.mlp + b.mlp * d + d) if b.mlp else d
    return 4 * d + attn + mlp


def block_flops(width: int, head_dim: int, b: BlockConfig, tokens: int) -> int:
    d, n, inner = width, tokens, b.heads * head_dim
    attn = 2 * n * d * 3 * inner + 2 * 2 * n * n * inner + 2 * n * inner * d
    return attn + 2 * 2 * n * d * b.mlp


def _embedding_params(cfg: TowerConfig, embed_dim: int) -> int:
    d = cfg.width
    if isinstance(cfg, VisionConfig):
        return 3 * cfg.patch_size ** 2 * d + d + cfg.num_tokens * d + (2 * d if cfg.ln_pre else 0) + 2 * d + d * embed_dim
    assert isinstance(cfg, TextConfig)
    return cfg.vocab_size * d + cfg.context_length * d + 2 * d + d * embed_dim + (embed_dim if cfg.proj_bias else 0)


def _embedding_flops(cfg: TowerConfig, embed_dim: int) -> int:
    proj = 2 * cfg.width * embed_dim
    if isinstance(cfg, VisionConfig):
        return 2 * (cfg.num_tokens - 1) * 3 * cfg.patch_size ** 2 * cfg.width + proj
    return proj


def tower_stats(cfg: TowerConfig, embed_dim: int) -> dict[str, Any]:
    """Per-block and total counts for one tower; ``params`` = block parameters only (paper convention)."""
    n = cfg.num_tokens  # type: ignore[attr-defined]
    blocks = [
        {"index": i, "source": b.source, "heads": b.heads, "attn_width": b.heads * cfg.head_dim, "mlp": b.mlp,
         "params": block_params(cfg.width, cfg.head_dim, b),
         "gflops": block_flops(cfg.width, cfg.head_dim, b, n) / 1e9}
        for i, b in enumerate(cfg.blocks)
    ]
    params = sum(b["params"] for b in blocks)
    flops = sum(block_flops(cfg.width, cfg.head_dim, b, n) for b in cfg.blocks) + _embedding_flops(cfg, embed_dim)
    return {
        "width": cfg.width, "head_dim": cfg.head_dim, "depth": cfg.depth, "tokens": n,
        "params": params, "params_total": params + _embedding_params(cfg, embed_dim),
        "gflops": flops / 1e9, "blocks": blocks,
    }


def model_stats(config: CLIPConfig) -> dict[str, Any]:
    """``{"vision": ..., "text": ..., "params", "params_total", "gflops"}`` (GFLOPs: one image + one text)."""
    v = tower_stats(config.vision, config.embed_dim)
    t = tower_stats(config.text, config.embed_dim)
    scalars = 1 + int(config.logit_bias)
    return {
        "vision": v, "text": t,
        "params": v["params"] + t["params"],
        "params_total": v["params_total"] + t["params_total"] + scalars,
        "gflops": v["gflops"] + t["gflops"],
    }
