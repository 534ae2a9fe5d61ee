"""Fault injection: a full disk in the middle of a write (issue 22).

A real `mope` process runs with RLIMIT_FSIZE set and SIGXFSZ ignored, so any write past the limit fails with
EFBIG exactly as a full disk fails with ENOSPC. Each case: exit 2, one line naming the path and the cause, no
traceback; no temporary left behind and the previous output byte-identical; the same command without the limit
then completes (or resumes) without any manual clean-up. (`mope index` chunk commits and the service's WAL and
compaction are covered by the serve suite.)
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from mope_deploy.importance.table import ScoreTable
from mope_deploy.models import SlimCLIP, load_model, save_model
from mope_deploy.models.tiny import tiny_config
from mope_deploy.pruning.plan import PruningPlan
from reliability_helpers import flat, tree

pytestmark = pytest.mark.slow

MOPE = "import sys; from mope_deploy.cli.app import main; sys.argv[0] = 'mope'; main()"


def _limited(max_bytes: int | None):
    def setup():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)        # the write fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return setup if max_bytes is not None else None


def mope(*args, max_file_bytes: int | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real CLI in a child process; ``max_file_bytes``: no file it writes may grow past this."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-c", MOPE, *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600, preexec_fn=_limited(max_file_bytes))


def _refused(r: subprocess.CompletedProcess, *needles: str) -> None:
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert "Traceback" not in out, out
    for n in ("File too large", "EFBIG", *needles):
        assert flat(n) in flat(out), f"{n!r} not in:\n{out}"


def _temporaries(root: Path) -> list[str]:
    return [k for k in tree(root) if ".tmp-" in k or ".old-" in k]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_model(SlimCLIP(tiny_config()).eval(), tmp_path_factory.mktemp("faults") / "teacher")


# ----------------------------------------------------------------------------------------------- export

EXPORT = ["--format", "onnx", "--no-optimize", "--no-fused", "--batch-sizes", "1,2", "--exporter", "legacy"]


def test_disk_full_during_export_keeps_the_old_bundle(teacher, tmp_path):
    out = tmp_path / "bundle"
    r = mope("export", teacher, "--out", out, *EXPORT)
    assert r.returncode == 0, r.stdout + r.stderr
    before = tree(tmp_path)
    # the first graph (~0.5 MB) cannot be written
    _refused(mope("export", teacher, "--out", out, *EXPORT, max_file_bytes=64 * 1024), str(out))
    assert tree(tmp_path) == before, "the previous bundle changed or a temporary was left behind"
    r = mope("export", teacher, "--out", out, *EXPORT)                  # no clean-up needed
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((out / "manifest.json").read_text())["encoders"]
    assert not _temporaries(tmp_path)


# ----------------------------------------------------------------------------- files: scores, model dirs

def test_disk_full_writing_a_score_table_keeps_the_old_one(teacher, tmp_path):
    """atomic_file: the JSON write fails; the previous table stays byte-identical and is still valid."""
    scores = tmp_path / "scores.json"
    args = ("importance", teacher, "--method", "magnitude", "--groups", "4", "--out", scores)
    assert mope(*args).returncode == 0
    before = tree(tmp_path)
    _refused(mope(*args, "--force", max_file_bytes=2048), str(scores))
    assert tree(tmp_path) == before
    ScoreTable.load(scores)
    assert mope(*args, "--force").returncode == 0


def test_disk_full_writing_a_model_directory_keeps_the_old_one(teacher, tmp_path):
    """atomic_dir + safetensors (whose Rust error carries "os error 27" in its message, not an OSError)."""
    out = tmp_path / "small"
    args = ("prune", teacher, "--depth", "1", "--depth-method", "top", "--out", out)
    assert mope(*args).returncode == 0
    before = tree(tmp_path)
    _refused(mope(*args, max_file_bytes=1 << 20), str(out))
    assert tree(tmp_path) == before
    load_model(out)
    assert mope(*args).returncode == 0
    assert not _temporaries(tmp_path)


# ------------------------------------------------------------------------------ compress checkpointing

@pytest.fixture
def recipe(teacher, tmp_path) -> Path:
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    rows = ["filepath,title"]
    for i, rgb in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]):
        Image.new("RGB", (40, 40), rgb).save(data / "images" / f"{i}.png")
        rows += [f"{i}.png,colour {i}", f"{i}.png,square number {i}"]
    (data / "captions.csv").write_text("\n".join(rows) + "\n")
    csv = str(data / "captions.csv")
    r = {"name": "tiny", "teacher": str(teacher), "stage": "pretraining",
         "data": {"train": csv, "val": csv, "test": csv, "train_split": "test", "val_split": "test"},
         "prune": {"vision": {"width": 32}, "text": {"width": 32}, "method": "magnitude", "neuron_groups": 4},
         "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 4, "eval_every_epoch": False,
                   "checkpoint_every": 1}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(r))
    return path


def test_disk_full_while_checkpointing_then_resume(recipe, tmp_path):
    """The pruned student (13 MB) fits under the limit, the training checkpoint (model + Adam state, ~40 MB)
    does not: the run stops at the checkpoint naming it; the rerun reuses the finished stages and completes."""
    out = tmp_path / "run"
    r = mope("compress", recipe, "--out", out, "--quiet", max_file_bytes=20 << 20)
    _refused(r, "last.pt")
    state = json.loads((out / "state.json").read_text())
    done = sorted(state["done"])
    assert done and all(k.startswith(("score", "prune")) for k in done), done
    assert not _temporaries(tmp_path)
    finished = {k: v for k, v in tree(out).items() if k != "state.json" and not k.startswith("stages")}
    ScoreTable.load(next(out.glob("scores_*.json")))
    PruningPlan.load(next(out.glob("plan_*.json")))
    r = mope("compress", recipe, "--out", out, "--quiet")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "already done" in r.stdout
    assert {k: v for k, v in tree(out).items() if k in finished} == finished       # reused, not rewritten
    load_model(out)
    assert not _temporaries(tmp_path)
