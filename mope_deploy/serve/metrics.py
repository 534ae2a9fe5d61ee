"""Prometheus metrics of one app, and the ASGI guard in front of every request (API key, body size, timeout,
request metrics).

Request metrics are labelled by route *template* (``/items/{item_id:path}``), never by the raw path: an unknown
path and any request refused before routing (API key, declared body size) share the one label :data:`OTHER`, so
no client can create labels (memory and ``/metrics`` size stay bounded whatever paths are requested).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from .config import Limits
from .inputs import key_matches

log = logging.getLogger("mope.serve")
OTHER = "other"
#: no API key needed: liveness, readiness, the page shell and its icon (no data behind them)
OPEN_PATHS = ("/health", "/ready", "/", "/favicon.ico")
LATENCY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)


class Metrics:
    """Prometheus metrics of one app (own registry, so several apps can live in one process)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("mope_requests", "HTTP requests by route template", ["endpoint", "status"],
                                registry=self.registry)
        self.latency = Histogram("mope_request_seconds", "request latency by route template", ["endpoint"],
                                 registry=self.registry, buckets=LATENCY_BUCKETS)
        self.batch_size = Histogram("mope_batch_size", "inputs per encoder batch", ["tower"], registry=self.registry,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.batch_seconds = Histogram("mope_batch_seconds", "encoder time per batch", ["tower"],
                                       registry=self.registry,
                                       buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self.queue_depth = Gauge("mope_queue_depth", "inputs waiting for an encoder batch", ["tower"],
                                 registry=self.registry)
        self.index_items = Gauge("mope_index_items", "items in the index", registry=self.registry)

    def on_batch(self, tower: str, n: int, seconds: float) -> None:
        self.batch_size.labels(tower).observe(n)
        self.batch_seconds.labels(tower).observe(seconds)

    def render(self) -> bytes:
        from prometheus_client import generate_latest
        return generate_latest(self.registry)


def route_template(scope: dict[str, Any]) -> str:
    """The path template of the route the router matched for ``scope`` (it records the route in the scope), or
    :data:`OTHER` when none matched."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) and path else OTHER


class Guard:
    """Pure ASGI middleware (no per-request task or stream copies, unlike ``@app.middleware``): API key, the
    Content-Length limit, the per-request timeout and request metrics; every failure is a JSON error."""

    def __init__(self, app, *, limits: Limits, api_key: str | None, metrics: Metrics, error: Callable[..., Any]):
        self.app, self.limits, self.api_key = app, limits, api_key
        self.metrics, self.error = metrics, error

    def refusal(self, path: str, headers: dict[str, str]):
        """The response refusing this request before it runs (API key, declared size), or None."""
        if self.api_key is not None and path not in OPEN_PATHS and not key_matches(
                self.api_key, headers.get("authorization"), headers.get("x-api-key")):
            return self.error(401, "missing or wrong API key: send 'Authorization: Bearer KEY' (or X-API-Key)",
                              "invalid_api_key", {"WWW-Authenticate": "Bearer"})
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.limits.max_body_bytes:
            return self.error(413, f"request body of {length} bytes is above the limit of "
                                   f"{self.limits.max_body_bytes} (--max-body-mb); send fewer or smaller images",
                              "body_too_large")
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        state = {"status": 500, "started": False}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                state["status"], state["started"] = message["status"], True
            await send(message)

        response = self.refusal(scope["path"], headers)
        refused = response is not None
        if not refused:
            response = await self._run(scope, receive, send_wrapper, state)
        if response is not None:
            await response(scope, receive, send_wrapper)
        endpoint = OTHER if refused else route_template(scope)      # refused before routing: no route to name
        self.metrics.requests.labels(endpoint, str(state["status"])).inc()
        self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)

    async def _run(self, scope, receive, send_wrapper, state):
        try:
            await asyncio.wait_for(self.app(scope, receive, send_wrapper), self.limits.timeout_s)
        except asyncio.TimeoutError:
            if not state["started"]:
                return self.error(504, f"request took longer than {self.limits.timeout_s:g} s (--timeout); retry, or "
                                       "send less per request", "timeout")
        except Exception as e:  # noqa: BLE001  (a bug in one request must not take the server down)
            log.exception("unexpected error on %s", scope["path"])
            if not state["started"]:
                return self.error(500, f"internal error ({type(e).__name__}); the server keeps running",
                                  "internal_error")
        return None
