"""OpenVINO IR export (fp32 + NNCF int8) under the ONNX variants' gates, on the demo teacher."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

pytest.importorskip("openvino", reason="the openvino extra: pip install 'mope-deploy[openvino]'")
pytest.importorskip("nncf", reason="the openvino extra: pip install 'mope-deploy[openvino]'")

from mope_deploy.bundle import Variant, onnx_name  # noqa: E402
from mope_deploy.exporting import openvino as ovx  # noqa: E402
from mope_deploy.exporting.config import MAX_RECALL_DROP, EvalInputs  # noqa: E402
from mope_deploy.exporting.onnx import write_onnx  # noqa: E402
from mope_deploy.vocab import TOWERS  # noqa: E402

CFG = ovx.OpenVINOExportConfig(threads=1, time_iters=1, calibration_limit=32)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    import mope_deploy

    model = mope_deploy.load("demo").eval()
    root = tmp_path_factory.mktemp("ov")
    write_onnx(model, root)
    ev = EvalInputs.load(model, "synthetic:test", 40)
    return model, root, ev


@pytest.fixture(scope="module")
def exported(demo):
    model, root, ev = demo
    rec = ovx.export_openvino(model, root, {t: root / onnx_name(t) for t in TOWERS}, ev, CFG,
                              ort_int8=("fp32", {t: root / onnx_name(t) for t in TOWERS}))
    return rec


def test_fp32_and_int8_ir_pass_parity_recall_and_batch_invariance(demo, exported):
    model, root, ev = demo
    rec = exported
    assert set(rec["variants"]) == {ovx.FP32, ovx.INT8} and not rec["refused"]
    fp32, int8 = rec["variants"][ovx.FP32], rec["variants"][ovx.INT8]
    assert fp32["parity"]["passed"] and fp32["parity"]["max_abs"] <= 1e-4
    assert -int8["recall_delta"] <= MAX_RECALL_DROP and int8["recall_gate"] == "passed"
    assert fp32["batch_invariant"] and int8["batch_invariant"]
    assert max(int8["batch_invariance"]["max_abs"].values()) <= 1e-6
    for name, v in rec["variants"].items():
        assert v["inference_precision"] == "f32" and v["runtimes"] == ["openvino"]
        for t in TOWERS:
            xml = root / v["files"][t]
            assert xml.is_file() and xml.with_suffix(".bin").is_file()
        Variant.from_dict(v)  # a manifest record as it is
    # int8 weights really are int8 in the IR
    import openvino as ov

    m = ov.Core().read_model(str(root / int8["files"]["vision"]))
    assert any(op.get_type_name() == "FakeQuantize" or str(op.get_output_element_type(0)) in ("i8", "u8")
               for op in m.get_ordered_ops())
    # the runtime choice per tower is one of the two timed candidates
    assert set(rec["runtime"].values()) <= {ovx.INT8, "fp32"}
    for t in TOWERS:
        assert set(int8["speed_at_export"][t]["median_ms"]) == {ovx.INT8, "fp32"}


@torch.no_grad()
def test_fp32_ir_matches_torch_naively(demo, exported):
    """Reference: the torch model itself on real inputs (not the gate's own numbers)."""
    model, root, ev = demo
    c = ovx.compile_ir(root / ovx.ir_name("vision"), threads=1)
    got = ovx.run_compiled(c, ev.images[:5].float().numpy())
    want = model.encode_image(ev.images[:5].float()).numpy()
    assert np.abs(got - want).max() <= 1e-4
    c = ovx.compile_ir(root / ovx.ir_name("text"), threads=1)
    got = ovx.run_compiled(c, ev.tokens[:5].to(torch.int32).numpy())
    assert np.abs(got - model.encode_text(ev.tokens[:5].long()).numpy()).max() <= 1e-4


def test_inference_precision_is_set_explicitly(demo, exported):
    import openvino as ov
    import openvino.properties.hint as hints

    _, root, _ = demo
    xml = root / ovx.ir_name("text")
    assert ovx.compile_ir(xml, precision="f32").get_property(hints.inference_precision) == ov.Type.f32
    assert ovx.compile_ir(xml, precision="bf16").get_property(hints.inference_precision) == ov.Type.bf16
    with pytest.raises(ValueError, match="inference precision"):
        ovx.compile_ir(xml, precision="int4")


@pytest.mark.slow
def test_a_failing_int8_ir_is_not_written(demo, tmp_path):
    model, root, ev = demo
    out = tmp_path / "b"
    out.mkdir()
    said = []
    # impossible: the int8 IR would have to gain 100 points of Recall Mean
    rec = ovx.export_openvino(model, out, {t: root / onnx_name(t) for t in TOWERS}, ev,
                              ovx.OpenVINOExportConfig(threads=1, time_iters=1, calibration_limit=16,
                                                       max_recall_drop=-100.0), say=said.append)
    assert set(rec["variants"]) == {ovx.FP32} and ovx.INT8 in rec["refused"]
    assert "Recall Mean" in rec["refused"][ovx.INT8]
    assert any("retrying with the sensitive layers" in s for s in said)  # the ignored-scope retry ran first
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [ovx.ir_name(t) for t in TOWERS] + [ovx.ir_name(t).replace(".xml", ".bin") for t in TOWERS])
    assert rec["runtime"] == {t: ovx.FP32 for t in TOWERS}


