"""``mope bench``: every model x backend x batch size x tower, timed the same way, as plain JSON rows."""

from __future__ import annotations

import gc
import json
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from ..atomic import atomic_write_text
from ..device import default_device
from ..bundle import Bundle
from ..models.config import CLIPConfig
from ..models.counting import model_stats
from ..runtime import open_encoder
from ..runtime.registry import ONNX, as_slimclip, check_backends
from ..vocab import TOWERS
from .harness import BenchError, bench_inputs, environment, throughput, time_fn, time_interleaved

UNITS = {"vision": "images/s", "text": "texts/s"}


def parse_list(text: str | Sequence[str] | None, what: str) -> list[str]:
    """``"a,b"`` or ``["a", "b,c"]`` -> ``["a", "b", "c"]``."""
    if text is None:
        return []
    parts = [text] if isinstance(text, str) else list(text)
    out = [p.strip() for item in parts for p in str(item).split(",") if p.strip()]
    if not out:
        raise BenchError(f"empty {what} list")
    return out


def parse_batch_sizes(text: str | Sequence[Any]) -> list[int]:
    """``"1,8,64"`` -> ``[1, 8, 64]`` (positive integers)."""
    items = parse_list(text if isinstance(text, str) else [str(t) for t in text], "batch size")
    try:
        sizes = [int(x) for x in items]
    except ValueError:
        raise BenchError(f"batch sizes must be positive integers separated by commas (e.g. 1,8,64), got {text!r}"
                         ) from None
    if any(b < 1 for b in sizes):
        raise BenchError(f"batch sizes must be at least 1, got {sizes}")
    return sizes


def model_label(model: Any, index: int = 0) -> str:
    if isinstance(model, (str, Path)):
        return Path(str(model)).name if Path(str(model)).is_dir() else str(model)
    return f"model{index}"


def model_config(model: Any) -> CLIPConfig:
    """The architecture of a SlimCLIP, model spec or export bundle (for params and FLOPs)."""
    if hasattr(model, "config") and isinstance(model.config, CLIPConfig):
        return model.config
    if Bundle.is_bundle(model):
        return Bundle(model).config()
    from ..models import load_config
    return load_config(model)


def _row(tower: str, batch: int, t: dict[str, Any], stats: dict[str, Any], iters: int) -> dict[str, Any]:
    return {"tower": tower, "batch": batch, "median_ms": t["median_ms"], "p90_ms": t["p90_ms"], "min_ms": t["min_ms"],
            "mean_ms": t["mean_ms"], "iters": iters, "warmup": t["warmup"], "times_ms": t["times_ms"],
            "throughput": throughput(batch, t["median_ms"]), "unit": UNITS[tower],
            "params": stats[tower]["params"], "params_total": stats[tower]["params_total"],
            "gflops": stats[tower]["gflops"]}


def bench_encoder(encoder, config: CLIPConfig, batch_sizes: Sequence[int], warmup: int, iters: int,
                  towers: Sequence[str] = TOWERS, timer: Callable[[], float] | None = None,
                  on_step: Callable[[str], None] | None = None, on_iter: Callable[[], None] | None = None,
                  seed: int = 0) -> list[dict[str, Any]]:
    """Rows ``{tower, batch, median_ms, p90_ms, min_ms, mean_ms, throughput, unit, params, gflops}``."""
    stats = model_stats(config)
    rows = []
    for batch in batch_sizes:
        for tower in towers:
            if on_step:
                on_step(f"{encoder.backend} {tower} batch {batch}")
            fn = encoder.timing_fn(tower, bench_inputs(config, tower, batch, seed=seed))
            kw = {"timer": timer} if timer else {}
            t = time_fn(fn, warmup=warmup, iters=iters, sync=encoder.synchronize, on_iter=on_iter, **kw)
            rows.append(_row(tower, batch, t, stats, iters))
    return rows


def _ort_settings_dict(settings: Any, threads: int | None) -> dict[str, Any]:
    from ..runtime.ort_settings import SessionSettings

    s = settings or SessionSettings()
    return s.replace(intra_op_threads=threads or s.intra_op_threads).to_dict()


