"""The TensorRT backend against the TensorRT 11 fake (no GPU or TensorRT here): engines built by the real
exporter, run through the shared engine runner on its own stream, with the errors a user meets."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
import torch

from fakes import FakeStream, install_tensorrt
from mope_deploy import device as device_mod
from mope_deploy.bundle import Bundle, write_manifest
from mope_deploy.exporting import tensorrt as trt_export
from mope_deploy.runtime import BackendUnavailableError, BundleError, EncoderInputError
from mope_deploy.runtime.tensorrt_backend import TensorRTEncoder


@pytest.fixture(scope="module")
def engines(tiny_bundle, tmp_path_factory):
    """The tiny bundle with fp32 engines (batch 1..4) built by the exporter against the fake."""
    model, _, bundle = tiny_bundle
    b = tmp_path_factory.mktemp("trt") / "bundle"
    shutil.copytree(bundle, b)
    with pytest.MonkeyPatch.context() as mp:
        install_tensorrt(mp, 11)
        info = trt_export.build_engines(b, model, trt_export.EngineBuild("fp32", (1, 2, 4), device="cpu"))
    m = Bundle(b).manifest
    m.engines["tensorrt"] = info
    write_manifest(b, m)
    return model, b


@pytest.fixture
def trt_bundle(engines, monkeypatch):
    fake = install_tensorrt(monkeypatch, 11)
    return (*engines, fake)


def test_engines_match_slimclip_on_their_own_stream(trt_bundle, pil_images, captions):
    model, bundle, fake = trt_bundle
    enc = TensorRTEncoder(bundle)
    assert enc.max_batch == 4 and enc.image_engine.path.name == "image_encoder.fp32.engine"
    img = enc.encode_images(pil_images, batch_size=64)  # 5 images: split into 4 + 1 by the profile
    txt = enc.encode_texts(captions)
    with torch.no_grad():
        px = torch.stack([model.preprocess(im.convert("RGB")) for im in pil_images])
        ref_img = model.encode_image(px, normalize=True).numpy()
        ref_txt = model.encode_text(model.tokenizer(captions), normalize=True).numpy()
    np.testing.assert_allclose(img, ref_img, atol=1e-5)
    np.testing.assert_allclose(txt, ref_txt, atol=1e-5)
    assert enc.image_engine.context.executions == 2
    # every enqueue went to the runner's own stream (never the legacy default stream 0), and was waited for
    assert set(fake.RECORD["streams"]) == {FakeStream.handle}
    assert enc.image_engine.stream.syncs == 2 and enc.image_engine.stream is not enc.text_engine.stream
    fn = enc.timing_fn("text", model.tokenizer(captions[:3]).numpy())
    out = fn()
    enc.synchronize()
    assert out.shape == (3, model.config.embed_dim)
    assert enc.describe()["streams"] == "own CUDA stream per engine"


def test_batch_outside_profile_is_refused(trt_bundle):
    model, bundle, _ = trt_bundle
    enc = TensorRTEncoder(bundle)
    s = model.config.vision.image_size
    with pytest.raises(EncoderInputError, match="larger than .*allows \\(4"):
        enc.run_images(np.ones((5, 3, s, s), np.float32))
    with pytest.raises(EncoderInputError, match="outside the engine's optimisation profile"):
        enc._enqueue(enc.image_engine, torch.ones(9, 3, s, s))
    with pytest.raises(EncoderInputError, match="larger than this tensorrt encoder"):
        enc.timing_fn("vision", np.ones((6, 3, s, s), np.float32))


def test_unloadable_or_missing_engine(trt_bundle, tmp_path):
    _, bundle, _ = trt_bundle
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    (b / "text_encoder.fp32.engine").write_bytes(b"\x00\xffbinary from another TensorRT")
    with pytest.raises(BundleError, match="could not deserialize.*rebuild"):
        TensorRTEncoder(b)
    (b / "text_encoder.fp32.engine").unlink()
    with pytest.raises(BundleError, match="not found: build the TensorRT engines"):
        TensorRTEncoder(b)


def test_engine_from_another_tensorrt_generation(trt_bundle, monkeypatch):
    _, bundle, _ = trt_bundle
    install_tensorrt(monkeypatch, 10)  # engines built by TensorRT 11 do not load in 10
    with pytest.raises(BundleError, match="could not deserialize"):
        TensorRTEncoder(bundle)


def test_engine_for_another_model(trt_bundle, tmp_path):
    from mope_deploy.exporting.onnx import write_onnx
    from mope_deploy.models import SlimCLIP
    from mope_deploy.models.tiny import tiny_config

    _, bundle, _ = trt_bundle
    other = SlimCLIP(tiny_config(image_size=48)).eval()
    d = tmp_path / "other"
    d.mkdir()
    write_onnx(other, d)
    trt_export.build_engines(d, other, trt_export.EngineBuild("fp32", (1, 2, 4), device="cpu"))
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    shutil.copy(d / "image_encoder.fp32.engine", b / "image_encoder.fp32.engine")
    with pytest.raises(BundleError, match="belong to different models"):
        TensorRTEncoder(b)


def test_needs_cuda_device_and_tensorrt(trt_bundle, monkeypatch):
    _, bundle, _ = trt_bundle
    with pytest.raises(BackendUnavailableError, match="CUDA GPU, not on 'cpu'"):
        TensorRTEncoder(bundle, device="cpu")
    monkeypatch.setattr(device_mod, "cuda_available", lambda: False)
    with pytest.raises(BackendUnavailableError, match="CUDA GPU"):
        TensorRTEncoder(bundle)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed"):
        TensorRTEncoder(bundle)
