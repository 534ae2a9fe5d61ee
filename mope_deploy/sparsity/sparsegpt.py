"""SparseGPT (Frantar & Alistarh, 2023): prune a linear layer and update its remaining weights so the layer's
output on the calibration inputs changes as little as possible (Optimal Brain Surgeon, column by column).

With ``H = X^T X / N + lambda I`` (``lambda = damp * mean(diag)``), columns are processed left to right: when
column ``i`` is frozen (kept, or set to 0 where pruned), the error ``(w_i - q_i) / [H_F^-1]_ii`` is pushed onto
the not-yet-frozen columns ``F = {i+1, ...}`` through the row ``[H_F^-1]_{i,F}``. The inverses of all the
shrinking ``H_F`` come from one upper Cholesky factor of ``H^-1`` (its rows). As in the reference
(IST-DASLab/sparsegpt), updates are lazy: inside a block of ``blocksize`` columns they are rank-1 updates of
that block only, and the block's accumulated errors reach the columns to its right in one matrix product.

The mask is chosen on the fly per column block by the OBS saliency ``w^2 / [H^-1]_ii^2``: unstructured, the
lowest ``round(sparsity * block size)`` of the block (``topk``, no full sort); n:m, the lowest ``m - n`` of every
group of ``m`` consecutive columns, chosen when the group's first column is reached. The block width is rounded
down to a multiple of ``m`` (at least ``m``), so every n:m group lies inside one block and is counted from the
block start (e.g. 2:6 with 128-wide blocks uses 126-wide blocks; a group never straddles two blocks).

Precision: float32 for float32/half/bfloat16 weights (as the reference; the three Cholesky factorisations are
the cost on wide layers), float64 for float64 weights. Everything runs on the weight's device (CPU or CUDA).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .patterns import Pattern, SparsityError


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other weight dtype is processed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def aligned_blocksize(blocksize: int, pattern: Pattern) -> int:
    """The column-block width actually used: ``blocksize`` rounded down to a multiple of ``m`` (at least ``m``)
    for n:m, so that groups of ``m`` columns never straddle two blocks."""
    if blocksize < 1:
        raise SparsityError(f"SparseGPT blocksize must be >= 1, got {blocksize}")
    if not pattern.structured:
        return blocksize
    return max(pattern.m, blocksize // pattern.m * pattern.m)


def damped_hessian(H: Tensor, W: Tensor, damp: float) -> tuple[Tensor, Tensor]:
    """``H`` (a copy) with dead inputs (zero diagonal) made harmless and ``damp * mean(diag)`` added to the diagonal;
    ``W``'s dead columns are zeroed in place. Returns ``(H, dead)``."""
    H = H.clone()
    diag = torch.diagonal(H)
    dead = diag == 0
    diag[dead] = 1
    W[:, dead] = 0
    diag.add_(damp * torch.mean(diag))
    return H, dead


def inverse_factor(H: Tensor, W: Tensor, damp: float) -> Tensor:
    """Upper Cholesky factor of ``(H + lambda I)^-1`` (its rows are the OBS update rows); ``W`` as in
    :func:`damped_hessian`."""
    Hd, _ = damped_hessian(H, W, damp)
    try:
        L = torch.linalg.cholesky(Hd)
        return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    except RuntimeError as e:  # torch.linalg.LinAlgError subclasses RuntimeError
        raise SparsityError(f"SparseGPT: the calibration Hessian is not positive definite ({e}); "
                            "raise the damping (damp) or use more calibration samples") from None


def _block_mask(W1: Tensor, inv_d2: Tensor, sparsity: float) -> Tensor:
    """Unstructured: keep all but the ``round(sparsity * numel)`` lowest saliencies of the block."""
    keep = torch.ones_like(W1, dtype=torch.bool)
    k = int(round(W1.numel() * sparsity))
    if k:
        sal = (W1 * W1).mul_(inv_d2)
        keep.view(-1)[torch.topk(sal.view(-1), k, largest=False, sorted=False).indices] = False
    return keep


def _group_mask(Wg: Tensor, inv_d2: Tensor, n: int) -> Tensor:
    """n:m: keep all but the ``m - n`` lowest saliencies of each row of one group of ``m`` columns."""
    m = Wg.shape[1]
    drop = torch.topk((Wg * Wg).mul_(inv_d2), m - n, dim=1, largest=False, sorted=False).indices
    return torch.ones_like(Wg, dtype=torch.bool).scatter_(1, drop, False)


@torch.no_grad()
def sparsegpt_prune(weight: Tensor, H: Tensor, sparsity: float = 0.5, pattern: Pattern = Pattern(),
                    blocksize: int = 128, damp: float = 0.01, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Pruned and updated weight (same dtype and device as ``weight``) and its keep mask.

    ``H`` is the (undamped) ``X^T X / N`` of the layer's inputs, on any device (moved to the weight's). ``mask``
    (optional, True = keep) fixes the support instead of choosing it, which is how the update is checked
    against a direct solve."""
    dev, dt = weight.device, compute_dtype(weight.dtype)
    W = weight.detach().to(dt).clone()
    rows, cols = W.shape
    if pattern.structured and cols % pattern.m:
        raise SparsityError(f"{pattern} needs the input width to be a multiple of {pattern.m}, got {cols}")
    Hinv = inverse_factor(H.to(dev, dt), W, damp)
    keep = (torch.ones(rows, cols, dtype=torch.bool, device=dev) if mask is None
            else mask.to(dev, torch.bool).clone())
    choose_nm = mask is None and pattern.structured
    bs = aligned_blocksize(blocksize, pattern)
    for i1 in range(0, cols, bs):
        i2 = min(i1 + bs, cols)
        W1, H1, K1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2], keep[:, i1:i2]
        d = torch.diagonal(H1)
        inv_d2 = d.pow(-2).view(1, -1)
        if mask is None and not pattern.structured and sparsity > 0:
            K1.copy_(_block_mask(W1, inv_d2, sparsity))
        Err1 = torch.zeros_like(W1)
        for j in range(i2 - i1):
            if choose_nm and j % pattern.m == 0:  # i1 is a multiple of m: local groups are global groups
                K1[:, j:j + pattern.m] = _group_mask(W1[:, j:j + pattern.m], inv_d2[:, j:j + pattern.m], pattern.n)
            err = W1[:, j].masked_fill(K1[:, j], 0).div_(d[j])   # (w - q) / d: zero where kept
            Err1[:, j] = err
            W1[:, j + 1:].addr_(err, H1[j, j + 1:], alpha=-1)    # rank-1 update of the rest of the block
        W1.mul_(K1)  # pruned entries exactly 0; kept ones are the updated weights
        W[:, i1:i2] = W1
        if i2 < cols:
            W[:, i2:].addmm_(Err1, Hinv[i1:i2, i2:], alpha=-1)  # the lazy update of everything to the right
    return W.to(weight.dtype), keep


def reconstruction_error(W: Tensor, W0: Tensor, H: Tensor) -> float:
    """``trace((W - W0) H (W - W0)^T)``: the layer's squared output error on the calibration inputs (H = X^T X / N)."""
    D = (W - W0).to(H.dtype)
    return float(((D @ H) * D).sum())
