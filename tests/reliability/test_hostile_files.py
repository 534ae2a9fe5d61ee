"""Hostile or mislabelled files through the CLI (issue 22): a pickled open_clip checkpoint with a payload, a binary
file given as CSV/TSV/Karpathy JSON, and a tampered weight-sparsity record in a model config. Each is one line
naming the file and the problem, exit 2, no traceback, nothing under the watched folder changed, and never the
unsafe fix (weights_only=False) nor the wrong one (--csv-img-key)."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import pytest
import torch
from PIL import Image

from mope_deploy.models import load_model
from mope_deploy.sparsity import SparsifySpec, sparsify
from reliability_helpers import cli, runner
from mope_deploy.cli.app import app

ARCH = "ViT-S-32"   # the smallest plain open_clip ViT: the architecture builds, then the checkpoint is refused


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _checkpoints(tmp_path):
    marker = tmp_path.parent / f"{tmp_path.name}-payload-ran"
    return marker, {
        "payload-pickle": pickle.dumps({"state_dict": {"visual.proj": _Payload(marker)}}),
        "payload-torch-save": None,       # filled below: torch.save of an object (zip format, data.pkl inside)
        "not-a-torch-file": b"\x00\x01garbage" * 64,
        "empty": b"",
    }


@pytest.mark.parametrize("case", ["payload-pickle", "payload-torch-save", "not-a-torch-file", "empty"])
def test_hostile_open_clip_checkpoint_is_refused(case, tmp_path):
    marker, files = _checkpoints(tmp_path)
    ckpt = tmp_path / "ckpt.pt"
    if case == "payload-torch-save":
        torch.save({"state_dict": _Payload(marker)}, ckpt)
    else:
        ckpt.write_bytes(files[case])
    message = "cannot be loaded into" if case == "empty" else "not a plain weights checkpoint"
    r = cli(["eval", f"{ARCH}:{ckpt}", "--data", "synthetic", "-q"], str(ckpt), message, watch=tmp_path)
    assert "weights_only=False" not in "".join(r.output.split()) and "weights_only set to False" not in r.output
    assert not marker.exists(), "the payload ran"
    assert len(" ".join(r.output.split())) < 400                              # one line, not torch's page


# --------------------------------------------------------------------------------------- binary data files

@pytest.fixture
def binary_files(tmp_path):
    """Files that are not text under data-file names: a PNG, random bytes, a UTF-16 CSV."""
    png = tmp_path / "img.png"
    Image.new("RGB", (16, 16), (200, 30, 30)).save(png)
    return {"png": png.read_bytes(), "random": bytes(range(256)) * 8,
            "utf16": "image,caption\na.png,a photo\n".encode("utf-16")}


@pytest.mark.parametrize("name, expected", [("captions.csv", "CSV/TSV expected"), ("captions.tsv", "CSV/TSV expected"),
                                            ("dataset_flickr8k.json", "Karpathy-split JSON expected")])
@pytest.mark.parametrize("content", ["png", "random"])
def test_binary_file_given_as_data_is_named_not_text(name, expected, content, binary_files, good_model, tmp_path):
    data = tmp_path / "d" / name
    data.parent.mkdir()
    data.write_bytes(binary_files[content])
    r = cli(["eval", good_model, "--data", data, "-q"], f"{data} is not a text file", expected, watch=tmp_path)
    assert "--csv-img-key" not in r.output and "header" not in r.output


def test_binary_captions_csv_in_a_data_folder(binary_files, good_model, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "captions.csv").write_bytes(binary_files["png"])
    cli(["eval", good_model, "--data", tmp_path / "d", "-q"], "captions.csv is not a text file",
        "CSV/TSV expected", watch=tmp_path)


def test_utf16_csv_says_save_as_utf8(binary_files, good_model, tmp_path):
    data = tmp_path / "c.csv"
    data.write_bytes(binary_files["utf16"])
    cli(["eval", good_model, "--data", data, "-q"], "c.csv is UTF-16 text", "save it as UTF-8", watch=tmp_path)


# ------------------------------------------------------------------------------ tampered sparsity record

@pytest.fixture(scope="module")
def sparse_model(good_model, tmp_path_factory):
    """A sparsified, 'recovered' tiny model directory (the record as mope_deploy.sparsity writes it)."""
    model = load_model(good_model)
    sparsify(model, SparsifySpec(method="magnitude", sparsity=0.5), progress=False)
    model.config.sparsity = {**model.config.sparsity, "recovered": {
        "method": "sparselora", "rank": 4, "lora_towers": ["vision", "text"], "steps": 8,
        "loss": "(1-0.5)*itc+0.5*KL(T=1.0)"}}
    return model.save(tmp_path_factory.mktemp("sparse") / "m")


def _set(*path, value=None, delete=False):
    def edit(cfg):
        d = cfg
        for k in path[:-1]:
            d = d[k]
        if delete:
            del d[path[-1]]
        else:
            d[path[-1]] = value
    return edit


SPARSITY_CASES = {
    "recovered-string": (_set("sparsity", "recovered", value="yes"), "sparsity.recovered must be a mapping"),
    "recovered-empty": (_set("sparsity", "recovered", value={}), "sparsity.recovered is missing the fields 'method'"),
    "recovered-rank-float": (_set("sparsity", "recovered", "rank", value=4.5), "sparsity.recovered.rank must be an integer"),
    "recovered-unknown-method": (_set("sparsity", "recovered", "method", value="lora"), "sparsity.recovered.method"),
    "achieved-string": (_set("sparsity", "achieved", value="half"), "sparsity.achieved must be a finite number"),
    "target-over-one": (_set("sparsity", "target", value=1.5), "sparsity.target must be between 0 and 1"),
    "unknown-method": (_set("sparsity", "method", value="random"), "sparsity.method must be"),
    "bad-pattern": (_set("sparsity", "pattern", value="2:x"), "sparsity.pattern must be a string matching"),
    "blocks-not-numbers": (_set("sparsity", "blocks", "vision", value=["x"]), "sparsity.blocks.vision[0]"),
    "towers-unknown": (_set("sparsity", "towers", value=["audio"]), "sparsity.towers[0]"),
    "record-null": (_set("sparsity", value=None), "sparsity must be a mapping"),
    "unknown-key": (_set("sparsity", "recoverd", value=True), "unknown field(s) ['recoverd']"),
    "missing-method": (_set("sparsity", "method", delete=True), "sparsity is missing the field 'method'"),
}


def test_sparse_model_info_works(sparse_model):
    r = runner.invoke(app, ["info", str(sparse_model)])
    assert r.exit_code == 0, r.output
    assert "recovered with sparselora" in " ".join(r.output.split())


@pytest.mark.parametrize("case", sorted(SPARSITY_CASES))
def test_tampered_sparsity_record_is_named_before_any_table(case, sparse_model, tmp_path):
    edit, message = SPARSITY_CASES[case]
    model = tmp_path / "m"
    shutil.copytree(sparse_model, model)
    cfg = json.loads((model / "config.json").read_text())
    edit(cfg)
    (model / "config.json").write_text(json.dumps(cfg))
    r = cli(["info", model], "config.json", message, watch=tmp_path)
    assert "block params" not in r.output and "GFLOPs" not in r.output    # no half-printed tables


def test_other_preprocess_and_tokenizer_fields_are_validated(good_model, tmp_path):
    """The same schema covers the settings that travel with the weights (before: only 'is a mapping')."""
    for path, value, message in ((("preprocess", "mean"), "abc", "preprocess.mean must be a list"),
                                 (("preprocess", "std"), [0, 0, 0], "preprocess.std[0] must be between"),
                                 (("preprocess", "interpolation"), "nearest", "preprocess.interpolation"),
                                 (("tokenizer", "type"), "sentencepiece", "tokenizer.type"),
                                 (("tokenizer", "context_length"), "77", "tokenizer.context_length must be an integer")):
        model = tmp_path / "m"
        shutil.rmtree(model, ignore_errors=True)
        shutil.copytree(good_model, model)
        cfg = json.loads((model / "config.json").read_text())
        _set(*path, value=value)(cfg)
        (model / "config.json").write_text(json.dumps(cfg))
        cli(["info", model], message, watch=tmp_path)
