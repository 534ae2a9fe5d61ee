"""``mope bench``: every model x backend x batch size x tower, timed the same way, as plain JSON rows."""

from __future__ import annotations

import dataclasses
import gc
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..atomic import FileOwner, atomic_write_text, check_file_target, json_with
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


@dataclass(frozen=True)
class BenchSettings:
    """How every encoder of a run is timed: ``batch_sizes`` (None: 1,8; the paper run: one default batch),
    ``warmup``/``iters`` calls per model x backend x batch x tower, ``threads`` (intra-op threads of every
    encoder), ``device`` (default: cuda when available), ``towers``, ``interleave`` (None: sequential; the paper
    run: round-robin), ``ort_settings`` (a :class:`~mope_deploy.runtime.ort_settings.SessionSettings` for every
    ONNX Runtime encoder), ``timer`` (tests) and ``work_dir`` (where ONNX exports go)."""

    batch_sizes: Sequence[int] | None = None
    warmup: int = 3
    iters: int = 10
    threads: int | None = None
    device: str | None = None
    towers: Sequence[str] = TOWERS
    interleave: bool | None = None
    ort_settings: Any = field(default=None, compare=False)
    timer: Callable[[], float] | None = field(default=None, compare=False)
    work_dir: str | Path | None = None

    def replace(self, **changes: Any) -> "BenchSettings":
        return dataclasses.replace(self, **changes)


def _check_run(models: Sequence[Any], backends: Sequence[str], s: BenchSettings, labels: list[str],
               extra_runs: Sequence[tuple[Any, str, str]]) -> dict[str, Any]:
    if not models:
        raise BenchError("no MODEL given: pass one or more models (demo, a model directory, an open_clip name or an "
                         "export bundle), or use --paper")
    registry = {b.name: b for b in check_backends(list(backends) + [b for _, _, b in extra_runs])}
    for t in s.towers:
        if t not in TOWERS:
            raise BenchError(f"unknown tower {t!r}: use {' and/or '.join(TOWERS)}")
    if len(labels) != len(models):
        raise BenchError("labels and models differ in length")
    if len(set(labels) | {lab for _, lab, _ in extra_runs}) != len(labels) + len(extra_runs):
        raise BenchError(f"model labels must be unique, got {labels + [lab for _, lab, _ in extra_runs]}")
    return registry


def run_bench(models: Sequence[Any], backends: Sequence[str] = ("torch",), settings: BenchSettings | None = None, *,
              labels: Sequence[str] | None = None, extra_runs: Sequence[tuple[Any, str, str]] = (),
              on_step: Callable[[str], None] | None = None,
              on_iter: Callable[[], None] | None = None) -> dict[str, Any]:
    """Benchmark every model on every backend; returns ``{"environment", "settings", "encoders", "models",
    "results"}``.

    ``models``: SlimCLIPs, model specs, export bundles, or zero-argument callables returning a SlimCLIP
    (built when its turn comes; ``labels`` names them in the report). Each encoder is built, timed at every
    batch size and released before the next, so one large model at a time is in memory. With
    ``settings.interleave`` every encoder stays open and the timed calls go round-robin over all of them (fair
    comparisons on a shared, noisy machine; needs memory for all models at once). ``extra_runs``: more ``(model,
    label, backend)`` pairs, e.g. the teacher in open_clip eager as a reference. Pre-processing and tokenisation
    are not timed (the encoders' forward passes are).
    """
    s = settings or BenchSettings()
    s = s.replace(batch_sizes=list(s.batch_sizes or (1, 8)), interleave=bool(s.interleave))
    labels = list(labels) if labels else [model_label(m, i) for i, m in enumerate(models)]
    registry = _check_run(models, backends, s, labels, extra_runs)
    dev = s.device or default_device()
    results: list[dict[str, Any]] = []
    encoders: list[dict[str, Any]] = []
    summaries: dict[str, Any] = {}
    opened: list[tuple[str, str, Any, CLIPConfig]] = []
    with tempfile.TemporaryDirectory(prefix="mope-bench-", dir=s.work_dir) as tmp:
        jobs = [(m, lab, list(backends)) for m, lab in zip(models, labels)]
        jobs += [(m, lab, [b]) for m, lab, b in extra_runs]
        for mi, (model, label, model_backends) in enumerate(jobs):
            job = _Job(Path(tmp), mi, label, [registry[b] for b in model_backends], s, dev, on_step, on_iter)
            summaries[label] = job.run(model, encoders, results, opened)
        if s.interleave:
            results = _interleaved(opened, s, on_step, on_iter)
            opened.clear()
            gc.collect()
    return {
        "environment": environment(dev, s.threads),
        "settings": {"backends": list(backends), "batch_sizes": list(s.batch_sizes), "warmup": s.warmup,
                     "iters": s.iters, "threads": s.threads, "towers": list(s.towers), "interleaved": s.interleave,
                     # ONNX Runtime session options (each ORT encoder also records its own under "encoders")
                     "ort_settings": _ort_settings_dict(s.ort_settings, s.threads),
                     "timed": "forward pass per tower (inputs ready "
                     "on the device; pre-processing and tokenisation excluded)"},
        "encoders": encoders,
        "models": summaries,
        "results": results,
    }


