"""Strongly typed TensorRT engines (10.x and 11.x fakes): fp32/fp16/int8 graphs, the numeric and recall gates,
the weak-typing path where it still exists, timing caches, the logger and the parser's refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from export_helpers import tiny
from fakes import install_tensorrt, tensorrt_fake
from mope_deploy.exporting import tensorrt as trt_export
from mope_deploy.exporting.tensorrt import EngineBuild
from mope_deploy.exporting.tensorrt import gate as eg
from mope_deploy.exporting.tensorrt import api as trt_api
from mope_deploy.exporting.config import EvalInputs
from mope_deploy.exporting.onnx import ExportError, random_tokens, write_onnx


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """fp32 graphs of a tiny model (dynamo exporter) and a small matched evaluation set."""
    model = tiny()
    d = tmp_path_factory.mktemp("trt") / "fp32"
    d.mkdir()
    write_onnx(model, d, exporter="dynamo")
    g = torch.Generator().manual_seed(0)
    images = torch.randn(12, 3, 32, 32, generator=g)
    tokens = random_tokens(model, 12, g)
    ev = EvalInputs(images, tokens, torch.arange(12), {"name": "synthetic"})
    return model, d, ev


def _bundle(graphs, tmp_path):
    model, d, ev = graphs
    out = tmp_path / "b"
    shutil.copytree(d, out)
    return model, out, ev


@pytest.mark.parametrize("generation", [10, 11])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_strongly_typed_builds_pass_the_gate(graphs, tmp_path, monkeypatch, generation, precision):
    fake = install_tensorrt(monkeypatch, generation)
    model, out, ev = _bundle(graphs, tmp_path)
    info = trt_export.build_engines(out, model, EngineBuild(precision, (2, 4, 8), device="cpu", max_recall_drop=100.0),
                                    calib=ev)
    strong_bit = 1 << int(fake.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert fake.RECORD["network_flags"] == [strong_bit, strong_bit]  # both networks strongly typed
    for tower, name, dims in (("vision", "image", [3, 32, 32]), ("text", "tokens", [16])):
        e = info.engines[tower]
        assert e.precision == precision and e.profile["opt"] == [4, *dims]
        plan = json.loads((out / e.file).read_bytes())  # the fake serialises what it was told
        assert plan["strongly_typed"] and plan["flags"] == []  # no precision flag: the graph carries it
        assert plan["cleared"] == (["TF32"] if precision == "fp32" else [])
        assert plan["profile"] == {name: [[1, *dims], [4, *dims], [8, *dims]]}  # min batch forced to 1
        gate = e.gate
        assert gate["passed"] and set(gate["cases"]) >= {f"random@{b}" for b in (1, 4, 8)}
        assert gate["min_cosine"] >= eg.THRESHOLDS[precision]["min_cosine"]
        src = onnx.load(str(out / e.made_from))
        ops = {n.op_type for n in src.graph.node}
        if precision == "fp16":
            assert e.details["graph_conversion"]["check"]["fp32_kept"]["LayerNormalization"] >= 5
            assert not e.details["graph_conversion"]["check"]["fp32_leaked"] and "Cast" in ops
        if precision == "int8":
            assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert info.details["batch_sizes"]["requested_min"] == 2
    assert (info.recall_gate is None) == (precision == "fp32")
    # every execution went to the runner's own stream, never the legacy default stream 0
    assert fake.RECORD["streams"] and set(fake.RECORD["streams"]) == {install_tensorrt.__globals__["FakeStream"].handle}
    log = (out / "tensorrt_build.log").read_text()
    assert "Engine built" in log and "Tactic 0x" not in log  # VERBOSE is not forwarded
    assert (out / "tensorrt_timing.cache").read_bytes().startswith(f"TRTCACHE{generation}".encode())


def test_wrong_engine_is_refused_and_not_written(graphs, tmp_path, monkeypatch):
    fake = install_tensorrt(monkeypatch, 11)
    model, out, ev = _bundle(graphs, tmp_path)
    fake.FAULTS["perturb"] = 0.05  # the engine computes something else than the graph
    with pytest.raises(ExportError, match="refused by the numeric gate.*cos"):
        trt_export.build_engines(out, model, EngineBuild("fp16", (1, 4, 8), device="cpu"), calib=ev)
    assert not list(out.glob("*.engine"))
    assert "REFUSED" in (out / "tensorrt_build.log").read_text()


def test_recall_gate_refuses_a_lossy_engine(graphs, tmp_path, monkeypatch):
    install_tensorrt(monkeypatch, 10)
    model, out, ev = _bundle(graphs, tmp_path)
    # a matched set: each caption's own image is the torch model's best match, so recall is high in fp32
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.encode_image(ev.images), dim=-1)
        txt = torch.nn.functional.normalize(model.encode_text(ev.tokens.long()), dim=-1)
    sim, used, txt2img = txt @ img.T, set(), []
    for row in sim:  # greedy one-to-one: every image keeps one caption
        j = next(int(j) for j in row.argsort(descending=True) if int(j) not in used)
        used.add(j)
        txt2img.append(j)
    txt2img = torch.tensor(txt2img)
    ev = EvalInputs(ev.images, ev.tokens, txt2img, ev.info)
    loose = {"min_cosine": -1.0, "max_abs": 10.0}  # let the numeric gate through: the recall gate must act
    tensorrt_fake.FAULTS["perturb"] = 0.5
    with pytest.raises(ExportError, match="Recall Mean"):
        trt_export.build_engines(out, model, EngineBuild("fp16", (1, 4, 8), device="cpu", thresholds=loose,
                                                         max_recall_drop=1.0), calib=ev)
    assert not list(out.glob("*.engine"))


def test_weak_typing_only_where_the_flags_exist(graphs, tmp_path, monkeypatch):
    fake = install_tensorrt(monkeypatch, 10)
    model, out, ev = _bundle(graphs, tmp_path)
    info = trt_export.build_engines(out, model, EngineBuild("fp16", (1, 4, 8), device="cpu", typing="weak",
                                                            max_recall_drop=100.0), calib=ev)
    text = info.engines["text"]
    assert text.details["flags"] == ["FP16", "OBEY_PRECISION_CONSTRAINTS"] and fake.RECORD["network_flags"] == [0, 0]
    # the int32 ReduceMax over token ids is not pinned (or counted); the float layers are
    pinned = text.details["pinned_fp32_layers"]
    assert pinned and all("ReduceMax" not in n for n in pinned)
    assert json.loads((out / text.file).read_bytes())["weak_fp16"]
    install_tensorrt(monkeypatch, 11)
    with pytest.raises(ExportError, match="removed in TensorRT 11"):
        trt_export.build_engines(out, model, EngineBuild("fp16", (1, 4, 8), device="cpu", typing="weak"), calib=ev)


def test_weak_int8_calibrates_on_tensorrt_10(graphs, tmp_path, monkeypatch):
    install_tensorrt(monkeypatch, 10)
    model, out, ev = _bundle(graphs, tmp_path)
    info = trt_export.build_engines(out, model, EngineBuild("int8", (1, 4, 8), device="cpu", typing="weak",
                                                            max_recall_drop=100.0), calib=ev)
    plan = json.loads((out / info.engines["vision"].file).read_bytes())
    assert {"INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS"} <= set(plan["flags"])
    assert plan["calibration_batches"] == [4, 4, 4]  # 12 evaluation images in batches of OPT=4


def test_pinning_skips_int32_layers(graphs, monkeypatch):
    """The old exporter pinned every REDUCE/TOPK layer, int32 ones included, and counted them."""
    fake = install_tensorrt(monkeypatch, 10)
    _, d, _ = graphs
    net = fake.Builder(fake.Logger()).create_network(0)  # weak typing: TensorRT 10 without STRONGLY_TYPED
    assert fake.OnnxParser(net, fake.Logger()).parse_from_file(str(d / "text_encoder.onnx"))
    int_layers = [l for l in net.layers if l.type.name in ("REDUCE", "TOPK")
                  and not any(l.get_output(j).dtype in tensorrt_fake.FLOATS for j in range(l.num_outputs))]
    assert int_layers  # the ReduceMax over int32 token ids
    topk = [l for l in net.layers if l.op == "ArgMax"][0]
    assert topk.get_output(1).dtype == fake.int32  # TopK-style ArgMax: int32 indices
    pinned = trt_api.pin_fp32(fake, net)
    assert pinned and not set(pinned) & {l.name for l in int_layers}
    assert topk.name in pinned and topk.output_types == {0: fake.float32}  # only the float values output


@pytest.mark.parametrize("blob, state", [(b"garbage from somewhere", "stale, replaced"),
                                         (b"TRTCACHE10:A100|old entries", "stale, replaced"),
                                         (None, "new")])
def test_timing_cache_stale_or_foreign(graphs, tmp_path, monkeypatch, blob, state):
    install_tensorrt(monkeypatch, 11)
    model, out, ev = _bundle(graphs, tmp_path)
    cache = tmp_path / "shared.cache"
    if blob is not None:
        cache.write_bytes(blob)
    info = trt_export.build_engines(out, model, EngineBuild("fp32", (1, 2, 4), device="cpu", timing_cache=cache))
    assert info.engines["vision"].details["timing_cache"]["state"] == state
    assert info.engines["text"].details["timing_cache"]["state"] == "loaded"  # the first build's cache is reused
    assert cache.read_bytes().startswith(b"TRTCACHE11:H200|")


def test_build_failure_quotes_the_error_not_the_verbose_chatter(graphs, tmp_path, monkeypatch):
    fake = install_tensorrt(monkeypatch, 10)
    model, out, _ = _bundle(graphs, tmp_path)
    fake.FAULTS["fail_build"] = True
    with pytest.raises(ExportError) as e:
        trt_export.build_engines(out, model, EngineBuild("fp32", (1, 2, 4), device="cpu"))
    assert "out of tactics" in str(e.value) and "Tactic 0x" not in str(e.value)
    sink = trt_api.LogSink()
    for sev in tensorrt_fake.Severity:
        sink(sev, f"message at {sev.name}")
    assert [l.split("]")[0] for l in sink.lines] == ["[INTERNAL_ERROR", "[ERROR", "[WARNING", "[INFO"]
    assert sink.dropped == 1 and len(sink.errors) == 2


def _strong_network(fake):
    return fake.Builder(fake.Logger()).create_network(1 << int(fake.NetworkDefinitionCreationFlag.STRONGLY_TYPED))


def _graph(nodes, inits=(), domain_opsets=()):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    g = helper.make_graph(nodes, "g", [x], [y], initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), *domain_opsets])


def test_parser_refuses_what_onnx_tensorrt_refuses(tmp_path, monkeypatch):
    fake = install_tensorrt(monkeypatch, 11)
    cases = {
        "contrib": _graph([helper.make_node("FastGelu", ["x"], ["y"], domain="com.microsoft")],
                          domain_opsets=[helper.make_opsetid("com.microsoft", 1)]),
        "unsupported": _graph([helper.make_node("MatMulInteger", ["x", "x"], ["y"])]),
        "zero_point": _graph([helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"]),
                              helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"])],
                             inits=[helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
                                    helper.make_tensor("zp", TensorProto.INT8, [], [3])]),
    }
    expect = {"contrib": "No importer registered for op: FastGelu", "unsupported": "MatMulInteger",
              "zero_point": "zero point must be 0"}
    for name, m in cases.items():
        p = tmp_path / f"{name}.onnx"
        onnx.save(m, str(p))
        with pytest.raises(ExportError, match=expect[name]):
            trt_api.parse_onnx(fake, _strong_network(fake), fake.Logger(), p)


def test_if_with_rank_mismatched_branches_is_refused(tmp_path, monkeypatch):
    fake = install_tensorrt(monkeypatch, 10)
    cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    then = helper.make_graph([helper.make_node("Squeeze", ["x", "ax"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["batch"])],
                             initializer=[helper.make_tensor("ax", TensorProto.INT64, [1], [1])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["batch", 1])])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)], "g",
                          [x, cond], [y])
    p = tmp_path / "if.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(p))
    with pytest.raises(ExportError, match="same rank, got 1 and 2"):
        trt_api.parse_onnx(fake, _strong_network(fake), fake.Logger(), p)


def test_tensorrt_11_has_no_weak_typing_api(monkeypatch):
    fake = install_tensorrt(monkeypatch, 11)
    f = trt_api.detect(fake)
    assert f.strongly_typed_flag and not f.weak_typing and f.tf32_flag and f.sparse_weights_flag
    for name in ("FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"):
        assert not hasattr(fake.BuilderFlag, name)
    cfg = fake.Builder(fake.Logger()).create_builder_config()
    with pytest.raises(AttributeError):
        cfg.int8_calibrator = object()
    assert not hasattr(fake, "IInt8EntropyCalibrator2")
    assert trt_api.detect(install_tensorrt(monkeypatch, 10)).weak_typing


def test_require_tensorrt_errors(monkeypatch):
    import sys

    from mope_deploy import device

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(trt_export.TensorRTUnavailableError, match="not installed"):
        trt_export.require_tensorrt()
    fake = install_tensorrt(monkeypatch, 10)
    monkeypatch.delattr(fake, "NetworkDefinitionCreationFlag")  # TensorRT 8.x had no strongly typed networks
    with pytest.raises(trt_export.TensorRTUnavailableError, match="too old"):
        trt_export.require_tensorrt()
    install_tensorrt(monkeypatch, 11)
    monkeypatch.setattr(device, "cuda_available", lambda: False)
    with pytest.raises(trt_export.TensorRTUnavailableError, match="CUDA GPU"):
        trt_export.require_tensorrt()


def test_gate_compares_against_torch():
    """The gate's numbers against a naive computation."""

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(5, 8)).astype(np.float32)
    got = ref + rng.normal(scale=0.01, size=ref.shape).astype(np.float32)
    r = eg.compare(got, ref)
    a = got / np.linalg.norm(got, axis=1, keepdims=True)
    b = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    assert r["min_cosine"] == pytest.approx(min(float(a[i] @ b[i]) for i in range(5)), abs=1e-6)
    assert r["max_abs"] == pytest.approx(float(np.abs(a - b).max()), abs=1e-6)
    assert eg.compare(got[:4], ref)["min_cosine"] == -1.0  # wrong shape fails
