"""After ``mope compress`` (and export): the student's measured latency on the backend its budget was planned for,
recorded beside the prediction in the run's report.json (``latency.measured_ms``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_text
from ..bench.harness import bench_inputs, time_interleaved
from ..runtime import open_encoder
from ..vocab import TOWERS
from .errors import PlanningError
from .measure import MeasureSettings, machine

REPORT = "report.json"


def measure_model(model: Any, towers: tuple[str, ...] | list[str], settings: MeasureSettings) -> dict[str, float]:
    """Median ms per batch of each of ``towers`` of ``model`` (a model dir, SlimCLIP or an export bundle, as
    :func:`~mope_deploy.runtime.open_encoder` takes) on ``settings.backend``, the towers timed round-robin."""
    settings.check()
    enc = open_encoder(model, settings.backend, threads=settings.threads)
    fns = {t: (enc.timing_fn(t, bench_inputs(enc.config, t, settings.batch, seed=settings.seed)), enc.synchronize)
           for t in towers}
    with torch.inference_mode():
        res = time_interleaved(fns, warmup=settings.warmup, iters=settings.iters)
    return {t: r["median_ms"] for t, r in res.items()}


def record_measured(run_dir: str | Path, model: str | Path | None = None, iters: int = 5) -> dict[str, Any]:
    """Time the student of a ``mope compress`` run whose recipe had ``prune.latency`` (``model``: its export bundle,
    default the run folder itself) and write ``latency.measured_ms`` (+ per tower, the machine) into report.json."""
    run_dir = Path(run_dir)
    path = run_dir / REPORT
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: give the folder of a finished mope compress run")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise PlanningError(f"{path} is not valid JSON ({e})") from None
    lat = report.get("latency") if isinstance(report, dict) else None
    if not isinstance(lat, dict) or "backend" not in lat:
        raise PlanningError(f"{path} has no latency budget: the run's recipe had no prune.latency (mope plan "
                            "predicts and measures shapes without one)")
    settings = MeasureSettings(lat["backend"], batch=int(lat.get("batch", 1)), threads=lat.get("threads"),
                               iters=iters, progress=False)
    towers = [t for t in lat.get("towers") or TOWERS if t in TOWERS]
    ms = measure_model(model or run_dir, towers, settings)
    lat.update(measured_ms=sum(ms.values()), measured_towers_ms=ms, measured_on=machine(settings))
    atomic_write_text(path, json.dumps(report, indent=1))
    return lat


__all__ = ["measure_model", "record_measured"]
