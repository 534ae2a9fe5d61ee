"""The FastAPI app: embeddings (OpenAI shape), search, runtime indexing, health, Prometheus metrics, a search page.

Endpoints (JSON in and out; errors are ``{"error": {"message", "type", "code"}}`` with a 4xx/5xx status)::

    POST /v1/embeddings          {"input": str | [str], "encoding_format": "float"|"base64"}  text, OpenAI shape
    POST /v1/embeddings/images   same shape; "input" holds base64 images or data URLs
    POST /search                 {"text": str} or {"image": b64}, "k": 10, "over": "images"|"captions"
    POST /index/items            {"items": [{"image": b64, "id": str?, "captions": [str]?}]}  durable (WAL)
    GET  /items/{id}             an item's metadata          GET /images/{id}   its image (from the index's files)
    GET  /health   GET /metrics (Prometheus text)   GET / (search page)

Images get their own endpoint rather than sharing ``/v1/embeddings``: OpenAI clients send strings there as
text, and a caption can be valid base64, so one field cannot carry both without guessing.
"""

# (no `from __future__ import annotations`: FastAPI reads the handlers' annotations at runtime)

import asyncio
import base64
import json
import logging
import time
import urllib.parse
import uuid
from contextlib import asynccontextmanager
from typing import Any

import numpy as np

from .batcher import QueueFullError
from .index import DuplicateIdError, EmbeddingIndex, Item
from .inputs import (Limits, RequestError, check_image_list, check_texts, decode_base64_image, key_matches,
                     open_image)

log = logging.getLogger("mope.serve")
OPEN_PATHS = ("/health", "/")          # no API key needed: no data behind them
INLINE_SEARCH_FLOATS = 1 << 20         # exact search over fewer floats than this (~0.2 ms) runs on the event loop


def _require_web():
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
    except ImportError as e:
        from .errors import ServeError
        raise ServeError(f"serving needs the serve extra ({e}): pip install 'mope-deploy[serve]'") from None


