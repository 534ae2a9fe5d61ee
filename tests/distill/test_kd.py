"""Distillation losses against naive element-by-element references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mope_deploy.distill.kd import (DistillationLoss, KDWeights, block_map, feature_loss, hidden_loss,
                                    similarity_loss, soft_cross_entropy)
from mope_deploy.distill.losses import Outputs
from mope_deploy.models import BlockConfig
from mope_deploy.models.tiny import tiny_config


def _outputs(seed: int, n: int = 4, d: int = 8, blocks=(3, 2)) -> Outputs:
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    txt = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    hidden = {"vision": [torch.randn(n, 5, 6, generator=g) for _ in range(blocks[0])],
              "text": [torch.randn(n, 7, 6, generator=g) for _ in range(blocks[1])]}
    return Outputs(image=img, text=txt, logit_scale=torch.tensor(10.0 + seed), extra={"hidden": hidden})


def test_soft_cross_entropy_naive():
    s, t = torch.randn(3, 5), torch.randn(3, 5)
    ref = 0.0
    for i in range(3):
        p = [math.exp(x) for x in t[i].tolist()]
        p = [x / sum(p) for x in p]
        z = math.log(sum(math.exp(x) for x in s[i].tolist()))
        ref += -sum(pj * (sj - z) for pj, sj in zip(p, s[i].tolist()))
    assert soft_cross_entropy(s, t).item() == pytest.approx(ref / 3, rel=1e-5)


def test_similarity_loss_both_directions_and_minimum_at_teacher():
    st, te = _outputs(0), _outputs(1)
    s = st.logit_scale * st.image @ st.text.t()
    t = te.logit_scale * te.image @ te.text.t()
    expected = (soft_cross_entropy(s, t) + soft_cross_entropy(s.t(), t.t())) / 2
    assert similarity_loss(st, te).item() == pytest.approx(expected.item(), rel=1e-6)
    # KL >= 0: the loss is smallest when the student reproduces the teacher
    assert similarity_loss(te, te).item() < similarity_loss(st, te).item()


def test_feature_loss_naive():
    st, te = _outputs(0), _outputs(1)
    ref = 0.5 * ((st.image - te.image) ** 2).mean() + 0.5 * ((st.text - te.text) ** 2).mean()
    assert feature_loss(st, te).item() == pytest.approx(ref.item(), rel=1e-6)


def test_block_map_follows_kept_sources_and_hidden_loss():
    teacher = tiny_config(depth=3)
    student = tiny_config(depth=3)
    student.vision.blocks = [BlockConfig(2, 128, 0), BlockConfig(2, 128, 2)]  # block 1 removed
    student.text.blocks = [BlockConfig(4, 256, 1)]
    mapping = block_map(student, teacher)
    assert mapping == {"vision": [0, 2], "text": [1]}
    st, te = _outputs(0, blocks=(2, 1)), _outputs(1, blocks=(3, 3))
    ref = 0.5 * (((st.extra["hidden"]["vision"][0] - te.extra["hidden"]["vision"][0]) ** 2).mean()
                 + ((st.extra["hidden"]["vision"][1] - te.extra["hidden"]["vision"][2]) ** 2).mean()
                 + ((st.extra["hidden"]["text"][0] - te.extra["hidden"]["text"][1]) ** 2).mean())
    assert hidden_loss(st, te, mapping).item() == pytest.approx(ref.item(), rel=1e-6)
    only_vision = hidden_loss(st, te, mapping, towers=("vision",))
    assert only_vision.item() < ref.item()


def test_block_map_refuses_foreign_teacher():
    student = tiny_config(depth=3)
    with pytest.raises(ValueError, match="teacher blocks \\[2\\]"):
        block_map(student, tiny_config(depth=2))


def test_combined_loss_weights_and_switches():
    st, te = _outputs(0, blocks=(3, 2)), _outputs(1, blocks=(3, 2))
    mapping = {"vision": [0, 1, 2], "text": [0, 1]}
    full, logs = DistillationLoss(KDWeights(), mapping)(st, {}, te)
    assert set(logs) == {"loss_itc", "loss_sim", "loss_feat", "loss_hidn"}
    assert full.item() == pytest.approx(sum(logs.values()), rel=1e-5)
    assert logs["loss_feat"] == pytest.approx(1000 * feature_loss(st, te).item(), rel=1e-5)
    no_hidn, logs2 = DistillationLoss(KDWeights(gamma=0), None)(st, {}, te)
    assert "loss_hidn" not in logs2 and no_hidn.item() < full.item()
    itc_only = DistillationLoss(KDWeights(alpha=0, beta=0, gamma=0))
    assert not itc_only.needs_teacher
    loss, _ = itc_only(st, {}, None)
    assert loss.item() > 0
    with pytest.raises(ValueError, match="need teacher outputs"):
        DistillationLoss(KDWeights(gamma=0))(st, {}, None)
    with pytest.raises(ValueError, match="block map"):
        DistillationLoss(KDWeights())


def test_loss_has_gradients_for_student_only():
    st, te = _outputs(0), _outputs(1)
    st.image.requires_grad_(True)
    loss, _ = DistillationLoss(KDWeights(gamma=0))(st, {}, te)
    loss.backward()
    assert st.image.grad is not None and st.image.grad.abs().sum() > 0
    assert te.image.grad is None
