"""``prune.latency`` in a recipe: parsed, resolved to concrete widths and depths by the planner, refused by
compress while unresolved, and carried into the report."""

from __future__ import annotations

import pytest

from mope_deploy.compress import load_recipe
from mope_deploy.compress.pipeline import compress
from mope_deploy.compress.recipe import RecipeError
from mope_deploy.planning import PlanningError, resolve_recipe

from planning_fakes import formula_ms

TORCH = ["prune.latency.backend=torch", "prune.latency.batch=4"]


def test_a_bare_number_is_a_budget_in_ms():
    r = load_recipe("demo", ["prune.latency=50"])
    assert r.prune.latency.ms == 50 and r.prune.latency.speedup is None and not r.prune.latency.resolved
    with pytest.raises(RecipeError, match="exactly one of ms"):
        load_recipe("demo", ["prune.latency.ms=50", "prune.latency.speedup=2"])
    with pytest.raises(RecipeError, match="latency"):
        load_recipe("demo", ["prune.latency.ms=-1"])


def test_latency_resolves_to_concrete_targets(tmp_path, fake_timer):
    r = load_recipe("demo", ["prune.vision=null", "prune.text=null", "prune.latency.speedup=2", *TORCH])
    assert r.towers == []
    resolved, pred = resolve_recipe(r, cache_dir=tmp_path, progress=False)
    assert pred is not None and pred.predicted_ms <= pred.budget_ms * (1 + 1e-9)
    assert pred.budget_ms == pytest.approx(pred.teacher_ms / 2)
    lat = resolved.prune.latency
    assert lat.resolved and lat.predicted_ms == pytest.approx(pred.predicted_ms) and lat.teacher_ms == pred.teacher_ms
    from mope_deploy.models import load_config
    config = load_config("demo")
    total = 0.0
    assert resolved.towers and set(resolved.towers) <= set(pred.towers) == {"vision", "text"}
    for t in pred.towers:  # a tower left whole by the plan has no target (nothing to prune there)
        tt = getattr(resolved.prune, t)
        assert tt is None or tt.width is not None or tt.depth is not None
        width = (tt and tt.width) or 128
        depth = (tt and tt.depth) or config.tower(t).depth
        assert width % 32 == 0
        total += formula_ms(config, t, width // 32, depth)
        assert pred.towers[t]["width"] == width and pred.towers[t]["depth"] == depth
    assert total == pytest.approx(pred.predicted_ms)
    resolved.require_concrete()  # compress accepts it now
    again, none = resolve_recipe(resolved, cache_dir=tmp_path, progress=False)
    assert none is None and again == resolved


def test_dimensions_the_recipe_gives_are_kept(tmp_path, fake_timer):
    r = load_recipe("demo", ["prune.vision={depth: 3}", "prune.text={width: 64}", "prune.latency.speedup=1.5", *TORCH])
    resolved, pred = resolve_recipe(r, cache_dir=tmp_path, progress=False)
    assert resolved.prune.vision.depth == 3 and pred.towers["vision"]["depth"] == 3
    assert resolved.prune.text.width == 64 and pred.towers["text"]["width"] == 64


def test_an_impossible_recipe_budget_is_refused_with_the_fastest_figure(tmp_path, fake_timer):
    r = load_recipe("demo", ["prune.latency.ms=0.5", *TORCH])
    with pytest.raises(PlanningError, match=r"fastest reachable is \d+\.\d ms"):
        resolve_recipe(r, cache_dir=tmp_path, progress=False)


def test_compress_refuses_an_unresolved_budget_before_any_work(tmp_path):
    r = load_recipe("demo", ["prune.latency.speedup=2", *TORCH])
    with pytest.raises(RecipeError, match="resolve_recipe"):
        compress(r, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_the_measured_figure_is_recorded_beside_the_prediction(tmp_path, tiny_model):
    """After compress: `mope plan RUN --record` times the student and writes latency.measured_ms."""
    import json

    from typer.testing import CliRunner

    from mope_deploy.cli.app import app

    run = tmp_path / "run"
    tiny_model.save(run)
    report = {"recipe": "x", "latency": {"speedup": 2.0, "backend": "torch", "batch": 2, "predicted_ms": 1.0,
                                         "teacher_ms": 2.0, "towers": ["vision"]}}
    (run / "report.json").write_text(json.dumps(report))
    res = CliRunner().invoke(app, ["plan", str(run), "--record", "--iters", "2"])
    assert res.exit_code == 0, res.output
    lat = json.loads((run / "report.json").read_text())["latency"]
    assert lat["predicted_ms"] == 1.0 and lat["measured_ms"] > 0 and set(lat["measured_towers_ms"]) == {"vision"}
    (run / "report.json").write_text(json.dumps({"recipe": "x"}))
    res = CliRunner().invoke(app, ["plan", str(run), "--record"])
    assert res.exit_code == 2 and "no latency budget" in " ".join(res.output.split())
