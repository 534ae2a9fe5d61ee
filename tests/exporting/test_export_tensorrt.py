"""TensorRT engine builder against a fake ``tensorrt`` module (no GPU or TensorRT here), and the clear
errors when TensorRT, torch-tensorrt or CUDA are missing."""

from __future__ import annotations

import json
import sys

import onnx
import pytest

import fake_tensorrt
from export_helpers import matched_dataset, tiny
from mope_deploy.exporting import ExportError, export_bundle
from mope_deploy.exporting import tensorrt as trt_mod
from mope_deploy.exporting.tensorrt import TensorRTUnavailableError

PINNED_OPS = {"LayerNormalization", "Softmax", "ReduceL2", "ReduceMean", "ReduceMax", "ReduceSum", "ArgMax"}


@pytest.fixture
def fake_trt(monkeypatch):
    fake = fake_tensorrt.make()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(trt_mod, "_cuda_available", lambda: True)
    monkeypatch.setattr(trt_mod, "CALIB_DEVICE", "cpu")  # the fake only checks the pointers are real
    return fake


def _pinnable(path) -> int:
    return sum(n.op_type in PINNED_OPS for n in onnx.load(str(path)).graph.node)


def test_fp16_engines_pin_fragile_layers(tmp_path, fake_trt):
    out = tmp_path / "b"
    m = export_bundle(tiny(), out, formats=["tensorrt"], precision="fp16", batch_sizes=(1, 4, 16),
                      exporter="legacy", optimize=False, skip_recall_gate=True)
    engines = m["tensorrt"]["engines"]
    assert set(engines) == {"image", "text"}
    for tower, onnx_file, name, shape in (("image", "image_encoder.onnx", "image", [3, 32, 32]),
                                          ("text", "text_encoder.onnx", "tokens", [16])):
        plan = json.loads((out / engines[tower]["file"]).read_bytes())  # the fake serialises what it was told
        assert {"FP16", "OBEY_PRECISION_CONSTRAINTS"} <= set(plan["flags"]) and "INT8" not in plan["flags"]
        assert plan["profiles"] == [{name: [[1, *shape], [4, *shape], [16, *shape]]}]
        assert len(plan["pinned"]) == _pinnable(out / onnx_file) > 0
        assert set(plan["pinned_types"]) <= {"NORMALIZATION", "SOFTMAX", "REDUCE", "TOPK"}
        assert "NORMALIZATION" in plan["pinned_types"] and plan["pools"]["WORKSPACE"] == 4 << 30
    assert "TOPK" in json.loads((out / engines["text"]["file"]).read_bytes())["pinned_types"]  # EOT ArgMax
    log = (out / "tensorrt_build.log").read_text()
    assert "precision fp16" in log and "built" in log and "pinned to fp32" in log
    assert (out / "tensorrt_timing.cache").is_file()
    assert engines["image"]["file"] in m["files"] and "tensorrt_build.log" in m["files"]
    assert fake_trt.RECORD["parsed"][0].endswith("image_encoder.onnx")  # engines come from the fp32 graphs


def test_fp32_engine_disables_tf32_and_sparse_flag(tmp_path, fake_trt):
    m = export_bundle(tiny(), tmp_path / "b", formats=["tensorrt"], precision="fp32", exporter="legacy",
                      optimize=False, sparse=True)
    plan = json.loads((tmp_path / "b" / m["tensorrt"]["engines"]["image"]["file"]).read_bytes())
    assert plan["flags"] == ["SPARSE_WEIGHTS"] and plan["cleared"] == ["TF32"]
    assert plan["pinned"] == []
    # the timing cache written by the first engine is read back by the second build
    assert fake_trt.RECORD["plans"][0]["timing_cache_input"] == ""
    assert fake_trt.RECORD["plans"][1]["timing_cache_input"].endswith("+timed")


