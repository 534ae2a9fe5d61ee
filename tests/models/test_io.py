"""Model files: bit-exact round trip, atomic save, and clear errors for bad directories."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mope_deploy.models import ModelFileError, load, load_model, save_model
from mope_deploy.atomic import atomic_dir
from mope_deploy.models.io import CONFIG_FILE, WEIGHTS_FILE, model_dir_owner


def test_round_trip_is_bit_exact(tiny_model, tmp_path):
    out = tiny_model.save(tmp_path / "m")
    assert sorted(p.name for p in out.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    back = load_model(out)
    a, b = tiny_model.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert back.config == tiny_model.config
    assert json.loads((out / CONFIG_FILE).read_text())["provenance"] == {"source": "tiny"}
    assert torch.equal(load(str(out)).encode_image(torch.ones(1, 3, 32, 32)),
                       tiny_model.encode_image(torch.ones(1, 3, 32, 32)))


def test_fp16_weights_keep_their_dtype(tiny_model, tmp_path):
    tiny_model.half().save(tmp_path / "h")
    assert load_model(tmp_path / "h").visual.proj.dtype == torch.float16
    assert load(str(tmp_path / "h")).visual.proj.dtype == torch.float32


def test_mismatched_weights_name_file_and_tensor(tiny_model, tmp_path):
    d = tiny_model.save(tmp_path / "m")
    cfg = json.loads((d / CONFIG_FILE).read_text())
    cfg["vision"]["blocks"][1]["heads"] = 2
    (d / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ModelFileError, match=r"model.safetensors.*visual\.blocks\.1\.attn\.qkv\.weight.*\(192, 64\)"):
        load_model(d)


def test_missing_and_extra_tensors(tiny_model, tmp_path):
    d = tiny_model.save(tmp_path / "m")
    state = load_file(str(d / WEIGHTS_FILE))
    state.pop("text.ln_final.bias")
    save_file(state, str(d / WEIGHTS_FILE))
    with pytest.raises(ModelFileError, match="text.ln_final.bias.*missing"):
        load_model(d)
    state["text.ln_final.bias"] = torch.zeros(64)
    state["bogus"] = torch.zeros(1)
    save_file(state, str(d / WEIGHTS_FILE))
    with pytest.raises(ModelFileError, match="'bogus'"):
        load_model(d)


def test_truncated_file_is_reported(tiny_model, tmp_path):
    d = tiny_model.save(tmp_path / "m")
    data = (d / WEIGHTS_FILE).read_bytes()
    (d / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="model.safetensors.*(corrupt|truncated)"):
        load_model(d)


def test_missing_or_invalid_config(tmp_path):
    with pytest.raises(ModelFileError, match="config.json not found"):
        load_model(tmp_path)
    (tmp_path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(ModelFileError, match="not a valid model config"):
        load_model(tmp_path)


def test_save_is_atomic_and_replaces(tiny_model, tmp_path):
    target = tmp_path / "m"
    tiny_model.save(target)
    with pytest.raises(RuntimeError):
        with atomic_dir(target, owner=model_dir_owner()) as tmp:   # a model directory may be replaced
            (tmp / "half").write_text("x")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in target.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temp dir left behind
    save_model(tiny_model, target, extra_files={"plan.json": "{}"})
    assert (target / "plan.json").read_text() == "{}"


def test_saved_files_are_readable_by_others(tiny_model, tmp_path):
    import os
    import stat

    d = tiny_model.save(tmp_path / "m")
    umask = os.umask(0)
    os.umask(umask)
    for p in (d, d / WEIGHTS_FILE, d / CONFIG_FILE):
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode & 0o044 == 0o044 & ~umask, (p, oct(mode))
