"""SIGTERM / SIGINT to a real `mope` process in the middle of a write: the temporary folder is removed, the
previous output and the user's files stay byte-identical, and an interrupted compress run resumes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from mope_deploy.models import save_model
from reliability_helpers import app, runner, tree

HERE = Path(__file__).parent
pytestmark = pytest.mark.slow


_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_leftover_process():
    yield
    while _STARTED:                          # a failed test must not leave its sleeping writer behind
        p = _STARTED.pop()
        if p.poll() is None:
            p.kill()
            p.wait(timeout=30)


def _start(point: str, *args) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, str(HERE / "interruptible.py"), point, *map(str, args)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _STARTED.append(p)
    return p


def _wait_ready(p: subprocess.Popen, timeout: float = 240) -> None:
    t0 = time.monotonic()
    for line in p.stdout:                   # READY is printed inside the atomic write
        if line.strip() == "READY":
            return
        assert time.monotonic() - t0 < timeout
    pytest.fail(f"process ended before the write: {p.wait()} {p.stderr.read()}")


def _temporaries(root: Path) -> list[str]:
    return [k for k in tree(root) if ".tmp-" in k or ".old-" in k]


EXPORT = ["--format", "onnx,triton", "--batch-sizes", "1,2,4", "--exporter", "legacy"]


@pytest.fixture(scope="module")
def previous_bundle(good_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("prev") / "bundle"
    r = runner.invoke(app, ["export", str(good_model), "--out", str(out), *EXPORT, "--no-optimize"])
    assert r.exit_code == 0, r.output
    return out


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, -signal.SIGTERM), (signal.SIGINT, 130)],
                         ids=["SIGTERM", "SIGINT"])
def test_signal_during_prune_leaves_the_previous_model(sig, status, good_model, tmp_path):
    out = tmp_path / "small"
    r = runner.invoke(app, ["prune", str(good_model), "--depth", "1", "--depth-method", "top", "--out", str(out)])
    assert r.exit_code == 0, r.output
    (tmp_path / "notes.txt").write_text("the user's")
    before = tree(tmp_path)
    p = _start("save", "prune", good_model, "--depth", "2", "--depth-method", "top", "--out", out)
    _wait_ready(p)
    assert _temporaries(tmp_path), "the write should be in progress"
    p.send_signal(sig)
    assert p.wait(timeout=60) == status
    err = p.stderr.read()
    assert "Traceback" not in err
    assert tree(tmp_path) == before          # temporary gone, previous model and user file byte-identical


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, -signal.SIGTERM), (signal.SIGINT, 130)],
                         ids=["SIGTERM", "SIGINT"])
def test_signal_during_export_leaves_the_previous_bundle(sig, status, good_model, previous_bundle, tmp_path):
    out = tmp_path / "bundle"
    shutil.copytree(previous_bundle, out)
    args = ["export", good_model, "--out", out, *EXPORT]
    (tmp_path / "notes.txt").write_text("the user's")
    before = tree(tmp_path)
    p = _start("none", *args)                      # optimised graphs too: a longer write to interrupt
    t0 = time.monotonic()
    while not any((t / "image_encoder.onnx").exists() for t in tmp_path.glob(".bundle.tmp-*")):
        assert p.poll() is None, p.stderr.read()
        assert time.monotonic() - t0 < 240
        time.sleep(0.02)
    p.send_signal(sig)
    assert p.wait(timeout=120) == status
    assert "Traceback" not in p.stderr.read()
    assert tree(tmp_path) == before                # no temporary; the previous bundle is byte-identical


def test_sigterm_during_compress_then_resume(tmp_path, tiny_model):
    images = [Image.new("RGB", (40, 40), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]]
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    rows = ["filepath,title"]
    for i, im in enumerate(images):
        im.save(root / "images" / f"{i}.png")
        rows += [f"{i}.png,colour {i}", f"{i}.png,square number {i}"]
    (root / "captions.csv").write_text("\n".join(rows) + "\n")
    data = str(root / "captions.csv")
    recipe = {"name": "sig", "teacher": str(save_model(tiny_model, tmp_path / "teacher")), "stage": "pretraining",
              "data": {"train": data, "val": data, "test": data, "train_split": "test", "val_split": "test"},
              "prune": {"vision": {"width": 32}, "text": {"width": 32}, "method": "magnitude", "neuron_groups": 4},
              "train": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 4, "eval_every_epoch": False}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    before = {k: v for k, v in tree(tmp_path).items()}
    p = _start("save", "compress", tmp_path / "r.yaml", "--out", out, "--quiet", "--threads", "1")
    _wait_ready(p)                           # the first model save: after scoring, pruning and training
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == -signal.SIGTERM
    assert "Traceback" not in p.stderr.read()
    assert not _temporaries(tmp_path)
    after = tree(tmp_path)
    assert all(after[k] == v for k, v in before.items())          # the user's files (teacher, data, recipe)
    state = json.loads((out / "state.json").read_text())
    assert "score-teacher" in state["done"] and "distill-pretraining" not in state["done"]
    r = runner.invoke(app, ["compress", str(tmp_path / "r.yaml"), "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output                               # resumes: scoring is not redone
    assert "stage score-teacher: already done" in r.output and "stage distill-pretraining: running" in r.output
    assert not _temporaries(tmp_path)


def test_sigkill_leftovers_are_removed_by_the_next_run(good_model, tmp_path):
    """SIGKILL cannot be caught: the temporary stays, and the next write of the same output removes it."""
    out = tmp_path / "small"
    p = _start("save", "prune", good_model, "--depth", "1", "--depth-method", "top", "--out", out)
    _wait_ready(p)
    p.kill()
    assert p.wait(timeout=60) == -signal.SIGKILL
    left = _temporaries(tmp_path)
    assert left and not out.exists()
    r = runner.invoke(app, ["prune", str(good_model), "--depth", "1", "--depth-method", "top", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "removed 1 stale temporary entry left by an interrupted run" in " ".join(r.output.split())
    assert not _temporaries(tmp_path) and (out / "model.safetensors").is_file()
