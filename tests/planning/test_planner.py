"""The planner around the timing step (a deterministic stand-in times the shapes): fit, ranking, refusals,
the cache, and backends that cannot run here."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from mope_deploy.errors import MopeError
from mope_deploy.importance import ScoreTable
from mope_deploy.importance.table import TowerScores
from mope_deploy.models import load_config
from mope_deploy.planning import (MeasureSettings, PlanRequest, PlanningError, TowerModel, design, kept_importance,
                                  plan, teacher_shape)
from mope_deploy.planning.costmodel import Point
from mope_deploy.planning.shapes import candidates, shape_params, tower_shape

from planning_fakes import formula_ms

TORCH = MeasureSettings("torch", batch=4, threads=1, progress=False)


def request(tmp_path, **kw) -> PlanRequest:
    kw.setdefault("settings", TORCH)
    return PlanRequest("demo", cache_dir=tmp_path / "cache", **kw)


def test_the_cost_model_recovers_a_known_latency_law(tmp_path, fake_timer):
    result = plan(request(tmp_path, speedup=1.0))
    config = result.config
    for t in ("vision", "text"):
        for s in candidates(config, t):
            assert result.models[t].predict(s.heads, s.depth) == pytest.approx(formula_ms(config, t, s.heads, s.depth),
                                                                             rel=1e-6)
        assert result.checks[t]["held_out"], "the design must hold some shapes out of the fit"
        assert result.checks[t]["max_abs_error"] < 1e-6


def test_design_holds_out_shapes_the_fit_never_sees():
    config = load_config("demo")
    for tower in ("vision", "text"):
        fit, held = design(config, tower, max_depth=4)
        assert held and not set(held) & set(fit)
        L, H = config.tower(tower).depth, max(b.heads for b in config.tower(tower).blocks)
        assert all(1 <= h <= H and 1 <= d <= L for h, d in fit + held)
        assert {d for _, d in fit} == {1, min(L, 4)}


def test_fit_uses_relative_error_and_is_exact_on_exact_data():
    pts = [Point(h, d, 5.0 + d * (1.0 + 2.0 * h / 4 + 0.5 * (h / 4) ** 2)) for h in (1, 2, 3, 4) for d in (1, 3)]
    m = TowerModel.fit("vision", 4, pts)
    assert (m.a, m.b, m.c, m.e) == pytest.approx((5.0, 1.0, 2.0, 0.5), rel=1e-6)
    with pytest.raises(PlanningError, match="at least 2"):
        TowerModel.fit("vision", 4, pts[:1])


def test_shapes_meeting_the_budget_are_ranked_by_kept_parameters(tmp_path, fake_timer):
    result = plan(request(tmp_path, speedup=1.5))
    assert result.candidates, "a 1.5x budget is reachable on the demo"
    assert all(c.total_ms <= result.budget_ms * (1 + 1e-9) for c in result.candidates)
    params = [c.params for c in result.candidates]
    assert params == sorted(params, reverse=True)
    teacher = sum(result.teacher_ms.values())
    assert result.budget_ms == pytest.approx(teacher / 1.5)
    # no shape outside the list meets the budget with more parameters than the best
    assert result.n_candidates == 4 * 6 * 4 * 4
    # the whole teacher meets a 1x budget and is then the best
    full = plan(request(tmp_path, speedup=1.0)).best
    assert {t: (s.heads, s.depth) for t, s in full.shapes.items()} == {"vision": (4, 6), "text": (4, 4)}


def test_a_single_tower_budget_plans_that_tower_only(tmp_path, fake_timer):
    result = plan(request(tmp_path, latency_ms=10.0, tower="vision"))
    assert set(result.best.shapes) == {"vision"}
    best = result.best.shapes["vision"]
    assert formula_ms(result.config, "vision", best.heads, best.depth) <= 10.0
    assert shape_params(result.config, "vision", best) == result.best.params


def test_an_impossible_budget_is_refused_with_the_fastest_figure(tmp_path, fake_timer):
    config = load_config("demo")
    fastest = formula_ms(config, "vision", 1, 1) + formula_ms(config, "text", 1, 1)
    with pytest.raises(PlanningError) as e:
        plan(request(tmp_path, latency_ms=1.0))
    msg = str(e.value)
    assert f"the fastest reachable is {fastest:.1f} ms" in msg and "vision width 32 x 1 blocks" in msg
    with pytest.raises(PlanningError, match=r"20x speed-up .*fastest reachable"):
        plan(request(tmp_path, speedup=20.0))


@pytest.mark.parametrize("kw, match", [({}, "exactly one budget"), ({"latency_ms": 5.0, "speedup": 2.0},
                                                                    "exactly one budget"),
                                       ({"latency_ms": -1.0}, "positive"), ({"speedup": 2.0, "tower": "audio"},
                                                                            "tower"),
                                       ({"speedup": 2.0, "settings": MeasureSettings("torch", clock="sundial")},
                                        "clock must be one of wall, cpu")])
def test_bad_requests_are_refused_before_any_timing(tmp_path, fake_timer, kw, match):
    with pytest.raises(PlanningError, match=match):
        plan(request(tmp_path, **kw))
    assert fake_timer.calls == 0


def test_second_call_is_served_from_the_cache_without_timing(tmp_path, fake_timer):
    first = plan(request(tmp_path, speedup=2.0))
    assert fake_timer.calls == 1 and not any(c["hit"] for c in first.cache.values())
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(files) == 2 and all(f.endswith(".json") for f in files)   # one per tower, no temporaries left
    fake_timer.fail = True
    second = plan(request(tmp_path, speedup=2.0))
    assert all(c["hit"] for c in second.cache.values())
    assert second.to_dict(top=5)["candidates"] == first.to_dict(top=5)["candidates"]
    # another batch size is another measurement; a corrupt file is measured again, never trusted
    fake_timer.fail = False
    plan(request(tmp_path, speedup=2.0, settings=MeasureSettings("torch", batch=8, threads=1, progress=False)))
    assert fake_timer.calls == 2
    path = first.cache["vision"]["path"]
    with open(path, "w") as f:
        f.write("{not json")
    plan(request(tmp_path, speedup=2.0))
    assert fake_timer.calls == 3
    assert json.loads(open(path).read())["key"]["tower"] == "vision"


def test_cache_folder_from_the_environment(tmp_path, fake_timer, monkeypatch):
    monkeypatch.setenv("MOPE_PLAN_CACHE", str(tmp_path / "env-cache"))
    plan(PlanRequest("demo", speedup=2.0, settings=TORCH))
    assert len(list((tmp_path / "env-cache").glob("*.json"))) == 2


def _table(config, layer_scores: dict[str, list[float]]) -> ScoreTable:
    towers = {}
    for t, layer in layer_scores.items():
        cfg = config.tower(t)
        towers[t] = TowerScores(head=[[float(h + 1) for h in range(b.heads)] for b in cfg.blocks],
                                neuron=[[1.0] * 4 for _ in cfg.blocks], layer=layer,
                                neuron_order=[list(range(b.mlp)) for b in cfg.blocks])
    return ScoreTable(method="mope", model_hash=f"{config.arch_hash()}:0", towers=towers, n_groups=4)


def test_kept_importance_counts_the_highest_scored_units():
    config = load_config("demo")
    table = _table(config, {"vision": [5.0, 0.0, 0.0, 0.0, 0.0, 5.0], "text": [1.0, 1.0, 1.0, 1.0]})
    full = teacher_shape(config, "vision")
    assert kept_importance(table, config, "vision", full) == pytest.approx(1.0)
    two = tower_shape(config, "vision", heads=4, depth=2)
    # the two blocks scored 5 keep all the depth score, a third of the heads' and neurons' totals
    assert kept_importance(table, config, "vision", two) == pytest.approx((1.0 + 1 / 3 + 1 / 3) / 3)
    narrow = tower_shape(config, "vision", heads=1, depth=6)
    assert kept_importance(table, config, "vision", narrow) == pytest.approx((1.0 + 4 / 10 + 1 / 4) / 3)


def test_a_score_table_ranks_by_kept_importance(tmp_path, fake_timer):
    config = load_config("demo")
    table = _table(config, {"vision": [5.0, 0.0, 0.0, 0.0, 0.0, 5.0], "text": [1.0, 1.0, 1.0, 1.0]})
    result = plan(request(tmp_path, speedup=1.5, scores=table))
    imps = [c.importance for c in result.candidates]
    assert imps == sorted(imps, reverse=True) and all(0 < i <= 1 for i in imps)
    wrong = ScoreTable(method="mope", model_hash="0" * 16 + ":0", towers=table.towers, n_groups=4)
    with pytest.raises(MopeError, match="arch hash"):
        plan(request(tmp_path, speedup=1.5, scores=wrong))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the GPU backend can run here")
def test_a_gpu_backend_is_refused_on_a_cpu_machine(tmp_path, fake_timer):
    with pytest.raises(MopeError) as e:
        plan(request(tmp_path, speedup=2.0, settings=MeasureSettings("tensorrt", progress=False)))
    msg = str(e.value)
    assert "tensorrt" in msg and "cannot run" in msg and "Available here" in msg and "onnxruntime" in msg
    assert fake_timer.calls == 0


@pytest.mark.skipif(importlib.util.find_spec("open_clip") is None, reason="open_clip is not installed")
def test_open_clip_backend_is_refused_it_runs_named_models_only(tmp_path, fake_timer):
    with pytest.raises(PlanningError, match="plan on 'torch'"):
        plan(request(tmp_path, speedup=2.0, settings=MeasureSettings("open_clip", progress=False)))


def test_the_timing_lock_is_held_only_inside_the_context(tmp_path):
    import fcntl

    from mope_deploy.planning.measure import timing_lock

    path = tmp_path / "timing.lock"

    def free() -> bool:
        with open(path, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(f, fcntl.LOCK_UN)
            return True

    with timing_lock(str(path)):
        assert not free()
    assert free()
    with timing_lock(None):  # no lock asked for: nothing taken
        pass
