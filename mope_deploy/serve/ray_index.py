"""Bulk indexing on Ray Data: chunks of the collection are embedded by ``map_batches`` over encoder actors (one
chunk per call, actors live for the whole build) and committed by the driver as each arrives, like the local
build (:mod:`.build`), so a killed run resumes.

Never hangs: the number of actors is checked against the cluster's CPUs before anything starts
(:func:`~.ray_cluster.plan_workers`), and a build that receives no chunk for ``stall_timeout_s`` fails with the
cluster's resources in the message.
"""

from __future__ import annotations

import io
import json
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .errors import ServeError
from .ray_cluster import RayResourceError, describe_resources, exposed_listeners, plan_workers, require_ray, start_ray


class _ChunkWorker:
    """A Ray Data actor: opens the encoder and the collection once, embeds whole chunks."""

    def __init__(self, model: str, backend: str, data: str, load_options: dict[str, Any], threads: int | None,
                 batch_size: int):
        from ..runtime import open_encoder
        from .collection import load_collection

        self.encoder = open_encoder(model, backend, threads=threads)
        self.collection = load_collection(data, **load_options)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        payloads = [self._chunk(int(s), int(e)) for s, e in zip(batch["start"], batch["stop"])]
        return {"chunk": np.asarray(batch["chunk"], np.int64), "payload": np.asarray(payloads, dtype=object)}

    def _chunk(self, start: int, stop: int) -> bytes:
        from .collection import embed_chunk, encode_png

        emb, kept, bad = embed_chunk(self.encoder, self.collection, start, stop, self.batch_size)
        pngs = [encode_png(self.collection.images[p]) for p in kept
                if self.collection.source(p)["type"] == "memory"]
        png_pos = [p for p in kept if self.collection.source(p)["type"] == "memory"]
        buf = io.BytesIO()
        np.savez(buf, emb=emb, kept=np.asarray(kept, np.int64), bad=np.asarray(json.dumps(bad)),
                 png_pos=np.asarray(png_pos, np.int64), png_len=np.asarray([len(b) for b in pngs], np.int64),
                 png=np.frombuffer(b"".join(pngs), np.uint8))
        return buf.getvalue()


def _unpack(payload: bytes, store_dir: Path):
    """A worker's chunk: (emb, kept, bad); its in-memory images are written to ``store_dir``."""
    from ..atomic import atomic_write_bytes, fsync_dir

    with np.load(io.BytesIO(payload), allow_pickle=False) as z:
        emb, kept, bad = z["emb"], z["kept"].tolist(), [tuple(b) for b in json.loads(str(z["bad"]))]
        blob, offset = z["png"].tobytes(), 0
        for p, n in zip(z["png_pos"].tolist(), z["png_len"].tolist()):
            store_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(store_dir / f"{p}.png", blob[offset:offset + n], sync_dir=False)
            offset += n
    if store_dir.is_dir():
        fsync_dir(store_dir)                  # once per chunk, before the chunk is committed
    return emb, kept, bad


class RayChunks:
    """``with RayChunks(job, backend) as embed_chunks:`` a chunk embedder for :func:`~.build.build_index` on Ray
    (starts a local Ray, or connects to ``job.ray.address``; shuts down only a Ray it started)."""

    def __init__(self, job, backend: str, log: Callable[[str], None] | None = None):
        self.job, self.backend, self.say = job, backend, log or (lambda msg: None)
        self.started = False
        self.workers = 0

    def __enter__(self):
        opts = self.job.ray
        self.started = start_ray(opts.address, allow_remote=opts.allow_remote, num_cpus=opts.num_cpus)
        try:
            self.workers = plan_workers(opts.workers)
            exposed = exposed_listeners() if self.started else []
            if exposed and not opts.allow_remote:     # the private network did not hold: never embed exposed
                raise ServeError(f"the local Ray listens beyond loopback ({', '.join(exposed[:3])}) although "
                                 "--allow-remote was not given; refusing to run. Start Ray yourself and pass "
                                 "--address, or pass --allow-remote")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        where = ("; its services listen on loopback only (private network namespace)" if opts.private else
                 f"; {len(exposed)} of its service port(s) listen beyond loopback (--allow-remote)" if exposed else "")
        self.say(f"Ray: {self.workers} encoder actor(s) ({describe_resources()}){where}")
        return self

    def __exit__(self, *exc) -> None:
        if self.started:
            require_ray().shutdown()
            self.started = False

    def __call__(self, pending: list[tuple[int, int, int]], store_dir: Path) -> Iterator[tuple]:
        if not pending:
            return
        ray = require_ray()
        job = self.job
        ds = ray.data.from_items([{"chunk": c, "start": s, "stop": e} for c, s, e in pending])
        ds = ds.map_batches(_ChunkWorker, fn_constructor_kwargs=dict(
            model=str(job.model), backend=self.backend, data=str(job.data), load_options=job.load_options(),
            threads=job.threads or 1, batch_size=job.batch_size),
            batch_size=1, compute=ray.data.ActorPoolStrategy(size=min(self.workers, len(pending))), num_cpus=1,
            batch_format="numpy")
        for row in _with_stall_timeout(ds.iter_rows(), job.ray.stall_timeout_s, self.workers):
            yield (int(row["chunk"]), *_unpack(bytes(row["payload"]), store_dir))


def _resources() -> str:
    try:
        return describe_resources()
    except Exception as e:  # noqa: BLE001  (the cluster may be what is gone; the timeout message still goes out)
        return f"unknown resources (Ray did not answer: {type(e).__name__})"


def _with_stall_timeout(rows: Iterator[dict], timeout_s: float, workers: int) -> Iterator[dict]:
    """Rows of ``rows`` (consumed on a thread); :class:`RayResourceError` when none arrives for ``timeout_s``."""
    q: queue.Queue = queue.Queue(maxsize=4)
    done = object()

    def pump():
        try:
            for r in rows:
                q.put(r)
            q.put(done)
        except BaseException as e:  # noqa: BLE001  (handed to the consumer, raised there)
            q.put(e)

    threading.Thread(target=pump, daemon=True, name="ray-index-rows").start()
    while True:
        t0 = time.monotonic()
        try:
            item = q.get(timeout=timeout_s)
        except queue.Empty:
            raise RayResourceError(
                f"Ray produced no embedded chunk for {time.monotonic() - t0:.0f} s with {workers} encoder actor(s) "
                f"asked (1 CPU each); the cluster has {_resources()}. Free CPUs, lower --ray-workers, lower "
                f"--chunk-size (one chunk must finish within the timeout), or raise --ray-timeout") from None
        if item is done:
            return
        if isinstance(item, BaseException):
            raise item
        yield item
