"""Bulk indexing (`mope index`): embed every image (and caption) of a dataset in committed chunks, then write the
index; one library call, :func:`build` (an :class:`IndexJob`), with or without Ray.

A build works in ``.OUT.partial/`` beside the output, a work folder claimed with
:func:`~mope_deploy.atomic.claim_work_dir` (a folder of that name mope did not create is never touched):
``plan.json`` (what is being built) and one ``chunks/NNNNN.npz`` per finished chunk, each written atomically. A
killed build run again with the same inputs skips the committed chunks; the finished index replaces ``OUT``
atomically (``--force``: whatever is there, still only once the new index is complete) and the work folder is
removed. A failed build that committed nothing worth resuming removes its work folder; one that did says where
it is. Images that fail to decode are skipped and counted (with the loader's own skips) in ``index.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..atomic import Output, atomic_file, atomic_write_text, claim_work_dir, is_work_dir, remove_work_dir
from ..data.datasets import DataReport, DatasetError
from ..progress import progress_bar
from .collection import Collection, embed_captions, embed_chunk, load_collection
from .errors import ServeError
from .index import EmbeddingIndex, write_index
from .ray_cluster import needs_private_network
from .search import APPROX_MIN_ITEMS, KINDS, approx_recall, resolve_kind
from .store import (ADDED_PREFIX, REJECTED_FILE, REJECTED_IMAGES, STORED_DIR, WAL_FILE, WRITE_FAILURES,
                    IndexFileError, IndexWriteError, Item, index_owner, is_index, new_meta, write_error)

__all__ = ["IndexJob", "RayOptions", "build", "job_chunk_size", "build_index", "compact", "check_out", "partial_dir",
           "auto_chunk_size", "Collection", "load_collection", "embed_chunk", "embed_captions", "MIN_CHUNKS"]

PARTIAL_MARK = "mope-index-partial"
WORK_KIND = "index build"
#: an adaptive chunk size gives a build at least this many chunks (resume units), each of at most MAX_AUTO_CHUNK
MIN_CHUNKS, MAX_AUTO_CHUNK = 8, 1024
#: at most this many images per automatic chunk on Ray (about 2 minutes of ViT-L/14 on one CPU, well inside the
#: default --ray-timeout of 600 s, which a single chunk must beat)
RAY_MAX_AUTO_CHUNK = 128

ChunkResult = tuple[int, np.ndarray, list[int], list[tuple[int, str]]]
#: ``embed_chunks(pending [(chunk, start, stop)], store_dir) -> iterator of (chunk, emb, kept, bad)`` in any order
ChunkEmbedder = Callable[[list[tuple[int, int, int]], Path], Iterator[ChunkResult]]


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to embed on Ray: ``address`` None starts a local Ray, in a private network namespace
    (:mod:`.netns`) unless ``allow_remote``; ``workers`` None = what the cluster can hold (its CPUs - 1, at least
    1); a chunk that brings no result for ``stall_timeout_s`` fails with the cluster's resources in the message.
    ``private``: this process already is that namespace's child (set by :func:`build`, not by users)."""

    address: str | None = None
    workers: int | None = None
    allow_remote: bool = False
    stall_timeout_s: float = 600.0
    num_cpus: int | None = None
    private: bool = False


@dataclass(frozen=True)
class IndexJob:
    """Everything `mope index` needs: the data, the model, the output and how to build."""

    data: str
    model: str
    out: Path
    backend: str | None = None
    split: str = "test"
    image_root: str | None = None
    img_key: str | None = None
    caption_key: str | None = None
    captions: bool = True
    kind: str = "auto"
    chunk_size: int | None = None
    batch_size: int = 64
    threads: int | None = None
    force: bool = False
    ray: RayOptions | None = None
    progress: bool = True

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "IndexJob":
        ray = RayOptions(**d["ray"]) if d.get("ray") else None
        return cls(**{**d, "out": Path(d["out"]), "ray": ray})

    def load_options(self) -> dict[str, Any]:
        opts = {"split": self.split, "image_root": str(self.image_root) if self.image_root else None}
        opts.update({k: v for k, v in (("img_key", self.img_key), ("caption_key", self.caption_key)) if v})
        return opts

    def check(self) -> None:
        """Refuse bad settings before any work."""
        if self.chunk_size is not None and self.chunk_size < 1 or self.batch_size < 1:
            raise ServeError(f"--chunk-size and --batch-size must be >= 1 (got {self.chunk_size}, {self.batch_size})")
        if self.kind not in KINDS:
            raise ServeError(f"--kind {self.kind!r}: use one of {', '.join(KINDS)}")
        if self.ray is not None and self.ray.workers is not None and self.ray.workers < 1:
            raise ServeError(f"--ray-workers must be >= 1, got {self.ray.workers}")
        if self.ray is not None and not self.ray.stall_timeout_s > 0:
            raise ServeError(f"--ray-timeout must be > 0, got {self.ray.stall_timeout_s}")


