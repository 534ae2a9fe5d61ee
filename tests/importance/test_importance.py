"""MoPE tables, the cached/batched/sharded evaluation, the baselines and FFN rewiring, on tiny models."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from mope_deploy.eval.retrieval import naive_retrieval_metrics
from mope_deploy.importance import (ScoreTable, ScoreTableError, group_bounds, model_hash, permute_ffn_, rewire_ffn,
                                    score)
from mope_deploy.importance.baselines import magnitude_scores
from mope_deploy.importance.gradient import gradient_importance, training_pairs
from mope_deploy.models.objectives import info_nce
from mope_deploy.importance.mope import Probe, build_probes, chunk_probes, probe_masks, single_probe_masks
from mope_deploy.models import Masks, SlimCLIP
from mope_deploy.models.tiny import tiny_config


def make_inputs(n_images: int = 10, caps_per_image: int = 2, seed: int = 0, ctx: int = 16):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n_images, 3, 32, 32, generator=g)
    tokens = torch.randint(1, 49000, (n_images * caps_per_image, ctx), generator=g)
    eot = torch.randint(3, ctx, (tokens.shape[0],), generator=g)
    tokens[torch.arange(tokens.shape[0]), eot] = 49407
    txt2img = torch.arange(n_images).repeat_interleave(caps_per_image)
    return images, tokens, txt2img


@pytest.fixture
def model3() -> SlimCLIP:
    torch.manual_seed(0)
    return SlimCLIP(tiny_config(depth=3)).eval()


def test_cached_equals_naive_and_saves_block_forwards(model3):
    images, tokens, t2i = make_inputs()
    cached = score(model3, images, tokens, t2i, n_groups=4, batch_size=8, probe_batch=5)
    naive = score(model3, images, tokens, t2i, n_groups=4, batch_size=8, cached=False)
    assert cached.towers == naive.towers
    assert cached.full_metric == naive.full_metric
    # the cache re-runs only blocks l.. and never re-encodes the other tower
    for tower in ("vision", "text"):
        assert cached.meta["block_forwards"][tower] < naive.meta["block_forwards"][tower] / 2
    n_probes = sum(len(h) + len(n) + 1 for t in cached.towers.values() for h, n in zip(t.head, t.neuron))
    assert cached.meta["probes"] == n_probes == 2 * 3 * (4 + 4 + 1)


def test_block_forward_counts_match_the_analytic_count(model3):
    images, tokens, t2i = make_inputs(n_images=6)
    t = score(model3, images, tokens, t2i, n_groups=2, batch_size=64, probe_batch=64, towers=("vision",))
    n, L, per_block = 6, 3, 4 + 2 + 1
    # full pass of both towers, cache advance (blocks 0..L-2), then each probe at block l runs L-l blocks
    expected_vision = n * L + n * (L - 1) + sum(per_block * n * (L - l) for l in range(L))
    assert t.meta["block_forwards"]["vision"] == expected_vision
    assert t.meta["block_forwards"]["text"] == 12 * L


def test_batched_probe_masks_equal_single_probes(model3):
    """The leading probe dimension removes a different module per copy, exactly as one probe at a time."""
    images, _, _ = make_inputs(n_images=3)
    tower = model3.visual
    groups = [[list(range(g * 64, (g + 1) * 64)) for g in range(4)] for _ in range(3)]
    chunk = [p for p in build_probes(model3, "vision", groups) if p.block == 1]
    masks = probe_masks(tower.blocks[1], chunk, groups[1], 3, "cpu", torch.float32)
    with torch.no_grad():
        batched = tower(images.repeat(len(chunk), 1, 1, 1), masks=masks).view(len(chunk), 3, -1)
        for k, p in enumerate(chunk):
            single = tower(images, masks=single_probe_masks(tower.blocks[1], p, groups[1], "cpu", torch.float32))
            torch.testing.assert_close(batched[k], single, atol=1e-5, rtol=0)


def test_mope_value_matches_reference_definition(model3):
    """MoPE = Z[f] - Z[f without theta], with Z from the naive (sorting) retrieval implementation."""
    images, tokens, t2i = make_inputs()
    orders = {n: [list(range(256))] * 3 for n in ("vision", "text")}  # identity order: groups are contiguous
    table = score(model3, images, tokens, t2i, n_groups=4, metric="tr_mean", neuron_orders=orders)

    def z(img_masks=None, txt_masks=None):
        with torch.no_grad():
            img = F.normalize(model3.visual(images, masks=img_masks), dim=-1)
            txt = F.normalize(model3.text(tokens, masks=txt_masks), dim=-1)
        return naive_retrieval_metrics(img, txt, t2i)["tr_mean"]

    full = z()
    assert table.full_metric == pytest.approx(full)
    head = torch.ones(4)
    head[2] = 0
    assert table.towers["vision"].head[1][2] == pytest.approx(full - z(img_masks=Masks(head={1: head})))
    mlp = torch.ones(256)
    mlp[128:192] = 0
    assert table.towers["text"].neuron[0][2] == pytest.approx(full - z(txt_masks=Masks(mlp={0: mlp})))
    assert table.towers["text"].layer[2] == pytest.approx(full - z(txt_masks=Masks(gate={2: torch.tensor(0.0)})))


def test_scoring_never_changes_the_model(model3):
    images, tokens, t2i = make_inputs(n_images=6)
    before = model_hash(model3)
    flags = [p.requires_grad for p in model3.parameters()]
    score(model3, images, tokens, t2i, n_groups=2)
    score(model3, images, tokens, t2i, method="gradient", n_groups=2)
    assert model_hash(model3) == before
    assert [p.requires_grad for p in model3.parameters()] == flags
    assert all(p.grad is None for p in model3.parameters())


def test_rewiring_preserves_outputs_and_groups_become_contiguous(model3):
    images, tokens, t2i = make_inputs(n_images=6)
    g = gradient_importance(model3, images, tokens, t2i)
    orders = {n: [sorted(range(256), key=lambda j: -s[j]) for s in g[n]["neuron"]] for n in ("vision", "text")}
    rewired = rewire_ffn(model3, orders)
    with torch.no_grad():
        torch.testing.assert_close(rewired.encode_image(images), model3.encode_image(images), atol=1e-5, rtol=0)
        torch.testing.assert_close(rewired.encode_text(tokens), model3.encode_text(tokens), atol=1e-5, rtol=0)
        # a contiguous group of the rewired FFN = the same neurons, by original index, in the teacher
        order = orders["vision"][1]
        contiguous = torch.ones(256)
        contiguous[64:128] = 0
        by_index = torch.ones(256)
        by_index[order[64:128]] = 0
        torch.testing.assert_close(rewired.visual(images, masks=Masks(mlp={1: contiguous})),
                                   model3.visual(images, masks=Masks(mlp={1: by_index})), atol=1e-5, rtol=0)
    # rewired neurons are in importance order
    g2 = gradient_importance(rewired, images, tokens, t2i)
    s = g2["vision"]["neuron"][1]
    assert all(a >= b - 1e-6 for a, b in zip(s, s[1:]))


def test_permute_rejects_non_permutations(model3):
    with pytest.raises(ValueError, match="permutation"):
        permute_ffn_(model3.visual.blocks[0], [0] * 256)


def _loss(model, images, tokens, t2i):
    ii, cc = training_pairs(t2i)
    img = F.normalize(model.visual(images[ii]), dim=-1)
    txt = F.normalize(model.text(tokens[cc]), dim=-1)
    return info_nce(img, txt, model.logit_scale.exp())


def test_gradient_importance_equals_finite_difference_reference():
    """Taylor score = |d/de L(neuron j's weights scaled by 1+e)| at e=0; checked by central differences (fp64)."""
    torch.manual_seed(1)
    model = SlimCLIP(tiny_config(depth=2, width=32, heads=2)).double().eval()
    images, tokens, t2i = make_inputs(n_images=6)
    images = images.double()
    g = gradient_importance(model, images, tokens, t2i, batch_size=64)
    eps = 1e-5
    blk = model.text.blocks[1]
    for j in (0, 7, 100):
        vals = []
        for sign in (1, -1):
            m = copy.deepcopy(model)
            b = m.text.blocks[1]
            with torch.no_grad():
                b.mlp.c_fc.weight[j] *= 1 + sign * eps
                b.mlp.c_fc.bias[j] *= 1 + sign * eps
                b.mlp.c_proj.weight[:, j] *= 1 + sign * eps
                vals.append(_loss(m, images, tokens, t2i).item())
        assert g["text"]["neuron"][1][j] == pytest.approx(abs(vals[0] - vals[1]) / (2 * eps), rel=1e-4, abs=1e-9)
    for h in range(2):
        vals = []
        for sign in (1, -1):
            hm = torch.ones(2, dtype=torch.float64)
            hm[h] += sign * eps
            with torch.no_grad():
                ii, cc = training_pairs(t2i)
                img = F.normalize(model.visual(images[ii], masks=Masks(head={0: hm})), dim=-1)
                txt = F.normalize(model.text(tokens[cc]), dim=-1)
                vals.append(info_nce(img, txt, model.logit_scale.exp()).item())
        assert g["vision"]["head"][0][h] == pytest.approx(abs(vals[0] - vals[1]) / (2 * eps), rel=1e-4, abs=1e-9)
    assert blk.mlp.c_fc.weight.grad is None


def test_magnitude_matches_explicit_slices(model3):
    s = magnitude_scores(model3, "vision")
    blk = model3.visual.blocks[2]
    W, O = blk.attn.qkv.weight, blk.attn.out_proj.weight
    for h in range(4):
        rows = [W[part * 64 + h * 16: part * 64 + (h + 1) * 16] for part in range(3)]
        ref = sum(r.abs().sum() for r in rows) + O[:, h * 16:(h + 1) * 16].abs().sum()
        assert s["head"][2][h] == pytest.approx(ref.item(), rel=1e-5)
    j = 17
    ref = blk.mlp.c_fc.weight[j].abs().sum() + blk.mlp.c_proj.weight[:, j].abs().sum()
    assert s["neuron"][2][j] == pytest.approx(ref.item(), rel=1e-5)
    table = score(model3, method="magnitude", n_groups=8)
    t = table.towers["vision"]
    assert t.neuron[2][0] == pytest.approx(sum(sorted(s["neuron"][2], reverse=True)[:32]), rel=1e-5)
    assert t.neuron[2] == sorted(t.neuron[2], reverse=True)


def test_score_table_json_round_trip_and_errors(model3, tmp_path):
    images, tokens, t2i = make_inputs(n_images=6)
    table = score(model3, images, tokens, t2i, n_groups=3, towers=("text",), metric="ir_mean", dataset="rand")
    path = table.save(tmp_path / "s.json")
    back = ScoreTable.load(path)
    assert back == table
    assert back.metric == "ir_mean" and back.dataset == "rand" and back.arch_hash == model3.config.arch_hash()
    assert [len(g) for g in back.towers["text"].groups(0)] == [85, 85, 86]
    with pytest.raises(ScoreTableError, match="no 'vision' tower"):
        back.tower("vision")
    d = json.loads(path.read_text())
    d["towers"]["text"]["neuron_order"][0][0] = 1
    with pytest.raises(ScoreTableError, match="not a permutation"):
        ScoreTable.from_dict(d)
    with pytest.raises(FileNotFoundError, match="mope importance"):
        ScoreTable.load(tmp_path / "missing.json")
    other = SlimCLIP(tiny_config(depth=2)).config
    with pytest.raises(ScoreTableError, match="arch hash"):
        back.check_model(other)


def test_bad_arguments_are_refused(model3):
    images, tokens, t2i = make_inputs(n_images=4)
    with pytest.raises(ValueError, match="unknown metric"):
        score(model3, images, tokens, t2i, metric="accuracy")
    with pytest.raises(ValueError, match="towers"):
        score(model3, images, tokens, t2i, towers=("audio",))
    with pytest.raises(ValueError, match="needs validation data"):
        score(model3, method="mope")
    with pytest.raises(ValueError, match="unknown importance method"):
        score(model3, images, tokens, t2i, method="random")


def test_group_bounds():
    assert group_bounds(10, 3) == [0, 3, 6, 10]
    assert group_bounds(4, 8) == [0, 1, 2, 3, 4]
    assert group_bounds(0, 4) == [0]


def test_chunks_stay_within_one_block():
    probes = [Probe("vision", "head", l, h) for l in range(2) for h in range(5)]
    chunks = chunk_probes(probes, 3)
    assert [len(c) for c in chunks] == [3, 2, 3, 2]
    assert all(len({p.block for p in c}) == 1 for c in chunks)
