"""Latency measurement: warm-up, timed iterations with device synchronisation, robust summaries, and a
record of the machine and software a figure was taken on."""

from __future__ import annotations

import math
import os
import platform
import time
from typing import Any, Callable, Sequence

import numpy as np

from ..bundle.manifest import library_versions
from ..models.config import CLIPConfig
from ..errors import MopeError


class BenchError(MopeError, ValueError):
    """Benchmark settings that cannot work (names the setting and the fix)."""


LIBRARIES = ("mope-deploy", "torch", "onnxruntime", "onnxruntime-gpu", "onnx", "open_clip_torch", "tensorrt", "numpy")
#: environment variables that change CPU speed (threads, MKL's CPU dispatch)
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MKL_DEBUG_CPU_TYPE", "MKL_ENABLE_INSTRUCTIONS",
              "ONEDNN_MAX_CPU_ISA", "CUDA_VISIBLE_DEVICES")


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), ``q`` in [0, 100]."""
    if not len(values):
        raise BenchError("no timings to summarise (iters must be at least 1)")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def summarize(seconds: Sequence[float]) -> dict[str, float]:
    """Median, p90, min and mean of per-call times, in milliseconds."""
    ms = [s * 1e3 for s in seconds]
    return {"median_ms": percentile(ms, 50), "p90_ms": percentile(ms, 90), "min_ms": float(min(ms)),
            "mean_ms": float(sum(ms) / len(ms)), "n": len(ms)}


def time_fn(fn: Callable[[], Any], warmup: int = 3, iters: int = 10, sync: Callable[[], None] | None = None,
            timer: Callable[[], float] = time.perf_counter, on_iter: Callable[[], None] | None = None) -> dict[str, Any]:
    """Time ``fn``: ``warmup`` untimed calls (compilation, allocator and cache warm-up), then ``iters`` timed
    calls, each followed by ``sync`` (GPU backends queue work asynchronously) inside the timed region."""
    if warmup < 0 or iters < 1:
        raise BenchError(f"need warmup >= 0 and iters >= 1, got warmup={warmup}, iters={iters}")
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
        sync()
        if on_iter:
            on_iter()
    times = []
    for _ in range(iters):
        t0 = timer()
        fn()
        sync()
        times.append(timer() - t0)
        if on_iter:
            on_iter()
    return {**summarize(times), "warmup": warmup, "times_ms": [t * 1e3 for t in times]}


def time_interleaved(fns: dict[Any, tuple[Callable[[], Any], Callable[[], None]]], warmup: int = 3, iters: int = 10,
                     timer: Callable[[], float] = time.perf_counter,
                     on_iter: Callable[[], None] | None = None) -> dict[Any, dict[str, Any]]:
    """Time several ``(fn, sync)`` pairs round-robin: each round calls every one once, so load from other
    processes on a shared machine falls on all of them alike (sequential runs can differ by 2x under
    contention). Returns :func:`time_fn`-style summaries keyed like ``fns``."""
    if warmup < 0 or iters < 1:
        raise BenchError(f"need warmup >= 0 and iters >= 1, got warmup={warmup}, iters={iters}")
    for fn, sync in fns.values():
        for _ in range(warmup):
            fn()
            sync()
            if on_iter:
                on_iter()
    times: dict[Any, list[float]] = {k: [] for k in fns}
    for _ in range(iters):
        for k, (fn, sync) in fns.items():
            t0 = timer()
            fn()
            sync()
            times[k].append(timer() - t0)
            if on_iter:
                on_iter()
    return {k: {**summarize(v), "warmup": warmup, "times_ms": [t * 1e3 for t in v]} for k, v in times.items()}


def bench_inputs(config: CLIPConfig, tower: str, batch: int, seed: int = 0) -> np.ndarray:
    """Inputs shaped like real ones and never all zeros: normal pixels in the preprocessed range, or token
    rows with a start token, random ids, one end-of-text token at a random position and zero padding."""
    rng = np.random.default_rng(seed)
    if tower == "vision":
        s = config.vision.image_size
        return rng.standard_normal((batch, 3, s, s), dtype=np.float32)
    if tower != "text":
        raise BenchError(f"unknown tower {tower!r}: use 'vision' or 'text'")
    t = config.text
    n, vocab = t.context_length, t.vocab_size
    ids = rng.integers(1, max(vocab - 2, 2), size=(batch, n), dtype=np.int64)
    ends = rng.integers(max(1, n // 4), n, size=batch)
    ids[np.arange(n)[None, :] > ends[:, None]] = 0
    ids[np.arange(batch), ends] = t.eos_id
    ids[:, 0] = min(vocab - 2, 49406)  # CLIP's start-of-text id (or the largest non-EOT id of a small vocab)
    return ids


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str = "cpu", threads: int | None = None) -> dict[str, Any]:
    """Where a benchmark ran: device, CPU model, cores, thread settings, library versions."""
    import torch

    env: dict[str, Any] = {
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") and torch.cuda.is_available() else None,
        "cpu": cpu_model(), "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "threads": {"requested": threads, "torch_intra_op": threads or torch.get_num_threads(),
                    "torch_inter_op": torch.get_num_interop_threads(),
                    "onnxruntime_intra_op": threads or "ort-default (one per physical core)"},
        "env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ},
        "torch_cpu_capability": _cpu_capability(torch),
        "torch_mkl": bool(torch.backends.mkl.is_available()),
        "versions": library_versions(LIBRARIES),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return env


def _cpu_capability(torch) -> str | None:
    try:
        return torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # pragma: no cover - older torch
        return None


def throughput(batch: int, median_ms: float) -> float:
    """Items per second at the median latency."""
    return batch / (median_ms / 1e3) if median_ms > 0 else math.inf
