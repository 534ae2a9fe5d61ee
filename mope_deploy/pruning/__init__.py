"""Pruning plans (KEPT indices per tower, JSON) from any score table plus a target, and physical pruning.

    from mope_deploy.pruning import Target, make_plan, apply_plan
    plan = make_plan(teacher.config, Target(tower="vision", width=384, depth=18), width_table=scores)
    student = apply_plan(teacher, plan)      # physically smaller SlimCLIP
"""

from .apply import apply_plan, plan_masks
from .compose import compose_plans, merge_tower
from .plan import (ALLOCATIONS, DEPTH_METHODS, PlanError, PruningPlan, Target, TowerPlan, full_plan, make_plan,
                   plan_for, select_blocks)

__all__ = ["apply_plan", "plan_masks", "compose_plans", "merge_tower", "ALLOCATIONS", "DEPTH_METHODS", "PlanError", "PruningPlan", "Target",
           "TowerPlan", "full_plan", "make_plan", "plan_for", "select_blocks"]
