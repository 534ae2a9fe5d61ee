"""ONNX variants of an fp32 bundle and how each is judged: ORT transformer fusions, int8, fp16.

Every variant keeps the bundle's I/O contract (float32 images / int32 tokens in, float32 embedding out),
so a runtime can swap files without changing its code. Quality is measured as retrieval on an evaluation
set through ONNX Runtime itself, compared with the fp32 graph on the same inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .graphs import compare_embeddings, has_external_data, ort_session, run_session


def optimize_onnx(src: str | Path, dst: str | Path, model_type: str = "clip") -> dict[str, int]:
    """ONNX Runtime's transformer optimizer (its fusions: SkipLayerNorm, BiasGelu, Attention where the
    pattern matches); returns the fused-operator counts. ``opt_level=0`` keeps the graph free of
    provider-specific rewrites, so the file runs on any execution provider."""
    from onnxruntime.transformers.optimizer import optimize_model

    src, dst = Path(src), Path(dst)
    # num_heads/hidden_size 0: read from the graph per node, since pruned blocks differ in head count
    om = optimize_model(str(src), model_type=model_type, num_heads=0, hidden_size=0, opt_level=0)
    om.save_model_to_file(str(dst), use_external_data_format=has_external_data(src))
    return {k: int(v) for k, v in om.get_fused_operator_statistics().items() if v}


def convert_fp16(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """fp16 weights and activations for GPU execution providers, float32 I/O kept (``keep_io_types``).

    LayerNorm, Softmax, reductions and the EOT ArgMax run in fp32 (casts around them): fp16 LayerNorm overflows on
    large activations. The same converter as the TensorRT engines' fp16 graphs
    (:func:`.graph_precision.convert_fp16_graph`, which also checks the result and sorts the nodes).
    """
    from .graph_precision import convert_fp16_graph

    return convert_fp16_graph(src, dst)


def _normalize(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(x).double()
    return torch.nn.functional.normalize(t, dim=-1).float()


def _run_with_progress(session, x: torch.Tensor, batch_size: int, bar, label: str) -> np.ndarray:
    if bar is None:
        return run_session(session, x, batch_size)
    task = bar.add_task(label, total=len(x))
    parts = []
    for i in range(0, len(x), batch_size):
        parts.append(run_session(session, x[i:i + batch_size], batch_size))
        bar.advance(task, min(batch_size, len(x) - i))
    return np.concatenate(parts)


def onnx_retrieval(image_file: str | Path, text_file: str | Path, images: torch.Tensor, tokens: torch.Tensor,
                   txt2img: torch.Tensor, batch_size: int = 32, progress: bool = False,
                   label: str = "") -> dict[str, Any]:
    """Retrieval metrics (percent) of a pair of ONNX encoders on prepared inputs, run with ONNX Runtime CPU."""
    import contextlib

    from ..progress import progress_bar
    from ..eval.retrieval import retrieval_metrics

    ctx = progress_bar() if progress else contextlib.nullcontext()
    with ctx as bar:
        img = _run_with_progress(ort_session(image_file), images.float(), batch_size, bar, f"{label} images")
        txt = _run_with_progress(ort_session(text_file), tokens.to(torch.int32), batch_size, bar, f"{label} captions")
    metrics = retrieval_metrics(_normalize(img), _normalize(txt), txt2img)
    return {k: float(v) for k, v in metrics.items()}


def embedding_agreement(ref_files: tuple[Path, Path], files: tuple[Path, Path], images: torch.Tensor,
                        tokens: torch.Tensor) -> dict[str, dict[str, float]]:
    """Max abs difference and min cosine similarity of a variant's embeddings vs the fp32 graphs."""
    out = {}
    for tower, x, ref, new in (("vision", images.float(), ref_files[0], files[0]),
                               ("text", tokens.to(torch.int32), ref_files[1], files[1])):
        c = compare_embeddings(run_session(ort_session(new), x, 16), run_session(ort_session(ref), x, 16))
        out[tower] = {"max_abs": c["max_abs"], "min_cosine": c["min_cosine"]}
    return out