@dataclass(frozen=True)
class BuildOptions:
    captions: bool = True
    kind: str = "auto"
    chunk_size: int | None = None
    batch_size: int = 64
    force: bool = False
    progress: bool = True


def auto_chunk_size(n: int) -> int:
    """Images per chunk when the user sets none: at least :data:`MIN_CHUNKS` chunks (resume units)."""
    return max(1, min(MAX_AUTO_CHUNK, n // MIN_CHUNKS))


def job_chunk_size(job: IndexJob, n: int) -> int | None:
    """``--chunk-size`` if given; on Ray the automatic size capped at :data:`RAY_MAX_AUTO_CHUNK` (a chunk is one
    actor's unit of work and must arrive within ``--ray-timeout``); else None (:func:`auto_chunk_size` decides)."""
    if job.chunk_size is not None or job.ray is None:
        return job.chunk_size
    return min(auto_chunk_size(n), RAY_MAX_AUTO_CHUNK)


def partial_dir(out: str | Path) -> Path:
    """Where a build of ``out`` keeps its committed chunks (``images/``: images the index will store)."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def check_out(out: str | Path, force: bool = False) -> None:
    """The output policy, before any work: ``out`` absent, empty, or an index mope wrote (else refused, naming
    what is there; ``force`` replaces anything). An index holding items added at runtime is user data a rebuild
    would lose: refused without ``force``."""
    out = Path(out)
    Output(out, index_owner(), force).check()
    if force or not is_index(out):
        return
    wal = out / WAL_FILE
    added = sorted((out / STORED_DIR).glob(f"{ADDED_PREFIX}*")) if (out / STORED_DIR).is_dir() else []
    rejected = [p.name for p in (out / REJECTED_FILE, out / REJECTED_IMAGES) if p.exists()]
    if (wal.is_file() and wal.stat().st_size) or added or rejected:
        what = f"{wal.name} ({wal.stat().st_size} bytes)" if wal.is_file() and wal.stat().st_size else \
            f"{len(added)} image(s) added at runtime ({STORED_DIR}/{ADDED_PREFIX}*)" if added else \
            f"damaged log records set aside for restoring: {', '.join(rejected)}"
        raise ServeError(f"{out} is an index holding items added at runtime through /index/items ({what}), which "
                         "a rebuild would lose: choose another --out, or pass --force to replace it anyway")


def build(job: IndexJob, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run `mope index`: check everything, load the data and the encoder, embed (locally or on Ray), write the
    index. Returns ``index.json`` (with ``n_items``, ``n_captions``)."""
    from ..runtime import check_backend, open_encoder
    from .identity import model_fingerprint
    from .server import default_backend

    say = log or (lambda msg: None)
    job.check()
    backend = job.backend or default_backend(job.model)
    check_backend(backend)
    check_out(job.out, job.force)
    if job.ray is not None and needs_private_network(job.ray):
        return _build_in_private_network(job, say)
    ray_session: contextlib.AbstractContextManager = contextlib.nullcontext()
    if job.ray is not None:                 # first: a cluster that cannot hold the workers fails in seconds
        from .ray_index import RayChunks
        ray_session = RayChunks(job, backend, log=say)
    with ray_session as embed_chunks:
        collection = load_collection(job.data, **job.load_options())
        say(f"{collection.name}: {len(collection.images)} images"
            + (f" ({len(collection.report)} skipped while loading)" if len(collection.report) else ""))
        encoder = open_encoder(job.model, backend, threads=job.threads)
        chunk_size = job_chunk_size(job, len(collection.images))
        return build_index(collection, encoder, job.out, fingerprint=model_fingerprint(job.model),
                           data_spec=job.data, embed_chunks=embed_chunks, log=say, captions=job.captions,
                           kind=job.kind, chunk_size=chunk_size, batch_size=job.batch_size, force=job.force,
                           progress=job.progress)


def _build_in_private_network(job: IndexJob, say: Callable[[str], None]) -> dict[str, Any]:
    """:func:`build` with its local Ray in a child process whose only network is loopback (see :mod:`.netns`)."""
    from ..errors import MopeError
    from .netns import PrivateNetworkError, run_private
    from .ray_cluster import RayResourceError

    private = dataclasses.replace(job, ray=dataclasses.replace(job.ray, private=True))
    try:
        return run_private(f"{__name__}:build_private", private.to_json(), log=say,
                           errors=(RayResourceError, IndexWriteError, IndexFileError, DatasetError, ServeError,
                                   MopeError))
    except PrivateNetworkError as e:
        raise ServeError(f"cannot start a local Ray with its services on loopback only: {e.strerror}. Ray's gRPC "
                         "servers bind every interface, so mope runs a local Ray in a private network namespace, "
                         "which this machine refuses. Pass --allow-remote to start it anyway (firewall Ray's "
                         "ports), or start Ray yourself and pass --address") from None


def build_private(payload: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """The private-network child's side of :func:`_build_in_private_network`."""
    return build(IndexJob.from_json(payload), log=log)


def compact(root: str | Path, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """`mope index --compact INDEX`: fold the write-ahead log into the index files (atomically)."""
    if not Path(root).is_dir():
        raise IndexFileError(f"{root} does not exist or is not a folder; --compact takes the folder of an index "
                             "built with `mope index`")
    index = EmbeddingIndex.open(root, compact_over=None)
    summary = index.compact()
    h = index.health()
    if log is not None and h["wal_rejected"]:
        log(f"{h['wal_rejected']} damaged log record(s) were set aside in {h['wal_rejected_file']}")
    return {**summary, **h}


def build_index(collection: Collection, encoder, out: str | Path, *, fingerprint: dict[str, str], data_spec: str,
                embed_chunks: ChunkEmbedder | None = None, log: Callable[[str], None] | None = None,
                **options: Any) -> dict[str, Any]:
    """Embed ``collection`` with ``encoder`` in committed chunks and write the index to ``out``.

    ``options``: :class:`BuildOptions` fields. ``embed_chunks`` replaces the local embedding of image chunks
    (Ray Data uses it); captions are always embedded here. Returns ``index.json``."""
    opts = BuildOptions(**options)
    out = Path(out)
    say = log or (lambda msg: None)
    check_out(out, opts.force)
    n = len(collection.images)
    if n == 0:
        raise DatasetError(f"{data_spec} holds no images; nothing to index")
    kind = resolve_kind(opts.kind, n)
    chunk_size = opts.chunk_size or auto_chunk_size(n)
    work = partial_dir(out)
    plan = {"mark": PARTIAL_MARK, "data": data_spec, "dataset": collection.name, "n_images": n,
            "chunk_size": chunk_size, "model": fingerprint, "captions": opts.captions,
            # what changes the numbers (int8 vs fp32, fp16), not threads or devices: chunks of two must not mix
            "encoder": {k: v for k, v in encoder.describe().items() if k in ("backend", "variant", "dtype",
                                                                               "inference_precision")},
            # where the images are (--image-root, --split): the same ids under another root are other pixels
            "sources": [collection.source(0), collection.source(n - 1)]}
    _prepare_work(work, plan, say)
    try:
        t0 = time.perf_counter()
        done_now = _embed_all(collection, encoder, work, chunk_size, opts, embed_chunks)
        seconds = time.perf_counter() - t0
        image_emb, items, caption_emb, rows, report = _assemble(collection, work, chunk_size, opts.captions,
                                                                encoder.config.embed_dim, data_spec)
        recall = None
        if kind != "exact":
            queries = caption_emb if caption_emb is not None and len(caption_emb) else image_emb
            sample = queries[np.random.default_rng(0).permutation(len(queries))[:1000]]
            recall = approx_recall(image_emb, sample, kind)
            say(f"{kind} recall@10 vs exact search: {recall:.4f} ({len(sample)} queries)")
        meta = new_meta(fingerprint, encoder.config.embed_dim, kind, source=data_spec, dataset=collection.name,
                        backend=encoder.describe(), approx_recall_at_10=recall, approx_min_items=APPROX_MIN_ITEMS,
                        skipped=report.to_dict(), build={"seconds_this_run": round(seconds, 3),
                                                         "images_this_run": done_now, "chunk_size": chunk_size})
        write_index(out, meta, image_emb, items, caption_emb, rows if caption_emb is not None else None,
                    stored_dir=work / "images", force=opts.force)
    except BaseException as e:
        _after_failure(work, e)
        raise
    remove_work_dir(work)
    say(f"indexed {len(items)} images ({len(rows)} captions) of {collection.name}; {len(report)} skipped")
    return {**meta, "n_items": len(items), "n_captions": len(rows)}


def _local_chunks(collection: Collection, encoder, batch_size: int) -> ChunkEmbedder:
    def embed(pending: list[tuple[int, int, int]], store_dir: Path) -> Iterator[ChunkResult]:
        for c, s, e in pending:
            yield (c, *embed_chunk(encoder, collection, s, e, batch_size, store_dir))
    return embed


def _embed_all(collection: Collection, encoder, work: Path, chunk_size: int, opts: BuildOptions,
               embed_chunks: ChunkEmbedder | None) -> int:
    """Embed and commit every chunk not committed yet; returns the number of images embedded by this run."""
    n = len(collection.images)
    chunks_dir = work / "chunks"
    n_chunks = (n + chunk_size - 1) // chunk_size
    spans = [(c, c * chunk_size, min((c + 1) * chunk_size, n)) for c in range(n_chunks)]
    pending = [sp for sp in spans if not (chunks_dir / f"{sp[0]:05d}.npz").is_file()]
    embed = embed_chunks or _local_chunks(collection, encoder, opts.batch_size)
    done_now = 0
    with progress_bar(opts.progress) as bar:
        task = bar.add_task("embed images", total=n)
        bar.advance(task, n - sum(e - s for _, s, e in pending))
        for c, emb, kept, bad in embed(pending, work / "images"):
            cap_emb = None
            if opts.captions:
                cap_emb = embed_captions(encoder, [t for i in kept for t in collection.captions[i]])
            _commit_chunk(chunks_dir / f"{c:05d}.npz", emb, kept, bad, cap_emb)
            s, e = spans[c][1:]
            done_now += e - s
            bar.advance(task, e - s)
    return done_now


def _commit_chunk(path: Path, emb: np.ndarray, kept: list[int], bad: list[tuple[int, str]],
                  cap_emb: np.ndarray | None) -> None:
    width = emb.shape[1] if emb.ndim == 2 else 0
    try:
        with atomic_file(path) as f:
            np.savez(f, emb=emb, kept=np.asarray(kept, np.int64),
                     cap=cap_emb if cap_emb is not None else np.zeros((0, width), np.float32),
                     bad=np.asarray(json.dumps(bad)))
    except WRITE_FAILURES as e:
        raise write_error(path, e, "committing a chunk of the index build") from None


def _assemble(collection: Collection, work: Path, chunk_size: int, captions: bool, dim: int, data_spec: str):
    """The committed chunks in order: image embeddings, items, caption embeddings and rows, the skip report."""
    n = len(collection.images)
    embs, caps, items, rows = [], [], [], []
    report = DataReport(list(collection.report.skipped))
    for c in range((n + chunk_size - 1) // chunk_size):
        with np.load(work / "chunks" / f"{c:05d}.npz") as z:
            emb, kept, cap = z["emb"], z["kept"].tolist(), z["cap"]
            for i, err in json.loads(str(z["bad"])):
                report.add("unreadable image", f"{collection.ids[i]} ({err})")
        embs.append(emb.reshape(-1, dim))
        if captions and len(cap):
            caps.append(cap.reshape(-1, dim))
        for i in kept:
            src = collection.source(i)
            if src["type"] == "memory":
                src = {"type": "stored", "path": f"{STORED_DIR}/{i}.png"}
            for t in collection.captions[i] if captions else []:
                rows.append({"text": t, "item": len(items)})
            items.append(Item(collection.ids[i], src, list(collection.captions[i])))
    if not items:
        raise DatasetError(f"no image of {data_spec} could be decoded; nothing to index. {report.summary()}")
    return np.concatenate(embs), items, (np.concatenate(caps) if caps else None), rows, report


def _resumable(work: Path) -> int:
    """How many committed chunks of ``work`` hold embeddings (0: nothing a rerun could reuse)."""
    n = 0
    for p in sorted((work / "chunks").glob("*.npz")) if (work / "chunks").is_dir() else []:
        try:
            with np.load(p) as z:
                n += bool(z["kept"].size)
        except (OSError, ValueError, KeyError):
            continue
    return n


def _after_failure(work: Path, e: BaseException) -> None:
    """A failed build: remove a work folder holding nothing to resume; say where a resumable one is."""
    if not is_work_dir(work):
        return
    kept = _resumable(work)
    if not kept:
        with contextlib.suppress(OSError, ServeError):
            remove_work_dir(work)
        return
    if isinstance(e, IndexWriteError):
        e.args = (f"{e} ({kept} committed chunk(s) are kept in {work}: run the same command again to resume)",)


def _prepare_work(work: Path, plan: dict[str, Any], say: Callable[[str], None]) -> None:
    """Resume a partial build of the same plan; restart one of another plan (only our own folder)."""
    plan_file = work / "plan.json"
    claim_work_dir(work, WORK_KIND)                  # a folder of that name mope did not make is refused
    try:
        old = json.loads(plan_file.read_text())
    except (OSError, ValueError):
        old = None
    if old == plan:
        done = len(list((work / "chunks").glob("*.npz")))
        say(f"resuming a partial build: {done} chunk(s) already committed in {work}")
        return
    if old is not None:
        say(f"a partial build for other inputs was in {work}; starting over")
    remove_work_dir(work)
    claim_work_dir(work, WORK_KIND)
    (work / "chunks").mkdir()
    try:
        atomic_write_text(plan_file, json.dumps(plan, indent=2))
    except WRITE_FAILURES as e:
        remove_work_dir(work)
        raise write_error(plan_file, e, "starting the index build") from None
