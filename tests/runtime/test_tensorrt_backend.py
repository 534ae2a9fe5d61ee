"""The TensorRT backend against a fake ``tensorrt`` module (no GPU or TensorRT here)."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest

import fake_trt_runtime
from mope_deploy.runtime import BackendUnavailableError, BundleError, EncoderInputError
from mope_deploy.runtime.tensorrt_backend import TensorRTEncoder


@pytest.fixture
def trt_bundle(tiny_bundle, tmp_path, monkeypatch):
    model, model_dir, bundle = tiny_bundle
    b = tmp_path / "bundle"
    shutil.copytree(bundle, b)
    fake_trt_runtime.write_engines(b, model_dir, model.config.vision.image_size, model.config.text.context_length,
                                   max_batch=4)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt_runtime.make())
    return model, b


def test_engines_match_slimclip_and_chunk_to_profile(trt_bundle, pil_images, captions):
    import torch

    model, bundle = trt_bundle
    enc = TensorRTEncoder(bundle, device="cpu")
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
    fn = enc.timing_fn("text", model.tokenizer(captions[:3]).numpy())
    out = fn()
    assert out.shape == (3, model.config.embed_dim)


def test_batch_outside_profile_is_refused(trt_bundle):
    model, bundle = trt_bundle
    enc = TensorRTEncoder(bundle, device="cpu")
    s = model.config.vision.image_size
    with pytest.raises(EncoderInputError, match="larger than .*allows \\(4"):
        enc.run_images(np.ones((5, 3, s, s), np.float32))
    with pytest.raises(EncoderInputError, match="outside the engine's optimisation profile"):
        enc.image_engine.check((9, 3, s, s))
    with pytest.raises(EncoderInputError, match="larger than this tensorrt encoder"):
        enc.timing_fn("vision", np.ones((6, 3, s, s), np.float32))


def test_unloadable_or_missing_engine(trt_bundle):
    _, bundle = trt_bundle
    (bundle / "text_encoder.fp32.engine").write_bytes(b"\x00\xffbinary from another TensorRT")
    with pytest.raises(BundleError, match="could not deserialize.*rebuild"):
        TensorRTEncoder(bundle, device="cpu")
    (bundle / "text_encoder.fp32.engine").unlink()
    with pytest.raises(BundleError, match="not found: build the TensorRT engines"):
        TensorRTEncoder(bundle, device="cpu")


def test_engine_for_another_model(trt_bundle, tmp_path):
    import json

    model, bundle = trt_bundle
    spec = json.loads((bundle / "image_encoder.fp32.engine").read_text())
    spec["min"][2] = spec["max"][2] = spec["opt"][2] = 64
    (bundle / "image_encoder.fp32.engine").write_text(json.dumps(spec))
    with pytest.raises(BundleError, match="belong to different models"):
        TensorRTEncoder(bundle, device="cpu")


def test_needs_cuda_and_tensorrt(trt_bundle, monkeypatch):
    import torch

    _, bundle = trt_bundle
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendUnavailableError, match="needs a CUDA GPU"):
        TensorRTEncoder(bundle)  # device defaults to cuda
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendUnavailableError, match="TensorRT 10"):
        TensorRTEncoder(bundle, device="cpu")
