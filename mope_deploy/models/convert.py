"""open_clip ``CLIP`` / ``CustomTextCLIP`` (ViT image tower, standard text tower) -> :class:`SlimCLIP`.

Everything the conversion cannot represent exactly is refused with :class:`UnsupportedModelError`
naming the option, never silently approximated.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import MopeError
from .config import CLIPConfig, TextConfig, VisionConfig, uniform_blocks
from .slim_clip import SlimCLIP

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class UnsupportedModelError(MopeError, ValueError):
    """The open_clip model uses an option SlimCLIP does not implement."""


def _refuse(what: str) -> None:
    raise UnsupportedModelError(
        f"unsupported open_clip option: {what}. mope-deploy converts ViT image towers with the standard "
        "open_clip text transformer (CLIP / CustomTextCLIP with TextTransformer)."
    )


def _block_options(blocks: nn.ModuleList, tower: str) -> tuple[int, str, float]:
    from open_clip.transformer import QuickGELU, ResidualAttentionBlock

    heads, acts, eps = set(), set(), set()
    for i, b in enumerate(blocks):
        if type(b) is not ResidualAttentionBlock:
            _refuse(f"{tower} block {i} is {type(b).__name__} (qk_norm / scaled attention / scale_fc variants)")
        if not isinstance(b.ls_1, nn.Identity) or not isinstance(b.ls_2, nn.Identity):
            _refuse(f"{tower} block {i} uses LayerScale (ls_init_value)")
        if hasattr(b, "ln_1_kv"):
            _refuse(f"{tower} block {i} is a cross-attention block")
        if b.attn.in_proj_bias is None or b.attn.out_proj.bias is None:
            _refuse(f"{tower} block {i} attention without bias")
        if not b.attn.batch_first:
            _refuse(f"{tower} block {i} attention with batch_first=False")
        act = b.mlp.gelu
        if isinstance(act, QuickGELU):
            acts.add("quick_gelu")
        elif isinstance(act, nn.GELU) and act.approximate == "none":
            acts.add("gelu")
        else:
            _refuse(f"{tower} activation {act!r}")
        heads.add(b.attn.num_heads)
        eps.add(b.ln_1.eps)
    if len(acts) > 1 or len(eps) > 1:
        _refuse(f"{tower} mixes activations or LayerNorm eps across blocks")
    return heads.pop(), acts.pop(), eps.pop()


def _vision_config(v: nn.Module) -> VisionConfig:
    from open_clip.transformer import VisionTransformer

    if not isinstance(v, VisionTransformer):
        _refuse(f"image tower {type(v).__name__} (only VisionTransformer is supported)")
    if v.attn_pool is not None:
        _refuse("attentional pooling in the image tower (attentional_pool)")
    if v.pool_type not in ("tok", "avg"):
        _refuse(f"image pool_type={v.pool_type!r}")
    if v.proj is None:
        _refuse("image tower without projection")
    if v.image_size[0] != v.image_size[1] or v.patch_size[0] != v.patch_size[1]:
        _refuse("non-square image or patch size")
    if getattr(v.conv1, "bias", None) is not None:
        _refuse("patch embedding with bias")
    blocks = v.transformer.resblocks
    heads, act, eps = _block_options(blocks, "vision")
    width = v.transformer.width
    if width % heads:
        _refuse(f"vision width {width} not divisible by {heads} heads")
    return VisionConfig(
        width=width, head_dim=width // heads, act=act, ln_eps=eps,
        blocks=uniform_blocks(len(blocks), heads, blocks[0].mlp.c_fc.out_features),
        image_size=v.image_size[0], patch_size=v.patch_size[0], pool=v.pool_type,
        final_ln_after_pool=bool(v.final_ln_after_pool), ln_pre=not isinstance(v.ln_pre, nn.Identity),
    )


def _text_parts(model: nn.Module) -> dict[str, Any]:
    """The text tower's modules, whether they sit on ``CLIP`` itself or on ``CustomTextCLIP.text``."""
    from open_clip.transformer import TextTransformer

    if hasattr(model, "text"):
        t = model.text
        if not isinstance(t, TextTransformer):
            _refuse(f"text tower {type(t).__name__} (Hugging Face / custom text towers)")
        if t.cls_emb is not None:
            _refuse("text class token (embed_cls)")
        if getattr(t, "use_pad_mask", False):
            _refuse("text padding mask (use_pad_mask)")
        return dict(transformer=t.transformer, token_embedding=t.token_embedding,
                    positional_embedding=t.positional_embedding, ln_final=t.ln_final,
                    text_projection=t.text_projection, pool=t.pool_type, eos_id=t.eos_id, attn_mask=t.attn_mask)
    return dict(transformer=model.transformer, token_embedding=model.token_embedding,
                positional_embedding=model.positional_embedding, ln_final=model.ln_final,
                text_projection=model.text_projection, pool=model.text_pool_type,
                eos_id=getattr(model, "text_eos_id", 49407), attn_mask=model.attn_mask)


