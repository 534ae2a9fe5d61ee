"""A tiny saved model for bench tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    import torch

    from mope_deploy.models import SlimCLIP
    from mope_deploy.models.tiny import tiny_config

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("bench") / "tiny"
    SlimCLIP(tiny_config()).save(d)
    return d
