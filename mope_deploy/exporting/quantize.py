"""int8 ONNX graphs for the CPU (and a static QDQ graph for TensorRT), with a measured fp32 fallback list.

- :func:`quantize_dynamic_int8`: int8 weights (per channel), activations quantised per call. On a fused graph
  (:mod:`.ort_fused`) each ``com.microsoft::Attention`` becomes ``QAttention``, so the attention's QKV GEMM is
  int8 too; on a plain graph only the weight MatMuls/Gemms are.
- :func:`quantize_calibrated_int8` (the default int8 method, ``calibrated``): the dynamic graph above with every
  ``DynamicQuantizeLinear`` replaced by a ``QuantizeLinear`` whose scale and zero point were measured once on
  calibration inputs. Same int8 kernels (QAttention included), but an input's embedding no longer depends on the
  other inputs of its batch: dynamic quantisation takes one activation range over the whole batch, so an input
  encoded alone and inside a batch got different embeddings (the service batches across clients, the indexer
  encodes in chunks).
- :func:`batch_invariance`: the measurement (each input alone vs inside batches).
- :func:`quantize_static_qdq`: QuantizeLinear/DequantizeLinear pairs with scales calibrated on real batches,
  standard ONNX ops only (TensorRT's explicit-precision int8 reads them; ORT fuses them into int8 kernels).
  By default every MatMul is quantised, the attention's ``QK^T`` and ``softmax(.)V`` included.
- :func:`sensitivity` / :func:`pick_fp32_nodes`: quantise everything, then once per candidate node with that
  node left in fp32, and rank nodes by how much leaving them out restores the embeddings (cosine vs fp32).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .graphs import has_external_data, quiet_loggers, quiet_root_warnings

#: ops whose weights are quantised by default; Conv (the patch embedding) and Gather (token table) stay fp32:
#: a small share of the time, and int8 there costs accuracy for nothing on CPU
DYNAMIC_OPS = ("MatMul", "Gemm")
STATIC_OPS = ("MatMul", "Gemm")
CALIBRATE_METHODS = ("minmax", "entropy", "percentile")


@contextlib.contextmanager
def _quiet():
    """ORT's quantiser logs a generic "consider pre-processing" warning on every call (through the root logger):
    filtered for the call only; no logger's level changes."""
    with quiet_loggers(), quiet_root_warnings():
        yield


