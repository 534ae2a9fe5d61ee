"""One target resolution for `mope prune` and `mope compress`: which score tables a target needs, one planner,
and the same FFN width from the same recipe width on a teacher whose FFN ratio is not 4."""

from __future__ import annotations

import pytest
import torch

from mope_deploy.compress import parse_recipe, pretraining_plan, recipe_target
from mope_deploy.importance import magnitude_table
from mope_deploy.models import SlimCLIP
from mope_deploy.models.tiny import tiny_config
from mope_deploy.pruning import PlanError, Target, make_plan, plan_for
from mope_deploy.vocab import DEPTH_METHODS, METHODS


@pytest.mark.parametrize("target, need", [
    (Target(width=32), ("mope",)),
    (Target(width=32, method="gradient"), ("gradient",)),
    (Target(params=10_000, method="magnitude"), ("magnitude",)),
    (Target(depth=1), ("mope",)),
    (Target(depth=1, depth_method="every-other"), ()),
    (Target(width=32, depth=1, depth_method="gradient"), ("mope", "gradient")),
    (Target(width=32, depth=1, depth_method="mope"), ("mope",)),
    (Target(width=32, depth=1, depth_method="top", method="magnitude"), ("magnitude",)),
])
def test_required_tables(target, need):
    assert target.required_tables() == need


def _teacher(ratio: int = 2) -> SlimCLIP:
    torch.manual_seed(0)
    return SlimCLIP(tiny_config(depth=2, mlp_ratio=ratio)).eval()  # FFN = 2 x width, not CLIP's 4


def test_plan_for_refuses_missing_tables_and_matches_make_plan():
    teacher = _teacher()
    mag = magnitude_table(teacher, n_groups=4)
    with pytest.raises(PlanError, match="needs the mope score table"):
        plan_for(teacher.config, Target(width=32), {"magnitude": mag})
    t = Target(width=32, depth=1, depth_method="magnitude", method="magnitude")
    plan = plan_for(teacher.config, t, {"magnitude": mag})
    assert plan.to_dict() == make_plan(teacher.config, t, mag, mag).to_dict()


def test_prune_and_compress_agree_on_the_ffn_width_of_a_ratio_2_teacher(tmp_path):
    """Width 32 keeps 2 x 32 = 64 FFN neurons per block on a ratio-2 teacher, through the recipe (compress) and
    through Target (prune); before the fix the recipe defaulted to 4 x 32 = 128."""
    teacher = _teacher(ratio=2)
    mag = magnitude_table(teacher, n_groups=4)
    recipe = parse_recipe({"name": "r", "teacher": "demo", "stage": "pretraining",
                           "data": {"train": "synthetic", "val": "synthetic", "test": "synthetic"},
                           "prune": {"vision": {"width": 32}, "method": "magnitude", "depth_method": "magnitude"}})
    via_compress = pretraining_plan(recipe, teacher.config, {"magnitude": mag})
    via_prune = plan_for(teacher.config, Target(tower="vision", width=32, method="magnitude"), {"magnitude": mag})
    assert [len(n) for n in via_compress.vision.neurons] == [64, 64]
    assert via_compress.vision == via_prune.vision
    assert recipe_target(recipe, "vision").mlp_ratio is None


def test_recipe_allowed_values_are_the_vocabulary():
    base = {"name": "r", "teacher": "demo", "stage": "pretraining",
            "data": {"train": "synthetic", "val": "synthetic", "test": "synthetic"}, "prune": {"vision": {"width": 32}}}
    for m in METHODS:
        assert parse_recipe({**base, "prune": {**base["prune"], "method": m}}).prune.method == m
    for m in DEPTH_METHODS:  # magnitude included (it was missing from the recipe's own list)
        assert parse_recipe({**base, "prune": {**base["prune"], "depth_method": m}}).prune.depth_method == m
