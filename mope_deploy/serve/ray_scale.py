"""Scale-out on Ray instead of a home-made cluster: the encoder as a Ray Serve deployment (``N`` replicas, batching
by ``@serve.batch``) behind the same FastAPI app, and bulk indexing on Ray Data (``map_batches`` over actor
workers), committed chunk by chunk like the local build.

    mope serve MODEL --ray --replicas 4 [--address ray://head:10001]
    mope index DATA --model MODEL --out INDEX --ray [--address ...]

The app (search, index, WAL) runs in one ingress replica: the index is one writer's state. Only the encoder,
where the compute is, scales out. Needs the ``ray`` extra (``pip install 'mope-deploy[ray]'``).
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import numpy as np


def require_ray():
    try:
        import ray
        from ray import serve  # noqa: F401
    except ImportError as e:
        from .errors import ServeError
        raise ServeError(f"Ray is not installed ({e}): pip install 'mope-deploy[ray]' (ray[serve,data])") from None
    return ray


def _config(model: str):
    """The model's config without loading weights (preprocessing and tokenising happen in the ingress)."""
    from ..runtime import is_bundle

    if is_bundle(model):
        from ..exporting import Bundle
        return Bundle(model).config()
    from ..models import load_config
    return load_config(model)


# ---------------------------------------------------------------------------------------------------------
# Ray Serve


def _deployments():
    """The two deployment classes (built lazily: ``ray.serve`` is an optional import)."""
    from ray import serve

    @serve.deployment(name="mope-encoder", ray_actor_options={"num_cpus": 1})
    class EncoderDeployment:
        """One encoder per replica; ``@serve.batch`` batches calls across requests and ingress replicas."""

        def __init__(self, model: str, backend: str, max_batch: int, max_wait_ms: float, threads: int | None):
            from ..runtime import open_encoder

            self.encoder = open_encoder(model, backend, threads=threads)
            self.batch_sizes: list[int] = []
            for method in (self.embed_tokens, self.embed_pixels):
                method.set_max_batch_size(max_batch)
                method.set_batch_wait_timeout_s(max_wait_ms / 1000.0)

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
        async def embed_tokens(self, rows: list[np.ndarray]) -> list[np.ndarray]:
            from ..runtime import l2_normalize
            self.batch_sizes.append(len(rows))
            return list(l2_normalize(self.encoder.run_texts(np.stack(rows))))

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
        async def embed_pixels(self, rows: list[np.ndarray]) -> list[np.ndarray]:
            from ..runtime import l2_normalize
            self.batch_sizes.append(len(rows))
            return list(l2_normalize(self.encoder.run_images(np.stack(rows))))

        def stats(self) -> dict[str, Any]:
            return {"batches": len(self.batch_sizes), "max_batch": max(self.batch_sizes, default=0),
                    "inputs": sum(self.batch_sizes), "encoder": self.encoder.describe()}

    @serve.deployment(name="mope-search", num_replicas=1, ray_actor_options={"num_cpus": 0})
    @serve.ingress()
    class SearchIngress:
        """The FastAPI app of :mod:`mope_deploy.serve.app`, embedding through the encoder deployment."""

        def __init__(self, encoder_handle, model: str, backend: str, index: str | None, limits: dict[str, Any],
                     api_key: str | None, max_batch: int, max_wait_ms: float):
            self.args = (encoder_handle, model, backend, index, limits, api_key, max_batch, max_wait_ms)

        def __serve_build_asgi_app__(self):
            from .app import create_app
            from .index import model_fingerprint
            from .inputs import Limits
            from .server import open_index

            handle, model, backend, index, limits, api_key, max_batch, max_wait_ms = self.args
            embedder = RayEmbedder(handle, _config(model), {"backend": backend, "replicas": "ray serve",
                                                            "max_batch": max_batch, "max_wait_ms": max_wait_ms})
            idx = open_index(index, model_fingerprint(model), embedder.embed_dim)
            return create_app(embedder, idx, limits=Limits(**limits), api_key=api_key, model_name=model)

    return EncoderDeployment, SearchIngress


class RayEmbedder:
    """The embedder interface of :class:`~mope_deploy.serve.embedder.LocalEmbedder` over a Ray Serve handle:
    one call per input, batched by ``@serve.batch`` in the encoder replicas."""

    def __init__(self, handle, config, info: dict[str, Any]):
        from ..models.processing import build_preprocess, build_tokenizer

        self.handle, self.config, self.info = handle, config, info
        self._preprocess, self._tokenizer = build_preprocess(config), build_tokenizer(config)

    @property
    def embed_dim(self) -> int:
        return int(self.config.embed_dim)

    def describe(self) -> dict[str, Any]:
        return {**self.info, "batching": "ray serve @serve.batch"}


    def preprocess(self, image) -> np.ndarray:
        return np.asarray(self._preprocess(image), dtype=np.float32)

    async def embed_texts(self, texts: list[str]) -> tuple[np.ndarray, int]:
        tokens = np.asarray(self._tokenizer(list(texts)))
        emb = np.stack(await asyncio.gather(*(self.handle.embed_tokens.remote(t) for t in tokens)))
        return emb, int(np.count_nonzero(tokens))

    async def embed_pixels(self, pixels: list[np.ndarray]) -> np.ndarray:
        return np.stack(await asyncio.gather(*(self.handle.embed_pixels.remote(p) for p in pixels)))

    def queue_depth(self) -> dict[str, int]:
        return {"text": 0, "image": 0}            # queues live in the replicas (see Ray's own metrics)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


