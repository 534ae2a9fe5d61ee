"""Bad model directories: every config field typed and range-checked, the safetensors header compared with
the shapes the config implies before anything is allocated, and nothing ever unpickled."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load, save_file

from reliability_helpers import cli


def _set(path: str, value):
    def edit(cfg: dict) -> None:
        *keys, last = path.split(".")
        d = cfg
        for k in keys:
            d = d[int(k)] if k.isdigit() else d[k]
        last = int(last) if last.isdigit() else last
        if value is _DELETE:
            del d[last]
        else:
            d[last] = value
    return edit


_DELETE = object()

CONFIG_CASES = {
    "float-width-1e9": (_set("vision.width", 1e9), "vision.width must be an integer"),
    "huge-int-width": (_set("text.width", 10**9), "text.width must be between 1 and 65536"),
    "float-width": (_set("vision.width", 64.0), "vision.width must be an integer"),
    "zero-patch-size": (_set("vision.patch_size", 0), "vision.patch_size must be between 1"),
    "string-heads": (_set("vision.blocks.0.heads", "4"), "vision.blocks[0].heads must be an integer"),
    "negative-vocab": (_set("text.vocab_size", -1), "text.vocab_size"),
    "zero-context": (_set("text.context_length", 0), "text.context_length"),
    "eos-outside-vocab": (_set("text.eos_id", 10**6), "text.eos_id"),
    "bool-embed-dim": (_set("embed_dim", True), "embed_dim must be an integer"),
    "unknown-field": (_set("vision.heads_total", 3), "unknown field(s) ['heads_total']"),
    "missing-width": (_set("text.width", _DELETE), "text is missing the field 'width'"),
    "blocks-not-list": (_set("vision.blocks", {"heads": 4}), "vision.blocks must be a list"),
    "block-not-mapping": (_set("text.blocks.1", 7), "text.blocks[1] must be a mapping"),
    "bad-activation": (_set("vision.act", "relu"), "vision.act"),
    "string-ln-eps": (_set("text.ln_eps", "1e-5"), "text.ln_eps"),
    "ln-pre-string": (_set("vision.ln_pre", "yes"), "vision.ln_pre must be true or false"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_config_field_is_named(case, good_model, tmp_path):
    edit, message = CONFIG_CASES[case]
    model = tmp_path / "m"
    shutil.copytree(good_model, model)
    cfg = json.loads((model / "config.json").read_text())
    edit(cfg)
    (model / "config.json").write_text(json.dumps(cfg))
    cli(["info", model], "config.json", message, watch=tmp_path)
    # the same check guards loading the weights (prune loads the model first): no out folder appears
    cli(["prune", model, "--depth", "1", "--depth-method", "top", "--out", tmp_path / "small"], message,
        watch=tmp_path)


@pytest.mark.parametrize("content, message", [
    (b"{not json", "not a valid model config"),
    (b"[1, 2, 3]", "a config is a mapping"),
    (b'{"embed_dim": 32, "vision": {"\xff\xfe": 1}}', "not a valid model config"),
], ids=["not-json", "json-list", "not-utf8"])
def test_unreadable_config_json(content, message, good_model, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(good_model, model)
    (model / "config.json").write_bytes(content)
    cli(["info", model], "config.json", message, watch=tmp_path)


def _weights(model, edit):
    state = load((model / "model.safetensors").read_bytes())     # in memory: the file is rewritten below
    out = edit(state)
    if out is not None:
        state = out
    save_file(state, str(model / "model.safetensors"))


def _pickle_disguised(model):
    state = load((model / "model.safetensors").read_bytes())
    torch.save(state, model / "model.safetensors")      # a pickle under the safetensors name: never unpickled


def _truncate(model):
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[: len(data) // 2])


def _directory(model):
    (model / "model.safetensors").unlink()
    (model / "model.safetensors").mkdir()


def _huge_config(model):
    cfg = json.loads((model / "config.json").read_text())   # in range, but 60000-wide: the header must refuse it
    cfg["vision"]["width"] = 60000
    (model / "config.json").write_text(json.dumps(cfg))


WEIGHT_CASES = {
    "truncated": (_truncate, "corrupt or truncated"),
    "pickle-disguised": (_pickle_disguised, "corrupt or truncated"),
    "empty-file": (lambda m: (m / "model.safetensors").write_bytes(b""), "corrupt or truncated"),
    "missing-file": (lambda m: (m / "model.safetensors").unlink(), "model.safetensors not found"),
    "a-directory": (_directory, "model.safetensors not found"),
    "all-int8": (lambda m: _weights(m, lambda s: {k: v.to(torch.int8) for k, v in s.items()}),
                 "is stored as I8, which the model cannot hold"),
    "bool-tensor": (lambda m: _weights(m, lambda s: s.update(logit_scale=torch.tensor(True))),
                    "'logit_scale' is stored as BOOL"),
    "wrong-shape": (lambda m: _weights(m, lambda s: s.update({"visual.proj": torch.zeros(3, 3)})),
                    "'visual.proj' has shape (3, 3)"),
    "missing-tensor": (lambda m: _weights(m, lambda s: {k: v for k, v in s.items() if k != "text.token_embedding.weight"}),
                       "'text.token_embedding.weight' missing"),
    "extra-tensor": (lambda m: _weights(m, lambda s: s.update(backdoor=torch.zeros(1))),
                     "'backdoor' is not part of the model"),
    "config-implies-huge-shapes": (_huge_config, "config.json implies"),
}


@pytest.mark.parametrize("case", sorted(WEIGHT_CASES))
def test_bad_weights_are_refused_before_use(case, good_model, tmp_path):
    edit, message = WEIGHT_CASES[case]
    model = tmp_path / "m"
    shutil.copytree(good_model, model)
    edit(model)
    cli(["prune", model, "--depth", "1", "--depth-method", "top", "--out", tmp_path / "small"], "model.safetensors",
        message, watch=tmp_path)


def test_missing_model_dir_is_one_line(tmp_path):
    cli(["info", tmp_path / "nope"], "not found", watch=tmp_path)
