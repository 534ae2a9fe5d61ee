"""Scale-out on Ray instead of a home-made cluster: the encoder as a Ray Serve deployment (``N`` replicas, batching
by ``@serve.batch``) behind the same FastAPI app, and bulk indexing on Ray Data (``map_batches`` over actor
workers, :mod:`.ray_index`), committed chunk by chunk like the local build.

    mope serve MODEL --ray --replicas 4 [--address ray://head:10001]
    mope index DATA --model MODEL --out INDEX --ray [--address ...]

The app (search, index, WAL) runs in one ingress replica: the index is one writer's state. Only the encoder,
where the compute is, scales out. Needs the ``ray`` extra (``pip install 'mope-deploy[ray]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import ServeError
from .ray_cluster import ray_address, start_ray
from .ray_cluster import require_ray as _require_ray
from .ray_embedder import RayEmbedder  # noqa: F401  (the ingress's embedder; importable from here)


def require_ray():
    return _require_ray("serve")


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
        async def embed_tokens(self, rows: list[np.ndarray]) -> list[tuple]:
            return self._run(self.encoder.run_texts, rows)

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
        async def embed_pixels(self, rows: list[np.ndarray]) -> list[tuple]:
            return self._run(self.encoder.run_images, rows)

        def _run(self, run, rows: list[np.ndarray]) -> list[tuple]:
            """Rows of :func:`~mope_deploy.serve.ray_embedder.batch_rows`: the batch's size and time ride on its
            first row, so the ingress's /metrics observes each batch once."""
            import time

            from ..runtime import l2_normalize
            from .ray_embedder import batch_rows
            self.batch_sizes.append(len(rows))
            t0 = time.perf_counter()
            return batch_rows(l2_normalize(run(np.stack(rows))), time.perf_counter() - t0)

        def stats(self) -> dict[str, Any]:
            return {"batches": len(self.batch_sizes), "max_batch": max(self.batch_sizes, default=0),
                    "inputs": sum(self.batch_sizes), "encoder": self.encoder.describe()}

    @serve.deployment(name="mope-search", num_replicas=1, ray_actor_options={"num_cpus": 0})
    @serve.ingress()
    class SearchIngress:
        """The FastAPI app of :mod:`mope_deploy.serve.app`, embedding through the encoder deployment."""

        def __init__(self, encoder_handle, model: str, backend: str, index: str | None, config: dict[str, Any],
                     create_index: bool = False):
            self.args = (encoder_handle, model, backend, index, config, create_index)

        def __serve_build_asgi_app__(self):
            from .app import create_app
            from .config import BatchSettings, Limits, ServeConfig
            from .index import model_fingerprint
            from .server import open_index

            handle, model, backend, index, config, create_index = self.args
            config = ServeConfig(**{**config, "limits": Limits(**config["limits"]),
                                    "batching": BatchSettings(**config["batching"])})
            b = config.batching
            embedder = RayEmbedder(handle, _config(model), {"backend": backend, "replicas": "ray serve",
                                                            "max_batch": b.max_batch, "max_wait_ms": b.max_wait_ms},
                                   strict_length=config.strict_length)
            idx = open_index(index, model_fingerprint(model), embedder.embed_dim, create_index)
            return create_app(embedder, idx, config)

    return EncoderDeployment, SearchIngress


def ray_application(model: str, *, backend: str = "onnxruntime", index: str | Path | None = None, replicas: int = 1,
                    config=None, api_key_file: str | Path | None = None, threads: int | None = None,
                    create_index: bool = False):
    """The Ray Serve application (bind graph) of ``mope serve --ray``; checked before anything starts.
    ``config``: a :class:`~mope_deploy.serve.config.ServeConfig` (its batching drives ``@serve.batch``)."""
    import dataclasses

    from .config import ServeConfig
    from .inputs import read_api_key
    from .server import check_index_path

    require_ray()
    if replicas < 1:
        raise ServeError(f"--replicas must be >= 1, got {replicas}")
    check_index_path(index, create_index)
    config = dataclasses.replace(config or ServeConfig(), model_name=str(model))
    if api_key_file is not None:
        config.api_key = read_api_key(api_key_file)
    b = config.batching
    EncoderDeployment, SearchIngress = _deployments()
    encoder = EncoderDeployment.options(num_replicas=replicas).bind(str(model), backend, b.max_batch, b.max_wait_ms,
                                                                     threads)
    return SearchIngress.bind(encoder, str(model), backend, str(index) if index is not None else None,
                              dataclasses.asdict(config), create_index)


def check_ray_start(address: str | None, allow_remote: bool) -> None:
    """Refuse to start a local Ray for `mope serve --ray` without ``allow_remote`` (see :func:`run_ray`)."""
    ray = require_ray()
    if ray_address(address) is None and not allow_remote and not ray.is_initialized():
        raise ServeError(
            f"a local Ray's own services (GCS, raylet, workers) listen on every interface (Ray {ray.__version__} "
            "binds its gRPC servers so), which `mope serve --ray` cannot confine to loopback: start Ray yourself "
            "(`ray start --head`, behind a firewall) and pass --address auto, or pass --allow-remote to let mope "
            "start it so")


def run_ray(app, *, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
            allow_remote: bool = False, blocking: bool = True):
    """Connect to (or start) Ray, start Serve's HTTP proxy on ``host:port`` and run ``app``.

    A local Ray is started only with ``allow_remote``: Ray's gRPC servers bind every interface, and Serve's HTTP
    proxy must be reachable from this host, so the private network of ``mope index --ray`` cannot hold it."""
    from .server import check_host

    check_host(host, allow_remote)
    require_ray()
    from ray import serve

    check_ray_start(address, allow_remote)
    start_ray(address, allow_remote=True, log_to_driver=True)   # allowed by the check: remote, or --allow-remote
    serve.start(http_options={"host": host, "port": port})
    return serve.run(app, name="mope", route_prefix="/", blocking=blocking)


# Ray Data bulk indexing lives in .ray_index (RayChunks), the cluster checks in .ray_cluster.