def _text_config(p: dict[str, Any]) -> TextConfig:
    if p["pool"] not in ("argmax", "eos", "first", "last"):
        _refuse(f"text pool_type={p['pool']!r}")
    if p["text_projection"] is None:
        _refuse("text tower without projection")
    blocks = p["transformer"].resblocks
    heads, act, eps = _block_options(blocks, "text")
    width = p["transformer"].width
    return TextConfig(
        width=width, head_dim=width // heads, act=act, ln_eps=eps,
        blocks=uniform_blocks(len(blocks), heads, blocks[0].mlp.c_fc.out_features),
        context_length=p["positional_embedding"].shape[0], vocab_size=p["token_embedding"].num_embeddings,
        pool=p["pool"], eos_id=int(p["eos_id"]) if p["eos_id"] is not None else 49407,
        causal=p["attn_mask"] is not None, proj_bias=isinstance(p["text_projection"], nn.Linear),
    )


def _preprocess_settings(model: nn.Module, image_size: int) -> dict[str, Any]:
    cfg = dict(getattr(model.visual, "preprocess_cfg", None) or {})
    out = {
        "size": image_size,
        "mean": list(cfg.get("mean", OPENAI_MEAN)),
        "std": list(cfg.get("std", OPENAI_STD)),
        "interpolation": cfg.get("interpolation", "bicubic"),
        "resize_mode": cfg.get("resize_mode", "shortest"),
    }
    return out


def _copy_blocks(dst: nn.ModuleList, src: nn.ModuleList) -> None:
    for d, s in zip(dst, src):
        d.ln_1.load_state_dict(s.ln_1.state_dict())
        d.ln_2.load_state_dict(s.ln_2.state_dict())
        d.attn.qkv.weight.copy_(s.attn.in_proj_weight)
        d.attn.qkv.bias.copy_(s.attn.in_proj_bias)
        d.attn.out_proj.load_state_dict(s.attn.out_proj.state_dict())
        d.mlp.c_fc.load_state_dict(s.mlp.c_fc.state_dict())
        d.mlp.c_proj.load_state_dict(s.mlp.c_proj.state_dict())


@torch.no_grad()
def from_open_clip(model: nn.Module, name: str | None = None, pretrained: str | None = None) -> SlimCLIP:
    """Convert an open_clip CLIP to a SlimCLIP with identical outputs (fp32).

    ``name`` (the open_clip architecture name) selects the tokenizer saved with the model; ``pretrained``
    is recorded as provenance.
    """
    v = model.visual
    vcfg = _vision_config(v)
    parts = _text_parts(model)
    tcfg = _text_config(parts)
    embed_dim = v.proj.shape[1]
    tokenizer = {"type": "open_clip", "name": name or "ViT-B-32", "context_length": tcfg.context_length}
    config = CLIPConfig(
        embed_dim=embed_dim, vision=vcfg, text=tcfg, logit_bias=getattr(model, "logit_bias", None) is not None,
        preprocess=_preprocess_settings(model, vcfg.image_size), tokenizer=tokenizer,
        provenance={"source": "open_clip", "teacher": name, "pretrained": pretrained},
    )
    slim = SlimCLIP(config, init=False).to(dtype=v.proj.dtype)

    sv = slim.visual
    sv.conv1.weight.copy_(v.conv1.weight)
    sv.class_embedding.copy_(v.class_embedding)
    sv.positional_embedding.copy_(v.positional_embedding)
    if vcfg.ln_pre:
        sv.ln_pre.load_state_dict(v.ln_pre.state_dict())
    sv.ln_post.load_state_dict(v.ln_post.state_dict())
    sv.proj.copy_(v.proj)
    _copy_blocks(sv.blocks, v.transformer.resblocks)

    st = slim.text
    st.token_embedding.weight.copy_(parts["token_embedding"].weight)
    st.positional_embedding.copy_(parts["positional_embedding"])
    st.ln_final.load_state_dict(parts["ln_final"].state_dict())
    if tcfg.proj_bias:
        st.text_projection.load_state_dict(parts["text_projection"].state_dict())
    else:
        st.text_projection.copy_(parts["text_projection"])
    _copy_blocks(st.blocks, parts["transformer"].resblocks)

    slim.logit_scale.copy_(model.logit_scale.reshape(()))
    if slim.logit_bias is not None:
        slim.logit_bias.copy_(model.logit_bias.reshape(()))
    return slim.eval()
