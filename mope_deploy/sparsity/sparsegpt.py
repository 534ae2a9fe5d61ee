"""SparseGPT (Frantar & Alistarh, 2023): prune a linear layer and update its remaining weights so the layer's
output on the calibration inputs changes as little as possible (Optimal Brain Surgeon, column by column).

With ``H = X^T X / N + lambda I`` (``lambda = damp * mean(diag)``), columns are processed left to right: when
column ``i`` is frozen (kept, or set to 0 where pruned), the error ``(w_i - q_i) / [H_F^-1]_ii`` is pushed onto
the not-yet-frozen columns ``F = {i+1, ...}`` through the row ``[H_F^-1]_{i,F}``. The inverses of all the
shrinking ``H_F`` come from one upper Cholesky factor of ``H^-1`` (its rows), and updates are applied lazily
per block of ``blocksize`` columns. The pruning mask is chosen on the fly per column block by the OBS saliency
``w^2 / [H^-1]_ii^2`` (unstructured: lowest fraction of the block; n:m: lowest ``m - n`` of every ``m``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .patterns import Pattern, SparsityError


def damped_hessian(H: Tensor, W: Tensor, damp: float) -> tuple[Tensor, Tensor]:
    """``H`` with dead inputs (zero diagonal) made harmless and ``damp * mean(diag)`` added; also the dead mask."""
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    lam = damp * torch.mean(torch.diag(H))
    H += lam * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    return H, dead


@torch.no_grad()
def sparsegpt_prune(weight: Tensor, H: Tensor, sparsity: float = 0.5, pattern: Pattern = Pattern(),
                    blocksize: int = 128, damp: float = 0.01, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Pruned and updated weight (same dtype as ``weight``) and its keep mask.

    ``H`` is the (undamped) ``X^T X / N`` of the layer's inputs. ``mask`` (optional, True = keep) fixes the
    support instead of choosing it, which is how the update is checked against a direct solve.
    """
    W = weight.detach().to(torch.float64).clone()
    rows, cols = W.shape
    if pattern.structured and cols % pattern.m:
        raise SparsityError(f"{pattern} needs the input width to be a multiple of {pattern.m}, got {cols}")
    Hd, _ = damped_hessian(H.to(torch.float64), W, damp)
    try:
        L = torch.linalg.cholesky(Hd)
        Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    except RuntimeError as e:  # not positive definite even after damping
        raise SparsityError(f"SparseGPT: the calibration Hessian is not positive definite ({e}); "
                            "raise the damping (damp) or use more calibration samples") from None
    keep = torch.ones_like(W, dtype=torch.bool) if mask is None else mask.clone().bool()
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        d = torch.diag(Hinv1)
        if mask is None and not pattern.structured and sparsity > 0:
            sal = W1 ** 2 / d.view(1, -1) ** 2
            k = int(round(sal.numel() * sparsity))
            if k:
                idx = torch.sort(sal.flatten(), stable=True).indices[:k]
                blk = torch.ones(sal.numel(), dtype=torch.bool)
                blk[idx] = False
                keep[:, i1:i2] = blk.view_as(sal)
        for j in range(i2 - i1):
            col = i1 + j
            if mask is None and pattern.structured and col % pattern.m == 0:
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
    return W.to(weight.dtype), keep
