"""TensorRT and torch-tensorrt through ``export_bundle`` (fakes of TensorRT 10/11 and torch-tensorrt releases;
no GPU or TensorRT here): If-free text graphs for both exporters, gated engines in the bundle, refusals that
leave nothing behind, and the clear errors when TensorRT, torch-tensorrt or CUDA are missing."""

from __future__ import annotations

import json
import sys

import onnx
import pytest

from export_helpers import matched_dataset, tiny
from fakes import install_tensorrt, install_torch_tensorrt
from mope_deploy import device as device_mod
from mope_deploy.bundle import Bundle
from mope_deploy.device import TensorRTUnavailableError
from mope_deploy.exporting import ExportConfig, ExportError, export_bundle


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_text_graph_is_if_free_and_parses(tmp_path, monkeypatch, exporter):
    """The TorchScript exporter used to turn ``.squeeze(1)`` into an ``If`` with rank-mismatched branches, which
    onnx-tensorrt refuses (the fake parser refuses it too); both exporters now give If-free graphs."""
    fake = install_tensorrt(monkeypatch, 10)
    out = tmp_path / "b"
    m = export_bundle(tiny(), out, ExportConfig(formats=["tensorrt"], precision="fp32", batch_sizes=(1, 4, 8),
                                                exporter=exporter, optimize=False))
    for f in ("image_encoder.onnx", "text_encoder.onnx"):
        assert "If" not in {n.op_type for n in onnx.load(str(out / f)).graph.node}
    assert [p.rsplit("/", 1)[-1] for p in fake.RECORD["parsed"]] == ["image_encoder.onnx", "text_encoder.onnx"]
    assert m.engines["tensorrt"].engines["text"].gate["passed"]


@pytest.mark.parametrize("generation", [10, 11])
def test_fp16_engines_in_the_bundle(tmp_path, monkeypatch, generation):
    fake = install_tensorrt(monkeypatch, generation)
    out = tmp_path / "b"
    m = export_bundle(tiny(), out, ExportConfig(formats=["tensorrt"], precision="fp16", batch_sizes=(2, 4, 16),
                                                optimize=False, skip_recall_gate=True, sparse=True))
    engines = m.engines["tensorrt"].engines
    assert set(engines) == {"vision", "text"}
    for tower, name, shape in (("vision", "image", [3, 32, 32]), ("text", "tokens", [16])):
        plan = json.loads((out / engines[tower].file).read_bytes())  # the fake serialises what it was told
        assert plan["strongly_typed"] and plan["flags"] == ["SPARSE_WEIGHTS"]  # H11's 2:4 flag passes through
        assert plan["profile"] == {name: [[1, *shape], [4, *shape], [16, *shape]]}
        assert plan["pools"]["WORKSPACE"] == 4 << 30
        src = out / engines[tower].made_from
        assert src.name.endswith(".trt-fp16.onnx") and src.name in m.files
        assert engines[tower].gate["passed"] and engines[tower].file in m.files
        assert engines[tower].precision == "fp16" and engines[tower].profile["max"] == [16, *shape]
    assert m.engines["tensorrt"].recall_gate is None  # --skip-recall-gate
    assert m.engines["tensorrt"].details["features"]["weak_typing"] == (generation == 10)
    assert "tensorrt_build.log" in m.files and (out / "tensorrt_timing.cache").is_file()
    assert Bundle(out).engine("text") == out / engines["text"].file
    assert fake.RECORD["streams"]


def test_int8_engines_calibrate_on_eval_data_and_pass_recall(tmp_path, monkeypatch):
    install_tensorrt(monkeypatch, 11)
    model = tiny()
    data = matched_dataset(model, tmp_path / "data", n_images=10)
    m = export_bundle(model, tmp_path / "b", ExportConfig(formats=["tensorrt"], precision="int8",
                                                          batch_sizes=(1, 4, 8), eval_data=str(data), optimize=False,
                                                          max_recall_drop=100.0))
    t = m.engines["tensorrt"]
    assert t.recall_gate["passed"] and t.recall_gate["recall"]["recall_mean"] > 0
    for tower in ("vision", "text"):
        check = t.engines[tower].details["graph_conversion"]["check"]
        assert check["quantize_linear"] > 0 and not check["nonzero_zero_points"]


def test_refused_engine_leaves_no_bundle(tmp_path, monkeypatch):
    fake = install_tensorrt(monkeypatch, 11)
    fake.FAULTS["perturb"] = 0.05
    with pytest.raises(ExportError, match="numeric gate"):
        export_bundle(tiny(), tmp_path / "b", ExportConfig(formats=["onnx", "tensorrt"], optimize=False))
    assert not (tmp_path / "b").exists()  # (a failed build: test_trt_build.py, same atomic bundle)


def test_missing_tensorrt_fails_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(TensorRTUnavailableError, match="TensorRT is not installed"):
        export_bundle(tiny(), tmp_path / "b", ExportConfig(formats=["onnx", "tensorrt"]))
    assert not (tmp_path / "b").exists()


def test_missing_cuda_is_named(tmp_path, monkeypatch):
    install_tensorrt(monkeypatch, 11)
    monkeypatch.setattr(device_mod, "cuda_available", lambda: False)
    with pytest.raises(TensorRTUnavailableError, match="CUDA GPU"):
        export_bundle(tiny(), tmp_path / "b", ExportConfig(formats=["tensorrt"]))


def test_int8_tensorrt_needs_calibration_data(tmp_path, monkeypatch):
    install_tensorrt(monkeypatch, 11)
    with pytest.raises(ValueError, match="calibrates on real inputs"):
        export_bundle(tiny(), tmp_path / "b", ExportConfig(formats=["tensorrt"], precision="int8",
                                                           skip_recall_gate=True))


def test_missing_torch_tensorrt(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)
    with pytest.raises(TensorRTUnavailableError, match="torch-tensorrt is not installed"):
        export_bundle(tiny(), tmp_path / "b", ExportConfig(formats=["torch-tensorrt"]))
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_torch_tensorrt_in_the_bundle(tmp_path, monkeypatch):
    import torch

    from mope_deploy.exporting.tensorrt import torch_trt

    install_torch_tensorrt(monkeypatch, "2.14")
    monkeypatch.setattr(torch_trt, "DEVICE", "cpu")
    model = tiny()
    m = export_bundle(model, tmp_path / "b", ExportConfig(formats=["torch-tensorrt"], precision="fp16",
                                                          batch_sizes=(1, 4, 8), optimize=False,
                                                          skip_recall_gate=True))
    t = m.engines["torch-tensorrt"]
    assert {k: e.file for k, e in t.engines.items()} == {"vision": "image_encoder.fp16.ep",
                                                         "text": "text_encoder.fp16.ep"}
    assert all(e.gate["passed"] for e in t.engines.values()) and "real@8" in t.engines["text"].gate["cases"]
    assert (tmp_path / "b" / "text_encoder.fp16.ep").is_file() and "text_encoder.fp16.ep" in m.files
    assert next(model.parameters()).device.type == "cpu" and next(model.parameters()).dtype == torch.float32


def test_torch_tensorrt_int8_refused(tmp_path):
    with pytest.raises(ValueError, match="ModelOpt"):
        export_bundle(tiny(), tmp_path / "b", ExportConfig(formats=["torch-tensorrt"], precision="int8",
                                                           skip_recall_gate=True))
