"""The on-disk format of a retrieval index: file names, ``index.json`` (validated), items, FAISS files by
generation, and the folder lock writers hold.

One directory::

    index.json          format, model fingerprint, dim, kind (exact | hnsw), generation, sizes, recall report
    images.faiss        FAISS index of the image embeddings (row i = item i); generation g > 0: images.g.faiss
    items.jsonl         one {"id", "source", "captions"} per item (items.g.jsonl)
    captions.faiss      optional: caption embeddings (captions.g.faiss)
    captions.jsonl      optional: one {"text", "item"} per caption row (captions.g.jsonl)
    images/             images the index stores itself (in-memory datasets; ``added-*``: items added at runtime)
    wal.jsonl           write-ahead log of runtime additions (:mod:`.wal`); wal.rejected: records it refused
    wal.rejected.images/  images of refused records, kept when a damaged (not torn) record was set aside

``index.json`` is the commit point: compaction (under the lock) first removes leftovers, then writes generation
committed + 1 beside the committed one, then replaces ``index.json`` (atomic rename), then removes the old
files; files of any generation ``index.json`` does not name are leftovers of an interrupted compaction and are
removed under the lock. Whoever removes files reads ``index.json`` under the lock first: another process may have
compacted since it last looked.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..atomic import NoRoomError
from .errors import ServeError

FORMAT = "mope-index"
FORMAT_VERSION = 1
META_FILE, IMAGES_FAISS, ITEMS_FILE = "index.json", "images.faiss", "items.jsonl"
CAPTIONS_FAISS, CAPTIONS_FILE, STORED_DIR = "captions.faiss", "captions.jsonl", "images"
WAL_FILE, REJECTED_FILE, REJECTED_IMAGES = "wal.jsonl", "wal.rejected", "wal.rejected.images"
#: prefix of images stored by runtime additions (``images/added-<hash>``)
ADDED_PREFIX = "added-"
LOCK_TIMEOUT_S = 30.0
MAX_DIM = 1 << 16
_GEN_FILE = re.compile(r"^(images|items|captions)\.(\d+)\.(faiss|jsonl)$")


class IndexFileError(ServeError):
    """An index directory that cannot be used (missing, corrupt, or made by a different model)."""


class DuplicateIdError(IndexFileError):
    """An item id that is already in the index."""


class IndexWriteError(IndexFileError):
    """A write to an index folder failed (disk full, permissions): names the file and the cause; nothing was
    changed (the HTTP layer answers 507)."""


#: what a failed write raises: an OSError, or atomic's NoRoomError (a full disk, already named)
WRITE_FAILURES: tuple[type[BaseException], ...] = (OSError, NoRoomError)


def write_error(path: str | Path, e: BaseException, what: str) -> IndexWriteError:
    """One message for a failed write: ``what`` failed, the file, the cause (errno name), and that nothing changed."""
    if isinstance(e, NoRoomError):
        path, e = e.target, e.cause
    if not isinstance(e, OSError):
        return IndexWriteError(f"{what}: cannot write {path}: {e}")
    cause = e.strerror or str(e)
    if e.errno is not None:
        import errno
        cause += f" ({errno.errorcode.get(e.errno, e.errno)})"
    return IndexWriteError(f"{what}: cannot write {e.filename or path}: {cause}; nothing was changed (free space "
                           f"or fix permissions, then retry)")


def require_faiss():
    try:
        import faiss
    except ImportError as e:
        raise IndexFileError(f"FAISS is not installed ({e}): pip install 'mope-deploy[serve]' (faiss-cpu)") from None
    return faiss


def index_owner():
    """The files of an index folder: a folder holding only these may be rebuilt without --force (a user's own
    file inside it is refused, never lost)."""
    from ..atomic import Owner

    return Owner("retrieval index", markers=[(META_FILE,)],
                 allowed=(META_FILE, IMAGES_FAISS, ITEMS_FILE, CAPTIONS_FAISS, CAPTIONS_FILE, WAL_FILE, REJECTED_FILE,
                          REJECTED_IMAGES, STORED_DIR, "images.*.faiss", "items.*.jsonl", "captions.*.faiss",
                          "captions.*.jsonl", ".*.tmp-*"))


# ---------------------------------------------------------------------------------------------------------
# Items and index.json


@dataclass
class Item:
    """One indexed image: its id, where its image lives (``source``), and its captions."""

    id: str
    source: dict[str, Any]
    captions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.source, "captions": self.captions}

    @classmethod
    def from_dict(cls, d: Any, where: str = "item") -> "Item":
        """Validate a stored item (``where`` names it in the error)."""
        if not isinstance(d, dict) or not isinstance(d.get("id"), str) or not isinstance(d.get("source"), dict) \
                or not isinstance(d.get("captions", []), list) \
                or not all(isinstance(c, str) for c in d.get("captions", [])) or set(d) - {"id", "source", "captions"}:
            raise IndexFileError(f"{where}: not an item ({{'id': str, 'source': {{...}}, 'captions': [str]}})")
        return cls(d["id"], d["source"], list(d.get("captions", [])))


class _Fingerprint(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    kind: str
    sha256: str
    name: str


class _Meta(BaseModel):
    """What ``index.json`` must hold (other keys are reports and are kept as they are)."""

    model_config = ConfigDict(extra="allow", strict=True)
    format: Literal["mope-index"]
    format_version: Literal[1]
    model: _Fingerprint
    dim: int = Field(gt=0, le=MAX_DIM)
    kind: Literal["exact", "hnsw"]
    generation: int = Field(0, ge=0, le=10**9)
    n_items: int | None = Field(None, ge=0)
    n_captions: int | None = Field(None, ge=0)


def new_meta(fingerprint: dict[str, str], dim: int, kind: str, source: str, **extra: Any) -> dict[str, Any]:
    import datetime as dt

    return {"format": FORMAT, "format_version": FORMAT_VERSION, "model": fingerprint, "dim": int(dim), "kind": kind,
            "source": source, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **extra}


def check_meta(meta: Any, path: str | Path) -> dict[str, Any]:
    """``meta`` if it is a valid ``index.json`` of this format, else :class:`IndexFileError` naming the field."""
    if not isinstance(meta, dict):
        raise IndexFileError(f"{path}: not an index.json (a JSON object is expected); rebuild the index")
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise IndexFileError(f"{path}: not a {FORMAT} v{FORMAT_VERSION} index (format {meta.get('format')!r} "
                             f"v{meta.get('format_version')!r}); rebuild it with this version's `mope index`")
    try:
        _Meta.model_validate(meta)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "(top)"
        raise IndexFileError(f"{path}: field {loc!r} is invalid ({err['msg']}); rebuild the index with "
                             "`mope index`") from None
    return meta


def read_meta(root: str | Path) -> dict[str, Any]:
    root = Path(root)
    path = root / META_FILE
    if not path.is_file():
        raise IndexFileError(f"{root} is not an index ({META_FILE} not found); build one with "
                             "`mope index DATA --model MODEL --out DIR`")
    try:
        meta = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as e:   # JSONDecodeError, UnicodeDecodeError
        raise IndexFileError(f"{path} is not valid JSON ({str(e)[:120]}); rebuild the index") from None
    except OSError as e:
        raise IndexFileError(f"{path}: cannot read it ({e.strerror})") from None
    return check_meta(meta, path)


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


# ---------------------------------------------------------------------------------------------------------
# Data files by generation


def data_files(gen: int) -> dict[str, str]:
    """File names of generation ``gen`` (0: the plain names)."""
    g = "" if gen == 0 else f".{gen}"
    return {"images": f"images{g}.faiss", "items": f"items{g}.jsonl", "captions": f"captions{g}.faiss",
            "caption_rows": f"captions{g}.jsonl"}


def read_data(root: Path, meta: dict[str, Any]):
    """(images faiss, items, captions faiss | None, caption rows) of ``meta``'s generation, checked."""
    faiss = require_faiss()
    names = data_files(generation(meta))
    try:
        images = faiss.read_index(str(root / names["images"]))
        items = [Item.from_dict(d, f"{root / names['items']} line {n}")
                 for n, d in enumerate(read_jsonl(root / names["items"]), 1)]
        captions, rows = None, []
        if (root / names["captions"]).is_file():
            captions = faiss.read_index(str(root / names["captions"]))
            rows = list(read_jsonl(root / names["caption_rows"]))
    except (RuntimeError, OSError, ValueError, RecursionError) as e:
        raise IndexFileError(f"{root}: index files are unreadable ({str(e).splitlines()[0][:200]}); rebuild it "
                             "with `mope index`") from None
    dim = int(meta["dim"])
    if images.d != dim or (captions is not None and captions.d != dim):
        raise IndexFileError(f"{root}: FAISS files of width {images.d} but index.json says {dim}; rebuild it")
    if images.ntotal != len(items) or (captions is not None and captions.ntotal != len(rows)):
        raise IndexFileError(f"{root}: {images.ntotal} embeddings but {len(items)} items; the index is "
                             "inconsistent, rebuild it with `mope index`")
    for n, r in enumerate(rows):
        if not (isinstance(r, dict) and isinstance(r.get("text"), str) and type(r.get("item")) is int
                and 0 <= r["item"] < len(items)):
            raise IndexFileError(f"{root / names['caption_rows']} line {n + 1}: not a caption row "
                                 "({'text': str, 'item': position}); rebuild the index")
    return images, items, captions, rows


