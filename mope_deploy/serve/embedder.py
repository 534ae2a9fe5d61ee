"""What the app calls to embed: the :class:`Embedder` protocol, and :class:`LocalEmbedder`, an
:class:`~mope_deploy.runtime.Encoder` behind two micro-batchers (one per tower) on one worker thread. The Ray Serve
variant (:class:`mope_deploy.serve.ray_scale.RayEmbedder`) implements the same protocol over a deployment handle.

Texts longer than the model's context are truncated as CLIP's tokenizer does (the first ``context - 1`` tokens and
the end token) and reported in :class:`TextEmbeddings.truncated`; with ``strict_length`` they are refused instead.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from ..runtime import l2_normalize
from .batcher import MicroBatcher
from .config import BatchSettings
from .inputs import RequestError

#: texts and images the warm-up encodes (tokenizer, both towers, every lazy import on the request path)
WARM_TEXTS = ["a photo of a red star on a striped background", "warm-up"]
#: the adaptive cap doubles the batch while that saves at least this fraction of the cost per input
MIN_SAVING = 0.10
#: the adaptive cap never forms a batch whose encoder time exceeds this (a batch's time is added to the latency of
#: every request in it and of every request queued behind it; a single input is always allowed)
BATCH_BUDGET_S = 0.010
HOP_SAMPLES = 21


@dataclass
class TextEmbeddings:
    """L2-normalised ``vectors`` [N, E], ``tokens`` (tokens the model read, summed) and the indices of the texts
    that were longer than the context and were truncated."""

    vectors: np.ndarray
    tokens: int
    truncated: list[int]


@runtime_checkable
class Embedder(Protocol):
    """What :func:`~mope_deploy.serve.app.create_app` needs to embed (local or Ray)."""

    @property
    def embed_dim(self) -> int: ...

    @property
    def context_length(self) -> int: ...

    def describe(self) -> dict[str, Any]: ...

    def preprocess(self, image) -> np.ndarray: ...

    async def embed_texts(self, texts: list[str], where: str = "input") -> TextEmbeddings: ...

    async def embed_pixels(self, pixels: list[np.ndarray]) -> np.ndarray: ...

    def queue_depth(self) -> dict[str, int]: ...

    def attach_metrics(self, metrics) -> None: ...

    async def start(self) -> None: ...

    async def warm(self) -> dict[str, Any]: ...

    async def stop(self) -> None: ...


# ---------------------------------------------------------------------------------------------------------
# Tokens


def tokenize(tokenizer: Callable, texts: list[str], context: int) -> tuple[np.ndarray, list[int]]:
    """Token ids ``[len(texts), context]`` exactly as ``tokenizer(texts)`` gives them, and each text's length
    before truncation (start and end tokens included).

    open_clip's ``SimpleTokenizer`` is driven through its own ``encode`` (one BPE pass, same ids and the same
    truncation: first ``context - 1`` tokens, then the end token); other tokenizers are called as they are and
    report the tokens they kept (their truncation cannot be seen)."""
    enc = getattr(tokenizer, "encode", None)
    sot, eot = getattr(tokenizer, "sot_token_id", None), getattr(tokenizer, "eot_token_id", None)
    if enc is None or sot is None or eot is None or getattr(tokenizer, "reduction_fn", None) is not None:
        ids = np.asarray(tokenizer(list(texts)))
        return ids, np.count_nonzero(ids, axis=1).tolist()
    ids = np.zeros((len(texts), context), dtype=np.int64)
    lengths = []
    for i, text in enumerate(texts):
        row = [sot, *enc(text), eot]
        lengths.append(len(row))
        if len(row) > context:
            row = row[:context]
            row[-1] = eot
        ids[i, :len(row)] = row
    return ids, lengths


def context_length(config) -> int:
    """The tokenizer's context (what ``build_tokenizer`` gives it): ``config.tokenizer`` may set a shorter one."""
    return int(dict(config.tokenizer).get("context_length", config.text.context_length))


