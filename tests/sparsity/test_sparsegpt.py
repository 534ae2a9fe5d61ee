"""SparseGPT in float32 with blocked lazy updates against the previous float64 implementation (kept below as the
naive reference), n:m groups aligned to m for any m, and the Hessian on the weight's device."""

from __future__ import annotations

import copy

import pytest
import torch

from mope_deploy.sparsity import Pattern, SparsifySpec, is_nm, prunable, sparsegpt_prune, sparsify
from mope_deploy.sparsity.calibration import LayerStats
from mope_deploy.sparsity.sparsegpt import aligned_blocksize, reconstruction_error


def float64_sparsegpt(weight, H, sparsity, pattern, blocksize=128, damp=0.01):
    """The project's previous implementation (float64, per-column eager updates, stable full sorts), kept as the
    naive reference: same OBS math, no laziness, no topk."""
    W = weight.detach().to(torch.float64).clone()
    rows, cols = W.shape
    H = H.to(torch.float64).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=torch.float64)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    keep = torch.ones_like(W, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        d = torch.diag(Hinv1)
        if not pattern.structured:
            sal = W1 ** 2 / d.view(1, -1) ** 2
            k = int(round(sal.numel() * sparsity))
            blk = torch.ones(sal.numel(), dtype=torch.bool)
            blk[torch.sort(sal.flatten(), stable=True).indices[:k]] = False
            keep[:, i1:i2] = blk.view_as(sal)
        for j in range(i2 - i1):
            col = i1 + j
            if pattern.structured and col % pattern.m == 0:
                sal = W1[:, j:j + pattern.m] ** 2 / d[j:j + pattern.m].view(1, -1) ** 2
                drop = torch.sort(sal, dim=1, stable=True).indices[:, :pattern.m - pattern.n]
                keep[:, col:col + pattern.m] = True
                keep[:, col:col + pattern.m].scatter_(1, drop, False)
            w = W1[:, j]
            q = torch.where(keep[:, col], w, torch.zeros_like(w))
            err = (w - q) / d[j]
            W1[:, j:] -= err.unsqueeze(1) * Hinv1[j, j:].unsqueeze(0)
            W1[:, j] = q
            Err1[:, j] = err
        W[:, i1:i2] = W1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    W[~keep] = 0
    return W, keep


def _layer(rows=96, cols=384, n=1536, seed=0):
    """A float32 layer with correlated inputs and a few outlier channels (as in transformers)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, cols, generator=g) @ (torch.randn(cols, cols, generator=g) / cols ** 0.5 + torch.eye(cols))
    X[:, :3] *= 8
    W0 = torch.randn(rows, cols, generator=g) * 0.05
    stats = LayerStats(cols, hessian=True)
    for s in range(0, n, 256):
        stats.add(X[s:s + 256])
    return W0, stats.hessian, X


@pytest.mark.parametrize("pattern", [Pattern(), Pattern(2, 4), Pattern(4, 8)])
def test_float32_matches_float64_reference(pattern):
    W0, H, _ = _layer()
    W, keep = sparsegpt_prune(W0, H, 0.5, pattern)
    assert W.dtype == torch.float32
    Wr, keep_r = float64_sparsegpt(W0, H, 0.5, pattern)
    assert float((keep == keep_r).float().mean()) >= 0.999                    # the same masks
    Hd = H.double()
    err, err_r = reconstruction_error(W.double(), W0.double(), Hd), reconstruction_error(Wr, W0.double(), Hd)
    assert err == pytest.approx(err_r, rel=0.01)                              # the same reconstruction error
    assert err < 0.8 * reconstruction_error((W0 * keep).double(), W0.double(), Hd)  # the update matters
    assert torch.equal(W != 0, keep)
    if pattern.structured:
        assert is_nm(W, pattern.n, pattern.m)
    else:
        assert int((~keep).sum()) == W0.numel() // 2


def test_hessian_statistics_are_float32_and_match_float64():
    _, H, X = _layer(n=1024)
    ref = X.double().t() @ X.double() / X.shape[0]
    assert H.dtype == torch.float32
    assert torch.allclose(H.double(), ref, rtol=1e-4, atol=1e-4 * float(ref.diag().mean()))
    st = LayerStats(X.shape[1], hessian=False)
    st.add(X[:500])
    st.add(X[500:])
    assert st.sq.dtype == torch.float32
    assert torch.allclose(st.norms.double(), X.double().pow(2).sum(0).sqrt(), rtol=1e-5)


@pytest.mark.parametrize("pattern,blocksize", [(Pattern(2, 6), 128), (Pattern(3, 5), 16), (Pattern(2, 4), 3)])
def test_nm_groups_aligned_for_any_m(pattern, blocksize):
    cols = pattern.m * 50
    W0, H, _ = _layer(rows=16, cols=cols, n=4 * cols)
    W, keep = sparsegpt_prune(W0, H, pattern.sparsity, pattern, blocksize=blocksize)
    assert is_nm(W, pattern.n, pattern.m)                                      # was 65.6% zeros for 2:6 before
    assert float((W == 0).float().mean()) == pytest.approx(pattern.sparsity)
    assert aligned_blocksize(blocksize, pattern) % pattern.m == 0


def test_aligned_blocksize():
    assert aligned_blocksize(128, Pattern()) == 128 and aligned_blocksize(128, Pattern(2, 4)) == 128
    assert aligned_blocksize(128, Pattern(2, 6)) == 126 and aligned_blocksize(4, Pattern(4, 8)) == 8


def test_half_weight_is_processed_in_float32_and_keeps_its_dtype():
    W0, H, _ = _layer(rows=8, cols=64, n=256)
    W, keep = sparsegpt_prune(W0.to(torch.bfloat16), H, 0.5, Pattern(2, 4))
    assert W.dtype == torch.bfloat16 and is_nm(W, 2, 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_model_prunes_on_its_device(tiny_model, calib):
    """The Hessian is built and factorised on the model's device (was: always on the CPU -> device mismatch)."""
    cpu = copy.deepcopy(tiny_model)
    gpu = copy.deepcopy(tiny_model).cuda()
    sparsify(cpu, SparsifySpec(method="sparsegpt", pattern="2:4"), calib, progress=False)
    sparsify(gpu, SparsifySpec(method="sparsegpt", pattern="2:4"), calib, progress=False)
    agree = [float(((a.weight != 0) == (b.weight.cpu() != 0)).float().mean())
             for (*_, a), (*_, b) in zip(prunable(cpu), prunable(gpu))]
    assert all(b.weight.is_cuda and is_nm(b.weight, 2, 4) for *_, b in prunable(gpu))
    assert min(agree) > 0.99
