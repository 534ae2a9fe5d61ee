"""ECoFLaP: allocation budget and caps, the zeroth-order score against a naive full-forward reference, rank
sharding, and the n:m block choice."""

import copy
import math

import pytest
import torch

from mope_deploy.distill.losses import info_nce
from mope_deploy.sparsity import (Pattern, SparsifySpec, SparsityError, allocate_keep, allocate_nm, block_linears,
                                  first_order_scores, sparsify, zeroth_order_scores)
from mope_deploy.sparsity import ecoflap as E


def test_allocation_budget_floor_and_cap_exact():
    numels = [1000, 1000, 500, 3000, 7]
    scores = [10.0, 1.0, 50.0, 3.0, 0.5]
    for s, mx in [(0.5, 0.6), (0.4, 0.5), (0.3, 0.9), (0.5, 0.5), (0.0, 0.2)]:
        keep = allocate_keep(numels, scores, s, mx)
        assert sum(keep) == sum(numels) - round(s * sum(numels))  # the global budget, exactly
        for k, n in zip(keep, numels):
            assert k <= n                                        # capped at full size
            assert k >= math.ceil(n * (1 - mx)) - 1              # the floor (minus at most the rounding give-back)


def test_allocation_proportional_then_capped():
    # floor 400 each (max 0.6); budget 1000 -> 200 left, shared 1:3 -> 450 / 550 (no cap reached)
    assert allocate_keep([1000, 1000], [1.0, 3.0], 0.5, 0.6) == [450, 550]
    # huge score on a small block: it is capped at its size and the rest is re-shared by score
    keep = allocate_keep([100, 1000, 1000], [1000.0, 1.0, 1.0], 0.5, 0.9)
    assert keep[0] == 100 and sum(keep) == 1050 and keep[1] == keep[2] == 475
    with pytest.raises(SparsityError, match="below the target"):
        allocate_keep([10, 10], [1, 1], 0.5, 0.4)


def test_allocate_nm_least_important_first():
    p = Pattern(2, 4)
    chosen = allocate_nm([100, 100, 100, 100], [4.0, 1.0, 3.0, 2.0], 0.25, p)
    assert chosen == [False, True, False, True]  # 2 of 4 blocks at 50% = 25% overall, lowest scores
    assert all(allocate_nm([100, 100], [1.0, 2.0], 0.5, p))
    with pytest.raises(SparsityError, match="cannot be reached"):
        allocate_nm([100], [1.0], 0.6, p)


def _naive_zeroth(model, calib, batch_size, eps, seed):
    """Full forward of both towers for every perturbation, no caching."""
    out = {}
    for b, (img, tok) in enumerate(calib.batches(batch_size)):
        for t in ("vision", "text"):
            for l, blk in enumerate(model.tower(t).blocks):
                for j, (name, lin) in enumerate(block_linears(blk).items()):
                    z = E._z(lin.weight, seed, b, t, l, j)
                    w0 = lin.weight.detach().clone()
                    losses = []
                    with torch.no_grad():
                        for sign in (1, -1):
                            lin.weight.copy_(w0 + sign * eps * z)
                            i, x, sc = model(img, tok)[:3]
                            losses.append(float(info_nce(i, x, sc)))
                        lin.weight.copy_(w0)
                    out[(t, l, name)] = out.get((t, l, name), 0.0) + abs(losses[0] - losses[1]) / (2 * eps)
    return out


def test_zeroth_order_matches_naive_and_leaves_weights(tiny_model, calib):
    tiny_model.double()
    calib.images = calib.images.double()
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    fast = zeroth_order_scores(tiny_model, calib, batch_size=8, eps=1e-3, seed=3)
    assert all(torch.equal(before[k], v) for k, v in tiny_model.state_dict().items())
    slow = _naive_zeroth(tiny_model, calib, 8, 1e-3, 3)
    assert fast.keys() == slow.keys() and len(fast) == 16
    for k in fast:
        assert fast[k] == pytest.approx(slow[k], rel=1e-6, abs=1e-9)


def test_zeroth_order_sharded_over_ranks_equals_one_process(tiny_model, calib, monkeypatch):
    one = zeroth_order_scores(tiny_model, calib, batch_size=4, seed=1)
    parts = []
    for rank in (0, 1, 2):
        monkeypatch.setattr(E.D, "rank_world", lambda r=rank: (r, 3))
        monkeypatch.setattr(E.D, "gather_objects", lambda obj: [obj])
        parts.append(zeroth_order_scores(tiny_model, calib, batch_size=4, seed=1))
    monkeypatch.undo()
    total = {k: sum(p.get(k, 0.0) for p in parts) for k in one}
    assert all(total[k] == pytest.approx(one[k], rel=1e-6) for k in one)
    assert all(len(p) for p in parts)  # 4 batches over 3 ranks: everyone had work


