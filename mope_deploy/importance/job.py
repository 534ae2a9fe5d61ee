"""``mope importance`` as one library call: load the model and validation data, score, write the table.

    from mope_deploy.importance.job import ScoringJob, run_scoring
    table = run_scoring(ScoringJob(model="demo", data="synthetic:val", out=Path("scores.json")))

Inside a ``torchrun`` process group the probes are sharded across ranks and rank 0 writes the gathered table."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import distributed as D
from ..device import default_device
from ..vocab import METHODS, METRICS, TOWERS
from .mope import ImportanceError, MoPESettings
from .table import SCORE_TABLE_FILE, ScoreTable


@dataclass(frozen=True)
class ScoringJob:
    """What to score and where the table goes (``out``: absent or a score table, unless ``force``)."""

    model: str
    out: Path
    data: str | None = None
    split: str = "val"
    towers: tuple[str, ...] = TOWERS
    method: str = "mope"
    metric: str = "recall_mean"
    groups: int = 32
    batch_size: int = 64
    probe_batch: int = 16
    max_images: int | None = None
    naive: bool = False
    device: str | None = None
    force: bool = False

    def check(self) -> None:
        """Every refusal before the model is loaded."""
        from ..atomic import check_file_target

        bad = [t for t in self.towers if t not in TOWERS]
        if bad or not self.towers:
            raise ImportanceError(f"--tower must be {', '.join(TOWERS)} or both, got {', '.join(self.towers)}")
        if self.method not in METHODS:
            raise ImportanceError(f"unknown --method {self.method!r}; use one of {', '.join(METHODS)}")
        if self.metric not in METRICS:
            raise ImportanceError(f"unknown --metric {self.metric!r}; use one of {', '.join(METRICS)}")
        if self.method != "magnitude" and not self.data:
            raise ImportanceError(f"--method {self.method} measures the model on data: give --data "
                                  "(e.g. synthetic:val)")
        if self.max_images is not None and self.max_images < 1:
            raise ImportanceError(f"--max-images must be positive, got {self.max_images}")
        check_file_target(self.out, SCORE_TABLE_FILE, self.force)


Progress = Callable[[int, int], None]


def run_scoring(job: ScoringJob, progress: Progress | None = None) -> ScoreTable:
    """Score ``job.model`` and write the table to ``job.out`` (rank 0); returns the table on every rank."""
    import torch

    from ..models import load
    from . import score

    job.check()
    rank, world = D.init_from_env()
    try:
        dev = job.device or default_device()
        if dev == "cuda":  # under torchrun each rank has set its own current device
            dev = f"cuda:{torch.cuda.current_device()}"
        t0 = time.perf_counter()
        net = load(job.model, device=dev).eval()
        images, tokens, txt2img, name = _inputs(net, job)
        if job.method == "mope":
            settings = MoPESettings(towers=job.towers, metric=job.metric, n_groups=job.groups,
                                    batch_size=job.batch_size, probe_batch=job.probe_batch, cached=not job.naive,
                                    dataset=name)
            from .mope import mope_table
            table = mope_table(net, images, tokens, txt2img, settings, progress=progress)
        else:
            table = score(net, images, tokens, txt2img, method=job.method, towers=job.towers, n_groups=job.groups,
                          batch_size=job.batch_size, dataset=name)
        table.meta["total_seconds"] = round(time.perf_counter() - t0, 3)
        if rank == 0:
            table.save(job.out, force=job.force)
        return table
    finally:
        D.destroy()


def _inputs(net, job: ScoringJob):
    """The preprocessed validation set (None for magnitude, which needs no data) and its name."""
    if job.method == "magnitude":
        return None, None, None, None
    from ..data.datasets import load_dataset
    from ..eval.retrieval import encode_inputs

    ds = load_dataset(job.data, split=job.split)
    if job.max_images is not None:
        ds = ds.head(job.max_images)
    images, tokens, txt2img = encode_inputs(net, ds, batch_size=job.batch_size)
    return images, tokens, txt2img, getattr(ds, "name", job.data)
