"""ONNX Runtime-only encoder graphs in which each kept block's attention is ONE ``com.microsoft::Attention`` node.

Why emitted rather than pattern-matched: ORT's transformer optimizer does not recognise the decomposed SDPA
pattern of our exported graphs (``Attention: 0`` on the demo teacher), so no fused kernel runs and dynamic
int8 cannot produce ``QAttention``. Here the exporter traces the towers with every block's attention module
swapped for :class:`OrtAttention`, which calls a torch custom op (``mope_ort::attention``) whose ONNX
translation is the contrib op with that block's own ``num_heads`` (its width is the QKV weight's), ``unidirectional=1``
(causal) in a causal text tower. A block with 0 heads has no attention module and gets no node. The custom
op's eager kernel is the model's own computation, so the swapped module also runs in torch.

``Attention`` rather than ``MultiHeadAttention``: its packed QKV weight is a graph initializer, which ORT's
dynamic quantiser turns into ``QAttention`` (int8 QKV projection); MultiHeadAttention takes projected q/k/v.

Contrib ops run on ONNX Runtime only; TensorRT and other runtimes use the plain standard-op graphs
(:mod:`mope_deploy.exporting.onnx`).
"""

from __future__ import annotations

import copy
import types
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.config import TowerConfig
from ..models.slim_clip import Attention, SlimCLIP
from ..vocab import TOWERS
from ..bundle.names import variant_names

#: the bundle variant holding these graphs (``image_encoder.fused.onnx``, ``text_encoder.fused.onnx``)
FUSED_VARIANT = "fused"
CONTRIB_DOMAIN = "com.microsoft"
#: the dynamo exporter's lowest opset; its version converter cannot lower a graph holding a contrib domain
FUSED_OPSET = 18
#: the fused graphs must match the plain ones at each of these batch sizes (odd ones included)
FUSED_PARITY_BATCHES = (1, 3, 8)
OP_NAME = "mope_ort::attention"
STANDARD_DOMAINS = ("", "ai.onnx")


@torch.library.custom_op(OP_NAME, mutates_args=())
def _attention(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, heads: int,
               causal: bool) -> torch.Tensor:
    """``com.microsoft::Attention`` semantics: ``x`` [B,N,D] @ ``weight`` [D,3*H*h] + ``bias``, softmax
    attention per head (scale ``h**-0.5``, causal if asked), heads concatenated -> [B,N,H*h]."""
    B, N, _ = x.shape
    h = weight.shape[1] // 3 // heads
    q, k, v = (x @ weight + bias).view(B, N, 3, heads, h).permute(2, 0, 3, 1, 4).unbind(0)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return o.transpose(1, 2).reshape(B, N, heads * h)


@_attention.register_fake
def _(x, weight, bias, heads, causal):
    return x.new_empty(x.shape[0], x.shape[1], weight.shape[1] // 3)


def _attention_schema():
    from onnx.defs import OpSchema

    p, a = OpSchema.FormalParameter, OpSchema.Attribute
    return OpSchema("Attention", CONTRIB_DOMAIN, 1,
                    inputs=[p("input", "T"), p("weights", "T"), p("bias", "T")], outputs=[p("output", "T")],
                    type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "")],
                    attributes=[a("num_heads", OpSchema.AttrType.INT, ""),
                                a("unidirectional", OpSchema.AttrType.INT, "")])


def _translation_table() -> dict:
    """``{custom op: onnxscript function}`` for the dynamo exporter (onnxscript has no com.microsoft schemas,
    so the contrib op's signature is declared here)."""
    import onnxscript

    op = onnxscript.values.Op(onnxscript.values.Opset(CONTRIB_DOMAIN, 1), "Attention", _attention_schema())

    def attention_onnx(x, weight, bias, heads: int, causal: bool):
        # no qkv_hidden_sizes: equal q/k/v widths are read from the weight, and QAttention has no such attribute
        return op(x, weight, bias, num_heads=heads, unidirectional=int(causal))

    return {torch.ops.mope_ort.attention.default: attention_onnx}


class OrtAttention(nn.Module):
    """A block's :class:`~mope_deploy.models.slim_clip.Attention` as the contrib op + its output projection.

    ``qkv_weight`` is the transposed QKV weight ([D, 3*H*h], the contrib op's layout) stored as a parameter,
    so it is an initializer in the graph (a runtime Transpose would hide it from the quantiser).
    """

    def __init__(self, attn: Attention, causal: bool):
        super().__init__()
        self.heads, self.head_dim, self.causal = attn.heads, attn.head_dim, bool(causal)
        self.qkv_weight = nn.Parameter(attn.qkv.weight.detach().t().contiguous(), requires_grad=False)
        self.qkv_bias = attn.qkv.bias
        self.out_proj = attn.out_proj

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                head_mask: torch.Tensor | None = None) -> torch.Tensor:
        if head_mask is not None:
            raise ValueError("OrtAttention is for export: head masks (importance probes) are not supported")
        # attn_mask is the tower's causal mask (or None): the op's `causal` flag carries the same information
        return self.out_proj(torch.ops.mope_ort.attention(x, self.qkv_weight, self.qkv_bias, self.heads, self.causal))


