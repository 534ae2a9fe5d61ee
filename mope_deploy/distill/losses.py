"""Training losses. Every loss is a callable ``(student, batch, teacher) -> (loss, logs)``.

``student`` / ``teacher`` are :class:`Outputs` (the teacher's is ``None`` without distillation), ``batch`` the
dict the data yields (``images``, ``tokens``, ...), ``logs`` a dict of floats for metrics.jsonl. Distillation
losses plug into the same trainer by following this signature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..models.objectives import clip_logits, info_nce


@dataclass
class Outputs:
    """What a forward pass hands to the loss: normalised embeddings, the temperature, optional extras
    (hidden states, attention maps, ...) for distillation terms."""

    image: torch.Tensor
    text: torch.Tensor
    logit_scale: torch.Tensor
    extra: dict[str, Any] = field(default_factory=dict)


class Loss(Protocol):
    def __call__(self, student: Outputs, batch: dict[str, Any], teacher: Outputs | None
                 ) -> tuple[torch.Tensor, dict[str, float]]: ...


class ContrastiveLoss:
    """InfoNCE on the student's own embeddings (the teacher, if any, is ignored)."""

    def __call__(self, student: Outputs, batch: dict[str, Any], teacher: Outputs | None
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        loss = info_nce(student.image, student.text, student.logit_scale)
        with torch.no_grad():
            logits = clip_logits(student.image, student.text, student.logit_scale)
            labels = torch.arange(logits.shape[0], device=logits.device)
            acc = ((logits.argmax(1) == labels).float().mean() + (logits.argmax(0) == labels).float().mean()) / 2
        return loss, {"contrastive": float(loss.detach()), "batch_acc": float(acc)}


__all__ = ["Outputs", "Loss", "ContrastiveLoss", "clip_logits", "info_nce"]
