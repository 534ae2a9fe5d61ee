"""``run(job)``: one sparsification run end to end, as ``mope sparsify`` and ``mope compress`` both do it.

    from mope_deploy.sparsity import SparsifyJob, SparsifySpec, RecoverSpec, run
    result = run(SparsifyJob(model="demo", spec=SparsifySpec(method="sparsegpt", pattern="2:4"),
                             data="synthetic", recover=RecoverSpec(), out=Path("runs/demo-24")))
    result.model, result.report

Order: every check (the request against the architecture, the output folder, the SparseLoRA work folder,
the data, the device) before any work; then the torchrun process group (``distributed=True``), the model
and data, calibration, :func:`~.prune.sparsify`, optional SparseLoRA :func:`~.sparselora.recover`, the model
directory (rank 0), and the clean-up: the process group is left and the SparseLoRA work folder removed, but
only a folder this run claimed (:func:`mope_deploy.atomic.claim_work_dir`; a user's folder of that name is
refused before any work and never deleted).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import distributed as D
from ..atomic import OutputPathError, claim_work_dir, is_work_dir, remove_work_dir
from .patterns import SparsityError
from .prune import NEEDS_DATA, SparsifySpec, sparsify
from .sparselora import RecoverSpec, check_recover, recover


@dataclass
class SparsifyJob:
    """What one run sparsifies, how, on which data, and where it writes (plain data; see the module doc)."""

    model: Any                               # model spec (str / Path) or a SlimCLIP (left as it is: a copy is pruned)
    spec: SparsifySpec = field(default_factory=SparsifySpec)
    data: Any = None                         # dataset spec or RetrievalDataset: calibration and recovery pairs
    split: str = "train"
    recover: RecoverSpec | None = None       # SparseLoRA after sparsifying
    train_data: Callable | None = None       # recovery batches (trainer data function); default: from ``data``
    out: Path | None = None                  # model directory to write (must not exist); None: return only
    work_dir: Path | None = None             # SparseLoRA checkpoints; default ``.OUT.sparselora`` beside ``out``
    keep_work_dir: bool = False              # True: leave the checkpoints (compress keeps its stage folders)
    device: str = "cpu"                      # cpu, cuda, cuda:1 ...: model, Hessians and training
    distributed: bool = True                 # join (and leave) the torchrun process group the environment names
    progress: bool = True


@dataclass
class SparsifyResult:
    model: Any                               # the sparse (recovered) SlimCLIP
    report: dict[str, Any]                   # sparsity_report + method details (+ "recovered")
    rank: int = 0


def _work_dir(job: SparsifyJob) -> Path | None:
    if job.recover is None:
        return None
    if job.work_dir is not None:
        return Path(job.work_dir)
    if job.out is None:
        return None
    out = Path(job.out)
    return out.with_name(f".{out.name}.sparselora")


def check_job(job: SparsifyJob):
    """Every refusal before any work; returns the model's architecture (CLIPConfig)."""
    from ..device import cuda_available
    from ..models import load_config

    config = job.model.config if hasattr(job.model, "config") else load_config(job.model)
    job.spec.resolved(config)
    if job.recover is not None:
        check_recover(job.recover, tuple(job.spec.towers))
        if job.distributed and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise SparsityError("--recover runs in one process; sparsify under torchrun, then recover without it")
    if job.out is not None and os.path.lexists(job.out):
        raise OutputPathError(f"--out {job.out} already exists; give a new directory (nothing is overwritten)")
    work = _work_dir(job)
    if work is not None and os.path.lexists(work) and not is_work_dir(work):
        raise OutputPathError(f"{work} exists and mope did not create it, but SparseLoRA needs that name for its "
                              f"checkpoints; move it away or choose another --out (mope never deletes what it did "
                              f"not write)")
    needs = job.spec.method in NEEDS_DATA or job.recover is not None
    if needs and job.data is None:
        raise SparsityError(f"--method {job.spec.method}{' with --recover' if job.recover else ''} needs calibration "
                            "data: give --data (e.g. --data synthetic)")
    if str(job.device).startswith("cuda") and not cuda_available():
        raise SparsityError(f"--device {job.device}: torch sees no CUDA GPU here; use --device cpu")
    return config


def _train_data(job: SparsifyJob, dataset, model) -> Callable:
    from ..data.sampling import dataset_pairs
    from ..distill.trainer import pil_batches, synthetic_batches

    r = job.recover
    if job.train_data is not None:
        return job.train_data
    if isinstance(job.data, (str, Path)) and str(job.data).split(":")[0] == "synthetic":
        return synthetic_batches(model, r.batch_size, seed=r.seed)
    return pil_batches(dataset_pairs(dataset, r.seed), model.preprocess, model.tokenizer, r.batch_size)


def _load(job: SparsifyJob):
    """(dense model on the device, dataset or None); a caller's model is copied, never modified."""
    from ..data.datasets import load_dataset
    from ..models import load

    dataset = job.data
    if isinstance(dataset, (str, Path)):
        dataset = load_dataset(str(dataset), split=job.split)
    dense = copy.deepcopy(job.model) if hasattr(job.model, "config") else load(job.model)
    return dense.to(job.device).eval(), dataset


def run(job: SparsifyJob) -> SparsifyResult:
    """Check, calibrate, sparsify, optionally recover with SparseLoRA, write ``job.out``, clean up."""
    from ..models import save_model
    from .calibration import calibration_from_dataset
    from .layers import sparsity_report

    check_job(job)
    rank, _ = D.init_from_env() if job.distributed else D.rank_world()
    work = None
    try:
        dense, dataset = _load(job)
        calib = None if dataset is None else calibration_from_dataset(dense, dataset, n_samples=job.spec.samples)
        target = copy.deepcopy(dense) if job.recover is not None else dense
        report = sparsify(target, job.spec, calib, progress=job.progress and rank == 0)
        if job.recover is not None:
            work = _work_dir(job)
            if work is not None:
                claim_work_dir(work, "SparseLoRA checkpoints")
            target = recover(dense, target, _train_data(job, dataset, dense), job.recover,
                             out_dir=None if work is None else str(work), progress=job.progress and rank == 0,
                             device=job.device)
            report = {**report, **sparsity_report(target, job.spec.towers),
                      "recovered": target.config.sparsity.get("recovered")}
        if rank == 0 and job.out is not None:
            save_model(target, job.out)
        D.barrier()
    finally:
        if job.distributed:
            D.destroy()
    if work is not None and not job.keep_work_dir and rank == 0:
        remove_work_dir(work)  # our own checkpoints (the marker proves it); the model is saved
    return SparsifyResult(target, report, rank)
