"""The training loop on tiny models: it learns, its schedule is right, and resuming is exact."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F

from mope_deploy.distill.losses import ContrastiveLoss, Outputs, info_nce
from mope_deploy.distill.trainer import (CHECKPOINT, METRICS, TrainConfig, Trainer, cosine_with_warmup,
                                         param_groups, synthetic_batches)
from mope_deploy.models import SlimCLIP
from mope_deploy.models.tiny import tiny_config

VOCAB = 512 + 10_000 + 2


def _model(seed: int = 0) -> SlimCLIP:
    cfg = tiny_config(width=32, depth=1, heads=2, head_dim=16, image_size=32, patch_size=8, context_length=16,
                      vocab_size=VOCAB, embed_dim=16)
    cfg.tokenizer = {"type": "bpe", "bpe_file": "bpe_10k.txt.gz", "context_length": 16}
    torch.manual_seed(seed)
    return SlimCLIP(cfg)


def test_info_nce_matches_naive_formula():
    g = torch.Generator().manual_seed(0)
    img, txt = F.normalize(torch.randn(5, 8, generator=g), dim=-1), F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    scale = torch.tensor(7.0)
    s = (scale * img @ txt.t()).tolist()
    ref = 0.0
    for i in range(5):
        row = [s[i][j] for j in range(5)]
        col = [s[j][i] for j in range(5)]
        ref += -(s[i][i] - math.log(sum(math.exp(v) for v in row))) / 2
        ref += -(s[i][i] - math.log(sum(math.exp(v) for v in col))) / 2
    assert info_nce(img, txt, scale).item() == pytest.approx(ref / 5, rel=1e-5)


def test_cosine_schedule_against_formula():
    total, warm = 20, 5
    got = [cosine_with_warmup(s, warm, total, 0.1) for s in range(total)]
    assert got[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    for s in range(warm, total):
        t = (s - warm) / (total - warm)
        assert got[s] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))
    assert got[-1] > 0.1 and cosine_with_warmup(total, warm, total, 0.1) == pytest.approx(0.1)


def test_no_weight_decay_on_biases_norms_and_temperature():
    m = _model()
    decay, no_decay = param_groups(m, 0.1)
    assert any(p is m.logit_scale for p in no_decay["params"])
    assert all(p.ndim >= 2 for p in decay["params"]) and no_decay["weight_decay"] == 0.0
    n = sum(p.numel() for p in m.parameters())
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == n


def test_training_reduces_the_loss(tmp_path):
    torch.manual_seed(0)
    model = _model()
    batch = next(iter(synthetic_batches(model, 8)(0)))
    data = lambda start: itertools.repeat(batch)  # noqa: E731  (one batch, memorised)
    with torch.no_grad():
        before = ContrastiveLoss()(Outputs(*model(batch["images"], batch["tokens"])), batch, None)[0].item()
    cfg = TrainConfig(steps=15, lr=3e-3, warmup_steps=2, log_every=1, out_dir=str(tmp_path))
    logs = Trainer(model, cfg, data, progress=False).train()
    assert logs["loss"] < 0.5 * before
    records = [json.loads(ln) for ln in (tmp_path / METRICS).read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 16))
    assert records[0]["lr"] < records[1]["lr"]  # warm-up


class _Interrupt(Exception):
    pass


def _interrupting(data, after_batches: int):
    def wrapped(start):
        for i, b in enumerate(data(start), start=start):
            if i == after_batches:
                raise _Interrupt
            yield b
    return wrapped


def test_resume_continues_to_the_same_weights(tmp_path):
    kw = dict(steps=4, lr=2e-3, warmup_steps=1, grad_accum=2, grad_clip=0.5, log_every=1, checkpoint_every=2)
    ref_model = _model(seed=0)
    Trainer(ref_model, TrainConfig(**kw, out_dir=str(tmp_path / "a")), synthetic_batches(ref_model, 4),
            progress=False).train()

    model = _model(seed=0)
    data = synthetic_batches(model, 4)
    with pytest.raises(_Interrupt):  # dies in step 3 (micro-batch 4), after the step-2 checkpoint
        Trainer(model, TrainConfig(**kw, out_dir=str(tmp_path / "b")), _interrupting(data, 5), progress=False).train()
    state = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)
    assert state["step"] == 2
    fresh = _model(seed=123)  # different init: everything must come from the checkpoint
    Trainer(fresh, TrainConfig(**kw, out_dir=str(tmp_path / "b")), synthetic_batches(fresh, 4), progress=False).train()

    for (name, a), b in zip(ref_model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    strip = lambda p: [{k: v for k, v in json.loads(ln).items() if k != "samples_per_s"}  # noqa: E731
                       for ln in p.read_text().splitlines()]
    assert strip(tmp_path / "a" / METRICS) == strip(tmp_path / "b" / METRICS)


def test_resume_with_other_settings_is_refused(tmp_path):
    model = _model()
    Trainer(model, TrainConfig(steps=1, out_dir=str(tmp_path)), synthetic_batches(model, 2), progress=False).train()
    with pytest.raises(ValueError, match="lr=.*new out_dir"):
        Trainer(model, TrainConfig(steps=1, lr=1.0, out_dir=str(tmp_path)), synthetic_batches(model, 2),
                progress=False).train()


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="steps must be positive"):
        TrainConfig(steps=0).validate()
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainConfig(steps=5, warmup_steps=9).validate()
    with pytest.raises(ValueError, match="batch_size >= 2"):
        synthetic_batches(_model(), 1)
    model = _model()
    with pytest.raises(ValueError, match="data ran out"):
        Trainer(model, TrainConfig(steps=3), lambda s: iter([]), progress=False).train()


def test_eval_hook_runs_and_is_logged(tmp_path):
    model = _model()
    calls = []

    def eval_fn(m):
        calls.append(m.training)
        return {"recall_mean": 12.5, "name": "ignored"}

    cfg = TrainConfig(steps=4, eval_every=2, log_every=10, out_dir=str(tmp_path))
    logs = Trainer(model, cfg, synthetic_batches(model, 2), eval_fn=eval_fn, progress=False).train()
    assert calls == [False, False] and logs["eval_recall_mean"] == 12.5
    recs = [json.loads(ln) for ln in (tmp_path / METRICS).read_text().splitlines()]
    assert [r["step"] for r in recs if "eval_recall_mean" in r] == [2, 4]
