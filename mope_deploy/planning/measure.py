"""Time student shapes on a deployment backend: build each shape with random weights, export it where the backend
runs exported files (ONNX Runtime: through the runtime's own export; TensorRT: an engine bundle), and time the
towers round-robin (:func:`mope_deploy.bench.harness.time_interleaved`), so load from other processes falls on all
shapes alike."""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..bench.harness import bench_inputs, cpu_model, time_interleaved
from ..models import CLIPConfig, SlimCLIP
from ..progress import progress_bar
from ..runtime import check_backend, open_encoder
from ..runtime.registry import ENGINES, MODEL, OPEN_CLIP
from ..vocab import TOWERS
from .errors import PlanningError
from .shapes import TowerShape, shape_config, tower_shape


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


@dataclass(frozen=True)
class MeasureSettings:
    """How shapes are timed: ``iters`` timed rounds after ``warmup`` untimed ones (every shape once per round)."""

    backend: str = "onnxruntime"
    batch: int = 1
    threads: int | None = None
    warmup: int = 1
    iters: int = 5
    seed: int = 0
    progress: bool = True
    #: "wall": latency as a caller sees it; "cpu": the process's CPU time per call (time.process_time), which on a
    #: machine shared with other jobs leaves out the time spent waiting for a core: with threads=1 it is the
    #: latency the call would have alone (with more threads it adds the threads' times up)
    clock: str = "wall"
    #: a lock file held (flock) during the timed rounds only, e.g. /tmp/mope-timing.lock on a shared machine:
    #: building and exporting the shapes, the slow part, runs beside other jobs' timings
    lock: str | None = None

    def check(self) -> "MeasureSettings":
        b = check_backend(self.backend)  # unknown or unavailable here (a GPU backend on a CPU machine) -> clear error
        if b.source == OPEN_CLIP:
            raise PlanningError(f"backend {self.backend!r} runs named open_clip models only, not arbitrary student "
                                "shapes; plan on 'torch' (the same eager PyTorch) instead")
        if self.batch < 1 or self.iters < 1 or self.warmup < 0:
            raise PlanningError(f"need batch >= 1, iters >= 1 and warmup >= 0, got batch={self.batch}, "
                                f"iters={self.iters}, warmup={self.warmup}")
        if self.clock not in CLOCKS:
            raise PlanningError(f"clock must be one of {', '.join(CLOCKS)}, got {self.clock!r}")
        if self.threads is not None and self.threads < 1:
            raise PlanningError(f"threads must be at least 1, got {self.threads}")
        return self


def machine(settings: MeasureSettings) -> dict[str, Any]:
    """What a timing depends on besides the shape: the CPU model and thread count (and the GPU, if used)."""
    import os

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "threads": settings.threads, "gpu": gpu}


#: the smallest tower: what an unmeasured tower of a timed model is cut to (it is exported, never timed)
def _minimal(config: CLIPConfig, tower: str) -> TowerShape:
    return tower_shape(config, tower, heads=1, depth=1)


def sample_config(config: CLIPConfig, shapes: dict[str, TowerShape]) -> CLIPConfig:
    """The config timed for ``shapes`` (towers not named are cut to one block of one head)."""
    return shape_config(config, {t: shapes.get(t) or _minimal(config, t) for t in TOWERS})


def _open(model: SlimCLIP, settings: MeasureSettings, work: Path):
    backend = check_backend(settings.backend)
    if backend.source == ENGINES:  # engines are built from an export bundle, for this batch
        from ..exporting.config import ExportConfig
        from ..exporting.pipeline import export_bundle

        precision = backend.precision if backend.precision != "fp32" else "fp16"
        export_bundle(model, work / "bundle", ExportConfig(formats=("onnx", "tensorrt"), precision=precision,
                                                           batch_sizes=(1, settings.batch, settings.batch),
                                                           skip_recall_gate=True))
        return open_encoder(work / "bundle", settings.backend, threads=settings.threads)
    return open_encoder(model, settings.backend, threads=settings.threads, work_dir=work if backend.source != MODEL
                        else None)


@contextlib.contextmanager
def timing_lock(path: str | None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if absent) for the duration; nothing when ``path`` is None."""
    if path is None:
        yield
        return
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def measure(config: CLIPConfig, samples: list[dict[str, TowerShape]], settings: MeasureSettings,
            on_step: Callable[[], None] | None = None) -> list[dict[str, float]]:
    """Median ms per batch of each timed tower of each sample (``samples[i]`` = {tower: shape}); every tower of
    every sample is called once per round."""
    settings.check()
    rounds = (settings.warmup + settings.iters) * sum(len(s) for s in samples)
    with contextlib.ExitStack() as stack, progress_bar(settings.progress) as bar:
        build = bar.add_task("building shapes", total=len(samples))
        time_task = bar.add_task("timing shapes", total=rounds)
        fns: dict[tuple[int, str], tuple[Callable, Callable]] = {}
        for i, shapes in enumerate(samples):
            cfg = sample_config(config, shapes)
            torch.manual_seed(settings.seed + i)
            model = SlimCLIP(cfg).eval()
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mope-plan-")))
            enc = _open(model, settings, work)
            for tower in shapes:
                fn = enc.timing_fn(tower, bench_inputs(cfg, tower, settings.batch, seed=settings.seed))
                fns[(i, tower)] = (fn, enc.synchronize)
            del model
            bar.advance(build)
            if on_step:
                on_step()

        def step() -> None:
            bar.advance(time_task)
            if on_step:
                on_step()

        with torch.inference_mode(), timing_lock(settings.lock):
            res = time_interleaved(fns, warmup=settings.warmup, iters=settings.iters, on_iter=step,
                                   timer=CLOCKS[settings.clock])
    out: list[dict[str, float]] = [{} for _ in samples]
    for (i, tower), r in res.items():
        out[i][tower] = r["median_ms"]
    return out


__all__ = ["MeasureSettings", "machine", "measure", "sample_config", "timing_lock"]