def ray_application(model: str, *, backend: str = "onnxruntime", index: str | Path | None = None, replicas: int = 1,
                    max_batch: int = 32, max_wait_ms: float = 5.0, limits=None, api_key_file: str | Path | None = None,
                    threads: int | None = None):
    """The Ray Serve application (bind graph) of ``mope serve --ray``; checked before anything starts."""
    import dataclasses

    from .index import is_index
    from .inputs import Limits, read_api_key

    require_ray()
    if replicas < 1:
        raise ServeError(f"--replicas must be >= 1, got {replicas}")
    if index is not None and Path(index).exists() and not is_index(index):
        raise ServeError(f"--index {index} exists but is not an index (no index.json)")
    api_key = read_api_key(api_key_file) if api_key_file is not None else None
    EncoderDeployment, SearchIngress = _deployments()
    encoder = EncoderDeployment.options(num_replicas=replicas).bind(str(model), backend, max_batch, max_wait_ms,
                                                                     threads)
    return SearchIngress.bind(encoder, str(model), backend, str(index) if index is not None else None,
                              dataclasses.asdict(limits or Limits()), api_key, max_batch, max_wait_ms)


def run_ray(app, *, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
            allow_remote: bool = False, blocking: bool = True):
    """Connect to (or start) Ray, start Serve's HTTP proxy on ``host:port`` and run ``app``."""
    from .server import check_host

    check_host(host, allow_remote)
    ray = require_ray()
    from ray import serve

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, ignore_reinit_error=True)
    serve.start(http_options={"host": host, "port": port})
    return serve.run(app, name="mope", route_prefix="/", blocking=blocking)


# ---------------------------------------------------------------------------------------------------------
# Ray Data bulk indexing


class _EmbedBatch:
    """A Ray Data actor: opens the encoder and the collection once, embeds batches of positions."""

    def __init__(self, model: str, backend: str, data: str, load_options: dict[str, Any], offset: int,
                 threads: int | None = 1):
        from ..runtime import open_encoder
        from .build import load_collection

        self.encoder = open_encoder(model, backend, threads=threads)
        self.collection = load_collection(data, **load_options)
        self.offset = offset

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        from .build import embed_chunk

        positions = [int(i) + self.offset for i in batch["id"]]
        emb_rows, err_rows, png_rows = [], [], []
        s, e = min(positions), max(positions) + 1
        emb, kept, bad = embed_chunk(self.encoder, self.collection, s, e, batch_size=len(positions))
        by_pos = dict(zip(kept, emb))
        errors = dict(bad)
        for p in positions:
            ok = p in by_pos
            emb_rows.append(by_pos[p] if ok else np.zeros(self.encoder.config.embed_dim, np.float32))
            err_rows.append("" if ok else errors.get(p, "not embedded"))
            png = b""
            if ok and self.collection.source(p)["type"] == "memory":
                buf = io.BytesIO()
                self.collection.images[p].save(buf, format="PNG")
                png = buf.getvalue()
            png_rows.append(png)
        return {"pos": np.asarray(positions, np.int64), "emb": np.stack(emb_rows), "error": np.asarray(err_rows),
                "png": np.asarray(png_rows, dtype=object)}


def ray_chunk_fn(model: str, backend: str, data: str, load_options: dict[str, Any], store_dir: Path, *,
                 batch_size: int = 64, concurrency: int = 1, threads: int | None = 1):
    """A ``chunk_fn`` for :func:`~mope_deploy.serve.build.build_index` that embeds each chunk with Ray Data
    ``map_batches`` on ``concurrency`` actors (Ray must be initialised)."""
    ray = require_ray()

    def chunk_fn(start: int, stop: int):
        ds = ray.data.range(stop - start).map_batches(
            _EmbedBatch, fn_constructor_kwargs={"model": model, "backend": backend, "data": data,
                                                "load_options": load_options, "offset": start, "threads": threads},
            batch_size=batch_size, concurrency=concurrency, batch_format="numpy", num_cpus=1)
        rows = sorted(ds.take_all(), key=lambda r: int(r["pos"]))
        kept, embs, bad = [], [], []
        for r in rows:
            p = int(r["pos"])
            if r["error"]:
                bad.append((p, str(r["error"])))
                continue
            kept.append(p)
            embs.append(np.asarray(r["emb"], np.float32))
            if len(r["png"]):
                store_dir.mkdir(parents=True, exist_ok=True)
                from ..atomic import atomic_write_bytes
                atomic_write_bytes(store_dir / f"{p}.png", bytes(r["png"]))
        emb = np.stack(embs) if embs else np.zeros((0, 0), np.float32)
        return emb, kept, bad

    return chunk_fn
