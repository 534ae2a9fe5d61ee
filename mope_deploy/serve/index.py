"""The retrieval index: FAISS inner-product indexes over image (and caption) embeddings, item metadata, the
fingerprint of the model that made them, and a write-ahead log of items added while serving.

On disk (one directory, written atomically by :func:`write_index`)::

    index.json        format, model fingerprint, kind (exact | hnsw), sizes, approximate-recall report
    images.faiss      FAISS index of the image embeddings (row i = item i)
    items.jsonl       one JSON object per item: id, source (where its image lives), captions
    captions.faiss    optional: FAISS index of the caption embeddings
    captions.jsonl    optional: one {"text", "item"} per caption row
    images/           images the index stores itself (in-memory datasets, items added at runtime)
    wal.jsonl         items added at runtime: appended and fsynced before the request is acknowledged,
                      replayed when the index is opened

Embeddings are L2-normalised, so inner product is cosine similarity. ``exact`` (``IndexFlatIP``) is the default;
``hnsw`` (``IndexHNSWFlat``) is picked above :data:`APPROX_MIN_ITEMS` items and its recall@10 against exact
search is measured at build time and stored in ``index.json``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .errors import ServeError

FORMAT = "mope-index"
FORMAT_VERSION = 1
META_FILE, IMAGES_FAISS, ITEMS_FILE = "index.json", "images.faiss", "items.jsonl"
CAPTIONS_FAISS, CAPTIONS_FILE, WAL_FILE, STORED_DIR = "captions.faiss", "captions.jsonl", "wal.jsonl", "images"
KINDS = ("auto", "exact", "hnsw")
#: ``auto`` switches from exact search to HNSW at this many items (exact search of 100k x 768 floats is
#: ~30 ms per query on one core; HNSW stays ~1 ms with recall@10 near 0.99)
APPROX_MIN_ITEMS = 100_000
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 200, 128


def index_owner():
    """The files of an index folder: what `mope index --overwrite` may replace (a user's own file is kept)."""
    from ..atomic import Owner

    return Owner("retrieval index", markers=[(META_FILE,)],
                 allowed=(META_FILE, IMAGES_FAISS, ITEMS_FILE, CAPTIONS_FAISS, CAPTIONS_FILE, WAL_FILE, STORED_DIR))


class IndexFileError(ServeError):
    """An index directory that cannot be used (missing, corrupt, or made by a different model)."""


def require_faiss():
    try:
        import faiss
    except ImportError as e:
        raise IndexFileError(f"FAISS is not installed ({e}): pip install 'mope-deploy[serve]' (faiss-cpu)") from None
    return faiss


# ---------------------------------------------------------------------------------------------------------
# Model identity


def model_fingerprint(model: Any) -> dict[str, str]:
    """What identifies the model behind embeddings: an export bundle's manifest sha256 (the manifest lists every
    file's sha256), a model directory's weights+config sha256, or an open_clip name.

    An index records it and refuses to be searched with another model's embeddings (different spaces).
    """
    from ..models import SlimCLIP
    from ..models.registry import resolve
    from ..runtime import is_bundle

    if isinstance(model, SlimCLIP):
        h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
        for k, v in sorted(model.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
        return {"kind": "model", "sha256": h.hexdigest(), "name": "SlimCLIP (in memory)"}
    if is_bundle(model):
        from ..exporting.bundle import MANIFEST_FILE
        return {"kind": "bundle", "sha256": _sha256(Path(model) / MANIFEST_FILE), "name": str(model)}
    directory = resolve(str(model))
    if directory is not None:
        h = hashlib.sha256()
        for name in ("config.json", "model.safetensors"):
            p = Path(directory) / name
            if p.is_file():
                h.update(_sha256(p).encode())
        return {"kind": "model", "sha256": h.hexdigest(), "name": str(model)}
    return {"kind": "open_clip", "sha256": hashlib.sha256(str(model).encode()).hexdigest(), "name": str(model)}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# FAISS helpers


def resolve_kind(kind: str, n_items: int) -> str:
    if kind not in KINDS:
        raise IndexFileError(f"unknown index kind {kind!r}: use one of {', '.join(KINDS)}")
    if kind == "auto":
        return "hnsw" if n_items >= APPROX_MIN_ITEMS else "exact"
    return kind


def make_faiss(dim: int, kind: str):
    faiss = require_faiss()
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
        return index
    return faiss.IndexFlatIP(dim)


def approx_recall(vectors: np.ndarray, queries: np.ndarray, kind: str, k: int = 10) -> float:
    """Mean |approx top-k  ∩  exact top-k| / k of ``kind`` against exact inner-product search."""
    if kind == "exact":
        return 1.0
    k = min(k, len(vectors))
    exact, approx = make_faiss(vectors.shape[1], "exact"), make_faiss(vectors.shape[1], kind)
    exact.add(vectors)
    approx.add(vectors)
    _, ie = exact.search(queries, k)
    _, ia = approx.search(queries, k)
    return float(np.mean([len(set(a) & set(e)) / k for a, e in zip(ia.tolist(), ie.tolist())]))


def _as_rows(x: np.ndarray, dim: int) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] != dim:
        raise IndexFileError(f"embeddings of shape {tuple(x.shape)} do not fit an index of width {dim}")
    return x


# ---------------------------------------------------------------------------------------------------------
# The index


@dataclass
class Item:
    """One indexed image: its id, where its image lives (``source``), and its captions."""

    id: str
    source: dict[str, Any]
    captions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.source, "captions": self.captions}


