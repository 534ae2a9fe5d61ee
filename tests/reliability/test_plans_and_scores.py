"""Foreign or tampered pruning plans and score tables through `mope prune`: refused with the key named,
before any model is written (a tampered table with the right hash can no longer prune block 0 to one head)."""

from __future__ import annotations

import json

import pytest

from mope_deploy.importance import magnitude_table
from mope_deploy.models import load_model
from mope_deploy.pruning.plan import Target, make_plan
from reliability_helpers import cli


@pytest.fixture(scope="module")
def plan_json(good_model) -> dict:
    model = load_model(good_model)
    return json.loads(make_plan(model.config, Target(depth=1, depth_method="top")).to_json())


@pytest.fixture(scope="module")
def table_json(good_model) -> dict:
    return magnitude_table(load_model(good_model), ("vision", "text"), 4).to_dict()


def _edit(path: str, value):
    def edit(root):
        *keys, last = path.split(".")
        d = root
        for k in keys:
            d = d[int(k)] if k.isdigit() else d[k]
        d[int(last) if last.isdigit() else last] = value
        return root
    return edit


PLAN_CASES = {
    "float-index": (_edit("vision.heads.0.1", 1.5), "vision.heads[0][1]: 1.5 is not an integer index"),
    "string-index": (_edit("text.neurons.0.0", "0"), "text.neurons[0][0]: '0' is not an integer index"),
    "bool-block": (_edit("vision.blocks.0", True), "vision.blocks[0]: True is not an integer index"),
    "index-out-of-range": (_edit("text.heads.0", [0, 1, 2, 9]), "text block 0 heads"),
    "block-out-of-range": (_edit("vision.blocks", [5]), "vision: kept blocks [5] must be increasing indices in 0..1"),
    "foreign-teacher": (_edit("teacher_arch_hash", "0123456789abcdef"), "made for a teacher with arch hash"),
    "no-version": (_edit("version", None), "plan format version None"),
    "tower-not-mapping": (_edit("text", [1, 2]), "text must be a mapping"),
    "heads-not-list": (_edit("vision.heads", "all"), "vision.heads must be a list"),
    "json-list": (lambda d: [d], "is not a pruning plan"),
}


@pytest.mark.parametrize("case", sorted(PLAN_CASES))
def test_bad_plan_names_the_key(case, plan_json, good_model, tmp_path):
    edit, message = PLAN_CASES[case]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(edit(json.loads(json.dumps(plan_json)))))
    cli(["prune", good_model, "--plan", plan, "--out", tmp_path / "small"], message, watch=tmp_path)


def test_unreadable_plan_files(good_model, tmp_path):
    (tmp_path / "bad.json").write_bytes(b"\xff\xfe{")
    cli(["prune", good_model, "--plan", tmp_path / "bad.json", "--out", tmp_path / "s"], "bad.json",
        "not valid JSON", watch=tmp_path)
    cli(["prune", good_model, "--plan", tmp_path / "none.json", "--out", tmp_path / "s"], "none.json", "not found",
        watch=tmp_path)


def _one_head_per_block(d):
    for scores in d["towers"]["vision"]["head"]:
        del scores[1:]
    return d


def _drop_block(d):
    for key in ("head", "neuron", "layer", "neuron_order"):
        d["towers"]["text"][key].pop()
    return d


SCORE_CASES = {
    "one-head-score-per-block": (_one_head_per_block, "vision block 0: 1 head scores for 4 heads"),
    "nan-score": (_edit("towers.text.head.1.2", float("nan")), "text.head[1][2]: score nan is not a finite"),
    "string-score": (_edit("towers.vision.layer.0", "high"), "vision.layer[0]: score 'high'"),
    "fewer-blocks": (_drop_block, "text: the score table covers 1 blocks but the model has 2"),
    "foreign-model": (_edit("model_hash", "0123456789abcdef:00"), "arch hash 0123456789abcdef"),
    "order-not-permutation": (_edit("towers.vision.neuron_order.0.0", 1), "vision block 0: neuron_order is not"),
    "float-neuron-index": (_edit("towers.vision.neuron_order.1.3", 2.0), "vision.neuron_order[1][3]"),
    "group-count-mismatch": (_edit("n_groups", 8), "vision block 0: 4 neuron-group scores"),
    "towers-not-mapping": (_edit("towers", ["vision"]), "'towers' must map"),
    "unknown-method": (_edit("method", "oracle"), "unknown scoring method 'oracle'"),
}


@pytest.mark.parametrize("case", sorted(SCORE_CASES))
def test_bad_score_table_names_the_key(case, table_json, good_model, tmp_path):
    edit, message = SCORE_CASES[case]
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps(edit(json.loads(json.dumps(table_json)))))
    cli(["prune", good_model, "--scores", scores, "--method", "magnitude", "--width", "32",
         "--out", tmp_path / "small"], message, watch=tmp_path)


def test_untampered_table_still_prunes(table_json, good_model, tmp_path):
    """The control: the same table unedited passes every check above."""
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps(table_json))
    cli(["prune", good_model, "--scores", scores, "--method", "magnitude", "--width", "32",
         "--out", tmp_path / "small"], "wrote", watch=good_model, code=0)
    assert load_model(tmp_path / "small").config.vision.blocks[0].heads == 2
