"""int8 graphs: QAttention from the fused graphs, static QDQ (standard ops, per-channel), the sensitivity pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from export_helpers import ort_run
from mope_deploy.bundle import onnx_name
from mope_deploy.exporting.onnx import write_onnx
from mope_deploy.exporting.ort_fused import FUSED_VARIANT, attention_nodes, graph_inputs, write_fused_onnx
from mope_deploy.exporting.quantize import (BatchReader, cosine_stats, pick_fp32_nodes, quantizable_nodes,
                                            quantize_dynamic_int8, quantize_static_qdq, sensitivity)

from test_ort_fused import uneven_model


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    import mope_deploy

    model = mope_deploy.load("demo").eval()
    root = tmp_path_factory.mktemp("q")
    write_onnx(model, root)
    write_fused_onnx(model, root)
    return model, root


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return float((a * b).sum(-1).min())


def _ops(path: Path) -> list[tuple[str, str]]:
    return [(n.domain or "", n.op_type) for n in onnx.load(str(path), load_external_data=False).graph.node]


def test_dynamic_int8_quantises_attention_into_qattention(demo, tmp_path):
    model, root = demo
    for tower in ("vision", "text"):
        src, x = onnx_name(tower, FUSED_VARIANT), graph_inputs(model, tower, [8])[0]
        dst = tmp_path / f"{tower}.int8.onnx"
        info = quantize_dynamic_int8(root / src, dst, attention=True)
        assert "Attention" in info["op_types"] and info["per_channel"]
        nodes = attention_nodes(dst)
        cfg = model.config.tower(tower)
        assert [n["op_type"] for n in nodes] == ["QAttention"] * len(cfg.blocks)
        assert [n["num_heads"] for n in nodes] == [b.heads for b in cfg.blocks]
        assert {n["unidirectional"] for n in nodes} == {int(tower == "text")}
        ref = ort_run(root / onnx_name(tower), x)
        got = ort_run(dst, x)
        assert _cos(ref, got) > 0.99
        # and it is really int8: the weights stored as int8 tensors, no fp32 QKV weight left
        m = onnx.load(str(dst))
        assert sum(i.data_type == onnx.TensorProto.INT8 for i in m.graph.initializer) >= 2 * len(cfg.blocks)
        # without attention=True the contrib Attention stays fp32
        dst2 = tmp_path / f"{tower}.noatt.onnx"
        quantize_dynamic_int8(root / src, dst2, attention=False)
        assert {n["op_type"] for n in attention_nodes(dst2)} == {"Attention"}


def test_static_qdq_is_standard_ops_per_channel_and_covers_attention_matmuls(demo, tmp_path):
    model, root = demo
    batches = graph_inputs(model, "vision", [4, 4], seed=1)
    dst = tmp_path / "image.qdq.onnx"
    info = quantize_static_qdq(root / onnx_name("vision"), dst, batches, per_channel=True)
    assert info["format"] == "QDQ" and info["calibration_batches"] == 2
    ops = _ops(dst)
    assert {d for d, _ in ops} == {""}  # standard ONNX ops only: TensorRT and any runtime read it
    m = onnx.load(str(dst))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    producers = {o: n for n in m.graph.node for o in n.output}
    matmuls = [n for n in m.graph.node if n.op_type == "MatMul"]
    n_blocks = len(model.config.vision.blocks)
    # every MatMul reads dequantised inputs on both sides, the attention's two activation MatMuls included
    for mm in matmuls:
        assert all(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear"
                   for i in mm.input), mm.name
    weight_dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                 and inits[n.input[0]].dtype == np.int8 and inits[n.input[0]].ndim == 2]
    assert len(weight_dq) >= 4 * n_blocks  # qkv, out_proj, c_fc, c_proj per block
    assert all(inits[n.input[1]].size > 1 for n in weight_dq)  # one scale per output channel
    # symmetric int8 activations (TensorRT's requirement): zero points are int8 zeros
    act_q = [n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    assert act_q and all(inits[n.input[2]].dtype == np.int8 and not inits[n.input[2]].any() for n in act_q)
    x = graph_inputs(model, "vision", [8], seed=2)[0]
    assert _cos(ort_run(root / onnx_name("vision"), x), ort_run(dst, x)) > 0.99


def test_static_qdq_excludes_nodes_and_checks_arguments(demo, tmp_path):
    model, root = demo
    src = root / onnx_name("text")
    keep = quantizable_nodes(src)[:2]
    dst = tmp_path / "text.qdq.onnx"
    info = quantize_static_qdq(src, dst, graph_inputs(model, "text", [4], seed=1), exclude_nodes=keep,
                               activation_type="uint8", symmetric_activations=False)
    assert info["fp32_nodes"] == keep
    m = onnx.load(str(dst))
    producers = {o: n for n in m.graph.node for o in n.output}
    for name in keep:  # the excluded MatMuls still read fp32 activations
        node = next(n for n in m.graph.node if n.name == name)
        assert producers.get(node.input[0]) is None or producers[node.input[0]].op_type != "DequantizeLinear"
    with pytest.raises(ValueError, match="calibrate_method"):
        quantize_static_qdq(src, tmp_path / "x.onnx", [np.zeros((1, 16), np.int32)], calibrate_method="magic")
    with pytest.raises(ValueError, match="no calibration batches"):
        BatchReader("tokens", [])


def test_sensitivity_matches_a_naive_recomputation(tmp_path):
    model = uneven_model(2)
    write_onnx(model, tmp_path)
    src = tmp_path / onnx_name("vision")
    batches = graph_inputs(model, "vision", [4, 4], seed=3)
    cands = quantizable_nodes(src)
    # qkv + out_proj of the 2 blocks with heads, c_fc + c_proj of the 2 with an FFN, the final projection
    assert len(cands) == 2 * 2 + 2 * 2 + 1
    quant = lambda s, d, ex: quantize_dynamic_int8(s, d, exclude_nodes=ex)  # noqa: E731
    rep = sensitivity(src, quant, batches, candidates=cands[:3])
    gains = [r["gain"] for r in rep["nodes"]]
    assert gains == sorted(gains, reverse=True) and len(gains) == 3
    # naive reference for the top node: quantise without it and compare with fp32 by hand
    top = rep["nodes"][0]["node"]
    quant(src, tmp_path / "ref.onnx", [top])
    # batch by batch, as the pass runs them (dynamic int8 scales depend on the whole batch)
    a = np.concatenate([ort_run(src, x) for x in batches]).astype(np.float64)
    b = np.concatenate([ort_run(tmp_path / "ref.onnx", x) for x in batches]).astype(np.float64)
    a /= np.linalg.norm(a, axis=-1, keepdims=True)
    b /= np.linalg.norm(b, axis=-1, keepdims=True)
    assert abs(cosine_stats(a, b)["mean_cosine"] - rep["nodes"][0]["mean_cosine"]) < 1e-9
    assert pick_fp32_nodes(rep, max_nodes=1, min_gain=-1.0) == [top]
    assert pick_fp32_nodes(rep, max_nodes=0) == []
    assert all(n in cands for n in pick_fp32_nodes(rep, max_nodes=3, min_gain=-1.0))
