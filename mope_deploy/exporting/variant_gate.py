"""The gates an ONNX variant passes before it stays in a bundle: parity vs torch, agreement with the fp32 graphs,
and Recall Mean vs fp32 on the run's evaluation inputs (when there are labelled ones)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..bundle.manifest import Variant
from ..bundle.names import onnx_name, variant_names
from ..models.slim_clip import SlimCLIP
from ..vocab import TOWERS
from . import onnx as ox
from .config import EvalInputs, ExportConfig

PARITY_BATCHES = (1, 3)  # each parity input is also run as an odd batch, not just the traced one


def parity_summary(p: dict[str, Any]) -> dict[str, Any]:
    """The manifest's short form of a :func:`~.onnx.parity_check` report (max |diff| per tower and case)."""
    out: dict[str, Any] = {"atol": p["atol"], "max_abs": p["max_abs"], "passed": p["passed"]}
    for tower in TOWERS:
        out[tower] = {k: v["max_abs"] for k, v in p[tower].items()}
    return out


class VariantGate:
    """Parity and recall checks of one export's ONNX variants, on the run's evaluation inputs (if any)."""

    def __init__(self, config: ExportConfig, ev: EvalInputs | None, model: SlimCLIP, progress: bool):
        self.config, self.ev, self.model, self.progress = config, ev, model, progress
        self.labelled = ev is not None and ev.labelled

    def real_images(self) -> torch.Tensor | None:
        return self.ev.parity_images() if self.ev is not None and self.ev.images is not None else None

    def real_tokens(self) -> torch.Tensor | None:
        return self.ev.parity_tokens() if self.ev is not None and self.ev.tokens is not None else None

    def parity(self, root: Path, variant: str) -> dict[str, Any]:
        """ONNX Runtime vs torch on random and real inputs (the full report)."""
        return ox.parity_check(self.model, root, normalize=self.config.normalize, atol=self.config.atol,
                               batch_sizes=PARITY_BATCHES, real_images=self.real_images(),
                               real_tokens=self.real_tokens(), files=variant_names(variant))

    def recall(self, root: Path, variant: str) -> dict[str, float]:
        from .variants import onnx_retrieval

        ev = self.ev
        assert ev is not None and ev.labelled
        return onnx_retrieval(root / onnx_name("vision", variant), root / onnx_name("text", variant), ev.images,
                              ev.tokens, ev.txt2img, progress=self.progress, label=f"eval {variant}")

    def agreement(self, root: Path, name: str) -> dict[str, dict[str, float]]:
        """Max |diff| and min cosine of variant ``name``'s embeddings vs the fp32 graphs."""
        from .variants import embedding_agreement

        g = torch.Generator().manual_seed(1)
        size = self.model.config.vision.image_size
        images = self.real_images()
        images = images if images is not None else torch.randn(4, 3, size, size, generator=g)
        tokens = self.real_tokens()
        tokens = tokens if tokens is not None else ox.tokenize(self.model, ox.SAMPLE_CAPTIONS)
        return embedding_agreement((root / onnx_name("vision"), root / onnx_name("text")),
                                   (root / onnx_name("vision", name), root / onnx_name("text", name)), images, tokens)

    def judge(self, root: Path, name: str, v: Variant, fp32: Variant) -> Variant:
        """Measure ``v``'s Recall Mean and refuse it (:class:`~.onnx.ExportError`) if it lost more than allowed vs
        ``fp32``; fills ``v.recall``/``recall_delta``/``recall_gate``."""
        max_drop, skipped = self.config.max_recall_drop, self.config.skip_recall_gate
        if not self.labelled:
            v.recall = None
            v.recall_gate = "skipped by --skip-recall-gate" if skipped else "no --eval-data"
            return v
        v.recall = self.recall(root, name)  # fp16 too: ORT's CPU provider runs fp16 graphs (slowly)
        assert fp32.recall is not None
        delta = v.recall["recall_mean"] - fp32.recall["recall_mean"]
        v.recall_delta = delta
        if -delta > max_drop and not skipped:
            raise ox.ExportError(f"export refused: the {name} variant loses {-delta:.2f} points of Recall Mean vs "
                                 f"fp32 ({v.recall['recall_mean']:.2f} vs {fp32.recall['recall_mean']:.2f}; allowed "
                                 f"{max_drop:g}); use a higher precision or raise --max-recall-drop")
        v.recall_gate = "passed" if -delta <= max_drop else "skipped by --skip-recall-gate"
        return v


__all__ = ["VariantGate", "PARITY_BATCHES", "parity_summary"]
