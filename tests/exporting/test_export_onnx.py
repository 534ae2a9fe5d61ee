"""ONNX export: dynamic batch, int32 tokens and pooling, opset, external data, parity gate and atomicity."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from export_helpers import ort_run, tiny
from mope_deploy.exporting import EvalInputs, ExportConfig, ExportError, export_onnx
from mope_deploy.bundle import Bundle
from mope_deploy.models.identity import file_sha256 as sha256_file
from mope_deploy.models.identity import weights_hash
from mope_deploy.exporting.onnx import TextEncoder, pool_positions, random_tokens, tokenize
from mope_deploy.models import SlimCLIP
from mope_deploy.models.tiny import tiny_config


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    model = tiny()
    out = tmp_path_factory.mktemp("b") / "bundle"
    manifest = export_onnx(model, out, ExportConfig(exporter="legacy", batch_sizes=(1, 4, 8)))
    return model, out, manifest


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_dynamic_batch_matches_torch(bundle, batch):
    model, out, _ = bundle
    g = torch.Generator().manual_seed(batch)
    images = torch.randn(batch, 3, 32, 32, generator=g)
    tokens = random_tokens(model, batch, g)
    with torch.no_grad():
        ref_img = model.encode_image(images).numpy()
        ref_txt = model.encode_text(tokens.long()).numpy()
    got_img = ort_run(out / "image_encoder.onnx", images)
    got_txt = ort_run(out / "text_encoder.onnx", tokens)
    assert got_img.shape == (batch, 32) and got_txt.shape == (batch, 32)
    np.testing.assert_allclose(got_img, ref_img, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got_txt, ref_txt, atol=1e-4, rtol=0)


def test_graph_contract(bundle):
    """Names, dtypes, symbolic batch axis, opset >= 17, and no ArgMax over integers anywhere."""
    _, out, manifest = bundle
    for file, name, elem in (("image_encoder.onnx", "image", onnx.TensorProto.FLOAT),
                             ("text_encoder.onnx", "tokens", onnx.TensorProto.INT32)):
        m = onnx.load(str(out / file))
        (inp,), (outp,) = m.graph.input, m.graph.output
        assert inp.name == name and inp.type.tensor_type.elem_type == elem
        assert outp.name == "embedding" and outp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert inp.type.tensor_type.shape.dim[0].dim_param and outp.type.tensor_type.shape.dim[0].dim_param
        assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17
        inferred = onnx.shape_inference.infer_shapes(m)
        types = {v.name: v.type.tensor_type.elem_type for v in
                 list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
        for node in m.graph.node:
            if node.op_type == "ArgMax":
                assert types[node.input[0]] == onnx.TensorProto.FLOAT, f"ArgMax over {types[node.input[0]]}"
    assert manifest.opset >= 17
    assert manifest.encoders["text"].inputs[0].to_dict() == {"name": "tokens", "dtype": "int32", "shape": ["batch", 16]}


def test_manifest_hashes_and_parity(bundle):
    model, out, manifest = bundle
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest.to_dict() and Bundle(out).manifest == manifest
    assert set(manifest.files) == {"image_encoder.onnx", "text_encoder.onnx"}
    for rel, info in manifest.files.items():
        assert info.sha256 == sha256_file(out / rel) and info.bytes == (out / rel).stat().st_size
    assert Bundle(out).verify() == []
    p = manifest.parity
    assert p["passed"] and 0 < p["max_abs"] <= 1e-4
    assert set(p["text"]) == {"random", "real"}  # real = the model's tokenizer on real captions
    assert manifest.config == model.config.to_dict()
    assert manifest.source.arch_hash == model.config.arch_hash()
    assert manifest.source.weights_hash == weights_hash(model)
    assert manifest.versions["onnxruntime"] and manifest.versions["torch"]
    assert manifest.batch_sizes == {"min": 1, "opt": 4, "max": 8}
    assert list(manifest.variants) == ["fp32"] and manifest.runtime["onnxruntime"] == {"vision": "fp32", "text": "fp32"}


@pytest.mark.parametrize("pool", ["argmax", "eos", "first", "last"])
def test_pool_positions_match_the_model(pool):
    """The export-safe pooling equals TextTower.pool_index, ties and missing EOT included."""
    cfg = tiny_config(vocab_size=500)
    cfg.text.pool, cfg.text.eos_id = pool, 7
    model = SlimCLIP(cfg).eval()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 500, (64, 16), generator=g)
    tokens[:8] = 3  # all ties
    tokens[8, 5] = tokens[8, 9] = 7  # two EOTs: the first counts
    got = pool_positions(tokens.to(torch.int32), pool, 7)
    assert torch.equal(got, model.text.pool_index(tokens))


def test_eos_pooling_when_eot_is_not_the_highest_id(tmp_path):
    """A tokenizer whose EOT (id 2) is below other ids: argmax pooling would pick a different position."""
    cfg = tiny_config(vocab_size=1000)
    cfg.text.pool, cfg.text.eos_id = "eos", 2
    torch.manual_seed(1)
    model = SlimCLIP(cfg).eval()
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(10, 1000, (3, 16), generator=g)
    tokens[0, 4], tokens[1, 9], tokens[2, 15] = 2, 2, 2
    tokens[0, 5:] = 0
    with pytest.raises(ExportError, match="fix config.tokenizer"):  # the tiny config keeps CLIP's tokenizer
        export_onnx(model, tmp_path / "b", ExportConfig(exporter="legacy"))
    export_onnx(model, tmp_path / "b", ExportConfig(exporter="legacy"), EvalInputs(tokens=tokens.to(torch.int32)))
    got = ort_run(tmp_path / "b" / "text_encoder.onnx", tokens.to(torch.int32))
    with torch.no_grad():
        ref = model.encode_text(tokens).numpy()
        cfg.text.pool = "argmax"  # what an exporter that assumes CLIP's convention would compute
        wrong = TextEncoder(model)(tokens.to(torch.int32)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    assert np.abs(wrong - ref).max() > 1e-2


def test_normalized_embeddings(tmp_path):
    model = tiny()
    export_onnx(model, tmp_path / "b", ExportConfig(exporter="legacy", normalize=True))
    tokens = tokenize(model, ["a photo of a cat", "two dogs"])
    got = ort_run(tmp_path / "b" / "text_encoder.onnx", tokens)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(got, model.encode_text(tokens.long(), normalize=True).numpy(), atol=1e-4)
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["normalize"] is True


def test_external_data(tmp_path):
    model = tiny()
    manifest = export_onnx(model, tmp_path / "b", ExportConfig(exporter="legacy", external_data=True))
    out = tmp_path / "b"
    assert (out / "image_encoder.onnx.data").is_file() and (out / "text_encoder.onnx.data").is_file()
    assert (out / "image_encoder.onnx").stat().st_size < (out / "image_encoder.onnx.data").stat().st_size
    assert {"image_encoder.onnx.data", "text_encoder.onnx.data"} <= set(manifest.files)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(ort_run(out / "image_encoder.onnx", x), model.encode_image(x).numpy(), atol=1e-4)


def test_dynamo_exporter_keeps_batch_dynamic(tmp_path):
    """The default ("auto" = dynamo, lower peak memory) path, variants included."""
    from mope_deploy.exporting import export_bundle

    model = tiny(depth=1)
    out = tmp_path / "b"
    manifest = export_bundle(model, out, ExportConfig(precision="int8", skip_recall_gate=True))
    assert manifest.exporter == "dynamo" and manifest.opset >= 17
    for b in (1, 3):
        tokens = random_tokens(model, b)
        with torch.no_grad():
            ref = model.encode_text(tokens.long()).numpy()
        np.testing.assert_allclose(ort_run(out / "text_encoder.onnx", tokens), ref, atol=1e-4)
        np.testing.assert_allclose(ort_run(out / "text_encoder.optimized.onnx", tokens), ref, atol=1e-4)
    assert manifest.variants["int8"].details["agreement_vs_fp32"]["text"]["min_cosine"] > 0.99


def test_failed_parity_leaves_nothing(tmp_path):
    model = tiny()
    out = tmp_path / "b"
    with pytest.raises(ExportError, match=r"differs from torch by .* \(> atol"):
        export_onnx(model, out, ExportConfig(exporter="legacy", atol=1e-12))
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temp dir left behind either


def test_failed_export_keeps_previous_bundle(tmp_path):
    out = tmp_path / "b"
    export_onnx(tiny(), out, ExportConfig(exporter="legacy"))
    before = {p.name: sha256_file(p) for p in out.iterdir()}
    with pytest.raises(ExportError):
        export_onnx(tiny(seed=5), out, ExportConfig(exporter="legacy", atol=1e-12))
    assert {p.name: sha256_file(p) for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["b"]
    assert Bundle(out).verify() == []
    with open(out / "text_encoder.onnx", "ab") as f:  # a corrupted file is caught by its manifest hash
        f.write(b"\0")
    assert Bundle(out).verify() == ["text_encoder.onnx"]


@pytest.mark.parametrize("kwargs, message", [
    ({"opset": 13}, "opset >= 17"),
    ({"batch_sizes": (8, 4, 16)}, "MIN <= OPT <= MAX"),
    ({"batch_sizes": (0, 1, 2)}, "positive integers"),
    ({"exporter": "onnxmltools"}, "unknown exporter"),
])
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        export_onnx(tiny(), tmp_path / "b", ExportConfig(**kwargs))
    assert not (tmp_path / "b").exists()


def test_real_photos_parity(tmp_path, flickr_dir):
    """Parity on real images and captions from the shared Flickr sample (preprocessed by the model)."""
    from mope_deploy.exporting import export_bundle

    model = tiny()
    manifest = export_bundle(model, tmp_path / "b", ExportConfig(eval_data=str(flickr_dir), eval_limit=6,
                                                                 exporter="legacy", optimize=False))
    p = manifest.parity
    assert p["passed"] and set(p["vision"]) == {"random", "real"}
    assert p["vision"]["real"]["n"] == 6 and p["vision"]["real"]["max_abs"] <= 1e-4
    assert manifest.variants["fp32"].recall["recall_mean"] >= 0
    assert manifest.eval["n_images"] == 6
