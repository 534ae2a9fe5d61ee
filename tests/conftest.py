"""Shared fixtures: tiny real models (random weights) and the path to ../shared/data when present."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mope_deploy.models import SlimCLIP
from mope_deploy.models.tiny import tiny_config

# One intra-op thread for the whole suite: tests run many tiny forward passes, where a second OpenMP thread
# gains nothing and, on a loaded 2-core machine, spins and makes them ~10x slower (measured).
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def tiny_model() -> SlimCLIP:
    torch.manual_seed(0)
    return SlimCLIP(tiny_config()).eval()


@pytest.fixture
def flickr_dir() -> Path:
    d = SHARED_DATA / "flickr8k-500"
    if not (d / "captions.csv").is_file():
        pytest.skip(f"real-photo data not present at {d} (it lives in ../shared/data beside the checkout)")
    return d
