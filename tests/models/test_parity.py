"""SlimCLIP converted from open_clip must give open_clip's embeddings (fp32, random weights)."""

from __future__ import annotations

import open_clip
import pytest
import torch

from mope_deploy.models import UnsupportedModelError, from_open_clip

ATOL = 1e-5


def _check_parity(oc_model, name: str, image_size: int, context_length: int, batch: int = 2) -> float:
    slim = from_open_clip(oc_model.eval(), name=name)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, image_size, image_size, generator=g)
    tokens = torch.randint(1, 49406, (batch, context_length), generator=g)
    tokens[:, 0] = 49406
    tokens[0, 5], tokens[1, context_length - 1] = 49407, 49407  # EOT at different positions
    tokens[0, 6:] = 0
    with torch.no_grad():
        di = (oc_model.encode_image(images) - slim.encode_image(images)).abs().max().item()
        dt = (oc_model.encode_text(tokens) - slim.encode_text(tokens)).abs().max().item()
        ni = (oc_model.encode_image(images, normalize=True) - slim.encode_image(images, normalize=True)).abs().max()
    assert di < ATOL and dt < ATOL and ni.item() < ATOL, (name, di, dt)
    return max(di, dt)


@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-B-16-quickgelu"])
def test_parity_real_architectures(name):
    torch.manual_seed(0)
    model = open_clip.create_model(name)
    # open_clip zero-initialises some biases/LNs; randomise every parameter so parity is not trivially met.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    _check_parity(model, name, 224, 77, batch=2)


TINY_VARIANTS = {
    "tiny-gelu": dict(),
    "tiny-quickgelu": dict(quick_gelu=True),
    "tiny-avgpool-final-ln": dict(vision_cfg=dict(pool_type="avg", final_ln_after_pool=True)),
    "tiny-no-ln-pre": dict(vision_cfg=dict(no_ln_pre=True)),
    "tiny-text-proj-bias-eos": dict(text_cfg=dict(proj_bias=True, pool_type="eos", eos_id=49407)),
    "tiny-custom-text": dict(custom_text=True),
}


@pytest.mark.parametrize("variant", list(TINY_VARIANTS))
def test_parity_tiny_configs(variant):
    opts = dict(TINY_VARIANTS[variant])
    vision = dict(image_size=32, patch_size=8, width=64, layers=2, head_width=16, mlp_ratio=4.0)
    text = dict(context_length=16, vocab_size=49408, width=64, heads=4, layers=2)
    vision.update(opts.pop("vision_cfg", {}))
    text.update(opts.pop("text_cfg", {}))
    torch.manual_seed(0)
    cls = open_clip.CustomTextCLIP if opts.pop("custom_text", False) or text.get("proj_bias") else open_clip.CLIP
    model = cls(embed_dim=32, vision_cfg=vision, text_cfg=text, **opts)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    _check_parity(model, variant, 32, 16)


def test_unsupported_options_are_named():
    torch.manual_seed(0)
    vision = dict(image_size=32, patch_size=8, width=64, layers=1, head_width=16, ls_init_value=0.1)
    text = dict(context_length=16, vocab_size=49408, width=64, heads=4, layers=1)
    with pytest.raises(UnsupportedModelError, match="LayerScale"):
        from_open_clip(open_clip.CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text))
    vision = dict(image_size=32, patch_size=8, width=64, layers=1, head_width=16, attentional_pool=True,
                  attn_pooler_heads=4, attn_pooler_queries=4)
    with pytest.raises(UnsupportedModelError, match="attentional pooling"):
        from_open_clip(open_clip.CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text))
    vision = dict(image_size=32, patch_size=8, width=64, layers=1, head_width=16)
    with pytest.raises(UnsupportedModelError, match="embed_cls"):
        from_open_clip(open_clip.CustomTextCLIP(embed_dim=32, vision_cfg=vision, text_cfg=dict(text, embed_cls=True)))
