"""MoPE cost tables (paper Sec. 3.1, Alg. 1): ``MoPE(theta) = Z[f] - Z[f without theta]``.

A probe removes one head, one FFN neuron group or one whole block of one tower through the model's
reversible masks (:class:`~mope_deploy.models.slim_clip.Masks`); weights are never edited.

The cached evaluation is exact and much cheaper than the naive one (both are here; tests check they agree):
- the other tower's embeddings do not change while one tower is probed, so they are computed once;
- a probe in block ``l`` does not change blocks ``< l``: block inputs are cached and advanced one block at a
  time, so a probe only re-runs blocks ``l..L-1`` (one block input in memory at a time);
- ``K`` probes of the same block run as one batch: the cached inputs are repeated ``K`` times and a per-sample
  mask (leading probe dimension) removes a different module in each copy;
- causal text towers pool at the EOT token, which never attends to later positions: captions are sorted by
  length and each batch stops at its longest caption;
- probes are independent: under ``torchrun`` the chunks of probes are dealt out to ranks and gathered.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from ..eval.retrieval import retrieval_metrics
from ..models.slim_clip import Masks, SlimCLIP
from .. import distributed as D
from .gradient import gradient_importance, importance_order
from ..errors import MopeError
from ..vocab import METRICS, TOWERS
from .table import ScoreTable, TowerScores, group_bounds, model_hash


class ImportanceError(MopeError, ValueError):
    """Scoring settings that cannot work (unknown method or metric, missing data, bad counts)."""


Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Probe:
    """Remove module ``index`` of kind ``kind`` (``head`` | ``neuron`` group | ``layer``) in ``block`` of ``tower``."""

    tower: str
    kind: str
    block: int
    index: int


def build_probes(model: SlimCLIP, tower: str, groups: list[list[list[int]]]) -> list[Probe]:
    """Every head, neuron group and block of ``tower`` (``groups[l]`` = neuron index lists of block ``l``)."""
    probes = []
    for l, blk in enumerate(model.tower(tower).blocks):
        if blk.attn is not None:
            probes += [Probe(tower, "head", l, h) for h in range(blk.attn.heads)]
        if blk.mlp is not None:
            probes += [Probe(tower, "neuron", l, g) for g in range(len(groups[l]))]
        probes.append(Probe(tower, "layer", l, 0))
    return probes


def chunk_probes(probes: list[Probe], per_chunk: int) -> list[list[Probe]]:
    """Consecutive probes of the same tower and block, at most ``per_chunk`` per chunk (order preserved)."""
    chunks: list[list[Probe]] = []
    for p in probes:
        last = chunks[-1] if chunks else None
        if last and len(last) < per_chunk and (last[0].tower, last[0].block) == (p.tower, p.block):
            last.append(p)
        else:
            chunks.append([p])
    return chunks


def probe_masks(block, chunk: list[Probe], groups: list[list[int]], reps: int, device, dtype) -> Masks:
    """Masks for ``len(chunk)`` probes of one block, probe ``k`` applied to rows ``k*reps..(k+1)*reps-1``."""
    l = chunk[0].block
    K = len(chunk)
    m = Masks()
    kinds = {p.kind for p in chunk}
    if "head" in kinds:
        hm = torch.ones(K, block.attn.heads, device=device, dtype=dtype)
        for k, p in enumerate(chunk):
            if p.kind == "head":
                hm[k, p.index] = 0
        m.head[l] = hm.repeat_interleave(reps, dim=0)
    if "neuron" in kinds:
        nm = torch.ones(K, block.mlp.c_fc.out_features, device=device, dtype=dtype)
        for k, p in enumerate(chunk):
            if p.kind == "neuron":
                nm[k, groups[p.index]] = 0
        m.mlp[l] = nm.repeat_interleave(reps, dim=0)
    if "layer" in kinds:
        g = torch.tensor([0.0 if p.kind == "layer" else 1.0 for p in chunk], device=device, dtype=dtype)
        m.gate[l] = g.repeat_interleave(reps, dim=0)
    return m


def single_probe_masks(block, probe: Probe, groups: list[list[int]], device, dtype) -> Masks:
    """Masks removing exactly one module, without a probe dimension (the naive reference)."""
    m = Masks()
    if probe.kind == "head":
        hm = torch.ones(block.attn.heads, device=device, dtype=dtype)
        hm[probe.index] = 0
        m.head[probe.block] = hm
    elif probe.kind == "neuron":
        nm = torch.ones(block.mlp.c_fc.out_features, device=device, dtype=dtype)
        nm[groups[probe.index]] = 0
        m.mlp[probe.block] = nm
    else:
        m.gate[probe.block] = torch.zeros((), device=device, dtype=dtype)
    return m


@contextmanager
def count_block_forwards(model: SlimCLIP) -> Iterator[dict[str, int]]:
    """Count block forward passes, in samples (a block run on a batch of B sequences counts B)."""
    counts = {"vision": 0, "text": 0}
    handles = []
    for name in TOWERS:
        for blk in model.tower(name).blocks:
            def hook(_mod, args, _out, name=name):
                counts[name] += int(args[0].shape[0])
            handles.append(blk.register_forward_hook(hook))
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()


def _device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


@torch.inference_mode()
def _tower_emb(model: SlimCLIP, tower: str, inputs: Tensor, batch_size: int, masks: Masks | None = None) -> Tensor:
    device, dtype = _device_dtype(model)
    t = model.tower(tower)
    out = []
    for s in range(0, inputs.shape[0], batch_size):
        x = inputs[s:s + batch_size].to(device)
        x = x.to(dtype) if x.is_floating_point() else x
        out.append(F.normalize(t(x, masks=masks), dim=-1).float().cpu())
    return torch.cat(out)


def _metric(metric: str, tower: str, emb: Tensor, other: Tensor, txt2img: Tensor) -> float:
    img, txt = (emb, other) if tower == "vision" else (other, emb)
    return retrieval_metrics(img, txt, txt2img)[metric]


def _causal_lengths(tower, inputs: Tensor) -> Tensor | None:
    """Per caption, the prefix length that decides its embedding (causal text towers pooled at EOT/first):
    later positions cannot influence earlier ones, so they need not be computed. None when not applicable."""
    cfg = tower.cfg
    if getattr(cfg, "causal", False) and getattr(cfg, "pool", None) in ("argmax", "eos", "first"):
        return tower.pool_index(inputs).cpu() + 1
    return None


@torch.inference_mode()
def _run_chunks_cached(model: SlimCLIP, tower: str, inputs: Tensor, chunks: list[tuple[int, list[Probe]]],
                       groups: list[list[list[int]]], other: Tensor, txt2img: Tensor, metric: str,
                       batch_size: int, on_done: Callable[[int], None]) -> dict[Probe, float]:
    """Evaluate this rank's chunks of one tower, advancing the cached block inputs one block at a time.

    Causal text: captions are sorted by length and each batch runs only up to its longest caption's pooled
    token (exact: causal attention never looks ahead); embeddings are put back in the original order.
    """
    device, dtype = _device_dtype(model)
    t = model.tower(tower)
    n = inputs.shape[0]
    results: dict[Probe, float] = {}
    if not chunks:
        return results
    lengths = _causal_lengths(t, inputs)
    unsort = None
    if lengths is not None:
        order = torch.argsort(lengths, stable=True)
        inputs, lengths, unsort = inputs[order], lengths[order], torch.argsort(order)

    def span(s: int, e: int) -> slice:
        return slice(None) if lengths is None else slice(0, int(lengths[s:e].max()))

    last_block = max(c[0].block for _, c in chunks)
    by_block: dict[int, list[list[Probe]]] = {}
    for _, c in chunks:
        by_block.setdefault(c[0].block, []).append(c)
    # Block inputs of the unmasked model for every sample, kept at one block at a time.
    x = []
    for s in range(0, n, batch_size):
        xi = inputs[s:s + batch_size].to(device)
        x.append(t.embed(xi.to(dtype) if xi.is_floating_point() else xi))
    x = torch.cat(x)
    for l in range(last_block + 1):
        for chunk in by_block.get(l, []):
            K = len(chunk)
            b = max(1, batch_size // K)
            embs = []
            for s in range(0, n, b):
                xb = x[s:s + b, span(s, s + b)]
                reps = xb.shape[0]
                masks = probe_masks(t.blocks[l], chunk, groups[l], reps, device, dtype)
                y = t.run_blocks(xb.repeat(K, 1, 1), l, None, masks)
                inp = inputs[s:s + b].to(device).repeat(K, *([1] * (inputs.dim() - 1))) if tower == "text" else None
                embs.append(F.normalize(t.head(y, inp), dim=-1).float().cpu().view(K, reps, -1))
            emb = torch.cat(embs, dim=1)
            if unsort is not None:
                emb = emb[:, unsort]
            for k, p in enumerate(chunk):
                results[p] = _metric(metric, tower, emb[k], other, txt2img)
            on_done(K)
        if l < last_block:
            for s in range(0, n, batch_size):
                sp = span(s, s + batch_size)
                x[s:s + batch_size, sp] = t.run_blocks(x[s:s + batch_size, sp], l, l + 1)
    return results


def _run_chunks_naive(model: SlimCLIP, tower: str, inputs: dict[str, Tensor], chunks: list[tuple[int, list[Probe]]],
                      groups: list[list[list[int]]], txt2img: Tensor, metric: str, batch_size: int,
                      on_done: Callable[[int], None]) -> dict[Probe, float]:
    """Reference: every probe re-encodes both towers from scratch, one probe at a time."""
    device, dtype = _device_dtype(model)
    t = model.tower(tower)
    other_name = "text" if tower == "vision" else "vision"
    results: dict[Probe, float] = {}
    for _, chunk in chunks:
        for p in chunk:
            masks = single_probe_masks(t.blocks[p.block], p, groups[p.block], device, dtype)
            emb = _tower_emb(model, tower, inputs[tower], batch_size, masks)
            other = _tower_emb(model, other_name, inputs[other_name], batch_size)
            results[p] = _metric(metric, tower, emb, other, txt2img)
            on_done(1)
    return results


@dataclass(frozen=True)
class MoPESettings:
    """How :func:`mope_table` probes: ``towers``, ``metric`` (the recall figure a removal is judged by),
    ``n_groups`` (FFN neuron groups per block), ``batch_size`` (encoding), ``probe_batch`` (probes run together),
    ``cached`` (False = the naive reference: every probe re-encodes both towers), ``neuron_orders`` (given FFN
    orders instead of DynaBERT rewiring), ``dataset`` (recorded in the table)."""

    towers: tuple[str, ...] = TOWERS
    metric: str = "recall_mean"
    n_groups: int = 32
    batch_size: int = 64
    probe_batch: int = 16
    cached: bool = True
    neuron_orders: dict[str, list[list[int]]] | None = None
    dataset: str | None = None


def mope_table(model: SlimCLIP, images: Tensor, tokens: Tensor, txt2img: Tensor,
               settings: MoPESettings | None = None, progress: Progress | None = None, **overrides) -> ScoreTable:
    """MoPE cost tables ``C_head``, ``C_neuron``, ``C_layer`` for the settings' towers of ``model``.

    ``images`` [N,3,S,S] / ``tokens`` [M,ctx] / ``txt2img`` [M] are the preprocessed validation set (see
    :func:`mope_deploy.eval.retrieval.encode_inputs`); ``overrides`` replace single fields of ``settings``
    (:class:`MoPESettings`). Neuron groups: FFN neurons are ordered by loss-gradient importance (DynaBERT
    rewiring) unless ``neuron_orders`` is given, then cut into ``n_groups`` contiguous groups. Inside a
    ``torchrun`` process group the probes are sharded across ranks and every rank returns the full table.
    ``progress(done, total)`` is called as this rank's probes finish.
    """
    st = replace(settings or MoPESettings(), **overrides)
    towers = _check_args(model, st.towers, st.metric, st.n_groups, st.batch_size, st.probe_batch)
    txt2img = torch.as_tensor(txt2img).long()
    rank, world = D.rank_world()
    t0 = time.perf_counter()
    model.eval()
    neuron_orders = st.neuron_orders
    if neuron_orders is None:
        grads = None
        if rank == 0:  # one rank decides the groups, so every rank probes the same ones
            g = gradient_importance(model, images, tokens, txt2img, towers, st.batch_size)
            grads = {n: [importance_order(s) for s in g[n]["neuron"]] for n in towers}
        neuron_orders = D.broadcast_object(grads)
    groups = {n: [_groups(o, st.n_groups) for o in neuron_orders[n]] for n in towers}
    inputs = {"vision": images, "text": tokens}
    with count_block_forwards(model) as counts:
        full = {n: _tower_emb(model, n, inputs[n], st.batch_size) for n in TOWERS}
        full_metric = retrieval_metrics(full["vision"], full["text"], txt2img)[st.metric]
        all_chunks = [(n, c) for n in towers for c in chunk_probes(build_probes(model, n, groups[n]),
                                                                    st.probe_batch if st.cached else 1)]
        mine = [(i, n, c) for i, (n, c) in enumerate(all_chunks) if i % world == rank]
        total, done = sum(len(c) for _, _, c in mine), 0

        def on_done(k: int) -> None:
            nonlocal done
            done += k
            if progress is not None:
                progress(done, total)

        results: dict[Probe, float] = {}
        for n in towers:
            chunks = [(i, c) for i, name, c in mine if name == n]
            if st.cached:
                other = full["text" if n == "vision" else "vision"]
                results.update(_run_chunks_cached(model, n, inputs[n], chunks, groups[n], other, txt2img,
                                                  st.metric, st.batch_size, on_done))
            else:
                results.update(_run_chunks_naive(model, n, inputs, chunks, groups[n], txt2img, st.metric,
                                                 st.batch_size, on_done))
    local = {"results": [(p.tower, p.kind, p.block, p.index, v) for p, v in results.items()],
             "block_forwards": dict(counts)}
    table = _assemble(model, st, towers, D.gather_objects(local), groups, neuron_orders, full_metric)
    table.meta.update({"world_size": world, "n_images": int(images.shape[0]), "n_captions": int(tokens.shape[0]),
                       "seconds": round(time.perf_counter() - t0, 3)})
    return table


def _assemble(model: SlimCLIP, st: MoPESettings, towers: tuple[str, ...], gathered: list[dict], groups: dict,
              neuron_orders: dict, full_metric: float) -> ScoreTable:
    """The ScoreTable from every rank's probe results: cost = full metric - metric without the module."""
    merged = {(t, k, b, i): v for g in gathered for t, k, b, i, v in g["results"]}
    forwards = {n: sum(g["block_forwards"][n] for g in gathered) for n in TOWERS}
    table_towers = {}
    for n in towers:
        head, neuron, layer = [], [], []
        for l, blk in enumerate(model.tower(n).blocks):
            head.append([full_metric - merged[(n, "head", l, h)] for h in range(blk.attn.heads)]
                        if blk.attn is not None else [])
            neuron.append([full_metric - merged[(n, "neuron", l, g)] for g in range(len(groups[n][l]))]
                          if blk.mlp is not None else [])
            layer.append(full_metric - merged[(n, "layer", l, 0)])
        table_towers[n] = TowerScores(head=head, neuron=neuron, layer=layer, neuron_order=neuron_orders[n])
    return ScoreTable(method="mope", model_hash=model_hash(model), towers=table_towers, n_groups=st.n_groups,
                      metric=st.metric, dataset=st.dataset, full_metric=full_metric,
                      meta={"cached": st.cached, "probes": len(merged), "block_forwards": forwards})


def _groups(order: list[int], n_groups: int) -> list[list[int]]:
    b = group_bounds(len(order), n_groups)
    return [order[b[g]:b[g + 1]] for g in range(len(b) - 1)]


def _check_args(model, towers, metric, n_groups, batch_size, probe_batch) -> tuple[str, ...]:
    towers = tuple(towers)
    bad = [t for t in towers if t not in TOWERS]
    if bad or not towers:
        raise ImportanceError(f"towers must be a non-empty subset of {TOWERS}, got {list(towers)}")
    if metric not in METRICS:
        raise ImportanceError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    for name, v in (("n_groups", n_groups), ("batch_size", batch_size), ("probe_batch", probe_batch)):
        if not isinstance(v, int) or v < 1:
            raise ImportanceError(f"{name} must be a positive integer, got {v!r}")
    return towers
