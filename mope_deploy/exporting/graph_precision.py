"""Precision carried by the ONNX graph, for strongly typed TensorRT engines (10.x and 11.x alike).

* fp16: every float tensor in fp16 except the numerically fragile ops (LayerNorm, Softmax, reductions, Pow/Sqrt
  of the norms, the EOT ArgMax), which stay fp32 with explicit ``Cast`` nodes around them; float32 graph I/O
  is kept, so the bundle's contract does not change. Converted with ONNX Runtime's
  ``onnxruntime.transformers.float16.convert_float_to_float16`` (the onnxconverter-common converter shipped
  inside onnxruntime; ``op_block_list`` is what inserts the casts), then checked: every blocked op must still
  read and write fp32, and the graph must carry fp16 MatMuls.
* int8: explicit quantisation as QuantizeLinear/DequantizeLinear pairs with zero points of 0 (symmetric, what
  TensorRT accepts: onnx-tensorrt ``docs/operators.md``, QuantizeLinear "`y_zero_point` must be 0"), calibrated
  on the project's own evaluation inputs.

TensorRT 11 removed the FP16/INT8 builder flags and calibrators; these graphs are what replaces them.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .graphs import has_external_data, save_graph

#: ops kept in fp32 (with casts around them) in fp16 graphs
FP32_OPS = ("LayerNormalization", "SkipLayerNormalization", "Softmax", "ReduceMean", "ReduceL2", "ReduceSumSquare",
            "ReduceSum", "ReduceMax", "Pow", "Sqrt", "ArgMax")


def _elem_types(model) -> dict[str, int]:
    import onnx

    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    del bare.graph.value_info[:]  # converters leave stale entries; infer every type afresh
    inferred = onnx.shape_inference.infer_shapes(bare, strict_mode=True)
    g = inferred.graph
    out = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input) + list(g.output)}
    out.update({t.name: t.data_type for t in g.initializer})
    for n in g.node:  # Cast nodes say their output type themselves
        if n.op_type == "Cast":
            to = next((a.i for a in n.attribute if a.name == "to"), None)
            if to is not None:
                out[n.output[0]] = to
    return out


def float_report(model, fp32_ops: Iterable[str] = FP32_OPS) -> dict[str, Any]:
    """Which ops read/write fp16 and which of the ``fp32_ops`` stay fp32 (by ONNX shape inference)."""
    from onnx import TensorProto

    types = _elem_types(model)
    fp32_ops = set(fp32_ops)
    kept, leaked = Counter(), []
    fp16 = Counter()
    for n in model.graph.node:
        ins = [types.get(i) for i in n.input if i]
        outs = [types.get(o) for o in n.output if o]
        if TensorProto.FLOAT16 in ins + outs:
            fp16[n.op_type] += 1
        if n.op_type in fp32_ops:
            float_io = [t for t in ins[:1] + outs[:1] if t in (TensorProto.FLOAT, TensorProto.FLOAT16)]
            if TensorProto.FLOAT16 in float_io:
                leaked.append(n.name or n.op_type)
            elif float_io:
                kept[n.op_type] += 1
    return {"fp16_ops": dict(fp16), "fp32_kept": dict(kept), "fp32_leaked": leaked,
            "casts": sum(n.op_type == "Cast" for n in model.graph.node)}


def convert_fp16_graph(src: str | Path, dst: str | Path, fp32_ops: Sequence[str] = FP32_OPS) -> dict[str, Any]:
    """Write an fp16 copy of ``src`` with ``fp32_ops`` kept fp32 by explicit casts and float32 I/O."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src))
    model = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(fp32_ops))
    del model.graph.value_info[:]  # stale float32 entries the converter leaves would contradict the new types
    toposort(model)
    report = float_report(model, fp32_ops)
    if report["fp32_leaked"]:
        raise ValueError(f"fp16 conversion of {src.name} left {report['fp32_leaked'][:5]} in fp16; they must stay fp32")
    if not report["fp16_ops"].get("MatMul"):
        raise ValueError(f"fp16 conversion of {src.name} produced no fp16 MatMul: nothing would run in fp16")
    save_graph(model, dst, has_external_data(src))
    return {"method": "onnxruntime.transformers.float16.convert_float_to_float16", "keep_io_types": True,
            "fp32_ops": list(fp32_ops), "check": report}


def toposort(model) -> None:
    """Sort ``model.graph.node`` topologically in place (the ONNX spec requires it and TensorRT's parser and
    shape inference read nodes in order; the fp16 converter appends its input casts at the end)."""
    g = model.graph
    known = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    nodes, ordered = list(g.node), []
    while nodes:
        ready = [n for n in nodes if all(i in known for i in n.input)]
        if not ready:
            raise ValueError(f"graph has a cycle or an undefined input near {nodes[0].name or nodes[0].op_type}")
        ids = {id(n) for n in ready}
        for n in ready:
            ordered.append(n)
            known.update(n.output)
        nodes = [n for n in nodes if id(n) not in ids]
    del g.node[:]
    g.node.extend(ordered)


def quantize_qdq_graph(src: str | Path, dst: str | Path, calib_inputs, batch: int = 8,
                       max_inputs: int = 256) -> dict[str, Any]:
    """Static int8 Q/DQ copy of ``src`` calibrated on ``calib_inputs`` (the project's evaluation inputs), with
    symmetric activations and per-channel symmetric weights (zero points 0): :func:`.quantize.quantize_static_qdq`
    (ONNX Runtime's static quantiser), then checked for what TensorRT's parser requires."""
    from .quantize import quantize_static_qdq

    src, dst = Path(src), Path(dst)
    arr = calib_inputs.numpy() if hasattr(calib_inputs, "numpy") else np.asarray(calib_inputs)
    arr = arr[:max_inputs]
    if len(arr) == 0:
        raise ValueError("int8 Q/DQ calibration needs at least one input (--eval-data)")
    info = quantize_static_qdq(src, dst, [arr[i:i + batch] for i in range(0, len(arr), batch)], per_channel=True,
                               symmetric_activations=True, activation_type="int8")
    check = qdq_report(dst)
    if check["nonzero_zero_points"]:
        raise ValueError(f"{dst.name}: Q/DQ zero points must be 0 for TensorRT, found {check['nonzero_zero_points']}")
    if not check["quantize_linear"]:
        raise ValueError(f"{dst.name}: quantisation inserted no QuantizeLinear node")
    return {**info, "calibration_inputs": int(len(arr)), "check": check}


def qdq_report(path: str | Path) -> dict[str, Any]:
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    inits = {t.name: t for t in m.graph.initializer}
    q = [n for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    bad = []
    for n in q:
        if len(n.input) > 2 and n.input[2] in inits and np.any(numpy_helper.to_array(inits[n.input[2]]) != 0):
            bad.append(n.name)
    return {"quantize_linear": sum(n.op_type == "QuantizeLinear" for n in q),
            "dequantize_linear": sum(n.op_type == "DequantizeLinear" for n in q), "nonzero_zero_points": bad}
