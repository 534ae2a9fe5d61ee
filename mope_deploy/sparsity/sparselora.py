"""SparseLoRA recovery (seed 002): train low-rank adapters on a sparse model without losing its zeros.

Each sparsified linear becomes a :class:`SparseLoRALinear` holding the *dense* weight ``W`` it was pruned from
(frozen), the keep mask ``M`` (a buffer), and LoRA factors ``B A`` (rank ``r``, ``B`` zero-initialised):

- student path: ``y = x (W * M + (s B A) * M)^T + b``; when the sparsifier also changed the kept weights
  (SparseGPT) the sparse weight ``W_s`` is kept as the base instead of ``W * M``; so at step 0 the student *is*
  the sparse model;
- dense path (:func:`dense_path`): ``y = x W^T + b``, the model before sparsification. It is the teacher of the
  KL term: the same modules, no second copy of the model;
- merge: ``W_merged = W_s + (s B A) * M``: exactly the sparse model's zero pattern (so n:m stays valid).

Recovery runs in :class:`~mope_deploy.distill.trainer.Trainer` (the one training loop) through its pluggable
``forward`` (student outputs, plus the dense path's outputs under ``no_grad`` in ``extra["teacher"]``) and
``loss``: ``(1 - w) * InfoNCE + w * KL_T``, or, with ``kd=True``, the project's full distillation loss against the
dense path. The KL term follows the reference (Shwai-He/VLM-Compression, ``lavis/tasks/image_text_retrain.py``):
``KLDiv(log_softmax(s/T), log_softmax(t/T), batchmean)`` with ``w = 0.01``, ``T = 2`` and no ``T^2`` factor; the
reference distils one set of logits, CLIP has two (image->text and text->image), so the two KLs are averaged
(as InfoNCE averages its two directions).

LoRA goes on every sparsified tower by default (the seed paper puts it on every modality); ``lora_towers``
restricts it (the other towers' linears keep their sparse weights exactly).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import distributed as D
from ..distill.losses import Outputs, clip_logits, info_nce
from .layers import TOWERS, block_linears
from .patterns import SparsityError


class SparseLoRALinear(nn.Module):
    """A masked linear with a LoRA update that never touches pruned positions (see module doc)."""

    def __init__(self, dense: nn.Linear, sparse_weight: Tensor, rank: int = 4, alpha: float | None = None):
        super().__init__()
        W = dense.weight.detach()
        if sparse_weight.shape != W.shape:
            raise SparsityError(f"sparse weight {tuple(sparse_weight.shape)} does not match dense {tuple(W.shape)}")
        self.in_features, self.out_features = dense.in_features, dense.out_features
        self.weight = nn.Parameter(W.clone(), requires_grad=False)
        self.bias = nn.Parameter(dense.bias.detach().clone(), requires_grad=False) if dense.bias is not None else None
        mask = sparse_weight.detach() != 0
        self.register_buffer("mask", mask)
        ws = sparse_weight.detach().to(W.dtype)
        # SparseGPT also moves the kept weights: then the student's base is the sparse weight itself (stored
        # exactly, not as a difference, so an untrained merge reproduces the sparse model bit for bit).
        self.register_buffer("sparse_base", None if torch.equal(ws, W * mask) else ws.clone())
        self.rank = rank
        self.scaling = (alpha if alpha is not None else rank) / rank if rank else 0.0
        if rank:
            self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, dtype=W.dtype, device=W.device))
            self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, dtype=W.dtype, device=W.device))
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as in LoRA / peft
        else:
            self.lora_A = self.lora_B = None
        self.dense = False  # True: the unmasked teacher path

    def sparse_weight(self) -> Tensor:
        """``W_s + (s B A) * M`` with ``W_s = W * M`` unless stored: the student's weight (and what merge writes)."""
        base = self.weight * self.mask if self.sparse_base is None else self.sparse_base
        if self.lora_A is None:
            return base
        return base + (self.scaling * (self.lora_B @ self.lora_A)) * self.mask

    def forward(self, x: Tensor) -> Tensor:
        if self.dense:
            return F.linear(x, self.weight, self.bias)
        return F.linear(x, self.sparse_weight(), self.bias)

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        lin.weight.copy_(self.sparse_weight())
        if self.bias is not None:
            lin.bias.copy_(self.bias)
        return lin


def _set(block: nn.Module, dotted: str, module: nn.Module) -> None:
    parent, name = dotted.split(".")
    setattr(getattr(block, parent), name, module)


