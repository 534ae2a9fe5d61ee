"""The state every router shares (:class:`Service`: embedder, index, config, metrics, readiness) and the request
helpers they use: the bounded JSON body, images decoded off the event loop, the error body."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import ServeConfig
from .embedder import Embedder
from .inputs import RequestError, decode_base64_image, open_image, parse_json_body
from .metrics import Metrics


@dataclass
class Service:
    """One app's state (``app.state.service``); ``ready`` turns True once the warm-up has run."""

    embedder: Embedder
    index: Any                      # EmbeddingIndex | None
    config: ServeConfig
    metrics: Metrics
    ready: bool = False
    warm_info: dict[str, Any] = field(default_factory=dict)
    warm_error: str | None = None

    @property
    def limits(self):
        return self.config.limits

    def need_index(self):
        if self.index is None:
            raise RequestError(409, "this server has no index: start it with --index INDEX (built by `mope index`; "
                                    "--create-index starts an empty one, filled with POST /index/items)", "no_index")
        return self.index


def service(request) -> Service:
    return request.app.state.service


def error_response(status: int, message: str, code: str = "invalid_request", headers: dict | None = None):
    """The JSON error body: ``{"error": {"message", "type", "code"}}`` (OpenAI's shape)."""
    from fastapi.responses import JSONResponse

    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status_code=status,
                        headers=headers)


async def read_json(request, svc: Service) -> dict[str, Any]:
    """The body as a JSON object, read up to ``--max-body-mb`` (chunked bodies too), nesting bounded."""
    limit = svc.limits.max_body_bytes
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body is above the limit of {limit} bytes (--max-body-mb)",
                               "body_too_large")
        chunks.append(chunk)
    return parse_json_body(b"".join(chunks), svc.limits)


async def decode_images(svc: Service, blobs: list[Any], where: str, encoded: bool = True) -> list[np.ndarray]:
    """Decode (base64 first when ``encoded``) and preprocess images off the event loop, all checked before any
    is encoded."""
    def work():
        out = []
        for i, v in enumerate(blobs):
            data = decode_base64_image(v, f"{where}[{i}]") if encoded else v
            out.append(svc.embedder.preprocess(open_image(data, svc.limits, f"{where}[{i}]")))
        return out
    return await asyncio.get_running_loop().run_in_executor(None, work)
