"""Package data and the package list: the top-level recipes/ and export/ folders reach the installed package
(read with importlib.resources), and pyproject.toml lists every package directory (it lists, not finds, them)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mope_deploy.resources import RECIPES, TEMPLATES, ResourceError, listing, read_text, resource

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_directory_is_listed_in_pyproject():
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    dirs = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "mope_deploy").rglob("*.py")
            if "__pycache__" not in p.parts}
    assert dirs - listed == set(), "add these packages to [tool.setuptools] packages in pyproject.toml"
    assert {"mope_deploy.recipes", "mope_deploy.templates"} <= listed


def test_data_folders_are_mapped_into_the_package():
    cfg = _pyproject()["tool"]["setuptools"]
    assert cfg["package-dir"] == {"mope_deploy.recipes": "recipes", "mope_deploy.templates": "export"}


def test_shipped_files_match_the_repository_folders():
    assert listing(RECIPES, ".yaml") == sorted(p.name for p in (ROOT / "recipes").glob("*.yaml"))
    for rel in ("triton/onnxruntime.pbtxt.tmpl", "triton/tensorrt_plan.pbtxt.tmpl", "tensorrt/profiles.json"):
        assert read_text(TEMPLATES, *rel.split("/")) == (ROOT / "export" / rel).read_text()
    assert "fp16" in json.loads(read_text(TEMPLATES, "tensorrt", "profiles.json"))


def test_a_missing_file_is_a_clear_error():
    with pytest.raises(ResourceError, match="missing from mope_deploy.templates.*reinstall"):
        resource(TEMPLATES, "triton", "nope.tmpl")