def test_int8_engines_calibrate_on_eval_data(tmp_path, fake_trt):
    model = tiny()
    data = matched_dataset(model, tmp_path / "data", n_images=10)
    m = export_bundle(model, tmp_path / "b", formats=["tensorrt"], precision="int8", batch_sizes=(1, 4, 8),
                      eval_data=str(data), exporter="legacy", optimize=False, max_recall_drop=100.0)
    for tower, n_inputs in (("image", 10), ("text", 10)):
        e = m["tensorrt"]["engines"][tower]
        plan = json.loads((tmp_path / "b" / e["file"]).read_bytes())
        assert {"INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS"} <= set(plan["flags"])
        assert plan["calibration_batches"] == [4] * (n_inputs // 4) == [4] * e["calibration_batches"]
    assert (tmp_path / "b" / "image_encoder.int8.calib.cache").read_bytes() == b"fake-calibration-table"


def test_build_failure_is_refused_with_log(tmp_path, fake_trt):
    fake_trt.RECORD["fail_build"] = True
    with pytest.raises(ExportError, match="out of tactics"):
        export_bundle(tiny(), tmp_path / "b", formats=["onnx", "tensorrt"], exporter="legacy", optimize=False)
    assert not (tmp_path / "b").exists()


def test_missing_tensorrt_fails_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(TensorRTUnavailableError, match="TensorRT is not installed"):
        export_bundle(tiny(), tmp_path / "b", formats=["onnx", "tensorrt"])
    assert not (tmp_path / "b").exists()


def test_missing_cuda_is_named(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt.make())
    monkeypatch.setattr(trt_mod, "_cuda_available", lambda: False)
    with pytest.raises(TensorRTUnavailableError, match="CUDA GPU"):
        export_bundle(tiny(), tmp_path / "b", formats=["tensorrt"])


def test_old_tensorrt_is_refused(monkeypatch):
    fake = fake_tensorrt.make()
    monkeypatch.setattr(fake, "__version__", "8.6.1")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    with pytest.raises(TensorRTUnavailableError, match=">= 10"):
        trt_mod.require_tensorrt()


def test_int8_tensorrt_needs_calibration_data(tmp_path, fake_trt):
    with pytest.raises(ValueError, match="calibrates on real inputs"):
        export_bundle(tiny(), tmp_path / "b", formats=["tensorrt"], precision="int8", skip_recall_gate=True)


def test_missing_torch_tensorrt(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)
    with pytest.raises(TensorRTUnavailableError, match="torch-tensorrt is not installed"):
        export_bundle(tiny(), tmp_path / "b", formats=["torch-tensorrt"])
    assert not (tmp_path / "b").exists()


def _fake_torch_tensorrt(calls: list):
    import types
    from pathlib import Path

    mod = types.ModuleType("torch_tensorrt")
    mod.__version__ = "2.5.0"

    class Input:
        def __init__(self, **kw):
            self.kw = kw

    def compile(module, ir, arg_inputs, enabled_precisions, min_block_size):  # noqa: A001
        calls.append(("compile", ir, arg_inputs[0].kw, enabled_precisions))
        return module

    def save(gm, path, output_format, arg_inputs, dynamic_shapes):
        out = gm(*arg_inputs)  # the compiled module must run on the example
        calls.append(("save", Path(path).name, output_format, tuple(arg_inputs[0].shape), dynamic_shapes,
                      tuple(out.shape)))
        Path(path).write_bytes(b"exported program")

    mod.Input, mod.compile, mod.save = Input, compile, save
    return mod


def test_torch_tensorrt_path(tmp_path, monkeypatch):
    import torch

    from mope_deploy.exporting import torch_trt

    calls: list = []
    monkeypatch.setitem(sys.modules, "torch_tensorrt", _fake_torch_tensorrt(calls))
    monkeypatch.setattr(trt_mod, "_cuda_available", lambda: True)
    monkeypatch.setattr(torch_trt, "DEVICE", "cpu")
    model = tiny()
    m = export_bundle(model, tmp_path / "b", formats=["torch-tensorrt"], precision="fp16", batch_sizes=(1, 4, 8),
                      exporter="legacy", optimize=False, skip_recall_gate=True)
    assert m["torch_tensorrt"]["files"] == {"image": "image_encoder.fp16.ep", "text": "text_encoder.fp16.ep"}
    (c_img, s_img, c_txt, s_txt) = calls
    assert c_img[1] == "dynamo" and c_img[3] == {torch.float16}
    assert c_img[2] == {"min_shape": (1, 3, 32, 32), "opt_shape": (4, 3, 32, 32), "max_shape": (8, 3, 32, 32),
                        "dtype": torch.float32}
    assert c_txt[2]["dtype"] == torch.int32 and c_txt[2]["max_shape"] == (8, 16)
    assert s_img[2] == "exported_program" and s_img[3] == (4, 3, 32, 32) and s_img[5] == (4, 32)
    dim = s_txt[4]["tokens"][0]
    assert (dim.min, dim.max) == (1, 8)
    assert (tmp_path / "b" / "text_encoder.fp16.ep").is_file() and "text_encoder.fp16.ep" in m["files"]
    assert next(model.parameters()).device.type == "cpu"


def test_torch_tensorrt_int8_refused(tmp_path):
    with pytest.raises(ValueError, match="ModelOpt"):
        export_bundle(tiny(), tmp_path / "b", formats=["torch-tensorrt"], precision="int8", skip_recall_gate=True)
