"""Bulk indexing: embed every image (and caption) of a dataset in committed chunks, then write the index.

A build works in ``.OUT.partial/`` beside the output: ``plan.json`` (what is being built) and one
``chunks/NNNNN.npz`` per finished chunk, each written atomically. A killed build run again with the same inputs
skips the committed chunks; the finished index replaces ``OUT`` atomically and the partial folder is removed.
Images that fail to decode are skipped and counted (with the loader's own skips) in ``index.json``.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..atomic import atomic_file, atomic_write_text, check_target
from ..data.datasets import IMAGE_EXTS, DataReport, DatasetError, ImageFiles, TarImages
from ..progress import progress_bar
from .index import (APPROX_MIN_ITEMS, IndexFileError, Item, approx_recall, index_owner, is_index, new_meta,
                    resolve_kind, write_index)

PARTIAL_MARK = "mope-index-partial"


@dataclass
class Collection:
    """Images to index: a sequence of PIL images, an id per image, captions per image, where each image lives."""

    name: str
    images: Sequence[Any]
    ids: list[str]
    captions: list[list[str]]
    report: DataReport = field(default_factory=DataReport)

    def source(self, i: int) -> dict[str, Any]:
        """Where image ``i``'s bytes are: a file, a tar member, or nowhere (in memory: the index stores it)."""
        if isinstance(self.images, ImageFiles):
            return {"type": "file", "path": str(Path(self.images.paths[i]).resolve())}
        if isinstance(self.images, TarImages):
            path, offset, size, name = self.images.members[i]
            return {"type": "tar", "path": str(Path(path).resolve()), "offset": offset, "size": size, "member": name}
        return {"type": "memory"}


def load_collection(spec: str | Path, split: str = "test", image_root: str | Path | None = None,
                    **csv_options: Any) -> Collection:
    """Any dataset :func:`~mope_deploy.data.datasets.load_dataset` reads, or a folder of images (searched
    recursively; no captions)."""
    from ..data.datasets import _header_check, load_dataset

    p = Path(str(spec))
    plain_folder = (p.is_dir() and not any((p / n).is_file() for n in ("captions.csv", "captions.tsv", "captions.txt"))
                    and not any(p.glob("*.tar")))
    if plain_folder:
        report = DataReport()
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
        ok = []
        for f in files:
            good, reason = _header_check(f)
            if good:
                ok.append(f)
            else:
                report.add(reason, str(f.relative_to(p)))
        if not ok:
            raise DatasetError(f"{p}: no readable images (extensions {', '.join(IMAGE_EXTS)}). {report.summary()}")
        return Collection(p.name, ImageFiles(ok), [str(f.relative_to(p)) for f in ok], [[] for _ in ok], report)
    ds = load_dataset(spec, split=split, image_root=image_root, **csv_options)
    names = ds.image_names or [str(i) for i in range(ds.n_images)]
    caps = [[ds.captions[c] for c in cs] for cs in ds.img2txt()]
    return Collection(ds.name, ds.images, list(names), caps, ds.report)


def _encode_png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def embed_chunk(encoder, collection: Collection, start: int, stop: int, batch_size: int = 64,
                store_dir: Path | None = None) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
    """Embeddings of images ``[start, stop)`` that decode, their positions, and ``(position, error)`` of the rest.
    In-memory images are written as PNGs to ``store_dir`` (the index keeps them)."""
    pixels, kept, bad, parts = [], [], [], []

    def flush():
        if pixels:
            parts.append(encoder.run_images(np.stack(pixels)))
            pixels.clear()

    for i in range(start, stop):
        try:
            im = collection.images[i]
            if getattr(im, "mode", "RGB") != "RGB":
                im = im.convert("RGB")
            x = np.asarray(encoder.preprocess(im), dtype=np.float32)
            if store_dir is not None and collection.source(i)["type"] == "memory":
                store_dir.mkdir(parents=True, exist_ok=True)
                with atomic_file(store_dir / f"{i}.png") as f:
                    f.write(_encode_png(im))
        except Exception as e:  # noqa: BLE001  (a bad image is counted and skipped, never fatal)
            bad.append((i, f"{type(e).__name__}: {e}"))
            continue
        pixels.append(x)
        kept.append(i)
        if len(pixels) >= batch_size:
            flush()
    flush()
    from ..runtime import l2_normalize

    emb = l2_normalize(np.concatenate(parts)) if parts else np.zeros((0, encoder.config.embed_dim), np.float32)
    return emb, kept, bad


