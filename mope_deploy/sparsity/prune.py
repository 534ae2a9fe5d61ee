"""``sparsify``: one entry point for every method, with the request checked before any work.

    from mope_deploy.sparsity import SparsifySpec, sparsify, calibration_from_dataset
    calib = calibration_from_dataset(model, load_dataset("synthetic", split="train"), n_samples=128)
    report = sparsify(model, SparsifySpec(method="ecoflap", sparsity=0.5, max_block_sparsity=0.6), calib)
    save_model(model, "out/")               # a normal model directory; zeros in the weights

Methods: ``magnitude`` (|W|, per layer), ``global-magnitude`` (|W|, one threshold over all prunable weights),
``wanda`` (|W_ij| * ||X_j||_2 within each output row), ``sparsegpt`` (OBS prune + update, see
:mod:`.sparsegpt`), ``ecoflap`` (global block allocation from zeroth- or first-order scores, then ``local``
= Wanda or SparseGPT inside each block, see :mod:`.ecoflap`). Patterns: ``unstructured``, ``n:m``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..progress import progress_bar
from ..vocab import SPARSITY_METHODS, SPARSITY_SCORES
from .calibration import Calibration, blockwise
from .ecoflap import allocate_keep, allocate_nm, block_scores, first_order_scores, uniform_nm, zeroth_order_scores
from .layers import TOWERS, block_linears, prunable, sparsity_report
from .patterns import Pattern, SparsityError, layer_mask, nm_mask, parse_pattern, row_mask
from .sparsegpt import sparsegpt_prune

METHODS = SPARSITY_METHODS
NEEDS_DATA = ("wanda", "sparsegpt", "ecoflap")
SCORES = SPARSITY_SCORES
#: ECoFLaP's method inside each block (the reference offers both)
LOCAL_METHODS = ("wanda", "sparsegpt")
#: ECoFLaP with n:m: which blocks become n:m (``uniform``: spread evenly, the default: it beat ``score``, least
#: important first, on 3 of 3 seeds, docs/RESULTS.md)
NM_BLOCKS = ("uniform", "score")
#: ECoFLaP zeroth-order perturbations per matrix (see ecoflap.py and README: the reference's scripts use 32
#: pairs at batch 8 = 4, which moved our per-block ratios by up to +-0.05 between seeds)
ZO_SAMPLES = 16


@dataclass
class SparsifySpec:
    """What to prune and how (plain data; recorded in the model config)."""

    method: str = "wanda"
    sparsity: float | None = None          # fraction of prunable weights set to 0; n:m alone implies 1 - n/m
    pattern: str = "unstructured"
    max_block_sparsity: float | None = None  # ecoflap: cap per block (default target + 0.1)
    scores: str = "zeroth"                 # ecoflap: zeroth | first
    local: str | None = None               # ecoflap: method inside blocks, wanda (default) | sparsegpt
    zo_samples: int | None = None          # ecoflap zeroth: perturbations per matrix (default ZO_SAMPLES)
    nm_blocks: str | None = None           # ecoflap n:m: uniform (default) | score
    towers: tuple[str, ...] = TOWERS
    samples: int = 128                     # calibration pairs
    batch_size: int = 32
    damp: float = 0.01                     # sparsegpt
    blocksize: int = 128                   # sparsegpt
    eps: float = 1e-3                      # ecoflap zeroth-order step
    seed: int = 0

    def resolved(self, config=None) -> tuple[Pattern, float, float | None]:
        """Check the request (against a model config when given); ``(pattern, sparsity, max_block_sparsity)``.

        Every user error is raised here, before any calibration or pruning work. Without ``config`` the checks
        that need the architecture (n:m dividing every input width, something to prune) are skipped."""
        if self.method not in METHODS:
            raise SparsityError(f"unknown method {self.method!r}; use one of {', '.join(METHODS)}")
        pattern = parse_pattern(self.pattern)
        towers = tuple(self.towers)
        if not towers or any(t not in TOWERS for t in towers):
            raise SparsityError(f"towers must be a non-empty subset of {TOWERS}, got {towers}")
        s = self.sparsity
        if s is None:
            if not pattern.structured:
                raise SparsityError("give --sparsity (e.g. 0.5) for unstructured sparsity")
            s = pattern.sparsity
        if not isinstance(s, (int, float)) or not 0 <= s < 1:
            raise SparsityError(f"--sparsity must be in [0, 1), got {s!r} (0.5 = half of the weights set to zero)")
        if pattern.structured:
            if self.method == "global-magnitude":
                raise SparsityError(f"global-magnitude makes one threshold over all weights and cannot make {pattern}; "
                                    f"use magnitude, wanda, sparsegpt or ecoflap for n:m")
            if self.method != "ecoflap" and abs(s - pattern.sparsity) > 1e-9:
                raise SparsityError(f"{pattern} fixes every layer's sparsity at {pattern.sparsity}; {self.method} "
                                    f"cannot reach {s}. Drop --sparsity, or use --method ecoflap, which keeps some "
                                    f"blocks dense to meet a lower global target")
            for t in (towers if config is not None else ()):
                tc = config.tower(t)
                for i, b in enumerate(tc.blocks):
                    widths = {"attn.qkv": tc.width if b.heads else None,
                              "attn.out_proj": b.heads * tc.head_dim if b.heads else None,
                              "mlp.c_fc": tc.width if b.mlp else None, "mlp.c_proj": b.mlp or None}
                    for name, w in widths.items():
                        if w is not None and w % pattern.m:
                            raise SparsityError(f"{pattern} needs every input width to be a multiple of {pattern.m}; "
                                                f"{t} block {i} {name} has {w} inputs. Use unstructured sparsity "
                                                f"or another n:m")
        mx = self._check_ecoflap(pattern, s)
        if self.samples < 2 or self.batch_size < 1:
            raise SparsityError(f"--samples must be >= 2 and batch size >= 1, got {self.samples}, {self.batch_size}")
        if not 0 < self.damp and "sparsegpt" in (self.method, self.local):
            raise SparsityError(f"damp must be positive, got {self.damp}")
        if config is not None and not any(True for _ in _config_linears(config, towers)):
            raise SparsityError(f"towers {towers} have no prunable weights (every block has 0 heads and 0 FFN)")
        return pattern, float(s), mx

    def _check_ecoflap(self, pattern: Pattern, s: float) -> float | None:
        """ECoFLaP's own options (and their refusal with any other method); the resolved block cap."""
        mx = self.max_block_sparsity
        if self.method == "ecoflap":
            if self.scores not in SCORES:
                raise SparsityError(f"--scores must be one of {', '.join(SCORES)}, got {self.scores!r}")
            if mx is None:
                mx = pattern.sparsity if pattern.structured else min(0.99, s + 0.1)
            if not s <= mx < 1 and not (pattern.structured and mx >= pattern.sparsity):
                raise SparsityError(f"--max-block-sparsity must be in [sparsity={s}, 1), got {mx}")
            if pattern.structured and mx < pattern.sparsity - 1e-9:
                raise SparsityError(f"--max-block-sparsity {mx} is below what {pattern} prunes in a block "
                                    f"({pattern.sparsity}); raise it or use unstructured sparsity")
            if self.local is not None and self.local not in LOCAL_METHODS:
                raise SparsityError(f"--local must be one of {', '.join(LOCAL_METHODS)}, got {self.local!r}")
            if self.nm_blocks is not None and self.nm_blocks not in NM_BLOCKS:
                raise SparsityError(f"--nm-blocks must be one of {', '.join(NM_BLOCKS)}, got {self.nm_blocks!r}")
            if self.zo_samples is not None and (not isinstance(self.zo_samples, int) or self.zo_samples < 1):
                raise SparsityError(f"--zo-samples must be a positive number of perturbations, got {self.zo_samples!r}")
            if self.zo_samples is not None and self.scores != "zeroth":
                raise SparsityError("--zo-samples only applies to --scores zeroth (first-order scores use every batch)")
        else:
            for flag, value in (("--max-block-sparsity", mx), ("--local", self.local), ("--zo-samples", self.zo_samples),
                                ("--nm-blocks", self.nm_blocks)):
                if value is not None:
                    raise SparsityError(f"{flag} only applies to --method ecoflap")
        return mx


