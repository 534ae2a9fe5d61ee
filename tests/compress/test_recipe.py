"""Recipes: every shipped file validates; bad keys and values are named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mope_deploy.compress.recipe import RecipeError, load_recipe, parse_recipe, recipe_names

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"  # the repository folder the package ships

PAPER = {"mope-clip-large": ("pretraining", 512, None, 384),
         "mope-clip-base": ("pretraining", 384, 18, 384),
         "mope-clip-small": ("pretraining", 384, 18, 192)}


def test_every_recipe_in_the_repository_ships_with_the_package():
    assert recipe_names() == sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")) and "demo" in recipe_names()


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


def _random_table(config, method="mope"):
    """Random scores shaped like ``config`` (latency and shapes do not depend on the values)."""
    import random

    from mope_deploy.importance import ScoreTable, TowerScores

    rng = random.Random(0)
    towers = {}
    for name in ("vision", "text"):
        blocks = config.tower(name).blocks
        towers[name] = TowerScores(head=[[rng.random() for _ in range(b.heads)] for b in blocks],
                                   neuron=[[rng.random() for _ in range(32)] for _ in blocks],
                                   layer=[rng.random() for _ in blocks],
                                   neuron_order=[rng.sample(range(b.mlp), b.mlp) for b in blocks])
    return ScoreTable(method=method, model_hash=f"{config.arch_hash()}:random", towers=towers, n_groups=32)


# (vision width, vision depth, vision block params M incl. embeddings, text block params M) from the paper
PAPER_SHAPES = {"mope-clip-large": (512, 24, 153, 42), "mope-clip-base": (384, 18, 86, 42),
                "mope-clip-small": (384, 18, 86, 21)}


@pytest.mark.parametrize("name", list(PAPER_SHAPES))
def test_paper_recipes_build_the_paper_students_from_vit_l14(name):
    from mope_deploy.compress.pipeline import pretraining_plan
    from mope_deploy.models import load_config, model_stats

    r = load_recipe(name)
    teacher = load_config(r.teacher)
    table = _random_table(teacher)
    plan = pretraining_plan(r, teacher, {m: table for m in (r.prune.method, r.prune.depth_method)})
    student = plan.apply_config(teacher)
    vw, vd, vparams, tparams = PAPER_SHAPES[name]
    assert [b.heads * 64 for b in student.vision.blocks] == [vw] * vd
    assert [b.mlp for b in student.vision.blocks] == [4 * vw] * vd
    assert [b.heads * 64 for b in student.text.blocks] == [r.prune.text.width] * 12
    stats = model_stats(student)
    assert stats["vision"]["params_total"] / 1e6 == pytest.approx(vparams, abs=1.0)
    assert stats["text"]["params"] / 1e6 == pytest.approx(tparams, abs=0.7)


@pytest.mark.parametrize("name,tower,width,depth", [("mope-clip-v", "vision", 384, 18), ("mope-clip-t", "text", 384, 12)])
def test_finetuning_recipes_build_their_shapes(name, tower, width, depth):
    from mope_deploy.compress.pipeline import recipe_target
    from mope_deploy.pruning.compose import compose_plans
    from mope_deploy.models import load_config
    from mope_deploy.pruning.plan import make_plan

    r = load_recipe(name)
    teacher = load_config(r.teacher)
    table = _random_table(teacher)
    plan = make_plan(teacher, recipe_target(r, tower, depth=False), table, None)
    mid = plan.apply_config(teacher)
    if getattr(r.prune, tower).depth:
        plan = compose_plans(plan, make_plan(mid, recipe_target(r, tower, width=False), None, _random_table(mid)))
    student = plan.apply_config(teacher)
    blocks = student.tower(tower).blocks
    assert len(blocks) == depth and all(b.heads * 64 == width and b.mlp == 4 * width for b in blocks)
    other = "text" if tower == "vision" else "vision"
    assert student.tower(other) == teacher.tower(other)
