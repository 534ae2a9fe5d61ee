"""Two writers on one index folder (two `mope serve`, or one and `mope index --compact`), interleaved
deterministically: two EmbeddingIndex objects in this process, the other's turn run from a hook at the racy point.
Whatever the order, no committed generation is removed and no acknowledged item or image is lost. Plus: renames
and the log's creation are followed by an fsync of their folder (a power loss keeps them)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")

import mope_deploy.atomic as atomic  # noqa: E402
import mope_deploy.serve.index as index_mod  # noqa: E402
from mope_deploy.serve.index import (WAL_FILE, EmbeddingIndex, IndexWriteError, Item,  # noqa: E402
                                     model_fingerprint)
from mope_deploy.serve.store import generation, generation_files, read_meta  # noqa: E402

DIM = 8


def _vec(i: int) -> np.ndarray:
    v = np.random.default_rng(i).standard_normal((1, DIM)).astype(np.float32)
    return v / np.linalg.norm(v)


def _add(idx: EmbeddingIndex, item_id: str, seed: int) -> None:
    idx.add([Item(item_id, {"type": "stored"}, [f"about {item_id}"])], _vec(seed), [item_id.encode()],
            [_vec(100 + seed)])


def _live(tmp_path: Path, n: int = 2) -> Path:
    """An index of generation 0 whose log holds x0..x{n-1}."""
    root = tmp_path / "idx"
    idx = EmbeddingIndex.create(root, model_fingerprint("demo"), DIM)
    for i in range(n):
        _add(idx, f"x{i}", i)
    return root


def _generation(root: Path) -> int:
    return generation(read_meta(root))


def _check_all(root: Path, ids: list[str]) -> EmbeddingIndex:
    """A fresh open holds exactly ``ids``, each with its image and embedding; one generation's files are left."""
    idx = EmbeddingIndex.open(root, compact_over=None)
    assert sorted(it.id for it in idx.items) == sorted(ids)
    for it in idx.items:
        assert idx.image_bytes(it) == it.id.encode(), it.id
    assert idx.search(idx.embeddings()[0], 1)[0].position == 0
    assert set(generation_files(root)) == {_generation(root)}, sorted(p.name for p in root.iterdir())
    return idx


def _before_first(monkeypatch, name: str, action) -> None:
    """Run ``action`` (the other writer's turn) once, just before the first call of ``index.<name>``."""
    real, done = getattr(index_mod, name), []

    def hooked(*a, **k):
        if not done:
            done.append(True)
            action()
        return real(*a, **k)

    monkeypatch.setattr(index_mod, name, hooked)


def _other_compacts(root: Path, item_id: str):
    def turn():
        other = EmbeddingIndex.open(root, compact_over=None)
        _add(other, item_id, 50)
        assert other.compact()["generation"] == _generation(root) != 0
    return turn


# --- 1. open: another writer compacts between the unlocked read and the lock ---------------------------------

@pytest.mark.parametrize("point", ["locked", "read_data"])
def test_open_racing_a_compaction_keeps_the_committed_generation(tmp_path, monkeypatch, point):
    """``locked``: the other compacts after this open read the files; ``read_data``: after it read index.json,
    before the files (which the compaction then removes)."""
    root = _live(tmp_path)
    _before_first(monkeypatch, point, _other_compacts(root, "other"))
    mine = EmbeddingIndex.open(root, compact_over=None)
    assert _generation(root) == 1 and mine.health()["generation"] == 1
    assert sorted(it.id for it in mine.items) == ["other", "x0", "x1"]
    monkeypatch.undo()
    _check_all(root, ["other", "x0", "x1"])
    _add(mine, "mine", 7)                                  # and it goes on writing on top of generation 1
    _check_all(root, ["other", "x0", "x1", "mine"])


# --- 2. compaction by a writer that has not seen the other's compaction ---------------------------------------

def test_stale_compaction_uses_a_new_generation_and_drops_nothing(tmp_path):
    root = _live(tmp_path)
    mine = EmbeddingIndex.open(root, compact_over=None)
    _other_compacts(root, "other")()                       # generation 1: x0, x1, other; the log emptied
    _add(mine, "mine", 7)                                  # a new log holding only "mine"
    summary = mine.compact()
    assert summary["generation"] == 2 and summary["items"] == 4 and _generation(root) == 2
    assert sorted(it.id for it in mine.items) == ["mine", "other", "x0", "x1"]
    assert not (root / WAL_FILE).exists()
    _check_all(root, ["mine", "other", "x0", "x1"])