def text_rows(emb: np.ndarray, lengths: list[int], context: int, refused: set[int]) -> list[tuple]:
    """Per-text results ``(vector | None, length)`` for the batcher (None: refused under --strict-length)."""
    out, j = [], 0
    for i, n in enumerate(lengths):
        if i in refused:
            out.append((None, n))
        else:
            out.append((emb[j], n))
            j += 1
    return out


def gather_texts(rows: list[tuple], context: int, where: str) -> TextEmbeddings:
    """One request's :class:`TextEmbeddings` from its rows; a refused row is a 400 naming ``--strict-length``."""
    for i, (vec, n) in enumerate(rows):
        if vec is None:
            raise RequestError(400, f"{where}[{i}]: {n} tokens, above the model's context of {context} tokens "
                                    "(the server runs with --strict-length); shorten the text, or run the server "
                                    "without --strict-length to have it truncated as CLIP does", "text_too_long")
    return TextEmbeddings(np.stack([r[0] for r in rows]), int(sum(min(n, context) for _, n in rows)),
                          [i for i, (_, n) in enumerate(rows) if n > context])


# ---------------------------------------------------------------------------------------------------------
# Batch cap from the encoder's cost


def knee_batch(cost_per_input: dict[int, float], max_batch: int) -> int:
    """The batch size where doubling stops saving at least :data:`MIN_SAVING` of the cost per input."""
    cap = 1
    while 2 * cap in cost_per_input and 2 * cap <= max_batch:
        if cost_per_input[2 * cap] > (1 - MIN_SAVING) * cost_per_input[cap]:
            break
        cap *= 2
    return cap


def measure_costs(run: Callable[[int], Any], max_batch: int, repeats: int = 3, overhead_s: float = 0.0,
                  clock: Callable[[], float] = time.perf_counter,
                  budget_s: float = BATCH_BUDGET_S) -> dict[int, float]:
    """Seconds per input of ``run(batch)`` plus ``overhead_s`` (the server's cost per batch) at batch 1, 2, 4, ...
    (best of ``repeats``), until ``max_batch``, or a batch takes longer than ``budget_s`` (that size is left out:
    the cap never reaches it), or doubling stopped paying (the next size cannot change the knee)."""
    costs: dict[int, float] = {}
    b = 1
    while b <= max_batch:
        best = float("inf")
        for _ in range(repeats):
            t0 = clock()
            run(b)
            best = min(best, clock() - t0)
        if best > budget_s and b > 1:
            break
        costs[b] = (best + overhead_s) / b
        if best > budget_s or knee_batch(costs, max_batch) < b:
            break
        b *= 2
    return costs


