"""Faults of the retrieval index (issue 22): a disk that fills up (RLIMIT_FSIZE, SIGXFSZ ignored: writes fail with
EFBIG) during a `mope index` chunk commit, its final write, the service's WAL append and compaction; `kill -9`
at three random points of `mope index`. Each: a clear error naming the path and the cause, the previous output
byte-identical, and the next run resumes or rebuilds with no manual clean-up. Plus issue 22 item 5 (a build
with nothing to resume leaves nothing) and the work folder's ownership rule, through the CLI."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")

from reliability_helpers import cli, flat, runner, tree  # noqa: E402

from mope_deploy.cli.app import app  # noqa: E402
from mope_deploy.serve.index import WAL_FILE, EmbeddingIndex, Item, model_fingerprint  # noqa: E402

CHILD = Path(__file__).parent / "index_child.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _child(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHILD), *map(str, args)], capture_output=True, text=True, env=ENV,
                          timeout=timeout)


def _data(caption_csv, noise_images, n: int = 6) -> Path:
    return caption_csv(noise_images(n, size=32, seed=5), [[f"noise {i}", f"speckle {i}"] for i in range(n)])


def _index_args(csv: Path, out: Path, *extra) -> list[str]:
    return ["index", str(csv), "--model", "demo", "--backend", "torch", "--threads", "1", "--out", str(out), "-q",
            *map(str, extra)]


@pytest.mark.slow
def test_disk_full_during_chunk_commit_and_final_write(tmp_path, caption_csv, noise_images):
    csv = _data(caption_csv, noise_images)
    out = tmp_path / "idx"
    r = runner.invoke(app, _index_args(csv, out, "--chunk-size", "1"))
    assert r.exit_code == 0, r.output
    before = tree(tmp_path / "idx")
    # 1. the first chunk cannot be committed: nothing to resume, so nothing is left behind
    p = _child("mope", 1500, *_index_args(csv, out, "--chunk-size", "1", "--force"))
    assert p.returncode == 2, p.stdout + p.stderr
    msg = flat(p.stdout + p.stderr)
    assert "Traceback" not in msg and "committingachunk" in msg and "00000.npz" in msg and "EFBIG" in msg
    assert tree(out) == before and not (tmp_path / ".idx.partial").exists()
    # 2. every chunk commits, the index itself does not fit: the old index stays, the chunks are kept
    p = _child("mope", 2600, *_index_args(csv, out, "--chunk-size", "1", "--force", "--no-captions"))
    assert p.returncode == 2, p.stdout + p.stderr
    msg = flat(p.stdout + p.stderr)
    assert "writingindex" in msg and "EFBIG" in msg and "runthesamecommandagaintoresume" in msg
    assert tree(out) == before and len(list((tmp_path / ".idx.partial" / "chunks").glob("*.npz"))) == 6
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    # the next run (no limit) resumes: nothing is embedded again
    r = runner.invoke(app, _index_args(csv, out, "--chunk-size", "1", "--force", "--no-captions"))
    assert r.exit_code == 0, r.output
    assert json.loads((out / "index.json").read_text())["build"]["images_this_run"] == 0
    assert not (tmp_path / ".idx.partial").exists()


def _live_index(tmp_path: Path) -> Path:
    root = tmp_path / "live"
    idx = EmbeddingIndex.create(root, model_fingerprint("demo"), 8)
    for i in range(3):
        v = np.eye(8, dtype=np.float32)[i:i + 1]
        idx.add([Item(f"x{i}", {"type": "stored"}, [f"c{i}"])], v, [b"img%d" % i], [v])
    return root


@pytest.mark.slow
def test_disk_full_during_wal_append_and_compaction(tmp_path):
    root = _live_index(tmp_path)
    before = tree(root)
    wal_size = (root / WAL_FILE).stat().st_size
    for limit, where in ((wal_size + 40, "wal.jsonl"), (8, "added-")):     # the record, then the image, fails
        out = json.loads(_child("add", root, limit).stdout.strip().splitlines()[-1])
        assert out["mope"] and out["error"] == "IndexWriteError", out
        assert where in out["message"] and "EFBIG" in out["message"] and "nothing was changed" in out["message"]
        assert tree(root) == before                       # no half record, no stray image
    out = json.loads(_child("compact", root, 64).stdout.strip().splitlines()[-1])
    assert out["error"] == "IndexWriteError" and "compacting index" in out["message"] and "EFBIG" in out["message"]
    assert tree(root) == before
    # no clean-up needed: the next add and compaction work
    ok = json.loads(_child("add", root, 0).stdout.strip().splitlines()[-1])
    assert "ok" in ok, ok
    ok = json.loads(_child("compact", root, 0).stdout.strip().splitlines()[-1])
    assert ok["ok"]["folded"] == 4
    assert [it.id for it in EmbeddingIndex.open(root).items] == ["x0", "x1", "x2", "late"]


@pytest.mark.slow
def test_kill_9_at_three_random_points_then_the_rerun_equals_an_uninterrupted_run(tmp_path, caption_csv,
                                                                                    noise_images):
    csv = _data(caption_csv, noise_images, 16)
    ref, out = tmp_path / "ref", tmp_path / "killed"
    r = runner.invoke(app, _index_args(csv, ref, "--chunk-size", "2"))
    assert r.exit_code == 0, r.output
    chunks = tmp_path / ".killed.partial" / "chunks"
    points = sorted(random.Random(22).sample(range(1, 8), 3))          # committed chunks at each kill
    for point in points:
        p = subprocess.Popen([sys.executable, str(CHILD), "mope-slow", "0.3",
                              *_index_args(csv, out, "--chunk-size", "2")], env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 240
            while (len(list(chunks.glob("*.npz"))) if chunks.is_dir() else 0) < point:
                assert p.poll() is None, p.stderr.read()
                assert time.monotonic() < deadline
                time.sleep(0.02)
            os.kill(p.pid, signal.SIGKILL)
        finally:
            p.kill()
            p.wait(30)
        assert not out.exists()
    r = runner.invoke(app, _index_args(csv, out, "--chunk-size", "2"))
    assert r.exit_code == 0, r.output
    a, b = EmbeddingIndex.open(ref), EmbeddingIndex.open(out)
    assert [it.to_dict() for it in a.items] == [it.to_dict() for it in b.items]
    assert a.caption_rows == b.caption_rows
    np.testing.assert_allclose(a.embeddings(), b.embeddings(), atol=1e-5)
    assert json.loads((out / "index.json").read_text())["build"]["images_this_run"] <= 16 - 2 * points[-1]
    assert not (tmp_path / ".killed.partial").exists()
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_cli_build_with_nothing_decodable_leaves_no_work_folder(tmp_path, monkeypatch):
    """issue 22 item 5 through the CLI: exit 2, one line, and no hidden .OUT.partial."""
    import mope_deploy.serve.build as build

    def broken(encoder, collection, start, stop, *a, **k):
        return np.zeros((0, encoder.config.embed_dim), np.float32), [], [(i, "OSError: truncated")
                                                                         for i in range(start, stop)]

    monkeypatch.setattr(build, "embed_chunk", broken)
    watch = tmp_path / "w"
    watch.mkdir()
    cli(["index", "synthetic:val", "--model", "demo", "--out", watch / "out", "-q"], "could be decoded",
        watch=watch)
    assert sorted(os.listdir(watch)) == []


def test_cli_refuses_a_users_folder_named_like_the_work_folder(tmp_path):
    watch = tmp_path / "w"
    (watch / ".out.partial").mkdir(parents=True)
    (watch / ".out.partial" / "notes.txt").write_text("mine")
    cli(["index", "synthetic:val", "--model", "demo", "--out", watch / "out", "-q"], ".out.partial",
        "did not create", watch=watch)


def test_cli_output_policy_of_mope_index(tmp_path):
    watch = tmp_path / "w"
    (watch / "mine").mkdir(parents=True)
    (watch / "mine" / "notes.txt").write_text("keep")
    cli(["index", "synthetic:val", "--model", "demo", "--out", watch / "mine", "-q"], "notes.txt",
        "mope did not write", watch=watch)
    live = _live_index(watch)
    cli(["index", "synthetic:val", "--model", "demo", "--out", live, "-q"], "added at runtime", "--force",
        watch=watch)
    cli(["index", "--compact", watch / "typo"], "typo", "does not exist", watch=watch)
    cli(["index", "synthetic:val", "--model", "demo", "-q"], "missing --out", watch=watch)
    cli(["index", "synthetic:val", "--model", "demo", "--out", watch / "x", "--ray", "--ray-timeout", "0"],
        "--ray-timeout", watch=watch)
