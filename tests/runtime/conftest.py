"""Runtime fixtures: a tiny model saved to disk, exported once per module, and a few synthetic photos."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mope_deploy.models import save_model


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """An ONNX export bundle (fp32 + ORT-optimised graphs) of a tiny model, and the model itself."""
    import torch

    from mope_deploy.models import SlimCLIP
    from mope_deploy.models.tiny import tiny_config
    from mope_deploy.exporting import export_bundle

    torch.manual_seed(0)
    model = SlimCLIP(tiny_config()).eval()
    root = tmp_path_factory.mktemp("rt")
    save_model(model, root / "model")
    export_bundle(model, root / "bundle")  # fp32 + ORT-optimised graphs
    return model, root / "model", root / "bundle"


@pytest.fixture
def pil_images():
    """Five differently sized RGB / greyscale / RGBA images with distinct content."""
    rng = np.random.default_rng(0)
    out = []
    for i, (h, w) in enumerate([(40, 50), (32, 32), (64, 48), (33, 70), (50, 40)]):
        arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        im = Image.fromarray(arr)
        out.append(im.convert("L") if i == 3 else im.convert("RGBA") if i == 4 else im)
    return out


@pytest.fixture
def captions():
    return list(CAPTIONS)


CAPTIONS = ["a dog runs on the beach", "two cats asleep on a red sofa", "a man rides a bicycle", "snow", "a bowl of fruit"]
