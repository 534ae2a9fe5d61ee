"""Helpers shared by the sparsity tests and their torchrun child scripts."""

from __future__ import annotations

import torch

from mope_deploy.sparsity import Calibration


def make_calib(n: int = 16, ctx: int = 16, image_size: int = 32, seed: int = 0) -> Calibration:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 1000, (n, ctx), generator=g)
    eot = torch.randint(3, ctx, (n,), generator=g)
    tokens[torch.arange(n), eot] = 49407          # EOT (highest id) at varying positions
    tokens[torch.arange(ctx).view(1, -1) > eot.view(-1, 1)] = 0  # padding after it
    return Calibration(torch.randn(n, 3, image_size, image_size, generator=g), tokens)
