"""Physical pruning: slice a SlimCLIP's weights to a plan's kept heads, neurons and blocks.

Per kept block: ``qkv`` keeps the rows of each kept head in each of q, k and v; ``out_proj`` the matching
columns; ``c_fc`` the kept neurons' rows (and bias), ``c_proj`` their columns. A block left with 0 heads
(0 neurons) keeps only the output-projection bias, which is what the masked teacher computes. Everything
outside the blocks is copied. The result is a smaller model whose embeddings equal the masked teacher's
(:func:`plan_masks`).
"""

from __future__ import annotations

import torch

from ..models.slim_clip import Masks, SlimCLIP
from ..vocab import TOWERS
from .plan import PruningPlan


def _qkv_rows(kept_heads: list[int], n_heads: int, head_dim: int) -> torch.Tensor:
    rows = [(s * n_heads + h) * head_dim + i for s in range(3) for h in kept_heads for i in range(head_dim)]
    return torch.tensor(rows, dtype=torch.long)


def _cols(kept_heads: list[int], head_dim: int) -> torch.Tensor:
    return torch.tensor([h * head_dim + i for h in kept_heads for i in range(head_dim)], dtype=torch.long)


@torch.no_grad()
def apply_plan(model: SlimCLIP, plan: PruningPlan) -> SlimCLIP:
    """A new, physically smaller SlimCLIP holding ``model``'s weights sliced to ``plan`` (``model`` is untouched).

    Refuses a plan made for a different architecture. Works on the meta device too (shapes only).
    """
    config = plan.apply_config(model.config)  # validates the plan against the model
    device = next(model.parameters()).device
    with torch.device(device):
        new = SlimCLIP(config, init=False)
    new = new.to(dtype=next(model.parameters()).dtype)
    src_state = model.state_dict()
    state = {}
    for name, t in new.state_dict().items():
        if ".blocks." not in name:
            state[name] = src_state[name]
    for tower in TOWERS:
        tp = plan.tower(tower)
        prefix = "visual" if tower == "vision" else "text"
        src_blocks, dst_blocks = model.tower(tower).blocks, new.tower(tower).blocks
        hd = model.config.tower(tower).head_dim
        for j, (b, heads, neurons) in enumerate(zip(tp.blocks, tp.heads, tp.neurons)):
            s, d = src_blocks[b], dst_blocks[j]
            p = f"{prefix}.blocks.{j}."
            for ln in ("ln_1", "ln_2"):
                state[p + ln + ".weight"] = getattr(s, ln).weight
                state[p + ln + ".bias"] = getattr(s, ln).bias
            out_bias = s.attn.out_proj.bias if s.attn is not None else s.attn_bias
            if d.attn is None:
                state[p + "attn_bias"] = out_bias
            else:
                rows = _qkv_rows(heads, s.attn.heads, hd).to(device)
                cols = _cols(heads, hd).to(device)
                state[p + "attn.qkv.weight"] = s.attn.qkv.weight.index_select(0, rows)
                state[p + "attn.qkv.bias"] = s.attn.qkv.bias.index_select(0, rows)
                state[p + "attn.out_proj.weight"] = s.attn.out_proj.weight.index_select(1, cols)
                state[p + "attn.out_proj.bias"] = out_bias
            mlp_bias = s.mlp.c_proj.bias if s.mlp is not None else s.mlp_bias
            if d.mlp is None:
                state[p + "mlp_bias"] = mlp_bias
            else:
                idx = torch.tensor(neurons, dtype=torch.long, device=device)
                state[p + "mlp.c_fc.weight"] = s.mlp.c_fc.weight.index_select(0, idx)
                state[p + "mlp.c_fc.bias"] = s.mlp.c_fc.bias.index_select(0, idx)
                state[p + "mlp.c_proj.weight"] = s.mlp.c_proj.weight.index_select(1, idx)
                state[p + "mlp.c_proj.bias"] = mlp_bias
    missing = set(new.state_dict()) - set(state)
    if missing:  # would mean a SlimCLIP parameter this function does not know how to slice
        raise RuntimeError(f"apply_plan left parameters unset: {sorted(missing)[:5]}")
    if device.type == "meta":
        new.load_state_dict({k: v.clone() for k, v in state.items()}, strict=True, assign=True)
    else:
        new.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=True)
    return new.train(model.training)


def plan_masks(model: SlimCLIP, plan: PruningPlan) -> dict[str, Masks]:
    """Masks that make the (unpruned) ``model`` compute what ``apply_plan(model, plan)`` computes."""
    plan.validate(model.config)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    out = {}
    for tower in TOWERS:
        tp, cfg = plan.tower(tower), model.config.tower(tower)
        m = Masks()
        kept = dict(zip(tp.blocks, zip(tp.heads, tp.neurons)))
        for b, bc in enumerate(cfg.blocks):
            if b not in kept:
                m.gate[b] = torch.zeros((), device=device, dtype=dtype)
                continue
            heads, neurons = kept[b]
            if bc.heads:
                hm = torch.zeros(bc.heads, device=device, dtype=dtype)
                hm[heads] = 1
                m.head[b] = hm
            if bc.mlp:
                nm = torch.zeros(bc.mlp, device=device, dtype=dtype)
                nm[neurons] = 1
                m.mlp[b] = nm
        out[tower] = m
    return out
