"""Fixtures for the sparsity tests: tiny models (teacher-like and MoPE-student-like) and calibration pairs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mope_deploy.models import BlockConfig, SlimCLIP
from mope_deploy.models.tiny import tiny_config
from sparsity_helpers import make_calib


@pytest.fixture
def calib():
    return make_calib()


@pytest.fixture
def student_model() -> SlimCLIP:
    """A MoPE-student-like model: uneven heads / FFN widths, a block with no heads and one with no FFN."""
    cfg = tiny_config(depth=4, text_depth=3)
    cfg.vision.blocks = [BlockConfig(4, 256, 0), BlockConfig(2, 128, 1), BlockConfig(0, 64, 3), BlockConfig(3, 0, 4)]
    cfg.text.blocks = [BlockConfig(1, 32, 0), BlockConfig(0, 0, 1), BlockConfig(4, 256, 2)]
    torch.manual_seed(1)
    return SlimCLIP(cfg.validate()).eval()
