"""Sparsity patterns and masks: unstructured (per output row or per layer) and n:m (``n`` kept of every ``m``
consecutive inputs, e.g. 2:4 for Ampere-class sparse tensor cores).

A mask is a boolean tensor shaped like the weight (``True`` = kept). Masks are chosen from a score tensor of the
same shape (higher = more important).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import MopeError


class SparsityError(MopeError, ValueError):
    """A sparsification request that cannot be carried out (names the problem and the fix)."""


@dataclass(frozen=True)
class Pattern:
    """``unstructured`` (``n = m = 0``) or ``n:m``: at most ``n`` non-zeros in every ``m`` consecutive inputs."""

    n: int = 0
    m: int = 0

    @property
    def structured(self) -> bool:
        return self.m > 0

    @property
    def sparsity(self) -> float:
        """The sparsity an n:m pattern imposes (0 for unstructured: it has no fixed ratio)."""
        return 1 - self.n / self.m if self.m else 0.0

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.m else "unstructured"


UNSTRUCTURED = Pattern()


def parse_pattern(text: str | Pattern) -> Pattern:
    """``"unstructured"`` or ``"n:m"`` (``0 < n < m``) -> :class:`Pattern`."""
    if isinstance(text, Pattern):
        return text
    s = str(text).strip().lower()
    if s in ("unstructured", "none", ""):
        return UNSTRUCTURED
    mt = re.fullmatch(r"(\d+):(\d+)", s)
    if not mt:
        raise SparsityError(f"unknown sparsity pattern {text!r}: use 'unstructured' or n:m such as '2:4' or '4:8'")
    n, m = int(mt.group(1)), int(mt.group(2))
    if not 0 < n < m:
        raise SparsityError(f"pattern {text!r}: n:m needs 0 < n < m (e.g. 2:4 keeps 2 of every 4 inputs)")
    return Pattern(n, m)


def row_mask(scores: Tensor, sparsity: float) -> Tensor:
    """Prune the ``round(sparsity * in)`` lowest scores of every output row (Wanda's comparison group)."""
    rows, cols = scores.shape
    k = int(round(sparsity * cols))
    mask = torch.ones_like(scores, dtype=torch.bool)
    if k <= 0:
        return mask
    idx = torch.topk(scores, k, dim=1, largest=False, sorted=False).indices
    mask.scatter_(1, idx, False)
    return mask


def layer_mask(scores: Tensor, sparsity: float) -> Tensor:
    """Prune the ``round(sparsity * numel)`` lowest scores of the whole matrix (layer-wise magnitude)."""
    k = int(round(sparsity * scores.numel()))
    mask = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        mask[torch.topk(scores.flatten(), k, largest=False, sorted=False).indices] = False
    return mask.view_as(scores)


def nm_mask(scores: Tensor, n: int, m: int) -> Tensor:
    """Keep the ``n`` highest scores in every group of ``m`` consecutive inputs of each row."""
    rows, cols = scores.shape
    if cols % m:
        raise SparsityError(f"{n}:{m} needs the input width to be a multiple of {m}, got {cols}")
    groups = scores.reshape(rows, cols // m, m)
    idx = torch.topk(groups, n, dim=-1, sorted=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, idx, True)
    return mask.reshape(rows, cols)


def is_nm(weight: Tensor, n: int, m: int) -> bool:
    """Whether every group of ``m`` consecutive inputs of every row has at most ``n`` non-zeros."""
    rows, cols = weight.shape
    if cols % m:
        return False
    return bool(((weight != 0).reshape(rows, cols // m, m).sum(-1) <= n).all())


def detect_pattern(weights: list[Tensor], candidates: tuple[tuple[int, int], ...] = ((2, 4), (4, 8))) -> str:
    """The most specific pattern that all ``weights`` satisfy and that is actually used (some weights sparse):
    ``2:4`` / ``4:8`` / ``unstructured`` / ``dense``."""
    sparse = [w for w in weights if w.numel() and bool((w == 0).any())]
    if not sparse:
        return "dense"
    for n, m in candidates:
        if all(is_nm(w, n, m) for w in sparse):
            return f"{n}:{m}"
    return "unstructured"


def keep_count(numel: int, sparsity: float) -> int:
    """Weights kept in a group of ``numel`` at ``sparsity``: at least ``ceil(numel * (1 - sparsity))``."""
    return min(numel, math.ceil(numel * (1 - sparsity) - 1e-9))
