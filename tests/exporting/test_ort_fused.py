"""Fused ONNX Runtime graphs: one com.microsoft Attention per kept block, equal to the plain graph and to torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export_helpers import ort_run
from mope_deploy.bundle import variant_names
from mope_deploy.exporting.onnx import ExportError, random_tokens, write_onnx
from mope_deploy.exporting.ort_fused import (FUSED_VARIANT, OrtAttention, attention_nodes, check_attention_nodes,
                                             fused_parity, fused_view, write_fused_onnx)
from mope_deploy.models import SlimCLIP
from mope_deploy.models.config import BlockConfig
from mope_deploy.models.tiny import tiny_config

BATCHES = (1, 3, 8)


def uneven_model(seed: int = 0) -> SlimCLIP:
    """Pruned-like: every block has its own head count, one block per tower has 0 heads, one has no FFN.
    Every parameter is perturbed so no zero bias hides a wiring mistake."""
    cfg = tiny_config(depth=3)
    cfg.vision.blocks = [BlockConfig(4, 256, 0), BlockConfig(0, 128, 1), BlockConfig(1, 0, 3)]
    cfg.text.blocks = [BlockConfig(3, 64, 0), BlockConfig(0, 256, 1), BlockConfig(2, 128, 2)]
    torch.manual_seed(seed)
    model = SlimCLIP(cfg.validate()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def _bundle(model: SlimCLIP, root: Path) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    write_onnx(model, root)
    info = write_fused_onnx(model, root)
    return {"root": root, "info": info, "plain": {t: root / f for t, f in variant_names("fp32").items()},
            "fused": {t: root / f for t, f in variant_names(FUSED_VARIANT).items()}}


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    model = uneven_model()
    return model, _bundle(model, tmp_path_factory.mktemp("uneven"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    import mope_deploy

    model = mope_deploy.load("demo").eval()
    return model, _bundle(model, tmp_path_factory.mktemp("demo"))


def _op_counts(path: Path) -> dict[tuple[str, str], int]:
    m = onnx.load(str(path), load_external_data=False)
    out: dict[tuple[str, str], int] = {}
    for n in m.graph.node:
        out[(n.domain or "", n.op_type)] = out.get((n.domain or "", n.op_type), 0) + 1
    return out


@pytest.mark.parametrize("which", ["uneven", "demo"])
def test_one_attention_node_per_kept_block(which, request):
    model, b = request.getfixturevalue(which)
    for tower, cfg, causal in (("vision", model.config.vision, 0), ("text", model.config.text, 1)):
        nodes = attention_nodes(b["fused"][tower])
        kept = [blk for blk in cfg.blocks if blk.heads]
        assert len(nodes) == len(kept)
        assert [n["num_heads"] for n in nodes] == [blk.heads for blk in kept]
        assert [n["hidden"] for n in nodes] == [blk.heads * cfg.head_dim for blk in kept]
        assert {n["unidirectional"] for n in nodes} == {causal}
        assert {n["op_type"] for n in nodes} == {"Attention"}
        counts = _op_counts(b["fused"][tower])
        # nothing of the decomposed attention is left: no Softmax, and the plain graph had one per kept block
        assert counts.get(("", "Softmax"), 0) == 0
        assert _op_counts(b["plain"][tower]).get(("", "Softmax"), 0) == len(kept)
    assert b["info"]["attention"]["vision"] == [{"num_heads": 4, "hidden": 64, "unidirectional": 0},
                                               {"num_heads": 1, "hidden": 16, "unidirectional": 0}] \
        if which == "uneven" else True


@pytest.mark.parametrize("which", ["uneven", "demo"])
def test_fused_matches_plain_graph_and_torch(which, request):
    model, b = request.getfixturevalue(which)
    tokens = model.tokenizer(["a dog on a red sofa", "two bicycles", "a"]).to(torch.int32)
    rep = fused_parity(model, b["plain"], b["fused"], atol=1e-4, batch_sizes=BATCHES, real_tokens=tokens)
    assert rep["passed"], rep
    for tower in ("vision", "text"):
        assert [r["batch"] for r in rep[tower]["batches"]] == list(BATCHES) + ([3] if tower == "text" else [])
    # and against the torch model itself (the plain graph is gated on that; check the fused one directly too)
    g = torch.Generator().manual_seed(5)
    size = model.config.vision.image_size
    for bs in BATCHES:
        img = torch.randn(bs, 3, size, size, generator=g)
        ref = model.encode_image(img).detach().numpy()
        assert np.abs(ort_run(b["fused"]["vision"], img) - ref).max() < 1e-4
        tok = random_tokens(model, bs, g)
        ref = model.encode_text(tok.long()).detach().numpy()
        assert np.abs(ort_run(b["fused"]["text"], tok) - ref).max() < 1e-4


def test_fused_view_runs_in_torch_and_leaves_model_alone():
    model = uneven_model(1)
    view = fused_view(model)
    assert isinstance(view.visual.blocks[0].attn, OrtAttention) and view.visual.blocks[1].attn is None
    assert view.text.blocks[2].attn.causal and not view.visual.blocks[2].attn.causal
    assert not isinstance(model.visual.blocks[0].attn, OrtAttention)  # the original is untouched
    assert view.visual.blocks[0].mlp is model.visual.blocks[0].mlp  # weights shared, not copied
    img = torch.randn(2, 3, 32, 32)
    tok = model.tokenizer(["a cat", "a small boat at night"])
    with torch.no_grad():
        assert torch.allclose(view.visual(img), model.encode_image(img), atol=1e-5)
        assert torch.allclose(view.text(tok), model.encode_text(tok), atol=1e-5)


def test_wrong_head_count_is_caught(uneven, tmp_path):
    model, b = uneven
    m = onnx.load(str(b["fused"]["text"]))
    node = next(n for n in m.graph.node if n.op_type == "Attention")
    for a in node.attribute:
        if a.name == "num_heads":
            a.i = 1  # 3 heads -> 1: still a valid graph, different numbers
    bad = tmp_path / "bad.onnx"
    onnx.save(m, str(bad))
    with pytest.raises(ExportError, match="attention nodes"):
        check_attention_nodes(bad, model.config.text, causal=True)
    tok = random_tokens(model, 3, torch.Generator().manual_seed(0))
    assert np.abs(ort_run(bad, tok) - ort_run(b["plain"]["text"], tok)).max() > 1e-3  # and the parity gate would too
    with pytest.raises(ExportError, match="attention nodes"):  # causality is checked too
        check_attention_nodes(b["fused"]["text"], model.config.text, causal=False)
