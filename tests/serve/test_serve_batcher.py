"""The cross-request micro-batcher: batches form across requests, respect max_batch, a full queue refuses at once,
a failing request fails alone, and request inputs/outputs stay paired."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mope_deploy.serve.batcher import MicroBatcher, QueueFullError


def _run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_batches_and_keep_their_results():
    seen = []

    def fn(xs):
        seen.append(len(xs))
        time.sleep(0.02)                      # a slow encoder: requests pile up meanwhile
        return np.asarray(xs, dtype=np.float32)[:, None] * 2

    async def main():
        b = MicroBatcher(fn, ThreadPoolExecutor(1), max_batch=8, max_wait_ms=20, max_queue=100)
        b.start()
        outs = await asyncio.gather(*(b.submit([i, 100 + i]) for i in range(20)))
        await b.stop()
        return outs

    outs = _run(main())
    for i, o in enumerate(outs):
        assert o[:, 0].tolist() == [2 * i, 2 * (100 + i)]
    assert sum(seen) == 40 and max(seen) <= 8 and len(seen) <= 8    # 20 two-input requests in batches of <= 8


def test_max_wait_bounds_the_delay_of_a_lone_request():
    async def main():
        b = MicroBatcher(lambda xs: np.zeros((len(xs), 1)), ThreadPoolExecutor(1), max_batch=64, max_wait_ms=30)
        b.start()
        t0 = time.perf_counter()
        await b.submit([1])
        dt = time.perf_counter() - t0
        await b.stop()
        return dt

    assert 0.025 <= _run(main()) < 2.0


def test_full_queue_refuses_instead_of_growing():
    gate = threading.Event()

    def fn(xs):
        gate.wait(5)
        return np.zeros((len(xs), 1))

    async def main():
        b = MicroBatcher(fn, ThreadPoolExecutor(1), max_batch=1, max_wait_ms=0, max_queue=3)
        b.start()
        first = asyncio.ensure_future(b.submit([0]))          # taken into the (blocked) running batch
        await asyncio.sleep(0.05)
        waiting = [asyncio.ensure_future(b.submit([i])) for i in range(3)]
        await asyncio.sleep(0.01)
        assert b.depth == 3
        with pytest.raises(QueueFullError, match="queue full"):
            await b.submit([9])
        gate.set()
        await asyncio.gather(first, *waiting)
        await b.stop()

    _run(main())


def test_a_failing_request_fails_alone():
    def fn(xs):
        if any(x < 0 for x in xs):
            raise ValueError("negative input")
        return np.asarray(xs, dtype=np.float32)[:, None]

    async def main():
        b = MicroBatcher(fn, ThreadPoolExecutor(1), max_batch=16, max_wait_ms=30)
        b.start()
        res = await asyncio.gather(b.submit([1]), b.submit([-1]), b.submit([3, 4]), return_exceptions=True)
        await b.stop()
        return res

    ok1, bad, ok2 = _run(main())
    assert ok1[:, 0].tolist() == [1] and ok2[:, 0].tolist() == [3, 4]
    assert isinstance(bad, ValueError)


def test_cancelled_requests_are_skipped():
    seen = []

    def fn(xs):
        seen.extend(xs)
        time.sleep(0.05)
        return np.zeros((len(xs), 1))

    async def main():
        b = MicroBatcher(fn, ThreadPoolExecutor(1), max_batch=1, max_wait_ms=0)
        b.start()
        first = asyncio.ensure_future(b.submit(["a"]))
        await asyncio.sleep(0.01)
        doomed = asyncio.ensure_future(b.submit(["timed-out"]))
        await asyncio.sleep(0.01)
        doomed.cancel()
        await first
        await b.submit(["c"])
        await b.stop()

    _run(main())
    assert seen == ["a", "c"]


def test_knee_batch_stops_where_doubling_stops_paying():
    from mope_deploy.serve.embedder import knee_batch

    flat = {1: 1.0, 2: 0.97, 4: 0.95}                  # a CPU transformer: batching barely helps
    assert knee_batch(flat, 32) == 1
    falling = {1: 4.0, 2: 2.0, 4: 1.0, 8: 0.7, 16: 0.66, 32: 0.65}
    assert knee_batch(falling, 32) == 8                 # 8 -> 16 saves 6% only
    assert knee_batch(falling, 4) == 4                  # never above --max-batch
    assert knee_batch({1: 1.0}, 32) == 1


def test_measure_costs_sweeps_until_the_knee():
    from mope_deploy.serve.embedder import knee_batch, measure_costs

    calls, clock = [], [0.0]

    def run(b):                                          # 0.8 ms per batch + 1 ms per input (a simulated clock)
        calls.append(b)
        clock[0] += 0.0008 + 0.001 * b

    costs = measure_costs(run, max_batch=64, repeats=2, clock=lambda: clock[0], budget_s=1.0)
    assert list(costs) == [1, 2, 4, 8] and costs[1] == pytest.approx(0.0018)
    assert knee_batch(costs, 64) == 4                    # per input 1.8 -> 1.4 -> 1.2 -> 1.1 ms: 4 -> 8 saves 8%
    assert max(calls) == 8                               # the sweep stopped once doubling stopped paying
    with_overhead = measure_costs(run, max_batch=64, repeats=1, overhead_s=0.004, clock=lambda: clock[0],
                                  budget_s=1.0)
    assert knee_batch(with_overhead, 64) == 32           # a per-batch server cost favours bigger batches
    budgeted = measure_costs(run, max_batch=64, repeats=1, overhead_s=0.004, clock=lambda: clock[0],
                             budget_s=0.010)
    assert max(budgeted) == 8 and knee_batch(budgeted, 64) == 8    # 16 inputs take 16.8 ms > the 10 ms budget


def test_adaptive_policy_caps_batches_from_the_encoder_and_never_waits():
    """LocalEmbedder's warm-up measures the encoder and caps the batchers (never above the batch time budget); its
    fill wait is 0."""
    from mope_deploy.serve.config import BatchSettings
    from mope_deploy.serve.embedder import LocalEmbedder

    class Enc:                                           # a flat cost per input (a CPU encoder): cap 1
        class config:
            embed_dim = 2
            tokenizer = {"context_length": 4}

            class text:
                context_length = 4

        tokenizer = staticmethod(lambda texts: np.ones((len(texts), 4), dtype=np.int64))

        def preprocess(self, image):
            return np.zeros((3, 2, 2), dtype=np.float32)

        def run_texts(self, tokens):                     # 12 ms per input: a batch of 2 exceeds the budget
            time.sleep(0.012 * len(tokens))
            return np.ones((len(tokens), 2), dtype=np.float32)

        run_images = run_texts

        def describe(self):
            return {"backend": "fake"}

    async def main():
        emb = LocalEmbedder(Enc(), BatchSettings("adaptive", max_batch=32))
        await emb.start()
        info = await emb.warm()
        out = await emb.embed_texts(["a", "b"])
        await emb.stop()
        return emb, info, out

    emb, info, out = _run(main())
    assert emb.text.max_wait == 0 and emb.text.max_batch == info["text"]["cap"] == 1
    assert emb.image.max_batch == 1 and out.vectors.shape == (2, 2)
    assert emb.describe()["batch_caps"] == {"text": 1, "image": 1}
