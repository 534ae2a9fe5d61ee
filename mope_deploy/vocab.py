"""The words every stage shares, each written once: towers, scoring methods and metrics, depth methods,
allocations, export formats, precisions, ONNX variants and runtime backends.

A module that validates or lists one of these imports it from here; nothing restates a tuple.
"""

from __future__ import annotations

#: the two encoders, in the order every report and loop uses
TOWERS: tuple[str, ...] = ("vision", "text")

#: importance scoring methods (``mope importance --method``; a recipe's ``prune.method``)
METHODS: tuple[str, ...] = ("mope", "magnitude", "gradient")
#: the methods that need validation data (``magnitude`` works from the weights alone)
DATA_METHODS: tuple[str, ...] = ("mope", "gradient")
#: the retrieval metric a MoPE score measures (recall_mean both ways, TR for vision, IR for text)
METRICS: tuple[str, ...] = ("recall_mean", "tr_mean", "ir_mean")
#: how blocks are chosen for a depth target: by a score table's block scores, or by position
SCORED_DEPTH_METHODS: tuple[str, ...] = ("mope", "gradient", "magnitude")
DEPTH_METHODS: tuple[str, ...] = ("mope", "every-other", "top", "bottom", "gradient", "magnitude")
#: how a width is spread: the same top-k in every block (the paper) or top-k over all kept blocks
ALLOCATIONS: tuple[str, ...] = ("per-block", "global")
#: the paper's two pipelines (Alg. 2) and the fine-tuning stage's orders (Table 9)
STAGES: tuple[str, ...] = ("pretraining", "finetuning")
ORDERS: tuple[str, ...] = ("width-first", "depth-first", "joint")

#: ``mope export --format``
FORMATS: tuple[str, ...] = ("onnx", "tensorrt", "torch-tensorrt", "triton", "openvino")
#: ``mope export --precision``
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
#: ONNX graph variants a bundle may hold (same I/O contract each; fused: com.microsoft Attention, ORT only)
VARIANTS: tuple[str, ...] = ("fp32", "optimized", "int8", "fp16", "fused")
#: how ``--precision int8`` ONNX graphs are quantised: QAttention/MatMulInteger with calibrated activation scales
#: (calibrated: the default, batch-invariant), per call over the whole batch (dynamic: an embedding depends on its
#: batch-mates), or static QDQ (standard ops, also read by TensorRT)
INT8_METHODS: tuple[str, ...] = ("calibrated", "dynamic", "static")
#: torch.onnx exporters (``auto`` = the one with the lower measured peak memory)
EXPORTERS: tuple[str, ...] = ("auto", "dynamo", "legacy")
#: weight-sparsity methods (``mope sparsify --method``; a recipe's ``sparsity.method``), ECoFLaP's block scores,
#: and the recovery step after sparsification
SPARSITY_METHODS: tuple[str, ...] = ("magnitude", "global-magnitude", "wanda", "sparsegpt", "ecoflap")
SPARSITY_SCORES: tuple[str, ...] = ("zeroth", "first")
RECOVERY: tuple[str, ...] = ("sparselora",)

# Runtime backend names live with their definitions in mope_deploy.runtime.registry (BACKENDS there), since
# registering a backend is what makes a name valid.

__all__ = ["TOWERS", "METHODS", "DATA_METHODS", "METRICS", "SCORED_DEPTH_METHODS", "DEPTH_METHODS", "ALLOCATIONS",
           "STAGES", "ORDERS", "FORMATS", "PRECISIONS", "VARIANTS", "EXPORTERS", "INT8_METHODS", "SPARSITY_METHODS", "SPARSITY_SCORES",
           "RECOVERY"]
