"""The bundle contract: file names, the typed manifest (round trip), old manifests upgraded or refused."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from mope_deploy.bundle import (SCHEMA_VERSION, Bundle, BundleError, Manifest, Variant, engine_name, onnx_name,
                                program_name, read_manifest, variant_names, write_manifest)
from mope_deploy.bundle.manifest import upgrade
from mope_deploy.vocab import TOWERS, VARIANTS

FIXTURE = Path(__file__).parent / "fixtures" / "manifest_v2.json"  # written by the format-2 exporter
REEXPORT = "mope export MODEL --out DIR --force"


def test_names():
    assert onnx_name("vision") == "image_encoder.onnx" and onnx_name("text", "int8") == "text_encoder.int8.onnx"
    assert set(variant_names("optimized").values()) == {"image_encoder.optimized.onnx", "text_encoder.optimized.onnx"}
    assert engine_name("vision", "fp16") == "image_encoder.fp16.engine"
    assert program_name("text", "fp32") == "text_encoder.fp32.ep"
    assert len({onnx_name(t, v) for t in TOWERS for v in VARIANTS}) == 2 * len(VARIANTS)
    with pytest.raises(ValueError, match="unknown tower 'image'"):
        onnx_name("image")
    with pytest.raises(ValueError, match="unknown ONNX variant"):
        onnx_name("vision", "fp8")


def _bundle_from_fixture(tmp_path: Path) -> Path:
    root = tmp_path / "old"
    root.mkdir()
    shutil.copy(FIXTURE, root / "manifest.json")
    for rel in json.loads(FIXTURE.read_text())["files"]:
        (root / rel).write_bytes(b"x")
    return root


def test_a_format_2_manifest_from_the_old_exporter_is_upgraded(tmp_path):
    old = json.loads(FIXTURE.read_text())
    assert old["format_version"] == 2 and "int8" in old  # what today's code wrote, legacy key included
    m = read_manifest(FIXTURE)
    assert m.schema_version == SCHEMA_VERSION and m.upgraded_from == 2
    assert list(m.variants) == list(old["variants"])
    # the runtime section carries what the old exporter decided, per tower
    assert m.runtime == {rt: {t: v for t in TOWERS} for rt, v in old["runtime_variants"].items()}
    assert m.runtime_variant("onnxruntime", "text") == old["runtime_variants"]["onnxruntime"]
    assert m.variants["int8"].made_from == old["variants"]["int8"]["from"]
    assert m.variants["optimized"].made_from == "fp32" and m.variants["fp32"].made_from is None
    assert m.variants["int8"].files == old["int8"]  # the legacy key's content lives in the variant
    assert m.variants["fused"].runtimes == ["onnxruntime"] and m.variants["fp32"].runtimes == ["any"]
    assert m.variants["optimized"].details["fused_ops"] == old["variants"]["optimized"]["fused_ops"]
    assert m.source.arch_hash == old["source"]["arch_hash"] and m.source.config_hash
    assert {p: f.sha256 for p, f in m.files.items()} == {p: f["sha256"] for p, f in old["files"].items()}
    assert m.encoders["text"].inputs[0].dtype == "int32" and m.gates.parity_atol == old["gates"]["parity_atol"]
    # and the bundle opens through it: files by the manifest's runtime choice
    b = Bundle(_bundle_from_fixture(tmp_path))
    chosen, paths = b.runtime_files("onnxruntime")
    assert chosen == {"vision": "int8", "text": "int8"} and paths["vision"].name == "image_encoder.int8.onnx"
    assert b.config().embed_dim == old["config"]["embed_dim"]
    assert b.verify() == sorted(old["files"])  # the stand-in files do not match the recorded hashes


def test_round_trip_write_read_equal(tmp_path):
    m = read_manifest(FIXTURE)
    m.variants["int8"].batch_invariant = True
    written = write_manifest(tmp_path, m)
    back = read_manifest(tmp_path)
    assert back == written and isinstance(back, Manifest) and isinstance(back.variants["int8"], Variant)
    assert back.schema_version == SCHEMA_VERSION and back.upgraded_from is None and back.created
    assert back.variants["int8"].batch_invariant is True
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert "int8" not in on_disk and "runtime_variants" not in on_disk and "format_version" not in on_disk
    other = tmp_path / "unstamped"  # written as given: an upgraded manifest round-trips too
    other.mkdir()
    write_manifest(other, m, stamp=False)
    assert read_manifest(other) == m


def test_a_format_1_manifest_is_upgraded():
    """Bundles written before the tower rename say "image"; reading them gives the current keys."""
    old = json.loads(FIXTURE.read_text())
    v1 = json.loads(json.dumps(old).replace('"vision"', '"image"'))
    v1["format_version"] = 1
    del v1["runtime_variants"]
    v1["triton"] = {"models": {"clip_image_onnx": {"tower": "image"}}}
    m = Manifest.from_dict(upgrade(v1))
    assert set(m.encoders) == set(TOWERS) and m.upgraded_from == 1
    assert m.triton["models"]["clip_image_onnx"]["tower"] == "vision"  # deployed names keep "image"
    assert m.runtime["onnxruntime"] == {t: old["deploy_variant"] for t in TOWERS}
    assert m.runtime["portable"] == {t: "fp32" for t in TOWERS}


@pytest.mark.parametrize("content, message", [
    ("{", "cannot read the manifest"),
    ("[]", "a manifest is a JSON object"),
    ('{"schema_version": 99}', "manifest schema 99 is not one"),
    ('{"format_version": 2, "encoders": {}}', "incomplete or malformed"),
])
def test_unreadable_manifests_are_refused_with_how_to_reexport(tmp_path, content, message):
    (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(BundleError, match=message) as e:
        read_manifest(tmp_path)
    assert REEXPORT in str(e.value)


def test_missing_manifest_and_missing_config(tmp_path):
    with pytest.raises(BundleError, match="manifest.json not found"):
        Bundle(tmp_path).manifest
    m = dataclasses.replace(read_manifest(FIXTURE), config={})
    write_manifest(tmp_path, m)
    with pytest.raises(BundleError, match="no 'config'"):
        Bundle(tmp_path).config()


def test_engine_lookup_follows_the_manifest(tmp_path):
    with pytest.raises(BundleError, match="no tensorrt engine"):
        Bundle(_bundle_from_fixture(tmp_path)).engine("vision")


def test_format_2_engine_sections_become_typed_engine_sets():
    old = json.loads(FIXTURE.read_text())
    old["tensorrt"] = {"version": "10.13", "precision": "fp16", "typing": "strong", "recall_gate": None,
                       "engines": {"vision": {"file": "image_encoder.fp16.engine", "source_graph":
                                              "image_encoder.trt-fp16.onnx", "profile": {"min": [1, 3, 32, 32]},
                                              "gate": {"passed": True}, "build_seconds": 1.5}}}
    old["torch_tensorrt"] = {"version": "2.14", "precision": "fp16", "files": {"text": "text_encoder.fp16.ep"},
                             "gates": {"text": {"passed": True}}, "features": {"save_retrace": True}}
    m = Manifest.from_dict(upgrade(old))
    e = m.engines["tensorrt"].engines["vision"]
    assert (e.file, e.made_from, e.precision, e.gate, e.details) == (
        "image_encoder.fp16.engine", "image_encoder.trt-fp16.onnx", "fp16", {"passed": True}, {"build_seconds": 1.5})
    assert m.engines["tensorrt"].details["typing"] == "strong"
    t = m.engines["torch-tensorrt"]
    assert t.engines["text"].file == "text_encoder.fp16.ep" and t.engines["text"].gate == {"passed": True}
    assert t.details == {"features": {"save_retrace": True}}
