"""MoPE scoring: naive (every probe re-encodes both towers) vs cached (shared other tower, cached block inputs,
batched probes). Both give the same table; this measures wall time and block forwards (in sequences).

    .venv/bin/python -m pytest benchmarks/bench_scoring.py --benchmark-enable -s
    BENCH_IMAGES=250 BENCH_GROUPS=32 ...   # the whole synthetic:val split, the paper's-style 32 groups

Uses the demo teacher when it is installed (else a randomly initialised model of the demo's shape) on the
first ``BENCH_IMAGES`` images of synthetic:val. Timings are reported, never asserted.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from mope_deploy.importance import mope_table

N_IMAGES = int(os.environ.get("BENCH_IMAGES", "40"))
N_GROUPS = int(os.environ.get("BENCH_GROUPS", "8"))
THREADS = int(os.environ.get("BENCH_THREADS", "1"))


@pytest.fixture(scope="module")
def setup():
    from mope_deploy.data.datasets import load_dataset
    from mope_deploy.eval.retrieval import encode_inputs
    from mope_deploy.models import load

    torch.set_num_threads(THREADS)
    model, name = load("demo"), "demo teacher"  # shipped inside the package
    ds = load_dataset("synthetic:val")
    from mope_deploy.data.datasets import RetrievalDataset

    keep = [c for c, i in enumerate(ds.txt2img) if i < N_IMAGES]
    ds = RetrievalDataset(name=f"synthetic:val[:{N_IMAGES}]", images=list(ds.images[:N_IMAGES]),
                          captions=[ds.captions[c] for c in keep], txt2img=[ds.txt2img[c] for c in keep])
    images, tokens, t2i = encode_inputs(model.eval(), ds)
    # one neuron order for both runs, so the comparison times only the probes
    from mope_deploy.importance.gradient import gradient_importance, importance_order

    g = gradient_importance(model, images, tokens, t2i)
    orders = {n: [importance_order(s) for s in g[n]["neuron"]] for n in ("vision", "text")}
    return model.eval(), name, images, tokens, t2i, orders


def _run(setup, cached: bool):
    model, _, images, tokens, t2i, orders = setup
    return mope_table(model, images, tokens, t2i, n_groups=N_GROUPS, cached=cached, neuron_orders=orders,
                      batch_size=64, probe_batch=16)


@pytest.mark.parametrize("mode", ["cached", "naive"])
def test_scoring(benchmark, setup, mode):
    table = benchmark.pedantic(_run, args=(setup, mode == "cached"), rounds=1, iterations=1)
    benchmark.extra_info.update(block_forwards=table.meta["block_forwards"], probes=table.meta["probes"],
                                model=setup[1], n_images=N_IMAGES, n_groups=N_GROUPS)
    assert table.meta["probes"] > 0


def test_speedup_report(setup):
    """Both modes once, side by side: equal tables, and the measured ratios."""
    t0 = time.perf_counter()
    cached = _run(setup, True)
    t1 = time.perf_counter()
    naive = _run(setup, False)
    t2 = time.perf_counter()
    assert cached.towers == naive.towers and cached.full_metric == naive.full_metric
    fc, fn = cached.meta["block_forwards"], naive.meta["block_forwards"]
    print(f"\n[{setup[1]}; {N_IMAGES} images, {N_GROUPS} groups/block, {cached.meta['probes']} probes, "
          f"{torch.get_num_threads()} thread(s)]\n"
          f"cached: {t1 - t0:.2f}s, block forwards {fc}\n"
          f"naive:  {t2 - t1:.2f}s, block forwards {fn}\n"
          f"speed-up: {(t2 - t1) / (t1 - t0):.1f}x wall, "
          f"{sum(fn.values()) / sum(fc.values()):.1f}x block forwards")
