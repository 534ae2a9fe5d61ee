"""Encoder latency per backend and architecture (pytest-benchmark; not part of CI's pass/fail).

    .venv/bin/python -m pytest benchmarks/bench_latency.py --benchmark-enable \
        --benchmark-json benchmarks/results/$(date +%F)_latency.json

The architectures are the paper's four (ViT-L/14 teacher, MoPE-CLIP large / base / small, Table 5 shapes)
cut from ``BENCH_TEACHER``: by default a small stand-in (width 256, 8 heads, 8 blocks, 64 px images) so the
suite runs in minutes on a laptop CPU; ``BENCH_TEACHER=ViT-L-14`` gives the real shapes (slow on a CPU; use
``mope bench --paper`` for the Table 7 comparison). Random weights: latency depends only on shapes.
``BENCH_BACKENDS`` (comma list, default torch,onnxruntime,onnxruntime-int8; add torch-compile, tensorrt),
``BENCH_BATCH`` (default 8), ``BENCH_THREADS`` (default: the libraries' own). Timings are reported, never
asserted; each benchmark's ``extra_info`` carries params, GFLOPs and the encoder's settings.
"""

from __future__ import annotations

import os

import pytest

from mope_deploy.bench.harness import bench_inputs, environment
from mope_deploy.bench.paper import PAPER_MODELS, paper_configs
from mope_deploy.models import SlimCLIP, load_config, model_stats
from mope_deploy.models.tiny import tiny_config
from mope_deploy.runtime import backend_status, open_encoder

TEACHER = os.environ.get("BENCH_TEACHER", "stand-in")
BACKENDS = [b for b in os.environ.get("BENCH_BACKENDS", "torch,onnxruntime,onnxruntime-int8").split(",") if b]
BATCH = int(os.environ.get("BENCH_BATCH", "8"))
THREADS = int(os.environ["BENCH_THREADS"]) if os.environ.get("BENCH_THREADS") else None
MODELS = [m.name for m in PAPER_MODELS]


def _teacher_config():
    if TEACHER == "stand-in":
        return tiny_config(width=256, depth=8, heads=8, head_dim=32, image_size=64, patch_size=8, context_length=32,
                           embed_dim=128)
    return load_config(TEACHER)


CONFIGS = paper_configs(_teacher_config())
_cache: dict = {}


def _encoder(model_name: str, backend: str, tmp_root):
    """One encoder per (model, backend), built on first use; the previous one is released first."""
    key = (model_name, backend)
    if key not in _cache:
        _cache.clear()
        import torch

        torch.manual_seed(0)
        model = SlimCLIP(CONFIGS[model_name]).eval()
        _cache[key] = open_encoder(model, backend, device="cuda" if backend == "tensorrt" else None, threads=THREADS,
                                   work_dir=tmp_root / f"{MODELS.index(model_name)}-{backend}")
    return _cache[key]


@pytest.fixture(scope="session")
def tmp_root(tmp_path_factory):
    return tmp_path_factory.mktemp("bench_latency")


@pytest.mark.parametrize("tower", ["vision", "text"])
@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_latency(benchmark, backend, model_name, tower, tmp_root):
    why = backend_status(backend)
    if why:
        pytest.skip(f"{backend}: {why}")
    if backend == "tensorrt":
        pytest.skip("tensorrt needs prebuilt engines: benchmark a bundle with `mope bench BUNDLE --backend tensorrt`")
    enc = _encoder(model_name, backend, tmp_root)
    cfg = CONFIGS[model_name]
    fn = enc.timing_fn(tower, bench_inputs(cfg, tower, BATCH))

    def call():
        fn()
        enc.synchronize()

    stats = model_stats(cfg)
    benchmark.group = f"{tower} batch {BATCH} ({TEACHER} shapes)"
    benchmark.extra_info.update({"model": model_name, "backend": backend, "tower": tower, "batch": BATCH,
                                 "params": stats[tower]["params"], "gflops_per_item": stats[tower]["gflops"],
                                 "encoder": enc.describe()})
    if model_name == MODELS[0] and tower == "vision":
        benchmark.extra_info["environment"] = environment(getattr(enc, "device", "cpu").__str__(), THREADS)
    benchmark.pedantic(call, rounds=int(os.environ.get("BENCH_ROUNDS", "10")), warmup_rounds=2, iterations=1)
