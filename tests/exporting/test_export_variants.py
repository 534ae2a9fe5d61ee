"""CPU/GPU variants (ORT fusions, int8, fp16) and the recall gate, checked against a naive reference."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from export_helpers import matched_dataset, ort_run, tiny
from mope_deploy.eval.retrieval import naive_retrieval_metrics
from mope_deploy.exporting import ExportError, export_bundle, export_onnx
from mope_deploy.exporting import variants as variants_mod
from mope_deploy.exporting.bundle import load_eval_inputs


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
    m = export_bundle(model, out, precision="int8", eval_data=data, exporter="legacy", max_recall_drop=100.0)
    v = m["variants"]
    assert set(v) == {"fp32", "optimized", "int8"}
    assert m["int8"] == {"image": "image_encoder.int8.onnx", "text": "text_encoder.int8.onnx"}
    assert m["deploy_variant"] == "int8"
    images, tokens, txt2img, _ = load_eval_inputs(model, data, limit=None)
    for name in ("fp32", "optimized", "int8"):
        files = (out / v[name]["files"]["image"], out / v[name]["files"]["text"])
        assert v[name]["recall"]["recall_mean"] == pytest.approx(_naive_recall(files, images, tokens, txt2img))
    assert v["fp32"]["recall"]["recall_mean"] > 30  # the matched dataset is well above chance (~8%)
    delta = v["int8"]["recall"]["recall_mean"] - v["fp32"]["recall"]["recall_mean"]
    assert v["int8"]["recall_delta"] == pytest.approx(delta)
    assert v["int8"]["recall_gate"] == "passed"
    # int8 really is int8: quantised MatMuls in the graph, and a smaller file
    import onnx
    ops = {n.op_type for n in onnx.load(str(out / "image_encoder.int8.onnx")).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear"}
    assert v["int8"]["agreement_vs_fp32"]["image"]["min_cosine"] > 0.99
    # ORT's fusions applied where they match, and the fused graph is still fp32-exact
    assert v["optimized"]["fused_ops"]["image"].get("SkipLayerNormalization", 0) > 0
    assert v["optimized"]["parity"]["max_abs"] <= 1e-4


def test_recall_gate_refuses_a_bad_variant(setup, monkeypatch):
    """A 'quantiser' that swaps in another model's encoders: recall collapses and the export is refused."""
    model, root, data = setup
    other = root / "other"
    export_onnx(tiny(seed=123), other, exporter="legacy")

    def broken(src, dst):
        shutil.copy(other / src.name.replace(".optimized", ""), dst)
        return {"method": "broken"}

    monkeypatch.setattr(variants_mod, "quantize_int8", broken)
    out = root / "refused"
    with pytest.raises(ExportError, match=r"int8 variant loses \d+\.\d\d points of Recall Mean"):
        export_bundle(model, out, precision="int8", eval_data=data, exporter="legacy")
    assert not out.exists()


def test_fp16_variant_keeps_io_and_pooling(setup):
    """fp16 keeps float32 I/O; token ids above 2048 (not exact in fp16) still pool at the right EOT."""
    model, root, data = setup
    out = root / "fp16"
    m = export_bundle(model, out, precision="fp16", eval_data=data, exporter="legacy", optimize=False,
                      max_recall_drop=100.0)
    import onnx
    g = onnx.load(str(out / "text_encoder.fp16.onnx")).graph
    assert g.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT32
    assert g.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in g.initializer)
    agree = m["variants"]["fp16"]["agreement_vs_fp32"]
    assert agree["text"]["min_cosine"] > 0.999 and agree["image"]["min_cosine"] > 0.999
    assert m["variants"]["fp16"]["recall"] is not None and "recall_delta" in m["variants"]["fp16"]


def test_lower_precision_needs_eval_data(tmp_path):
    with pytest.raises(ValueError, match="needs --eval-data"):
        export_bundle(tiny(), tmp_path / "b", precision="int8")
    assert not (tmp_path / "b").exists()
    m = export_bundle(tiny(), tmp_path / "b", precision="int8", skip_recall_gate=True, exporter="legacy",
                      optimize=False)
    assert m["variants"]["int8"]["recall"] is None
    assert "skip" in m["variants"]["int8"]["recall_gate"] and m["gates"]["recall_gate"] == "skipped"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = tiny().encode_image(x).numpy()
    got = ort_run(tmp_path / "b" / "image_encoder.int8.onnx", x)
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.99
