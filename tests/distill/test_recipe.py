"""Recipes: every shipped file validates; bad keys and values are named."""

from __future__ import annotations

import pytest
import yaml

from mope_deploy.distill.recipe import RECIPES_DIR, RecipeError, load_recipe, parse_recipe

PAPER = {"mope-clip-large": ("pretraining", 512, None, 384),
         "mope-clip-base": ("pretraining", 384, 18, 384),
         "mope-clip-small": ("pretraining", 384, 18, 192)}


@pytest.mark.parametrize("name", sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
def test_shipped_recipes_validate(name):
    r = load_recipe(name)
    assert r.name == name
    if name in PAPER:
        stage, vw, vd, tw = PAPER[name]
        assert (r.stage, r.prune.vision.width, r.prune.vision.depth, r.prune.text.width) == (stage, vw, vd, tw)
        assert (r.teacher, r.pretrained, r.train.lr, r.train.batch_size, r.train.warmup) == (
            "ViT-L-14", "openai", 5e-5, 512, 0.02)


def test_finetuning_recipes_follow_table_b2():
    v, t = load_recipe("mope-clip-v"), load_recipe("mope-clip-t")
    assert (v.towers, v.prune.metric, v.train.lr, v.train.batch_size, v.train.epochs) == (
        ["vision"], "tr_mean", 2e-5, 256, 20)
    assert (t.towers, t.prune.metric, t.train.lr, t.train.batch_size, t.train.epochs) == (
        ["text"], "ir_mean", 8e-5, 1024, 10)
    assert v.train.betas == (0.9, 0.98) and v.train.weight_decay == 3e-4


def _base() -> dict:
    return yaml.safe_load((RECIPES_DIR / "mope-clip-base.yaml").read_text())


def test_unknown_key_is_named(tmp_path):
    d = _base()
    d["prune"]["widht"] = 3
    with pytest.raises(RecipeError, match=r"prune\.widht: unknown key"):
        parse_recipe(d)
    p = tmp_path / "r.yaml"
    d = _base()
    d["trian"] = {}
    p.write_text(yaml.safe_dump(d))
    with pytest.raises(RecipeError, match=rf"{p}.*\n.*trian: unknown key"):
        load_recipe(p)


def test_bad_values_are_named():
    d = _base()
    d["prune"]["method"] = "random"
    with pytest.raises(RecipeError, match=r"prune\.method: .*'mope'.*'magnitude'.*'gradient'"):
        parse_recipe(d)
    d = _base()
    d["train"]["lr"] = -1
    with pytest.raises(RecipeError, match=r"train\.lr: .*greater than 0"):
        parse_recipe(d)
    d = _base()
    d["stage"] = "finetuning"
    with pytest.raises(RecipeError, match="exactly one tower"):
        parse_recipe(d)
    d = _base()
    del d["data"]
    with pytest.raises(RecipeError, match="data: Field required"):
        parse_recipe(d)


def test_missing_recipe_lists_available():
    with pytest.raises(RecipeError, match="not found.*mope-clip-base"):
        load_recipe("nope")
