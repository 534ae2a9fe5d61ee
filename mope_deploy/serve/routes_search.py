"""Retrieval routes: ``POST /search``, ``POST /index/items`` (durable), ``GET /items/{id}``, ``GET /images/{id}``.
The index is used only through its public API (``search``, ``add``, ``item``, ``image_bytes``)."""

# (no `from __future__ import annotations`: FastAPI reads the handlers' annotations at runtime)

import asyncio
import urllib.parse
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from .index import DuplicateIdError, Item
from .inputs import RequestError, decode_base64_image
from .models import (AddedItem, AddItemsRequest, AddItemsResponse, ItemResponse, SearchHit, SearchRequest,
                     SearchResponse, validate)
from .service import decode_images, read_json, service

router = APIRouter()
INLINE_SEARCH_FLOATS = 1 << 20         # exact search over fewer floats than this (~0.2 ms) runs on the event loop


def image_url(item_id: str) -> str:
    return "/images/" + urllib.parse.quote(item_id, safe="")


def _hit(rank: int, hit) -> SearchHit:
    return SearchHit(rank=rank, id=hit.item.id, score=hit.score, position=hit.position, captions=hit.item.captions,
                     image_url=image_url(hit.item.id), caption=hit.caption)


@router.post("/search", response_model=SearchResponse, response_model_exclude_none=True)
async def search(request: Request):
    """Top-k images (or captions) for a text or an image query."""
    svc = service(request)
    req = validate(SearchRequest, await read_json(request, svc), svc.limits)
    idx = svc.need_index()
    if req.over == "captions" and not idx.has_captions:
        raise RequestError(409, "this index has no captions to search (build it from a dataset with captions)")
    if (req.text is None) == (req.image is None):
        raise RequestError(422, "give exactly one of 'text' (a string) or 'image' (base64 or a data URL)")
    truncated = False
    if req.text is not None:
        out = await svc.embedder.embed_texts([req.text], "text")
        q, truncated = out.vectors, bool(out.truncated)
    else:
        q = await svc.embedder.embed_pixels(await decode_images(svc, [req.image], "image"))
    if len(idx) * idx.dim <= INLINE_SEARCH_FLOATS:
        hits = idx.search(q[0], req.k, req.over)    # microseconds: a thread hop would cost more than the search
    else:
        hits = await asyncio.get_running_loop().run_in_executor(None, lambda: idx.search(q[0], req.k, req.over))
    body = SearchResponse(over=req.over, k=req.k, model=svc.config.model_name, truncated=truncated,
                          results=[_hit(r + 1, h) for r, h in enumerate(hits)])
    return JSONResponse(body.model_dump(exclude_none=True))


@router.post("/index/items", response_model=AddItemsResponse)
async def add_items(request: Request):
    """Add items durably (write-ahead log, fsynced before the reply)."""
    svc = service(request)
    req = validate(AddItemsRequest, await read_json(request, svc), svc.limits)
    idx = svc.need_index()
    items = [Item(r.id or uuid.uuid4().hex, {"type": "stored"}, r.captions) for r in req.items]
    blobs = [decode_base64_image(r.image, f"items[{i}].image") for i, r in enumerate(req.items)]
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids) or any(idx.item(x) is not None for x in ids):
        dup = next(x for x in ids if ids.count(x) > 1 or idx.item(x) is not None)
        raise RequestError(409, f"item id {dup!r} is already in the index (or twice in this request); ids are "
                                "unique", "duplicate_id")
    pixels = await decode_images(svc, blobs, "items", encoded=False)
    emb = await svc.embedder.embed_pixels(pixels)
    cap_emb = [(await svc.embedder.embed_texts(it.captions, "captions")).vectors if it.captions else None
               for it in items]
    try:
        positions = await asyncio.get_running_loop().run_in_executor(
            None, lambda: idx.add(items, emb, blobs, cap_emb))
    except DuplicateIdError as e:
        raise RequestError(409, str(e), "duplicate_id") from None
    svc.metrics.index_items.set(len(idx))
    body = AddItemsResponse(added=[AddedItem(id=it.id, position=p) for it, p in zip(items, positions)], size=len(idx))
    return JSONResponse(body.model_dump())


@router.get("/items/{item_id:path}", response_model=ItemResponse)
async def get_item(request: Request, item_id: str):
    """An item's metadata."""
    it = service(request).need_index().item(item_id)
    if it is None:
        raise RequestError(404, f"no item with id {item_id!r} in the index", "not_found")
    return JSONResponse(ItemResponse(id=it.id, captions=it.captions, source=it.source,
                                     image_url=image_url(it.id)).model_dump())


@router.get("/images/{item_id:path}")
async def get_image(request: Request, item_id: str):
    """An item's image file, from the index's files."""
    idx = service(request).need_index()
    it = idx.item(item_id)
    if it is None:
        raise RequestError(404, f"no item with id {item_id!r} in the index", "not_found")
    data = await asyncio.get_running_loop().run_in_executor(None, idx.image_bytes, it)
    if data is None:
        raise RequestError(404, f"item {item_id!r}: its image file is gone ({it.source.get('path')})",
                           "image_missing")
    return Response(data, media_type=media_type(data), headers={"Cache-Control": "private, max-age=3600",
                                                                "X-Content-Type-Options": "nosniff"})


def media_type(data: bytes) -> str:
    for magic, kind in ((b"\x89PNG", "image/png"), (b"\xff\xd8", "image/jpeg"), (b"GIF8", "image/gif"),
                        (b"BM", "image/bmp")):
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"
