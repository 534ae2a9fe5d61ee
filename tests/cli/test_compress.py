"""`mope compress` through the CLI: a tiny recipe end to end, the before/after table, and clear errors."""

from __future__ import annotations

import json

import yaml
from PIL import Image
from typer.testing import CliRunner

from mope_deploy.cli.app import app

runner = CliRunner()


def test_compress_cli_runs_a_recipe_and_prints_the_table(tiny_model, tmp_path, caption_csv):
    images = [Image.new("RGB", (40, 40), rgb) for rgb in [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]]
    data = str(caption_csv(images, [[f"colour {i}", f"square number {i}"] for i in range(4)], header="filepath,title"))
    recipe = {"name": "cli-tiny", "teacher": str(tiny_model.save(tmp_path / "teacher")), "stage": "pretraining",
              "data": {"train": data, "val": data, "test": data, "train_split": "test", "val_split": "test"},
              "prune": {"vision": {"width": 32}, "text": {"width": 32}, "method": "magnitude", "neuron_groups": 4},
              "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 4}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    res = runner.invoke(app, ["compress", str(path), "--out", str(out), "--quiet", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "teacher vs student" in res.output and "recall_mean" in res.output
    report = json.loads((out / "report.json").read_text())
    assert report["student"]["params"] < report["teacher"]["params"]
    stamp = (out / "state.json").stat().st_mtime_ns
    res = runner.invoke(app, ["compress", str(path), "--out", str(out), "--quiet"])  # resumes: nothing to redo
    assert res.exit_code == 0 and (out / "state.json").stat().st_mtime_ns == stamp
    assert "already done" in res.output
    res = runner.invoke(app, ["compress", str(path), "--out", str(out), "--quiet", "--restart"])
    assert res.exit_code == 0 and (out / "state.json").stat().st_mtime_ns != stamp


def test_compress_cli_bad_recipe_is_one_clear_line(tmp_path):
    res = runner.invoke(app, ["compress", "no-such-recipe"])
    assert res.exit_code == 2 and "not found" in res.output and "demo" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nteacher: demo\nstage: pretraining\nbogus: 1\n")
    res = runner.invoke(app, ["compress", str(bad)])
    assert res.exit_code == 2 and "bogus: unknown key" in res.output
