"""Each local method against a naive reference, and every request error raised before any work."""

import copy

import pytest
import torch

from mope_deploy.models import BlockConfig, SlimCLIP, save_model
from mope_deploy.models.tiny import tiny_config
from mope_deploy.sparsity import (Calibration, Pattern, SparsifySpec, SparsityError, block_linears, is_nm, prunable,
                                  sparsegpt_prune, sparsify, sparsity_report)


def naive_wanda(model, calib, sparsity, towers=("vision", "text")):
    """Reference: for each block in order, run the *whole* tower (earlier blocks already pruned) on all samples,
    capture the block's linear inputs at valid tokens, and prune each row's lowest |W| * ||X_j||."""
    for t in towers:
        tower = model.tower(t)
        inputs = calib.images if t == "vision" else calib.tokens
        eot = calib.tokens.argmax(dim=-1)  # CLIP pools at the EOT token (highest id); later positions are padding
        valid = torch.arange(calib.tokens.shape[1]).view(1, -1) <= eot.view(-1, 1) if t == "text" else None
        for blk in tower.blocks:
            lins = block_linears(blk)
            got = {}
            hs = [lin.register_forward_hook(lambda m, a, o, n=n: got.__setitem__(n, a[0].detach().clone()))
                  for n, lin in lins.items()]
            with torch.no_grad():
                tower(inputs)
            for h in hs:
                h.remove()
            for n, lin in lins.items():
                x = got[n][valid] if valid is not None else got[n].reshape(-1, got[n].shape[-1])
                norm = x.double().pow(2).sum(0).sqrt()
                score = lin.weight.detach().abs().double() * norm.view(1, -1)
                k = round(sparsity * score.shape[1])
                with torch.no_grad():
                    for r in range(score.shape[0]):
                        lin.weight[r, torch.argsort(score[r], stable=True)[:k]] = 0
    return model


def test_wanda_matches_naive_sequential_reference(tiny_model, calib):
    a, b = copy.deepcopy(tiny_model), copy.deepcopy(tiny_model)
    sparsify(a, SparsifySpec(method="wanda", sparsity=0.5, batch_size=5), calib, progress=False)
    naive_wanda(b, calib, 0.5)
    for (_, _, _, la), (_, _, _, lb) in zip(prunable(a), prunable(b)):
        assert torch.equal(la.weight != 0, lb.weight != 0)
        assert torch.equal(la.weight, lb.weight)


def test_wanda_differs_from_magnitude_and_uses_activations(tiny_model, calib):
    w, m = copy.deepcopy(tiny_model), copy.deepcopy(tiny_model)
    sparsify(w, SparsifySpec(method="wanda", sparsity=0.5), calib, progress=False)
    sparsify(m, SparsifySpec(method="magnitude", sparsity=0.5), progress=False)
    diff = sum(int(((a.weight != 0) != (b.weight != 0)).sum()) for (*_, a), (*_, b) in zip(prunable(w), prunable(m)))
    assert diff > 0


def test_magnitude_layer_and_global(tiny_model):
    lay, glo = copy.deepcopy(tiny_model), copy.deepcopy(tiny_model)
    sparsify(lay, SparsifySpec(method="magnitude", sparsity=0.6), progress=False)
    for *_, lin in prunable(lay):
        assert abs(float((lin.weight == 0).float().mean()) - 0.6) < 1e-3 + 1 / lin.weight.numel()
    sparsify(glo, SparsifySpec(method="global-magnitude", sparsity=0.6), progress=False)
    orig = {id(l): None for *_, l in prunable(tiny_model)}
    allw = torch.cat([l.weight.detach().abs().flatten() for *_, l in prunable(tiny_model)])
    thr = torch.sort(allw).values[round(0.6 * allw.numel()) - 1]
    for (*_, l0), (*_, lg) in zip(prunable(tiny_model), prunable(glo)):
        assert torch.equal(lg.weight != 0, l0.weight.abs() > thr)
    assert len(orig) > 0
    per_layer = [float((l.weight == 0).float().mean()) for *_, l in prunable(glo)]
    assert max(per_layer) - min(per_layer) > 0.05  # a global threshold gives layers different sparsity