class Metrics:
    """Prometheus metrics of one app (own registry, so several apps can live in one process)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("mope_requests", "HTTP requests", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("mope_request_seconds", "request latency", ["endpoint"], registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.batch_size = Histogram("mope_batch_size", "inputs per encoder batch", ["tower"], registry=self.registry,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.batch_seconds = Histogram("mope_batch_seconds", "encoder time per batch", ["tower"],
                                       registry=self.registry,
                                       buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self.queue_depth = Gauge("mope_queue_depth", "inputs waiting for a batch", ["tower"], registry=self.registry)
        self.index_items = Gauge("mope_index_items", "items in the index", registry=self.registry)

    def on_batch(self, tower: str, n: int, seconds: float) -> None:
        self.batch_size.labels(tower).observe(n)
        self.batch_seconds.labels(tower).observe(seconds)


def create_app(embedder, index: EmbeddingIndex | None = None, *, limits: Limits | None = None,
               api_key: str | None = None, model_name: str = "model", metrics: Metrics | None = None):
    """The app over ``embedder`` (a :class:`~mope_deploy.serve.embedder.LocalEmbedder` or the Ray one) and an
    optional ``index``. ``api_key``: required on every endpoint but /health and / (constant-time compare)."""
    _require_web()
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from .page import PAGE

    limits = limits or Limits()
    metrics = metrics or Metrics()
    if hasattr(embedder, "attach_metrics"):
        embedder.attach_metrics(metrics)

    @asynccontextmanager
    async def lifespan(app):
        await embedder.start()
        try:
            yield
        finally:
            await embedder.stop()

    app = FastAPI(title="mope-deploy retrieval service", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.index, app.state.embedder, app.state.limits, app.state.metrics = index, embedder, limits, metrics

    def error(status: int, message: str, code: str = "invalid_request", headers: dict | None = None):
        kind = "invalid_request_error" if status < 500 else "server_error"
        return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status_code=status,
                            headers=headers)

    app.add_middleware(_Guard, limits=limits, api_key=api_key, metrics=metrics, error=error)

    @app.exception_handler(RequestError)
    async def _request_error(request, e: RequestError):
        return error(e.status, e.message, e.code)

    @app.exception_handler(QueueFullError)
    async def _queue_full(request, e: QueueFullError):
        return error(503, str(e), "overloaded", {"Retry-After": "1"})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, e: StarletteHTTPException):
        return error(e.status_code, str(e.detail), "not_found" if e.status_code == 404 else "http_error")

    @app.exception_handler(RequestValidationError)
    async def _validation(request, e: RequestValidationError):
        return error(422, f"invalid request: {e.errors()[:3]}")

    @app.exception_handler(Exception)
    async def _unexpected(request, e: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return error(500, f"internal error ({type(e).__name__}); the server keeps running", "internal_error")

    async def read_json(request: Request) -> dict[str, Any]:
        """The body as a JSON object, read up to the size limit (chunked bodies too)."""
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise RequestError(413, f"request body is above the limit of {limits.max_body_bytes} bytes "
                                        "(--max-body-mb)", "body_too_large")
            chunks.append(chunk)
        body = b"".join(chunks)
        if not body:
            raise RequestError(400, "empty request body: send a JSON object")
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(400, f"malformed JSON ({e}); send a JSON object", "invalid_json") from None
        if not isinstance(data, dict):
            raise RequestError(400, f"the body must be a JSON object, got {type(data).__name__}", "invalid_json")
        return data

    async def images_to_pixels(values: list[Any], where: str) -> list[np.ndarray]:
        """Decode and preprocess images off the event loop (all checked before any is encoded)."""
        def work():
            return [embedder.preprocess(open_image(decode_base64_image(v, f"{where}[{i}]"), limits, f"{where}[{i}]"))
                    for i, v in enumerate(values)]
        return await asyncio.get_running_loop().run_in_executor(None, work)

    def need_index() -> EmbeddingIndex:
        if index is None:
            raise RequestError(409, "this server has no index: start it with --index INDEX (built by `mope index`, "
                                    "or a new path to fill with POST /index/items)", "no_index")
        return index

    def embeddings_response(emb: np.ndarray, fmt: str, n_tokens: int) -> dict[str, Any]:
        def encode(v: np.ndarray):
            return base64.b64encode(v.astype("<f4").tobytes()).decode() if fmt == "base64" else v.tolist()
        return {"object": "list", "model": model_name,
                "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(emb)],
                "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}

    def check_format(data: dict[str, Any]) -> str:
        fmt = data.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise RequestError(422, f"encoding_format {fmt!r}: use 'float' or 'base64'")
        dims = data.get("dimensions")
        if dims is not None and dims != embedder.embed_dim:
            raise RequestError(422, f"dimensions={dims}: this model's embeddings have {embedder.embed_dim} "
                                    "(no truncation is offered)")
        return fmt

    async def embed_texts(texts: list[str]) -> tuple[np.ndarray, int]:
        return await embedder.embed_texts(texts)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        data = await read_json(request)
        fmt = check_format(data)
        if "input" not in data:
            raise RequestError(422, "missing 'input': a string or a list of strings")
        emb, n_tokens = await embed_texts(check_texts(data["input"], limits))
        return JSONResponse(embeddings_response(emb, fmt, n_tokens))

    @app.post("/v1/embeddings/images")
    async def image_embeddings(request: Request):
        data = await read_json(request)
        fmt = check_format(data)
        if "input" not in data:
            raise RequestError(422, "missing 'input': a base64 image (or data URL) or a list of them")
        pixels = await images_to_pixels(check_image_list(data["input"], limits), "input")
        return JSONResponse(embeddings_response(await embedder.embed_pixels(pixels), fmt, 0))

    def hit_json(rank: int, hit) -> dict[str, Any]:
        out = {"rank": rank, "id": hit.item.id, "score": hit.score, "position": hit.position,
               "captions": hit.item.captions, "image_url": "/images/" + urllib.parse.quote(hit.item.id, safe="")}
        if hit.caption is not None:
            out["caption"] = hit.caption
        return out

    @app.post("/search")
    async def search(request: Request):
        data = await read_json(request)
        idx = need_index()
        k = data.get("k", 10)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= limits.max_k:
            raise RequestError(422, f"k={k!r}: give an integer between 1 and {limits.max_k}")
        over = data.get("over", "images")
        if over not in ("images", "captions"):
            raise RequestError(422, f"over={over!r}: search 'images' or 'captions'")
        if over == "captions" and not idx.has_captions:
            raise RequestError(409, "this index has no captions to search (build it from a dataset with captions)")
        if ("text" in data) == ("image" in data):
            raise RequestError(422, "give exactly one of 'text' (a string) or 'image' (base64 or a data URL)")
        if "text" in data:
            if not isinstance(data["text"], str):
                raise RequestError(422, "'text' must be a string")
            q, _ = await embed_texts(check_texts(data["text"], limits, "text"))
        else:
            q = await embedder.embed_pixels(await images_to_pixels([data["image"]], "image"))
        if len(idx) * idx.dim <= INLINE_SEARCH_FLOATS:
            hits = idx.search(q[0], k, over)       # microseconds: a thread hop would cost more than the search
        else:
            hits = await asyncio.get_running_loop().run_in_executor(None, lambda: idx.search(q[0], k, over))
        # JSONResponse directly: FastAPI's jsonable_encoder walk costs more than the search on small indexes
        return JSONResponse({"object": "search", "over": over, "k": k, "model": model_name,
                             "results": [hit_json(r + 1, h) for r, h in enumerate(hits)]})

    @app.post("/index/items")
    async def add_items(request: Request):
        data = await read_json(request)
        idx = need_index()
        raw = data.get("items")
        if not isinstance(raw, list) or not raw:
            raise RequestError(422, "'items' must be a non-empty list of {\"image\": base64, \"id\"?: str, "
                                    "\"captions\"?: [str]}")
        if len(raw) > limits.max_images:
            raise RequestError(413, f"{len(raw)} items in one request, above the limit of {limits.max_images} "
                                    "(--max-images); split the request", "too_many_inputs")
        items, blobs = [], []
        for i, r in enumerate(raw):
            if not isinstance(r, dict) or "image" not in r:
                raise RequestError(422, f"items[{i}]: expected an object with 'image' (base64 or a data URL)")
            item_id = r.get("id", uuid.uuid4().hex)
            if not isinstance(item_id, str) or not item_id or len(item_id) > 512:
                raise RequestError(422, f"items[{i}].id: a non-empty string of at most 512 characters")
            caps = r.get("captions", [])
            caps = check_texts(caps, limits, f"items[{i}].captions") if caps else []
            items.append(Item(item_id, {"type": "stored"}, caps))
            blobs.append(decode_base64_image(r["image"], f"items[{i}].image"))
        ids = [it.id for it in items]
        if len(set(ids)) != len(ids) or any(idx.item(x) is not None for x in ids):
            dup = next(x for x in ids if ids.count(x) > 1 or idx.item(x) is not None)
            raise RequestError(409, f"item id {dup!r} is already in the index (or twice in this request); ids are "
                                    "unique", "duplicate_id")

        def decode_all():
            return [embedder.preprocess(open_image(b, limits, f"items[{i}].image")) for i, b in enumerate(blobs)]
        pixels = await asyncio.get_running_loop().run_in_executor(None, decode_all)
        emb = await embedder.embed_pixels(pixels)
        cap_emb = []
        for it in items:
            cap_emb.append((await embed_texts(it.captions))[0] if it.captions else None)
        try:
            positions = await asyncio.get_running_loop().run_in_executor(
                None, lambda: idx.add(items, emb, blobs, cap_emb))
        except DuplicateIdError as e:
            raise RequestError(409, str(e), "duplicate_id") from None
        metrics.index_items.set(len(idx))
        return {"object": "list", "added": [{"id": it.id, "position": p} for it, p in zip(items, positions)],
                "size": len(idx)}

    @app.get("/items/{item_id:path}")
    async def get_item(item_id: str):
        it = need_index().item(item_id)
        if it is None:
            raise RequestError(404, f"no item with id {item_id!r} in the index", "not_found")
        return {"id": it.id, "captions": it.captions, "source": it.source,
                "image_url": "/images/" + urllib.parse.quote(it.id, safe="")}

    @app.get("/images/{item_id:path}")
    async def get_image(item_id: str):
        idx = need_index()
        it = idx.item(item_id)
        if it is None:
            raise RequestError(404, f"no item with id {item_id!r} in the index", "not_found")
        data = await asyncio.get_running_loop().run_in_executor(None, idx.image_bytes, it)
        if data is None:
            raise RequestError(404, f"item {item_id!r}: its image file is gone ({it.source.get('path')})",
                               "image_missing")
        return Response(data, media_type=_media_type(data), headers={"Cache-Control": "private, max-age=3600",
                                                                     "X-Content-Type-Options": "nosniff"})

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "encoder": embedder.describe(),
                "index": index.describe() if index is not None else None, "queue": embedder.queue_depth()}

    @app.get("/metrics")
    async def prometheus():
        for tower, n in embedder.queue_depth().items():
            metrics.queue_depth.labels(tower).set(n)
        if index is not None:
            metrics.index_items.set(len(index))
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(PAGE, headers={"Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; "
                                                                      "style-src 'unsafe-inline'; "
                                                                      "script-src 'unsafe-inline'"})

    return app


class _Guard:
    """Pure ASGI middleware (no per-request task or stream copies, unlike ``@app.middleware``): API key, the
    Content-Length limit, the per-request timeout and request metrics; every failure is a JSON error."""

    def __init__(self, app, *, limits: Limits, api_key: str | None, metrics: Metrics, error):
        self.app, self.limits, self.api_key, self.metrics, self.error = app, limits, api_key, metrics, error

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        path = scope["path"]
        endpoint = path if not path.startswith(("/images/", "/items/")) else path.split("/", 2)[1]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        state = {"status": 500, "started": False}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                state["status"], state["started"] = message["status"], True
            await send(message)

        response = None
        if self.api_key is not None and path not in OPEN_PATHS and not key_matches(
                self.api_key, headers.get("authorization"), headers.get("x-api-key")):
            response = self.error(401, "missing or wrong API key: send 'Authorization: Bearer KEY' (or X-API-Key)",
                                  "invalid_api_key", {"WWW-Authenticate": "Bearer"})
        else:
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > self.limits.max_body_bytes:
                response = self.error(413, f"request body of {length} bytes is above the limit of "
                                           f"{self.limits.max_body_bytes} (--max-body-mb); send fewer or smaller "
                                           "images", "body_too_large")
        if response is None:
            try:
                await asyncio.wait_for(self.app(scope, receive, send_wrapper), self.limits.timeout_s)
            except asyncio.TimeoutError:
                if not state["started"]:
                    response = self.error(504, f"request took longer than {self.limits.timeout_s:g} s (--timeout); "
                                               "retry, or send less per request", "timeout")
            except Exception as e:  # noqa: BLE001  (a bug in one request must not take the server down)
                log.exception("unexpected error on %s", path)
                if not state["started"]:
                    response = self.error(500, f"internal error ({type(e).__name__}); the server keeps running",
                                          "internal_error")
        if response is not None:
            await response(scope, receive, send_wrapper)
        self.metrics.requests.labels(endpoint, str(state["status"])).inc()
        self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)


def _media_type(data: bytes) -> str:
    for magic, kind in ((b"\x89PNG", "image/png"), (b"\xff\xd8", "image/jpeg"), (b"GIF8", "image/gif"),
                        (b"BM", "image/bmp")):
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"
