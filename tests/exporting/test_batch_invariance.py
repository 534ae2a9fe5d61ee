"""int8 embeddings that do not depend on their batch-mates: ``quantize_calibrated_int8`` (the dynamic graph with
calibrated activation scales) vs ORT's dynamic int8 (one activation range per batch), on the demo teacher."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from mope_deploy.bundle import onnx_name
from mope_deploy.exporting.config import MAX_RECALL_DROP, EvalInputs
from mope_deploy.exporting.onnx import write_onnx
from mope_deploy.exporting.ort_fused import FUSED_VARIANT, write_fused_onnx
from mope_deploy.exporting.quantize import (BATCH_INVARIANT, batch_invariance, calibration_batches,
                                            quantize_calibrated_int8, quantize_dynamic_int8, uint8_scale)
from mope_deploy.exporting.variants import onnx_retrieval
from mope_deploy.vocab import TOWERS

TOL = 1e-6  # on L2-normalised embeddings


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    import mope_deploy

    model = mope_deploy.load("demo").eval()
    root = tmp_path_factory.mktemp("inv")
    write_onnx(model, root)
    write_fused_onnx(model, root)
    calib = EvalInputs.load(model, "synthetic:val", 24)
    test = EvalInputs.load(model, "synthetic:test", 60)
    batches = {"vision": calibration_batches(calib.images.float().numpy()),
               "text": calibration_batches(calib.tokens.to(torch.int32).numpy())}
    inputs = {"vision": test.images[:8].float().numpy(), "text": test.tokens[:8].to(torch.int32).numpy()}
    files = {}
    for t in TOWERS:
        src = root / onnx_name(t, FUSED_VARIANT)
        files[t] = {"calibrated": root / f"{t}.calibrated.onnx", "dynamic": root / f"{t}.dynamic.onnx"}
        quantize_calibrated_int8(src, files[t]["calibrated"], batches[t])
        quantize_dynamic_int8(src, files[t]["dynamic"])
    return model, root, files, inputs, test


@pytest.mark.parametrize("tower", TOWERS)
def test_calibrated_int8_gives_each_input_one_embedding_alone_or_in_any_batch(demo, tower):
    _, _, files, inputs, _ = demo
    inv = batch_invariance(files[tower]["calibrated"], inputs[tower], (3, 8))
    assert inv["max_abs_b3"] <= TOL and inv["max_abs_b8"] <= TOL, inv
    # what it replaces: the dynamic graph's embeddings move with the batch (demo: ~2e-3)
    dyn = batch_invariance(files[tower]["dynamic"], inputs[tower], (3, 8))
    assert dyn["max_abs"] > 1e-4, dyn
    assert BATCH_INVARIANT == {"calibrated": True, "static": True, "dynamic": False}


def test_calibrated_graph_keeps_the_int8_kernels_and_drops_every_dynamic_quantiser(demo):
    model, _, files, _, _ = demo
    for t in TOWERS:
        dyn = onnx.load(str(files[t]["dynamic"]), load_external_data=False).graph.node
        cal = onnx.load(str(files[t]["calibrated"]), load_external_data=False).graph.node
        count = lambda nodes, op: sum(n.op_type == op for n in nodes)  # noqa: E731
        assert count(cal, "DynamicQuantizeLinear") == 0
        assert count(cal, "QuantizeLinear") == count(dyn, "DynamicQuantizeLinear") > 0
        assert count(cal, "QAttention") == count(dyn, "QAttention") == len(model.config.tower(t).blocks)
        assert count(cal, "MatMulInteger") == count(dyn, "MatMulInteger") > 0


def test_calibrated_int8_keeps_recall_within_the_gate(demo):
    _, root, files, _, test = demo
    ref = onnx_retrieval(root / onnx_name("vision"), root / onnx_name("text"), test.images, test.tokens, test.txt2img)
    got = onnx_retrieval(files["vision"]["calibrated"], files["text"]["calibrated"], test.images, test.tokens,
                         test.txt2img)
    assert ref["recall_mean"] - got["recall_mean"] <= MAX_RECALL_DROP, (ref, got)


def test_uint8_scale_is_dynamic_quantize_linear_on_the_same_range(tmp_path):
    """Naive reference: ONNX's own DynamicQuantizeLinear on an array whose range is the calibrated one."""
    import onnxruntime as ort

    g = helper.make_graph([helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                          [helper.make_tensor_value_info("y", TensorProto.UINT8, [None]),
                           helper.make_tensor_value_info("s", TensorProto.FLOAT, []),
                           helper.make_tensor_value_info("z", TensorProto.UINT8, [])])
    path = tmp_path / "dql.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for lo, hi in ((-3.0, 5.0), (0.5, 2.0), (-4.0, -1.0), (-0.1, 9.0)):
        _, scale, zp = s.run(None, {"x": np.array([lo, hi], np.float32)})
        got_scale, got_zp = uint8_scale(lo, hi)
        assert got_scale == pytest.approx(float(scale), rel=1e-6) and got_zp == int(zp), (lo, hi)
    assert uint8_scale(0.0, 0.0) == (1.0, 0)


def test_batch_invariance_measures_what_it_claims(tmp_path):
    """A graph that subtracts the batch mean depends on its batch-mates; an elementwise one does not."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])
    mean = helper.make_graph([helper.make_node("ReduceMean", ["x"], ["m"], axes=[0], keepdims=1),
                              helper.make_node("Sub", ["x", "m"], ["y"])], "mean", [x], [y])
    elem = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "elem", [x], [y])
    data = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    out = {}
    for name, g in (("mean", mean), ("elem", elem)):
        p = tmp_path / f"{name}.onnx"
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(p))
        out[name] = batch_invariance(p, data, (3, 8))
    assert out["elem"]["max_abs"] == 0.0 and out["mean"]["max_abs"] > 0.1
    with pytest.raises(ValueError, match="at least 8 inputs"):
        batch_invariance(tmp_path / "elem.onnx", data[:4], (3, 8))


def test_synthetic_calibration_is_the_models_own_inputs(demo):
    from mope_deploy.data.datasets import load_dataset
    from mope_deploy.exporting.quantize import synthetic_calibration

    model = demo[0]
    cal = synthetic_calibration(model.config, limit=10, batch=4)
    assert [len(b) for b in cal["vision"]] == [4, 4, 2] and [len(b) for b in cal["text"]] == [4, 4, 2]
    ds = load_dataset("synthetic:val").head(10)
    want = np.asarray(model.preprocess(ds.images[3].convert("RGB")), dtype=np.float32)
    np.testing.assert_array_equal(cal["vision"][0][3], want)
    assert cal["text"][0].dtype == np.int32
    np.testing.assert_array_equal(cal["text"][0][1], np.asarray(model.tokenizer([ds.captions[1]]))[0])


@pytest.fixture(scope="module")
def int8_bundle(demo, tmp_path_factory):
    from mope_deploy.exporting.config import ExportConfig
    from mope_deploy.exporting.pipeline import export_bundle

    model, _, _, _, test = demo
    out = tmp_path_factory.mktemp("b") / "bundle"
    manifest = export_bundle(model, out, ExportConfig(precision="int8", optimize=False), eval_inputs=test)
    return out, manifest


def test_the_default_int8_export_is_calibrated_batch_invariant_and_recall_gated(int8_bundle):
    _, manifest = int8_bundle
    v = manifest.variants["int8"]
    assert manifest.export_config["int8_method"] == "calibrated" and v.method["method"] == "calibrated"
    assert v.batch_invariant is True and v.made_from == "fused"
    assert v.recall_gate == "passed" and -v.recall_delta <= MAX_RECALL_DROP
    assert manifest.runtime["onnxruntime"] == {t: "int8" for t in TOWERS}  # what serve/index open by default


@pytest.mark.parametrize("backend", ["onnxruntime", "onnxruntime-int8"])
def test_the_served_and_indexed_encoder_gives_one_embedding_alone_or_in_any_batch(int8_bundle, backend):
    from mope_deploy.data.datasets import load_dataset
    from mope_deploy.runtime import open_encoder

    out, _ = int8_bundle
    enc = open_encoder(out, backend, threads=1)
    assert enc.describe()["variant"] == "int8"
    ds = load_dataset("synthetic:test").head(8)
    images, texts = [ds.images[i] for i in range(8)], list(ds.captions[:8])
    for encode, items in ((enc.encode_images, images), (enc.encode_texts, texts)):
        alone = np.concatenate([encode(items[i:i + 1]) for i in range(8)])
        for b in (3, 8):
            together = encode(items, batch_size=b)
            assert np.abs(together - alone).max() <= TOL, (encode.__name__, b)


def test_dynamic_int8_stays_available_by_name_and_is_recorded_batch_dependent(demo, tmp_path):
    from mope_deploy.exporting.config import ExportConfig
    from mope_deploy.exporting.pipeline import export_bundle

    model, _, _, _, test = demo
    m = export_bundle(model, tmp_path / "dyn", ExportConfig(precision="int8", optimize=False, int8_method="dynamic",
                                                            max_recall_drop=100.0), eval_inputs=test)
    assert m.variants["int8"].batch_invariant is False and m.variants["int8"].method["method"] != "calibrated"