def test_sensitive_ops_are_the_first_and_last_matmul(demo, exported):
    _, root, _ = demo
    import openvino as ov

    ops = ovx.sensitive_ops(root / ovx.ir_name("vision"))
    mm = [o.get_friendly_name() for o in ov.Core().read_model(str(root / ovx.ir_name("vision"))).get_ordered_ops()
          if o.get_type_name() == "MatMul"]
    assert ops == [mm[-1], mm[0]]


def test_without_openvino_the_export_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # the import is blocked
    why = ovx.openvino_missing()
    assert why is not None and "pip install 'mope-deploy[openvino]'" in why
    with pytest.raises(ovx.OpenVINOUnavailableError, match="mope-deploy\\[openvino\\]"):
        ovx.require_openvino()
    monkeypatch.setitem(sys.modules, "nncf", None)
    assert "nncf" in ovx.openvino_missing(int8=True) or "openvino" in ovx.openvino_missing(int8=True)


def test_config_is_checked_before_work():
    from mope_deploy.exporting.config import ExportConfigError

    with pytest.raises(ExportConfigError, match="inference precision"):
        ovx.OpenVINOExportConfig(inference_precision="fp64").check()
    with pytest.raises(ValueError):
        ovx.ir_name("audio")


def test_without_eval_data_int8_is_calibrated_on_the_synthetic_set(demo, tmp_path):
    model, root, _ = demo
    out = tmp_path / "noeval"
    out.mkdir()
    rec = ovx.export_openvino(model, out, {t: root / onnx_name(t) for t in TOWERS}, None,
                              ovx.OpenVINOExportConfig(threads=1, time_iters=1, calibration_limit=16))
    int8 = rec["variants"][ovx.INT8]
    assert int8["recall_gate"] == "no --eval-data" and "recall" not in int8
    assert int8["method"]["calibration_inputs"] == 16 and int8["batch_invariant"]
    assert int8["agreement_vs_fp32"]["vision"]["min_cosine"] > 0.99


def test_mope_export_format_openvino_writes_gated_ir_and_the_runtime_choice(demo, tmp_path):
    from mope_deploy.exporting.config import ExportConfig
    from mope_deploy.exporting.pipeline import export_bundle
    from mope_deploy.runtime import open_encoder

    model, _, ev = demo
    out = tmp_path / "bundle"
    m = export_bundle(model, out, ExportConfig(formats=("onnx", "openvino"), precision="int8", optimize=False),
                      eval_inputs=ev)
    assert {ovx.FP32, ovx.INT8} <= set(m.variants)
    assert m.variants[ovx.FP32].parity["passed"] and m.variants[ovx.INT8].recall_gate == "passed"
    assert m.variants[ovx.INT8].batch_invariant and m.variants["int8"].batch_invariant
    assert set(m.runtime["openvino"].values()) <= {ovx.INT8, "int8"}
    assert all((out / f).is_file() for f in m.variants[ovx.INT8].files.values())
    assert any(k.endswith(".openvino-int8.bin") for k in m.files)  # hashed like every bundle file
    enc = open_encoder(out, "openvino", threads=1)
    assert enc.describe()["towers"] == m.runtime["openvino"]
    e = enc.encode_texts(["a red circle", "a blue square"])
    assert e.shape == (2, model.config.embed_dim) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)


def test_export_refuses_openvino_before_work_when_it_is_not_installed(monkeypatch, tmp_path):
    from mope_deploy.exporting.config import ExportConfig
    from mope_deploy.exporting.pipeline import preflight

    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(ovx.OpenVINOUnavailableError, match="mope-deploy\\[openvino\\]"):
        preflight(ExportConfig(formats=("openvino",)))
