"""The shipped demo teacher: loads as ``demo``, has the documented architecture and tokenizer, and its
recorded recall is what it really scores."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from mope_deploy.models import load, load_config
from mope_deploy.models.processing import ASSETS
from mope_deploy.models.registry import DEMO_DIR



def _train_demo():
    """The tool that trained the shipped teacher (benchmarks/train_demo.py, outside the library)."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "train_demo.py"
    spec = importlib.util.spec_from_file_location("train_demo", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_td = _train_demo()
BPE_FILE, VOCAB_SIZE, demo_config, magnitude_student = _td.BPE_FILE, _td.VOCAB_SIZE, _td.demo_config, _td.magnitude_student

@pytest.fixture(scope="module")
def demo():
    return load("demo")


def test_demo_is_shipped_small_and_documented(demo):
    weights = DEMO_DIR / "model.safetensors"
    assert weights.stat().st_size <= 25 * 2**20
    cfg = load_config("demo")
    assert cfg.arch_hash() == demo_config().arch_hash()  # the config train_demo documents and builds
    v, t = cfg.vision, cfg.text
    assert (v.width, v.head_dim, v.image_size, v.patch_size, v.depth) == (128, 32, 64, 16, 6)
    assert all((b.heads, b.mlp) == (4, 512) for b in v.blocks + t.blocks)
    assert (t.depth, t.context_length, t.vocab_size, t.eos_id) == (4, 32, VOCAB_SIZE, VOCAB_SIZE - 1)
    assert demo.logit_scale.dtype == torch.float32
    readme = (DEMO_DIR / "README.md").read_text()
    assert cfg.provenance["command"] in readme and "Recall Mean" in readme


def test_tokenizer_is_a_truncated_open_clip_bpe(demo):
    tok = demo.tokenizer
    assert demo.config.tokenizer["bpe_file"] == BPE_FILE and (ASSETS / BPE_FILE).is_file()
    assert tok.vocab_size == VOCAB_SIZE and tok.eot_token_id == VOCAB_SIZE - 1  # EOT highest: argmax pooling
    ids = tok(["two small red stars to the left of a blue ring", "Ünïcödé 🐕 café, naïve words!"])
    assert ids.shape == (2, 32) and int(ids.max()) == VOCAB_SIZE - 1
    assert (ids.argmax(dim=1) == (ids != 0).sum(dim=1) - 1).all()  # EOT is the last real token


def test_real_captions_tokenise(demo, flickr_dir):
    with open(flickr_dir / "captions.csv", newline="") as f:
        caps = [row["caption"] for row in csv.DictReader(f)][:500]
    ids = demo.tokenizer(caps)
    assert int(ids.max()) < VOCAB_SIZE and (ids.argmax(dim=1) > 1).all()
    with torch.no_grad():
        emb = demo.encode_text(ids[:16], normalize=True)
    assert torch.isfinite(emb).all()


def test_recorded_recall_is_reproduced(demo):
    from mope_deploy.data.datasets import load_synthetic
    from mope_deploy.eval.retrieval import evaluate

    recorded = json.loads((DEMO_DIR / "metrics.json").read_text())
    got = evaluate(demo, load_synthetic("test"), progress=False)
    want = recorded["teacher"]["synthetic:test"]
    for k in ("tr1", "tr5", "ir1", "ir5", "recall_mean"):
        assert got[k] == pytest.approx(want[k], abs=1e-6), k
    # the bar of the issue: R@1 at least 10x chance (0.2% on 500 images), Recall Mean >= 50, far from 100
    assert got["tr1"] >= 2.0 and got["ir1"] >= 2.0 and 50 <= got["recall_mean"] < 95


def test_magnitude_student_is_half_width(demo):
    s = magnitude_student(demo)
    for tower in ("vision", "text"):
        assert all((b.heads, b.mlp) == (2, 256) for b in s.config.tower(tower).blocks)
    x = torch.zeros(1, 3, 64, 64)
    assert s.encode_image(x).shape == demo.encode_image(x).shape
