"""Analytic counts against hand-computed values and against the real module parameters."""

from __future__ import annotations

import pytest

from mope_deploy.models import BlockConfig, SlimCLIP, model_stats
from mope_deploy.models.counting import block_flops, block_params
from mope_deploy.models.registry import load_config
from mope_deploy.models.tiny import tiny_config


def test_block_params_by_hand():
    # d=64, 4 heads of 16, FFN 256: qkv 64*192+192, out 64*64+64, mlp 64*256+256+256*64+64, 2 LN 4*64
    assert block_params(64, 16, BlockConfig(4, 256, 0)) == 12480 + 4160 + 33088 + 256
    assert block_params(64, 16, BlockConfig(0, 0, 0)) == 64 + 64 + 256


def test_block_flops_by_hand():
    n, d, inner, f = 10, 64, 32, 100
    expected = 2 * n * d * 3 * inner + 4 * n * n * inner + 2 * n * inner * d + 4 * n * d * f
    assert block_flops(d, 16, BlockConfig(2, f, 0), n) == expected


def test_counts_match_module_parameters():
    cfg = tiny_config(depth=3)
    cfg.vision.blocks = [BlockConfig(4, 256, 0), BlockConfig(0, 17, 1), BlockConfig(2, 0, 2)]
    stats = model_stats(cfg)
    model = SlimCLIP(cfg)
    assert stats["params_total"] == sum(p.numel() for p in model.parameters())
    vis_blocks = sum(p.numel() for p in model.visual.blocks.parameters())
    assert stats["vision"]["params"] == vis_blocks
    assert stats["params"] == vis_blocks + sum(p.numel() for p in model.text.blocks.parameters())


def test_vit_l14_reference_figures():
    stats = model_stats(load_config("ViT-L-14"))
    assert stats["vision"]["gflops"] == pytest.approx(162.0, abs=0.1)  # ~162 GFLOPs per 224 px image
    assert stats["params_total"] == 427_616_513  # open_clip's ViT-L-14 parameter count
    assert stats["params"] / 1e6 == pytest.approx(387.4, abs=0.1)  # the paper's "390M" (blocks only)
    assert stats["vision"]["depth"] == 24 and stats["text"]["depth"] == 12