def attach(dense_model, sparse_model, rank: int = 4, lora_towers=TOWERS, towers=TOWERS,
           alpha: float | None = None):
    """``dense_model`` (modified in place and returned) with every prunable linear of ``towers`` replaced by a
    :class:`SparseLoRALinear` carrying ``sparse_model``'s mask; LoRA (rank ``rank``) only in ``lora_towers``.

    Every other parameter is frozen except the LoRA factors; non-block weights (embeddings, LayerNorms,
    projections) are taken from ``sparse_model``, which must have the dense model's architecture."""
    if dense_model.config.arch_hash() != sparse_model.config.arch_hash():
        raise SparsityError("the sparse model's architecture differs from the dense model's: recover a model "
                            "with the model it was sparsified from")
    if rank < 0:
        raise SparsityError(f"LoRA rank must be >= 0, got {rank}")
    dense_model.requires_grad_(False)
    for t in towers:
        for blk_d, blk_s in zip(dense_model.tower(t).blocks, sparse_model.tower(t).blocks):
            sparse_lins = block_linears(blk_s)
            for name, lin in block_linears(blk_d).items():
                r = rank if t in lora_towers else 0
                _set(blk_d, name, SparseLoRALinear(lin, sparse_lins[name].weight, r, alpha))
    dense_model.config.sparsity = dict(sparse_model.config.sparsity)
    return dense_model


def lora_modules(model) -> Iterator[SparseLoRALinear]:
    return (m for m in model.modules() if isinstance(m, SparseLoRALinear))


@contextlib.contextmanager
def dense_path(model):
    """Run ``model`` as the dense teacher (every SparseLoRALinear unmasked, without LoRA) inside the block."""
    mods = list(lora_modules(model))
    old = [m.dense for m in mods]
    for m in mods:
        m.dense = True
    try:
        yield model
    finally:
        for m, o in zip(mods, old):
            m.dense = o


@torch.no_grad()
def merge(model):
    """Replace every SparseLoRALinear by a plain linear holding ``W_s + (s B A) * M`` (in place; returned)."""
    for t in TOWERS:
        for blk in model.tower(t).blocks:
            for name in ("attn.qkv", "attn.out_proj", "mlp.c_fc", "mlp.c_proj"):
                parent, child = name.split(".")
                owner = getattr(blk, parent, None)
                mod = getattr(owner, child, None) if owner is not None else None
                if isinstance(mod, SparseLoRALinear):
                    setattr(owner, child, mod.merged())
    model.requires_grad_(True)
    return model


def make_forward(inner: Callable[[nn.Module, dict], Outputs]) -> Callable[[nn.Module, dict], Outputs]:
    """Trainer ``forward``: the student (masked) outputs of ``inner``, with the dense path's outputs (no grad) in
    ``extra["teacher"]``; under torchrun the teacher's embeddings are gathered like the student's."""
    def forward(model: nn.Module, batch: dict) -> Outputs:
        student = inner(model, batch)
        with torch.no_grad(), dense_path(model):
            teacher = inner(model, batch)
        if D.rank_world()[1] > 1:
            teacher = Outputs(image=D.all_gather_with_grad(teacher.image), text=D.all_gather_with_grad(teacher.text),
                              logit_scale=teacher.logit_scale, extra=teacher.extra)
        student.extra["teacher"] = teacher
        return student

    return forward


def kl_term(student: Outputs, teacher: Outputs, temperature: float) -> Tensor:
    """``KL(softmax(t/T) || softmax(s/T))`` on the image->text and text->image logits, averaged (no ``T^2``: as the
    reference)."""
    s = clip_logits(student.image, student.text, student.logit_scale) / temperature
    t = clip_logits(teacher.image, teacher.text, teacher.logit_scale) / temperature
    kl = 0.0
    for a, b in ((s, t), (s.t(), t.t())):
        kl = kl + F.kl_div(F.log_softmax(a, dim=-1), F.log_softmax(b, dim=-1), log_target=True,
                           reduction="batchmean")
    return kl / 2


@dataclass
class SparseLoRALoss:
    """``(1 - w) * InfoNCE + w * KL_T`` against the dense path, or ``kd(student, batch, dense outputs)``."""

    weight: float = 0.01
    temperature: float = 2.0
    kd: Any = None  # e.g. mope_deploy.distill.kd.DistillationLoss

    def __call__(self, student: Outputs, batch: dict, teacher: Outputs | None) -> tuple[Tensor, dict[str, float]]:
        dense = student.extra.get("teacher", teacher)
        if dense is None:
            raise ValueError("SparseLoRALoss needs the dense path's outputs (use sparselora.make_forward)")
        if self.kd is not None:
            return self.kd(student, batch, dense)
        task = info_nce(student.image, student.text, student.logit_scale)
        kl = kl_term(student, dense, self.temperature)
        loss = (1 - self.weight) * task + self.weight * kl
        return loss, {"task": float(task.detach()), "kl": float(kl.detach())}