def _config_linears(config, towers):
    for t in towers:
        for b in config.tower(t).blocks:
            if b.heads or b.mlp:
                yield t, b


def check_calibration(spec: SparsifySpec, calib: Calibration | None) -> None:
    """Methods that look at activations need calibration pairs; a too-small set is an error before work."""
    if spec.method not in NEEDS_DATA:
        return
    if calib is None or len(calib) == 0:
        raise SparsityError(f"--method {spec.method} needs calibration data (--data): it is missing or empty")
    if len(calib) < 2:
        raise SparsityError(f"calibration data has {len(calib)} pair(s); at least 2 are needed (contrastive loss)")


@dataclass
class Allocation:
    """ECoFLaP's decision per block ``(tower, index)``: the allocated sparsity, whether the block is n:m, its score."""

    sparsity: dict[tuple[str, int], float]
    nm: dict[tuple[str, int], bool]
    scores: dict[tuple[str, int], float]

    def per_tower(self, model, towers) -> dict[str, list[float | None]]:
        """Allocated sparsity in the shape of ``config.sparsity["blocks"]`` (None: a block with nothing to prune)."""
        return {t: [self.sparsity.get((t, i)) for i in range(len(model.tower(t).blocks))] for t in towers}


@torch.no_grad()
def _apply(lin, mask: torch.Tensor) -> None:
    lin.weight.mul_(mask.to(lin.weight.device, lin.weight.dtype))


