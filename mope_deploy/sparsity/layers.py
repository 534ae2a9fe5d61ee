"""Which weights are sparsified, and how sparse a model is.

As in Wanda, SparseGPT and ECoFLaP, the prunable weights are the linear layers inside the transformer blocks
(attention ``qkv`` / ``out_proj``, FFN ``c_fc`` / ``c_proj``) of the chosen towers; embeddings, LayerNorms,
biases and the final projections stay dense. A block with 0 heads (0 FFN neurons) simply has no attention
(FFN) linears.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch import nn

from ..vocab import TOWERS
from .patterns import is_nm

LINEARS = ("attn.qkv", "attn.out_proj", "mlp.c_fc", "mlp.c_proj")


def block_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """The prunable linears of one SlimCLIP block, by dotted name (absent branches skipped)."""
    out: dict[str, nn.Linear] = {}
    if getattr(block, "attn", None) is not None:
        out["attn.qkv"], out["attn.out_proj"] = block.attn.qkv, block.attn.out_proj
    if getattr(block, "mlp", None) is not None:
        out["mlp.c_fc"], out["mlp.c_proj"] = block.mlp.c_fc, block.mlp.c_proj
    return out


def prunable(model, towers=TOWERS) -> Iterator[tuple[str, int, str, nn.Linear]]:
    """``(tower, block index, linear name, module)`` for every prunable linear, in forward order."""
    for t in towers:
        for i, blk in enumerate(model.tower(t).blocks):
            for name, lin in block_linears(blk).items():
                yield t, i, name, lin


def weight_name(tower: str, block: int, name: str) -> str:
    """State-dict key of a prunable weight (``visual.blocks.3.mlp.c_fc.weight``)."""
    return f"{'visual' if tower == 'vision' else 'text'}.blocks.{block}.{name}.weight"


def _pattern(flags: list[tuple[bool, bool, bool]]) -> str:
    """Aggregate per-weight ``(has zeros, is 2:4, is 4:8)`` into the pattern a set of weights follows."""
    sparse = [f for f in flags if f[0]]
    if not sparse:
        return "dense"
    if all(f[1] for f in sparse):
        return "2:4"
    if all(f[2] for f in sparse):
        return "4:8"
    return "unstructured"


@torch.no_grad()
def sparsity_report(model, towers=TOWERS) -> dict[str, Any]:
    """Zeros among the prunable weights: overall, per tower, per block, and the pattern they follow
    (``dense``, ``2:4``, ``4:8`` or ``unstructured``; dense layers do not break an n:m model).

    ``{"sparsity", "zeros", "total", "pattern", "towers": {t: {"sparsity", "zeros", "total", "pattern",
    "blocks": [sparsity or None per block]}}}``; a block with no prunable weights reports ``None``.
    """
    rep: dict[str, Any] = {"towers": {}}
    zeros_all = total_all = 0
    flags_all: list[tuple[bool, bool, bool]] = []
    for t in towers:
        blocks, flags = [], []
        z_t = n_t = 0
        for blk in model.tower(t).blocks:
            z = n = 0
            for lin in block_linears(blk).values():
                w = lin.weight
                zw = int((w == 0).sum())
                z, n = z + zw, n + w.numel()
                flags.append((zw > 0, zw > 0 and is_nm(w, 2, 4), zw > 0 and is_nm(w, 4, 8)))
            blocks.append(z / n if n else None)
            z_t, n_t = z_t + z, n_t + n
        rep["towers"][t] = {"sparsity": z_t / n_t if n_t else 0.0, "zeros": z_t, "total": n_t,
                            "pattern": _pattern(flags), "blocks": blocks}
        zeros_all, total_all = zeros_all + z_t, total_all + n_t
        flags_all += flags
    rep.update(sparsity=zeros_all / total_all if total_all else 0.0, zeros=zeros_all, total=total_all,
               pattern=_pattern(flags_all))
    return rep


def masks_of(model, towers=TOWERS) -> dict[str, torch.Tensor]:
    """The mask a sparse model carries in its zeros: ``weight_name -> (weight != 0)``."""
    return {weight_name(t, i, n): (lin.weight != 0) for t, i, n, lin in prunable(model, towers)}