@dataclass
class RecoverSpec:
    """SparseLoRA recovery settings: rank 4 (alpha = rank: scaling 1) on both towers; KL weight 0.01 at T 2 (the
    reference's)."""

    rank: int = 4
    alpha: float | None = None
    lora_towers: tuple[str, ...] | None = None  # None: every sparsified tower
    weight: float = 0.01
    temperature: float = 2.0
    kd: bool = False          # the project's full KD loss (L_itc + L_sim + L_feat + L_hidn) instead
    steps: int = 100
    batch_size: int = 32
    lr: float = 1e-3
    warmup: float = 0.05
    seed: int = 0


def lora_towers(spec: RecoverSpec, towers=TOWERS) -> tuple[str, ...]:
    """The towers that get LoRA: ``spec.lora_towers``, or every sparsified tower."""
    return tuple(towers) if spec.lora_towers is None else tuple(spec.lora_towers)


def check_recover(spec: RecoverSpec, towers=TOWERS) -> None:
    """Every SparseLoRA setting error, before any work; ``towers``: the sparsified towers."""
    lt = lora_towers(spec, towers)
    if not lt or any(t not in TOWERS for t in lt):
        raise SparsityError(f"--lora-towers must be a non-empty subset of {','.join(TOWERS)}, got {','.join(lt) or '(none)'}")
    missing = [t for t in lt if t not in towers]
    if missing:
        raise SparsityError(f"--lora-towers {','.join(missing)} was not sparsified (--towers {','.join(towers)}): "
                            "LoRA there would train a dense tower; drop it from --lora-towers")
    if spec.rank < 1:
        raise SparsityError(f"--lora-rank must be >= 1, got {spec.rank}")
    if spec.alpha is not None and not spec.alpha > 0:
        raise SparsityError(f"--lora-alpha must be positive, got {spec.alpha}")
    if spec.steps < 1 or spec.batch_size < 2:
        raise SparsityError(f"--recover-steps must be >= 1 and --recover-batch >= 2, got {spec.steps}, "
                            f"{spec.batch_size}")
    if not 0 <= spec.weight <= 1:
        raise SparsityError(f"the KL weight must be in [0, 1], got {spec.weight}")


def recover(dense_model, sparse_model, data, spec: RecoverSpec = RecoverSpec(), out_dir: str | None = None,
            progress: bool = True, device: str = "cpu", eval_fn=None):
    """Train SparseLoRA adapters with the project trainer and merge them; returns the merged sparse SlimCLIP.

    ``data`` is a trainer data function (``start -> batches``, e.g. ``synthetic_batches``). ``dense_model`` is
    consumed (it becomes the returned model). With ``out_dir`` the run checkpoints and resumes there."""
    from ..distill.trainer import TrainConfig, Trainer, clip_forward

    towers = tuple((sparse_model.config.sparsity or {}).get("towers", TOWERS))
    check_recover(spec, towers)
    lt = lora_towers(spec, towers)
    with torch.random.fork_rng(devices=[]):   # seeded adapters (a rerun gives the same model); CPU RNG restored
        torch.manual_seed(spec.seed)
        model = attach(dense_model, sparse_model, spec.rank, lt, alpha=spec.alpha)
    if not any(p.requires_grad for p in model.parameters()):
        raise SparsityError("nothing to train: LoRA rank 0 or no sparsified linear in lora_towers")
    inner = clip_forward
    kd = None
    if spec.kd:
        from ..distill.kd import DistillationLoss, KDWeights, hidden_forward

        n = {t: len(model.tower(t).blocks) for t in TOWERS}
        kd = DistillationLoss(KDWeights(), mapping={t: list(range(n[t])) for t in TOWERS})
        inner = hidden_forward
    cfg = TrainConfig(steps=spec.steps, lr=spec.lr, weight_decay=0.0, warmup_steps=int(spec.warmup * spec.steps),
                      seed=spec.seed, out_dir=out_dir, checkpoint_every=max(1, spec.steps // 4),
                      log_every=max(1, spec.steps // 10), best_metric=None)
    trainer = Trainer(model, cfg, data, loss=SparseLoRALoss(spec.weight, spec.temperature, kd),
                      forward=make_forward(inner), eval_fn=eval_fn, progress=progress, device=device)
    trainer.train()
    merged = merge(trainer.model)
    merged.config.sparsity = {**merged.config.sparsity, "recovered": {
        "method": "sparselora", "rank": spec.rank, "alpha": spec.alpha if spec.alpha is not None else spec.rank,
        "lora_towers": list(lt), "steps": spec.steps,
        "loss": "kd" if spec.kd else f"(1-{spec.weight})*itc+{spec.weight}*KL(T={spec.temperature})"}}
    return merged.eval()
