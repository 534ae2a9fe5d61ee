"""A sparse model exports like any other; the manifest records its sparsity, and a valid 2:4 model gets
TensorRT's sparse-weights flag without being asked (tested against the fake ``tensorrt``)."""

from __future__ import annotations

import pytest
import torch

from export_helpers import tiny
from mope_deploy.bundle import EngineSet
from mope_deploy.exporting import ExportConfig, export_bundle
from mope_deploy.exporting import tensorrt as trt_mod
from mope_deploy.sparsity import SparsifySpec, sparsify


@pytest.fixture
def fake_trt(monkeypatch):
    """Record what the orchestrator asks the TensorRT builder for (the builder itself is tested elsewhere)."""
    calls = []

    def build_engines(out_dir, model, build, **kw):
        calls.append(build)
        return EngineSet(format="tensorrt", version="fake", precision=build.precision, engines={},
                         details={"sparse_weights": build.sparse})

    monkeypatch.setattr(trt_mod, "require_tensorrt", lambda *a, **k: None)
    monkeypatch.setattr(trt_mod, "build_engines", build_engines)
    return calls


def _sparse(pattern: str, sparsity=None):
    m = tiny()
    sparsify(m, SparsifySpec(method="magnitude", pattern=pattern, sparsity=sparsity), progress=False)
    return m


def _flag(calls) -> bool:
    return calls[-1].sparse


def test_2_4_model_sets_sparse_weights_flag(tmp_path, fake_trt):
    out = tmp_path / "b"
    m = export_bundle(_sparse("2:4"), out, ExportConfig(formats=["tensorrt"], precision="fp32", exporter="legacy",
                                                        optimize=False))
    assert _flag(fake_trt) is True
    sp = m.sparsity
    assert sp.pattern == "2:4" and sp.sparsity == pytest.approx(0.5)
    assert sp.tensorrt_sparse_weights and sp.auto_sparse_weights and sp.recorded["method"] == "magnitude"
    assert sp.towers["vision"]["blocks"] == [pytest.approx(0.5)] * 2


def test_unstructured_and_dense_models_keep_the_flag_off(tmp_path, fake_trt):
    out = tmp_path / "u"
    m = export_bundle(_sparse("unstructured", 0.5), out, ExportConfig(formats=["tensorrt"], precision="fp32",
                                                                      exporter="legacy", optimize=False))
    assert _flag(fake_trt) is False
    assert m.sparsity.pattern == "unstructured" and not m.sparsity.tensorrt_sparse_weights
    d = export_bundle(tiny(), tmp_path / "d", ExportConfig(formats=["onnx"], exporter="legacy", optimize=False))
    assert d.sparsity is None


def test_sparse_onnx_graph_keeps_the_zeros(tmp_path):
    import onnx
    from onnx import numpy_helper

    model = _sparse("2:4")
    out = tmp_path / "o"
    m = export_bundle(model, out, ExportConfig(formats=["onnx"], exporter="legacy", optimize=False))
    assert m.sparsity.pattern == "2:4"
    g = onnx.load(str(out / "image_encoder.onnx"))
    zeros = sum(int((numpy_helper.to_array(t) == 0).sum()) for t in g.graph.initializer)
    expected = sum(int((p == 0).sum()) for n, p in model.visual.named_parameters() if "blocks" in n and "weight" in n)
    assert zeros >= expected > 0
    assert torch.is_tensor(model.visual.blocks[0].mlp.c_fc.weight)