def run_bench(models: Sequence[Any], backends: Sequence[str] = ("torch",), batch_sizes: Sequence[int] = (1, 8),
              warmup: int = 3, iters: int = 10, threads: int | None = None, device: str | None = None,
              towers: Sequence[str] = TOWERS, labels: Sequence[str] | None = None,
              work_dir: str | Path | None = None, timer: Callable[[], float] | None = None,
              on_step: Callable[[str], None] | None = None,
              on_iter: Callable[[], None] | None = None, interleave: bool = False,
              extra_runs: Sequence[tuple[Any, str, str]] = (), ort_settings: Any = None) -> dict[str, Any]:
    """Benchmark every model on every backend; returns ``{"environment", "settings", "results"}``.

    ``models``: SlimCLIPs, model specs, export bundles, or zero-argument callables returning a SlimCLIP
    (built when its turn comes; ``labels`` names them in the report). Each encoder is built, timed at every
    batch size and released before the next, so one large model at a time is in memory. With ``interleave``
    every encoder stays open and the timed calls go round-robin over all of them (fair comparisons on a
    shared, noisy machine; needs memory for all models at once). ``extra_runs``: more ``(model, label,
    backend)`` pairs, e.g. the teacher in open_clip eager as a reference. ``ort_settings``: a
    :class:`~mope_deploy.runtime.ort_settings.SessionSettings` for every ONNX Runtime encoder (recorded in the
    report's ``settings``). Pre-processing and tokenisation are not timed (the encoders' forward passes are).
    """
    if not models:
        raise BenchError("no MODEL given: pass one or more models (demo, a model directory, an open_clip name or an "
                         "export bundle), or use --paper")
    registry = {b.name: b for b in check_backends(list(backends) + [b for _, _, b in extra_runs])}
    for t in towers:
        if t not in TOWERS:
            raise BenchError(f"unknown tower {t!r}: use {' and/or '.join(TOWERS)}")
    labels = list(labels) if labels else [model_label(m, i) for i, m in enumerate(models)]
    if len(labels) != len(models):
        raise BenchError("labels and models differ in length")
    if len(set(labels) | {lab for _, lab, _ in extra_runs}) != len(labels) + len(extra_runs):
        raise BenchError(f"model labels must be unique, got {labels + [lab for _, lab, _ in extra_runs]}")
    dev = device or default_device()
    results: list[dict[str, Any]] = []
    encoders: list[dict[str, Any]] = []
    summaries: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="mope-bench-", dir=work_dir) as tmp:
        opened: list[tuple[str, str, Any, CLIPConfig]] = []
        jobs = [(m, lab, list(backends)) for m, lab in zip(models, labels)]
        jobs += [(m, lab, [b]) for m, lab, b in extra_runs]
        for mi, (model, label, model_backends) in enumerate(jobs):
            if callable(model) and not hasattr(model, "config"):
                if on_step:
                    on_step(f"{label}: building")
                model = model()  # a factory: only one large model in memory at a time
            config = model_config(model)
            summaries[label] = _model_summary(config)
            bundle = None
            onnx_backends = [registry[b] for b in model_backends if registry[b].source == ONNX]
            if onnx_backends and not Bundle.is_bundle(model):
                # one export per model, shared by every ONNX backend (exports of large models take minutes)
                if on_step:
                    on_step(f"{label}: exporting ONNX")
                from ..runtime.export import export_model
                bundle = export_model(as_slimclip(model, "onnxruntime"), Path(tmp) / f"{mi}-bundle",
                                            int8=any(b.precision == "int8" for b in onnx_backends))
                if all(registry[b].source == ONNX for b in model_backends) and not isinstance(model, (str, Path)):
                    model = None  # the graphs are on disk: free the torch weights before ONNX Runtime loads them
                    gc.collect()
            for backend in model_backends:
                if on_step:
                    on_step(f"{label}: opening {backend}")
                b = registry[backend]
                source = bundle if (bundle is not None and b.source == ONNX) else model
                enc = open_encoder(source, backend, device=dev if b.uses_device else None,
                                   threads=threads, work_dir=Path(tmp) / f"{mi}-{backend}", ort_settings=ort_settings)
                encoders.append({"model": label, **enc.describe()})
                if interleave:
                    opened.append((label, backend, enc, config))
                    continue
                for row in bench_encoder(enc, config, batch_sizes, warmup, iters, towers, timer=timer,
                                         on_step=(lambda s, lab=label: on_step(f"{lab}: {s}")) if on_step else None,
                                         on_iter=on_iter):
                    results.append({"model": label, "backend": backend, **row})
                del enc
                gc.collect()
            del model
            gc.collect()
        if interleave:
            results = _interleaved(opened, batch_sizes, towers, warmup, iters, timer, on_step, on_iter)
            opened.clear()
            gc.collect()
    return {
        "environment": environment(dev, threads),
        "settings": {"backends": list(backends), "batch_sizes": list(batch_sizes), "warmup": warmup, "iters": iters,
                     "threads": threads, "towers": list(towers), "interleaved": interleave,
                     # ONNX Runtime session options (each ORT encoder also records its own under "encoders")
                     "ort_settings": _ort_settings_dict(ort_settings, threads),
                     "timed": "forward pass per tower (inputs ready "
                     "on the device; pre-processing and tokenisation excluded)"},
        "encoders": encoders,
        "models": summaries,
        "results": results,
    }


def _interleaved(opened, batch_sizes, towers, warmup, iters, timer, on_step, on_iter) -> list[dict[str, Any]]:
    results = []
    for batch in batch_sizes:
        if on_step:
            on_step(f"batch {batch}: {len(opened) * len(towers)} encoders round-robin")
        fns, meta = {}, {}
        for label, backend, enc, config in opened:
            for tower in towers:
                key = (label, backend, tower)
                fns[key] = (enc.timing_fn(tower, bench_inputs(config, tower, batch)), enc.synchronize)
                meta[key] = model_stats(config)
        kw = {"timer": timer} if timer else {}
        timed = time_interleaved(fns, warmup=warmup, iters=iters, on_iter=on_iter, **kw)
        for (label, backend, tower), t in timed.items():
            results.append({"model": label, "backend": backend,
                            **_row(tower, batch, t, meta[(label, backend, tower)], iters)})
    return results


def _model_summary(config: CLIPConfig) -> dict[str, Any]:
    s = model_stats(config)
    return {"params": s["params"], "params_total": s["params_total"], "gflops": s["gflops"],
            "vision": {"params": s["vision"]["params"], "gflops": s["vision"]["gflops"], "depth": s["vision"]["depth"]},
            "text": {"params": s["text"]["params"], "gflops": s["text"]["gflops"], "depth": s["text"]["depth"]}}


def write_json(report: dict[str, Any], path: str | Path) -> Path:
    """Write ``report`` to ``path`` atomically (temp file in the same directory, then rename)."""
    return atomic_write_text(path, json.dumps(report, indent=2))
