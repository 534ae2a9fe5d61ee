"""The export pipeline with fused/int8 ORT graphs: gates, refusals, manifest runtimes, the runtime using them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from export_helpers import matched_dataset, ort_run, tiny
from mope_deploy.exporting import ExportConfig, ExportConfigError, export_bundle
from mope_deploy.exporting import ort_fused as ort_fused_mod
from mope_deploy.exporting.pipeline import preflight


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("f")
    model = tiny()
    return model, root, str(matched_dataset(model, root / "data"))


def test_fused_graphs_are_written_by_default_and_used_by_the_runtime(setup):
    from mope_deploy.bench.run import BenchSettings, run_bench
    from mope_deploy.runtime import open_encoder
    from mope_deploy.runtime.ort_settings import SessionSettings

    model, root, data = setup
    out = root / "fp32"
    m = export_bundle(model, out, ExportConfig(eval_data=data))
    v = m.variants
    assert set(v) == {"fp32", "optimized", "fused"}
    assert (out / "image_encoder.fused.onnx").is_file() and (out / "text_encoder.fused.onnx").is_file()
    assert v["fused"].details["attention"]["vision"] == [{"num_heads": 4, "hidden": 64, "unidirectional": 0}] * 2
    assert v["fused"].recall_gate == "passed"
    assert m.runtime == {"onnxruntime": {"vision": "fused", "text": "fused"},
                         "portable": {"vision": "fp32", "text": "fp32"}}
    settings = SessionSettings(graph_optimization="extended", allow_spinning=False)
    enc = open_encoder(out, "onnxruntime", threads=1, ort_settings=settings)
    d = enc.describe()
    assert d["variant"] == "fused" and d["files"]["image"] == "image_encoder.fused.onnx"
    assert d["session_settings"] == {**settings.to_dict(), "intra_op_threads": 1}
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32)
    assert np.abs(enc.run_images(x) - ort_run(out / "image_encoder.onnx", x)).max() < 1e-4
    rep = run_bench([out], ["onnxruntime"], BenchSettings([2], warmup=0, iters=1, threads=1, ort_settings=settings))
    assert rep["settings"]["ort_settings"]["graph_optimization"] == "extended"
    assert rep["encoders"][0]["variant"] == "fused"


def test_a_fused_graph_that_fails_parity_is_not_written(setup, monkeypatch):
    model, root, _ = setup
    real = ort_fused_mod.write_fused_onnx

    def off_by_a_head(model, out_dir, **kw):  # a plausible bug: one block exported with the wrong head count
        info = real(model, out_dir, **kw)
        path = out_dir / info["files"]["text"]
        g = onnx.load(str(path))
        node = next(n for n in g.graph.node if n.op_type == "Attention")
        next(a for a in node.attribute if a.name == "num_heads").i = 2
        onnx.save(g, str(path))
        info["attention"]["text"][0]["num_heads"] = 2
        return info

    monkeypatch.setattr(ort_fused_mod, "write_fused_onnx", off_by_a_head)
    out = root / "refused"
    m = export_bundle(model, out, ExportConfig(optimize=False))
    assert "fused" not in m.variants and m.runtime_variant("onnxruntime", "vision") == "fp32"
    assert "differ from the plain ones" in m.refused_variants["fused"]
    assert not list(out.glob("*fused*"))


@pytest.mark.slow
def test_static_qdq_int8_is_portable_and_sensitivity_keeps_nodes_fp32(setup):
    model, root, data = setup
    out = root / "static"
    m = export_bundle(model, out, ExportConfig(precision="int8", int8_method="static", int8_fp32_nodes=1,
                                               eval_data=data, max_recall_drop=100.0))
    v = m.variants["int8"]
    assert v.made_from == "fp32" and v.method["format"] == "QDQ" and v.runtimes == ["any"]
    assert m.runtime == {"onnxruntime": {"vision": "int8", "text": "int8"},
                         "portable": {"vision": "int8", "text": "int8"}}
    for tower, name in (("vision", "image_encoder.int8.onnx"), ("text", "text_encoder.int8.onnx")):
        kept = v.details["fp32_nodes"][tower]
        assert len(kept) == 1 and v.details["sensitivity"][tower]["kept_fp32"] == kept
        assert kept[0] == v.details["sensitivity"][tower]["top"][0]["node"]  # the most harmful one, as measured
        g = onnx.load(str(out / name))
        producers = {o: n for n in g.graph.node for o in n.output}
        node = next(n for n in g.graph.node if n.name == kept[0])
        assert node.op_type == "MatMul" and producers[node.input[0]].op_type != "DequantizeLinear"
    assert v.details["agreement_vs_fp32"]["vision"]["min_cosine"] > 0.99


def test_int8_settings_are_checked_before_any_work(setup):
    with pytest.raises(ExportConfigError, match="int8 method"):
        preflight(ExportConfig(precision="int8", int8_method="weekly", skip_recall_gate=True))
    with pytest.raises(ExportConfigError, match="static calibrates"):
        preflight(ExportConfig(precision="int8", int8_method="static", skip_recall_gate=True))
    with pytest.raises(ExportConfigError, match="int8-fp32-nodes"):
        preflight(ExportConfig(precision="int8", int8_fp32_nodes=2, skip_recall_gate=True))
    with pytest.raises(ExportConfigError, match="int8_fp32_nodes"):
        preflight(ExportConfig(int8_fp32_nodes=-1))
