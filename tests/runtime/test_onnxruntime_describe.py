"""ONNX Runtime's describe() reports the providers the sessions actually run on, not the requested ones (ORT
falls back to the CPU provider silently when a GPU provider cannot load)."""

from __future__ import annotations

from mope_deploy.runtime.onnxruntime_backend import OnnxRuntimeEncoder


def test_describe_reports_actual_providers(tiny_bundle, monkeypatch):
    _, _, bundle = tiny_bundle
    enc = OnnxRuntimeEncoder(bundle, providers=["CPUExecutionProvider"], threads=1)
    d = enc.describe()
    assert d["providers"] == enc.image_session.get_providers() == ["CPUExecutionProvider"]
    assert d["device"] == "cpu" and d["requested_providers"] == ["CPUExecutionProvider"]
    # a CUDA request that ORT could not honour: the sessions run on the CPU and describe() says so
    enc.providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    d = enc.describe()
    assert d["device"] == "cpu" and d["providers"] == ["CPUExecutionProvider"]
    assert d["requested_providers"][0] == "CUDAExecutionProvider"
