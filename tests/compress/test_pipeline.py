"""`mope compress` pipelines end to end on a tiny teacher and a tiny CSV dataset (seconds)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from mope_deploy.compress import pipeline as pipelines
from mope_deploy.compress.pipeline import compress
from mope_deploy.data.sampling import dataset_pairs
from mope_deploy.pruning.compose import compose_plans
from mope_deploy.compress.recipe import parse_recipe
from mope_deploy.models import load_model, model_stats
from mope_deploy.pruning.apply import apply_plan
from mope_deploy.pruning.plan import PruningPlan

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
RGB = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (128, 0, 128), (255, 128, 0), (255, 255, 255), (0, 0, 0)]


@pytest.fixture
def csv_data(caption_csv):
    images = [Image.new("RGB", (40, 40), rgb) for rgb in RGB]
    return caption_csv(images, [[f"a {c} square", f"something {c}"] for c in COLOURS], header="filepath,title")


def _recipe(teacher, data, stage="pretraining", **prune):
    prune = prune or {"vision": {"width": 32, "depth": 1}, "text": {"width": 32}}
    return parse_recipe({
        "name": "tiny", "teacher": str(teacher), "stage": stage,
        "data": {"train": str(data), "val": str(data), "test": str(data), "train_split": "test", "val_split": "test"},
        "prune": {"neuron_groups": 4, **prune},
        "train": {"epochs": 2, "steps_per_epoch": 2, "batch_size": 4, "lr": 1e-3, "checkpoint_every": 1},
    })


def test_pretraining_stage_end_to_end(tiny_model, csv_data, tmp_path):
    teacher_dir = tiny_model.save(tmp_path / "teacher")
    out = tmp_path / "run"
    report = compress(_recipe(teacher_dir, csv_data), out, progress=False, log=lambda m: None)
    for name in ("model.safetensors", "config.json", "plan.json", "scores_teacher.json", "metrics.jsonl",
                 "report.json", "state.json"):
        assert (out / name).is_file(), name
    student = load_model(out)
    assert [b.heads for b in student.config.vision.blocks] == [2]  # width 32 / head_dim 16, depth 1
    assert [b.mlp for b in student.config.text.blocks] == [128, 128]
    assert report["student"]["params"] == model_stats(student.config)["params"] < report["teacher"]["params"]
    assert set(report["stages"]) >= {"score-teacher", "prune-teacher", "distill-pretraining", "report"}
    for key in ("tr1", "tr5", "tr10", "ir1", "ir5", "ir10", "recall_mean"):
        assert 0 <= report["student"][key] <= 100
    assert json.loads((out / "report.json").read_text())["student"]["recall_mean"] == report["student"]["recall_mean"]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {x["stage"] for x in lines} == {"pretraining"} and any("loss_hidn" in x for x in lines)


STAGES = {"width-first": {"score-width", "distill-width", "score-depth", "distill-depth"},
          "depth-first": {"score-depth", "distill-depth", "score-width", "distill-width"},
          "joint": {"score-teacher", "prune-width-depth", "distill-width-depth"}}


@pytest.mark.parametrize("order", list(STAGES))
def test_finetuning_stage_orders_and_frozen_tower(tiny_model, csv_data, tmp_path, order):
    teacher_dir = tiny_model.save(tmp_path / "teacher")
    out = tmp_path / "run"
    recipe = _recipe(teacher_dir, csv_data, stage="finetuning", vision={"width": 32, "depth": 1}, metric="tr_mean",
                     order=order)
    compress(recipe, out, progress=False, log=lambda m: None)
    student = load_model(out)
    assert [(b.heads, b.mlp) for b in student.config.vision.blocks] == [(2, 128)]
    assert student.config.text == tiny_model.config.text
    for k, v in tiny_model.text.state_dict().items():  # text tower frozen: still the teacher's
        assert torch.equal(student.text.state_dict()[k], v), k
    plan = PruningPlan.load(out / "plan.json")  # composed width+depth plan re-applies to the teacher
    assert apply_plan(tiny_model, plan).config.vision == student.config.vision
    assert STAGES[order] <= set(json.loads((out / "state.json").read_text())["done"])


def test_interrupted_run_resumes(tiny_model, csv_data, tmp_path, monkeypatch):
    teacher_dir = tiny_model.save(tmp_path / "teacher")
    out = tmp_path / "run"
    recipe = _recipe(teacher_dir, csv_data)

    def boom(self, *a, **k):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(pipelines.Pipeline, "_finish", boom)
    with pytest.raises(KeyboardInterrupt):
        compress(recipe, out, progress=False, log=lambda m: None)
    done = json.loads((out / "state.json").read_text())["done"]
    assert "distill-pretraining" in done and "report" not in done
    monkeypatch.undo()
    calls = []
    monkeypatch.setattr(pipelines, "score", lambda *a, **k: calls.append(1))
    report = compress(recipe, out, progress=False, log=lambda m: None)
    assert calls == []  # finished stages were not run again
    assert (out / "model.safetensors").is_file() and report["student"]["params"] > 0
    other = _recipe(teacher_dir, csv_data, vision={"width": 16})
    with pytest.raises(ValueError, match="different recipe"):
        compress(other, out, progress=False, log=lambda m: None)


def test_compose_plans_equals_sequential_application(tiny_model):
    from mope_deploy.pruning.plan import Target, make_plan
    from mope_deploy.importance import score

    t1 = score(tiny_model, method="magnitude", n_groups=4)
    p1 = make_plan(tiny_model.config, Target(tower="both", width=32), t1)
    s1 = apply_plan(tiny_model, p1)
    p2 = make_plan(s1.config, Target(tower="vision", depth=1, depth_method="top"), None)
    s2 = apply_plan(s1, p2)
    direct = apply_plan(tiny_model, compose_plans(p1, p2))
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(direct.encode_image(x), s2.encode_image(x), atol=1e-6)


def test_dataset_pairs_cover_every_caption_each_epoch_and_restart(csv_data):
    from mope_deploy.data.datasets import load_dataset

    ds = load_dataset(str(csv_data))
    n = len(ds.captions)
    it = dataset_pairs(ds, seed=3)
    first = [p[1] for _, p in zip(range(2 * n), it(0))]
    assert sorted(first[:n]) == sorted(ds.captions) and first[:n] != first[n:]
    assert [p[1] for _, p in zip(range(5), it(n - 2))] == first[n - 2:n + 3]
