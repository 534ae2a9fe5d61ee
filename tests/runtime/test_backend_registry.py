"""Backend names are validated and dispatched in one place: the registry."""

from __future__ import annotations

import numpy as np
import pytest

from mope_deploy.runtime import BackendUnavailableError, Encoder, open_encoder
from mope_deploy.runtime import registry
from mope_deploy.runtime.registry import MODEL, ONNX, Backend, UnknownBackendError, check_backend, register


class _Const(Encoder):
    backend = "const"

    def run_images(self, pixels):
        return np.ones((len(pixels), self.config.embed_dim), np.float32)

    def run_texts(self, tokens):
        return np.ones((len(tokens), self.config.embed_dim), np.float32)


@pytest.fixture
def scratch_registry(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_a_registered_backend_opens_through_open_encoder(scratch_registry, tiny_bundle):
    model = tiny_bundle[0]
    seen = {}

    def opener(m, options):
        seen.update(model=m, options=options)
        return _Const(m.config)

    register(Backend("const", MODEL, opener, help="test"))
    enc = open_encoder(model, "const", device="cpu", threads=None, variant="fp32")
    assert isinstance(enc, _Const) and seen["model"] is model and seen["options"].variant == "fp32"
    assert "const" in registry.backend_names() and "const" in registry.available_backends()
    with pytest.raises(ValueError, match="already registered"):
        register(Backend("const", MODEL, opener))
    with pytest.raises(ValueError, match="source must be one of"):
        register(Backend("other", "cloud", opener))


def test_unknown_and_unavailable_names(scratch_registry):
    with pytest.raises(UnknownBackendError, match="unknown backend 'jax'.*Available here: torch"):
        check_backend("jax")
    register(Backend("needs-lib", ONNX, lambda m, o: None, requires=lambda: "the_lib is not installed"))
    with pytest.raises(BackendUnavailableError, match="needs-lib.*the_lib is not installed") as e:
        open_encoder("demo", "needs-lib")
    assert not isinstance(e.value, UnknownBackendError)
    assert registry.backend_status("needs-lib") == "the_lib is not installed"
    assert not registry._REGISTRY["needs-lib"].uses_device and registry._REGISTRY["torch"].uses_device


def test_onnx_encoder_owns_its_temporary_export(tiny_bundle):
    import gc
    from pathlib import Path

    enc = open_encoder(tiny_bundle[0], "onnxruntime", threads=1)
    root = Path(enc._owned_dir.name)
    assert (root / "bundle" / "manifest.json").is_file() and enc.bundle == root / "bundle"
    del enc
    gc.collect()
    assert not root.exists()  # removed with the encoder
