"""``mope bench``: table, JSON and plot on a tiny model; --paper on a tiny stand-in teacher; clear errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mope_deploy.cli.app import app

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    import torch

    from mope_deploy.models import SlimCLIP
    from mope_deploy.models.tiny import tiny_config

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("clibench")
    SlimCLIP(tiny_config()).save(root / "tiny")
    SlimCLIP(tiny_config(width=128, heads=8, head_dim=16, depth=4)).save(root / "teacher")
    return root


def test_bench_table_json_plot(tiny_dirs, tmp_path):
    j, p = tmp_path / "r.json", tmp_path / "r.png"
    res = runner.invoke(app, ["bench", str(tiny_dirs / "tiny"), str(tiny_dirs / "teacher"), "--backend", "torch",
                              "--batch-sizes", "1,2", "--interleave",
                              "--warmup", "0", "--iters", "2", "--threads", "1", "--device", "cpu", "--json", str(j),
                              "--plot", str(p), "-q"])
    assert res.exit_code == 0, res.output
    assert "vision tower" in res.output and "text tower" in res.output and "torch" in res.output
    report = json.loads(j.read_text())
    assert len(report["results"]) == 8 and report["settings"]["iters"] == 2 and report["settings"]["interleaved"]
    assert {r["model"] for r in report["results"]} == {"tiny", "teacher"}
    assert report["environment"]["versions"]["torch"]
    assert p.read_bytes()[:4] == b"\x89PNG"


def test_bench_paper_on_stand_in(tiny_dirs, tmp_path):
    j = tmp_path / "paper.json"
    res = runner.invoke(app, ["bench", "--paper", "--teacher", str(tiny_dirs / "teacher"), "--warmup", "0",
                              "--iters", "1", "--threads", "1", "--device", "cpu", "--json", str(j), "-q"])
    assert res.exit_code == 0, res.output
    assert "CPU run: batch 8 instead of the paper's 64" in res.output
    assert "Table 7 here: torch, batch 8" in res.output and "ViT-L/14" in res.output and "small" in res.output
    report = json.loads(j.read_text())
    rows = report["paper_table"]
    assert [r["model"] for r in rows] == ["CLIP-ViT-L/14", "MoPE-CLIP large", "MoPE-CLIP base", "MoPE-CLIP small"]
    assert {"model", "params", "gflops", "latency_ms", "speedup", "flop_ratio", "paper_latency_ms",
            "paper_speedup"} <= set(rows[0])
    assert report["paper"]["batch"] == 8 and report["paper"]["backend"] == "torch"
    assert all(r["batch"] == 8 and r["backend"] == "torch" for r in rows)


@pytest.mark.parametrize("args, message", [
    (["--backend", "jax"], "unknown backend 'jax'"),
    (["--batch-sizes", "1,x"], "positive integers"),
    (["--plot", "out.jpg"], "PNG"),
    (["--paper"], "--paper builds its own models"),
    (["--reference", "open_clip"], "only applies with --paper"),
])
def test_bad_input_is_one_clear_line(tiny_dirs, args, message):
    res = runner.invoke(app, ["bench", str(tiny_dirs / "tiny"), *args])
    assert res.exit_code == 2
    assert message in res.output


def test_missing_model_is_clear():
    res = runner.invoke(app, ["bench", "no/such/model_dir", "--iters", "1", "-q"])
    assert res.exit_code == 2 and "not found" in res.output
    res = runner.invoke(app, ["bench"])
    assert res.exit_code == 2 and "no MODEL given" in res.output
