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
