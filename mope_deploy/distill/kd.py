"""Knowledge distillation for pruned students (paper Sec. 3.3, Eq. 2-7).

``L = itc * L_itc + alpha * L_sim + beta * L_feat + gamma * L_hidn`` with the paper's defaults
(1, 1, 1e3, 1). Each term can be switched off by a zero weight. Hidden states are compared block by
block through the student's block map: student block ``m`` was kept from teacher block
``config.blocks[m].source``.

The loss follows the trainer's loss protocol (:mod:`mope_deploy.distill.losses`); it asks for hidden
states through ``needs_hidden`` so the forward pass only collects them when ``gamma > 0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import MopeError
from ..models import CLIPConfig
from ..vocab import TOWERS
from .losses import Outputs, clip_logits, info_nce


class DistillError(MopeError, ValueError):
    """A student and teacher (or loss settings) that cannot be distilled together."""


def hidden_forward(model: Any, batch: dict[str, Any]) -> Outputs:
    """The trainer's forward pass that also returns every block's hidden states (for L_hidn):
    ``Outputs.extra["hidden"][tower]``."""
    img, hv = model.visual(batch["images"], return_hidden=True)
    txt, ht = model.text(batch["tokens"], return_hidden=True)
    return Outputs(image=F.normalize(img, dim=-1), text=F.normalize(txt, dim=-1), logit_scale=model.logit_scale.exp(),
                   extra={"hidden": {"vision": hv, "text": ht}})


@dataclass(frozen=True)
class KDWeights:
    itc: float = 1.0
    alpha: float = 1.0  # similarity-matrix soft cross-entropy
    beta: float = 1000.0  # final-embedding MSE
    gamma: float = 1.0  # hidden-state MSE


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-sum_j softmax(teacher)_ij * log_softmax(student)_ij``."""
    target = teacher_logits.softmax(dim=-1)
    return -(target * student_logits.log_softmax(dim=-1)).sum(dim=-1).mean()


def similarity_loss(student: Outputs, teacher: Outputs) -> torch.Tensor:
    """L_sim: soft cross-entropy of image->text and text->image similarity distributions, averaged."""
    s = clip_logits(student.image, student.text, student.logit_scale)
    t = clip_logits(teacher.image, teacher.text, teacher.logit_scale)
    return (soft_cross_entropy(s, t) + soft_cross_entropy(s.t(), t.t())) / 2


def feature_loss(student: Outputs, teacher: Outputs) -> torch.Tensor:
    """L_feat: ``1/2 MSE(F_v, F_v^T) + 1/2 MSE(F_l, F_l^T)`` on the final (projected, normalised) embeddings."""
    return 0.5 * F.mse_loss(student.image, teacher.image) + 0.5 * F.mse_loss(student.text, teacher.text)


def block_map(student: CLIPConfig, teacher: CLIPConfig) -> dict[str, list[int]]:
    """For each tower, the teacher block position each student block is distilled from."""
    out = {}
    for tower in TOWERS:
        position = {b.source: i for i, b in enumerate(teacher.tower(tower).blocks)}
        missing = [b.source for b in student.tower(tower).blocks if b.source not in position]
        if missing:
            raise DistillError(f"{tower}: student blocks come from teacher blocks {missing}, which the teacher "
                             "does not have; distil from the model the plan was made for")
        out[tower] = [position[b.source] for b in student.tower(tower).blocks]
    return out


def hidden_loss(student: Outputs, teacher: Outputs, mapping: dict[str, list[int]],
                towers: tuple[str, ...] = TOWERS) -> torch.Tensor:
    """L_hidn: ``1/2 sum over towers of sum_m MSE(H_s^m, H_t^{map(m)})``."""
    total = student.image.new_zeros(())
    for tower in towers:
        hs, ht = student.extra["hidden"][tower], teacher.extra["hidden"][tower]
        for m, t_idx in enumerate(mapping[tower]):
            total = total + F.mse_loss(hs[m], ht[t_idx])
    return 0.5 * total


class DistillationLoss:
    """The paper's combined loss, in the trainer's loss protocol ``(student, batch, teacher) -> (loss, logs)``."""

    def __init__(self, weights: KDWeights, mapping: dict[str, list[int]] | None = None,
                 towers: tuple[str, ...] = TOWERS):
        if (weights.gamma > 0) and mapping is None:
            raise DistillError("the hidden-state loss (gamma > 0) needs the student->teacher block map")
        self.weights, self.mapping, self.towers = weights, mapping, towers

    @property
    def needs_teacher(self) -> bool:
        w = self.weights
        return w.alpha > 0 or w.beta > 0 or w.gamma > 0

    @property
    def needs_hidden(self) -> bool:
        return self.weights.gamma > 0

    def __call__(self, student: Outputs, batch: dict[str, Any], teacher: Outputs | None
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        w = self.weights
        if self.needs_teacher and teacher is None:
            raise DistillError("distillation terms (alpha, beta, gamma) need teacher outputs")
        terms: dict[str, torch.Tensor] = {}
        if w.itc > 0:
            terms["itc"] = w.itc * info_nce(student.image, student.text, student.logit_scale)
        if w.alpha > 0:
            terms["sim"] = w.alpha * similarity_loss(student, teacher)
        if w.beta > 0:
            terms["feat"] = w.beta * feature_loss(student, teacher)
        if w.gamma > 0:
            terms["hidn"] = w.gamma * hidden_loss(student, teacher, self.mapping, self.towers)
        if not terms:
            raise ValueError("every loss term is switched off: set at least one of itc, alpha, beta, gamma > 0")
        loss = torch.stack(list(terms.values())).sum()
        logs = {f"loss_{k}": float(v.detach()) for k, v in terms.items()}
        return loss, logs