def _fused_tower(tower: nn.Module, causal: bool) -> nn.Module:
    """A shallow copy of ``tower`` whose blocks use :class:`OrtAttention`; parameters are shared (no copy of
    the model's weights except the transposed QKV matrices), and the original tower is left unchanged."""
    new_blocks = []
    for blk in tower.blocks:
        nb = copy.copy(blk)
        nb._modules = dict(blk._modules)
        if blk.attn is not None:
            nb._modules["attn"] = OrtAttention(blk.attn, causal)
        new_blocks.append(nb)
    t = copy.copy(tower)
    t._modules = dict(tower._modules)
    t._modules["blocks"] = nn.ModuleList(new_blocks)
    return t


def fused_view(model: SlimCLIP) -> types.SimpleNamespace:
    """``visual``/``text``/``config`` of ``model`` with fused attention (what the encoder wrappers need)."""
    causal = bool(model.config.text.causal)
    return types.SimpleNamespace(visual=_fused_tower(model.visual, causal=False),
                                 text=_fused_tower(model.text, causal=causal), config=model.config)


def expected_attention(tower: TowerConfig, causal: bool) -> list[dict[str, int]]:
    """The attention nodes a fused tower must have: one per block with heads, in block order."""
    inner = [b.heads * tower.head_dim for b in tower.blocks if b.heads]
    return [{"num_heads": b.heads, "hidden": h, "unidirectional": int(causal)}
            for b, h in zip([b for b in tower.blocks if b.heads], inner)]


def attention_nodes(path: str | Path) -> list[dict[str, Any]]:
    """Every ``Attention``/``QAttention``/``MultiHeadAttention`` node of a graph, in graph order, with its
    ``num_heads``, attention width (``hidden``: the QKV weight initializer's columns / 3; 0 if the weight is
    not an initializer) and ``unidirectional`` attribute."""
    import onnx
    from onnx import helper

    m = onnx.load(str(path), load_external_data=False)
    shapes = {i.name: list(i.dims) for i in m.graph.initializer}
    out = []
    for n in m.graph.node:
        if n.domain == CONTRIB_DOMAIN and n.op_type in ("Attention", "QAttention", "MultiHeadAttention"):
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            w = shapes.get(n.input[1]) if n.op_type != "MultiHeadAttention" and len(n.input) > 1 else None
            out.append({"name": n.name, "op_type": n.op_type, "num_heads": int(attrs.get("num_heads", 0)),
                        "hidden": int(w[1]) // 3 if w and len(w) == 2 else 0,
                        "unidirectional": int(attrs.get("unidirectional", 0))})
    return out


def check_attention_nodes(path: str | Path, tower: TowerConfig, causal: bool) -> list[dict[str, Any]]:
    """Raise :class:`~mope_deploy.exporting.onnx.ExportError` unless ``path`` has exactly one attention node
    per block with heads, with that block's head count, width and causality; returns the nodes."""
    from .onnx import ExportError

    got = attention_nodes(path)
    want = expected_attention(tower, causal)
    seen = [{k: n[k] for k in ("num_heads", "hidden", "unidirectional")} for n in got]
    if seen != want:
        raise ExportError(f"{Path(path).name}: attention nodes {seen} do not match the model's blocks {want}; "
                          "the fused export is broken (export without fused graphs meanwhile)")
    return got


def write_fused_onnx(model: SlimCLIP, out_dir: str | Path, normalize: bool = False,
                     external_data: bool | None = None, example_batch: int = 2,
                     files: dict[str, str] | None = None) -> dict[str, Any]:
    """Write the fused vision and text graphs into ``out_dir`` with the plain writer
    (:func:`~.onnx.write_onnx`, dynamo, opset :data:`FUSED_OPSET`, the towers of :func:`fused_view` and the
    contrib op's translation) and check their attention nodes against the config
    (:class:`~.onnx.ExportError` if they do not match). ``files``: ``{tower: file name}``, default the ``fused``
    variant's names.

    Returns ``{"opset", "files", "attention": {tower: [node dicts]}, "external_data", "op", "runtimes"}``.
    """
    from .onnx import GraphStyle, write_onnx

    files = files or variant_names(FUSED_VARIANT)
    style = GraphStyle(files=dict(files), view=fused_view, translation=_translation_table)
    written = write_onnx(model, out_dir, opset=FUSED_OPSET, normalize=normalize, exporter="dynamo",
                         external_data=external_data, example_batch=example_batch, style=style)
    info: dict[str, Any] = {"opset": FUSED_OPSET, "files": dict(files), "attention": {},
                            "external_data": written["external_data"], "op": f"{CONTRIB_DOMAIN}::Attention",
                            "runtimes": ["onnxruntime"]}
    for tower, causal in (("vision", False), ("text", bool(model.config.text.causal))):
        nodes = check_attention_nodes(Path(out_dir) / files[tower], model.config.tower(tower), causal)
        info["attention"][tower] = [{k: n[k] for k in ("num_heads", "hidden", "unidirectional")} for n in nodes]
    return info


