"""``prune.latency`` in a recipe -> concrete widths and depths, with the same planner as ``mope plan``.

compress sits below the planner in the stage order (the planner times shapes with the runtime), so the
resolution happens here and the CLI calls it before :func:`mope_deploy.compress.compress`; the chosen shape's
predicted latency travels in the recipe (``prune.latency.predicted_ms``, ``teacher_ms``) into report.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..compress.recipe import Recipe, parse_recipe
from ..vocab import TOWERS
from .errors import PlanningError
from .measure import MeasureSettings
from .planner import PlanRequest, PlanResult, plan, teacher_shape


@dataclass(frozen=True)
class Prediction:
    """What the planner chose for a recipe: per tower ``{width, depth, predicted_ms}``, the totals in ms."""

    backend: str
    batch: int
    budget_ms: float
    predicted_ms: float
    teacher_ms: float
    towers: dict[str, dict[str, Any]]

    def describe(self) -> str:
        shapes = ", ".join(f"{t} width {s['width']} x {s['depth']} blocks" for t, s in self.towers.items())
        return (f"latency budget {self.budget_ms:.1f} ms per batch of {self.batch} on {self.backend}: {shapes}, "
                f"predicted {self.predicted_ms:.1f} ms (teacher {self.teacher_ms:.1f} ms)")


def _request(recipe: Recipe, cache_dir: str | Path | None, progress: bool) -> PlanRequest:
    lat, p = recipe.prune.latency, recipe.prune
    towers = recipe.towers or (list(TOWERS) if recipe.stage == "pretraining" else [])
    if not towers:
        raise PlanningError("prune.latency in a finetuning recipe: name the one tower to compress (prune.vision or "
                            "prune.text, e.g. prune.vision: {})")
    given = [getattr(p, t) for t in towers if getattr(p, t) is not None]
    ratios = {t.mlp_ratio for t in given if t.mlp_ratio is not None}
    if len(ratios) > 1:
        raise PlanningError(f"prune.latency plans one FFN ratio for every tower, but the recipe gives {sorted(ratios)}; "
                            "use the same mlp_ratio (or none: the teacher's)")
    fixed = {t: {k: v for k in ("width", "depth") if (v := getattr(getattr(p, t), k)) is not None}
             for t in towers if getattr(p, t) is not None}
    settings = MeasureSettings(backend=lat.backend, batch=lat.batch, threads=lat.threads, progress=progress)
    return PlanRequest(teacher=recipe.teacher, latency_ms=lat.ms, speedup=lat.speedup,
                       tower="both" if len(towers) == 2 else towers[0], settings=settings,
                       mlp_ratio=ratios.pop() if ratios else None, cache_dir=cache_dir, fixed=fixed)


def _prediction(result: PlanResult) -> Prediction:
    c, s = result.best, result.request.settings
    towers = {t: {**{k: v for k, v in shape.to_dict(result.config.tower(t).head_dim).items() if k in ("width", "depth")},
                  "predicted_ms": c.predicted_ms[t]} for t, shape in c.shapes.items()}
    return Prediction(s.backend, s.batch, result.budget_ms, c.total_ms, sum(result.teacher_ms.values()), towers)


def resolve_recipe(recipe: Recipe, cache_dir: str | Path | None = None,
                   progress: bool = True) -> tuple[Recipe, Prediction | None]:
    """``recipe`` with its ``prune.latency`` budget turned into tower widths and depths (the best shape
    :func:`~.planner.plan` finds; a dimension the recipe already gives is kept), and what was predicted. A recipe
    without a budget, or one already resolved, comes back unchanged with ``None``."""
    lat = recipe.prune.latency
    if lat is None or lat.resolved:
        return recipe, None
    result = plan(_request(recipe, cache_dir, progress))
    pred = _prediction(result)
    d = recipe.model_dump(mode="json")
    for t, shape in result.best.shapes.items():
        full = teacher_shape(result.config, t)
        target = dict(d["prune"].get(t) or {})
        target["width"] = pred.towers[t]["width"] if shape.heads != full.heads else None
        target["depth"] = shape.depth if shape.depth != full.depth else None
        keep = target["width"] is not None or target["depth"] is not None or recipe.stage == "finetuning"
        d["prune"][t] = target if keep else None
    if all(d["prune"].get(t) is None for t in TOWERS):
        raise PlanningError(f"the teacher itself meets the budget ({pred.teacher_ms:.1f} <= {pred.budget_ms:.1f} ms "
                            f"on {pred.backend}): nothing to compress; lower prune.latency")
    d["prune"]["latency"].update(predicted_ms=pred.predicted_ms, teacher_ms=pred.teacher_ms, towers=list(pred.towers))
    return parse_recipe(d, f"{recipe.name} (latency resolved)"), pred


__all__ = ["Prediction", "resolve_recipe"]