def naive_obs(W0, H, keep):
    """Reference for SparseGPT's update: columns frozen left to right; when column i is frozen, all later columns
    take the exact minimiser of (w - w0)^T H (w - w0) given the frozen prefix (a direct linear solve)."""
    rows, cols = W0.shape
    out = torch.zeros_like(W0)
    for r in range(rows):
        w0 = W0[r]
        frozen = torch.zeros(0, dtype=W0.dtype)
        for i in range(cols):
            P, F = slice(0, i), slice(i, cols)
            rhs = H[F, P] @ (frozen - w0[P]) if i else torch.zeros(cols - i, dtype=W0.dtype)
            wF = w0[F] - torch.linalg.solve(H[F, F], rhs)
            v = wF[0] if keep[r, i] else torch.zeros((), dtype=W0.dtype)
            frozen = torch.cat([frozen, v.view(1)])
        out[r] = frozen
    return out


@pytest.mark.parametrize("pattern,blocksize", [(Pattern(), 4), (Pattern(2, 4), 8), (Pattern(), 128)])
def test_sparsegpt_update_equals_direct_least_squares(pattern, blocksize):
    torch.manual_seed(0)
    X = torch.randn(200, 12, dtype=torch.float64) @ torch.randn(12, 12, dtype=torch.float64)  # correlated inputs
    W0 = torch.randn(5, 12, dtype=torch.float64)
    H = X.t() @ X / X.shape[0]
    damp = 0.01
    W, keep = sparsegpt_prune(W0, H, 0.5, pattern, blocksize=blocksize, damp=damp)
    Hd = H + damp * torch.diag(H).mean() * torch.eye(12, dtype=torch.float64)
    ref = naive_obs(W0, Hd, keep)
    assert torch.allclose(W, ref, atol=1e-9), (W - ref).abs().max()
    assert torch.equal(W != 0, keep)
    if pattern.structured:
        assert is_nm(W, 2, 4)
    else:
        assert int((~keep).sum()) == 30
    # the update beats plain masking on the layer's output error
    err = lambda V: float(((V - W0) @ H @ (V - W0).t()).trace())  # noqa: E731
    assert err(W) < err(W0 * keep)


def test_sparsegpt_fixed_mask_all_kept_is_identity():
    torch.manual_seed(0)
    W0 = torch.randn(4, 8, dtype=torch.float64)
    X = torch.randn(50, 8, dtype=torch.float64)
    W, keep = sparsegpt_prune(W0, X.t() @ X, 0.0, Pattern(), mask=torch.ones(4, 8, dtype=torch.bool))
    assert torch.allclose(W, W0) and keep.all()


def test_sparsegpt_model_reduces_output_error_vs_wanda(tiny_model, calib):
    g, w = copy.deepcopy(tiny_model), copy.deepcopy(tiny_model)
    sparsify(g, SparsifySpec(method="sparsegpt", pattern="2:4"), calib, progress=False)
    sparsify(w, SparsifySpec(method="wanda", pattern="2:4"), calib, progress=False)
    assert sparsity_report(g)["pattern"] == "2:4" and abs(sparsity_report(g)["sparsity"] - 0.5) < 1e-9
    with torch.no_grad():
        ref = tiny_model.encode_image(calib.images)
        eg = (g.encode_image(calib.images) - ref).pow(2).mean()
        ew = (w.encode_image(calib.images) - ref).pow(2).mean()
    assert eg < ew


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "ecoflap"])
def test_uneven_student_both_towers(student_model, calib, method):
    m = copy.deepcopy(student_model)
    rep = sparsify(m, SparsifySpec(method=method, sparsity=0.5, batch_size=8), calib, progress=False)
    assert rep["towers"]["text"]["blocks"][1] is None          # no heads, no FFN: nothing to prune
    assert rep["towers"]["vision"]["blocks"][2] is not None     # FFN only
    assert abs(rep["sparsity"] - 0.5) < 0.02
    assert m.config.sparsity["method"] == method and m.config.sparsity["pattern"] == "unstructured"
    with torch.no_grad():
        assert torch.isfinite(m.encode_image(calib.images)).all() and torch.isfinite(m.encode_text(calib.tokens)).all()


