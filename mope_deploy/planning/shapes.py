"""The student shapes MoPE's pruning can cut from a teacher, per tower: a uniform attention width (a multiple of
the head size; FFN at the teacher's mlp ratio unless given) in every kept block, and a depth of 1..L blocks.

A shape is plain data (:class:`TowerShape`); :func:`shape_config` builds the config of a model with given tower
shapes (random weights are enough to time it), :func:`shape_params` counts its block parameters (the paper's
convention, :func:`~mope_deploy.models.counting.block_params`) and :func:`kept_importance` sums what a MoPE score
table says the shape keeps.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from ..importance import ScoreTable
from ..models.config import BlockConfig, CLIPConfig, uniform_blocks
from ..models.counting import block_params
from ..vocab import TOWERS
from .errors import PlanningError


@dataclass(frozen=True, order=True)
class TowerShape:
    """``heads`` attention heads (width = heads x head_dim) and ``mlp`` FFN neurons in each of ``depth`` blocks."""

    heads: int
    depth: int
    mlp: int

    def width(self, head_dim: int) -> int:
        return self.heads * head_dim

    def to_dict(self, head_dim: int) -> dict[str, int]:
        return {"width": self.width(head_dim), "depth": self.depth, "heads": self.heads, "mlp": self.mlp}


def mlp_ratio(config: CLIPConfig, tower: str, ratio: float | None = None) -> float:
    """FFN neurons per unit of attention width: ``ratio`` when given, else the teacher's own (its widest block),
    as :func:`mope_deploy.pruning.make_plan` uses."""
    if ratio is not None:
        return float(ratio)
    cfg = config.tower(tower)
    b = max(cfg.blocks, key=lambda b: b.heads)
    if not b.heads:
        raise PlanningError(f"{tower}: no block has attention heads, so no width can be planned")
    return b.mlp / (b.heads * cfg.head_dim)


def max_heads(config: CLIPConfig, tower: str) -> int:
    """The most heads a uniform width can keep: every kept block must have them (per-block allocation)."""
    return min(b.heads for b in config.tower(tower).blocks)


def tower_shape(config: CLIPConfig, tower: str, heads: int, depth: int, ratio: float | None = None) -> TowerShape:
    return TowerShape(heads=heads, depth=depth,
                      mlp=round(mlp_ratio(config, tower, ratio) * heads * config.tower(tower).head_dim))


def candidates(config: CLIPConfig, tower: str, ratio: float | None = None) -> list[TowerShape]:
    """Every uniform shape of ``tower``: 1..max heads x 1..L blocks."""
    cfg = config.tower(tower)
    return [tower_shape(config, tower, h, d, ratio) for h in range(1, max_heads(config, tower) + 1)
            for d in range(1, cfg.depth + 1)]


def shape_config(config: CLIPConfig, shapes: dict[str, TowerShape]) -> CLIPConfig:
    """``config`` with each tower in ``shapes`` replaced by that uniform shape (the other towers stay as they are);
    embeddings, residual width and heads keep the teacher's sizes."""
    d = copy.deepcopy(config.to_dict())
    for tower, s in shapes.items():
        d[tower]["blocks"] = [vars(b) for b in uniform_blocks(s.depth, s.heads, s.mlp)]
    d["provenance"] = {"source": "mope plan (random weights)"}
    d["sparsity"] = {}
    return CLIPConfig.from_dict(d)


def shape_params(config: CLIPConfig, tower: str, shape: TowerShape) -> int:
    """Block parameters of ``tower`` cut to ``shape``."""
    cfg = config.tower(tower)
    return shape.depth * block_params(cfg.width, cfg.head_dim, BlockConfig(heads=shape.heads, mlp=shape.mlp,
                                                                           source=0))


def teacher_params(config: CLIPConfig, tower: str) -> int:
    cfg = config.tower(tower)
    return sum(block_params(cfg.width, cfg.head_dim, b) for b in cfg.blocks)


def _top_sum(values: list[float], k: int) -> float:
    return float(sum(sorted((max(v, 0.0) for v in values), reverse=True)[:k]))


def kept_importance(table: ScoreTable, config: CLIPConfig, tower: str, shape: TowerShape) -> float:
    """The share of the tower's importance a shape keeps, in [0, 1]: the mean over blocks, heads and FFN neuron
    groups of (kept score / total score), with the kept blocks, heads and groups the highest scored (as MoPE's
    pruning keeps them); negative scores (units whose removal helped) count as 0."""
    ts = table.tower(tower)
    cfg = config.tower(tower)
    blocks = sorted(range(cfg.depth), key=lambda b: (-ts.layer[b], b))[: shape.depth]
    parts = [(_top_sum(ts.layer, shape.depth), _top_sum(ts.layer, cfg.depth))]
    head_kept = sum(_top_sum(ts.head[b], shape.heads) for b in blocks)
    parts.append((head_kept, sum(_top_sum(h, len(h)) for h in ts.head)))
    kept_groups = 0.0
    for b in blocks:
        n_groups = len(ts.neuron[b])
        k = round(n_groups * shape.mlp / cfg.blocks[b].mlp) if cfg.blocks[b].mlp else 0
        kept_groups += _top_sum(ts.neuron[b], k)
    parts.append((kept_groups, sum(_top_sum(n, len(n)) for n in ts.neuron)))
    shares = [kept / total if total > 0 else 1.0 for kept, total in parts]
    return sum(shares) / len(shares)


def check_tower(tower: str) -> tuple[str, ...]:
    """``vision`` | ``text`` | ``both`` -> the towers planned."""
    if tower == "both":
        return TOWERS
    if tower not in TOWERS:
        raise PlanningError(f"tower must be vision, text or both, got {tower!r}")
    return (tower,)


__all__ = ["TowerShape", "candidates", "check_tower", "kept_importance", "max_heads", "mlp_ratio", "shape_config",
           "shape_params", "teacher_params", "tower_shape"]
