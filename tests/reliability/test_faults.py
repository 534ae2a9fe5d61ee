"""Fault injection: a full disk in the middle of a write (issue 22).

The CLI runs with RLIMIT_FSIZE lowered and SIGXFSZ ignored, so any write past the limit fails with EFBIG exactly as
a full disk fails with ENOSPC (in this process: the soft limit is restored afterwards). Each case: exit 2, one line
naming the path and the cause, no traceback; no temporary left behind and the previous output byte-identical; the
same command without the limit then completes (or resumes) without any manual clean-up. (`mope index` chunk
commits and the service's WAL and compaction are covered by the serve suite.)
"""

from __future__ import annotations

import contextlib
import json
import resource
import signal
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from mope_deploy.importance.table import ScoreTable
from mope_deploy.models import SlimCLIP, load_model, save_model
from mope_deploy.models.tiny import tiny_config
from mope_deploy.pruning.plan import PruningPlan
from reliability_helpers import app, cli, runner, tree

@contextlib.contextmanager
def file_size_limit(max_bytes: int):
    """No file may grow past ``max_bytes`` while the block runs: writes fail with EFBIG (a full disk)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)       # else the kernel kills the writer
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)


def ok(*args) -> str:
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output + repr(r.exception)
    return r.output


def disk_full(args, max_bytes: int, *needles, watch: Path):
    """Run ``mope ARGS`` on a "full disk": exit 2, the path and the cause named, ``watch`` byte-identical."""
    with file_size_limit(max_bytes):
        return cli(list(args), "File too large", "EFBIG", "previous content is unchanged", *needles, watch=watch)


def _temporaries(root: Path) -> list[str]:
    return [k for k in tree(root) if ".tmp-" in k or ".old-" in k]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_model(SlimCLIP(tiny_config()).eval(), tmp_path_factory.mktemp("faults") / "teacher")


# ----------------------------------------------------------------------------------------------- export

EXPORT = ["--format", "onnx", "--no-optimize", "--no-fused", "--batch-sizes", "1,2", "--exporter", "legacy"]


@pytest.mark.slow
def test_disk_full_during_export_keeps_the_old_bundle(teacher, tmp_path):
    out = tmp_path / "bundle"
    ok("export", teacher, "--out", out, *EXPORT)
    # the first graph (~0.5 MB) cannot be written: the old bundle stays, no temporary is left
    disk_full(["export", teacher, "--out", out, *EXPORT], 64 * 1024, str(out), watch=tmp_path)
    ok("export", teacher, "--out", out, *EXPORT)                      # no clean-up needed
    assert json.loads((out / "manifest.json").read_text())["encoders"]
    assert not _temporaries(tmp_path)


# ----------------------------------------------------------------------------- files: scores, model dirs

def test_disk_full_writing_a_score_table_keeps_the_old_one(teacher, tmp_path):
    """atomic_file: the JSON write fails; the previous table stays byte-identical and is still valid."""
    scores = tmp_path / "scores.json"
    args = ["importance", teacher, "--method", "magnitude", "--groups", "4", "--out", scores, "--force"]
    ok(*args)
    disk_full(args, 2048, str(scores), watch=tmp_path)
    ScoreTable.load(scores)
    ok(*args)


def test_disk_full_writing_a_model_directory_keeps_the_old_one(teacher, tmp_path):
    """atomic_dir + safetensors; the error names the model directory, not a temporary file inside it."""
    out = tmp_path / "small"
    args = ["prune", teacher, "--depth", "1", "--depth-method", "top", "--out", out]
    ok(*args)
    r = disk_full(args, 1 << 20, f"cannot write {out}:", watch=tmp_path)
    assert ".tmp-" not in r.output
    load_model(out)
    ok(*args)
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
    does not: the run stops at the checkpoint naming it; a second try on the full disk changes nothing; the
    rerun without the limit reuses the finished stages and completes."""
    out = tmp_path / "run"
    args = ["compress", recipe, "--out", out, "--quiet"]
    disk_full(args, 20 << 20, "last.pt", watch=tmp_path / "data")
    done = sorted(json.loads((out / "state.json").read_text())["done"])
    assert done and all(k.startswith(("score", "prune")) for k in done), done
    assert not _temporaries(tmp_path)
    ScoreTable.load(next(out.glob("scores_*.json")))
    PruningPlan.load(next(out.glob("plan_*.json")))
    disk_full(args, 20 << 20, "last.pt", watch=tmp_path)             # the finished stages stay byte-identical
    finished = {k: v for k, v in tree(out).items() if k != "state.json" and not k.startswith("stages")}
    assert "already done" in ok(*args)
    assert {k: v for k, v in tree(out).items() if k in finished} == finished       # reused, not rewritten
    load_model(out)
    assert not _temporaries(tmp_path)


# ------------------------------------------------------------------------- how a full disk is recognised

def test_no_room_cause_sees_through_library_wrappers():
    import errno

    from mope_deploy.atomic import no_room_cause

    full = OSError(errno.ENOSPC, "No space left on device")
    try:                                    # torch.save: a RuntimeError raised while handling the OSError
        try:
            raise full
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    except RuntimeError as e:
        assert no_room_cause(e) is full
    rust = RuntimeError("Error while serializing: I/O error: File too large (os error 27)")   # safetensors
    assert no_room_cause(rust).errno == errno.EFBIG
    assert no_room_cause(OSError(errno.EACCES, "Permission denied")) is None
    assert no_room_cause(ValueError("os error 2")) is None


def test_a_full_disk_inside_a_folder_write_names_the_folder(tmp_path):
    from mope_deploy.atomic import NoRoomError, atomic_dir, atomic_write_bytes

    out = tmp_path / "out"
    out.mkdir()
    (out / "old.bin").write_bytes(b"old")
    before = tree(tmp_path)
    with file_size_limit(1024), pytest.raises(NoRoomError) as e:
        with atomic_dir(out, force=True) as tmp:
            atomic_write_bytes(tmp / "big.bin", b"x" * 4096)
    assert e.value.target == out and f"cannot write {out}:" in str(e.value) and ".tmp-" not in str(e.value)
    assert tree(tmp_path) == before
