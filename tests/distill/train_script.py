"""A tiny training run used by the subprocess tests (torchrun data parallelism, SIGKILL + resume).

    python tests/distill/train_script.py OUT_DIR STEPS [--slow]
    torchrun --nproc_per_node 2 tests/distill/train_script.py OUT_DIR STEPS
"""

from __future__ import annotations

import sys
import time

import torch

from mope_deploy import distributed as D
from mope_deploy.distill.kd import DistillationLoss, KDWeights, block_map
from mope_deploy.distill.kd import hidden_forward
from mope_deploy.distill.trainer import TrainConfig, Trainer
from mope_deploy.models import SlimCLIP
from mope_deploy.models.tiny import tiny_config

GLOBAL_BATCH = 8


def models() -> tuple[SlimCLIP, SlimCLIP]:
    torch.manual_seed(0)
    teacher = SlimCLIP(tiny_config(width=32, depth=2, heads=2, head_dim=16, image_size=16, patch_size=8,
                                   context_length=8, vocab_size=64, embed_dim=16)).eval()
    student = SlimCLIP(teacher.config)
    student.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return student, teacher


def data(start: int, slow: bool = False):
    """Global batches that depend only on their index, so any rank count and any restart see the same data."""
    i = start
    while True:
        g = torch.Generator().manual_seed(1000 + i)
        tokens = torch.randint(1, 62, (GLOBAL_BATCH, 8), generator=g)
        tokens[:, 5] = 63
        if slow:
            time.sleep(0.3)
        yield {"images": torch.randn(GLOBAL_BATCH, 3, 16, 16, generator=g), "tokens": tokens}
        i += 1


def trainer(out_dir: str | None, steps: int, slow: bool = False) -> Trainer:
    student, teacher = models()
    loss = DistillationLoss(KDWeights(), block_map(student.config, teacher.config))
    cfg = TrainConfig(steps=steps, lr=1e-3, warmup_steps=2, grad_clip=1.0, checkpoint_every=1, log_every=1,
                      seed=0, out_dir=out_dir)
    return Trainer(student, cfg, lambda s: data(s, slow), loss=loss, teacher=teacher, forward=hidden_forward,
                   progress=False)


def main() -> None:
    torch.set_num_threads(1)
    out, steps = sys.argv[1], int(sys.argv[2])
    D.init_from_env()
    t = trainer(out, steps, slow="--slow" in sys.argv)
    t.train()
    if D.rank_world()[0] == 0:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in t.model.state_dict().items()}, f"{out}/final.safetensors")
    D.barrier()
    D.destroy()


if __name__ == "__main__":
    main()
