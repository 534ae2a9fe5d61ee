"""Calibration data and the block-by-block pass every local method runs on.

Only one block's inputs are in memory at a time: the tower's token states for all calibration samples enter
block ``l``; hooks on the block's linears accumulate the input statistics a method needs (per-input sum of
squares for Wanda, ``X^T X`` for SparseGPT); the block is pruned; then the *pruned* block is run to produce the
inputs of block ``l+1``. So later blocks are calibrated on activations that already passed the pruned earlier
blocks (as Wanda, SparseGPT and ECoFLaP do), and memory is ``N x tokens x width`` plus one block's statistics.

For causal text towers only positions up to each caption's pooled (EOT) token count: later positions are
padding that never reaches the embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from .layers import block_linears
from .patterns import SparsityError


@dataclass
class Calibration:
    """Preprocessed calibration pairs: ``images`` (N, 3, H, W) and ``tokens`` (N, context), row i matching."""

    images: Tensor
    tokens: Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batches(self, batch_size: int) -> list[tuple[Tensor, Tensor]]:
        return [(self.images[s:s + batch_size], self.tokens[s:s + batch_size])
                for s in range(0, len(self), batch_size)]


def calibration_from_dataset(model, dataset, n_samples: int = 128, min_samples: int = 2) -> Calibration:
    """The first ``n_samples`` images of a retrieval dataset, each with its first caption, preprocessed for
    ``model``. Too little data is an error before any work (it names how much there is)."""
    from ..importance.gradient import training_pairs

    if n_samples < min_samples:
        raise SparsityError(f"--samples must be at least {min_samples} (the contrastive loss needs pairs), "
                            f"got {n_samples}")
    n_pairs = 0 if not len(dataset.txt2img) else len(training_pairs(torch.tensor(dataset.txt2img))[0])
    if n_pairs == 0:
        raise SparsityError(f"calibration data {dataset.name!r} is empty: give a dataset with image-caption pairs")
    if n_pairs < n_samples:
        raise SparsityError(f"calibration data {dataset.name!r} has {n_pairs} image-caption pairs but {n_samples} "
                            f"were asked for; give more data or lower --samples to at most {n_pairs}")
    img_idx, cap_idx = training_pairs(torch.tensor(dataset.txt2img))
    img_idx, cap_idx = img_idx[:n_samples].tolist(), cap_idx[:n_samples].tolist()
    pre, tok = model.preprocess, model.tokenizer
    images = torch.stack([pre(dataset.images[i]) for i in img_idx])
    tokens = tok([dataset.captions[c] for c in cap_idx])
    return Calibration(images=images, tokens=tokens)


class LayerStats:
    """Running statistics of one linear's inputs on the model's device, in float32: row count and either the
    per-input sum of squares (Wanda) or ``X^T X`` (SparseGPT; its diagonal is the sum of squares)."""

    def __init__(self, in_features: int, hessian: bool, device: torch.device | str = "cpu"):
        self.n = 0
        self.sq = None if hessian else torch.zeros(in_features, dtype=torch.float32, device=device)
        self.xtx = torch.zeros(in_features, in_features, dtype=torch.float32, device=device) if hessian else None

    def add(self, x: Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1])
        if x.dtype != torch.float32:
            x = x.float()
        self.n += x.shape[0]
        if self.xtx is not None:
            self.xtx.addmm_(x.t(), x)
        else:
            self.sq.add_(torch.linalg.vector_norm(x, dim=0).square_())

    @property
    def norms(self) -> Tensor:
        """``||X_j||_2`` over all calibration tokens, per input ``j`` (Wanda's activation norm)."""
        sq = self.sq if self.xtx is None else torch.diagonal(self.xtx)
        return sq.clamp(min=0).sqrt()

    @property
    def hessian(self) -> Tensor:
        """``X^T X / N`` (SparseGPT's Hessian up to a constant factor, which the relative damping absorbs)."""
        assert self.xtx is not None
        return self.xtx / max(self.n, 1)


def token_validity(tower, tokens: Tensor) -> Tensor | None:
    """(N, context) bool: which text positions reach the pooled embedding (None: all positions count)."""
    cfg = tower.cfg
    if not getattr(cfg, "causal", False):
        return None
    pos = tower.pool_index(tokens)
    return torch.arange(tokens.shape[1], device=pos.device).view(1, -1) <= pos.view(-1, 1)


@torch.no_grad()
def blockwise(model, tower_name: str, calib: Calibration, prune_block: Callable[[int, nn.Module, dict], None],
              hessian: bool = False, batch_size: int = 32, on_block: Callable[[], None] | None = None) -> None:
    """Run the calibration samples through ``tower_name`` one block at a time, calling
    ``prune_block(index, block, {linear name: LayerStats})`` before the block's (pruned) output is computed."""
    model.eval()
    tower = model.tower(tower_name)
    p = next(model.parameters())
    inputs = calib.images if tower_name == "vision" else calib.tokens
    valid = token_validity(tower, calib.tokens) if tower_name == "text" else None
    def prep(t: Tensor) -> Tensor:
        return t.to(p.device, p.dtype) if t.is_floating_point() else t.to(p.device)

    x = torch.cat([tower.embed(prep(inputs[s:s + batch_size])) for s in range(0, len(calib), batch_size)])
    for i, blk in enumerate(tower.blocks):
        lins = block_linears(blk)
        if lins:
            stats = {n: LayerStats(lin.in_features, hessian, lin.weight.device) for n, lin in lins.items()}
            current: dict[str, Tensor | None] = {"valid": None}

            def hook(mod, args, out, name):
                a = args[0]
                v = current["valid"]
                stats[name].add(a[v.to(a.device)] if v is not None else a)

            handles = [lin.register_forward_hook(lambda m, a, o, name=n: hook(m, a, o, name))
                       for n, lin in lins.items()]
            try:
                for s in range(0, x.shape[0], batch_size):
                    current["valid"] = valid[s:s + batch_size] if valid is not None else None
                    tower.run_blocks(x[s:s + batch_size], start=i, end=i + 1)
            finally:
                for h in handles:
                    h.remove()
            prune_block(i, blk, stats)
            del stats
        for s in range(0, x.shape[0], batch_size):  # in place: block l's input is no longer needed
            x[s:s + batch_size] = tower.run_blocks(x[s:s + batch_size], start=i, end=i + 1)
        if on_block is not None:
            on_block()
