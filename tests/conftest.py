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
def model_dir(tiny_model, tmp_path) -> Path:
    """The tiny model saved as a model directory."""
    return tiny_model.save(tmp_path / "model")


@pytest.fixture
def caption_csv(tmp_path):
    """Factory: write ``images`` (PIL) with their captions as an open_clip-style CSV; returns its path.

    ``captions[i]`` lists image i's captions; ``extra_rows`` are appended verbatim (e.g. a missing file).
    """
    def make(images, captions, header: str = "image,caption", extra_rows=(), name: str = "data") -> Path:
        root = tmp_path / name
        (root / "images").mkdir(parents=True)
        rows = [header]
        for i, (im, caps) in enumerate(zip(images, captions)):
            im.save(root / "images" / f"{i}.png")
            rows += [f"{i}.png,{c}" for c in caps]
        rows += list(extra_rows)
        (root / "captions.csv").write_text("\n".join(rows) + "\n")
        return root / "captions.csv"

    return make


@pytest.fixture
def noise_images():
    """Factory: ``n`` seeded random-noise RGB images."""
    from PIL import Image

    def make(n: int, size: int = 36, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        return [Image.fromarray((torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy())
                for _ in range(n)]

    return make


@pytest.fixture
def flickr_dir() -> Path:
    d = SHARED_DATA / "flickr8k-500"
    if not (d / "captions.csv").is_file():
        pytest.skip(f"real-photo data not present at {d} (it lives in ../shared/data beside the checkout)")
    return d


@pytest.fixture
def torchrun(tmp_path):
    """Run ``script`` (source text) under torchrun with 2 CPU processes; returns the finished process.

    One intra-op thread per rank: two ranks on a 2-core machine must not oversubscribe it.
    """
    import os
    import subprocess
    import sys

    def run(script: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        path = tmp_path / "torchrun_script.py"
        path.write_text(script)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               str(path), *args], capture_output=True, text=True, timeout=timeout, env=env,
                              start_new_session=True)   # its own process group: nothing it signals reaches pytest
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    return run