@dataclass
class Hit:
    position: int
    score: float
    item: Item
    caption: str | None = None


class EmbeddingIndex:
    """An opened index: thread-safe search and (with a root directory) durable runtime additions."""

    def __init__(self, meta: dict[str, Any], images, items: list[Item], captions=None,
                 caption_rows: list[dict[str, Any]] | None = None, root: str | Path | None = None):
        self.meta, self.images, self.items = meta, images, items
        self.captions, self.caption_rows = captions, caption_rows or []
        self.root = Path(root) if root is not None else None
        self.dim = int(meta["dim"])
        self.by_id = {it.id: i for i, it in enumerate(items)}
        self.wal_replayed = 0
        self.wal_torn = 0
        self._lock = threading.RLock()

    # --- opening ----------------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path, fingerprint: dict[str, str] | None = None) -> "EmbeddingIndex":
        """Open ``root``; with ``fingerprint`` refuse an index made by another model. Replays the WAL."""
        faiss = require_faiss()
        root = Path(root)
        meta = read_meta(root)
        if fingerprint is not None:
            check_fingerprint(meta, fingerprint, root)
        try:
            images = faiss.read_index(str(root / IMAGES_FAISS))
            items = [Item(**d) for d in _read_jsonl(root / ITEMS_FILE)]
            captions, rows = None, None
            if (root / CAPTIONS_FAISS).is_file():
                captions = faiss.read_index(str(root / CAPTIONS_FAISS))
                rows = list(_read_jsonl(root / CAPTIONS_FILE))
        except (RuntimeError, OSError, TypeError, json.JSONDecodeError) as e:
            raise IndexFileError(f"{root}: index files are unreadable ({str(e).splitlines()[0]}); rebuild it with "
                                 "`mope index`") from None
        if images.ntotal != len(items) or (captions is not None and captions.ntotal != len(rows or [])):
            raise IndexFileError(f"{root}: {images.ntotal} embeddings but {len(items)} items; the index is "
                                 "inconsistent, rebuild it with `mope index`")
        index = cls(meta, images, items, captions, rows, root=root)
        index._replay_wal()
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

    # --- reading ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.items)

    @property
    def has_captions(self) -> bool:
        return self.captions is not None and self.captions.ntotal > 0

    def search(self, query: np.ndarray, k: int = 10, over: str = "images") -> list[Hit]:
        """Top-``k`` hits for one L2-normalised query vector, best first (``over``: images or captions)."""
        q = _as_rows(query, self.dim)
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
        record fsynced before the items become searchable and before this returns. Returns their positions."""
        emb = _as_rows(embeddings, self.dim)
        if len(items) != len(emb):
            raise IndexFileError(f"{len(items)} items but {len(emb)} embeddings")
        with self._lock:
            seen = set()
            for it in items:
                if it.id in self.by_id or it.id in seen:
                    raise DuplicateIdError(f"item id {it.id!r} is already in the index; ids are unique")
                seen.add(it.id)
            records = []
            for j, it in enumerate(items):
                data = images[j] if images is not None else None
                if data is not None and self.root is not None:
                    rel = f"{STORED_DIR}/added-{_safe_name(it.id)}"
                    from ..atomic import atomic_write_bytes
                    atomic_write_bytes(self.root / rel, data)
                    it.source = {"type": "stored", "path": rel}
                cap = caption_embeddings[j] if caption_embeddings is not None else None
                records.append({"item": it.to_dict(), "emb": _b64(emb[j]),
                                "captions_emb": _b64(cap) if cap is not None and len(cap) else None})
            if self.root is not None:
                _append_wal(self.root / WAL_FILE, records)
            return [self._apply(r) for r in records]

    def _apply(self, record: dict[str, Any]) -> int:
        it = Item(**record["item"])
        emb = _unb64(record["emb"]).reshape(1, self.dim)
        self.images.add(emb)
        pos = len(self.items)
        self.items.append(it)
        self.by_id[it.id] = pos
        if record.get("captions_emb") and it.captions:
            cap = _unb64(record["captions_emb"]).reshape(-1, self.dim)
            if self.captions is None:
                self.captions = make_faiss(self.dim, "exact")
            self.captions.add(cap)
            self.caption_rows.extend({"text": t, "item": pos} for t in it.captions)
        return pos

    def _replay_wal(self) -> None:
        if self.root is None or not (self.root / WAL_FILE).is_file():
            return
        with open(self.root / WAL_FILE, "rb") as f:
            lines = f.read().split(b"\n")
        for n, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if record.get("sha256") != _record_hash(record):
                    raise ValueError("checksum mismatch")
            except (ValueError, json.JSONDecodeError):
                # a torn write: only the last record can be one (it was never acknowledged)
                if any(ln.strip() for ln in lines[n + 1:]):
                    raise IndexFileError(f"{self.root / WAL_FILE}: record {n + 1} is corrupt and is not the last "
                                         "one; the log was damaged after it was written") from None
                # cut it off, so later appends follow the last acknowledged record
                with open(self.root / WAL_FILE, "r+b") as f:
                    f.truncate(sum(len(ln) + 1 for ln in lines[:n]))
                    os.fsync(f.fileno())
                self.wal_torn += 1
                continue
            if record["item"]["id"] in self.by_id:
                continue
            self._apply(record)
            self.wal_replayed += 1

    def describe(self) -> dict[str, Any]:
        return {"items": len(self.items), "captions": len(self.caption_rows), "dim": self.dim,
                "kind": self.meta.get("kind"), "model": self.meta.get("model"),
                "approx_recall_at_10": self.meta.get("approx_recall_at_10"), "wal_replayed": self.wal_replayed}


class DuplicateIdError(IndexFileError):
    """An item id that is already in the index."""


def _safe_name(item_id: str) -> str:
    return hashlib.sha256(item_id.encode()).hexdigest()[:24]


def _b64(x: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(x, dtype="<f4").tobytes()).decode()


def _unb64(s: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype="<f4").astype(np.float32)


def _record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _append_wal(path: Path, records: list[dict[str, Any]]) -> None:
    """Append records as one write, then fsync: after this returns they survive a crash (kill -9, power loss)."""
    data = b""
    for r in records:
        r = dict(r)
        r["sha256"] = _record_hash(r)
        data += json.dumps(r).encode() + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        # a previous crash may have left a torn last line without a newline: start on a fresh line
        if os.fstat(fd).st_size:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    data = b"\n" + data
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------------------
# Reading and writing index directories


def new_meta(fingerprint: dict[str, str], dim: int, kind: str, source: str, **extra: Any) -> dict[str, Any]:
    import datetime as dt

    return {"format": FORMAT, "format_version": FORMAT_VERSION, "model": fingerprint, "dim": int(dim), "kind": kind,
            "source": source, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **extra}


def read_meta(root: str | Path) -> dict[str, Any]:
    root = Path(root)
    path = root / META_FILE
    if not path.is_file():
        raise IndexFileError(f"{root} is not an index ({META_FILE} not found); build one with "
                             "`mope index DATA --model MODEL --out DIR`")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise IndexFileError(f"{path} is not valid JSON ({e}); rebuild the index") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise IndexFileError(f"{path}: not a {FORMAT} v{FORMAT_VERSION} index (format {meta.get('format')!r} "
                             f"v{meta.get('format_version')!r}); rebuild it with this version's `mope index`")
    return meta


def is_index(root: str | Path) -> bool:
    return (Path(root) / META_FILE).is_file()


def check_fingerprint(meta: dict[str, Any], fingerprint: dict[str, str], root: str | Path = "index") -> None:
    have = meta.get("model") or {}
    if have.get("sha256") != fingerprint.get("sha256"):
        raise IndexFileError(
            f"index {root} was built with model {have.get('name')!r} ({have.get('kind')} sha256 "
            f"{str(have.get('sha256'))[:12]}) but this encoder is {fingerprint.get('name')!r} "
            f"({fingerprint.get('kind')} "
            f"sha256 {fingerprint.get('sha256', '')[:12]}): embeddings of different models are not comparable. "
            f"Serve the model the index was built with, or rebuild it: mope index DATA --model "
            f"{fingerprint.get('name')} --out NEW_INDEX")


def write_index(out: str | Path, meta: dict[str, Any], image_emb: np.ndarray, items: Sequence[Item],
                caption_emb: np.ndarray | None = None, caption_rows: Sequence[dict[str, Any]] | None = None,
                stored_dir: str | Path | None = None) -> Path:
    """Write an index directory atomically (replacing ``out`` as a whole, which may be absent, empty or an
    index holding only its own files). ``stored_dir``: a folder of images the index keeps (moved in)."""
    import shutil

    from ..atomic import atomic_dir

    faiss = require_faiss()
    dim = int(meta["dim"])
    image_emb = _as_rows(image_emb, dim) if len(image_emb) else np.zeros((0, dim), np.float32)
    if len(items) != len(image_emb):
        raise IndexFileError(f"{len(items)} items but {len(image_emb)} embeddings")
    with atomic_dir(out, owner=index_owner()) as tmp:
        images = make_faiss(dim, meta["kind"])
        if len(image_emb):
            images.add(image_emb)
        faiss.write_index(images, str(tmp / IMAGES_FAISS))
        _write_jsonl(tmp / ITEMS_FILE, (it.to_dict() for it in items))
        if caption_emb is not None and caption_rows:
            caps = make_faiss(dim, meta["kind"])
            caps.add(_as_rows(caption_emb, dim))
            faiss.write_index(caps, str(tmp / CAPTIONS_FAISS))
            _write_jsonl(tmp / CAPTIONS_FILE, caption_rows)
        if stored_dir is not None and Path(stored_dir).is_dir():
            shutil.move(str(stored_dir), str(tmp / STORED_DIR))
        (tmp / STORED_DIR).mkdir(exist_ok=True)
        (tmp / META_FILE).write_text(json.dumps({**meta, "n_items": len(items),
                                                 "n_captions": len(caption_rows or [])}, indent=2))
    return Path(out)


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _read_jsonl(path: Path):
    if not path.is_file():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
