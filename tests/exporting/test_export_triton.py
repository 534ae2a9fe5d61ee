"""Triton model repository: configs parsed with Triton's own model-config protobuf."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export_helpers import ort_run, tiny
from fakes import install_tensorrt
from mope_deploy.exporting import ExportConfig, export_bundle
from mope_deploy.exporting.triton import render_config


def _parse(path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    model = tiny()
    out = tmp_path_factory.mktemp("t") / "b"
    with pytest.MonkeyPatch.context() as mp:
        install_tensorrt(mp, 11)  # TensorRT 11 fake: strongly typed fp16 engines, gated vs torch
        manifest = export_bundle(model, out, ExportConfig(formats=["triton", "tensorrt"], precision="fp16",
                                                          batch_sizes=(1, 8, 32), exporter="legacy",
                                                          skip_recall_gate=True, external_data=True))
    return model, out, manifest


def test_repository_layout_and_configs(repo):
    model, out, manifest = repo
    r = out / "triton"
    assert set(manifest.triton["models"]) == {"clip_image_onnx", "clip_text_onnx", "clip_image_trt", "clip_text_trt"}
    # deployed names keep the word "image" for the vision tower (Triton clients address models by name)
    expect = {"image": ("image", mc.DataType.TYPE_FP32, [3, 32, 32]), "text": ("tokens", mc.DataType.TYPE_INT32, [16])}
    for tower, (name, dtype, dims) in expect.items():
        for kind, model_file in (("onnx", "model.onnx"), ("trt", "model.plan")):
            cfg = _parse(r / f"clip_{tower}_{kind}" / "config.pbtxt")
            assert cfg.name == f"clip_{tower}_{kind}"
            if kind == "onnx":
                assert cfg.backend == "onnxruntime"
            else:
                assert cfg.platform == "tensorrt_plan"
                assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.Kind.KIND_GPU
            assert cfg.max_batch_size == 32
            assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [(name, dtype, dims)]
            assert [(o.name, o.data_type, list(o.dims)) for o in cfg.output] == [
                ("embedding", mc.DataType.TYPE_FP32, [model.config.embed_dim])]
            assert list(cfg.dynamic_batching.preferred_batch_size) == [8, 32]
            assert cfg.default_model_filename == model_file
            assert (r / cfg.name / "1" / model_file).is_file()
    assert _parse(r / "clip_text_onnx" / "config.pbtxt").instance_group[0].kind == \
        mc.ModelInstanceGroup.Kind.KIND_GPU  # fp16 deploy variant -> GPU instances
    assert all(f"triton/{m}/config.pbtxt" in manifest.files for m in manifest.triton["models"])


def test_repository_onnx_models_run(repo):
    """The fp16 graph placed in the repository runs with its external weights and matches torch."""
    model, out, manifest = repo
    assert manifest.triton["models"]["clip_text_onnx"]["source"] == "text_encoder.fp16.onnx"
    path = out / "triton" / "clip_image_onnx" / "1" / "model.onnx"
    assert (path.parent / "image_encoder.fp16.onnx.data").is_file()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = model.encode_image(x).numpy()
    got = ort_run(path, x)
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert got.dtype == np.float32 and cos.min() > 0.999


def test_int8_onnx_models_run_on_cpu_instances(tmp_path):
    m = export_bundle(tiny(), tmp_path / "b", ExportConfig(formats=["triton"], precision="int8", exporter="legacy",
                                                           skip_recall_gate=True, optimize=False))
    cfg = _parse(tmp_path / "b" / "triton" / "clip_image_onnx" / "config.pbtxt")
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.Kind.KIND_CPU
    assert m.triton["models"]["clip_image_onnx"]["source"] == "image_encoder.int8.onnx"
    assert "clip_image_trt" not in m.triton["models"]


def test_render_rejects_bad_batch():
    with pytest.raises(ValueError, match="max_batch_size must be >= 1"):
        render_config("onnxruntime", "m", "image", "float32", (3, 8, 8), 4, 0, (1,))
