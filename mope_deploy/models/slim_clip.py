"""SlimCLIP: a CLIP whose every block has its own number of heads and FFN neurons.

Attention inner width is ``heads * head_dim`` and independent of the residual width (as in timm), so a
pruned block is simply a smaller block. A block whose heads (or FFN neurons) are all pruned keeps only
the bias of that branch's output projection, so the physically pruned model equals the masked teacher
exactly. Attention is written with ``scaled_dot_product_attention`` (no ``nn.MultiheadAttention`` fast
path), which exports to ONNX as plain MatMul/Softmax.

Probing hooks for importance scoring are built in as optional per-call masks (:class:`Masks`); they are
``None`` in normal use and never change weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import BlockConfig, CLIPConfig, TextConfig, TowerConfig, VisionConfig
from .files import save_model


class QuickGELU(nn.Module):
    """OpenAI CLIP's activation: ``x * sigmoid(1.702 x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def _act(name: str) -> nn.Module:
    return QuickGELU() if name == "quick_gelu" else nn.GELU()


@dataclass
class Masks:
    """Reversible probes for one tower, keyed by block position (0-based, in this model).

    ``head[l]``: (H,) or (B, H) multipliers on each head's attention output; ``mlp[l]``: (F,) or (B, F)
    multipliers on FFN hidden units; ``gate[l]``: (B,) or scalar multiplier on both residual branches of
    block ``l`` (0 removes the block). A leading batch dimension lets many probes run in one batch.
    """

    head: dict[int, torch.Tensor] = field(default_factory=dict)
    mlp: dict[int, torch.Tensor] = field(default_factory=dict)
    gate: dict[int, torch.Tensor] = field(default_factory=dict)


