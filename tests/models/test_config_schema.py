"""The one schema of config.json (ConfigFields): every field checked on load and on validate(), the sparsity record
included; the on-disk format is unchanged (the shipped demo teacher and configs built in code still load)."""

from __future__ import annotations

import copy
import json

import pytest

from mope_deploy.models.config import CLIPConfig, ConfigError, check_fields
from mope_deploy.models.schema import ConfigFields
from mope_deploy.models.io import read_config
from mope_deploy.models.registry import DEMO_DIR
from mope_deploy.models.tiny import tiny_config

SPARSE = {"method": "wanda", "pattern": "2:4", "target": 0.5, "achieved": 0.5, "towers": ["vision", "text"],
          "spec": {"method": "wanda"}, "blocks": {"vision": [0.5, None], "text": [0.5, 0.5]},
          "recovered": {"method": "sparselora", "rank": 4, "lora_towers": ["vision"], "steps": 8, "loss": "kd"}}


def test_shipped_demo_config_loads_and_round_trips():
    raw = json.loads((DEMO_DIR / "config.json").read_text())
    cfg = read_config(DEMO_DIR)
    assert cfg.to_dict() == {**raw, "sparsity": raw.get("sparsity", {})}       # nothing added or changed


def test_sparse_config_round_trips_unchanged():
    d = {**tiny_config().to_dict(), "sparsity": SPARSE}
    cfg = CLIPConfig.from_dict(copy.deepcopy(d))
    assert cfg.sparsity == SPARSE and cfg.to_dict() == d
    assert CLIPConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.arch_hash() == tiny_config().arch_hash()          # sparsity is not architecture


def test_validate_uses_the_same_schema_as_loading():
    cfg = tiny_config()
    cfg.preprocess = {**cfg.preprocess, "mean": (0.5, 0.5, 0.5)}      # tuples from code are fine (JSON lists)
    assert cfg.validate() is cfg
    cfg.sparsity = {**SPARSE, "recovered": "yes"}
    with pytest.raises(ConfigError, match="sparsity.recovered must be a mapping"):
        cfg.validate()
    cfg.sparsity = {}
    cfg.provenance = {"step": object()}
    with pytest.raises(ConfigError, match="not plain JSON"):
        cfg.validate()


@pytest.mark.parametrize("path, value, message", [
    ("vision.width", 64.0, "vision.width must be an integer, got 64.0 (float)"),
    ("text.ln_eps", float("nan"), "text.ln_eps must be a finite number"),
    ("vision.patch_size", 7, "vision.patch_size must divide image_size 32, got 7"),
    ("text.eos_id", 49408, "text.eos_id must be between 0 and 49407"),
    ("vision.blocks.1.source", 0, "vision.blocks: sources must be strictly increasing"),
    ("logit_bias", "no", "logit_bias must be true or false"),
    ("preprocess.resize_mode", "crop", "preprocess.resize_mode must be 'shortest', 'longest' or 'squash'"),
    ("tokenizer.type", "bpe", "tokenizer.bpe_file must name the BPE merges file"),
    ("sparsity", {**SPARSE, "achieved": 2}, "sparsity.achieved must be between 0 and 1, got 2"),
    ("sparsity", {**SPARSE, "recovered": {**SPARSE["recovered"], "lora_towers": ["image"]}},
     "sparsity.recovered.lora_towers[0] must be 'vision' or 'text'"),
])
def test_bad_field_is_named(path, value, message):
    d = tiny_config().to_dict()
    *keys, last = path.split(".")
    node = d
    for k in keys:
        node = node[int(k)] if k.isdigit() else node[k]
    node[int(last) if last.isdigit() else last] = value
    with pytest.raises(ConfigError) as e:
        CLIPConfig.from_dict(d)
    assert message in str(e.value)


def test_several_unknown_or_missing_fields_are_listed_together():
    d = tiny_config().to_dict()
    d["vision"].update(heads_total=3, depth=2)
    del d["text"]["width"], d["text"]["head_dim"]
    with pytest.raises(ConfigError, match=r"vision: unknown field\(s\) \['depth', 'heads_total'\]; allowed: \["):
        CLIPConfig.from_dict(copy.deepcopy(d))
    d["vision"] = tiny_config().to_dict()["vision"]
    with pytest.raises(ConfigError, match="text is missing the fields 'width', 'head_dim'"):
        CLIPConfig.from_dict(d)


def test_schema_is_the_dataclass_fields():
    """ConfigFields and CLIPConfig name the same fields (one schema: a field added to one is added to the other)."""
    import dataclasses

    from mope_deploy.models.config import BlockConfig, TextConfig, VisionConfig
    from mope_deploy.models.schema import BlockFields, TextFields, VisionFields

    for dc, schema in ((CLIPConfig, ConfigFields), (VisionConfig, VisionFields), (TextConfig, TextFields),
                       (BlockConfig, BlockFields)):
        assert {f.name for f in dataclasses.fields(dc)} == set(schema.model_fields), dc.__name__
    assert check_fields(tiny_config().to_dict()).vision.width == 64
