"""Operations routes: ``GET /health`` (liveness), ``GET /ready`` (readiness: 503 until the warm-up has run),
``GET /metrics`` (Prometheus text), ``GET /`` (the search page) and ``GET /favicon.ico``."""

# (no `from __future__ import annotations`: FastAPI reads the handlers' annotations at runtime)

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from .page import FAVICON_SVG, PAGE
from .service import service

router = APIRouter()
PAGE_CSP = "default-src 'self'; img-src 'self' blob: data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def _index_info(svc) -> dict | None:
    """The index's description and its health counts (write-ahead log, compaction), when it has them."""
    if svc.index is None:
        return None
    health = getattr(svc.index, "health", None)
    return {**svc.index.describe(), **(health() if health is not None else {})}


@router.get("/health")
async def health(request: Request):
    """Liveness: the process answers (200 even while warming up; see /ready)."""
    svc = service(request)
    return JSONResponse({"status": "ok", "ready": svc.ready, "model": svc.config.model_name,
                         "encoder": svc.embedder.describe(), "index": _index_info(svc),
                         "queue": svc.embedder.queue_depth()})


@router.get("/ready")
async def ready(request: Request):
    """Readiness: 200 once both encoders and the tokenizer are loaded and warm, 503 before (or if warm-up failed)."""
    svc = service(request)
    if not svc.ready:
        why = f"warm-up failed: {svc.warm_error}" if svc.warm_error else "warming up: encoders not run yet"
        return JSONResponse({"status": "not ready", "reason": why}, status_code=503, headers={"Retry-After": "1"})
    return JSONResponse({"status": "ready", "model": svc.config.model_name, "warm_up": svc.warm_info,
                         "index": _index_info(svc)})


@router.get("/metrics")
async def prometheus(request: Request):
    from prometheus_client import CONTENT_TYPE_LATEST

    svc = service(request)
    for tower, n in svc.embedder.queue_depth().items():
        svc.metrics.queue_depth.labels(tower).set(n)
    if svc.index is not None:
        svc.metrics.index_items.set(len(svc.index))
    return Response(svc.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/", response_class=HTMLResponse)
async def page():
    return HTMLResponse(PAGE, headers={"Content-Security-Policy": PAGE_CSP})


@router.get("/favicon.ico")
async def favicon():
    return Response(FAVICON_SVG, media_type="image/svg+xml", headers={"Cache-Control": "public, max-age=86400"})
