"""CLIP's contrastive objective, shared by importance scoring (gradients) and training (distillation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def clip_logits(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Image-to-text similarity logits ``scale * image @ text.T`` (rows: images)."""
    return logit_scale * image @ text.t()


def info_nce(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE on L2-normalised embeddings: pair i is the positive of row i and of column i."""
    logits = clip_logits(image, text, logit_scale)
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


__all__ = ["clip_logits", "info_nce"]
