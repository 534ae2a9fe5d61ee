"""Fixtures of the bad-input suite (helpers: reliability_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mope_deploy.models import SlimCLIP, save_model
from mope_deploy.models.tiny import tiny_config


@pytest.fixture(scope="session")
def good_model(tmp_path_factory) -> Path:
    """A tiny model directory, saved once (tests copy it before breaking it)."""
    torch.manual_seed(0)
    return save_model(SlimCLIP(tiny_config()).eval(), tmp_path_factory.mktemp("rel") / "good")
