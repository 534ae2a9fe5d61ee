"""CPU/GPU variants (ORT fusions, int8, fp16) and the recall gate, checked against a naive reference."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from export_helpers import matched_dataset, ort_run, tiny
from mope_deploy.eval.retrieval import naive_retrieval_metrics
from mope_deploy.exporting import EvalInputs, ExportConfig, ExportError, export_bundle, export_onnx
from mope_deploy.exporting import quantize as quantize_mod


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("v")
    model = tiny()
    data = matched_dataset(model, root / "data")
    return model, root, str(data)


def _naive_recall(files, images, tokens, txt2img):
    img = torch.from_numpy(ort_run(files[0], images.float()))
    txt = torch.from_numpy(ort_run(files[1], tokens.to(torch.int32)))
    img, txt = torch.nn.functional.normalize(img, dim=-1), torch.nn.functional.normalize(txt, dim=-1)
    return naive_retrieval_metrics(img, txt, txt2img.tolist())["recall_mean"]


def test_int8_variant_recall_recorded_against_reference(setup):
    model, root, data = setup
    out = root / "int8"
    m = export_bundle(model, out, ExportConfig(precision="int8", eval_data=data, exporter="legacy",
                                               max_recall_drop=100.0))
    v = m.variants
    assert set(v) == {"fp32", "optimized", "fused", "int8"}
    assert v["int8"].files == {"vision": "image_encoder.int8.onnx", "text": "text_encoder.int8.onnx"}
    assert m.deploy_variant == "int8"
    ev = EvalInputs.load(model, data, limit=None)
    images, tokens, txt2img = ev.images, ev.tokens, ev.txt2img
    for name in ("fp32", "optimized", "fused", "int8"):
        files = (out / v[name].files["vision"], out / v[name].files["text"])
        assert v[name].recall["recall_mean"] == pytest.approx(_naive_recall(files, images, tokens, txt2img))
    assert v["fp32"].recall["recall_mean"] > 30  # the matched dataset is well above chance (~8%)
    delta = v["int8"].recall["recall_mean"] - v["fp32"].recall["recall_mean"]
    assert v["int8"].recall_delta == pytest.approx(delta)
    assert v["int8"].recall_gate == "passed"
    # int8 really is int8: quantised MatMuls in the graph, and a smaller file
    import onnx
    ops = {n.op_type for n in onnx.load(str(out / "image_encoder.int8.onnx")).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear"}
    assert "QAttention" in ops and v["int8"].made_from == "fused"  # attention is int8 too
    # which file serves which runtime: contrib-op graphs are ONNX Runtime only, the plain graph is portable
    assert v["fp32"].runtimes == ["any"]
    assert v["fused"].runtimes == v["int8"].runtimes == v["optimized"].runtimes == ["onnxruntime"]
    assert m.runtime == {"onnxruntime": {"vision": "int8", "text": "int8"},
                         "portable": {"vision": "fp32", "text": "fp32"}}
    assert v["fused"].recall_gate == "passed" and v["fused"].parity["max_abs"] <= 1e-4
    assert v["fused"].parity["vs"] == "fp32 graphs"
    assert v["int8"].details["agreement_vs_fp32"]["vision"]["min_cosine"] > 0.99
    # ORT's fusions applied where they match, and the fused graph is still fp32-exact
    assert v["optimized"].details["fused_ops"]["vision"].get("SkipLayerNormalization", 0) > 0
    assert v["optimized"].parity["max_abs"] <= 1e-4


def test_recall_gate_refuses_a_bad_variant(setup, monkeypatch):
    """A 'quantiser' that swaps in another model's encoders: recall collapses and the export is refused."""
    model, root, data = setup
    other = root / "other"
    export_onnx(tiny(seed=123), other, ExportConfig(exporter="legacy"))

    def broken(src, dst, **kw):
        shutil.copy(other / src.name.replace(".fused", ""), dst)
        return {"method": "broken"}

    monkeypatch.setattr(quantize_mod, "quantize_dynamic_int8", broken)
    out = root / "refused"
    with pytest.raises(ExportError, match=r"int8 variant loses \d+\.\d\d points of Recall Mean"):
        export_bundle(model, out, ExportConfig(precision="int8", eval_data=data, exporter="legacy"))
    assert not out.exists()


def test_fp16_variant_keeps_io_and_pooling(setup):
    """fp16 keeps float32 I/O; token ids above 2048 (not exact in fp16) still pool at the right EOT."""
    model, root, data = setup
    out = root / "fp16"
    m = export_bundle(model, out, ExportConfig(precision="fp16", eval_data=data, exporter="legacy", optimize=False,
                                               max_recall_drop=100.0))
    import onnx
    g = onnx.load(str(out / "text_encoder.fp16.onnx")).graph
    assert g.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT32
    assert g.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in g.initializer)
    agree = m.variants["fp16"].details["agreement_vs_fp32"]
    assert agree["text"]["min_cosine"] > 0.999 and agree["vision"]["min_cosine"] > 0.999
    assert m.variants["fp16"].recall is not None and m.variants["fp16"].recall_delta is not None
    assert m.variants["fp16"].made_from == "fp32"


def test_lower_precision_needs_eval_data(tmp_path):
    with pytest.raises(ValueError, match="needs --eval-data"):
        export_bundle(tiny(), tmp_path / "b", ExportConfig(precision="int8"))
    assert not (tmp_path / "b").exists()
    m = export_bundle(tiny(), tmp_path / "b", ExportConfig(precision="int8", skip_recall_gate=True, exporter="legacy",
                                                           optimize=False))
    assert m.variants["int8"].recall is None
    assert "skip" in m.variants["int8"].recall_gate and m.gates.recall_gate == "skipped"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = tiny().encode_image(x).numpy()
    got = ort_run(tmp_path / "b" / "image_encoder.int8.onnx", x)
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.99
