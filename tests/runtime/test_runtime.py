"""The encoder API: same embeddings from every backend as from SlimCLIP itself, unit rows, clear errors."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from mope_deploy.runtime import (BACKENDS, BackendUnavailableError, BundleError, EncoderInputError, available_backends,
                                 check_backend, l2_normalize, open_encoder)
from mope_deploy.runtime.onnxruntime_backend import OnnxRuntimeEncoder



def naive_normalize(rows):
    out = []
    for r in rows:
        n = math.sqrt(sum(float(v) * float(v) for v in r))
        out.append([float(v) / n if n > 0 else 0.0 for v in r])
    return np.array(out, dtype=np.float32)


def reference_embeddings(model, images, texts):
    """What SlimCLIP computes with its own preprocessing, tokenizer and normalisation."""
    with torch.no_grad():
        px = torch.stack([model.preprocess(im.convert("RGB")) for im in images])
        img = model.encode_image(px, normalize=True).numpy()
        txt = model.encode_text(model.tokenizer(texts), normalize=True).numpy()
    return img, txt


def test_l2_normalize_matches_naive_reference():
    x = np.random.default_rng(1).standard_normal((6, 9)).astype(np.float32) * 7
    x[2] = 0.0  # a zero row stays zero (no NaN)
    got = l2_normalize(x)
    np.testing.assert_allclose(got, naive_normalize(x), rtol=1e-6, atol=1e-7)
    assert got.dtype == np.float32 and not np.isnan(got).any()


def test_torch_encoder_matches_slimclip(tiny_bundle, pil_images, captions):
    model, _, _ = tiny_bundle
    enc = open_encoder(model, "torch", device="cpu")
    img, txt = enc.encode_images(pil_images), enc.encode_texts(captions)
    ref_img, ref_txt = reference_embeddings(model, pil_images, captions)
    assert img.dtype == np.float32 and img.shape == (5, model.config.embed_dim)
    np.testing.assert_allclose(img, ref_img, atol=1e-5)
    np.testing.assert_allclose(txt, ref_txt, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    # chunking does not change the result
    np.testing.assert_allclose(enc.encode_images(pil_images, batch_size=2), img, atol=1e-5)
    np.testing.assert_allclose(enc.encode_texts(captions, batch_size=3), txt, atol=1e-5)


def test_torch_backend_loads_model_directory(tiny_bundle, pil_images, captions):
    model, model_dir, _ = tiny_bundle
    enc = open_encoder(str(model_dir), "torch", device="cpu")
    ref_img, _ = reference_embeddings(model, pil_images[:2], captions[:1])
    np.testing.assert_allclose(enc.encode_images(pil_images[:2]), ref_img, atol=1e-5)


@pytest.mark.parametrize("variant", ["fp32", "optimized"])
def test_onnxruntime_matches_torch(tiny_bundle, pil_images, captions, variant):
    model, _, bundle = tiny_bundle
    enc = open_encoder(bundle, "onnxruntime", threads=1, variant=variant)
    assert enc.describe()["variant"] == variant
    img, txt = enc.encode_images(pil_images), enc.encode_texts(captions)
    ref_img, ref_txt = reference_embeddings(model, pil_images, captions)
    np.testing.assert_allclose(img, ref_img, atol=1e-4)
    np.testing.assert_allclose(txt, ref_txt, atol=1e-4)
    assert img.dtype == np.float32


def test_onnxruntime_int8_close_to_fp32(tiny_bundle, pil_images, captions, tmp_path):
    model, _, bundle = tiny_bundle
    enc = open_encoder(bundle, "onnxruntime-int8", threads=1, work_dir=tmp_path)
    assert enc.backend == "onnxruntime-int8" and (tmp_path / "image_encoder.int8.onnx").is_file()
    assert not (bundle / "image_encoder.int8.onnx").exists()  # never writes into the user's bundle
    img, txt = enc.encode_images(pil_images), enc.encode_texts(captions)
    ref_img, ref_txt = reference_embeddings(model, pil_images, captions)
    cos_img, cos_txt = (img * ref_img).sum(1), (txt * ref_txt).sum(1)
    assert cos_img.min() > 0.98 and cos_txt.min() > 0.98, (cos_img, cos_txt)
    assert np.abs(img - ref_img).max() > 0  # it really is a different (quantised) graph


def test_torch_compile_wiring(tiny_bundle, pil_images, captions):
    """torch.compile's graph capture with the eager backend (inductor's C++ build is too slow for CI)."""
    model, _, _ = tiny_bundle
    from mope_deploy.runtime.torch_backend import TorchEncoder

    enc = TorchEncoder(model, device="cpu", compile=True, compile_backend="eager")
    assert enc.backend == "torch-compile"
    ref_img, ref_txt = reference_embeddings(model, pil_images, captions)
    np.testing.assert_allclose(enc.encode_images(pil_images), ref_img, atol=1e-5)
    np.testing.assert_allclose(enc.encode_texts(captions), ref_txt, atol=1e-5)


def test_unknown_backend_lists_available():
    with pytest.raises(BackendUnavailableError) as e:
        open_encoder("demo", "tensorflow")
    msg = str(e.value)
    assert "tensorflow" in msg and "torch" in msg and "Available here" in msg
    assert set(available_backends()) <= set(BACKENDS) and "torch" in available_backends()


def test_tensorrt_unavailable_here_is_clear(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", None)  # import fails like a missing package
    import importlib.util
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorrt" else object())
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed.*Available here: torch"):
        check_backend("tensorrt")


def test_missing_and_mismatched_bundle_files(tiny_bundle, tmp_path):
    _, _, bundle = tiny_bundle
    broken = tmp_path / "b1"
    shutil.copytree(bundle, broken)
    (broken / "text_encoder.onnx").unlink()
    with pytest.raises(BundleError, match="text_encoder.onnx not found"):
        OnnxRuntimeEncoder(broken)
    # a manifest describing another model (different image size) than the graphs
    other = tmp_path / "b2"
    shutil.copytree(bundle, other)
    m = json.loads((other / "manifest.json").read_text())
    m["config"]["vision"]["image_size"] = 64
    m["config"]["preprocess"]["size"] = 64
    (other / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="different models"):
        OnnxRuntimeEncoder(other, variant="fp32")
    # no manifest at all
    bare = tmp_path / "b3"
    bare.mkdir()
    shutil.copy(bundle / "image_encoder.onnx", bare)
    shutil.copy(bundle / "text_encoder.onnx", bare)
    with pytest.raises(BundleError, match="manifest.json not found"):
        OnnxRuntimeEncoder(bare)
    # a corrupt graph
    bad = tmp_path / "b4"
    shutil.copytree(bundle, bad)
    (bad / "image_encoder.onnx").write_bytes(b"not onnx")
    with pytest.raises(BundleError, match="cannot load"):
        OnnxRuntimeEncoder(bad, variant="fp32")


def test_torch_backend_refuses_bare_bundle(tiny_bundle):
    _, _, bundle = tiny_bundle
    with pytest.raises(BundleError, match="needs the model itself"):
        open_encoder(bundle, "torch")


def test_bad_inputs_are_clear(tiny_bundle):
    model, _, bundle = tiny_bundle
    for enc in (open_encoder(model, "torch", device="cpu"), open_encoder(bundle, "onnxruntime", threads=1)):
        with pytest.raises(EncoderInputError, match="list of strings"):
            enc.encode_texts("a single string")
        with pytest.raises(EncoderInputError, match=r"\[B, 3, 32, 32\]"):
            enc.run_images(np.ones((2, 3, 16, 16), np.float32))
        with pytest.raises(EncoderInputError, match="integer ids"):
            enc.run_texts(np.ones((2, 16), np.float32))
        with pytest.raises(EncoderInputError, match="PIL images"):
            enc.encode_images([np.zeros((8, 8, 3))])
        assert enc.encode_texts([]).shape == (0, model.config.embed_dim)


def test_open_clip_backend_needs_a_name(tiny_bundle):
    model, _, _ = tiny_bundle
    with pytest.raises(ValueError, match="open_clip models by name"):
        open_encoder(model, "open_clip")
