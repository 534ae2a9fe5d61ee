"""The paper's width baselines in the ScoreTable format: magnitude (MagnCLIP) and loss gradient (DynaCLIP).

- magnitude: L1 norm of a head's weights (its q, k, v rows of ``qkv`` and its ``out_proj`` columns) and of a
  neuron's weights (its ``c_fc`` row and ``c_proj`` column); a group scores the sum of its neurons; a block
  scores the L1 norm of all its weights. Needs no data.
- gradient: first-order Taylor importance of the contrastive loss (:mod:`.gradient`); blocks by their
  residual-gate gradient (the paper's "gradient" depth baseline).
Neuron groups follow each method's own neuron ranking (sorted, then cut into ``n_groups`` contiguous
groups), so top-k groups are the method's top-k neurons.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from ..models.slim_clip import SlimCLIP
from .gradient import gradient_importance, importance_order
from ..vocab import TOWERS
from .table import ScoreTable, TowerScores, group_bounds, model_hash


def _grouped(neuron_scores: list[float], n_groups: int) -> tuple[list[int], list[float]]:
    order = importance_order(neuron_scores)
    b = group_bounds(len(order), n_groups)
    return order, [float(sum(neuron_scores[j] for j in order[b[g]:b[g + 1]])) for g in range(len(b) - 1)]


@torch.no_grad()
def magnitude_scores(model: SlimCLIP, tower: str) -> dict[str, list]:
    """Per block: L1 norm of each head's and each FFN neuron's weights, and of the whole block."""
    t = model.tower(tower)
    hd = t.cfg.head_dim
    out: dict[str, list] = {"head": [], "neuron": [], "layer": []}
    for blk in t.blocks:
        if blk.attn is not None:
            H = blk.attn.heads
            # qkv rows are [q | k | v], each head-major: row (s*H + h)*hd + i
            qkv = blk.attn.qkv.weight.abs().view(3, H, hd, -1).sum(dim=(0, 2, 3))
            out_cols = blk.attn.out_proj.weight.abs().view(-1, H, hd).sum(dim=(0, 2))
            out["head"].append((qkv + out_cols).double().tolist())
        else:
            out["head"].append([])
        if blk.mlp is not None:
            n = blk.mlp.c_fc.weight.abs().sum(1) + blk.mlp.c_proj.weight.abs().sum(0)
            out["neuron"].append(n.double().tolist())
        else:
            out["neuron"].append([])
        out["layer"].append(float(sum(p.abs().sum().double() for p in blk.parameters())))
    return out


def magnitude_table(model: SlimCLIP, towers: tuple[str, ...] | list[str] = TOWERS, n_groups: int = 32) -> ScoreTable:
    """Magnitude (MagnCLIP) table; weights only, no data."""
    t0 = time.perf_counter()
    res = {}
    for name in towers:
        s = magnitude_scores(model, name)
        orders, groups = zip(*[_grouped(n, n_groups) for n in s["neuron"]]) if s["neuron"] else ((), ())
        res[name] = TowerScores(head=s["head"], neuron=list(groups), layer=s["layer"], neuron_order=list(orders))
    return ScoreTable(method="magnitude", model_hash=model_hash(model), towers=res, n_groups=n_groups,
                      meta={"seconds": round(time.perf_counter() - t0, 3)})


def gradient_table(model: SlimCLIP, images: Tensor, tokens: Tensor, txt2img: Tensor,
                   towers: tuple[str, ...] | list[str] = TOWERS, n_groups: int = 32, batch_size: int = 64,
                   dataset: str | None = None) -> ScoreTable:
    """Loss-gradient (DynaBERT / DynaCLIP) table from the contrastive loss on image-caption pairs."""
    t0 = time.perf_counter()
    g = gradient_importance(model, images, tokens, torch.as_tensor(txt2img).long(), tuple(towers), batch_size)
    res = {}
    for name in towers:
        orders, groups = zip(*[_grouped(n, n_groups) for n in g[name]["neuron"]])
        res[name] = TowerScores(head=g[name]["head"], neuron=list(groups), layer=g[name]["layer"],
                                neuron_order=list(orders))
    return ScoreTable(method="gradient", model_hash=model_hash(model), towers=res, n_groups=n_groups,
                      dataset=dataset, meta={"seconds": round(time.perf_counter() - t0, 3),
                                             "n_images": int(images.shape[0])})
