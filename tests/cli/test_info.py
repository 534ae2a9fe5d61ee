"""`mope info` on a saved directory and an open_clip name, table and JSON forms."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from mope_deploy.cli.app import app
from mope_deploy.models import model_stats

runner = CliRunner()


def test_info_json_on_saved_dir(tiny_model, tmp_path):
    d = tiny_model.save(tmp_path / "m")
    res = runner.invoke(app, ["info", str(d), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert set(data) == {"vision", "text", "params", "params_total", "gflops"}
    assert data == json.loads(json.dumps(model_stats(tiny_model.config)))
    assert [b["heads"] for b in data["vision"]["blocks"]] == [4, 4]


def test_info_table_on_open_clip_name():
    res = runner.invoke(app, ["info", "ViT-B-32"])
    assert res.exit_code == 0, res.output
    assert "vision: width 768, 12 blocks" in res.output and "GFLOPs" in res.output


def test_info_bad_model_is_a_clear_error():
    res = runner.invoke(app, ["info", "not-a-model"])
    assert res.exit_code == 2
    assert "not found" in res.output
