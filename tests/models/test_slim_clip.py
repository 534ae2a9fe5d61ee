"""SlimCLIP behaviour: per-block shapes, empty branches, masks, hidden states, config round trip."""

from __future__ import annotations

import json

import pytest
import torch

from mope_deploy.models import BlockConfig, CLIPConfig, ConfigError, Masks, SlimCLIP
from mope_deploy.models.tiny import tiny_config


def _inputs(cfg: CLIPConfig, batch: int = 3):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, cfg.vision.image_size, cfg.vision.image_size, generator=g)
    tokens = torch.randint(1, cfg.text.vocab_size - 2, (batch, cfg.text.context_length), generator=g)
    tokens[:, 4] = cfg.text.vocab_size - 1
    return images, tokens


def test_heterogeneous_blocks_and_attention_width_independent_of_width():
    cfg = tiny_config(depth=3)
    cfg.vision.blocks = [BlockConfig(4, 256, 0), BlockConfig(1, 17, 1), BlockConfig(6, 300, 2)]  # 6*16=96 > width 64
    model = SlimCLIP(cfg).eval()
    assert model.visual.blocks[2].attn.qkv.weight.shape == (3 * 96, 64)
    assert model.visual.blocks[2].attn.out_proj.weight.shape == (64, 96)
    assert model.visual.blocks[1].mlp.c_fc.weight.shape == (17, 64)
    images, tokens = _inputs(cfg)
    img, txt, scale = model(images, tokens)
    assert img.shape == (3, cfg.embed_dim) and txt.shape == (3, cfg.embed_dim)
    assert torch.allclose(img.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-4)


def test_zero_heads_and_zero_ffn_equal_fully_masked_block():
    torch.manual_seed(0)
    cfg = tiny_config(depth=2)
    full = SlimCLIP(cfg).eval()
    images, tokens = _inputs(cfg)
    masks = Masks(head={1: torch.zeros(4)}, mlp={0: torch.zeros(256)})
    with torch.no_grad():
        ref = full.visual(images, masks=masks)

    small_cfg = CLIPConfig.from_dict(cfg.to_dict())
    small_cfg.vision.blocks = [BlockConfig(4, 0, 0), BlockConfig(0, 256, 1)]
    small = SlimCLIP(small_cfg).eval()
    sd = {k: v for k, v in full.state_dict().items()
          if not k.startswith(("visual.blocks.0.mlp", "visual.blocks.1.attn"))}
    sd["visual.blocks.0.mlp_bias"] = full.visual.blocks[0].mlp.c_proj.bias.detach().clone()
    sd["visual.blocks.1.attn_bias"] = full.visual.blocks[1].attn.out_proj.bias.detach().clone()
    small.load_state_dict(sd)
    with torch.no_grad():
        out = small.visual(images)
    assert torch.allclose(out, ref, atol=1e-6)


def test_masks_are_reversible_and_gate_skips_block(tiny_model):
    cfg = tiny_model.config
    images, tokens = _inputs(cfg)
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    with torch.no_grad():
        plain = tiny_model.encode_text(tokens)
        masked = tiny_model.text(tokens, masks=Masks(head={0: torch.tensor([1.0, 0, 1, 1])}))
        again = tiny_model.encode_text(tokens)
        # gate 0 on block 1 == running only block 0
        gated = tiny_model.visual(images, masks=Masks(gate={1: torch.zeros(images.shape[0])}))
        v = tiny_model.visual
        manual = v.head(v.run_blocks(v.embed(images), 0, 1), images)
    assert not torch.allclose(plain, masked)
    assert torch.equal(plain, again)
    assert all(torch.equal(before[k], v) for k, v in tiny_model.state_dict().items())
    assert torch.allclose(gated, manual, atol=1e-6)


def test_per_sample_masks_batch_many_probes(tiny_model):
    images, _ = _inputs(tiny_model.config, batch=1)
    x = images.expand(4, -1, -1, -1)
    head_masks = torch.ones(4, 4)
    for i in range(4):
        head_masks[i, i] = 0
    with torch.no_grad():
        batched = tiny_model.visual(x, masks=Masks(head={1: head_masks}))
        for i in range(4):
            single = tiny_model.visual(images, masks=Masks(head={1: head_masks[i]}))
            assert torch.allclose(batched[i], single[0], atol=1e-5)


def test_hidden_states_per_block(tiny_model):
    images, tokens = _inputs(tiny_model.config)
    with torch.no_grad():
        emb, hidden = tiny_model.visual(images, return_hidden=True)
        temb, thidden = tiny_model.text(tokens, return_hidden=True)
    assert len(hidden) == tiny_model.config.vision.depth and len(thidden) == tiny_model.config.text.depth
    assert hidden[-1].shape == (3, tiny_model.config.vision.num_tokens, 64)
    assert torch.allclose(emb, tiny_model.encode_image(images))
    assert torch.allclose(temb, tiny_model.encode_text(tokens))


def test_config_round_trip_and_validation():
    cfg = tiny_config()
    d = json.loads(json.dumps(cfg.to_dict()))
    assert CLIPConfig.from_dict(d) == cfg
    bad = cfg.to_dict()
    bad["vision"]["heads_total"] = 3
    with pytest.raises(ConfigError, match="heads_total"):
        CLIPConfig.from_dict(bad)
    bad = cfg.to_dict()
    bad["text"]["blocks"][0]["heads"] = -1
    with pytest.raises(ConfigError, match=r"text.blocks\[0\].heads"):
        CLIPConfig.from_dict(bad)
    bad = cfg.to_dict()
    bad["vision"]["blocks"][1]["source"] = 0
    with pytest.raises(ConfigError, match="strictly increasing"):
        CLIPConfig.from_dict(bad)


def test_no_blocks_at_all_still_runs():
    cfg = tiny_config()
    cfg.text.blocks = []
    model = SlimCLIP(cfg).eval()
    _, tokens = _inputs(cfg)
    assert model.encode_text(tokens).shape == (3, cfg.embed_dim)