def test_a_failed_stale_compaction_keeps_the_committed_generation(tmp_path, monkeypatch):
    root = _live(tmp_path)
    mine = EmbeddingIndex.open(root, compact_over=None)
    _other_compacts(root, "other")()
    _add(mine, "mine", 7)
    real = index_mod.write_data

    def disk_full(*a, **k):                                # the new generation's files written, then no room
        real(*a, **k)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(index_mod, "write_data", disk_full)
    with pytest.raises(IndexWriteError, match="ENOSPC"):
        mine.compact()
    monkeypatch.undo()
    assert _generation(root) == 1 and not list(root.glob("*.2.*"))
    _check_all(root, ["mine", "other", "x0", "x1"])       # generation 1 + the log: nothing lost


def test_a_failure_after_the_commit_keeps_the_new_generation(tmp_path, monkeypatch):
    """index.json was replaced, then syncing the folder failed: the generation it names now stays."""
    root = _live(tmp_path)
    mine = EmbeddingIndex.open(root, compact_over=None)

    def sync_fails_once_committed(folder):
        if Path(folder) == root and _generation(root) == 1:
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(atomic, "fsync_dir", sync_fails_once_committed)
    with pytest.raises(IndexWriteError, match="EIO"):
        mine.compact()
    monkeypatch.undo()
    assert _generation(root) == 1 and mine.health()["generation"] == 1
    _check_all(root, ["x0", "x1"])
    assert mine.compact()["generation"] == 2                # the log is folded again, on top
    _check_all(root, ["x0", "x1"])


# --- 4. folder fsyncs -----------------------------------------------------------------------------------------

@pytest.fixture
def dir_syncs(monkeypatch):
    """Every os.fsync of a folder: (inode, what a probe said at that moment)."""
    real, seen, probe = os.fsync, [], {"fn": lambda: None}

    def fsync(fd):
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            seen.append((st.st_ino, probe["fn"]()))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen, probe


def test_renames_and_a_new_log_are_followed_by_a_folder_fsync(tmp_path, dir_syncs):
    seen, probe = dir_syncs
    target = tmp_path / "f.bin"
    probe["fn"] = target.exists
    atomic.atomic_write_bytes(target, b"data")
    assert (tmp_path.stat().st_ino, True) in seen          # after the rename: the name is there to sync

    seen.clear()
    out = tmp_path / "out"
    probe["fn"] = out.is_dir
    with atomic.atomic_dir(out) as tmp:
        (tmp / "x").write_text("x")
    assert (tmp_path.stat().st_ino, True) in seen

    idx = EmbeddingIndex.create(tmp_path / "idx", model_fingerprint("demo"), DIM)
    root = tmp_path / "idx"
    seen.clear()
    probe["fn"] = (root / WAL_FILE).exists
    _add(idx, "a", 1)                                      # creates wal.jsonl
    assert (root.stat().st_ino, True) in seen and ((root / "images").stat().st_ino, False) in seen
    seen.clear()
    _add(idx, "b", 2)                                      # appends to it: only the image's folder
    assert [ino for ino, _ in seen] == [(root / "images").stat().st_ino]

    seen.clear()
    probe["fn"] = lambda: _generation(root)
    idx.compact()
    assert (root.stat().st_ino, 1) in seen                 # the commit (index.json naming generation 1) synced


def test_fsync_dir_is_a_no_op_where_a_folder_cannot_be_opened(tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "open", refuse)
    atomic.fsync_dir(tmp_path)                             # Windows: no error
    monkeypatch.undo()

    def einval(fd):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "fsync", einval)
    atomic.fsync_dir(tmp_path)                             # a file system that cannot sync folders


def test_fsync_dir_reports_a_real_io_error(tmp_path, monkeypatch):
    def eio(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", eio)
    with pytest.raises(OSError, match="Input/output"):
        atomic.fsync_dir(tmp_path)
