"""Latency harness: summaries against naive references, warm-up and sync accounting, inputs, environment."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mope_deploy.bench.harness import bench_inputs, environment, summarize, throughput, time_fn
from mope_deploy.models.tiny import tiny_config


def naive_percentile(values, q):
    """Linear interpolation between closest ranks (the definition numpy's default uses)."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@pytest.mark.parametrize("n", [1, 2, 7, 10])
def test_summarize_matches_naive(n):
    secs = list(np.random.default_rng(n).uniform(0.001, 0.05, n))
    s = summarize(secs)
    ms = [x * 1000 for x in secs]
    assert s["median_ms"] == pytest.approx(naive_percentile(ms, 50))
    assert s["p90_ms"] == pytest.approx(naive_percentile(ms, 90))
    assert s["min_ms"] == pytest.approx(min(ms))
    assert s["mean_ms"] == pytest.approx(sum(ms) / n)
    assert s["min_ms"] <= s["median_ms"] <= s["p90_ms"]


def test_time_fn_warms_up_syncs_and_times_with_the_given_timer():
    calls, syncs = [], []
    clock = {"t": 0.0}

    def fn():
        calls.append(1)
        clock["t"] += 0.004 * len(calls)  # call k takes 4k ms

    def timer():
        return clock["t"]

    r = time_fn(fn, warmup=2, iters=3, sync=lambda: syncs.append(1), timer=timer)
    assert len(calls) == 5 and len(syncs) == 5  # sync after every call, warm-up included
    assert r["times_ms"] == pytest.approx([12.0, 16.0, 20.0])  # warm-up calls 1-2 untimed
    assert r["median_ms"] == pytest.approx(16.0) and r["min_ms"] == pytest.approx(12.0)
    assert r["warmup"] == 2 and r["n"] == 3
    with pytest.raises(ValueError, match="iters >= 1"):
        time_fn(fn, warmup=0, iters=0)


def test_throughput():
    assert throughput(8, 100.0) == pytest.approx(80.0)


def test_bench_inputs_are_realistic_and_seeded():
    cfg = tiny_config(context_length=16)
    px = bench_inputs(cfg, "vision", 3)
    assert px.shape == (3, 3, 32, 32) and px.dtype == np.float32 and np.abs(px).sum() > 0
    tok = bench_inputs(cfg, "text", 5, seed=3)
    assert tok.shape == (5, 16) and np.issubdtype(tok.dtype, np.integer)
    for row in tok:
        eos = np.flatnonzero(row == cfg.text.eos_id)
        assert len(eos) == 1 and eos[0] > 0  # one end-of-text after the start token
        assert (row[eos[0] + 1:] == 0).all() and (row[1:eos[0]] > 0).all()
        assert row.argmax() == eos[0]  # argmax pooling finds it
    np.testing.assert_array_equal(tok, bench_inputs(cfg, "text", 5, seed=3))
    assert not np.array_equal(tok, bench_inputs(cfg, "text", 5, seed=4))
    with pytest.raises(ValueError, match="unknown tower"):
        bench_inputs(cfg, "audio", 1)


def test_environment_records_machine_and_versions(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    env = environment("cpu", threads=2)
    json.dumps(env)
    assert env["device"] == "cpu" and env["cpu"] and env["cpu_count"] >= 1
    assert env["versions"]["torch"] and env["versions"]["onnxruntime"]
    assert env["threads"]["requested"] == 2 and env["env"]["OMP_NUM_THREADS"] == "2"


def test_time_interleaved_goes_round_robin():
    from mope_deploy.bench.harness import time_interleaved

    order, clock = [], {"t": 0.0}
    cost = {"a": 0.010, "b": 0.002}

    def make(k):
        def fn():
            order.append(k)
            clock["t"] += cost[k]
        return fn, (lambda: None)

    r = time_interleaved({"a": make("a"), "b": make("b")}, warmup=1, iters=3, timer=lambda: clock["t"])
    assert order == ["a", "b"] + ["a", "b"] * 3  # warm-up each, then alternate
    assert r["a"]["median_ms"] == pytest.approx(10.0) and r["b"]["median_ms"] == pytest.approx(2.0)
    assert r["a"]["n"] == 3 and r["b"]["warmup"] == 1
