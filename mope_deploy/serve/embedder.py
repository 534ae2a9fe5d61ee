"""What the app calls to embed: an :class:`~mope_deploy.runtime.Encoder` behind two micro-batchers (one per
tower), run on one worker thread. The Ray Serve variant (:mod:`mope_deploy.serve.ray_serve`) provides the same
methods over a deployment handle."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from ..runtime import l2_normalize
from .batcher import MicroBatcher


def tokenize(encoder, texts: list[str]) -> np.ndarray:
    """Token ids ``[len(texts), context_length]`` with the model's own tokenizer."""
    return np.asarray(encoder.tokenizer(list(texts)))


def _chunked(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, limit: int | None) -> np.ndarray:
    if not limit or len(x) <= limit:
        return run(x)
    return np.concatenate([run(x[i:i + limit]) for i in range(0, len(x), limit)])


class LocalEmbedder:
    """``embed_texts`` / ``embed_pixels`` through cross-request batchers on one encoder thread."""

    def __init__(self, encoder, *, max_batch: int = 32, max_wait_ms: float = 5.0, max_queue: int = 1024,
                 on_batch: Callable[[str, int, float], None] | None = None):
        self.encoder = encoder
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder")
        self.settings = {"max_batch": max_batch, "max_wait_ms": max_wait_ms, "max_queue": max_queue}

        def hook(name: str):
            return (lambda n, s: on_batch(name, n, s)) if on_batch else None

        limit = getattr(encoder, "max_batch", None)

        def run_texts(texts: list[str]) -> list[tuple[np.ndarray, int]]:
            # tokenising here (once per batch, on the encoder thread) keeps that CPU work off the event loop
            tokens = tokenize(encoder, texts)
            emb = l2_normalize(_chunked(encoder.run_texts, tokens, limit))
            return list(zip(emb, np.count_nonzero(tokens, axis=1).tolist()))

        self.text = MicroBatcher(run_texts, self.executor, name="text", on_batch=hook("text"), **self.settings)
        self.image = MicroBatcher(lambda px: l2_normalize(_chunked(encoder.run_images, np.stack(px), limit)),
                                  self.executor, name="image", on_batch=hook("image"), **self.settings)

    @property
    def embed_dim(self) -> int:
        return int(self.encoder.config.embed_dim)

    def describe(self) -> dict[str, Any]:
        return {**self.encoder.describe(), **self.settings, "batching": "mope micro-batcher"}

    def preprocess(self, image) -> np.ndarray:
        return np.asarray(self.encoder.preprocess(image), dtype=np.float32)

    async def embed_texts(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """L2-normalised embeddings of ``texts`` and their token count."""
        rows = await self.text.submit(texts)
        return np.stack([r[0] for r in rows]), int(sum(r[1] for r in rows))

    async def embed_pixels(self, pixels: list[np.ndarray]) -> np.ndarray:
        return await self.image.submit(pixels)

    def queue_depth(self) -> dict[str, int]:
        return {"text": self.text.depth, "image": self.image.depth}

    async def start(self) -> None:
        self.text.start()
        self.image.start()

    async def stop(self) -> None:
        await self.text.stop()
        await self.image.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)
