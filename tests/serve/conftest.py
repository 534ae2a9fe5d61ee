"""Serve fixtures: the shipped demo teacher on torch, an index of synthetic:test built once, an ONNX bundle."""

from __future__ import annotations

import base64
import io

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")


@pytest.fixture(scope="session")
def demo_encoder():
    from mope_deploy.runtime import open_encoder

    return open_encoder("demo", "torch")


@pytest.fixture(scope="session")
def demo_index(tmp_path_factory, demo_encoder):
    """synthetic:test (500 images, 2500 captions) indexed with the demo teacher on torch."""
    from mope_deploy.serve.build import build_index, load_collection
    from mope_deploy.serve.index import model_fingerprint

    out = tmp_path_factory.mktemp("serve") / "synthetic-test.index"
    build_index(load_collection("synthetic:test"), demo_encoder, out, fingerprint=model_fingerprint("demo"),
                data_spec="synthetic:test", progress=False)
    return out


@pytest.fixture(scope="session")
def demo_bundle(tmp_path_factory):
    """The demo teacher exported as an ONNX bundle (what `mope export demo --out DIR` writes)."""
    from mope_deploy.exporting import export_bundle
    from mope_deploy.models import load

    out = tmp_path_factory.mktemp("bundle") / "demo-bundle"
    export_bundle(load("demo"), out)
    return out


@pytest.fixture(scope="session")
def b64png():
    """PIL image -> base64 PNG (or a data URL)."""
    def encode(image, data_url: bool = False) -> str:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        s = base64.b64encode(buf.getvalue()).decode()
        return f"data:image/png;base64,{s}" if data_url else s
    return encode
