"""The :class:`~mope_deploy.serve.embedder.Embedder` over a Ray Serve handle (``mope serve --ray``): tokenising and
preprocessing in the ingress, one call per input to the encoder deployment, batched there by ``@serve.batch``.

Metrics match the local server's: each encoder batch returns its size and time with its first row only (so the
ingress observes every batch once in ``mope_batch_size`` / ``mope_batch_seconds``), and ``mope_queue_depth`` counts
the inputs sent to the replicas and not yet answered.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from .embedder import WARM_TEXTS, TextEmbeddings, context_length, gather_texts, text_rows, tokenize


def batch_rows(vectors: np.ndarray, seconds: float) -> list[tuple[np.ndarray, int, float]]:
    """What an encoder replica returns for one ``@serve.batch`` call: ``(vector, batch size on the first row else 0,
    seconds)`` per row."""
    n = len(vectors)
    return [(v, n if i == 0 else 0, seconds) for i, v in enumerate(vectors)]


class RayEmbedder:
    """``embed_texts`` / ``embed_pixels`` over a handle whose ``embed_tokens`` / ``embed_pixels`` take one input
    and return one :func:`batch_rows` row."""

    def __init__(self, handle, config, info: dict[str, Any], *, strict_length: bool = False):
        from ..models.processing import build_preprocess, build_tokenizer

        self.handle, self.config, self.info, self.strict_length = handle, config, info, strict_length
        self._preprocess, self._tokenizer = build_preprocess(config), build_tokenizer(config)
        self._in_flight = {"text": 0, "image": 0}
        self.metrics = None

    @property
    def embed_dim(self) -> int:
        return int(self.config.embed_dim)

    @property
    def context_length(self) -> int:
        return context_length(self.config)

    def describe(self) -> dict[str, Any]:
        return {**self.info, "batching": "ray serve @serve.batch"}

    def attach_metrics(self, metrics) -> None:
        self.metrics = metrics

    def preprocess(self, image) -> np.ndarray:
        return np.asarray(self._preprocess(image), dtype=np.float32)

    async def _call(self, tower: str, method, inputs: list[np.ndarray]) -> list[np.ndarray]:
        self._in_flight[tower] += len(inputs)
        try:
            rows = await asyncio.gather(*(method.remote(x) for x in inputs))
        finally:
            self._in_flight[tower] -= len(inputs)
        if self.metrics is not None:
            for _, n, seconds in rows:
                if n:
                    self.metrics.on_batch(tower, n, seconds)
        return [r[0] for r in rows]

    async def embed_texts(self, texts: list[str], where: str = "input") -> TextEmbeddings:
        ctx = self.context_length
        ids, lengths = tokenize(self._tokenizer, texts, ctx)
        refused = {i for i, n in enumerate(lengths) if n > ctx} if self.strict_length else set()
        keep = [i for i in range(len(texts)) if i not in refused]
        vecs = await self._call("text", self.handle.embed_tokens, [ids[i] for i in keep]) if keep else []
        return gather_texts(text_rows(np.stack(vecs) if vecs else None, lengths, ctx, refused), ctx, where)

    async def embed_pixels(self, pixels: list[np.ndarray]) -> np.ndarray:
        return np.stack(await self._call("image", self.handle.embed_pixels, list(pixels)))

    def queue_depth(self) -> dict[str, int]:
        return dict(self._in_flight)

    async def start(self) -> None:
        pass

    async def warm(self) -> dict[str, Any]:
        """The tokenizer, the preprocessing and one call to each tower of the replicas."""
        from PIL import Image

        t0 = time.perf_counter()
        await self.embed_texts(WARM_TEXTS, "warm-up")
        await self.embed_pixels([self.preprocess(Image.new("RGB", (64, 48), (120, 30, 200)))])
        return {"warm_s": round(time.perf_counter() - t0, 3)}

    async def stop(self) -> None:
        pass