def quantize_dynamic_int8(src: str | Path, dst: str | Path, attention: bool = True, per_channel: bool = True,
                          exclude_nodes: Sequence[str] = (), op_types: Sequence[str] = DYNAMIC_OPS) -> dict[str, Any]:
    """Dynamic int8 (``onnxruntime.quantization.quantize_dynamic``): signed int8 weights, per output channel.

    ``attention``: also quantise ``com.microsoft::Attention`` nodes into ``QAttention``. ``exclude_nodes``:
    node names kept in fp32 (see :func:`sensitivity`). Returns what was done, for the manifest.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ops = list(op_types) + (["Attention"] if attention else [])
    with _quiet():
        # QInt8 weights use the VNNI/AMX integer kernels of x86 CPUs
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=ops,
                         per_channel=per_channel, nodes_to_exclude=list(exclude_nodes),
                         use_external_data_format=has_external_data(Path(src)),
                         # fused contrib ops defeat ONNX shape inference: their outputs are fp32
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return {"method": "onnxruntime.quantization.quantize_dynamic", "weight_type": "QInt8",
            "per_channel": per_channel, "op_types": ops, "fp32_nodes": list(exclude_nodes)}


def _reader_base():
    from onnxruntime.quantization import CalibrationDataReader

    return CalibrationDataReader


class BatchReader(_reader_base()):
    """An ``onnxruntime.quantization.CalibrationDataReader`` over a list of input batches for a one-input graph."""

    def __init__(self, input_name: str, batches: Iterable[np.ndarray]):
        self.input_name = input_name
        self.batches = [np.ascontiguousarray(b) for b in batches]
        if not self.batches:
            raise ValueError("no calibration batches: give at least one batch of real inputs (--eval-data)")
        self._it = iter(self.batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        b = next(self._it, None)
        return None if b is None else {self.input_name: b}

    def rewind(self) -> None:
        self._it = iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _input_name(path: Path) -> str:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    names = [i.name for i in m.graph.input if i.name not in inits]
    if len(names) != 1:
        raise ValueError(f"{path}: expected a graph with one input, found {names}")
    return names[0]


def quantize_static_qdq(onnx_in: str | Path, onnx_out: str | Path, calibration_batches: Iterable[np.ndarray],
                        per_channel: bool = True, exclude_nodes: Sequence[str] = (),
                        op_types: Sequence[str] = STATIC_OPS, calibrate_method: str = "minmax",
                        symmetric_activations: bool = True, activation_type: str = "int8") -> dict[str, Any]:
    """Static int8 in QDQ format: ``quantize_static_qdq(onnx_in, onnx_out, calibration_batches,
    per_channel=True, exclude_nodes=(), op_types=("MatMul", "Gemm"), calibrate_method="minmax",
    symmetric_activations=True, activation_type="int8") -> dict``.

    ``calibration_batches``: input arrays for the graph's single input (e.g. preprocessed eval images
    [B,3,S,S] float32, or int32 token rows), each run as one batch to collect activation ranges.
    ``exclude_nodes``: node names kept fp32. Weights are symmetric int8 (per output channel when
    ``per_channel``); activations int8 and symmetric by default, the form TensorRT requires
    (``activation_type="uint8"`` with asymmetric activations suits ORT's CPU kernels). Only standard ONNX ops are
    added (QuantizeLinear/DequantizeLinear), so a plain graph stays portable; contrib ops in ``onnx_in`` are left
    as they are. Returns what was done, for the manifest.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    if calibrate_method not in CALIBRATE_METHODS:
        raise ValueError(f"unknown calibrate_method {calibrate_method!r}: use one of {', '.join(CALIBRATE_METHODS)}")
    if activation_type not in ("int8", "uint8"):
        raise ValueError(f"activation_type must be 'int8' or 'uint8', got {activation_type!r}")
    reader = BatchReader(_input_name(onnx_in), calibration_batches)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[calibrate_method]
    act = QuantType.QInt8 if activation_type == "int8" else QuantType.QUInt8
    with _quiet():  # ORT calibrates on an augmented copy of the model in its own temporary folder
        quantize_static(str(onnx_in), str(onnx_out), reader, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(op_types), per_channel=per_channel,
                        nodes_to_exclude=list(exclude_nodes), activation_type=act, weight_type=QuantType.QInt8,
                        calibrate_method=method, use_external_data_format=has_external_data(onnx_in),
                        calibration_providers=["CPUExecutionProvider"],
                        extra_options={"ActivationSymmetric": symmetric_activations, "WeightSymmetric": True,
                                       "CalibTensorRangeSymmetric": symmetric_activations,
                                       "CalibMovingAverage": False})
    return {"method": "onnxruntime.quantization.quantize_static", "format": "QDQ", "per_channel": per_channel,
            "op_types": list(op_types), "calibrate_method": calibrate_method, "calibration_batches": len(reader),
            "activation_type": activation_type, "symmetric_activations": symmetric_activations,
            "fp32_nodes": list(exclude_nodes)}


def calibration_batches(x: np.ndarray, batch: int = 8, limit: int = 64) -> list[np.ndarray]:
    """The first ``limit`` rows of ``x`` in batches of ``batch`` (calibration and sensitivity inputs)."""
    if batch < 1 or limit < 1:
        raise ValueError(f"batch and limit must be >= 1, got {batch}, {limit}")
    x = x[:limit]
    return [np.ascontiguousarray(x[i:i + batch]) for i in range(0, len(x), batch)]


def quantizable_nodes(path: str | Path, op_types: Sequence[str] = DYNAMIC_OPS + ("Attention",),
                      weights_only: bool = True) -> list[str]:
    """Names of the nodes a quantiser would touch: ``op_types`` nodes, and with ``weights_only`` only those
    whose second input is an initializer (the GEMMs with weights, not the attention's activation MatMuls)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    out = []
    for n in m.graph.node:
        if n.op_type not in op_types:
            continue
        if weights_only and not (len(n.input) > 1 and n.input[1] in inits):
            continue
        if not n.name:
            raise ValueError(f"{path}: a {n.op_type} node has no name; name every node before a sensitivity pass")
        out.append(n.name)
    return out


def _embed(path: Path, batches: Sequence[np.ndarray], threads: int | None) -> np.ndarray:
    from .graphs import ort_session

    s = ort_session(path, threads=threads)
    name = s.get_inputs()[0].name
    out = np.concatenate([s.run(None, {name: b})[0] for b in batches]).astype(np.float64)
    return out / (np.linalg.norm(out, axis=-1, keepdims=True) + 1e-30)


def cosine_stats(ref: np.ndarray, new: np.ndarray) -> dict[str, float]:
    """Mean and min cosine similarity of matching rows of two L2-normalised embedding matrices."""
    cos = (ref * new).sum(-1)
    return {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}


def sensitivity(fp32_path: str | Path, quantize: Callable[[Path, Path, Sequence[str]], Any],
                batches: Sequence[np.ndarray], candidates: Sequence[str] | None = None, threads: int | None = 1,
                progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure, for each candidate node, how much of the int8 error goes away when that node stays fp32.

    ``quantize(src, dst, exclude_nodes)`` makes the int8 graph (e.g. ``lambda s, d, ex:
    quantize_dynamic_int8(s, d, exclude_nodes=ex)``). The metric is the cosine similarity of the
    embeddings on ``batches`` vs the fp32 graph. Returns ``{"all_int8": stats, "nodes": [{"node",
    "mean_cosine", "min_cosine", "gain"}...]}`` sorted by ``gain`` (mean-cosine improvement), largest first.
    """
    fp32_path = Path(fp32_path)
    candidates = list(candidates) if candidates is not None else quantizable_nodes(fp32_path)
    ref = _embed(fp32_path, batches, threads)
    with tempfile.TemporaryDirectory(prefix="mope-sens-") as tmp:
        tmp = Path(tmp)
        # quantisers write external weights beside the graph under its name: one folder per trial
        def trial(exclude: Sequence[str], tag: str) -> dict[str, float]:
            d = tmp / tag
            d.mkdir()
            dst = d / fp32_path.name
            quantize(fp32_path, dst, list(exclude))
            stats = cosine_stats(ref, _embed(dst, batches, threads))
            shutil.rmtree(d)
            return stats

        base = trial([], "all")
        rows = []
        for i, node in enumerate(candidates):
            if progress:
                progress(f"sensitivity {i + 1}/{len(candidates)}: {node}")
            s = trial([node], f"n{i}")
            rows.append({"node": node, **s, "gain": s["mean_cosine"] - base["mean_cosine"]})
    rows.sort(key=lambda r: r["gain"], reverse=True)
    return {"all_int8": base, "nodes": rows, "metric": "cosine vs fp32 embeddings", "n_inputs": int(len(ref))}


def pick_fp32_nodes(report: dict[str, Any], max_nodes: int = 3, min_gain: float = 0.0) -> list[str]:
    """The at most ``max_nodes`` nodes whose exclusion helped most (gain above ``min_gain``)."""
    if max_nodes < 0:
        raise ValueError(f"max_nodes must be >= 0, got {max_nodes}")
    return [r["node"] for r in report["nodes"][:max_nodes] if r["gain"] > min_gain]


#: int8 methods and whether each gives an input the same embedding alone and in any batch
BATCH_INVARIANT = {"calibrated": True, "static": True, "dynamic": False}


def _dql_nodes(model) -> list:
    return [n for n in model.graph.node if n.op_type == "DynamicQuantizeLinear" and n.domain in ("", "ai.onnx")]


def _save_like(model, dst: Path, external: bool) -> None:
    import onnx

    dst.parent.mkdir(parents=True, exist_ok=True)
    if external:  # external weights beside the graph, under its name (the bundle's convention)
        data = dst.with_name(dst.name + ".data")
        data.unlink(missing_ok=True)
        onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name)
    else:
        onnx.save_model(model, str(dst))