def test_first_order_scores_accumulate_gradient_magnitude_per_batch(tiny_model, calib):
    """As the reference (GradMagAbs_sum): sum |W| * mean_b |G_b|, not |W * sum_b G_b| (batches could cancel)."""
    s = first_order_scores(tiny_model, calib, batch_size=8)
    lin = tiny_model.visual.blocks[1].mlp.c_fc
    lin.weight.requires_grad_(True)
    acc, summed = torch.zeros_like(lin.weight), torch.zeros_like(lin.weight)
    for img, tok in calib.batches(8):
        i, x, sc = tiny_model(img, tok)[:3]
        g = torch.autograd.grad(info_nce(i, x, sc), lin.weight)[0]
        acc += g.abs()
        summed += g
    w = lin.weight.detach().abs()
    assert s[("vision", 1, "mlp.c_fc")] == pytest.approx(float((w * acc).sum()) / 2, rel=1e-5)
    assert float((w * acc).sum()) > float((w * summed.abs()).sum()) * 1.01  # the two definitions do differ here
    lin.weight.requires_grad_(False)
    assert all(p.grad is None for p in tiny_model.parameters())


def _naive_zeroth_samples(model, calib, batch_size, eps, seed, samples):
    """Perturbation k on batch k mod B with noise z_k; full forwards."""
    batches = calib.batches(batch_size)
    out = {}
    for k in range(samples):
        img, tok = batches[k % len(batches)]
        for t in ("vision", "text"):
            for l, blk in enumerate(model.tower(t).blocks):
                for j, (name, lin) in enumerate(block_linears(blk).items()):
                    z = E._z(lin.weight, seed, k, t, l, j)
                    w0 = lin.weight.detach().clone()
                    losses = []
                    with torch.no_grad():
                        for sign in (1, -1):
                            lin.weight.copy_(w0 + sign * eps * z)
                            i, x, sc = model(img, tok)[:3]
                            losses.append(float(info_nce(i, x, sc)))
                        lin.weight.copy_(w0)
                    out[(t, l, name)] = out.get((t, l, name), 0.0) + abs(losses[0] - losses[1]) / (2 * eps)
    return out


def test_zo_samples_more_perturbations_than_batches_match_naive(tiny_model, calib):
    tiny_model.double()
    calib.images = calib.images.double()
    fast = zeroth_order_scores(tiny_model, calib, batch_size=8, seed=5, samples=5)  # 2 batches, 5 perturbations
    slow = _naive_zeroth_samples(tiny_model, calib, 8, 1e-3, 5, 5)
    assert fast.keys() == slow.keys()
    assert all(fast[k] == pytest.approx(slow[k], rel=1e-6, abs=1e-9) for k in fast)
    one = zeroth_order_scores(tiny_model, calib, batch_size=8, seed=5)            # default: one per batch
    assert all(one[k] == pytest.approx(_naive_zeroth(tiny_model, calib, 8, 1e-3, 5)[k], rel=1e-6, abs=1e-9)
               for k in list(one)[:3])


@pytest.mark.parametrize("scores", ["zeroth", "first"])
def test_ecoflap_unstructured_respects_allocation(tiny_model, calib, scores):
    m = copy.deepcopy(tiny_model)
    rep = sparsify(m, SparsifySpec(method="ecoflap", sparsity=0.5, max_block_sparsity=0.6, scores=scores,
                                   batch_size=8), calib, progress=False)
    blocks = [b for t in ("vision", "text") for b in rep["towers"][t]["blocks"]]
    assert max(blocks) <= 0.6 + 0.02 and abs(rep["sparsity"] - 0.5) < 0.02
    assert max(blocks) - min(blocks) > 0.01  # the scores made the blocks differ
    assert m.config.sparsity["max_block_sparsity"] == 0.6
    assert set(rep["block_scores"]) == {f"{t}.{i}" for t in ("vision", "text") for i in range(2)}
    rec = m.config.sparsity
    for t in ("vision", "text"):  # the allocated ratios are stored beside the measured ones, and they agree
        assert len(rec["allocated"][t]) == len(rec["blocks"][t]) == 2
        assert all(abs(a - b) < 0.01 for a, b in zip(rec["allocated"][t], rec["blocks"][t]))
    assert rec["local"] == "wanda" and rec["zo_samples" if scores == "zeroth" else "local"]


