"""pytest-benchmark: one knowledge-distillation step (student forward + backward with the frozen teacher).

    .venv/bin/python -m pytest benchmarks/bench_distill.py --benchmark-enable

The demo teacher distils into the demo recipe's student shape (half width, 5 vision blocks) on one synthetic
batch; the KD variants of paper Table 10 are timed side by side, so their cost ratios can be read off one run.
"""

from __future__ import annotations

import os

import pytest
import torch

from mope_deploy.distill.kd import DistillationLoss, KDWeights, block_map
from mope_deploy.distill.losses import ContrastiveLoss
from mope_deploy.compress import load_recipe, pretraining_plan
from mope_deploy.distill.kd import hidden_forward
from mope_deploy.distill.trainer import TrainConfig, Trainer, synthetic_batches
from mope_deploy.importance import score
from mope_deploy.models import load
from mope_deploy.pruning.apply import apply_plan

BATCH = int(os.environ.get("BENCH_BATCH", "64"))
torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))


@pytest.fixture(scope="module")
def setup():
    teacher = load("demo").eval()
    recipe = load_recipe("demo")
    table = score(teacher, method="magnitude", n_groups=16)  # shapes matter here, not which units are kept
    plan = pretraining_plan(recipe, teacher.config,
                            {m: table for m in (recipe.prune.method, recipe.prune.depth_method)})
    batch = next(iter(synthetic_batches(teacher, BATCH)(0)))
    return teacher, apply_plan(teacher, plan), batch


@pytest.mark.parametrize("variant", ["full KD", "w/o L_hidn", "w/o KD"])
def test_distillation_step(benchmark, setup, variant):
    teacher, student, batch = setup
    if variant == "w/o KD":
        loss, kd_teacher, fwd = ContrastiveLoss(), None, hidden_forward
    else:
        weights = KDWeights(gamma=0.0) if variant == "w/o L_hidn" else KDWeights()
        loss = DistillationLoss(weights, block_map(student.config, teacher.config))
        kd_teacher, fwd = teacher, hidden_forward
    trainer = Trainer(student, TrainConfig(steps=10 ** 6, lr=1e-4), data=lambda s: iter(()), loss=loss,
                      teacher=kd_teacher, forward=fwd, progress=False)
    batches = iter(lambda: batch, None)
    benchmark.pedantic(trainer._train_step, args=(batches,), rounds=5, warmup_rounds=1)
