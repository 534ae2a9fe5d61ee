"""OpenAI-compatible routes: ``POST /v1/embeddings`` (text), ``POST /v1/embeddings/images``, ``GET /v1/models``.

Images get their own endpoint rather than sharing ``/v1/embeddings``: OpenAI clients send strings there as text,
and a caption can be valid base64, so one field cannot carry both without guessing.
"""

# (no `from __future__ import annotations`: FastAPI reads the handlers' annotations at runtime)

import base64
import time

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from .inputs import RequestError
from .models import (Embedding, EmbeddingsRequest, EmbeddingsResponse, ImageEmbeddingsRequest, ModelCard,
                     ModelList, Usage, validate)
from .service import decode_images, read_json, service

router = APIRouter()
STARTED = int(time.time())


def _embeddings(emb: np.ndarray, fmt: str, tokens: int, model: str, truncated: list[int]) -> JSONResponse:
    def encode(v: np.ndarray):
        return base64.b64encode(v.astype("<f4").tobytes()).decode() if fmt == "base64" else v.tolist()
    body = EmbeddingsResponse(model=model, data=[Embedding(index=i, embedding=encode(v)) for i, v in enumerate(emb)],
                              usage=Usage(prompt_tokens=tokens, total_tokens=tokens), truncated_inputs=truncated)
    return JSONResponse(body.model_dump())


def _check_dimensions(req: EmbeddingsRequest, dim: int) -> None:
    if req.dimensions is not None and req.dimensions != dim:
        raise RequestError(422, f"dimensions={req.dimensions}: this model's embeddings have {dim} (no truncation is "
                                "offered)")


@router.post("/v1/embeddings", response_model=EmbeddingsResponse)
async def embeddings(request: Request):
    """Text embeddings, OpenAI's shape (texts past the context are truncated and listed in truncated_inputs)."""
    svc = service(request)
    req = validate(EmbeddingsRequest, await read_json(request, svc), svc.limits)
    _check_dimensions(req, svc.embedder.embed_dim)
    out = await svc.embedder.embed_texts(req.input, "input")
    return _embeddings(out.vectors, req.encoding_format, out.tokens, svc.config.model_name, out.truncated)


@router.post("/v1/embeddings/images", response_model=EmbeddingsResponse)
async def image_embeddings(request: Request):
    """Image embeddings; ``input`` holds base64 images or data URLs."""
    svc = service(request)
    req = validate(ImageEmbeddingsRequest, await read_json(request, svc), svc.limits)
    _check_dimensions(req, svc.embedder.embed_dim)
    pixels = await decode_images(svc, req.input, "input")
    return _embeddings(await svc.embedder.embed_pixels(pixels), req.encoding_format, 0, svc.config.model_name, [])


@router.get("/v1/models", response_model=ModelList)
async def models(request: Request):
    """The one model this server embeds with (OpenAI's model list)."""
    name = service(request).config.model_name
    return JSONResponse(ModelList(data=[ModelCard(id=name, created=STARTED)]).model_dump())


@router.get("/v1/models/{model_id:path}", response_model=ModelCard)
async def model(request: Request, model_id: str):
    name = service(request).config.model_name
    if model_id != name:
        raise RequestError(404, f"no model {model_id!r} here; this server serves {name!r} (GET /v1/models)",
                           "model_not_found")
    return JSONResponse(ModelCard(id=name, created=STARTED).model_dump())