@dataclass
class _Job:
    """One model of a run: built (if a factory), exported once for every ONNX backend, opened per backend."""

    tmp: Path
    index: int
    label: str
    backends: list
    s: BenchSettings
    device: str
    on_step: Callable[[str], None] | None
    on_iter: Callable[[], None] | None

    def step(self, what: str) -> None:
        if self.on_step:
            self.on_step(f"{self.label}: {what}")

    def prepare(self, model: Any) -> tuple[Any, Path | None, CLIPConfig]:
        if callable(model) and not hasattr(model, "config"):
            self.step("building")
            model = model()  # a factory: only one large model in memory at a time
        config = model_config(model)
        onnx = [b for b in self.backends if b.source == ONNX]
        if not onnx or Bundle.is_bundle(model):
            return model, None, config
        # one export per model, shared by every ONNX backend (exports of large models take minutes)
        self.step("exporting ONNX")
        from ..runtime.export import export_model

        bundle = export_model(as_slimclip(model, "onnxruntime"), self.tmp / f"{self.index}-bundle",
                              int8=any(b.precision == "int8" for b in onnx))
        if len(onnx) == len(self.backends) and not isinstance(model, (str, Path)):
            model = None  # the graphs are on disk: free the torch weights before ONNX Runtime loads them
            gc.collect()
        return model, bundle, config

    def run(self, model: Any, encoders: list, results: list, opened: list) -> dict[str, Any]:
        """Open and time (or, interleaved, keep open) the model on each backend; returns its summary."""
        s = self.s
        model, bundle, config = self.prepare(model)
        for b in self.backends:
            self.step(f"opening {b.name}")
            source = bundle if (bundle is not None and b.source == ONNX) else model
            enc = open_encoder(source, b.name, device=self.device if b.uses_device else None, threads=s.threads,
                               work_dir=self.tmp / f"{self.index}-{b.name}", ort_settings=s.ort_settings)
            encoders.append({"model": self.label, **enc.describe()})
            if s.interleave:
                opened.append((self.label, b.name, enc, config))
                continue
            for row in bench_encoder(enc, config, s.batch_sizes, s.warmup, s.iters, s.towers, timer=s.timer,
                                     on_step=self.step if self.on_step else None, on_iter=self.on_iter):
                results.append({"model": self.label, "backend": b.name, **row})
            del enc
            gc.collect()
        del model
        gc.collect()
        return _model_summary(config)


def _interleaved(opened, s: BenchSettings, on_step, on_iter) -> list[dict[str, Any]]:
    results = []
    for batch in s.batch_sizes:
        if on_step:
            on_step(f"batch {batch}: {len(opened) * len(s.towers)} encoders round-robin")
        fns, meta = {}, {}
        for label, backend, enc, config in opened:
            for tower in s.towers:
                key = (label, backend, tower)
                fns[key] = (enc.timing_fn(tower, bench_inputs(config, tower, batch)), enc.synchronize)
                meta[key] = model_stats(config)
        kw = {"timer": s.timer} if s.timer else {}
        timed = time_interleaved(fns, warmup=s.warmup, iters=s.iters, on_iter=on_iter, **kw)
        for (label, backend, tower), t in timed.items():
            results.append({"model": label, "backend": backend,
                            **_row(tower, batch, t, meta[(label, backend, tower)], s.iters)})
    return results


def _model_summary(config: CLIPConfig) -> dict[str, Any]:
    s = model_stats(config)
    return {"params": s["params"], "params_total": s["params_total"], "gflops": s["gflops"],
            "vision": {"params": s["vision"]["params"], "gflops": s["vision"]["gflops"], "depth": s["vision"]["depth"]},
            "text": {"params": s["text"]["params"], "gflops": s["text"]["gflops"], "depth": s["text"]["depth"]}}


#: a benchmark report file (``mope bench --json``) under the output policy
REPORT_FILE = FileOwner("benchmark report", json_with("environment", "results"))


def write_json(report: dict[str, Any], path: str | Path, force: bool = False) -> Path:
    """Write ``report`` to ``path`` atomically; ``path`` must be absent or a benchmark report unless ``force``."""
    check_file_target(path, REPORT_FILE, force)
    return atomic_write_text(path, json.dumps(report, indent=2))
