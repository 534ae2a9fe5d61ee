"""What an export run is asked to do (:class:`ExportConfig`, filled by ``mope export`` and recorded in the
manifest) and the evaluation data it judges variants on (:class:`EvalInputs`).

Both are plain values: exporters read them, nothing mutates them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import MopeError
from ..vocab import EXPORTERS, FORMATS, INT8_METHODS, PRECISIONS

MIN_OPSET = 17
FP32_ATOL = 1e-4
MAX_RECALL_DROP = 1.0  # Recall Mean points a variant may lose vs fp32
# "auto" = the exporter with the lower measured peak memory. benchmarks/export_memory.py on ViT-L-14 (random
# weights, 2-core/24 GB machine): legacy peak RSS 6.0 GB (+3.5 GB over the loaded model), dynamo 4.5 GB (+2.0 GB).
# Dynamo's known flaw (a traced batch of 1 is baked in) is avoided by tracing a batch of 2 with a batch Dim.
AUTO_EXPORTER = "dynamo"


class ExportConfigError(MopeError, ValueError):
    """Export settings that cannot work together (names the setting and what is allowed)."""


def check_opset(opset: int) -> None:
    if not isinstance(opset, int) or opset < MIN_OPSET:
        raise ExportConfigError(f"opset {opset!r} is too old: use opset >= {MIN_OPSET} (LayerNormalization is a "
                                "single op from 17 on, which runtimes fuse and TensorRT keeps in fp32)")


def resolve_exporter(exporter: str) -> str:
    """``auto`` -> the concrete exporter; an unknown name is an error."""
    if exporter not in EXPORTERS:
        raise ExportConfigError(f"unknown exporter {exporter!r}: use one of {', '.join(EXPORTERS)}")
    return AUTO_EXPORTER if exporter == "auto" else exporter


def check_batch_sizes(batch_sizes: Sequence[int]) -> tuple[int, int, int]:
    """(min, opt, max) from 1-3 positive ints; clear error otherwise."""
    try:
        bs = [int(b) for b in batch_sizes]
    except (TypeError, ValueError):
        raise ExportConfigError(f"batch sizes {batch_sizes!r}: give MIN,OPT,MAX integers, e.g. 1,8,64") from None
    if not 1 <= len(bs) <= 3 or any(b < 1 for b in bs):
        raise ExportConfigError(f"batch sizes {list(batch_sizes)} invalid: give MIN,OPT,MAX positive integers, "
                                "e.g. 1,8,64")
    if len(bs) == 1:
        bs = [1, bs[0], bs[0]]
    elif len(bs) == 2:
        bs = [bs[0], bs[1], bs[1]]
    if not bs[0] <= bs[1] <= bs[2]:
        raise ExportConfigError(f"batch sizes {bs} must satisfy MIN <= OPT <= MAX")
    return bs[0], bs[1], bs[2]


@dataclass(frozen=True)
class ExportConfig:
    """Every setting of one export run (``mope export`` options, one field each).

    ``formats``: onnx | tensorrt | torch-tensorrt | triton; ``precision``: fp32 | fp16 | int8 (the deployed
    variant / engine precision); ``batch_sizes``: MIN,OPT,MAX of the dynamic batch axis; ``optimize``: also
    write ONNX Runtime's fused fp32 graphs; ``eval_data``/``eval_limit``: the dataset spec (and its first N
    images) the recall gate and int8 calibration use; ``max_recall_drop``: Recall Mean points a variant may
    lose vs fp32; ``fused``: also write ONNX Runtime graphs with one ``com.microsoft::Attention`` per block
    (kept only if they pass the parity and recall gates; int8 is quantised from them, attention included);
    ``int8_method``: calibrated (default: fixed activation scales measured on ``eval_data``, else the synthetic set;
    batch-invariant) | dynamic (per-batch scales) | static (QDQ, calibrated on ``eval_data``); ``int8_fp32_nodes``: keep the N
    quantisable nodes whose int8 error hurts the embeddings most in fp32 (a measured sensitivity pass);
    ``sparse``/``workspace_gb``/``timing_cache``: TensorRT builder settings; ``source``: the
    model spec, recorded in the manifest.
    """

    formats: tuple[str, ...] = ("onnx",)
    precision: str = "fp32"
    batch_sizes: tuple[int, ...] = (1, 8, 64)
    opset: int = MIN_OPSET
    normalize: bool = False
    exporter: str = "auto"
    external_data: bool | None = None
    atol: float = FP32_ATOL
    optimize: bool = True
    eval_data: str | None = None
    eval_limit: int | None = 200
    max_recall_drop: float = MAX_RECALL_DROP
    skip_recall_gate: bool = False
    fused: bool = True
    int8_method: str = "calibrated"
    int8_fp32_nodes: int = 0
    sparse: bool = False
    workspace_gb: float = 4.0
    timing_cache: str | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        # accept lists / paths from callers; keep the stored value hashable and JSON-friendly
        formats = (self.formats,) if isinstance(self.formats, str) else tuple(self.formats)
        object.__setattr__(self, "formats", tuple(dict.fromkeys(formats)))
        object.__setattr__(self, "batch_sizes", tuple(self.batch_sizes))
        if self.timing_cache is not None:
            object.__setattr__(self, "timing_cache", str(self.timing_cache))

    @property
    def batch_range(self) -> tuple[int, int, int]:
        return check_batch_sizes(self.batch_sizes)

    def replace(self, **changes: Any) -> "ExportConfig":
        return dataclasses.replace(self, **changes)

    def check(self) -> "ExportConfig":
        """Raise :class:`ExportConfigError` on settings that cannot work (before any work is spent)."""
        for f in self.formats:
            if f not in FORMATS:
                raise ExportConfigError(f"unknown export format {f!r}: use one or more of {', '.join(FORMATS)}")
        if not self.formats:
            raise ExportConfigError(f"no export format given: use --format with one of {', '.join(FORMATS)}")
        if self.precision not in PRECISIONS:
            raise ExportConfigError(f"unknown precision {self.precision!r}: use one of {', '.join(PRECISIONS)}")
        self.batch_range
        check_opset(self.opset)
        resolve_exporter(self.exporter)
        if self.int8_method not in INT8_METHODS:
            raise ExportConfigError(f"unknown int8 method {self.int8_method!r}: use one of {', '.join(INT8_METHODS)}")
        if not isinstance(self.int8_fp32_nodes, int) or self.int8_fp32_nodes < 0:
            raise ExportConfigError(f"int8_fp32_nodes must be a whole number >= 0, got {self.int8_fp32_nodes!r}")
        if self.max_recall_drop < 0:
            raise ExportConfigError(f"max_recall_drop must be >= 0 points, got {self.max_recall_drop}")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise ExportConfigError(f"eval_limit must be at least 1 image, got {self.eval_limit}")
        return self

    def needs_eval_data(self) -> str | None:
        """Why these settings need ``eval_data`` (None when they do not)."""
        if self.precision != "fp32" and not self.skip_recall_gate:
            return (f"--precision {self.precision} needs --eval-data SPEC: the {self.precision} variant is kept only "
                    f"if its Recall Mean stays within {self.max_recall_drop} points of fp32 (or pass "
                    "--skip-recall-gate)")
        if self.precision == "int8" and "tensorrt" in self.formats:
            return "TensorRT int8 calibrates on real inputs: give --eval-data SPEC"
        if self.precision == "int8" and self.int8_method == "static":
            return "--int8-method static calibrates on real inputs: give --eval-data SPEC (or use --int8-method calibrated)"
        if self.precision == "int8" and self.int8_fp32_nodes:
            return "--int8-fp32-nodes measures each node's effect on real inputs: give --eval-data SPEC"
        return None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["formats"], d["batch_sizes"] = list(self.formats), list(self.batch_sizes)
        return d


@dataclass(frozen=True)
class EvalInputs:
    """Model-ready evaluation inputs: preprocessed ``images`` [N,3,S,S], int ``tokens`` [M,ctx], ``txt2img``
    [M] (image of each caption; None = parity inputs only, no recall), and ``info`` on where they came from."""

    images: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    txt2img: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def labelled(self) -> bool:
        """Whether retrieval can be measured on these inputs."""
        return self.images is not None and self.tokens is not None and self.txt2img is not None

    def parity_images(self, n: int = 8) -> torch.Tensor | None:
        return None if self.images is None else self.images[:n]

    def parity_tokens(self, n: int = 8) -> torch.Tensor | None:
        return None if self.tokens is None else self.tokens[:n].to(torch.int32)

    @classmethod
    def load(cls, model: Any, spec: str | Path, limit: int | None = 200, progress: bool = False) -> "EvalInputs":
        """The first ``limit`` images of dataset ``spec`` with all their captions, through the model's own
        preprocess and tokenizer."""
        from ..data.datasets import load_dataset
        from ..eval.retrieval import encode_inputs

        ds = load_dataset(spec)
        if limit is not None:
            ds = ds.head(limit)
        images, tokens, txt2img = encode_inputs(model, ds, progress=progress)
        info = {"spec": str(spec), "name": ds.name, "n_images": int(images.shape[0]),
                "n_captions": int(tokens.shape[0]), "limit": limit, "skipped": len(ds.report)}
        return cls(images, tokens, txt2img, info)


__all__ = ["ExportConfig", "ExportConfigError", "EvalInputs", "check_batch_sizes", "check_opset", "resolve_exporter",
           "MIN_OPSET", "FP32_ATOL", "MAX_RECALL_DROP", "AUTO_EXPORTER"]