def write_data(root: Path, gen: int, images, items: Iterable[Item], captions=None,
               caption_rows: Iterable[dict[str, Any]] | None = None) -> None:
    """Write generation ``gen``'s files into ``root``, each atomically (temporary sibling + fsync)."""
    from ..atomic import atomic_file

    faiss = require_faiss()
    names = data_files(gen)
    with atomic_file(root / names["images"]) as f:
        f.write(faiss.serialize_index(images).tobytes())
    write_jsonl(root / names["items"], (it.to_dict() for it in items))
    if captions is not None and caption_rows is not None:
        with atomic_file(root / names["captions"]) as f:
            f.write(faiss.serialize_index(captions).tobytes())
        write_jsonl(root / names["caption_rows"], caption_rows)


def generation_files(root: Path) -> dict[int, list[Path]]:
    """Data files present in ``root`` by generation."""
    out: dict[int, list[Path]] = {}
    for p in root.iterdir():
        m = _GEN_FILE.match(p.name)
        g = int(m.group(2)) if m else 0 if p.name in data_files(0).values() else None
        if g is not None:
            out.setdefault(g, []).append(p)
    return out


def generation(meta: dict[str, Any]) -> int:
    return int(meta.get("generation", 0))


def committed_generation(root: Path) -> int | None:
    """The generation the on-disk ``index.json`` names now (None: unreadable, so nothing may be removed)."""
    try:
        return generation(read_meta(root))
    except IndexFileError:
        return None


def remove_other_generations(root: Path, keep: int) -> list[Path]:
    """Remove data files of every generation but ``keep`` (leftovers of an interrupted compaction). Call with the
    lock held and ``keep`` read from ``index.json`` under it: never with a generation remembered from before."""
    gone = []
    for g, paths in generation_files(root).items():
        if g != keep:
            for p in paths:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                gone.append(p)
    return gone


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    from ..atomic import atomic_file

    with atomic_file(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> Iterator[Any]:
    if not path.is_file():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


# ---------------------------------------------------------------------------------------------------------
# The writer lock


@contextlib.contextmanager
def locked(root: Path, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the index folder's writer lock (``flock`` on the folder itself: no lock file to clean up).

    Appends, WAL repair and compaction take it, so two processes never rewrite the log under each other."""
    fd = os.open(root, os.O_RDONLY)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise IndexFileError(f"{root} is being written by another process (its lock was held for "
                                         f"{timeout_s:.0f} s); stop the other `mope serve` / `mope index --compact` "
                                         "on this index and retry") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
