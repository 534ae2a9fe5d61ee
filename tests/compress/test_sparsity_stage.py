"""A recipe's sparsity stage: MoPE prune + distil, then n:m sparsity + SparseLoRA, resumable; bad requests fail
before any work."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from mope_deploy.compress.pipeline import CompressError, compress
from mope_deploy.compress.recipe import RecipeError, load_recipe, parse_recipe
from mope_deploy.models import load_model
from mope_deploy.sparsity import is_nm, prunable, sparsity_report

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
RGB = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (128, 0, 128), (255, 128, 0), (255, 255, 255), (0, 0, 0)]


@pytest.fixture
def csv_data(caption_csv):
    images = [Image.new("RGB", (40, 40), rgb) for rgb in RGB]
    return caption_csv(images, [[f"a {c} square", f"something {c}"] for c in COLOURS], header="filepath,title")


def _recipe(teacher, data, sparsity):
    return parse_recipe({
        "name": "tiny-sparse", "teacher": str(teacher), "stage": "pretraining",
        "data": {"train": str(data), "val": str(data), "test": str(data), "train_split": "test", "val_split": "test"},
        "prune": {"neuron_groups": 4, "vision": {"width": 32}, "text": {"width": 32}},
        "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 4, "lr": 1e-3, "checkpoint_every": 1},
        "sparsity": sparsity,
    })


def test_mope_then_2_4_with_sparselora(tiny_model, csv_data, tmp_path):
    teacher_dir = tiny_model.save(tmp_path / "teacher")
    out = tmp_path / "run"
    recipe = _recipe(teacher_dir, csv_data, {"method": "sparsegpt", "pattern": "2:4", "samples": 8, "batch_size": 4,
                                             "recover": "sparselora", "recover_steps": 2, "recover_batch": 4})
    report = compress(recipe, out, progress=False, log=lambda m: None)
    student = load_model(out)
    assert [b.heads for b in student.config.vision.blocks] == [2, 2]          # MoPE-pruned ...
    assert all(is_nm(lin.weight, 2, 4) for *_, lin in prunable(student))      # ... and 2:4 after the merge
    assert report["sparsity"]["pattern"] == "2:4" and report["sparsity"]["recovered"]["method"] == "sparselora"
    assert report["student_dense"]["params"] == report["student"]["params"]  # sparsity does not change shapes
    done = json.loads((out / "state.json").read_text())["done"]
    assert {"distill-pretraining", "sparsify", "report"} <= set(done)   # sparsify + recovery: one run() call
    assert report["sparsity"]["recovered"]["lora_towers"] == ["vision", "text"]
    assert (out / "stages" / "train-sparselora" / "last.pt").is_file()    # the stage folders are kept
    again = compress(recipe, out, progress=False, log=lambda m: None)         # resumes: every stage reused
    assert again["student"]["recall_mean"] == report["student"]["recall_mean"]
    assert sparsity_report(load_model(out))["sparsity"] == pytest.approx(0.5)


def test_unfit_pattern_fails_before_training(tiny_model, csv_data, tmp_path):
    teacher_dir = tiny_model.save(tmp_path / "teacher")
    out = tmp_path / "run"
    recipe = _recipe(teacher_dir, csv_data, {"method": "wanda", "pattern": "3:5"})
    with pytest.raises(CompressError, match="multiple of 5"):
        compress(recipe, out, progress=False, log=lambda m: None)
    assert not any(k.startswith("distill") for k in json.loads((out / "state.json").read_text())["done"])


def test_recipe_rejects_impossible_requests(tiny_model, csv_data, tmp_path):
    for bad, msg in [({"method": "wanda", "pattern": "2:4", "sparsity": 0.3}, "fixes every layer"),
                     ({"method": "global-magnitude", "pattern": "2:4"}, "cannot make 2:4"),
                     ({"method": "sparsegpt", "pattern": "unstructured"}, "give --sparsity"),
                     ({"method": "obs"}, "sparsity.method"), ({"recover": "lora"}, "sparsity.recover")]:
        with pytest.raises(RecipeError, match=msg):
            _recipe(tmp_path, csv_data, bad)


def test_shipped_sparse_recipes_parse():
    assert load_recipe("demo-sparse").sparsity.recover == "sparselora"
    large = load_recipe("mope-clip-large-sparse")
    assert large.teacher == "ViT-L-14" and large.sparsity.pattern == "2:4"
