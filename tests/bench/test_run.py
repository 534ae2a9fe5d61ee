"""run_bench: one row per model x backend x batch x tower, consistent numbers, JSON, plot, clear errors."""

from __future__ import annotations

import json

import pytest

from mope_deploy.bench.plot import model_points, plot_latency
from mope_deploy.bench.run import BenchSettings, parse_batch_sizes, parse_list, run_bench, write_json
from mope_deploy.models import load_config, model_stats
from mope_deploy.runtime import BackendUnavailableError


def test_rows_cover_every_combination_and_are_consistent(tiny_dir, tmp_path):
    report = run_bench([str(tiny_dir)], ["torch", "onnxruntime"],
                       BenchSettings([1, 3], warmup=1, iters=2, threads=1, device="cpu"))
    rows = report["results"]
    assert len(rows) == 1 * 2 * 2 * 2
    assert {(r["backend"], r["batch"], r["tower"]) for r in rows} == {
        (b, n, t) for b in ("torch", "onnxruntime") for n in (1, 3) for t in ("vision", "text")}
    stats = model_stats(load_config(str(tiny_dir)))
    for r in rows:
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"]
        assert r["throughput"] == pytest.approx(r["batch"] / (r["median_ms"] / 1000))
        assert r["params"] == stats[r["tower"]]["params"] and r["gflops"] == stats[r["tower"]]["gflops"]
        assert r["unit"] == ("images/s" if r["tower"] == "vision" else "texts/s")
    assert report["models"]["tiny"]["params"] == stats["params"]
    assert report["environment"]["threads"]["requested"] == 1
    assert {e["backend"] for e in report["encoders"]} == {"torch", "onnxruntime"}
    out = write_json(report, tmp_path / "sub" / "r.json")
    assert json.loads(out.read_text())["results"] == rows
    assert not list((tmp_path / "sub").glob(".*"))  # no temp file left behind


def test_plot_points_and_png(tmp_path):
    rows = [{"model": m, "backend": b, "batch": 8, "tower": t, "params": p, "median_ms": ms}
            for m, p, ms in (("big", 100, 10.0), ("small", 40, 4.0)) for b in ("torch", "onnxruntime")
            for t in ("vision", "text")]
    pts = model_points(rows)
    assert pts[(8, "torch")] == [(80, 8.0, "small"), (200, 20.0, "big")]  # summed over towers, sorted by params
    path = plot_latency({"results": rows, "environment": {"cpu": "test cpu", "device": "cpu"}}, tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    with pytest.raises(ValueError, match=".png"):
        plot_latency({"results": rows}, tmp_path / "p.jpg")


def test_parsing_and_bad_input(tiny_dir):
    assert parse_batch_sizes("1, 8,64") == [1, 8, 64]
    assert parse_list(["torch", "onnxruntime,onnxruntime-int8"], "backend") == ["torch", "onnxruntime",
                                                                                "onnxruntime-int8"]
    with pytest.raises(ValueError, match="positive integers"):
        parse_batch_sizes("1,x")
    with pytest.raises(ValueError, match="at least 1"):
        parse_batch_sizes("0")
    with pytest.raises(ValueError, match="unknown backend 'jax'.*torch"):
        run_bench([str(tiny_dir)], ["jax"])
    with pytest.raises(ValueError, match="no MODEL"):
        run_bench([], ["torch"])
    with pytest.raises(ValueError, match="unknown tower"):
        run_bench([str(tiny_dir)], ["torch"], BenchSettings(towers=["audio"]))


def test_unavailable_backend_names_the_available_ones(tiny_dir, monkeypatch):
    import dataclasses

    from mope_deploy.runtime import registry

    trt = dataclasses.replace(registry._REGISTRY["tensorrt"], requires=lambda: "no CUDA GPU visible to torch")
    monkeypatch.setitem(registry._REGISTRY, "tensorrt", trt)
    with pytest.raises(BackendUnavailableError, match="tensorrt.*no CUDA GPU.*Available here: torch"):
        run_bench([str(tiny_dir)], ["torch", "tensorrt"])


def test_lazy_model_factories_are_built_in_turn(tiny_dir):
    from mope_deploy.models import load

    built = []

    def make():
        built.append(1)
        return load(str(tiny_dir))

    report = run_bench([make, make], ["torch"], BenchSettings([2], warmup=0, iters=1, threads=1, device="cpu",
                                                             towers=["text"]), labels=["a", "b"])
    assert len(built) == 2 and [r["model"] for r in report["results"]] == ["a", "b"]
