"""``mope sparsify MODEL --method ... --sparsity ... --data SPEC --out DIR``: weight sparsity (magnitude, Wanda,
SparseGPT, ECoFLaP; unstructured or n:m), optionally recovered with SparseLoRA. Thin: parse, call
:mod:`mope_deploy.sparsity`, print the per-tower result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

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
    local: Optional[str] = typer.Option(None, "--local", help="ecoflap: method inside each block, wanda (default) "
                                        "| sparsegpt"),
    zo_samples: Optional[int] = typer.Option(None, "--zo-samples", help="ecoflap zeroth-order scores: perturbations "
                                             "per weight matrix (default 16; spread over the calibration batches)"),
    nm_blocks: Optional[str] = typer.Option(None, "--nm-blocks", help="ecoflap with n:m below 1 - n/m: which blocks "
                                            "become n:m, uniform (spread over depth; default) | score (least "
                                            "important first)"),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Calibration pairs: a dataset spec (synthetic, "
                                       "CSV, Karpathy JSON, WebDataset). Needed by wanda, sparsegpt and ecoflap."),
    split: str = typer.Option("train", "--split", help="Split of --data to calibrate on."),
    samples: int = typer.Option(128, "--samples", help="Calibration image-caption pairs."),
    batch_size: int = typer.Option(32, "--batch-size", help="Calibration batch size."),
    towers: str = typer.Option("vision,text", "--towers", help="Towers to sparsify (comma-separated)."),
    out: Path = typer.Option(..., "--out", "-o", help="New model directory to write (must not exist)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ...: where calibration, the SparseGPT "
                               "Hessians and SparseLoRA run."),
    recover: Optional[str] = typer.Option(None, "--recover", help="sparselora: recover accuracy with LoRA "
                                          "adapters merged under the same mask (trains on --data)."),
    recover_steps: int = typer.Option(200, "--recover-steps", help="SparseLoRA training steps."),
    recover_batch: int = typer.Option(32, "--recover-batch", help="SparseLoRA batch size."),
    lora_rank: int = typer.Option(4, "--lora-rank", help="SparseLoRA rank."),
    lora_alpha: Optional[float] = typer.Option(None, "--lora-alpha", help="SparseLoRA alpha (scaling alpha/rank; "
                                               "default = rank)."),
    lora_towers: Optional[str] = typer.Option(None, "--lora-towers", help="Towers that get SparseLoRA "
                                              "(comma-separated; default: every sparsified tower)."),
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

    from ..sparsity import RecoverSpec, SparsifyJob, SparsifySpec, run

    if threads:
        torch.set_num_threads(threads)
    with user_errors():
        if recover not in (None, "sparselora"):
            raise UsageError(f"--recover must be 'sparselora', got {recover!r}")
        spec = SparsifySpec(method=method, sparsity=sparsity, pattern=pattern, max_block_sparsity=max_block_sparsity,
                            scores=scores, local=local, zo_samples=zo_samples, nm_blocks=nm_blocks,
                            towers=_names(towers), samples=samples, batch_size=batch_size, seed=seed)
        rspec = None if recover is None else RecoverSpec(
            rank=lora_rank, alpha=lora_alpha, lora_towers=_names(lora_towers) if lora_towers else None, kd=kd,
            steps=recover_steps, batch_size=recover_batch, seed=seed)
        result = run(SparsifyJob(model=model, spec=spec, data=data, split=split, recover=rspec, out=out,
                                 device=device, progress=not quiet))
    if result.rank != 0:
        return
    report = result.report
    if as_json:
        print(json.dumps(report, indent=2, default=str))
        return
    console.print(report_table(report))
    console.print(f"sparse model in {out} (pattern {report['pattern']}, {report['sparsity']:.1%} of block weights zero)")


def _names(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def report_table(report: dict) -> Table:
    """Per tower and block: the fraction of zeros."""
    t = Table(title=f"sparsity {report['sparsity']:.1%} ({report['pattern']})")
    for col in ("tower", "pattern", "tower sparsity", "per block"):
        t.add_column(col)
    for name, tr in report["towers"].items():
        blocks = " ".join("-" if b is None else f"{b:.2f}" for b in tr["blocks"])
        t.add_row(name, tr["pattern"], f"{tr['sparsity']:.1%}", blocks)
    return t