def activation_ranges(path: str | Path, batches: Sequence[np.ndarray], threads: int | None = None
                      ) -> dict[str, tuple[float, float]]:
    """Min and max (0 included, as ``DynamicQuantizeLinear`` takes them) of every ``DynamicQuantizeLinear``
    input of the graph at ``path`` over all ``batches``."""
    import onnx

    from .graphs import ort_session

    path = Path(path)
    m = onnx.load(str(path))
    names = list(dict.fromkeys(n.input[0] for n in _dql_nodes(m)))
    if not names:
        raise ValueError(f"{path}: no DynamicQuantizeLinear node to calibrate (quantise it dynamically first)")
    have = {o.name for o in m.graph.output}
    for name in names:
        if name not in have:
            m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    lo = {n: 0.0 for n in names}
    hi = {n: 0.0 for n in names}
    with tempfile.TemporaryDirectory(prefix="mope-calib-") as tmp:
        aug = Path(tmp) / path.name
        _save_like(m, aug, external=True)
        del m
        s = ort_session(aug, threads=threads)
        feed_name = s.get_inputs()[0].name
        for b in batches:
            for name, v in zip(names, s.run(names, {feed_name: np.ascontiguousarray(b)})):
                lo[name] = min(lo[name], float(v.min()))
                hi[name] = max(hi[name], float(v.max()))
        del s
    return {n: (lo[n], hi[n]) for n in names}


