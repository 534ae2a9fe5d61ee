"""``mope plan``: the student shapes that meet a latency budget on a deployment backend, ranked.

1. per planned tower, time a small design of shapes (:func:`.costmodel.design`) on the backend, or read them from
   the cache (:mod:`.cache`), and fit a :class:`~.costmodel.TowerModel`, checked on held-out shapes;
2. predict every candidate shape (:func:`.shapes.candidates`; with both towers, every pair), keep those whose
   predicted vision + text latency fits the budget (``latency_ms``, or the teacher's predicted latency divided by
   ``speedup``), rank them by kept block parameters, or by kept MoPE importance when a score table is given;
3. refuse a budget no shape meets, naming the fastest reachable figure.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import FileOwner, atomic_write_text, check_file_target, json_with
from ..importance import ScoreTable
from ..models import CLIPConfig, load_config
from . import cache
from .costmodel import Point, TowerModel, check, design
from .errors import PlanningError
from .measure import MeasureSettings, machine, measure
from .shapes import (TowerShape, candidates, check_tower, kept_importance, max_heads, mlp_ratio, shape_params,
                     teacher_params, tower_shape)

DESIGN_VERSION = 1


@dataclass(frozen=True)
class PlanRequest:
    """One planning question. Exactly one of ``latency_ms`` (per batch, the planned towers summed) and ``speedup``
    (over the teacher's predicted latency on the same backend). ``fixed``: ``{tower: {"width"|"depth": n}}``
    dimensions a recipe already chose. ``max_depth``: the deepest shape timed for the fit."""

    teacher: str | CLIPConfig
    latency_ms: float | None = None
    speedup: float | None = None
    tower: str = "both"
    settings: MeasureSettings = field(default_factory=MeasureSettings)
    scores: ScoreTable | None = None
    mlp_ratio: float | None = None
    max_depth: int = 4
    cache_dir: str | Path | None = None
    fixed: dict[str, dict[str, int]] = field(default_factory=dict)

    def check(self) -> "PlanRequest":
        if (self.latency_ms is None) == (self.speedup is None):
            raise PlanningError("give exactly one budget: a latency in ms (--latency) or a speed-up over the teacher "
                                "(--speedup)")
        for name in ("latency_ms", "speedup"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise PlanningError(f"{name} must be a positive number, got {v!r}")
        check_tower(self.tower)
        self.settings.check()
        return self


@dataclass
class Candidate:
    """A student shape (one :class:`TowerShape` per planned tower) with its predicted latency per tower (ms)."""

    shapes: dict[str, TowerShape]
    predicted_ms: dict[str, float]
    params: int
    importance: float | None = None

    @property
    def total_ms(self) -> float:
        return sum(self.predicted_ms.values())

    def to_dict(self, config: CLIPConfig) -> dict[str, Any]:
        return {"towers": {t: {**s.to_dict(config.tower(t).head_dim), "predicted_ms": self.predicted_ms[t]}
                           for t, s in self.shapes.items()},
                "predicted_ms": self.total_ms, "params": self.params, "importance": self.importance}

    def describe(self, config: CLIPConfig) -> str:
        return ", ".join(f"{t} width {s.width(config.tower(t).head_dim)} x {s.depth} blocks"
                         for t, s in self.shapes.items())


@dataclass
class PlanResult:
    """What :func:`plan` found: ``candidates`` meet the budget, best first; ``fastest`` is the quickest shape."""

    config: CLIPConfig
    request: PlanRequest
    budget_ms: float
    teacher_ms: dict[str, float]
    models: dict[str, TowerModel]
    checks: dict[str, dict]
    candidates: list[Candidate]
    fastest: Candidate
    n_candidates: int
    cache: dict[str, Any]

    @property
    def best(self) -> Candidate:
        return self.candidates[0]

    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        r, s = self.request, self.request.settings
        return {"teacher": r.teacher if isinstance(r.teacher, str) else "<config>",
                "teacher_arch_hash": self.config.arch_hash(), "backend": s.backend, "batch": s.batch,
                "threads": s.threads, "tower": r.tower, "latency_ms": r.latency_ms, "speedup": r.speedup,
                "budget_ms": self.budget_ms, "teacher_predicted_ms": self.teacher_ms,
                "teacher_params": {t: teacher_params(self.config, t) for t in self.teacher_ms},
                "cost_models": {t: m.to_dict() for t, m in self.models.items()}, "checks": self.checks,
                "n_candidates": self.n_candidates, "n_meeting_budget": len(self.candidates),
                "candidates": [c.to_dict(self.config) for c in self.candidates[:top]],
                "fastest": self.fastest.to_dict(self.config), "machine": machine(s), "cache": self.cache}


def _teacher_config(teacher: str | CLIPConfig) -> CLIPConfig:
    return teacher if isinstance(teacher, CLIPConfig) else load_config(teacher)


def _key(config: CLIPConfig, request: PlanRequest, tower: str) -> dict[str, Any]:
    s = request.settings
    return {"design": DESIGN_VERSION, "teacher_arch_hash": config.arch_hash(), "backend": s.backend, "batch": s.batch,
            "tower": tower, "mlp_ratio": mlp_ratio(config, tower, request.mlp_ratio), "max_depth": request.max_depth,
            "iters": s.iters, "warmup": s.warmup, "clock": s.clock, "machine": machine(s)}


def cost_models(config: CLIPConfig, request: PlanRequest) -> tuple[dict[str, TowerModel], dict[str, dict], dict]:
    """Fitted models and held-out checks of the planned towers, measured (all towers round-robin in one pass)
    or read from the cache; the third value says which file each came from and whether it was a hit."""
    towers = check_tower(request.tower)
    folder = cache.cache_dir(request.cache_dir)
    models, checks, info, todo = {}, {}, {}, {}
    for t in towers:
        key = _key(config, request, t)
        path = cache.cache_path(folder, key)
        hit = cache.load(path, key)
        info[t] = {"path": str(path), "hit": hit is not None}
        if hit is not None:
            models[t], checks[t] = TowerModel.from_dict(hit["model"]), hit["check"]
        else:
            todo[t] = (key, path, design(config, t, request.max_depth))
    if todo:
        ratio = request.mlp_ratio
        plans = {t: fit + held for t, (_, _, (fit, held)) in todo.items()}
        samples = [{t: tower_shape(config, t, hd[0], hd[1], ratio) for t, shapes in plans.items()
                    if i < len(shapes) for hd in [shapes[i]]} for i in range(max(map(len, plans.values())))]
        measured = measure(config, samples, request.settings)
        for t, (key, path, (fit, held)) in todo.items():
            pts = [Point(h, d, measured[i][t]) for i, (h, d) in enumerate(plans[t])]
            models[t] = TowerModel.fit(t, max_heads(config, t), pts[:len(fit)])
            checks[t] = {**check(models[t], pts[len(fit):]), "fit": [asdict(p) for p in pts[:len(fit)]]}
            cache.save(path, key, {"model": models[t].to_dict(), "check": checks[t]})
    return models, checks, info


def _tower_options(config: CLIPConfig, tower: str, model: TowerModel, request: PlanRequest) -> list[tuple]:
    """(shape, predicted ms, params, importance) of every allowed shape of one tower."""
    fixed = request.fixed.get(tower, {})
    hd = config.tower(tower).head_dim
    out = []
    for s in candidates(config, tower, request.mlp_ratio):
        if fixed.get("width") not in (None, s.width(hd)) or fixed.get("depth") not in (None, s.depth):
            continue
        imp = kept_importance(request.scores, config, tower, s) if request.scores is not None else None
        out.append((s, model.predict(s.heads, s.depth), shape_params(config, tower, s), imp))
    if not out:
        raise PlanningError(f"{tower}: no shape has the fixed {fixed} (widths are multiples of {hd} up to "
                            f"{max_heads(config, tower) * hd}, depths 1..{config.tower(tower).depth})")
    return out


def _rank_key(c: Candidate) -> tuple:
    return (-(c.importance or 0.0), -c.params, c.total_ms)


def plan(request: PlanRequest) -> PlanResult:
    """Every shape meeting the budget, best first (see the module docstring); :class:`PlanningError` when none
    does, naming the fastest figure this backend can reach."""
    request.check()
    config = _teacher_config(request.teacher)
    if request.scores is not None:
        request.scores.check_model(config)
    towers = check_tower(request.tower)
    models, checks, info = cost_models(config, request)
    teacher_ms = {t: models[t].predict_blocks([b.heads for b in config.tower(t).blocks]) for t in towers}
    budget = request.latency_ms if request.latency_ms is not None else sum(teacher_ms.values()) / request.speedup
    options = [_tower_options(config, t, models[t], request) for t in towers]
    meeting, fastest, n = [], None, 0
    for combo in itertools.product(*options):
        n += 1
        ms = {t: o[1] for t, o in zip(towers, combo)}
        imps = [o[3] for o in combo]
        c = Candidate({t: o[0] for t, o in zip(towers, combo)}, ms, sum(o[2] for o in combo),
                      sum(imps) / len(imps) if request.scores is not None else None)
        if fastest is None or c.total_ms < fastest.total_ms:
            fastest = c
        if c.total_ms <= budget * (1 + 1e-9):  # the teacher itself meets a 1x speed-up despite rounding
            meeting.append(c)
    if not meeting:
        what = (f"{request.latency_ms:g} ms" if request.latency_ms is not None else
                f"a {request.speedup:g}x speed-up ({budget:.1f} ms; the teacher is predicted at "
                f"{sum(teacher_ms.values()):.1f} ms)")
        raise PlanningError(f"no student shape meets {what} per batch of {request.settings.batch} on "
                            f"{request.settings.backend}: the fastest reachable is {fastest.total_ms:.1f} ms "
                            f"({fastest.describe(config)}); raise the budget, use a smaller batch or a faster backend")
    meeting.sort(key=_rank_key)
    return PlanResult(config, request, budget, teacher_ms, models, checks, meeting, fastest, n, info)


def measure_candidates(result: PlanResult, chosen: list[Candidate]) -> list[dict[str, float]]:
    """Measured median ms per tower of ``chosen`` shapes (built at full size, timed round-robin): how a plan's
    predictions hold up."""
    return measure(result.config, [c.shapes for c in chosen], result.request.settings)


#: a plan `mope plan --json` wrote (what may be replaced without --force)
PLAN_FILE = FileOwner("plan", json_with("budget_ms", "cost_models", "candidates"))


def write_plan(data: dict[str, Any], path: str | Path, force: bool = False) -> Path:
    """Write ``data`` (:meth:`PlanResult.to_dict`) to ``path`` atomically; ``path`` must be absent or a plan
    unless ``force``."""
    check_file_target(path, PLAN_FILE, force)
    return atomic_write_text(path, json.dumps(data, indent=1))


def teacher_shape(config: CLIPConfig, tower: str) -> TowerShape:
    """The teacher's own (uniform) shape of ``tower``."""
    return tower_shape(config, tower, max_heads(config, tower), config.tower(tower).depth)


__all__ = ["Candidate", "PLAN_FILE", "PlanRequest", "PlanResult", "cost_models", "measure_candidates", "plan",
           "teacher_shape", "write_plan"]
