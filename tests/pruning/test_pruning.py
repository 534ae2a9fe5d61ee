"""Pruning plans and physical pruning: pruned == masked teacher, analytic counts, refusals, paper shapes."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from mope_deploy.importance import ScoreTable, TowerScores, score
from mope_deploy.models import SlimCLIP, load_config, model_stats
from mope_deploy.models.tiny import tiny_config
from mope_deploy.pruning import (PlanError, PruningPlan, Target, TowerPlan, apply_plan, full_plan, make_plan,
                                 plan_masks, select_blocks)


@pytest.fixture
def teacher() -> SlimCLIP:
    torch.manual_seed(0)
    return SlimCLIP(tiny_config(depth=4)).eval()


def _inputs(n: int = 3, ctx: int = 16):
    g = torch.Generator().manual_seed(3)
    images = torch.randn(n, 3, 32, 32, generator=g)
    tokens = torch.randint(1, 49000, (n, ctx), generator=g)
    tokens[torch.arange(n), torch.arange(n) % (ctx - 4) + 3] = 49407  # EOT at varied positions
    return images, tokens


def random_table(config, seed: int = 0, n_groups: int = 8, method: str = "mope") -> ScoreTable:
    """A table with random scores (plan logic and shapes do not depend on how scores were measured)."""
    g = torch.Generator().manual_seed(seed)
    towers = {}
    for name in ("vision", "text"):
        cfg = config.tower(name)
        towers[name] = TowerScores(
            head=[torch.rand(b.heads, generator=g).tolist() for b in cfg.blocks],
            neuron=[torch.rand(min(n_groups, b.mlp), generator=g).tolist() if b.mlp else [] for b in cfg.blocks],
            layer=torch.rand(cfg.depth, generator=g).tolist(),
            neuron_order=[torch.randperm(b.mlp, generator=g).tolist() for b in cfg.blocks])
    return ScoreTable(method=method, model_hash=f"{config.arch_hash()}:random", towers=towers, n_groups=n_groups)


def assert_pruned_equals_masked(teacher: SlimCLIP, plan: PruningPlan) -> SlimCLIP:
    student = apply_plan(teacher, plan)
    images, tokens = _inputs()
    masks = plan_masks(teacher, plan)
    with torch.no_grad():
        torch.testing.assert_close(student.encode_image(images), teacher.visual(images, masks=masks["vision"]),
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(student.encode_text(tokens), teacher.text(tokens, masks=masks["text"]),
                                   atol=1e-5, rtol=0)
    n_params = sum(p.numel() for p in student.parameters())
    assert n_params == model_stats(student.config)["params_total"]
    return student


TARGETS = [
    Target(tower="both", width=32),
    Target(tower="vision", width=16, depth=2, depth_method="mope"),
    Target(tower="text", width=48, depth=3, depth_method="every-other", allocation="global"),
    Target(tower="both", depth=1, depth_method="bottom"),
    Target(tower="both", width=32, allocation="global", depth=3, depth_method="top"),
]


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: f"{t.tower}-w{t.width}-d{t.depth}-{t.allocation}")
def test_pruned_model_equals_masked_teacher(teacher, target):
    plan = make_plan(teacher.config, target, random_table(teacher.config))
    student = assert_pruned_equals_masked(teacher, plan)
    for name in target.towers():
        cfg = student.config.tower(name)
        if target.depth:
            assert cfg.depth == target.depth
        if target.width:
            heads = [b.heads for b in cfg.blocks]
            assert sum(heads) == target.width // 16 * cfg.depth
            assert sum(b.mlp for b in cfg.blocks) == 4 * target.width * cfg.depth
            if target.allocation == "per-block":
                assert set(heads) == {target.width // 16}
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters())


def test_blocks_without_heads_or_neurons_and_real_scores(teacher):
    images, tokens = _inputs(6)
    t2i = torch.arange(6)
    table = score(teacher, images, tokens, t2i, n_groups=4, batch_size=16)
    plan = make_plan(teacher.config, Target(width=32, depth=3), table)
    assert_pruned_equals_masked(teacher, plan)
    # hand-made plan: block 1 loses all heads, block 2 its whole FFN, block 3 is dropped
    plan = full_plan(teacher.config)
    plan.vision = TowerPlan(blocks=[0, 1, 2], heads=[[0, 3], [], [1, 2, 3]], neurons=[[5, 9, 200], [0, 1], []])
    student = assert_pruned_equals_masked(teacher, plan)
    assert student.visual.blocks[1].attn is None and student.visual.blocks[2].mlp is None
    assert [b.source for b in student.config.vision.blocks] == [0, 1, 2]


def test_selection_is_top_k_by_score(teacher):
    table = random_table(teacher.config, seed=5)
    plan = make_plan(teacher.config, Target(tower="vision", width=32, depth=2, depth_method="mope"), table)
    ts = table.towers["vision"]
    ref_blocks = sorted(sorted(range(4), key=lambda b: ts.layer[b], reverse=True)[:2])
    assert plan.vision.blocks == ref_blocks
    for b, heads, neurons in zip(plan.vision.blocks, plan.vision.heads, plan.vision.neurons):
        assert heads == sorted(sorted(range(4), key=lambda h: ts.head[b][h], reverse=True)[:2])
        best = sorted(range(8), key=lambda g: ts.neuron[b][g], reverse=True)[:4]  # 128 of 256 = 4 groups of 32
        assert neurons == sorted(j for g in best for j in ts.groups(b)[g])
    assert plan.text == full_plan(teacher.config).text  # the other tower is untouched


def test_depth_baselines():
    assert select_blocks(24, 12, "every-other") == list(range(0, 24, 2))
    assert select_blocks(24, 18, "every-other") == [i for i in range(24) if i not in (3, 7, 11, 15, 19, 23)]
    assert select_blocks(6, 4, "top") == [0, 1, 2, 3]
    assert select_blocks(6, 4, "bottom") == [2, 3, 4, 5]
    assert select_blocks(4, 2, "gradient", [0.1, 0.9, 0.5, 0.2]) == [1, 2]


def test_plan_round_trips_and_reapplies_to_any_copy(teacher, tmp_path):
    plan = make_plan(teacher.config, Target(width=32, depth=3, depth_method="every-other"),
                     score(teacher, method="magnitude", n_groups=4), teacher="tiny")
    path = plan.save(tmp_path / "plan.json")
    back = PruningPlan.load(path)
    assert back == plan and back.hash() == plan.hash()
    copy_ = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in copy_.parameters():
            p.add_(0.01 * torch.randn_like(p))  # e.g. a fine-tuned copy: same architecture, other weights
    a, b = apply_plan(teacher, back), apply_plan(copy_, back)
    assert a.config.arch_hash() == b.config.arch_hash()
    assert_pruned_equals_masked(copy_, back)
    assert b.config.provenance["plan_hash"] == plan.hash()


def test_plans_for_another_teacher_or_impossible_targets_are_refused(teacher):
    table = random_table(teacher.config)
    plan = make_plan(teacher.config, Target(width=32), table)
    other = SlimCLIP(tiny_config(depth=3)).eval()
    with pytest.raises(PlanError, match="made for a teacher with arch hash"):
        apply_plan(other, plan)
    with pytest.raises(ValueError, match="arch hash"):
        make_plan(other.config, Target(width=32), table)
    with pytest.raises(PlanError, match="needs 5 heads but the block has only 4"):
        make_plan(teacher.config, Target(width=80), table)
    with pytest.raises(PlanError, match="not a multiple of the head size 16"):
        make_plan(teacher.config, Target(width=40), table)
    with pytest.raises(PlanError, match="at least one block"):
        make_plan(teacher.config, Target(depth=0, depth_method="top"), table)
    with pytest.raises(PlanError, match="more than the 4 blocks"):
        make_plan(teacher.config, Target(depth=5, depth_method="top"), table)
    with pytest.raises(PlanError, match="no target"):
        make_plan(teacher.config, Target(), table)
    with pytest.raises(PlanError, match="needs a score table"):
        make_plan(teacher.config, Target(width=32))
    with pytest.raises(PlanError, match="depth method 'mope' needs its score table"):
        make_plan(teacher.config, Target(depth=2))
    bad = full_plan(teacher.config)
    bad.vision.blocks = []
    bad.vision.heads, bad.vision.neurons = [], []
    with pytest.raises(PlanError, match="keeps no blocks"):
        apply_plan(teacher, bad)
    bad = full_plan(teacher.config)
    bad.text.heads[0] = [0, 7]
    with pytest.raises(PlanError, match="text block 0 heads"):
        apply_plan(teacher, bad)
    d = json.loads(plan.to_json())
    d["version"] = 99
    with pytest.raises(PlanError, match="version"):
        PruningPlan.from_dict(d)


def test_parameter_budget_picks_the_widest_fitting_width(teacher):
    table = random_table(teacher.config)
    full = model_stats(teacher.config)["vision"]["params"]
    budget = int(full * 0.6)
    plan = make_plan(teacher.config, Target(tower="vision", params=budget), table)
    width = plan.info["widths"]["vision"]
    got = model_stats(plan.apply_config(teacher.config))["vision"]["params"]
    assert got <= budget
    wider = make_plan(teacher.config, Target(tower="vision", width=width + 16), table)
    assert model_stats(wider.apply_config(teacher.config))["vision"]["params"] > budget
    with pytest.raises(PlanError, match="no width fits"):
        make_plan(teacher.config, Target(tower="vision", params=1000), table)


# The paper's students of ViT-L/14 (ALGORITHMS.md section 0). Block parameters only, plus the
# vision tower's embeddings where the paper's count includes them.
PAPER = [
    ("vision", 512, 24, 153e6, True),
    ("vision", 384, 18, 86e6, True),
    ("text", 384, 12, 42e6, False),
    ("text", 192, 12, 21e6, False),
]


@pytest.mark.parametrize("tower,width,depth,expected,with_embeddings", PAPER)
def test_paper_student_shapes_from_vit_l14_config(tower, width, depth, expected, with_embeddings):
    config = load_config("ViT-L-14")  # meta device: no weights
    assert config.vision.width == 1024 and config.text.width == 768
    plan = make_plan(config, Target(tower=tower, width=width, depth=depth, depth_method="every-other"),
                     random_table(config, n_groups=32))
    stats = model_stats(plan.apply_config(config))[tower]
    got = stats["params_total"] if with_embeddings else stats["params"]
    assert abs(got - expected) / expected < 0.015, (got, expected)
    assert {b["attn_width"] for b in stats["blocks"]} == {width} and {b["mlp"] for b in stats["blocks"]} == {4 * width}


def test_apply_plan_on_meta_vit_l14_matches_counts():
    config = load_config("ViT-L-14")
    with torch.device("meta"):
        teacher = SlimCLIP(config, init=False)
    plan = make_plan(config, Target(tower="vision", width=384, depth=18, depth_method="every-other"),
                     random_table(config))
    student = apply_plan(teacher, plan)
    assert next(student.parameters()).is_meta
    assert sum(p.numel() for p in student.parameters()) == model_stats(student.config)["params_total"]
    assert student.visual.blocks[0].attn.qkv.weight.shape == (3 * 384, 1024)
    assert student.visual.blocks[0].mlp.c_proj.weight.shape == (1024, 1536)


def test_paper_budget_gives_the_paper_width():
    """86M block parameters at depth 18 is the paper's MoPE-CLIP base vision encoder: width 384."""
    config = load_config("ViT-L-14")
    plan = make_plan(config, Target(tower="vision", params=86_000_000, depth=18, depth_method="every-other"),
                     random_table(config))
    assert plan.info["widths"] == {"vision": 384}
    assert len(plan.vision.blocks) == 18 and plan.text == full_plan(config).text
