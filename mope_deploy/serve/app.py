"""The FastAPI app: embeddings (OpenAI shape), search, runtime indexing, health/readiness, Prometheus metrics, a
search page. The routes live in ``routes_embeddings``, ``routes_search`` and ``routes_ops``; bodies in ``models``.

Endpoints (JSON in and out; errors are ``{"error": {"message", "type", "code"}}`` with a 4xx/5xx status)::

    POST /v1/embeddings          {"input": str | [str], "encoding_format": "float"|"base64"}  text, OpenAI shape
    POST /v1/embeddings/images   same shape; "input" holds base64 images or data URLs
    GET  /v1/models              the served model (OpenAI shape)
    POST /search                 {"text": str} or {"image": b64}, "k": 10, "over": "images"|"captions"
    POST /index/items            {"items": [{"image": b64, "id": str?, "captions": [str]?}]}  durable (WAL)
    GET  /items/{id}             an item's metadata          GET /images/{id}   its image (from the index's files)
    GET  /health (liveness)   GET /ready (readiness)   GET /metrics (Prometheus text)   GET / (search page)

The server starts answering at once (``/health`` 200); a background warm-up builds the tokenizer and runs both
encoders (and, under the adaptive batch policy, measures their cost per input) and only then ``/ready`` turns 200.
"""

# (no `from __future__ import annotations`: FastAPI reads the handlers' annotations at runtime)

import asyncio
import gc
import logging
from contextlib import asynccontextmanager

from .batcher import QueueFullError
from .config import ServeConfig
from .inputs import RequestError
from .metrics import Guard, Metrics
from .service import Service, error_response
from .store import IndexWriteError

log = logging.getLogger("mope.serve")


def _require_web():
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
    except ImportError as e:
        from .errors import ServeError
        raise ServeError(f"serving needs the serve extra ({e}): pip install 'mope-deploy[serve]'") from None


async def warm_up(svc: Service) -> None:
    """Run the embedder's warm-up and one search, then mark the service ready (a failure is kept for /ready)."""
    try:
        if svc.config.warmup:
            svc.warm_info = await svc.embedder.warm()
            if svc.index is not None and len(svc.index):
                q = (await svc.embedder.embed_texts(["warm-up"], "warm-up")).vectors[0]
                await asyncio.get_running_loop().run_in_executor(None, svc.index.search, q, 1, "images")
        if svc.config.freeze_heap:
            svc.warm_info = {**svc.warm_info, "gc_frozen_objects": freeze_heap()}
        svc.ready = True
    except Exception as e:  # noqa: BLE001  (reported on /ready; /health stays up so the cause can be read)
        log.exception("warm-up failed")
        svc.warm_error = f"{type(e).__name__}: {e}"


def freeze_heap() -> int:
    """Collect once, then freeze every surviving object out of the cyclic GC (see ``ServeConfig.freeze_heap``);
    returns how many objects are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def _exception_handlers(app) -> None:
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(RequestError)
    async def _request_error(request, e: RequestError):
        return error_response(e.status, e.message, e.code)

    @app.exception_handler(QueueFullError)
    async def _queue_full(request, e: QueueFullError):
        return error_response(503, str(e), "overloaded", {"Retry-After": "1"})

    @app.exception_handler(IndexWriteError)
    async def _no_room(request, e: IndexWriteError):
        # nothing was added (the index rolled the write back): the client may retry once the disk has room
        return error_response(507, str(e), "insufficient_storage")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, e: StarletteHTTPException):
        return error_response(e.status_code, str(e.detail), "not_found" if e.status_code == 404 else "http_error")

    @app.exception_handler(RequestValidationError)
    async def _validation(request, e: RequestValidationError):
        return error_response(422, f"invalid request: {e.errors()[:3]}")

    @app.exception_handler(Exception)
    async def _unexpected(request, e: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return error_response(500, f"internal error ({type(e).__name__}); the server keeps running", "internal_error")


def create_app(embedder, index=None, config: ServeConfig | None = None, metrics: Metrics | None = None):
    """The app over ``embedder`` (an :class:`~mope_deploy.serve.embedder.Embedder`: local or Ray) and an optional
    ``index`` (an ``EmbeddingIndex``). ``config.api_key``: required on every endpoint but /health, /ready, / and
    /favicon.ico (constant-time compare)."""
    _require_web()
    from fastapi import FastAPI

    from . import routes_embeddings, routes_ops, routes_search

    config = config or ServeConfig()
    svc = Service(embedder, index, config, metrics or Metrics())
    embedder.attach_metrics(svc.metrics)

    @asynccontextmanager
    async def lifespan(app):
        await embedder.start()
        task = asyncio.get_running_loop().create_task(warm_up(svc), name="warm-up")
        try:
            yield
        finally:
            task.cancel()
            await embedder.stop()

    app = FastAPI(title="mope-deploy retrieval service", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = svc
    app.state.index, app.state.embedder = index, embedder          # what callers of build_app read
    _exception_handlers(app)
    app.add_middleware(Guard, limits=config.limits, api_key=config.api_key, metrics=svc.metrics,
                       error=error_response)
    for module in (routes_embeddings, routes_search, routes_ops):
        app.include_router(module.router)
    return app
