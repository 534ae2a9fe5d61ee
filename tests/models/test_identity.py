"""Each identity hash is computed one way (models.identity) and every caller uses it."""

from __future__ import annotations

import copy
import hashlib
import json

import torch

from mope_deploy.importance import model_hash as table_model_hash
from mope_deploy.models import SlimCLIP
from mope_deploy.models.identity import (file_sha256, model_hash, plan_hash, provenance_plan_hash, weights_hash)
from mope_deploy.models.tiny import tiny_config
from mope_deploy.pruning import Target, make_plan


def _model(seed=0):
    torch.manual_seed(seed)
    return SlimCLIP(tiny_config()).eval()


def test_file_sha256_is_plain_sha256(tmp_path):
    p = tmp_path / "f.bin"
    data = bytes(range(256)) * 5000  # > one read chunk
    p.write_bytes(data)
    assert file_sha256(p) == hashlib.sha256(data).hexdigest()
    assert file_sha256(p, chunk=7) == file_sha256(p)


def test_weights_hash_sees_values_and_dtypes_and_is_the_score_tables_hash():
    a, b = _model(0), _model(0)
    assert weights_hash(a) == weights_hash(b) and len(weights_hash(a)) == 16
    with torch.no_grad():
        next(b.parameters()).view(-1)[0] += 1e-3
    assert weights_hash(a) != weights_hash(b)
    assert weights_hash(copy.deepcopy(a).half()) != weights_hash(a)
    assert table_model_hash(a) == model_hash(a) == f"{a.config.arch_hash()}:{weights_hash(a)}"


def test_plan_hash_is_one_definition_and_ignores_info():
    from mope_deploy.importance import score

    m = _model()
    plan = make_plan(m.config, Target(width=32, depth=1, depth_method="every-other"),
                     score(m, method="magnitude", n_groups=4), teacher="tiny")
    d = plan.to_dict()
    assert plan.hash() == plan_hash(d)
    described = {**d, "info": {**d.get("info", {}), "note": "made on a Tuesday"}}
    assert plan_hash(described) == plan_hash(d)  # info describes how, not what: same kept indices, same hash
    changed = json.loads(json.dumps(d))
    changed["vision"]["heads"][0] = changed["vision"]["heads"][0][:-1]  # one head fewer kept
    assert plan_hash(changed) != plan_hash(d)
    pruned = plan.apply_config(m.config)
    assert provenance_plan_hash(pruned.provenance) == plan.hash()
    assert provenance_plan_hash({"plan": described}) == plan.hash()  # an embedded plan hashes the same way
    assert provenance_plan_hash({}) is None