def test_ecoflap_nm_keeps_important_blocks_dense(tiny_model, calib):
    m = copy.deepcopy(tiny_model)
    rep = sparsify(m, SparsifySpec(method="ecoflap", pattern="2:4", sparsity=0.25, batch_size=8, nm_blocks="score"),
                   calib, progress=False)
    blocks = [b for t in ("vision", "text") for b in rep["towers"][t]["blocks"]]
    assert sorted(blocks) == [0.0, 0.0, 0.5, 0.5] and rep["pattern"] == "2:4"
    scores = rep["block_scores"]
    dense = [k for k, b in zip(["vision.0", "vision.1", "text.0", "text.1"], blocks) if b == 0]
    sparse = [k for k, b in zip(["vision.0", "vision.1", "text.0", "text.1"], blocks) if b > 0]
    assert min(scores[k] for k in dense) >= max(scores[k] for k in sparse)  # equal block sizes here
    assert m.config.sparsity["allocated"] == {t: rep["towers"][t]["blocks"] for t in ("vision", "text")}
    assert m.config.sparsity["nm_blocks"] == "score"
    u = copy.deepcopy(tiny_model)  # the default: uniform, no scores; one block of each tower (the first) is 2:4
    rep = sparsify(u, SparsifySpec(method="ecoflap", pattern="2:4", sparsity=0.25, batch_size=8), calib, progress=False)
    assert u.config.sparsity["nm_blocks"] == "uniform"
    assert [rep["towers"][t]["blocks"] for t in ("vision", "text")] == [[0.5, 0.0], [0.5, 0.0]]


def test_uniform_nm_spreads_blocks_over_depth_and_towers():
    p = Pattern(2, 4)
    keys = [("vision", i) for i in range(8)] + [("text", i) for i in range(4)]
    chosen = E.uniform_nm(keys, [100] * 12, 0.25, p)  # half of the blocks
    v = [i for (t, i), c in zip(keys, chosen) if c and t == "vision"]
    tx = [i for (t, i), c in zip(keys, chosen) if c and t == "text"]
    assert len(v) == 4 and len(tx) == 2                 # the same share of each tower
    assert v == [0, 3, 5, 7] and tx == [0, 3]           # spread out, not the first half
    assert all(E.uniform_nm(keys, [100] * 12, 0.5, p))


def test_ecoflap_local_sparsegpt_updates_kept_weights(tiny_model, calib):
    w, g = copy.deepcopy(tiny_model), copy.deepcopy(tiny_model)
    kw = dict(method="ecoflap", sparsity=0.5, max_block_sparsity=0.6, batch_size=8, zo_samples=2)
    sparsify(w, SparsifySpec(**kw), calib, progress=False)
    sparsify(g, SparsifySpec(local="sparsegpt", **kw), calib, progress=False)
    assert g.config.sparsity["local"] == "sparsegpt" and g.config.sparsity["allocated"] == w.config.sparsity["allocated"]
    lin0, lin = tiny_model.visual.blocks[0].mlp.c_fc.weight, g.visual.blocks[0].mlp.c_fc.weight
    kept = lin != 0
    assert not torch.equal(lin[kept], lin0[kept])       # SparseGPT moved the kept weights; Wanda never does
    with torch.no_grad():
        ref = tiny_model.encode_image(calib.images)
        eg = (g.encode_image(calib.images) - ref).pow(2).mean()
        ew = (w.encode_image(calib.images) - ref).pow(2).mean()
    assert eg < ew


@pytest.mark.parametrize("kw,msg", [
    (dict(method="wanda", sparsity=0.5, local="sparsegpt"), "--local only applies"),
    (dict(method="ecoflap", sparsity=0.5, local="obs"), "--local must be"),
    (dict(method="ecoflap", sparsity=0.5, zo_samples=0), "--zo-samples must be"),
    (dict(method="ecoflap", sparsity=0.5, scores="first", zo_samples=4), "only applies to --scores zeroth"),
    (dict(method="ecoflap", pattern="2:4", nm_blocks="random"), "--nm-blocks must be"),
    (dict(method="sparsegpt", sparsity=0.5, zo_samples=4), "--zo-samples only applies"),
])
def test_ecoflap_option_errors(kw, msg):
    with pytest.raises(SparsityError, match=msg):
        SparsifySpec(**kw).resolved()
