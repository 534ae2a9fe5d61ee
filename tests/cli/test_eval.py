"""``mope eval`` end to end through typer's CliRunner on a tiny saved model."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mope_deploy.cli.app import app
from mope_deploy.data.datasets import load_dataset
from mope_deploy.eval.retrieval import METRIC_KEYS, evaluate

runner = CliRunner()


@pytest.fixture
def csv_data(caption_csv, noise_images):
    caps = [[f"photo {i} first caption", f"photo {i} second caption"] for i in range(4)]
    return caption_csv(noise_images(4), caps, extra_rows=["missing.png,nobody"])


def _png(i: int) -> bytes:
    g = torch.Generator().manual_seed(i)
    buf = io.BytesIO()
    Image.fromarray((torch.rand(36, 36, 3, generator=g) * 255).to(torch.uint8).numpy()).save(buf, format="PNG")
    return buf.getvalue()


def test_eval_csv_writes_json_matching_the_library(model_dir, csv_data, tmp_path, tiny_model):
    out = tmp_path / "res" / "eval.json"
    r = runner.invoke(app, ["eval", str(model_dir), "--data", str(csv_data), "--json", str(out), "-q", "-b", "3"])
    assert r.exit_code == 0, r.output
    assert "Recall Mean" in r.output and "4 images, 8 captions" in r.output
    res = json.loads(out.read_text())
    for k in (*METRIC_KEYS, "n_images", "n_captions"):
        assert k in res
    assert res["n_images"] == 4 and res["n_captions"] == 8 and res["n_skipped"] == 1
    assert res["skipped"]["counts"] == {"missing image": 1}
    ref = evaluate(tiny_model, load_dataset(csv_data), progress=False)
    assert {k: res[k] for k in METRIC_KEYS} == pytest.approx({k: ref[k] for k in METRIC_KEYS})
    assert not [p for p in out.parent.iterdir() if p.name != "eval.json"]     # no temp files left behind


def test_eval_karpathy_json_and_webdataset(model_dir, tmp_path):
    (tmp_path / "images").mkdir()
    entries = []
    for i in range(3):
        (tmp_path / "images" / f"{i}.png").write_bytes(_png(i))
        entries.append({"filename": f"{i}.png", "split": "test" if i else "val",
                        "sentences": [{"raw": f"caption {i}"}, {"raw": f"other caption {i}"}]})
    (tmp_path / "k.json").write_text(json.dumps({"images": entries}))
    out = tmp_path / "k_out.json"
    r = runner.invoke(app, ["eval", str(model_dir), "--data", str(tmp_path / "k.json"), "--split", "test", "-q",
                            "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["n_images"] == 2 and json.loads(out.read_text())["split"] == "test"

    shards = tmp_path / "shards"
    shards.mkdir()
    for s in range(2):
        with tarfile.open(shards / f"{s:03d}.tar", "w") as tf:
            for i in range(2):
                for ext, data in (("png", _png(10 * s + i)), ("txt", f"shard {s} item {i}".encode())):
                    info = tarfile.TarInfo(f"{s:05d}{i:04d}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    r = runner.invoke(app, ["eval", str(model_dir), "--data", str(shards / "{000..001}.tar"), "-q",
                            "--json", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["n_images"] == 4 and res["n_captions"] == 4 and 0 <= res["recall_mean"] <= 100


def test_eval_zeroshot(model_dir, tmp_path):
    for c, name in enumerate(["cat", "dog", "bird"]):
        (tmp_path / "zs" / name).mkdir(parents=True)
        for i in range(2):
            (tmp_path / "zs" / name / f"{i}.png").write_bytes(_png(c * 10 + i))
    out = tmp_path / "zs.json"
    r = runner.invoke(app, ["eval", str(model_dir), "--data", str(tmp_path / "zs"), "--task", "zeroshot", "-q",
                            "--json", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["task"] == "zeroshot" and res["n_images"] == 6 and res["n_classes"] == 3
    assert 0 <= res["top1"] <= res["top5"] == 100.0


def test_eval_errors_are_one_clear_line(model_dir, tmp_path, csv_data):
    def run(*args):
        r = runner.invoke(app, ["eval", *map(str, args)])
        return r.exit_code, " ".join(r.output.split())             # rich wraps long lines

    code, out = run(model_dir, "--data", tmp_path / "nope.csv")
    assert code == 2 and "nope.csv not found" in out
    code, out = run(tmp_path / "no_model", "--data", csv_data)
    assert code == 2 and "not found" in out and "Traceback" not in out
    (tmp_path / "empty.csv").write_text("image,caption\ngone.png,x\n")
    code, out = run(model_dir, "--data", tmp_path / "empty.csv")
    assert code == 2 and "empty" in out and "gone.png" in out
