"""Cross-request micro-batching: concurrent requests are queued and encoded together.

A collector task takes the oldest waiting request, then keeps adding waiting requests until the batch holds
``max_batch`` inputs or ``max_wait_ms`` have passed since that first request arrived; the batch runs on a
worker thread (the event loop keeps accepting requests meanwhile) and while it runs the next batch fills up,
so under load batches grow by themselves. The queue is bounded (``max_queue`` inputs): a request that does not
fit is refused at once with :class:`QueueFullError` (the app answers 503) instead of growing memory.

A batch that fails is retried request by request, so one bad input fails its own request only.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np


class QueueFullError(RuntimeError):
    """The batch queue is full: the server is overloaded (HTTP 503)."""


@dataclass
class _Pending:
    inputs: Sequence[Any]
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Batch ``fn(list_of_inputs) -> array [len, ...]`` across concurrent :meth:`submit` calls."""

    def __init__(self, fn: Callable[[list[Any]], np.ndarray], executor: Executor, *, max_batch: int = 32,
                 max_wait_ms: float = 5.0, max_queue: int = 1024, name: str = "batch",
                 on_batch: Callable[[int, float], None] | None = None):
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            from .errors import ServeError
            raise ServeError(f"max_batch and max_queue must be >= 1 and max_wait_ms >= 0 (got {max_batch}, "
                             f"{max_queue}, {max_wait_ms})")
        self.fn, self.executor, self.name = fn, executor, name
        self.max_batch, self.max_wait, self.max_queue = int(max_batch), max_wait_ms / 1000.0, int(max_queue)
        self.on_batch = on_batch
        self._queue: deque[_Pending] = deque()
        self._queued_inputs = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        """Inputs waiting (not yet in a running batch)."""
        return self._queued_inputs

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._queue:
            p = self._queue.popleft()
            if not p.future.done():
                p.future.set_exception(QueueFullError("server shutting down"))
        self._queued_inputs = 0

    async def submit(self, inputs: Sequence[Any]) -> np.ndarray:
        """Results for ``inputs`` (one request), computed in a shared batch."""
        if self._task is None or self._wakeup is None:
            raise RuntimeError("batcher not started")
        n = len(inputs)
        if self._queued_inputs + n > self.max_queue:
            raise QueueFullError(f"{self.name} queue full ({self._queued_inputs} waiting, limit {self.max_queue}); "
                                 "retry later or raise --max-queue")
        fut = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(list(inputs), fut))
        self._queued_inputs += n
        self._wakeup.set()
        return await fut

    def _pop_live(self) -> _Pending | None:
        while self._queue:
            p = self._queue.popleft()
            self._queued_inputs -= len(p.inputs)
            if not p.future.done():          # a request that timed out or was cancelled while waiting
                return p
        return None

    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            first = self._pop_live()
            if first is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch, size = [first], len(first.inputs)
            deadline = first.arrived + self.max_wait
            while size < self.max_batch:
                if self._queue:
                    if size + len(self._queue[0].inputs) > self.max_batch:
                        break
                    p = self._pop_live()
                    if p is not None:
                        batch.append(p)
                        size += len(p.inputs)
                    continue
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            await self._execute(batch, size)

    async def _execute(self, batch: list[_Pending], size: int) -> None:
        loop = asyncio.get_running_loop()
        inputs = [x for p in batch for x in p.inputs]
        t0 = time.perf_counter()
        try:
            out = await loop.run_in_executor(self.executor, self.fn, inputs)
        except Exception as e:  # noqa: BLE001  (isolate the failing request; the others still get their results)
            if len(batch) == 1:
                if not batch[0].future.done():
                    batch[0].future.set_exception(e)
            else:
                for p in batch:
                    await self._execute([p], len(p.inputs))
            return
        if self.on_batch is not None:
            self.on_batch(size, time.perf_counter() - t0)
        i = 0
        for p in batch:
            n = len(p.inputs)
            if not p.future.done():
                p.future.set_result(out[i:i + n])
            i += n
