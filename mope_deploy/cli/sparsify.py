"""``mope sparsify MODEL --method ... --sparsity ... --data SPEC --out DIR``: weight sparsity (magnitude, Wanda,
SparseGPT, ECoFLaP; unstructured or n:m), optionally recovered with SparseLoRA. Thin: parse, call
:mod:`mope_deploy.sparsity`, print the per-tower result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..models import save_model
from .common import MODEL_HELP, UsageError, console, user_errors


def sparsify(
    model: str = typer.Argument(..., help=MODEL_HELP),
    method: str = typer.Option("wanda", "--method", "-m",
                               help="magnitude | global-magnitude | wanda | sparsegpt | ecoflap"),
    sparsity: Optional[float] = typer.Option(None, "--sparsity", "-s", help="Fraction of block weights set to 0, in "
                                             "[0, 1). With an n:m pattern it defaults to 1 - n/m."),
    pattern: str = typer.Option("unstructured", "--pattern", "-p", help="unstructured | 2:4 | 4:8 (any n:m)"),
    max_block_sparsity: Optional[float] = typer.Option(None, "--max-block-sparsity",
                                                       help="ecoflap: cap per block (default sparsity + 0.1)"),
    scores: str = typer.Option("zeroth", "--scores", help="ecoflap block scores: zeroth (forward only) | first"),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Calibration pairs: a dataset spec (synthetic, "
                                       "CSV, Karpathy JSON, WebDataset). Needed by wanda, sparsegpt and ecoflap."),
    split: str = typer.Option("train", "--split", help="Split of --data to calibrate on."),
    samples: int = typer.Option(128, "--samples", help="Calibration image-caption pairs."),
    batch_size: int = typer.Option(32, "--batch-size", help="Calibration batch size."),
    towers: str = typer.Option("vision,text", "--towers", help="Towers to sparsify (comma-separated)."),
    out: Path = typer.Option(..., "--out", "-o", help="New model directory to write (must not exist)."),
    recover: Optional[str] = typer.Option(None, "--recover", help="sparselora: recover accuracy with LoRA "
                                          "adapters merged under the same mask (trains on --data)."),
    recover_steps: int = typer.Option(200, "--recover-steps", help="SparseLoRA training steps."),
    recover_batch: int = typer.Option(32, "--recover-batch", help="SparseLoRA batch size."),
    lora_rank: int = typer.Option(4, "--lora-rank", help="SparseLoRA rank (vision tower)."),
    kd: bool = typer.Option(False, "--kd", help="SparseLoRA with the full KD loss instead of InfoNCE + KL."),
    seed: int = typer.Option(0, "--seed"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch intra-op threads."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    as_json: bool = typer.Option(False, "--json", help="Print the sparsity report as JSON."),
) -> None:
    """Sparsify a model's block weights and write a normal model directory (zeros in the weights, the pattern in
    config.json). No CPU speed-up: dense kernels skip nothing; 2:4 pays off with TensorRT on sparse-tensor-core GPUs.

    Under `torchrun --nproc_per_node N $(which mope) sparsify --method ecoflap ...` the ECoFLaP score batches are
    sharded across ranks (every rank then prunes identically); rank 0 writes the model."""
    import torch

    from .. import distributed as D

    from ..models import load, load_config
    from ..sparsity import SparsifySpec
    from ..sparsity import sparsify as run_sparsify

    if threads:
        torch.set_num_threads(threads)
    with user_errors():
        spec = SparsifySpec(method=method, sparsity=sparsity, pattern=pattern, max_block_sparsity=max_block_sparsity,
                            scores=scores, towers=tuple(t.strip() for t in towers.split(",") if t.strip()),
                            samples=samples, batch_size=batch_size, seed=seed)
        # every check before any work: the request against the architecture, the output folder, the data
        config = load_config(model)
        spec.resolved(config)
        if recover not in (None, "sparselora"):
            raise UsageError(f"--recover must be 'sparselora', got {recover!r}")
        if out.exists():
            raise UsageError(f"--out {out} already exists; give a new directory (nothing is overwritten)")
        needs_data = spec.method in ("wanda", "sparsegpt", "ecoflap") or recover
        if needs_data and not data:
            raise UsageError(f"--method {spec.method}{' with --recover' if recover else ''} needs calibration data: "
                             "give --data (e.g. --data synthetic)")
        dataset = None
        if data:
            from ..data.datasets import load_dataset

            dataset = load_dataset(data, split=split)
        dense = load(model)
        calib = None
        if dataset is not None:
            from ..sparsity import calibration_from_dataset

            calib = calibration_from_dataset(dense, dataset, n_samples=samples)
        target = dense
        if recover:
            import copy

            target = copy.deepcopy(dense)
        rank, world = D.init_from_env()
        if world > 1 and recover:
            raise UsageError("--recover runs in one process; sparsify under torchrun, then recover without it")
        report = run_sparsify(target, spec, calib, progress=not quiet and rank == 0)
        if recover:
            from ..sparsity import RecoverSpec, recover as run_recover

            rspec = RecoverSpec(rank=lora_rank, kd=kd, steps=recover_steps, batch_size=recover_batch, seed=seed)
            run_dir = out.with_name(f".{out.name}.sparselora")
            target = run_recover(dense, target, _train_data(data, dataset, dense, recover_batch, seed), rspec,
                                 out_dir=str(run_dir), progress=not quiet)
            from ..sparsity import sparsity_report

            report = {**report, **sparsity_report(target, spec.towers)}
        if rank == 0:
            save_model(target, out)
        D.barrier()
        D.destroy()
        if recover:
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)  # our own checkpoints; the model is saved
    if rank != 0:
        return
    if as_json:
        print(json.dumps(report, indent=2, default=str))
        return
    console.print(report_table(report))
    console.print(f"sparse model in {out} (pattern {report['pattern']}, {report['sparsity']:.1%} of block weights zero)")


def _train_data(spec: str, dataset, model, batch_size: int, seed: int):
    from ..distill.trainer import pil_batches, synthetic_batches

    if spec == "synthetic":
        return synthetic_batches(model, batch_size, seed=seed)
    from ..data.sampling import dataset_pairs

    return pil_batches(dataset_pairs(dataset, seed), model.preprocess, model.tokenizer, batch_size)


def report_table(report: dict) -> Table:
    """Per tower and block: the fraction of zeros."""
    t = Table(title=f"sparsity {report['sparsity']:.1%} ({report['pattern']})")
    for col in ("tower", "pattern", "tower sparsity", "per block"):
        t.add_column(col)
    for name, tr in report["towers"].items():
        blocks = " ".join("-" if b is None else f"{b:.2f}" for b in tr["blocks"])
        t.add_row(name, tr["pattern"], f"{tr['sparsity']:.1%}", blocks)
    return t
