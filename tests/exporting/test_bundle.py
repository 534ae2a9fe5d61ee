"""The bundle format's one owner: names, the manifest (format-1 manifests upgraded), config validation."""

from __future__ import annotations

import json

import pytest

from mope_deploy.exporting import Bundle, BundleError, ExportConfig, ExportConfigError
from mope_deploy.exporting.bundle import (FORMAT_VERSION, engine_name, onnx_name, program_name, upgrade_manifest,
                                          variant_names)
from mope_deploy.vocab import VARIANTS


def test_names():
    assert onnx_name("vision") == "image_encoder.onnx" and onnx_name("text", "int8") == "text_encoder.int8.onnx"
    assert set(variant_names("optimized").values()) == {"image_encoder.optimized.onnx", "text_encoder.optimized.onnx"}
    assert engine_name("vision", "fp16") == "image_encoder.fp16.engine"
    assert program_name("text", "fp32") == "text_encoder.fp32.ep"
    assert len({onnx_name(t, v) for t in ("vision", "text") for v in VARIANTS}) == 2 * len(VARIANTS)
    with pytest.raises(ValueError, match="unknown tower 'image'"):
        onnx_name("image")
    with pytest.raises(ValueError, match="unknown ONNX variant"):
        onnx_name("vision", "fp8")


def test_a_format_1_bundle_still_opens(tmp_path):
    """Bundles written before the tower rename say "image"; reading them gives the current keys."""
    old = {"format_version": 1, "encoders": {"image": {"file": "image_encoder.onnx"}, "text": {"file": "t"}},
           "variants": {"int8": {"files": {"image": "image_encoder.int8.onnx", "text": "text_encoder.int8.onnx"},
                                 "parity": {"image": {"random": 1e-6}}}},
           "int8": {"image": "image_encoder.int8.onnx", "text": "text_encoder.int8.onnx"},
           "tensorrt": {"engines": {"image": {"file": "image_encoder.fp16.engine"}}},
           "triton": {"models": {"clip_image_onnx": {"tower": "image"}}}}
    for name in ("image_encoder.onnx", "image_encoder.int8.onnx", "text_encoder.int8.onnx"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "manifest.json").write_text(json.dumps(old))
    b = Bundle(tmp_path)
    assert Bundle.is_bundle(tmp_path)
    m = b.manifest
    assert m["format_version"] == FORMAT_VERSION and m["upgraded_from"] == 1
    assert set(m["encoders"]) == {"vision", "text"} and m["variants"]["int8"]["parity"]["vision"]["random"] == 1e-6
    assert m["triton"]["models"]["clip_image_onnx"]["tower"] == "vision"  # deployed names keep "image"
    assert b.variant_files("int8") == {"vision": tmp_path / "image_encoder.int8.onnx",
                                       "text": tmp_path / "text_encoder.int8.onnx"}
    assert b.variant_files("fp16") is None
    assert b.engine("vision") == tmp_path / "image_encoder.fp16.engine"
    assert upgrade_manifest(m) is m  # current manifests pass through


def test_missing_or_broken_manifest_is_a_bundle_error(tmp_path):
    with pytest.raises(BundleError, match="manifest.json not found"):
        Bundle(tmp_path).manifest
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(BundleError, match="cannot read the manifest"):
        Bundle(tmp_path).manifest
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(BundleError, match="no 'config'"):
        Bundle(tmp_path).config()


@pytest.mark.parametrize("changes, message", [
    ({"formats": ("onnx", "coreml")}, "unknown export format 'coreml'"),
    ({"formats": ()}, "no export format"),
    ({"precision": "fp8"}, "unknown precision"),
    ({"batch_sizes": (8, 4)}, "MIN <= OPT <= MAX"),
    ({"opset": 13}, "opset >= 17"),
    ({"exporter": "tf2onnx"}, "unknown exporter"),
    ({"max_recall_drop": -1}, ">= 0 points"),
    ({"eval_limit": 0}, "at least 1 image"),
])
def test_export_config_is_checked_before_any_work(changes, message):
    with pytest.raises(ExportConfigError, match=message):
        ExportConfig().replace(**changes).check()


def test_export_config_records_plain_values():
    c = ExportConfig(formats=["onnx", "onnx", "triton"], batch_sizes=[1, 4, 8], timing_cache=None)
    assert c.formats == ("onnx", "triton") and c.batch_range == (1, 4, 8)
    assert json.loads(json.dumps(c.to_dict()))["formats"] == ["onnx", "triton"]
    assert ExportConfig(precision="int8").needs_eval_data()
    assert ExportConfig(precision="int8", skip_recall_gate=True).needs_eval_data() is None