def embed_captions(encoder, texts: list[str], batch_size: int = 256) -> np.ndarray:
    return encoder.encode_texts(texts, batch_size=batch_size) if texts else \
        np.zeros((0, encoder.config.embed_dim), np.float32)


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse to replace anything but an index (and an index only with ``overwrite``), before any work."""
    if not out.exists():
        return
    if is_index(out):
        if not overwrite:
            raise IndexFileError(f"{out} is already an index; pass --overwrite to rebuild it (items added at "
                                 "runtime are lost), or choose another --out")
        check_target(out, index_owner())  # a user's file inside the index is refused now, not after the work
        return
    if out.is_dir() and not any(out.iterdir()):
        return
    raise IndexFileError(f"{out} exists and is not an index; refusing to replace it (choose another --out)")


def build_index(collection: Collection, encoder, out: str | Path, *, fingerprint: dict[str, str],
                data_spec: str, captions: bool = True, kind: str = "auto", chunk_size: int = 1024,
                batch_size: int = 64, overwrite: bool = False, progress: bool = True,
                chunk_fn: Callable[[int, int], tuple[np.ndarray, list[int], list[tuple[int, str]]]] | None = None,
                log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Embed ``collection`` with ``encoder`` in committed chunks and write the index to ``out``.

    ``chunk_fn(start, stop)`` replaces the local :func:`embed_chunk` (Ray Data uses it). Returns ``index.json``.
    """
    out = Path(out)
    say = log or (lambda msg: None)
    if chunk_size < 1 or batch_size < 1:
        from .errors import ServeError
        raise ServeError(f"chunk_size and batch_size must be >= 1 (got {chunk_size}, {batch_size})")
    check_out(out, overwrite)
    n = len(collection.images)
    kind = resolve_kind(kind, n)
    work = partial_dir(out)
    plan = {"mark": PARTIAL_MARK, "data": data_spec, "dataset": collection.name, "n_images": n,
            "chunk_size": chunk_size, "model": fingerprint, "captions": captions}
    _prepare_work(work, plan, say)
    chunks_dir, store_dir = work / "chunks", work / "images"
    n_chunks = (n + chunk_size - 1) // chunk_size
    t0, n_done_now = time.perf_counter(), 0
    with progress_bar(progress) as bar:
        task = bar.add_task("embed images", total=n)
        for c in range(n_chunks):
            path = chunks_dir / f"{c:05d}.npz"
            s, e = c * chunk_size, min((c + 1) * chunk_size, n)
            if path.is_file():
                bar.advance(task, e - s)
                continue
            emb, kept, bad = (chunk_fn(s, e) if chunk_fn is not None else
                              embed_chunk(encoder, collection, s, e, batch_size, store_dir))
            cap_emb = None
            if captions:
                texts = [t for i in kept for t in collection.captions[i]]
                cap_emb = embed_captions(encoder, texts)
            with atomic_file(path) as f:
                np.savez(f, emb=emb, kept=np.asarray(kept, np.int64),
                         cap=cap_emb if cap_emb is not None else np.zeros((0, emb.shape[1] if emb.ndim == 2 else 0)),
                         bad=np.asarray(json.dumps(bad)))
            n_done_now += e - s
            bar.advance(task, e - s)
    seconds = time.perf_counter() - t0

    embs, caps, items, rows = [], [], [], []
    report = DataReport(list(collection.report.skipped))
    for c in range(n_chunks):
        with np.load(chunks_dir / f"{c:05d}.npz") as z:
            emb, kept, cap = z["emb"], z["kept"].tolist(), z["cap"]
            for i, err in json.loads(str(z["bad"])):
                report.add("unreadable image", f"{collection.ids[i]} ({err})")
        embs.append(emb.reshape(-1, encoder.config.embed_dim))
        if captions and len(cap):
            caps.append(cap.reshape(-1, encoder.config.embed_dim))
        for i in kept:
            src = collection.source(i)
            if src["type"] == "memory":
                src = {"type": "stored", "path": f"images/{i}.png"}
            for t in collection.captions[i] if captions else []:
                rows.append({"text": t, "item": len(items)})
            items.append(Item(collection.ids[i], src, list(collection.captions[i])))
    if not items:
        raise DatasetError(f"no image of {data_spec} could be decoded; nothing to index. {report.summary()}")
    image_emb = np.concatenate(embs)
    caption_emb = np.concatenate(caps) if caps else None
    recall = None
    if kind != "exact":
        queries = caption_emb if caption_emb is not None and len(caption_emb) else image_emb
        sample = queries[np.random.default_rng(0).permutation(len(queries))[:1000]]
        recall = approx_recall(image_emb, sample, kind)
        say(f"{kind} recall@10 vs exact search: {recall:.4f} ({len(sample)} queries)")
    meta = new_meta(fingerprint, encoder.config.embed_dim, kind, source=data_spec, dataset=collection.name,
                    backend=encoder.describe(), approx_recall_at_10=recall, approx_min_items=APPROX_MIN_ITEMS,
                    skipped=report.to_dict(), build={"seconds_this_run": round(seconds, 3),
                                                     "images_this_run": n_done_now, "chunk_size": chunk_size})
    write_index(out, meta, image_emb, items, caption_emb, rows if caption_emb is not None else None,
                stored_dir=store_dir)
    shutil.rmtree(work, ignore_errors=True)
    say(f"indexed {len(items)} images ({len(rows)} captions) of {collection.name}; {len(report)} skipped")
    return {**meta, "n_items": len(items), "n_captions": len(rows)}


def partial_dir(out: str | Path) -> Path:
    """Where a build of ``out`` keeps its committed chunks (``images/``: images the index will store)."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def _prepare_work(work: Path, plan: dict[str, Any], say: Callable[[str], None]) -> None:
    """Resume a partial build of the same plan; restart one of another plan (only our own folder)."""
    plan_file = work / "plan.json"
    if work.exists():
        try:
            old = json.loads(plan_file.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if old is None or old.get("mark") != PARTIAL_MARK:
            raise IndexFileError(f"{work} exists but was not made by `mope index`; move it away and run again")
        if old == plan:
            done = len(list((work / "chunks").glob("*.npz")))
            say(f"resuming a partial build: {done} chunk(s) already committed in {work}")
            return
        say(f"a partial build for other inputs was in {work}; starting over")
        shutil.rmtree(work)
    (work / "chunks").mkdir(parents=True)
    atomic_write_text(plan_file, json.dumps(plan, indent=2))
