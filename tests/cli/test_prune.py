"""``mope importance`` and ``mope prune`` end to end through typer's CliRunner on a tiny saved model."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from mope_deploy.cli.app import app
from mope_deploy.importance import ScoreTable
from mope_deploy.models import load_model, model_stats
from mope_deploy.pruning import PruningPlan, apply_plan, plan_masks

runner = CliRunner()


@pytest.fixture
def csv_data(caption_csv, noise_images):
    caps = [[f"a noisy photo number {i}", f"picture {i} of static"] for i in range(5)]
    return caption_csv(noise_images(5), caps)


def _ok(result):
    assert result.exit_code == 0, result.output
    return result.output


def test_importance_then_prune_writes_a_loadable_smaller_model(model_dir, csv_data, tmp_path):
    scores = tmp_path / "scores.json"
    out = _ok(runner.invoke(app, ["importance", str(model_dir), "--data", str(csv_data), "--tower", "vision",
                                  "--metric", "tr_mean", "--groups", "4", "--out", str(scores)]))
    assert "wrote" in out
    table = ScoreTable.load(scores)
    assert table.method == "mope" and table.metric == "tr_mean" and set(table.towers) == {"vision"}
    assert table.meta["n_images"] == 5 and table.meta["n_captions"] == 10
    assert len(table.towers["vision"].neuron[0]) == 4

    student_dir = tmp_path / "student"
    out = _ok(runner.invoke(app, ["prune", str(model_dir), "--scores", str(scores), "--tower", "vision",
                                  "--width", "32", "--depth", "1", "--out", str(student_dir)]))
    student = load_model(student_dir)
    plan = PruningPlan.load(student_dir / "plan.json")
    assert student.config.vision.depth == 1 and student.config.vision.blocks[0].heads == 2
    assert student.config.vision.blocks[0].mlp == 128 and student.config.text.depth == 2
    # the saved model is exactly the plan applied to the teacher
    teacher = load_model(model_dir)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(student.encode_image(images),
                                   teacher.visual(images, masks=plan_masks(teacher, plan)["vision"]), atol=1e-5, rtol=0)
    assert plan.vision.blocks == [max(range(2), key=lambda b: table.towers["vision"].layer[b])]

    info = _ok(runner.invoke(app, ["info", str(student_dir), "--json"]))
    stats = json.loads(info)
    assert stats["vision"]["depth"] == 1 and stats["vision"]["blocks"][0]["attn_width"] == 32
    assert stats == model_stats(student.config)

    # --plan re-applies the same plan
    again = tmp_path / "again"
    _ok(runner.invoke(app, ["prune", str(model_dir), "--plan", str(student_dir / "plan.json"), "--out", str(again)]))
    assert load_model(again).config.arch_hash() == student.config.arch_hash()
    assert apply_plan(teacher, plan).config.arch_hash() == student.config.arch_hash()


def test_magnitude_and_every_other_need_no_scores(model_dir, tmp_path):
    out_dir = tmp_path / "magn"
    _ok(runner.invoke(app, ["prune", str(model_dir), "--method", "magnitude", "--depth-method", "every-other",
                            "--tower", "both", "--width", "16", "--depth", "1", "--out", str(out_dir)]))
    m = load_model(out_dir)
    assert [b.heads for b in m.config.vision.blocks] == [1] and [b.source for b in m.config.text.blocks] == [0]
    plan = json.loads((out_dir / "plan.json").read_text())
    assert plan["info"]["width_method"] == "magnitude" and plan["info"]["depth_method"] == "every-other"


def test_gradient_table_and_params_budget(model_dir, csv_data, tmp_path):
    g = tmp_path / "g.json"
    _ok(runner.invoke(app, ["importance", str(model_dir), "--data", str(csv_data), "--method", "gradient",
                            "--groups", "4", "--out", str(g)]))
    assert ScoreTable.load(g).method == "gradient"
    budget = 60_000
    out_dir = tmp_path / "budget"
    _ok(runner.invoke(app, ["prune", str(model_dir), "--scores", str(g), "--method", "gradient", "--tower", "text",
                            "--params", str(budget), "--out", str(out_dir)]))
    assert model_stats(load_model(out_dir).config)["text"]["params"] <= budget


def test_clear_errors(model_dir, csv_data, tmp_path):
    r = runner.invoke(app, ["prune", str(model_dir), "--width", "32", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "no mope score table given" in r.output and "mope importance" in r.output
    r = runner.invoke(app, ["prune", str(model_dir), "--method", "magnitude", "--width", "40",
                            "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "not a multiple of the head size" in r.output
    r = runner.invoke(app, ["prune", str(model_dir), "--depth", "3", "--depth-method", "top",
                            "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "more than the 2 blocks" in r.output
    r = runner.invoke(app, ["importance", str(model_dir), "--out", str(tmp_path / "s.json")])
    assert r.exit_code == 2 and "give --data" in r.output
    assert not (tmp_path / "x").exists()
