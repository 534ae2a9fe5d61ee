"""The numeric gate for TensorRT engines and torch-tensorrt programs, like the ONNX parity gate.

Each encoder is run at the profile's min, opt and max batch on random and real inputs and compared with the
torch model (fp32) row by row: the minimum cosine similarity and the maximum absolute difference of the
L2-normalised embeddings must stay within the precision's thresholds. For fp16/int8 the retrieval Recall
Mean on the evaluation data must also stay within ``max_recall_drop`` points of torch fp32. A refused engine
is not written (the caller writes only after :func:`gate_passed`).

Thresholds are on unit vectors, so they do not depend on the embedding scale of a model. fp32 engines are
built without TF32; fp16 keeps LayerNorm/Softmax/reductions in fp32; int8 is per-channel symmetric Q/DQ.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..graphs import compare_embeddings, unit_rows

#: per precision: minimum cosine and maximum |diff| of normalised embeddings vs torch fp32
THRESHOLDS: dict[str, dict[str, float]] = {
    "fp32": {"min_cosine": 0.99999, "max_abs": 1e-3},
    "fp16": {"min_cosine": 0.999, "max_abs": 2e-2},
    "int8": {"min_cosine": 0.98, "max_abs": 0.1},
}


def compare(got: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """min cosine and max |diff| of the normalised rows of ``got`` vs ``ref`` (:func:`..graphs.compare_embeddings`)."""
    c = compare_embeddings(got, ref, normalize=True)
    out = {"min_cosine": c["min_cosine"], "max_abs": c["max_abs"], "n": c["n"]}
    if "error" in c:
        out["error"] = c["error"]
    return out


def _batches(x: torch.Tensor, sizes: Sequence[int]) -> list[torch.Tensor]:
    """Slices of ``x`` of each size (``x`` is repeated when shorter than the largest)."""
    need = max(sizes)
    if len(x) < need:
        x = x.repeat((need + len(x) - 1) // len(x), *([1] * (x.dim() - 1)))[:need]
    return [x[:s] for s in sizes]


@torch.no_grad()
def gate_encoder(run: Callable[[torch.Tensor], np.ndarray], reference: Callable[[torch.Tensor], np.ndarray],
                 cases: dict[str, torch.Tensor], batch_sizes: Sequence[int], precision: str,
                 thresholds: dict[str, float] | None = None) -> dict[str, Any]:
    """Run ``run`` (the engine) and ``reference`` (torch) on every case at every batch size and compare."""
    th = dict(thresholds or THRESHOLDS[precision])
    sizes = sorted({int(b) for b in batch_sizes})
    report: dict[str, Any] = {"thresholds": th, "batch_sizes": sizes, "cases": {}}
    worst_cos, worst_abs = 1.0, 0.0
    for kind, x in cases.items():
        for b, xb in zip(sizes, _batches(x, sizes)):
            try:
                got = np.asarray(run(xb), dtype=np.float32)
                r = compare(got, np.asarray(reference(xb), dtype=np.float32))
            except Exception as e:  # an engine that cannot run a profile batch fails the gate, with the reason
                r = {"min_cosine": -1.0, "max_abs": float("inf"), "n": int(len(xb)), "error": str(e).splitlines()[0]}
            report["cases"][f"{kind}@{b}"] = r
            worst_cos, worst_abs = min(worst_cos, r["min_cosine"]), max(worst_abs, r["max_abs"])
    report["min_cosine"], report["max_abs"] = worst_cos, worst_abs
    report["passed"] = bool(worst_cos >= th["min_cosine"] and worst_abs <= th["max_abs"])
    return report


def recall_gate(image_emb: np.ndarray, text_emb: np.ndarray, txt2img: torch.Tensor, reference: dict[str, float],
                max_drop: float) -> dict[str, Any]:
    """Retrieval metrics of the engine's embeddings vs the torch fp32 ``reference`` metrics."""
    from ...eval.retrieval import retrieval_metrics

    m = retrieval_metrics(torch.from_numpy(unit_rows(image_emb)).float(), torch.from_numpy(unit_rows(text_emb)).float(),
                          txt2img)
    m = {k: float(v) for k, v in m.items()}
    delta = m["recall_mean"] - reference["recall_mean"]
    return {"recall": m, "reference_recall_mean": reference["recall_mean"], "recall_delta": delta,
            "max_drop": max_drop, "passed": bool(-delta <= max_drop)}


@torch.no_grad()
def torch_recall(model, ev) -> dict[str, float]:
    """Retrieval metrics of the torch model (fp32) on the evaluation inputs: the recall gate's reference."""
    from ...eval.retrieval import retrieval_metrics

    img = torch.cat([model.encode_image(ev.images[i:i + 64].float(), normalize=True)
                     for i in range(0, len(ev.images), 64)])
    txt = torch.cat([model.encode_text(ev.tokens[i:i + 256].long(), normalize=True)
                     for i in range(0, len(ev.tokens), 256)])
    return {k: float(v) for k, v in retrieval_metrics(img, txt, ev.txt2img).items()}


def sample_tokens(model, real: torch.Tensor | None = None) -> torch.Tensor | None:
    """Real tokenizer output for the text gate: ``real`` when given, else the exporter's sample captions through
    the model's own tokenizer; None when that tokenizer cannot load here (e.g. open_clip absent on a bare GPU
    box), in which case the gate runs on random token rows only."""
    from ..onnx import SAMPLE_CAPTIONS, tokenize

    if real is not None:
        return real.to(torch.int32)
    try:
        return tokenize(model, SAMPLE_CAPTIONS)
    except ImportError:
        return None


def gate_summary(report: dict[str, Any]) -> str:
    """One line naming the worst case, for refusal messages."""
    bad = [(k, v) for k, v in report["cases"].items()
           if v["min_cosine"] < report["thresholds"]["min_cosine"] or v["max_abs"] > report["thresholds"]["max_abs"]]
    what = "; ".join(f"{k}: cos {v['min_cosine']:.5f}, max|diff| {v['max_abs']:.3g}"
                     + (f" ({v['error']})" if v.get("error") else "") for k, v in bad[:4])
    th = report["thresholds"]
    return f"{what or 'all cases within thresholds'} (need cos >= {th['min_cosine']}, max|diff| <= {th['max_abs']})"