def graph_runtimes(paths: Sequence[str | Path]) -> list[str]:
    """``["any"]`` when every node of the graphs is a standard ONNX op, else ``["onnxruntime"]`` (contrib ops
    such as com.microsoft Attention, QAttention, SkipLayerNormalization run on ONNX Runtime only)."""
    import onnx

    for path in paths:
        m = onnx.load(str(path), load_external_data=False)
        if any(n.domain not in STANDARD_DOMAINS for n in m.graph.node):
            return ["onnxruntime"]
    return ["any"]


def graph_inputs(model: SlimCLIP, tower: str, batch_sizes: Sequence[int], seed: int = 0,
                 real: torch.Tensor | None = None) -> list[np.ndarray]:
    """One input batch per size in ``batch_sizes`` (random images for ``vision`` / random int32 token rows for
    ``text``), plus ``real`` if given."""
    from .onnx import random_tokens

    if tower not in TOWERS:
        raise ValueError(f"unknown tower {tower!r}: use one of {', '.join(TOWERS)}")
    g = torch.Generator().manual_seed(seed)
    size = model.config.vision.image_size
    out = []
    for b in batch_sizes:
        x = torch.randn(b, 3, size, size, generator=g) if tower == "vision" else random_tokens(model, b, g)
        out.append(x.numpy())
    if real is not None:
        out.append((real.float() if tower == "vision" else real.to(torch.int32)).numpy())
    return out


def compare_graphs(ref_path: str | Path, new_path: str | Path, batches: Sequence[np.ndarray],
                   threads: int | None = 1) -> dict[str, Any]:
    """Max |difference| and min cosine of ``new_path``'s embeddings vs ``ref_path``'s, each batch run as its
    own call (so a graph that mishandles some batch size shows up)."""
    from .graphs import compare_embeddings, ort_session

    ref, new = ort_session(ref_path, threads=threads), ort_session(new_path, threads=threads)
    name_r, name_n = ref.get_inputs()[0].name, new.get_inputs()[0].name
    rows, worst, cos_min = [], 0.0, 1.0
    for x in batches:
        c = compare_embeddings(new.run(None, {name_n: x})[0], ref.run(None, {name_r: x})[0])
        rows.append({"batch": int(len(x)), "max_abs": c["max_abs"], "min_cosine": c["min_cosine"]})
        worst, cos_min = max(worst, c["max_abs"]), min(cos_min, c["min_cosine"])
    return {"max_abs": worst, "min_cosine": cos_min, "batches": rows}


def fused_parity(model: SlimCLIP, plain: dict[str, Path], fused: dict[str, Path], atol: float = 1e-4,
                 batch_sizes: Sequence[int] = (1, 3, 8), real_images: torch.Tensor | None = None,
                 real_tokens: torch.Tensor | None = None) -> dict[str, Any]:
    """The fused graphs vs the plain (parity-gated) graphs in ONNX Runtime (``{tower: path}`` each), per tower
    and batch size; ``passed`` is False if any max |difference| exceeds ``atol``."""
    report: dict[str, Any] = {"atol": atol, "batch_sizes": list(batch_sizes)}
    worst = 0.0
    for tower, real in (("vision", real_images), ("text", real_tokens)):
        r = compare_graphs(plain[tower], fused[tower], graph_inputs(model, tower, batch_sizes, real=real))
        report[tower] = r
        worst = max(worst, r["max_abs"])
    report["max_abs"] = worst
    report["passed"] = bool(worst <= atol)
    return report


__all__ = ["FUSED_VARIANT", "FUSED_OPSET", "FUSED_PARITY_BATCHES", "graph_runtimes", "OrtAttention", "fused_view",
           "write_fused_onnx",
           "attention_nodes", "check_attention_nodes", "expected_attention", "compare_graphs", "fused_parity",
           "graph_inputs"]
