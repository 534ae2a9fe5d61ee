"""Compress to a latency budget: time a few student shapes on the deployment backend, fit a per-tower cost model,
and list the shapes MoPE's pruning can make that meet the budget (``mope plan``); resolve a recipe's
``prune.latency`` to concrete widths and depths (``mope compress``).

    from mope_deploy.planning import PlanRequest, MeasureSettings, plan
    result = plan(PlanRequest("ViT-L-14", speedup=3.34, settings=MeasureSettings("onnxruntime-int8", batch=8)))
    result.best.shapes        # {"vision": TowerShape(heads, depth, mlp), "text": ...}
"""

from .costmodel import Point, TowerModel, check, design
from .errors import PlanningError
from .measure import MeasureSettings, measure
from .planner import (PLAN_FILE, Candidate, PlanRequest, PlanResult, cost_models, measure_candidates, plan,
                      teacher_shape, write_plan)
from .recipe import Prediction, resolve_recipe
from .shapes import TowerShape, candidates, kept_importance, shape_config, shape_params
from .verify import measure_model, record_measured

__all__ = ["Candidate", "MeasureSettings", "PLAN_FILE", "PlanRequest", "PlanResult", "PlanningError", "Point",
           "Prediction", "TowerModel", "TowerShape", "candidates", "check", "cost_models", "design", "kept_importance",
           "measure", "measure_candidates", "measure_model", "plan", "record_measured", "resolve_recipe",
           "shape_config", "shape_params", "teacher_shape", "write_plan"]
