"""Plan algebra: composing a width plan with a depth plan made on its result, and merging per-tower plans.

Both return new plans; a plan is never edited in place (its hash is its identity)."""

from __future__ import annotations

from dataclasses import replace

from ..vocab import TOWERS
from .plan import PlanError, PruningPlan, TowerPlan


def compose_plans(first: PruningPlan, second: PruningPlan) -> PruningPlan:
    """The plan on ``first``'s teacher equivalent to applying ``first`` and then ``second`` (made on its result)."""
    towers = {}
    for name in TOWERS:
        a, b = first.tower(name), second.tower(name)
        towers[name] = TowerPlan(blocks=[a.blocks[i] for i in b.blocks],
                                 heads=[[a.heads[i][h] for h in hs] for i, hs in zip(b.blocks, b.heads)],
                                 neurons=[[a.neurons[i][n] for n in ns] for i, ns in zip(b.blocks, b.neurons)])
    return PruningPlan(teacher_arch_hash=first.teacher_arch_hash, teacher=first.teacher,
                       info={"steps": [first.info, second.info]}, **towers)


def merge_tower(plan: PruningPlan, other: PruningPlan, tower: str) -> PruningPlan:
    """A copy of ``plan`` whose ``tower`` is taken from ``other`` (plans of one teacher, pruned tower by tower)."""
    if other.teacher_arch_hash != plan.teacher_arch_hash:
        raise PlanError("merge_tower: the plans were made on different teachers")
    return replace(plan, **{tower: other.tower(tower)}, info={**plan.info, tower: other.info})
