"""Loss-gradient importance (DynaBERT, the paper's DynaCLIP) and FFN rewiring.

First-order Taylor estimates of how much the contrastive loss changes when a module is removed:
- neuron ``j``: ``|sum over data of (w_in_j . dL/dw_in_j + b_j dL/db_j + w_out_j . dL/dw_out_j)|``
  (DynaBERT's rewiring score, on the symmetric image-text InfoNCE loss);
- head ``h``: ``|sum over data of dL/dm_h|`` at head mask ``m = 1`` (DynaBERT's head importance);
- block ``l``: ``|sum over data of dL/dg_l|`` at residual gate ``g = 1``.

Rewiring sorts each block's FFN neurons by their score and permutes ``c_fc`` rows / ``c_proj`` columns into
that order: the function is unchanged (a permutation of hidden units), and the sorted order cut into ``N``
contiguous slices gives the neuron groups that MoPE probes.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.objectives import info_nce
from ..models.slim_clip import Masks, SlimCLIP
from ..vocab import TOWERS


def training_pairs(txt2img: Tensor) -> tuple[Tensor, Tensor]:
    """One (image, caption) pair per image: its first caption, so a batch has no duplicate positives."""
    t2i = torch.as_tensor(txt2img).long()
    n = int(t2i.max()) + 1
    first = torch.full((n,), -1, dtype=torch.long)
    # iterate backwards so the lowest caption index of each image wins
    idx = torch.arange(len(t2i) - 1, -1, -1)
    first[t2i[idx]] = idx
    keep = first >= 0
    return torch.arange(n)[keep], first[keep]


def gradient_importance(model: SlimCLIP, images: Tensor, tokens: Tensor, txt2img: Tensor,
                        towers: tuple[str, ...] = TOWERS, batch_size: int = 64) -> dict[str, dict[str, list]]:
    """Per tower: ``{"head": [[...]], "neuron": [[per neuron]], "layer": [...]}`` Taylor scores (see module doc).

    Gradients are accumulated over the whole dataset in batches of ``batch_size`` image-caption pairs; the
    model's weights and ``requires_grad`` flags are left as they were.
    """
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    img_idx, cap_idx = training_pairs(txt2img)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    probes: dict[str, tuple[dict, dict]] = {}
    for name in towers:
        tower = model.tower(name)
        heads = {l: torch.ones(b.attn.heads, device=device, dtype=dtype, requires_grad=True)
                 for l, b in enumerate(tower.blocks) if b.attn is not None}
        gates = {l: torch.ones((), device=device, dtype=dtype, requires_grad=True) for l in range(len(tower.blocks))}
        probes[name] = (heads, gates)
    was_training = model.training
    model.eval()
    try:
        model.zero_grad(set_to_none=True)
        for p in model.parameters():
            p.requires_grad_(False)
        for name in towers:
            for blk in model.tower(name).blocks:
                if blk.mlp is not None:
                    for p in (blk.mlp.c_fc.weight, blk.mlp.c_fc.bias, blk.mlp.c_proj.weight):
                        p.requires_grad_(True)
        with torch.enable_grad():
            for s in range(0, len(img_idx), batch_size):
                im = images[img_idx[s:s + batch_size]].to(device, dtype)
                tk = tokens[cap_idx[s:s + batch_size]].to(device)
                masks = {n: Masks(head=probes[n][0], gate=probes[n][1]) for n in towers}
                img = F.normalize(model.visual(im, masks=masks.get("vision")), dim=-1)
                txt = F.normalize(model.text(tk, masks=masks.get("text")), dim=-1)
                info_nce(img, txt, model.logit_scale.exp().detach()).backward()
        out: dict[str, dict[str, list]] = {}
        for name in towers:
            tower = model.tower(name)
            heads, gates = probes[name]
            res: dict[str, list] = {"head": [], "neuron": [], "layer": []}
            for l, blk in enumerate(tower.blocks):
                res["head"].append(heads[l].grad.abs().tolist() if l in heads else [])
                res["layer"].append(float(gates[l].grad.abs()) if gates[l].grad is not None else 0.0)
                if blk.mlp is None:
                    res["neuron"].append([])
                    continue
                fc, proj = blk.mlp.c_fc, blk.mlp.c_proj
                taylor = ((fc.weight * fc.weight.grad).sum(1) + fc.bias * fc.bias.grad
                          + (proj.weight * proj.weight.grad).sum(0))
                res["neuron"].append(taylor.abs().float().tolist())
            out[name] = res
        return out
    finally:
        model.zero_grad(set_to_none=True)
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
        model.train(was_training)


def importance_order(scores: list[float]) -> list[int]:
    """Indices sorted by score, highest first; ties keep the lower index first (deterministic)."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


@torch.no_grad()
def permute_ffn_(block, order: list[int] | Tensor) -> None:
    """Reorder one block's FFN hidden units in place (``c_fc`` rows and bias, ``c_proj`` columns).

    A permutation of hidden units leaves the block's function unchanged; afterwards hidden unit ``i`` is
    the former unit ``order[i]``.
    """
    if block.mlp is None:
        raise ValueError("this block has no FFN to rewire")
    idx = torch.as_tensor(order, dtype=torch.long, device=block.mlp.c_fc.weight.device)
    n = block.mlp.c_fc.out_features
    if idx.shape != (n,) or not torch.equal(idx.sort().values, torch.arange(n, device=idx.device)):
        raise ValueError(f"order must be a permutation of 0..{n - 1} (the block's FFN neurons)")
    fc, proj = block.mlp.c_fc, block.mlp.c_proj
    fc.weight.copy_(fc.weight[idx])
    fc.bias.copy_(fc.bias[idx])
    proj.weight.copy_(proj.weight[:, idx])


def rewire_ffn(model: SlimCLIP, orders: dict[str, list[list[int]]]) -> SlimCLIP:
    """A copy of ``model`` whose FFN neurons are permuted into ``orders[tower][block]`` (function-preserving)."""
    out = copy.deepcopy(model)
    for name, per_block in orders.items():
        for blk, order in zip(out.tower(name).blocks, per_block):
            if blk.mlp is not None:
                permute_ffn_(blk, order)
    return out
