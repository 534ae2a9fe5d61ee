"""A per-tower latency model fitted to a few measured shapes and checked on held-out ones.

``latency(heads, depth) = a + depth * (b + c * x + e * x^2)``, ``x = heads / max_heads`` (the FFN follows the
width at a fixed ratio, so a block's FLOPs are linear in ``x``; ``e`` absorbs the kernels' efficiency changing with
the matrix sizes). ``a`` is what does not scale with depth: embeddings, pooling, projection, the call itself.
The fit minimises the *relative* error (each point weighted by 1 / its latency), the figure budgets are judged in.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

import numpy as np

from ..models.config import CLIPConfig
from .errors import PlanningError
from .shapes import max_heads



@dataclass(frozen=True)
class Point:
    """One measured shape of one tower: median latency in ms of a batch."""

    heads: int
    depth: int
    ms: float


@dataclass(frozen=True)
class TowerModel:
    """Fitted coefficients of one tower (ms); ``max_heads`` scales the width."""

    tower: str
    max_heads: int
    a: float
    b: float
    c: float
    e: float = 0.0

    def block_ms(self, heads: int) -> float:
        x = heads / self.max_heads
        return self.b + self.c * x + self.e * x * x

    def predict(self, heads: int, depth: int) -> float:
        return self.a + depth * self.block_ms(heads)

    def predict_blocks(self, heads_per_block: list[int]) -> float:
        """A tower whose blocks differ (e.g. an already pruned teacher)."""
        return self.a + sum(self.block_ms(h) for h in heads_per_block)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TowerModel":
        return cls(**d)

    @classmethod
    def fit(cls, tower: str, max_heads_: int, points: list[Point]) -> "TowerModel":
        """Weighted least squares on ``points`` (the quadratic term only with 3+ distinct widths)."""
        if len(points) < 2:
            raise PlanningError(f"{tower}: a cost model needs at least 2 measured shapes, got {len(points)}")
        quadratic = len({p.heads for p in points}) >= 3
        rows = []
        for p in points:
            x = p.heads / max_heads_
            rows.append([1.0, p.depth, p.depth * x] + ([p.depth * x * x] if quadratic else []))
        ms = np.array([p.ms for p in points], dtype=np.float64)
        if (ms <= 0).any():
            raise PlanningError(f"{tower}: a measured latency is not positive ({ms.min()} ms); re-run the planner")
        design = np.array(rows, dtype=np.float64) / ms[:, None]
        coef, *_ = np.linalg.lstsq(design, np.ones_like(ms), rcond=None)
        coef = [float(v) for v in coef] + ([] if quadratic else [0.0])
        return cls(tower, max_heads_, *coef)


def relative_errors(model: TowerModel, points: list[Point]) -> list[dict]:
    """Prediction vs measurement of each point: ``error`` = predicted / measured - 1."""
    return [{"heads": p.heads, "depth": p.depth, "measured_ms": p.ms, "predicted_ms": model.predict(p.heads, p.depth),
             "error": model.predict(p.heads, p.depth) / p.ms - 1.0} for p in points]


def check(model: TowerModel, held_out: list[Point]) -> dict:
    """The fit judged on shapes it never saw: per-shape errors, their median and largest absolute value."""
    rows = relative_errors(model, held_out)
    errs = [abs(r["error"]) for r in rows]
    return {"held_out": rows, "median_abs_error": statistics.median(errs) if errs else None,
            "max_abs_error": max(errs) if errs else None}


def _head_levels(h: int) -> list[int]:
    return sorted({max(1, round(h * f)) for f in (0.0, 0.25, 0.5, 0.75, 1.0)} | {1})


def design(config: CLIPConfig, tower: str, max_depth: int = 4) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(fit shapes, held-out shapes) as ``(heads, depth)``: widths spread over 1..max heads at depth 1 and at
    ``min(L, max_depth)`` (time per call grows with depth; the model is linear in it), and up to two held-out
    shapes at other widths and depths, one beyond the fitted depths where the tower has them."""
    if max_depth < 1:
        raise PlanningError(f"max_depth must be at least 1, got {max_depth}")
    h, depth = max_heads(config, tower), config.tower(tower).depth
    levels = _head_levels(h)
    d_hi = min(depth, max_depth)
    depths = sorted({1, d_hi})
    fit = [(k, d) for k in levels for d in depths]
    unused = [k for k in range(1, h + 1) if k not in levels]
    # unused widths nearest the middle of the two largest gaps first, then the fitted ones
    pick_heads = sorted(unused, key=lambda k: -min(abs(k - lv) for lv in levels)) + levels[::-1]
    pick_depths = [min(depth, 2 * d_hi), (1 + d_hi + 1) // 2, d_hi, 1]
    held: list[tuple[int, int]] = []
    for d in pick_depths:
        for k in pick_heads:
            if (k, d) not in fit and (k, d) not in held and all(k != hk for hk, _ in held):
                held.append((k, d))
                break
        if len(held) == 2:
            break
    return fit, held


__all__ = ["Point", "TowerModel", "check", "design", "relative_errors"]
