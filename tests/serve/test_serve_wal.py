"""The write-ahead log: acknowledged records replay; a torn last line, garbage and a damaged middle record are
each set aside in wal.rejected (byte for byte, counted in health()); the torn record's orphaned image is removed,
a damaged record's is kept in wal.rejected.images/ (it was acknowledged: it can be restored), nothing else lost;
compaction folds the log into the index files atomically (on open when long, `mope index --compact`), and a
`kill -9` at any step of it loses nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mope_deploy.serve import wal
from mope_deploy.serve.index import (REJECTED_FILE, REJECTED_IMAGES, WAL_FILE, EmbeddingIndex, Item, index_owner,
                                     model_fingerprint)

CHILD = Path(__file__).resolve().parents[1] / "reliability" / "index_child.py"
DIM = 8


def _vec(i: int) -> np.ndarray:
    v = np.random.default_rng(i).standard_normal((1, DIM)).astype(np.float32)
    return v / np.linalg.norm(v)


def _live(tmp_path: Path, n: int = 3) -> tuple[Path, EmbeddingIndex]:
    root = tmp_path / "live"
    idx = EmbeddingIndex.create(root, model_fingerprint("demo"), DIM)
    for i in range(n):
        idx.add([Item(f"x{i}", {"type": "stored"}, [f"caption {i}"])], _vec(i), [b"img%d" % i], [_vec(100 + i)])
    return root, idx


def _ids(root: Path) -> list[str]:
    return [it.id for it in EmbeddingIndex.open(root, compact_over=None).items]


def test_replay_and_a_torn_tail_set_aside_with_its_image(tmp_path):
    root, idx = _live(tmp_path)
    # a crash mid-request: the image was written, its record only half
    (root / "images" / "added-0123456789abcdef01234567").write_bytes(b"orphan")
    torn = b'{"item": {"id": "torn", "source": {"type": "stored", "path": "images/added-0123'
    with open(root / WAL_FILE, "ab") as f:
        f.write(torn)
    again = EmbeddingIndex.open(root, model_fingerprint("demo"))
    assert [it.id for it in again.items] == ["x0", "x1", "x2"]
    np.testing.assert_allclose(again.embeddings(), np.concatenate([_vec(i) for i in range(3)]), atol=0)
    assert again.search(_vec(100 + 2)[0], 1, over="captions")[0].caption == "caption 2"
    h = again.health()
    assert (h["wal_rejected"], h["wal_rejected_torn"], h["wal_rejected_corrupt"]) == (1, 1, 0)
    assert h["orphan_images_removed"] == 1 and h["wal_pending"] == 3 and h["wal_replayed"] == 3
    assert h["wal_rejected_file"] == str(root / REJECTED_FILE)
    kept = wal.read_rejected(root)
    assert [r["raw"] for r in kept] == [torn] and kept[0]["torn"] and kept[0]["line"] == 4
    assert not (root / "images" / "added-0123456789abcdef01234567").exists()
    assert sorted(p.name for p in (root / "images").iterdir()) == sorted(
        it.source["path"].split("/")[1] for it in again.items)
    assert not (root / WAL_FILE).read_bytes().endswith(torn)
    # appending after the repair, then reopening: nothing rejected twice, everything replays
    again.add([Item("x3", {"type": "stored"})], _vec(3), [b"img"])
    third = EmbeddingIndex.open(root)
    assert [it.id for it in third.items] == ["x0", "x1", "x2", "x3"] and third.health()["wal_rejected"] == 0
    assert len(wal.read_rejected(root)) == 1


@pytest.mark.parametrize("where", ["middle", "garbage-last"])
def test_a_damaged_record_is_set_aside_and_the_rest_replays(tmp_path, where, caplog):
    root, _ = _live(tmp_path, 4)
    lines = (root / WAL_FILE).read_bytes().split(b"\n")
    good = lines[1]
    if where == "middle":
        bad = lines[1][:-8] + b'XXXXXXX}'                       # a flipped byte: the checksum fails
        lines[1] = bad
        expect = ["x0", "x2", "x3"]
    else:
        bad = b"\x00\xff garbage \x1b[31m{"
        lines.insert(len(lines) - 1, bad)                     # a whole, newline-terminated garbage line
        expect = ["x0", "x1", "x2", "x3"]
    (root / WAL_FILE).write_bytes(b"\n".join(lines))
    with caplog.at_level("WARNING", logger="mope_deploy.serve.index"):
        idx = EmbeddingIndex.open(root)
    assert [it.id for it in idx.items] == expect
    h = idx.health()
    assert (h["wal_rejected_corrupt"], h["wal_rejected_torn"]) == (1, 0)
    assert [r["raw"] for r in wal.read_rejected(root)] == [bad]
    assert "moved to" in caplog.text and REJECTED_FILE in caplog.text
    assert h["orphan_images_removed"] == 0
    if where == "garbage-last":     # no image without its item: nothing to keep
        assert h["orphan_images_kept"] == 0 and not (root / REJECTED_IMAGES).exists()
        return
    # the record was acknowledged: its image is kept beside wal.rejected (not removed), and health says where
    assert h["orphan_images_kept"] == 1 and h["wal_rejected_images"] == str(root / REJECTED_IMAGES)
    assert len(list((root / "images").glob("added-*"))) == 3
    kept = list((root / REJECTED_IMAGES).iterdir())
    assert [p.read_bytes() for p in kept] == [b"img1"] and REJECTED_IMAGES in caplog.text
    assert index_owner().foreign({p.name for p in root.iterdir()}) == []     # still a folder mope wrote
    assert len(list(EmbeddingIndex.open(root).items)) == 3 and kept[0].exists()     # a reopen keeps it too
    # so a person can restore the record: its repaired line back in the log, its image back in images/
    kept[0].rename(root / "images" / kept[0].name)
    with open(root / WAL_FILE, "ab") as f:
        f.write(good + b"\n")
    back = EmbeddingIndex.open(root)
    assert sorted(it.id for it in back.items) == ["x0", "x1", "x2", "x3"]
    assert back.image_bytes(back.item("x1")) == b"img1" and back.health()["orphan_images_removed"] == 0


def test_compaction_folds_the_log_atomically(tmp_path):
    root, idx = _live(tmp_path, 5)
    before = idx.embeddings()
    summary = idx.compact()
    assert summary == {"folded": 5, "generation": 1, "items": 5}
    assert not (root / WAL_FILE).exists()
    names = sorted(p.name for p in root.iterdir())
    assert names == sorted(["images", "images.1.faiss", "index.json", "items.1.jsonl", "captions.1.faiss",
                            "captions.1.jsonl"])
    again = EmbeddingIndex.open(root)
    assert [it.id for it in again.items] == [f"x{i}" for i in range(5)] and again.health()["wal_pending"] == 0
    np.testing.assert_allclose(again.embeddings(), before, atol=0)
    assert again.search(_vec(103)[0], 1, over="captions")[0].item.id == "x3"
    assert again.image_bytes(again.item("x4")) == b"img4"
    # more additions go to a new log on top of generation 1; a long log is compacted on open
    again.add([Item("y", {"type": "stored"})], _vec(9), [b"y"])
    third = EmbeddingIndex.open(root, compact_over=1)
    assert third.meta["generation"] == 2 and third.health()["compactions"] == 1 and len(third) == 6
    assert sorted(p.name for p in root.glob("*.faiss")) == ["captions.2.faiss", "images.2.faiss"]


def test_mope_index_compact_cli(tmp_path):
    from typer.testing import CliRunner

    from mope_deploy.cli.app import app

    root, _ = _live(tmp_path, 2)
    r = CliRunner().invoke(app, ["index", "--compact", str(root)])
    assert r.exit_code == 0, r.output
    assert "2 log record(s) folded into generation 1" in " ".join(r.output.split())
    assert _ids(root) == ["x0", "x1"] and not (root / WAL_FILE).exists()
    r = CliRunner().invoke(app, ["index", "--compact", str(root), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "takes no DATA" in r.output


@pytest.mark.slow
@pytest.mark.parametrize("step", ["written", "committed", "log-emptied"])
def test_kill_9_during_compaction_loses_nothing(tmp_path, step):
    root, idx = _live(tmp_path, 4)
    before = idx.embeddings()
    p = subprocess.Popen([sys.executable, str(CHILD), "compact-pause", str(root), step], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert line.strip() == "READY", p.stderr.read()
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.kill()
        p.wait(30)
    again = EmbeddingIndex.open(root, compact_over=None)
    assert [it.id for it in again.items] == ["x0", "x1", "x2", "x3"]
    np.testing.assert_allclose(again.embeddings(), before, atol=0)
    assert all(again.image_bytes(it) == b"img%d" % i for i, it in enumerate(again.items))
    again.compact()
    final = EmbeddingIndex.open(root)
    assert [it.id for it in final.items] == ["x0", "x1", "x2", "x3"] and not (root / WAL_FILE).exists()
    gens = {p.name.split(".")[1] for p in root.glob("*.faiss")}
    assert len(gens) == 1, sorted(p.name for p in root.iterdir())     # no generation left behind
    assert json.loads((root / "index.json").read_text())["n_items"] == 4


def _damage_second_record(root: Path) -> None:
    lines = (root / WAL_FILE).read_bytes().split(b"\n")
    lines[1] = lines[1][:-8] + b"XXXXXXX}"
    (root / WAL_FILE).write_bytes(b"\n".join(lines))


def test_a_kept_image_never_replaces_an_earlier_one_and_a_failed_move_removes_nothing(tmp_path, monkeypatch):
    root, idx = _live(tmp_path, 3)
    name = idx.item("x1").source["path"].split("/")[1]
    (root / REJECTED_IMAGES).mkdir()
    (root / REJECTED_IMAGES / name).write_bytes(b"kept earlier")     # an earlier record of the same id
    _damage_second_record(root)
    h = EmbeddingIndex.open(root).health()
    assert h["orphan_images_kept"] == 1
    assert (root / REJECTED_IMAGES / name).read_bytes() == b"kept earlier"
    assert (root / REJECTED_IMAGES / f"{name}.1").read_bytes() == b"img1"
    # the folder cannot be written: the image stays in images/ (this open removes nothing)
    root, idx = _live(tmp_path / "again", 3)
    _damage_second_record(root)
    real = os.replace

    def refuse(src, dst):
        if Path(dst).parent.name == REJECTED_IMAGES:
            raise PermissionError(13, "Permission denied")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", refuse)
    h = EmbeddingIndex.open(root).health()
    assert (h["orphan_images_kept"], h["orphan_images_removed"]) == (0, 0)
    assert len(list((root / "images").glob("added-*"))) == 3


def test_searches_go_on_while_an_add_waits_for_the_folder_lock(tmp_path):
    """An add waiting for the folder lock (held by another writer) and fsyncing does not hold the in-memory lock:
    a search answers meanwhile; the add lands once the lock is free; its id is reserved while it waits."""
    import threading
    import time

    from mope_deploy.serve.index import DuplicateIdError
    from mope_deploy.serve.store import locked

    root, idx = _live(tmp_path)
    done = threading.Event()
    with locked(root):                                    # another writer holds the folder
        t = threading.Thread(target=lambda: (idx.add([Item("late", {"type": "stored"})], _vec(9), [b"x"]),
                                             done.set()))
        t.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        hits = idx.search(_vec(0)[0], 1)
        assert time.monotonic() - t0 < 0.2 and hits[0].item.id == "x0" and not done.is_set()
        with pytest.raises(DuplicateIdError):
            idx.add([Item("late", {"type": "stored"})], _vec(10), [b"y"])      # reserved by the waiting add
    t.join(30)
    assert done.is_set() and idx.search(_vec(9)[0], 1)[0].item.id == "late"
    assert _ids(root) == ["x0", "x1", "x2", "late"]


def test_an_add_replayed_by_a_compaction_before_it_applied_is_applied_once(tmp_path, monkeypatch):
    """A compaction between an add's log append and its in-memory apply replays the record; the add then applies
    nothing twice."""
    import threading
    import time

    root, idx = _live(tmp_path)
    real, compaction = idx._persist, threading.Thread(target=idx.compact)

    def persist_then_compact(records, images):
        real(records, images)
        compaction.start()                                # waits for the folder lock held by this add
        time.sleep(0.2)

    monkeypatch.setattr(idx, "_persist", persist_then_compact)
    pos = idx.add([Item("new", {"type": "stored"})], _vec(7), [b"n"])
    compaction.join(30)
    assert [it.id for it in idx.items].count("new") == 1 and idx.images.ntotal == len(idx.items) == 4
    assert pos == [idx.by_id["new"]] and _ids(root) == ["x0", "x1", "x2", "new"]
