"""``mope export``: thin CLI over export_bundle; bad input is one clear line and exit code 2."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from typer.testing import CliRunner

from mope_deploy.cli.app import app
from mope_deploy.models import SlimCLIP
from mope_deploy.models.tiny import tiny_config

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("m") / "student"
    SlimCLIP(tiny_config()).eval().save(d)
    return d


def test_export_onnx_and_triton(model_dir, tmp_path):
    out = tmp_path / "bundle"
    r = runner.invoke(app, ["export", str(model_dir), "--out", str(out), "--format", "onnx", "--format", "triton",
                            "--batch-sizes", "1,4,8", "--exporter", "legacy", "--normalize"])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["formats"] == ["onnx", "triton"] and m["normalize"] is True
    assert m["batch_sizes"] == {"min": 1, "opt": 4, "max": 8}
    assert m["source"]["spec"] == str(model_dir)
    assert (out / "triton" / "clip_text_onnx" / "config.pbtxt").is_file()
    assert "parity" in r.output and "optimized" in r.output


@pytest.mark.parametrize("args, message", [
    (["--precision", "fp8"], "unknown precision 'fp8'"),
    (["--format", "coreml"], "unknown export format 'coreml'"),
    (["--batch-sizes", "1,x,8"], "MIN,OPT,MAX"),
    (["--precision", "int8"], "needs --eval-data"),
])
def test_bad_input_is_a_clear_error(model_dir, tmp_path, args, message):
    out = tmp_path / "bundle"
    r = runner.invoke(app, ["export", str(model_dir), "--out", str(out), *args])
    assert r.exit_code == 2
    assert message in " ".join(r.output.split())
    assert not out.exists()


def test_missing_tensorrt(model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    r = runner.invoke(app, ["export", str(model_dir), "--out", str(tmp_path / "b"), "--format", "tensorrt"])
    assert r.exit_code == 2 and "TensorRT is not installed" in " ".join(r.output.split())


def test_unknown_model(tmp_path):
    r = runner.invoke(app, ["export", str(tmp_path / "nope"), "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "not found" in " ".join(r.output.split())


def test_int8_with_eval_data(model_dir, tmp_path, flickr_dir):
    out = tmp_path / "bundle"
    r = runner.invoke(app, ["export", str(model_dir), "--out", str(out), "--precision", "int8", "--eval-data",
                            str(flickr_dir), "--eval-limit", "6", "--max-recall-drop", "100", "--exporter", "legacy"])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["eval"]["n_images"] == 6 and m["variants"]["int8"]["recall_gate"] == "passed"
    assert "Recall Mean" in r.output and "vs fp32" in r.output


def test_out_policy_refuses_a_users_folder_and_force_only_replaces_after_the_gates(model_dir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    base = ["export", str(model_dir), "--out", str(out), "--exporter", "legacy", "--no-optimize", "--no-fused"]
    r = runner.invoke(app, base)
    assert r.exit_code == 2 and "notes.txt" in " ".join(r.output.split())
    r = runner.invoke(app, [*base, "--force", "--atol", "1e-12"])  # refused by the parity gate: nothing replaced
    assert r.exit_code == 2 and "parity" in " ".join(r.output.split()).lower()
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "my notes"
    r = runner.invoke(app, [*base, "--force"])
    assert r.exit_code == 0, r.output
    assert not (out / "notes.txt").exists() and json.loads((out / "manifest.json").read_text())["schema_version"] == 3
