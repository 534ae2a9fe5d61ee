"""The openvino runtime backend: a bundle's IR per tower (or ONNX Runtime's int8 graph where the export timed it
faster), inference precision explicit, batch-invariant int8, and a clear 'unavailable' without openvino."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from mope_deploy.vocab import TOWERS

pytest.importorskip("openvino", reason="the openvino extra: pip install 'mope-deploy[openvino]'")
pytest.importorskip("nncf", reason="the openvino extra: pip install 'mope-deploy[openvino]'")

from mope_deploy.bundle import Bundle, BundleError  # noqa: E402
from mope_deploy.exporting import openvino as ovx  # noqa: E402
from mope_deploy.runtime import openvino_backend as ovb  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    import mope_deploy
    from mope_deploy.exporting.config import EvalInputs, ExportConfig
    from mope_deploy.exporting.pipeline import export_bundle

    model = mope_deploy.load("demo").eval()
    out = tmp_path_factory.mktemp("ovrt") / "bundle"
    ev = EvalInputs.load(model, "synthetic:test", 40)
    export_bundle(model, out, ExportConfig(precision="int8", optimize=False, fused=False, max_recall_drop=100.0),
                  eval_inputs=ev)
    ovx.add_to_bundle(out, model, ev, ovx.OpenVINOExportConfig(threads=1, time_iters=1, calibration_limit=32))
    return model, out, ev


def _images(ev, n=8):
    return ev.images[:n].float().numpy()


def test_manifest_records_the_ir_variants_and_the_per_tower_choice(bundle):
    _, out, _ = bundle
    m = Bundle(out).manifest
    assert {ovx.FP32, ovx.INT8} <= set(m.variants)
    assert m.variants[ovx.INT8].batch_invariant is True and m.variants[ovx.INT8].runtimes == ["openvino"]
    assert set(m.runtime["openvino"].values()) <= {ovx.INT8, "int8"}
    assert Bundle(out).verify() == []  # the IR files are in the manifest's file table


@torch.no_grad()
def test_fp32_ir_encoder_matches_torch(bundle):
    model, out, ev = bundle
    enc = ovb.OpenVINOEncoder(out, threads=1, variant="fp32")
    assert enc.describe()["towers"] == {t: ovx.FP32 for t in TOWERS} and enc.precision == "f32"
    got = enc.run_images(_images(ev, 4))
    assert np.abs(got - model.encode_image(ev.images[:4].float()).numpy()).max() <= 1e-4
    tok = ev.tokens[:4].numpy()
    assert np.abs(enc.run_texts(tok) - model.encode_text(ev.tokens[:4].long()).numpy()).max() <= 1e-4


def test_default_encoder_follows_the_manifest_and_is_batch_invariant(bundle):
    _, out, ev = bundle
    b = Bundle(out)
    enc = ovb.OpenVINOEncoder(out, threads=1)
    assert enc.plan == {t: b.manifest.runtime["openvino"][t] for t in TOWERS}
    x = _images(ev)
    alone = np.concatenate([enc.run_images(x[i:i + 1]) for i in range(8)])
    for bs in (3, 8):
        together = np.concatenate([enc.run_images(x[i:i + bs]) for i in range(0, 8 - 8 % bs, bs)])
        a = alone[:len(together)] / np.linalg.norm(alone[:len(together)], axis=-1, keepdims=True)
        t = together / np.linalg.norm(together, axis=-1, keepdims=True)
        assert np.abs(a - t).max() <= 1e-6
    texts = ["a red circle", "two blue squares", "a green triangle"]
    e3 = enc.encode_texts(texts)
    assert np.abs(e3[1] - enc.encode_texts(texts[1:2])[0]).max() <= 1e-6


def test_a_tower_picked_for_onnxruntime_runs_the_bundles_int8_graph(bundle, tmp_path):
    import shutil

    from mope_deploy.runtime.onnxruntime_backend import OnnxRuntimeEncoder

    _, out, ev = bundle
    copy = tmp_path / "b"
    shutil.copytree(out, copy)
    b = Bundle(copy)
    m = b.manifest
    m.runtime["openvino"] = {"vision": ovx.INT8, "text": "int8"}
    b.write_manifest(m)
    enc = ovb.OpenVINOEncoder(copy, threads=1)
    assert enc.describe()["towers"] == {"vision": ovx.INT8, "text": "int8"}
    assert enc.files["vision"].endswith(".xml") and enc.files["text"].endswith(".onnx")
    ort = OnnxRuntimeEncoder(copy, threads=1, variant="int8")
    tok = ev.tokens[:5].numpy()
    np.testing.assert_array_equal(enc.run_texts(tok), ort.run_texts(tok))
    # forcing the int8 IR for both towers
    assert ovb.OpenVINOEncoder(copy, threads=1, variant="int8").plan == {t: ovx.INT8 for t in TOWERS}


def test_bundle_without_ir_says_how_to_export_it(tmp_path, bundle):
    import shutil

    _, out, _ = bundle
    copy = tmp_path / "plain"
    shutil.copytree(out, copy)
    b = Bundle(copy)
    m = b.manifest
    for n in ovx.VARIANTS:
        m.variants.pop(n)
    m.runtime.pop("openvino")
    b.write_manifest(m)
    with pytest.raises(BundleError, match="-f openvino"):
        ovb.OpenVINOEncoder(copy)
    with pytest.raises(BundleError, match="unknown OpenVINO variant"):
        ovb.tower_plan(Bundle(out), "fp16")


def test_without_openvino_the_backend_is_unavailable_with_the_install_command(monkeypatch, bundle):
    _, out, _ = bundle
    monkeypatch.setitem(sys.modules, "openvino", None)  # the import is blocked
    why = ovb.openvino_status()
    assert why is not None and "pip install 'mope-deploy[openvino]'" in why
    from mope_deploy.device import BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match="mope-deploy\\[openvino\\]"):
        ovb.OpenVINOEncoder(out)


def test_the_registry_lists_openvino_as_unavailable_with_the_install_command(monkeypatch):
    from mope_deploy.runtime import available_backends, backend_status, check_backend
    from mope_deploy.device import BackendUnavailableError

    assert "openvino" in available_backends() and backend_status("openvino") is None
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert "openvino" not in available_backends()
    assert "pip install 'mope-deploy[openvino]'" in backend_status("openvino")
    with pytest.raises(BackendUnavailableError, match="mope-deploy\\[openvino\\]"):
        check_backend("openvino")


def test_open_encoder_openvino_on_a_bundle_and_on_a_model(bundle):
    from mope_deploy.models import SlimCLIP
    from mope_deploy.models.tiny import tiny_config
    from mope_deploy.runtime import open_encoder

    _, out, ev = bundle
    enc = open_encoder(out, "openvino", threads=1)
    assert enc.backend == "openvino"
    torch.manual_seed(0)
    tiny = SlimCLIP(tiny_config()).eval()
    enc2 = open_encoder(tiny, "openvino", threads=1)  # exported (ORT calibrated int8 + IR) into a folder it owns
    assert enc2.describe()["variant"] in (ovx.INT8, ovx.FP32)
    assert enc2.encode_texts(["a"]).shape == (1, tiny.config.embed_dim)
