"""config.json + model.safetensors are one unit: the weights name the config text they were saved with."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open
from safetensors.torch import load, save_file

from mope_deploy.models import SlimCLIP, load_model, save_model
from mope_deploy.models.io import CONFIG_FILE, WEIGHTS_FILE, ModelFileError, replace_model_files
from mope_deploy.models.tiny import tiny_config


def _model(seed: int) -> SlimCLIP:
    import torch
    torch.manual_seed(seed)
    return SlimCLIP(tiny_config()).eval()


def test_saved_pair_loads_bit_exactly(tmp_path):
    m = _model(0)
    back = load_model(save_model(m, tmp_path / "m"))
    for k, v in m.state_dict().items():
        assert (back.state_dict()[k] == v).all()


def test_half_replaced_pair_is_refused(tmp_path):
    """A write interrupted between the two files: new config beside old weights (simulated by restoring the
    old weights file after a replace that changed the config text)."""
    d = save_model(_model(0), tmp_path / "m")
    old_weights = (d / WEIGHTS_FILE).read_bytes()
    small = _model(1)
    small.config.provenance = {"note": "another"}   # same shapes, different config text
    replace_model_files(small, d)
    (d / WEIGHTS_FILE).write_bytes(old_weights)
    with pytest.raises(ModelFileError, match="not the config"):
        load_model(d)


def test_replace_model_files_replaces_both(tmp_path):
    d = save_model(_model(0), tmp_path / "m")
    new = _model(2)
    replace_model_files(new, d)
    back = load_model(d)
    for k, v in new.state_dict().items():
        assert (back.state_dict()[k] == v).all()
    with safe_open(str(d / WEIGHTS_FILE), framework="pt") as f:
        assert "config_sha256" in f.metadata()


def test_files_without_the_hash_still_load(tmp_path):
    """Model directories written before the pair check (no config_sha256 in the metadata) stay readable."""
    d = save_model(_model(0), tmp_path / "m")
    state = load((d / WEIGHTS_FILE).read_bytes())
    save_file(state, str(d / WEIGHTS_FILE), metadata={"format": "pt"})
    cfg = json.loads((d / CONFIG_FILE).read_text())
    (d / CONFIG_FILE).write_text(json.dumps(cfg))             # reformatted text: no hash to compare with
    load_model(d)