def _local_mask(method: str, weight: torch.Tensor, norms: torch.Tensor | None, s: float, pattern: Pattern
                ) -> torch.Tensor:
    score = weight.detach().abs().float()
    if method != "magnitude":
        score.mul_(norms.to(score.device).view(1, -1))
    if pattern.structured:
        return nm_mask(score, pattern.n, pattern.m)
    return layer_mask(score, s) if method == "magnitude" else row_mask(score, s)


def _allocate(model, spec: SparsifySpec, calib: Calibration, pattern: Pattern, s: float, mx: float,
              advance) -> Allocation:
    """ECoFLaP's coarse step: block scores, then the per-block sparsity (unstructured) or the n:m blocks."""
    towers = tuple(spec.towers)
    uniform = (spec.nm_blocks or NM_BLOCKS[0]) == "uniform"
    if pattern.structured and (uniform or s >= pattern.sparsity - 1e-9):
        scores = {}  # no scoring pass: the score-free choice, or every block is n:m anyway
    elif spec.scores == "zeroth":
        samples = spec.zo_samples or ZO_SAMPLES
        scores = zeroth_order_scores(model, calib, towers, spec.batch_size, spec.eps, spec.seed, advance, samples)
    else:
        scores = first_order_scores(model, calib, towers, spec.batch_size, advance)
    bs = block_scores(scores)
    keys = [(t, i) for t in towers for i, blk in enumerate(model.tower(t).blocks) if block_linears(blk)]
    numels = [sum(l.weight.numel() for l in block_linears(model.tower(t).blocks[i]).values()) for t, i in keys]
    sc = [bs.get(k, 0.0) for k in keys]
    if pattern.structured:
        chosen = uniform_nm(keys, numels, s, pattern) if uniform else allocate_nm(numels, sc, s, pattern)
        nm = dict(zip(keys, chosen))
        sparsity = {k: pattern.sparsity if c else 0.0 for k, c in nm.items()}
    else:
        keeps = allocate_keep(numels, sc, s, mx)
        nm = {}
        sparsity = {k: 1 - kp / n for k, kp, n in zip(keys, keeps, numels)}
    return Allocation(sparsity, nm, dict(zip(keys, sc)))


@torch.no_grad()
def _prune_linear(method: str, lin, stats, s: float, pattern: Pattern, spec: SparsifySpec) -> None:
    """Wanda or SparseGPT on one linear at sparsity ``s`` (unstructured) or ``pattern`` (n:m)."""
    if not pattern.structured and s <= 0:
        return
    if method == "sparsegpt":
        w, _ = sparsegpt_prune(lin.weight, stats.hessian, s, pattern, spec.blocksize, spec.damp)
        lin.weight.copy_(w)
    else:
        _apply(lin, _local_mask(method, lin.weight, stats.norms, s, pattern))