class LocalEmbedder:
    """``embed_texts`` / ``embed_pixels`` through cross-request batchers on one encoder thread."""

    def __init__(self, encoder, settings: BatchSettings | None = None, *, strict_length: bool = False,
                 on_batch: Callable[[str, int, float], None] | None = None):
        self.encoder, self.settings, self.strict_length = encoder, settings or BatchSettings(), strict_length
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder")
        self.on_batch = on_batch
        self.warm_info: dict[str, Any] = {}
        s = self.settings
        opts = {"max_batch": s.max_batch, "max_wait_ms": s.wait_ms, "max_queue": s.max_queue}
        self.text = MicroBatcher(self._run_texts, self.executor, name="text", on_batch=self._hook("text"), **opts)
        self.image = MicroBatcher(self._run_images, self.executor, name="image", on_batch=self._hook("image"), **opts)

    def _hook(self, name: str):
        return lambda n, sec: self.on_batch(name, n, sec) if self.on_batch is not None else None

    def attach_metrics(self, metrics) -> None:
        self.on_batch = metrics.on_batch

    def _chunked(self, run: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
        limit = getattr(self.encoder, "max_batch", None)
        if not limit or len(x) <= limit:
            return run(x)
        return np.concatenate([run(x[i:i + limit]) for i in range(0, len(x), limit)])

    def _run_texts(self, texts: list[str]) -> list[tuple]:
        # tokenising here (once per batch, on the encoder thread) keeps that CPU work off the event loop
        ctx = self.context_length
        ids, lengths = tokenize(self.encoder.tokenizer, texts, ctx)
        refused = {i for i, n in enumerate(lengths) if n > ctx} if self.strict_length else set()
        keep = [i for i in range(len(texts)) if i not in refused]
        emb = l2_normalize(self._chunked(self.encoder.run_texts, ids[keep])) if keep else None
        return text_rows(emb, lengths, ctx, refused)

    def _run_images(self, pixels: list[np.ndarray]) -> np.ndarray:
        return l2_normalize(self._chunked(self.encoder.run_images, np.stack(pixels)))

    @property
    def embed_dim(self) -> int:
        return int(self.encoder.config.embed_dim)

    @property
    def context_length(self) -> int:
        return context_length(self.encoder.config)

    def describe(self) -> dict[str, Any]:
        return {**self.encoder.describe(), "batch_policy": self.settings.policy, "max_batch": self.settings.max_batch,
                "max_wait_ms": self.text.max_wait * 1000, "max_queue": self.settings.max_queue,
                "batch_caps": {"text": self.text.max_batch, "image": self.image.max_batch},
                "batching": "mope micro-batcher"}

    def preprocess(self, image) -> np.ndarray:
        return np.asarray(self.encoder.preprocess(image), dtype=np.float32)

    async def embed_texts(self, texts: list[str], where: str = "input") -> TextEmbeddings:
        """L2-normalised embeddings of ``texts``, their token count and which were truncated."""
        return gather_texts(await self.text.submit(texts), self.context_length, where)

    async def embed_pixels(self, pixels: list[np.ndarray]) -> np.ndarray:
        return await self.image.submit(pixels)

    def queue_depth(self) -> dict[str, int]:
        return {"text": self.text.depth, "image": self.image.depth}

    async def start(self) -> None:
        self.text.start()
        self.image.start()

    async def warm(self) -> dict[str, Any]:
        """Build the tokenizer and run both towers once (every lazy import and allocation happens now, not on the
        first request); under the adaptive policy, also measure each tower's cost per input and cap its batches."""
        import asyncio

        loop = asyncio.get_running_loop()
        hops = []
        for _ in range(HOP_SAMPLES):                    # the per-batch cost of the thread hop, as requests pay it
            t0 = time.perf_counter()
            await loop.run_in_executor(self.executor, int)
            hops.append(time.perf_counter() - t0)
        # a batch's result also waits for the GIL while the event loop runs Python (up to the switch interval): a
        # per-batch cost that only shows under load, so it is counted here rather than measured idle
        overhead = sorted(hops)[len(hops) // 2] + sys.getswitchinterval()
        self.warm_info = await loop.run_in_executor(self.executor, self._warm, overhead)
        return self.warm_info

    def _warm(self, overhead_s: float = 0.0) -> dict[str, Any]:
        from PIL import Image

        t0 = time.perf_counter()
        pixels = self.preprocess(Image.new("RGB", (64, 48), (120, 30, 200)))
        self._run_texts(WARM_TEXTS)
        self._run_images([pixels])
        info: dict[str, Any] = {"warm_s": round(time.perf_counter() - t0, 3),
                                "batch_overhead_ms": round(overhead_s * 1000, 3)}
        if self.settings.policy == "adaptive":
            runs = {"text": lambda b: self._run_texts((WARM_TEXTS * b)[:b]),
                    "image": lambda b: self._run_images([pixels] * b)}
            for name, run in runs.items():
                costs = measure_costs(run, self.settings.max_batch, overhead_s=overhead_s)
                cap = knee_batch(costs, self.settings.max_batch)
                getattr(self, name).max_batch = cap
                info[name] = {"cap": cap, "ms_per_input": {b: round(c * 1000, 3) for b, c in costs.items()}}
        info["total_s"] = round(time.perf_counter() - t0, 3)
        return info

    async def stop(self) -> None:
        await self.text.stop()
        await self.image.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)