def uint8_scale(lo: float, hi: float) -> tuple[float, int]:
    """Scale and zero point of ``DynamicQuantizeLinear`` for the range [lo, hi] (0 inside it)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0
    if not scale > 0:
        return 1.0, 0
    return scale, int(np.clip(np.round(-lo / scale), 0, 255))


def quantize_calibrated_int8(src: str | Path, dst: str | Path, calibration_batches: Sequence[np.ndarray],
                             attention: bool = True, exclude_nodes: Sequence[str] = (),
                             threads: int | None = None) -> dict[str, Any]:
    """Batch-invariant int8: :func:`quantize_dynamic_int8`, then each ``DynamicQuantizeLinear`` becomes a
    ``QuantizeLinear`` with the scale and zero point of the activation's range on ``calibration_batches``
    (uint8, asymmetric, as the dynamic graph had). Consumers (``MatMulInteger``, ``QAttention``) are unchanged,
    so the same int8 kernels run; values outside the calibrated range saturate (the recall gate judges that)."""
    import onnx
    from onnx import numpy_helper

    src, dst = Path(src), Path(dst)
    batches = list(calibration_batches)
    if not batches:
        raise ValueError("no calibration batches: give at least one batch of real inputs (--eval-data)")
    info = quantize_dynamic_int8(src, dst, attention=attention, exclude_nodes=exclude_nodes)
    m = onnx.load(str(dst))
    if not _dql_nodes(m):  # nothing quantised per call (every node excluded): already batch-invariant
        return {**info, "method": "calibrated", "quantiser": info["method"], "static_activations": 0}
    del m
    ranges = activation_ranges(dst, batches, threads)
    m = onnx.load(str(dst))
    nodes = []
    for n in m.graph.node:
        if n.op_type != "DynamicQuantizeLinear" or n.domain not in ("", "ai.onnx"):
            nodes.append(n)
            continue
        scale, zp = uint8_scale(*ranges[n.input[0]])
        # the scale/zero-point outputs become constants under the same names: consumers need no rewiring
        m.graph.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), n.output[1]),
                                    numpy_helper.from_array(np.array(zp, np.uint8), n.output[2])])
        nodes.append(onnx.helper.make_node("QuantizeLinear", [n.input[0], n.output[1], n.output[2]], [n.output[0]],
                                           name=(n.name or n.output[0]) + "_static"))
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    _save_like(m, dst, external=has_external_data(src))
    return {**info, "method": "calibrated", "activation_scales": "calibrated (per tensor, uint8, min/max)",
            "quantiser": info["method"], "calibration_batches": len(batches),
            "calibration_inputs": int(sum(len(b) for b in batches)), "static_activations": len(ranges)}


#: where calibration inputs come from when an export or a runtime has no evaluation data
SYNTHETIC_CALIBRATION = "synthetic:val"


def synthetic_calibration(config: Any, limit: int = 32, batch: int = 8) -> dict[str, list[np.ndarray]]:
    """Calibration batches per tower without user data: the first ``limit`` images of the project's seeded
    synthetic set (and as many of their captions), through ``config``'s own preprocess and tokenizer. Used
    when int8 graphs are calibrated with no ``--eval-data`` (a runtime quantising a bundle that has none):
    better than random inputs, and a real dataset given with ``--eval-data`` is better still."""
    from ..data.datasets import load_dataset
    from ..models.processing import build_preprocess, build_tokenizer

    ds = load_dataset(SYNTHETIC_CALIBRATION).head(limit)
    pre, tok = build_preprocess(config), build_tokenizer(config)
    images = np.stack([np.asarray(pre(ds.images[i].convert("RGB")), dtype=np.float32) for i in range(len(ds.images))])
    tokens = np.asarray(tok(list(ds.captions[:limit])), dtype=np.int32)
    return {"vision": calibration_batches(images, batch, limit), "text": calibration_batches(tokens, batch, limit)}


def batch_invariance(path: str | Path, inputs: np.ndarray, batch_sizes: Sequence[int] = (3, 8),
                     threads: int | None = None) -> dict[str, Any]:
    """How much an input's L2-normalised embedding moves between being encoded alone and inside batches of
    ``batch_sizes`` (consecutive rows of ``inputs``). ``max_abs``: the largest element difference."""
    from .graphs import ort_session

    s = ort_session(path, threads=threads)
    name = s.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        y = s.run(None, {name: np.ascontiguousarray(x)})[0].astype(np.float64)
        return y / (np.linalg.norm(y, axis=-1, keepdims=True) + 1e-30)

    n = max(batch_sizes)
    if len(inputs) < n:
        raise ValueError(f"batch_invariance needs at least {n} inputs, got {len(inputs)}")
    alone = np.concatenate([run(inputs[i:i + 1]) for i in range(n)])
    out: dict[str, Any] = {"batch_sizes": list(batch_sizes), "max_abs": 0.0}
    for b in batch_sizes:
        together = np.concatenate([run(inputs[i:i + b]) for i in range(0, n - n % b or b, b)])
        d = float(np.abs(together - alone[:len(together)]).max())
        out[f"max_abs_b{b}"] = d
        out["max_abs"] = max(out["max_abs"], d)
    return out


__all__ = ["quantize_dynamic_int8", "quantize_calibrated_int8", "quantize_static_qdq", "batch_invariance",
           "activation_ranges", "uint8_scale", "BATCH_INVARIANT", "synthetic_calibration", "SYNTHETIC_CALIBRATION",
           "BatchReader", "calibration_batches", "quantizable_nodes",
           "sensitivity",
           "pick_fp32_nodes", "cosine_stats"]