def _per_sample(m: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape a (K,) or (B, K) mask to broadcast against a tensor with ``ndim`` dims whose last is K."""
    if m.dim() == 1:
        return m
    return m.reshape(m.shape[0], *([1] * (ndim - 2)), m.shape[-1])


class Attention(nn.Module):
    """Multi-head self-attention with fused q/k/v projection ``d -> 3*H*h`` and output ``H*h -> d``."""

    def __init__(self, width: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.qkv = nn.Linear(width, 3 * inner)
        self.out_proj = nn.Linear(inner, width)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                head_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # B, H, N, h
        if head_mask is not None:
            hm = head_mask.to(o.dtype)
            o = o * (hm.view(1, -1, 1, 1) if hm.dim() == 1 else hm.view(hm.shape[0], -1, 1, 1))
        return self.out_proj(o.transpose(1, 2).reshape(B, N, self.heads * self.head_dim))


class MLP(nn.Module):
    """FFN ``d -> F -> d`` with OpenAI's key names (``c_fc``, ``c_proj``)."""

    def __init__(self, width: int, hidden: int, act: str):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.act = _act(act)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.act(self.c_fc(x))
        if mask is not None:
            h = h * _per_sample(mask.to(h.dtype), h.dim())
        return self.c_proj(h)


class Block(nn.Module):
    """Pre-LN residual block. With 0 heads (0 FFN neurons) the branch is skipped and only its output bias
    (``attn_bias`` / ``mlp_bias``) is added, which is exactly what the teacher computes with them masked."""

    def __init__(self, width: int, cfg: BlockConfig, head_dim: int, act: str, eps: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        if cfg.heads:
            self.attn = Attention(width, cfg.heads, head_dim)
        else:
            self.attn = None
            self.attn_bias = nn.Parameter(torch.zeros(width))
        if cfg.mlp:
            self.mlp = MLP(width, cfg.mlp, act)
        else:
            self.mlp = None
            self.mlp_bias = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                head_mask: torch.Tensor | None = None, mlp_mask: torch.Tensor | None = None,
                gate: torch.Tensor | None = None) -> torch.Tensor:
        a = self.attn(self.ln_1(x), attn_mask, head_mask) if self.attn is not None else self.attn_bias
        x = x + (a if gate is None else a * _gate(gate, x))
        m = self.mlp(self.ln_2(x), mlp_mask) if self.mlp is not None else self.mlp_bias
        return x + (m if gate is None else m * _gate(gate, x))


def _gate(gate: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    g = gate.to(x.dtype)
    return g.view(-1, 1, 1) if g.dim() == 1 else g


class _Tower(nn.Module):
    """Shared block stack; subclasses provide ``embed`` (inputs -> tokens) and ``head`` (tokens -> embedding)."""

    attn_mask: torch.Tensor | None

    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(Block(cfg.width, b, cfg.head_dim, cfg.act, cfg.ln_eps) for b in cfg.blocks)

    def run_blocks(self, x: torch.Tensor, start: int = 0, end: int | None = None, masks: Masks | None = None,
                   hidden: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Run blocks ``start..end-1`` on token states ``x``; append each block's output to ``hidden``."""
        mask = self._attn_mask(x)
        end = len(self.blocks) if end is None else end
        for i in range(start, end):
            blk = self.blocks[i]
            if masks is None:
                x = blk(x, mask)
            else:
                x = blk(x, mask, masks.head.get(i), masks.mlp.get(i), masks.gate.get(i))
            if hidden is not None:
                hidden.append(x)
        return x

    def _attn_mask(self, x: torch.Tensor) -> torch.Tensor | None:
        return None

    def forward(self, inputs: torch.Tensor, masks: Masks | None = None, return_hidden: bool = False):
        """Embedding of ``inputs`` (unnormalised); with ``return_hidden`` also every block's output."""
        hidden: list[torch.Tensor] | None = [] if return_hidden else None
        x = self.run_blocks(self.embed(inputs), masks=masks, hidden=hidden)
        out = self.head(x, inputs)
        return (out, hidden) if return_hidden else out


class VisionTower(_Tower):
    """ViT image encoder (open_clip ``VisionTransformer`` without attentional pooling)."""

    def __init__(self, cfg: VisionConfig, embed_dim: int):
        super().__init__(cfg)
        w = cfg.width
        self.conv1 = nn.Conv2d(3, w, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(w))
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.num_tokens, w))
        self.ln_pre = nn.LayerNorm(w, eps=cfg.ln_eps) if cfg.ln_pre else nn.Identity()
        self.ln_post = nn.LayerNorm(w, eps=cfg.ln_eps)
        self.proj = nn.Parameter(torch.zeros(w, embed_dim))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        x = self.conv1(images).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.ln_pre(x)

    def head(self, x: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
        cfg: VisionConfig = self.cfg  # type: ignore[assignment]
        if not cfg.final_ln_after_pool:
            x = self.ln_post(x)
        pooled = x[:, 0] if cfg.pool == "tok" else x[:, 1:].mean(dim=1)
        if cfg.final_ln_after_pool:
            pooled = self.ln_post(pooled)
        return pooled @ self.proj


class TextTower(_Tower):
    """Causal text transformer (open_clip ``TextTransformer`` / the text part of ``CLIP``)."""

    def __init__(self, cfg: TextConfig, embed_dim: int):
        super().__init__(cfg)
        w = cfg.width
        self.token_embedding = nn.Embedding(cfg.vocab_size, w)
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.context_length, w))
        self.ln_final = nn.LayerNorm(w, eps=cfg.ln_eps)
        if cfg.proj_bias:
            self.text_projection = nn.Linear(w, embed_dim)
        else:
            self.text_projection = nn.Parameter(torch.zeros(w, embed_dim))
        if cfg.causal:
            mask = torch.full((cfg.context_length, cfg.context_length), float("-inf")).triu_(1)
            self.register_buffer("attn_mask", mask, persistent=False)
        else:
            self.attn_mask = None

    def _attn_mask(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.attn_mask is None:
            return None
        n = x.shape[1]
        return self.attn_mask[:n, :n].to(x.dtype)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(tokens)
        return x + self.positional_embedding[: tokens.shape[1]].to(x.dtype)

    def pool_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """Position of the token whose state is the text embedding, per sequence."""
        cfg: TextConfig = self.cfg  # type: ignore[assignment]
        if cfg.pool == "argmax":  # EOT has the highest id in CLIP's BPE vocabulary
            return tokens.argmax(dim=-1)
        if cfg.pool == "eos":
            return (tokens == cfg.eos_id).int().argmax(dim=-1)
        n = tokens.shape[1]
        return torch.full((tokens.shape[0],), 0 if cfg.pool == "first" else n - 1, dtype=torch.long,
                          device=tokens.device)

    def head(self, x: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
        assert inputs is not None, "the text head needs the tokens for pooling"
        x = self.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), self.pool_index(inputs)]
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(pooled)
        return pooled @ self.text_projection


