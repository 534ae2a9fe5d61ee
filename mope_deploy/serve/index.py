"""The retrieval index: thread-safe search over image (and caption) embeddings, durable runtime additions
(write-ahead log), WAL repair and compaction.

The parts live in their own modules and are re-exported here (``from mope_deploy.serve.index import ...`` keeps
working): the on-disk format in :mod:`.store`, the log in :mod:`.wal`, the FAISS choice in :mod:`.search`, the
model fingerprint in :mod:`.identity`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import wal
from ..atomic import fsync_dir
from .identity import model_fingerprint
from .search import (APPROX_MIN_ITEMS, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH, HNSW_M, KINDS, approx_recall, as_rows,
                     filled, make_faiss, resolve_kind)
from .store import (ADDED_PREFIX, CAPTIONS_FAISS, CAPTIONS_FILE, FORMAT, FORMAT_VERSION, IMAGES_FAISS, ITEMS_FILE,
                    META_FILE, REJECTED_FILE, REJECTED_IMAGES, STORED_DIR, WAL_FILE, WRITE_FAILURES, DuplicateIdError,
                    IndexFileError, IndexWriteError, Item, check_fingerprint, committed_generation, generation,
                    index_owner, is_index, locked, new_meta, read_data, read_meta,
                    remove_other_generations, require_faiss, write_data, write_error)

__all__ = [
    "EmbeddingIndex", "Item", "Hit", "DuplicateIdError", "IndexFileError", "IndexWriteError", "model_fingerprint",
    "is_index", "read_meta", "new_meta", "check_fingerprint", "write_index", "index_owner", "require_faiss",
    "resolve_kind", "make_faiss", "approx_recall", "KINDS", "APPROX_MIN_ITEMS", "HNSW_M", "HNSW_EF_CONSTRUCTION",
    "HNSW_EF_SEARCH", "FORMAT", "FORMAT_VERSION", "META_FILE", "IMAGES_FAISS", "ITEMS_FILE", "CAPTIONS_FAISS",
    "CAPTIONS_FILE", "WAL_FILE", "REJECTED_FILE", "REJECTED_IMAGES", "STORED_DIR", "COMPACT_OVER",
]

log = logging.getLogger(__name__)

#: opening an index whose log holds at least this many records folds them into the index files
COMPACT_OVER = 10_000


@dataclass
class Hit:
    position: int
    score: float
    item: Item
    caption: str | None = None


@dataclass
class WalStats:
    """What opening and serving did with the log (shown by :meth:`EmbeddingIndex.health`)."""

    replayed: int = 0          # records replayed when the index was opened
    pending: int = 0           # records in the log now (folded into the index files by compaction)
    torn: int = 0              # rejected: the last line, cut short by a crash (never acknowledged)
    corrupt: int = 0           # rejected: garbage or a damaged record anywhere in the log
    orphans_removed: int = 0   # images/added-* files no item refers to (their record was torn or never written)
    orphans_kept: int = 0      # such files moved to wal.rejected.images/ (a damaged record may have been theirs)
    compactions: int = 0
    last_compaction: str | None = None
    compaction_error: str | None = None


class EmbeddingIndex:
    """An opened index: thread-safe search and (with a root directory) durable runtime additions."""

    def __init__(self, meta: dict[str, Any], images, items: list[Item], captions=None,
                 caption_rows: list[dict[str, Any]] | None = None, root: str | Path | None = None):
        self.meta, self.images, self.items = meta, images, items
        self.captions, self.caption_rows = captions, caption_rows or []
        self.root = Path(root) if root is not None else None
        self.dim = int(meta["dim"])
        self.by_id = {it.id: i for i, it in enumerate(items)}
        self.wal = WalStats()
        self._lock = threading.RLock()
        self._adding: set[str] = set()        # ids of adds writing to disk now (reserved, not yet searchable)

    # --- opening ----------------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path, fingerprint: dict[str, str] | None = None, *, create: bool = False,
             dim: int | None = None, compact_over: int | None = COMPACT_OVER) -> "EmbeddingIndex":
        """Open ``root``; with ``fingerprint`` refuse an index made by another model. Replays the log (setting
        aside records it cannot use) and folds it into the index files when it holds ``compact_over`` records.

        A missing ``root`` is an error unless ``create`` (then ``fingerprint`` and ``dim`` make a new empty index)."""
        root = Path(root)
        if not root.exists():
            if not create:
                raise IndexFileError(f"index {root} does not exist; build one with `mope index DATA --model MODEL "
                                     f"--out {root}`, or pass --create-index to start an empty index there")
            if fingerprint is None or dim is None:
                raise IndexFileError("creating an index needs the model's fingerprint and embedding width")
            return cls.create(root, fingerprint, dim)
        try:                               # outside the lock: reading a large index takes a while
            index = cls._load(root, fingerprint)
        except IndexFileError:             # perhaps compacted away meanwhile: read again under the lock
            index = None
        with locked(root):
            if index is None:
                index = cls._load(root, fingerprint)
            else:
                index._refresh()           # another process may have compacted since the read above
            remove_other_generations(root, generation(index.meta))
            index._replay()
        if compact_over is not None and index.wal.pending >= compact_over:
            try:
                index.compact()
            except IndexFileError as e:    # the log still holds everything: serving goes on, /health says why
                index.wal.compaction_error = str(e)
                log.warning("index %s: compacting the write-ahead log failed: %s", root, e)
        return index

    @classmethod
    def create(cls, root: str | Path, fingerprint: dict[str, str], dim: int, kind: str = "exact") -> "EmbeddingIndex":
        """A new empty index at ``root`` (must not exist), to be filled at runtime."""
        root = Path(root)
        if root.exists():
            raise IndexFileError(f"{root} exists; an empty index is only created at a new path")
        meta = new_meta(fingerprint, dim, resolve_kind(kind, 0), source="empty (filled at runtime)")
        write_index(root, meta, np.zeros((0, dim), np.float32), [])
        return cls.open(root, fingerprint)

    @classmethod
    def _load(cls, root: Path, fingerprint: dict[str, str] | None) -> "EmbeddingIndex":
        meta = read_meta(root)
        if fingerprint is not None:
            check_fingerprint(meta, fingerprint, root)
        return cls(meta, *read_data(root, meta), root=root)

    def _refresh(self) -> None:
        """Catch up with a compaction committed since this object read its files (lock held): load the generation
        ``index.json`` names now. Nothing in memory is lost: every record applied here was in the log, so it is in
        that generation or still in the log (replayed next)."""
        meta = read_meta(self.root)
        if generation(meta) == generation(self.meta):
            return
        check_fingerprint(meta, self.meta["model"], self.root)
        images, items, captions, rows = read_data(self.root, meta)
        with self._lock:
            self.meta, self.images, self.items, self.captions, self.caption_rows = meta, images, items, captions, rows
            self.by_id = {it.id: i for i, it in enumerate(items)}
        log.info("index %s: reloaded generation %d (compacted by another process)", self.root, generation(meta))

    def _replay(self) -> None:
        """Apply the log's valid records; set aside the rest and clear images no item refers to (lock held)."""
        found = wal.scan(self.root, self.dim)
        for rec in found.records:
            if rec.item.id not in self.by_id:      # already in the index files: a compaction cut short
                self._apply(rec)
                self.wal.replayed += 1
        self.wal.pending = len(found.records)
        if found.rejected:
            where = wal.set_aside(self.root, found)
            torn = sum(r.torn for r in found.rejected)
            self.wal.torn += torn
            self.wal.corrupt += len(found.rejected) - torn
            for r in found.rejected:
                log.warning("index %s: %s line %d is %s (%s); moved to %s", self.root, WAL_FILE, r.line,
                            "a torn last record" if r.torn else "not a valid record", r.reason, where)
        self._clear_orphans(keep=any(not r.torn for r in found.rejected))

    def _clear_orphans(self, keep: bool) -> None:
        """Remove images no item refers to, or with ``keep`` move them to wal.rejected.images/: a damaged record
        (acknowledged to its client) may be one's, and which one cannot be told from damaged bytes."""
        orphans = self._orphans()
        if not orphans:
            return
        names = ", ".join(p.name for p in orphans[:5])
        if not keep:
            for p in orphans:
                p.unlink(missing_ok=True)
            self.wal.orphans_removed += len(orphans)
            log.warning("index %s: removed %d stored image(s) no item refers to (their log record was torn or "
                        "never written): %s", self.root, len(orphans), names)
            return
        folder, moved = self.root / REJECTED_IMAGES, 0
        try:
            folder.mkdir(exist_ok=True)
            for p in orphans:
                dest, n = folder / p.name, 1
                while dest.exists():          # an earlier record of the same id: keep both
                    dest, n = folder / f"{p.name}.{n}", n + 1
                os.replace(p, dest)
                moved += 1
        except OSError as e:                  # the rest stay in images/: not lost now, but a later open removes them
            log.warning("index %s: cannot move stored images to %s (%s); %s still holds %d of them: copy them out "
                        "before the index is opened again", self.root, folder, e, STORED_DIR, len(orphans) - moved)
        if not moved:
            return
        for d in (folder, self.root / STORED_DIR, self.root):    # the moves (and the new folder) made durable
            fsync_dir(d)
        self.wal.orphans_kept += moved
        log.warning("index %s: kept %d stored image(s) of set-aside records in %s (%s): to restore a record, "
                    "repair its line from %s, append it to %s and move its image back to %s/", self.root,
                    moved, folder, names, REJECTED_FILE, WAL_FILE, STORED_DIR)

    def _orphans(self) -> list[Path]:
        folder = self.root / STORED_DIR
        if not folder.is_dir():
            return []
        used = {it.source.get("path") for it in self.items if it.source.get("type") == "stored"}
        return sorted(p for p in folder.glob(f"{ADDED_PREFIX}*") if f"{STORED_DIR}/{p.name}" not in used)

    # --- reading ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.items)

    @property
    def has_captions(self) -> bool:
        return self.captions is not None and self.captions.ntotal > 0

    @property
    def wal_replayed(self) -> int:
        return self.wal.replayed

    @property
    def wal_torn(self) -> int:
        return self.wal.torn

    def search(self, query: np.ndarray, k: int = 10, over: str = "images") -> list[Hit]:
        """Top-``k`` hits for one L2-normalised query vector, best first (``over``: images or captions)."""
        q = as_rows(query, self.dim)
        with self._lock:
            if over == "captions":
                if self.captions is None:
                    raise IndexFileError("this index has no captions (build it with --captions)")
                index = self.captions
            else:
                index = self.images
            n = index.ntotal
            if n == 0:
                return []
            scores, ids = index.search(q, min(k, n))
            hits = []
            for s, i in zip(scores[0].tolist(), ids[0].tolist()):
                if i < 0:            # HNSW can return fewer than k
                    continue
                if over == "captions":
                    row = self.caption_rows[i]
                    hits.append(Hit(i, float(s), self.items[row["item"]], row["text"]))
                else:
                    hits.append(Hit(i, float(s), self.items[i]))
            return hits

    def item(self, item_id: str) -> Item | None:
        with self._lock:                      # a refresh may swap in another generation's order
            pos = self.by_id.get(item_id)
            return None if pos is None else self.items[pos]

    def image_file(self, item: Item) -> tuple[str, int, int] | None:
        """(path, offset, size) of an item's encoded image bytes (size -1: the whole file), or None."""
        src = item.source
        if src.get("type") == "stored" and self.root is not None and src.get("path"):
            return str(self.root / src["path"]), 0, -1
        if src.get("type") == "file":
            return src["path"], 0, -1
        if src.get("type") == "tar":
            return src["path"], int(src["offset"]), int(src["size"])
        return None

    def image_bytes(self, item: Item) -> bytes | None:
        where = self.image_file(item)
        if where is None:
            return None
        path, offset, size = where
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read() if size < 0 else f.read(size)
        except OSError:
            return None

    def embeddings(self) -> np.ndarray:
        """All image embeddings (N, D), in item order."""
        with self._lock:
            return self.images.reconstruct_n(0, self.images.ntotal) if self.images.ntotal else \
                np.zeros((0, self.dim), np.float32)

    # --- runtime additions (durable) -------------------------------------------------------------
    def add(self, items: Sequence[Item], embeddings: np.ndarray, images: Sequence[bytes | None] | None = None,
            caption_embeddings: Sequence[np.ndarray | None] | None = None) -> list[int]:
        """Add items (and their image bytes, stored in the index) durably: image files are written and the WAL
        record fsynced before the items become searchable and before this returns. Returns their positions.
        A failed write (disk full) raises :class:`IndexWriteError` and changes nothing."""
        emb = as_rows(embeddings, self.dim)
        if len(items) != len(emb):
            raise IndexFileError(f"{len(items)} items but {len(emb)} embeddings")
        ids = [it.id for it in items]
        with self._lock:                      # reserve the ids: a concurrent add of the same id is refused
            seen: set[str] = set()
            for x in ids:
                if x in self.by_id or x in self._adding or x in seen:
                    raise DuplicateIdError(f"item id {x!r} is already in the index; ids are unique")
                seen.add(x)
            self._adding.update(ids)
        try:
            records = []
            for j, it in enumerate(items):
                cap = caption_embeddings[j] if caption_embeddings is not None else None
                cap = as_rows(cap, self.dim) if cap is not None and len(cap) else None
                records.append(wal.WalRecord(Item(it.id, dict(it.source), list(it.captions)), emb[j], cap))
            if self.root is not None:
                # disk work without the in-memory lock: searches go on while this waits for the folder lock
                # (another process) and the fsyncs
                with locked(self.root):
                    self._persist(records, images)
            with self._lock:
                for r, it in zip(records, items):
                    it.source = r.item.source
                # a compaction may have replayed these records from the log already: apply each once
                return [self.by_id[r.item.id] if r.item.id in self.by_id else self._apply(r) for r in records]
        finally:
            with self._lock:
                self._adding.difference_update(ids)

    def _persist(self, records: list[wal.WalRecord], images: Sequence[bytes | None] | None) -> None:
        """Write the records' images, then append the records; on failure remove the images (lock held)."""
        from ..atomic import atomic_write_bytes

        written: list[Path] = []
        try:
            for j, r in enumerate(records):
                data = images[j] if images is not None else None
                if data is not None:
                    rel = f"{STORED_DIR}/{ADDED_PREFIX}{_safe_name(r.item.id)}"
                    written.append(self.root / rel)
                    atomic_write_bytes(self.root / rel, data, sync_dir=False)
                    r.item.source = {"type": "stored", "path": rel}
            if written:
                fsync_dir(self.root / STORED_DIR)    # the images' folder once, before the record that names them
            wal.append(self.root, records)
        except WRITE_FAILURES as e:
            for p in written:
                p.unlink(missing_ok=True)
            raise write_error(written[-1] if written else self.root / WAL_FILE, e, "adding to the index") from None
        except IndexFileError:
            for p in written:
                p.unlink(missing_ok=True)
            raise
        self.wal.pending += len(records)

    def _apply(self, record: wal.WalRecord) -> int:
        it = record.item
        self.images.add(record.emb.reshape(1, self.dim))
        pos = len(self.items)
        self.items.append(it)
        self.by_id[it.id] = pos
        if record.captions_emb is not None and it.captions:
            if self.captions is None:
                self.captions = make_faiss(self.dim, "exact")
            self.captions.add(record.captions_emb.reshape(-1, self.dim))
            self.caption_rows.extend({"text": t, "item": pos} for t in it.captions)
        return pos

    # --- compaction -------------------------------------------------------------------------------
    def compact(self, on_step=None) -> dict[str, Any]:
        """Fold the log into the index files: remove leftovers, write generation ``g + 1``, commit it by
        replacing ``index.json``, then empty the log and remove the old generation. All under the lock, after
        catching up with what other processes committed and logged, so none of their items is dropped. A crash at
        any point loses nothing (see :mod:`.store`).

        ``on_step(name)`` is called after each step (tests kill the process there). Returns a summary."""
        if self.root is None:
            raise IndexFileError("an in-memory index has no files to compact")
        step = on_step or (lambda name: None)
        with self._lock, locked(self.root):
            self._refresh()                       # another process may have compacted since we looked
            self._replay()                        # records another process appended, damaged lines set aside
            folded, old = self.wal.pending, generation(self.meta)
            if not folded:
                return {"folded": 0, "generation": old, "items": len(self.items)}
            remove_other_generations(self.root, old)     # leftovers of a compaction cut short
            new = old + 1                         # the removal above left no other generation on disk
            now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            meta = {**self.meta, "generation": new, "n_items": len(self.items), "n_captions": len(self.caption_rows),
                    "compacted": now}
            try:
                rows = self.caption_rows if self.captions is not None else None
                write_data(self.root, new, self.images, self.items, self.captions, rows)
                step("written")
                from ..atomic import atomic_write_text
                atomic_write_text(self.root / META_FILE, json.dumps(meta, indent=2))
            except WRITE_FAILURES as e:
                self._after_failed_commit(meta)
                raise write_error(self.root, e, f"compacting index {self.root}") from None
            step("committed")
            self.meta = meta
            (self.root / WAL_FILE).unlink(missing_ok=True)
            step("log-emptied")
            remove_other_generations(self.root, new)
            self.wal.pending = 0
            self.wal.compactions += 1
            self.wal.last_compaction, self.wal.compaction_error = now, None
        log.info("index %s: folded %d log record(s) into generation %d", self.root, folded, new)
        return {"folded": folded, "generation": new, "items": len(self.items)}

    def _after_failed_commit(self, meta: dict[str, Any]) -> None:
        """A compaction's write failed: remove the files of every generation but the one ``index.json`` names now
        (the new one when the failure came after the rename, e.g. syncing the folder; nothing when unreadable)."""
        committed = committed_generation(self.root)
        if committed is None:
            return
        if committed == generation(meta):
            self.meta = meta                      # committed: the log is folded again by the next compaction
        remove_other_generations(self.root, committed)

    # --- status -----------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """Counts for /health and /ready: items, the log (pending, replayed, rejected by kind, orphaned images
        removed or kept) and compaction. ``wal_rejected`` > 0 means records were set aside in ``wal.rejected``
        (``orphan_images_kept`` > 0: images that may be theirs are in ``wal_rejected_images``)."""
        w = self.wal
        return {"items": len(self.items), "captions": len(self.caption_rows),
                "generation": generation(self.meta),
                "wal_pending": w.pending, "wal_replayed": w.replayed, "wal_rejected": w.torn + w.corrupt,
                "wal_rejected_torn": w.torn, "wal_rejected_corrupt": w.corrupt,
                "wal_rejected_file": str(self.root / REJECTED_FILE) if w.torn + w.corrupt else None,
                "wal_rejected_images": str(self.root / REJECTED_IMAGES) if w.orphans_kept else None,
                "orphan_images_removed": w.orphans_removed, "orphan_images_kept": w.orphans_kept,
                "compactions": w.compactions,
                "last_compaction": w.last_compaction, "compaction_error": w.compaction_error}

    def describe(self) -> dict[str, Any]:
        return {"items": len(self.items), "captions": len(self.caption_rows), "dim": self.dim,
                "kind": self.meta.get("kind"), "model": self.meta.get("model"),
                "approx_recall_at_10": self.meta.get("approx_recall_at_10"), "wal_replayed": self.wal.replayed,
                "wal": {k: v for k, v in self.health().items() if k.startswith(("wal_", "orphan", "compact"))}}


def _safe_name(item_id: str) -> str:
    return hashlib.sha256(item_id.encode()).hexdigest()[:24]


def write_index(out: str | Path, meta: dict[str, Any], image_emb: np.ndarray, items: Sequence[Item],
                caption_emb: np.ndarray | None = None, caption_rows: Sequence[dict[str, Any]] | None = None,
                stored_dir: str | Path | None = None, force: bool = False) -> Path:
    """Write an index directory atomically (replacing ``out`` as a whole, which may be absent, empty or an
    index holding only its own files; anything with ``force``). ``stored_dir``: images the index keeps (moved
    in). A failed write (disk full) leaves ``out`` as it was and raises :class:`IndexWriteError`."""
    import shutil

    from ..atomic import Output, atomic_write_text

    dim = int(meta["dim"])
    image_emb = as_rows(image_emb, dim) if len(image_emb) else np.zeros((0, dim), np.float32)
    if len(items) != len(image_emb):
        raise IndexFileError(f"{len(items)} items but {len(image_emb)} embeddings")
    meta = {**meta, "generation": 0, "n_items": len(items), "n_captions": len(caption_rows or [])}
    try:
        with Output(Path(out), index_owner(), force).write() as tmp:
            caps = filled(dim, meta["kind"], caption_emb) if caption_emb is not None and caption_rows else None
            write_data(tmp, 0, filled(dim, meta["kind"], image_emb), items, caps,
                       list(caption_rows) if caps is not None else None)
            (tmp / STORED_DIR).mkdir()
            if stored_dir is not None and Path(stored_dir).is_dir():
                for p in Path(stored_dir).iterdir():      # links: the build's work folder stays resumable
                    try:
                        os.link(p, tmp / STORED_DIR / p.name)
                    except OSError:
                        shutil.copy2(p, tmp / STORED_DIR / p.name)
            atomic_write_text(tmp / META_FILE, json.dumps(meta, indent=2))   # fsynced like the data files
    except WRITE_FAILURES as e:
        raise write_error(out, e, f"writing index {out}") from None
    return Path(out)