def _prune_blocks(model, spec: SparsifySpec, calib: Calibration, pattern: Pattern, s: float,
                  alloc: Allocation | None, advance) -> None:
    """The calibrated local pass (Wanda, SparseGPT, or ECoFLaP's local method at the allocated sparsity)."""
    local = (spec.local or "wanda") if spec.method == "ecoflap" else spec.method
    for t in spec.towers:
        def prune_block(i, blk, stats, t=t):
            if alloc is None:
                sb, pat = s, pattern
            elif pattern.structured:  # ecoflap n:m: the block is n:m or stays dense
                if not alloc.nm.get((t, i)):
                    return
                sb, pat = pattern.sparsity, pattern
            else:
                sb, pat = alloc.sparsity.get((t, i), 0.0), pattern
            for name, lin in block_linears(blk).items():
                _prune_linear(local, lin, stats[name], sb, pat, spec)

        blockwise(model, t, calib, prune_block, hessian=local == "sparsegpt", batch_size=spec.batch_size,
                  on_block=advance)


def _prune_magnitude(model, spec: SparsifySpec, s: float, pattern: Pattern, advance) -> None:
    towers = tuple(spec.towers)
    thresh = _global_threshold(model, towers, s) if spec.method == "global-magnitude" else None
    for t in towers:
        for blk in model.tower(t).blocks:
            for lin in block_linears(blk).values():
                if thresh is not None:
                    _apply(lin, _global_mask(lin.weight, thresh))
                else:
                    _apply(lin, _local_mask("magnitude", lin.weight, None, s, pattern))
            advance()


def sparsify(model, spec: SparsifySpec, calib: Calibration | None = None, progress: bool = True) -> dict[str, Any]:
    """Sparsify ``model`` in place as ``spec`` says; record it in ``model.config.sparsity``; return the report
    (:func:`~mope_deploy.sparsity.layers.sparsity_report` plus, for ECoFLaP, the block scores and allocation)."""
    pattern, s, mx = spec.resolved(model.config)
    check_calibration(spec, calib)
    towers = tuple(spec.towers)
    t0 = time.time()
    alloc = None
    n_batches = 0 if calib is None else -(-len(calib) // spec.batch_size)
    with progress_bar(progress) as bar:
        if spec.method == "ecoflap":
            task = bar.add_task(f"ecoflap {spec.scores}-order scores", total=n_batches)
            alloc = _allocate(model, spec, calib, pattern, s, mx, lambda k: bar.advance(task, k))
        task = bar.add_task(f"{spec.method} {pattern}", total=sum(len(model.tower(t).blocks) for t in towers))
        if spec.method in ("magnitude", "global-magnitude"):
            _prune_magnitude(model, spec, s, pattern, lambda: bar.advance(task))
        else:
            _prune_blocks(model, spec, calib, pattern, s, alloc, lambda: bar.advance(task))
    rep = sparsity_report(model, towers)
    record = {"method": spec.method, "pattern": str(pattern), "target": s, "achieved": rep["sparsity"],
              "towers": list(towers), "spec": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(spec).items()},
              "blocks": {t: rep["towers"][t]["blocks"] for t in towers}}
    extra: dict[str, Any] = {}
    if alloc is not None:
        record.update(max_block_sparsity=mx, local=spec.local or "wanda", allocated=alloc.per_tower(model, towers))
        if spec.scores == "zeroth":
            record["zo_samples"] = spec.zo_samples or ZO_SAMPLES
        if pattern.structured:
            record["nm_blocks"] = spec.nm_blocks or NM_BLOCKS[0]
        extra = {"block_scores": {f"{t}.{i}": v for (t, i), v in alloc.scores.items()},
                 "allocated": record["allocated"]}
    model.config.sparsity = record
    rep.update(extra, method=spec.method, target=s, seconds=time.time() - t0)
    return rep


def _global_threshold(model, towers, s: float) -> float:
    """The ``round(s * total)``-th smallest |W| over all prunable weights (the global magnitude threshold)."""
    vals = torch.cat([lin.weight.detach().abs().float().flatten().cpu() for _, _, _, lin in prunable(model, towers)])
    k = int(round(s * vals.numel()))
    if k == 0:
        return -1.0
    return float(torch.kthvalue(vals, k).values)


def _global_mask(weight: torch.Tensor, thresh: float) -> torch.Tensor:
    return weight.detach().abs().float() > thresh
