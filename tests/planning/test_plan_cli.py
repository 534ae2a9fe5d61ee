"""``mope plan`` and the ``mope compress`` hook, with the timing step replaced by a known latency law."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from mope_deploy.cli.app import app

runner = CliRunner()


def test_mope_plan_lists_shapes_and_writes_json_and_plot(tmp_path, fake_timer):
    pytest.importorskip("matplotlib")
    args = ["plan", "demo", "--backend", "torch", "--batch", "4", "--speedup", "2", "--cache-dir", str(tmp_path / "c"),
            "--json", str(tmp_path / "plan.json"), "--plot", str(tmp_path / "plan.png"), "--top", "3", "--quiet",
            "--verify", "2"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "shapes meeting the budget" in res.output and "measured" in res.output
    data = json.loads((tmp_path / "plan.json").read_text())
    assert len(data["candidates"]) == 3 and data["backend"] == "torch" and data["batch"] == 4
    assert data["candidates"][0]["predicted_ms"] <= data["budget_ms"] * (1 + 1e-9)
    # --verify: the best two timed again (here by the same law: measured == predicted), the third not
    assert [c.get("measured_ms") for c in data["candidates"][:2]] == pytest.approx(
        [c["predicted_ms"] for c in data["candidates"][:2]])
    assert "measured_ms" not in data["candidates"][2]
    assert (tmp_path / "plan.png").stat().st_size > 0
    res = runner.invoke(app, args)  # cached the second time
    assert res.exit_code == 0 and "cached" in res.output and fake_timer.calls == 3  # plan + verify, then verify


def test_mope_plan_impossible_budget_is_one_red_line(tmp_path, fake_timer):
    res = runner.invoke(app, ["plan", "demo", "--backend", "torch", "--latency", "0.5", "--cache-dir", str(tmp_path),
                              "--quiet"])
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "fastest reachable is 5.5 ms" in out and "Traceback" not in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_mope_plan_gpu_backend_on_a_cpu_machine(tmp_path, fake_timer):
    res = runner.invoke(app, ["plan", "demo", "--backend", "tensorrt", "--speedup", "2", "--cache-dir", str(tmp_path)])
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "tensorrt" in out and "Available here" in out
    assert fake_timer.calls == 0


def test_mope_compress_resolves_latency_first(tmp_path, fake_timer, monkeypatch):
    """The CLI hook: the recipe reaching compress() has concrete targets and the prediction."""
    seen = {}

    def fake_compress(recipe, out, **kw):
        seen["recipe"] = recipe
        raise SystemExit(0)

    import mope_deploy.compress as compress_pkg
    monkeypatch.setattr(compress_pkg, "compress", fake_compress)
    monkeypatch.setenv("MOPE_PLAN_CACHE", str(tmp_path / "cache"))
    res = runner.invoke(app, ["compress", "demo", "--out", str(tmp_path / "run"), "--quiet", "--set",
                              "prune.latency.speedup=2", "--set", "prune.latency.backend=torch"])
    assert res.exit_code == 0, res.output
    assert "latency budget" in res.output and "predicted" in res.output
    r = seen["recipe"]
    assert r.prune.latency.resolved and all(getattr(r.prune, t).width or getattr(r.prune, t).depth for t in r.towers)