def test_sparse_model_directory_roundtrip(tiny_model, calib, tmp_path):
    from mope_deploy.models import load_model

    h = tiny_model.config.arch_hash()
    sparsify(tiny_model, SparsifySpec(method="wanda", pattern="2:4"), calib, progress=False)
    assert tiny_model.config.arch_hash() == h  # sparsity is not architecture
    back = load_model(save_model(tiny_model, tmp_path / "sparse"))
    assert back.config.sparsity["pattern"] == "2:4"
    assert sparsity_report(back)["pattern"] == "2:4"
    for (*_, a), (*_, b) in zip(prunable(tiny_model), prunable(back)):
        assert torch.equal(a.weight, b.weight)


# ------------------------------------------------------------------------------------------ request errors
def _fails(model, calib, match, **kw):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(SparsityError, match=match):
        sparsify(model, SparsifySpec(**kw), calib, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no work was done


def test_errors_before_work(tiny_model, calib):
    _fails(tiny_model, calib, r"\[0, 1\)", method="wanda", sparsity=1.0)
    _fails(tiny_model, calib, r"\[0, 1\)", method="wanda", sparsity=-0.1)
    _fails(tiny_model, calib, "give --sparsity", method="wanda")
    _fails(tiny_model, calib, "cannot make 2:4", method="global-magnitude", pattern="2:4")
    _fails(tiny_model, calib, "fixes every layer", method="wanda", pattern="2:4", sparsity=0.3)
    _fails(tiny_model, calib, "unknown method", method="obs")
    _fails(tiny_model, calib, "max-block-sparsity", method="ecoflap", sparsity=0.5, max_block_sparsity=0.4)
    _fails(tiny_model, calib, "only applies", method="wanda", sparsity=0.5, max_block_sparsity=0.6)
    _fails(tiny_model, calib, "cannot be reached", method="ecoflap", pattern="2:4", sparsity=0.6)
    _fails(tiny_model, None, "needs calibration data", method="sparsegpt", sparsity=0.5)
    _fails(tiny_model, Calibration(calib.images[:0], calib.tokens[:0]), "missing or empty", method="wanda",
           sparsity=0.5)
    _fails(tiny_model, Calibration(calib.images[:1], calib.tokens[:1]), "at least 2", method="wanda", sparsity=0.5)


def test_nm_width_error_names_the_layer(calib):
    cfg = tiny_config()
    cfg.vision.blocks = [BlockConfig(4, 250, 0), BlockConfig(4, 256, 1)]
    m = SlimCLIP(cfg.validate())
    _fails(m, calib, "vision block 0 mlp.c_proj has 250 inputs", method="wanda", pattern="2:4")


def test_calibration_from_dataset_errors(tiny_model):
    from PIL import Image

    from mope_deploy.data.datasets import RetrievalDataset
    from mope_deploy.sparsity import calibration_from_dataset

    ims = [Image.new("RGB", (40, 40), (i * 20, 0, 0)) for i in range(5)]
    ds = RetrievalDataset(name="five", images=ims, captions=[f"a photo {i}" for i in range(5)], txt2img=list(range(5)))
    with pytest.raises(SparsityError, match="has 5 image-caption pairs but 8"):
        calibration_from_dataset(tiny_model, ds, n_samples=8)
    c = calibration_from_dataset(tiny_model, ds, n_samples=4)
    assert len(c) == 4 and c.images.shape[1:] == (3, 32, 32) and c.tokens.shape == (4, 16)
