"""The write-ahead log of items added at runtime (``wal.jsonl``): one checksummed JSON record per line.

A record is appended and fsynced before the request that added it is acknowledged; opening the index replays
the log. A record that cannot be used (a torn last line a crash left half written, garbage, a damaged record in
the middle) is never silently dropped: it is moved, byte for byte, to ``wal.rejected`` (one JSON line per record:
when, why, where, and its bytes in base64), counted, and logged. A damaged record's image is kept too (in
``wal.rejected.images/``, by :class:`~.index.EmbeddingIndex`): only a torn last record was never acknowledged.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..atomic import fsync_dir
from .store import REJECTED_FILE, WAL_FILE, WRITE_FAILURES, IndexFileError, Item, write_error

#: a record longer than this is garbage (an image's bytes live in images/, not in the record)
MAX_RECORD_BYTES = 16 << 20


class WalRecordError(IndexFileError):
    """A WAL line that is not a valid record (the reason is the message)."""


@dataclass
class WalRecord:
    """One runtime addition: the item, its image embedding (dim,), its caption embeddings (n, dim) or None."""

    item: Item
    emb: np.ndarray
    captions_emb: np.ndarray | None = None


@dataclass
class Rejected:
    line: int              # 1-based line number in wal.jsonl
    reason: str
    raw: bytes
    torn: bool             # the last line, without its newline: a write a crash cut short


@dataclass
class Scan:
    """What :func:`scan` found: the valid records (with their raw lines) and the rejected ones."""

    records: list[WalRecord] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def _b64(x: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(x, dtype="<f4").tobytes()).decode()


def _unb64(s: Any, what: str) -> np.ndarray:
    if not isinstance(s, str):
        raise WalRecordError(f"{what} is not a base64 string")
    try:
        data = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise WalRecordError(f"{what} is not valid base64") from None
    if len(data) % 4:
        raise WalRecordError(f"{what} is not a float32 vector ({len(data)} bytes)")
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def _hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def encode_record(record: WalRecord) -> bytes:
    """One log line (with its newline): the record and the sha256 of its canonical JSON."""
    cap = record.captions_emb
    body = {"item": record.item.to_dict(), "emb": _b64(record.emb),
            "captions_emb": _b64(cap) if cap is not None and len(cap) else None}
    return json.dumps({**body, "sha256": _hash(body)}).encode() + b"\n"


def decode_record(line: bytes, dim: int) -> WalRecord:
    """Parse and check one line (checksum, item fields, vector widths); :class:`WalRecordError` says why not."""
    if len(line) > MAX_RECORD_BYTES:
        raise WalRecordError(f"record of {len(line)} bytes (more than {MAX_RECORD_BYTES})")
    try:
        d = json.loads(line)
    except (ValueError, RecursionError):
        raise WalRecordError("not JSON") from None
    if not isinstance(d, dict) or set(d) != {"item", "emb", "captions_emb", "sha256"}:
        raise WalRecordError("not a record (keys item, emb, captions_emb, sha256)")
    body = {k: v for k, v in d.items() if k != "sha256"}
    if d["sha256"] != _hash(body):
        raise WalRecordError("checksum mismatch")
    item = Item.from_dict(d["item"], "record")
    emb = _unb64(d["emb"], "emb")
    if emb.shape != (dim,) or not np.isfinite(emb).all():
        raise WalRecordError(f"emb has {emb.size} values (the index is {dim} wide) or is not finite")
    cap = None
    if d["captions_emb"] is not None:
        cap = _unb64(d["captions_emb"], "captions_emb")
        if cap.size != dim * len(item.captions) or not np.isfinite(cap).all():
            raise WalRecordError(f"captions_emb has {cap.size} values for {len(item.captions)} captions of width "
                                 f"{dim}")
        cap = cap.reshape(-1, dim)
    return WalRecord(item, emb, cap)


def scan(root: Path, dim: int) -> Scan:
    """Read ``root/wal.jsonl``: valid records in order, and every line that is not one."""
    out = Scan()
    path = root / WAL_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return out
    except OSError as e:
        raise IndexFileError(f"{path}: cannot read the write-ahead log ({e.strerror})") from None
    lines = data.split(b"\n")
    last = max((n for n, ln in enumerate(lines) if ln.strip()), default=-1)
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.records.append(decode_record(line, dim))
            out.raw.append(line + b"\n")
        except IndexFileError as e:
            torn = n == last and not data.endswith(b"\n")
            out.rejected.append(Rejected(n + 1, str(e), line, torn))
    return out


def append(root: Path, records: Sequence[WalRecord]) -> None:
    """Append ``records`` as one write and fsync: after this returns they survive a crash (kill -9, power loss).

    A failed write (disk full: EFBIG/ENOSPC) is cut back to the log's previous length, so no half record stays
    behind, and raised as :class:`~.store.IndexWriteError` naming the file and the cause."""
    path = root / WAL_FILE
    data = b"".join(encode_record(r) for r in records)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as e:
        raise write_error(path, e, "adding to the index") from None
    size = os.fstat(fd).st_size
    try:
        if size:                         # a crash may have left a torn last line: start on a fresh line
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    data = b"\n" + data
        view = memoryview(data)
        while view:                      # os.write may write part of it (a file-size limit, a signal)
            view = view[os.write(fd, view):]
        os.fsync(fd)
        if not size:                     # a log this call created: its name is durable once the folder is synced
            fsync_dir(root)
    except OSError as e:
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        except OSError:
            pass                         # the torn tail is rejected (kept in wal.rejected) at the next open
        raise write_error(path, e, "adding to the index") from None
    finally:
        os.close(fd)


def set_aside(root: Path, found: Scan) -> Path:
    """Move ``found.rejected`` out of the log: append each to ``wal.rejected`` (fsynced), then replace the log
    with its valid lines only (atomically). Returns the rejected file. Call with the folder lock held."""
    from ..atomic import atomic_file

    rejected = root / REJECTED_FILE
    seen = _rejected_hashes(rejected)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    lines = b""
    for r in found.rejected:
        h = hashlib.sha256(r.raw).hexdigest()
        if h in seen:                     # set aside before a crash that came before the log was rewritten
            continue
        lines += json.dumps({"time": now, "line": r.line, "reason": r.reason, "torn": r.torn, "sha256": h,
                             "bytes": len(r.raw), "raw_b64": base64.b64encode(r.raw).decode()}).encode() + b"\n"
    try:
        if lines:
            fd = os.open(rejected, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(lines)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
        with atomic_file(root / WAL_FILE) as f:
            f.write(b"".join(found.raw))
    except WRITE_FAILURES as e:
        raise write_error(rejected, e, "setting aside damaged write-ahead log records") from None
    return rejected


def _rejected_hashes(path: Path) -> set[str]:
    try:
        text = path.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return set()
    out = set()
    for line in text.splitlines():
        try:
            out.add(json.loads(line)["sha256"])
        except (ValueError, KeyError, TypeError):
            continue
    return out


def read_rejected(root: Path) -> list[dict[str, Any]]:
    """The records in ``wal.rejected`` (``raw`` decoded back to bytes)."""
    out = []
    path = root / REJECTED_FILE
    if not path.is_file():
        return out
    for line in path.read_bytes().splitlines():
        d = json.loads(line)
        out.append({**d, "raw": base64.b64decode(d["raw_b64"])})
    return out