class SlimCLIP(nn.Module):
    """CLIP with per-block heads/FFN widths; same call conventions as open_clip's ``CLIP``.

    >>> model = SlimCLIP(config)              # random init
    >>> img = model.encode_image(images, normalize=True)
    >>> txt = model.encode_text(tokens, normalize=True)
    """

    def __init__(self, config: CLIPConfig, init: bool = True):
        super().__init__()
        self.config = config.validate()
        self.visual = VisionTower(config.vision, config.embed_dim)
        self.text = TextTower(config.text, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0)) if config.logit_bias else None
        if init:
            self.init_weights()

    def tower(self, name: str) -> _Tower:
        """The ``vision`` or ``text`` tower module."""
        self.config.tower(name)  # validates the name
        return self.visual if name == "vision" else self.text

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.visual(images)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.text(tokens)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, images: torch.Tensor | None = None, tokens: torch.Tensor | None = None):
        """``(image_features, text_features, logit_scale.exp()[, logit_bias])``, features normalised."""
        img = self.encode_image(images, normalize=True) if images is not None else None
        txt = self.encode_text(tokens, normalize=True) if tokens is not None else None
        if self.logit_bias is not None:
            return img, txt, self.logit_scale.exp(), self.logit_bias
        return img, txt, self.logit_scale.exp()

    @torch.no_grad()
    def init_weights(self) -> None:
        """open_clip's initialisation (random weights for training from scratch and for tests)."""
        for tower in (self.visual, self.text):
            w, depth = tower.cfg.width, max(tower.cfg.depth, 1)
            attn_std, proj_std, fc_std = w ** -0.5, w ** -0.5 * (2 * depth) ** -0.5, (2 * w) ** -0.5
            for blk in tower.blocks:
                if blk.attn is not None:
                    nn.init.normal_(blk.attn.qkv.weight, std=attn_std)
                    nn.init.zeros_(blk.attn.qkv.bias)
                    nn.init.normal_(blk.attn.out_proj.weight, std=proj_std)
                    nn.init.zeros_(blk.attn.out_proj.bias)
                if blk.mlp is not None:
                    nn.init.normal_(blk.mlp.c_fc.weight, std=fc_std)
                    nn.init.normal_(blk.mlp.c_proj.weight, std=proj_std)
        v, t = self.visual, self.text
        scale = v.cfg.width ** -0.5
        nn.init.normal_(v.class_embedding, std=scale)
        nn.init.normal_(v.positional_embedding, std=scale)
        nn.init.normal_(v.proj, std=scale)
        nn.init.normal_(t.token_embedding.weight, std=0.02)
        nn.init.normal_(t.positional_embedding, std=0.01)
        tp = t.text_projection
        nn.init.normal_(tp.weight if isinstance(tp, nn.Linear) else tp, std=t.cfg.width ** -0.5)

    def save(self, directory: str | Path, force: bool = False) -> Path:
        """Write ``config.json`` + ``model.safetensors`` to ``directory`` atomically (:func:`.files.save_model`:
        absent, empty or a model directory written before; ``force`` replaces anything else)."""
        return save_model(self, directory, force=force)

    @property
    def preprocess(self):
        """The image transform (open_clip's, from the saved preprocess settings)."""
        from .processing import build_preprocess
        return build_preprocess(self.config)

    @property
    def tokenizer(self):
        """The text tokenizer this model was trained with (callable: list of str -> LongTensor)."""
        from .processing import build_tokenizer
        return build_tokenizer(self.config)
