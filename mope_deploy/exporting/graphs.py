"""Graph utilities every export step shares: external-data detection and saving, ONNX Runtime sessions, quiet
library loggers, and THE one embedding comparison every gate uses (:func:`compare_embeddings`)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

#: loggers of the libraries an export drives; they log routine notes (opset up-conversion, "consider
#: pre-processing") as warnings on every call
EXPORT_LOGGERS = ("torch.onnx", "onnxscript", "onnx", "onnxruntime", "onnxruntime.quantization",
                  "onnxruntime.transformers")


@contextlib.contextmanager
def quiet_loggers(*names: str, level: int = logging.ERROR) -> Iterator[None]:
    """Raise the named loggers (default :data:`EXPORT_LOGGERS`) to ``level`` for the block and restore each
    one's own level afterwards; the root logger and every other logger are left alone."""
    loggers = [logging.getLogger(n) for n in (names or EXPORT_LOGGERS)]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(level, lg.level))
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


class _BelowError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


@contextlib.contextmanager
def quiet_root_warnings() -> Iterator[None]:
    """Drop the WARNING records libraries log through the ROOT logger (ONNX Runtime's quantiser calls
    ``logging.warning``) for the block, with a filter removed afterwards; the root's level is not touched. A
    root without handlers gets a NullHandler for the block, so ``logging.warning`` does not install one for
    good (``logging.basicConfig`` runs when the root has none)."""
    root = logging.getLogger()
    f, null = _BelowError(), None
    if not root.handlers:
        null = logging.NullHandler()
        root.addHandler(null)
    root.addFilter(f)
    try:
        yield
    finally:
        root.removeFilter(f)
        if null is not None:
            root.removeHandler(null)


def has_external_data(path: str | Path) -> bool:
    """Whether a graph keeps its weights in a side file (``NAME.data``)."""
    p = Path(path)
    return any(p.parent.glob(p.name + ".data"))


def save_graph(model: Any, dst: str | Path, external: bool) -> None:
    """Save an ``onnx.ModelProto``; with ``external`` its weights go to ``dst.name + ".data"`` beside it."""
    import onnx

    dst = Path(dst)
    if external:
        for f in dst.parent.glob(dst.name + ".data"):
            f.unlink()
        onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=dst.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(dst))


def graph_opset(path: str | Path) -> int:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))


def onnx_size(path: str | Path) -> int:
    """Bytes of a graph including its external data file."""
    p = Path(path)
    return p.stat().st_size + sum(f.stat().st_size for f in p.parent.glob(p.name + ".data"))


def ort_session(path: str | Path, threads: int | None = None, providers: Iterable[str] = ("CPUExecutionProvider",)):
    """An ONNX Runtime session (CPU by default) with a bounded thread count and quiet logging."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=so, providers=list(providers))


def run_session(session, inputs: torch.Tensor | np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Run a one-input session in chunks of ``batch_size`` rows."""
    name = session.get_inputs()[0].name
    arr = inputs.numpy() if isinstance(inputs, torch.Tensor) else inputs
    outs = [session.run(None, {name: arr[i:i + batch_size]})[0] for i in range(0, len(arr), batch_size)]
    return np.concatenate(outs).astype(np.float32)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, in float64 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def compare_embeddings(got: np.ndarray, ref: np.ndarray, normalize: bool = False) -> dict[str, Any]:
    """THE comparison behind every gate: ``max_abs``/``mean_abs`` of ``got - ref`` (of the unit rows with
    ``normalize``) and the ``min_cosine``/``mean_cosine`` of matching rows, with ``n`` rows. A shape mismatch or a
    non-finite output gives the worst figures and an ``error``, never an exception."""
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    worst = {"max_abs": float("inf"), "mean_abs": float("inf"), "min_cosine": -1.0, "mean_cosine": -1.0,
             "n": int(len(ref))}
    if got.shape != ref.shape:
        return {**worst, "error": f"output shape {tuple(got.shape)} != reference {tuple(ref.shape)}"}
    if not np.all(np.isfinite(got)):
        return {**worst, "error": "non-finite output"}
    a, b = unit_rows(got), unit_rows(ref)
    d = np.abs((a - b) if normalize else (got - ref))
    cos = (a * b).sum(-1)
    return {"max_abs": float(d.max()) if d.size else 0.0, "mean_abs": float(d.mean()) if d.size else 0.0,
            "min_cosine": float(cos.min()) if cos.size else 1.0, "mean_cosine": float(cos.mean()) if cos.size else 1.0,
            "n": int(len(ref))}


__all__ = ["EXPORT_LOGGERS", "quiet_loggers", "quiet_root_warnings", "has_external_data", "save_graph",
           "graph_opset", "onnx_size", "ort_session", "run_session", "unit_rows", "compare_embeddings"]
