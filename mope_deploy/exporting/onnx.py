"""ONNX export of a SlimCLIP as two graphs, with a parity gate against torch.

``image_encoder.onnx``: ``image`` float32 [B,3,S,S] -> ``embedding`` float32 [B,E];
``text_encoder.onnx``: ``tokens`` int32 [B,ctx] -> ``embedding`` float32 [B,E]. The batch axis is dynamic
(the graph is traced with a batch of 2 so no exporter can specialise it to 1).

Text pooling is rebuilt from ops every runtime has: the EOT position is an ``ArgMax`` over a 0/1 float
mask (``tokens == max(tokens)`` in int32, or ``tokens == eos_id``), never over int64 and never over ids
cast to float (not exact once a graph is converted to fp16), and the pooled row is picked with
``GatherElements``; the result equals :meth:`TextTower.pool_index` for every pooling convention.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MopeError
from ..models.slim_clip import SlimCLIP
from ..vocab import TOWERS
from ..bundle.names import INPUT_NAMES, OUTPUT_NAME, onnx_name
from .config import FP32_ATOL, MIN_OPSET, check_opset, resolve_exporter
from .graphs import compare_embeddings, graph_opset, ort_session, quiet_loggers, run_session, save_graph

# Weights above this go to a side file: ONNX protobufs cannot exceed 2 GiB, and loaders that mmap
# external data use less memory, so we switch well before the limit.
EXTERNAL_DATA_BYTES = 1 << 30

# A few captions so the text parity check always sees real tokenizer output, even without --eval-data.
SAMPLE_CAPTIONS = (
    "a dog runs across the grass", "two people ride bicycles down a busy city street",
    "a child in a red jacket jumps into a pile of leaves", "a black and white photo of a harbour at dawn",
    "a plate of food", "an old man playing the accordion on a bridge while tourists walk past him",
    "a", "three brown horses standing in a snowy field next to a wooden fence",
)


class ExportError(MopeError, RuntimeError):
    """An export that was refused (parity or recall gate) or could not be produced."""


class ImageEncoder(nn.Module):
    """``image`` [B,3,S,S] -> ``embedding`` [B,E] (optionally L2-normalised)."""

    def __init__(self, model: SlimCLIP, normalize: bool = False):
        super().__init__()
        self.visual, self.normalize = model.visual, normalize

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.visual(image)
        return F.normalize(x, dim=-1) if self.normalize else x


def pool_positions(tokens: torch.Tensor, pool: str, eos_id: int) -> torch.Tensor:
    """EOT/pooling position per row, computed with ops every ONNX runtime supports (ArgMax on float32).

    Ties resolve to the first index, like ``torch.argmax`` and ONNX ``ArgMax`` (``select_last_index=0``).
    """
    if pool == "argmax":  # CLIP BPE: EOT has the highest id. Compare in int32 and take the ArgMax of a 0/1
        # mask: casting ids to float would break under fp16 conversion (ids > 2048 are not exact in fp16)
        hit = tokens == tokens.amax(dim=-1, keepdim=True)
    elif pool == "eos":  # first occurrence of eos_id, whatever its value in the vocabulary
        hit = tokens == eos_id
    else:
        hit = None
    if hit is not None:
        return hit.to(torch.float32).argmax(dim=-1)
    n = tokens.shape[1]
    # first/last: a constant position, written as a data-dependent zero so the batch axis stays dynamic
    return (tokens[:, 0] * 0).to(torch.int64) + (0 if pool == "first" else n - 1)


class TextEncoder(nn.Module):
    """``tokens`` int32 [B,ctx] -> ``embedding`` [B,E] with export-safe pooling.

    LayerNorm is applied after picking the pooled row; it acts per token, so the result is the same
    as the model's ``ln_final`` then pool, and the graph does ctx times less work there.
    """

    def __init__(self, model: SlimCLIP, normalize: bool = False):
        super().__init__()
        self.text, self.normalize = model.text, normalize
        self.pool, self.eos_id = model.config.text.pool, model.config.text.eos_id

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = self.text
        # index_select rather than nn.Embedding: the dynamo exporter names an embedding op's output
        # "embedding", which collides with the graph output of that name; int32 indices gather as they are
        x = t.token_embedding.weight.index_select(0, tokens.reshape(-1)).view(tokens.shape[0], tokens.shape[1], -1)
        x = t.run_blocks(x + t.positional_embedding[: tokens.shape[1]].to(x.dtype))
        idx = pool_positions(tokens, self.pool, self.eos_id)
        # [:, 0], not .squeeze(1): with a dynamic batch the TorchScript exporter turns squeeze into an ``If`` whose
        # branches differ in rank (squeezed or not), which TensorRT's ONNX parser refuses
        pooled = x.gather(1, idx.view(-1, 1, 1).expand(-1, 1, x.shape[-1]))[:, 0]
        pooled = t.ln_final(pooled)
        proj = t.text_projection
        out = proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj
        return F.normalize(out, dim=-1) if self.normalize else out


def encoder_specs(model: SlimCLIP) -> dict[str, dict[str, Any]]:
    """Names, shapes (``"batch"`` for the dynamic axis) and dtypes of both graphs, for the manifest."""
    return {tower: {"file": onnx_name(tower), "inputs": [{"name": INPUT_NAMES[tower], "dtype": dtype, "shape": shape}],
                    "outputs": [{"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", model.config.embed_dim]}]}
            for tower, dtype, shape in (("vision", "float32", ["batch", *input_shape(model, "vision")]),
                                        ("text", "int32", ["batch", *input_shape(model, "text")]))}


def input_shape(model: SlimCLIP, tower: str) -> tuple[int, ...]:
    """Per-item input shape of a tower's graph: (3, S, S) images or (context_length,) tokens."""
    if tower == "vision":
        s = model.config.vision.image_size
        return (3, s, s)
    return (model.config.text.context_length,)


def random_tokens(model: SlimCLIP, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Plausible random int32 token rows: SOT-like id, random ids, one EOT at a random position, zero padding."""
    cfg = model.config.text
    n, vocab = cfg.context_length, cfg.vocab_size
    ids = torch.randint(1, max(vocab - 1, 2), (batch, n), generator=generator)
    ends = torch.randint(1, n, (batch,), generator=generator)
    pos = torch.arange(n).expand(batch, n)
    ids = torch.where(pos > ends[:, None], torch.zeros_like(ids), ids)
    ids[torch.arange(batch), ends] = cfg.eos_id
    return ids.to(torch.int32)


def tokenize(model: SlimCLIP, captions: Sequence[str]) -> torch.Tensor:
    """The model's own tokenizer, as int32."""
    toks = model.tokenizer(list(captions))
    vocab = model.config.text.vocab_size
    if int(toks.max()) >= vocab:
        raise ExportError(f"the model's tokenizer ({model.config.tokenizer}) produces id {int(toks.max())} but the "
                          f"text tower has {vocab} embeddings: fix config.tokenizer (or pass real_tokens)")
    return toks.to(torch.int32)


def as_fp32(model: SlimCLIP) -> SlimCLIP:
    """The model in fp32 eval mode; a copy when it is not fp32 already (the caller's model is left alone)."""
    if any(p.dtype != torch.float32 for p in model.parameters()):
        import copy

        model = copy.deepcopy(model).float()
    return model.eval()


def _param_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def export_graph(module: nn.Module, example: torch.Tensor, path: Path, input_name: str, opset: int,
                 exporter: str, external_data: bool, translation: dict | None = None) -> None:
    """Export one encoder to ``path`` with a dynamic batch axis; weights to ``path.data`` if ``external_data``.
    ``translation``: the dynamo exporter's ``custom_translation_table`` (custom ops -> ONNX functions)."""
    path = Path(path)
    quiet = contextlib.redirect_stdout(io.StringIO())
    with torch.no_grad(), warnings.catch_warnings(), quiet, quiet_loggers("torch.onnx", "onnxscript"):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=65536)
            extra = {"custom_translation_table": translation} if translation else {}
            prog = torch.onnx.export(module, (example,), None, input_names=[input_name],
                                     output_names=[OUTPUT_NAME], opset_version=opset, dynamo=True,
                                     dynamic_shapes={input_name: {0: batch}}, verbose=False, **extra)
            prog.save(str(path), external_data=external_data)
        else:
            torch.onnx.export(module, (example,), str(path), input_names=[input_name], output_names=[OUTPUT_NAME],
                              opset_version=opset, dynamo=False, do_constant_folding=True,
                              dynamic_axes={input_name: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
            if external_data:
                import onnx

                save_graph(onnx.load(str(path)), path, external=True)
    check_graph(path, input_name)


def check_graph(path: Path, input_name: str) -> None:
    """The saved graph is valid ONNX with the contract's names and a symbolic batch axis."""
    import onnx

    onnx.checker.check_model(str(path))  # by path: works for external data and > 2 GiB
    m = onnx.load(str(path), load_external_data=False)
    ins = [i.name for i in m.graph.input]
    outs = [o.name for o in m.graph.output]
    if ins != [input_name] or outs != [OUTPUT_NAME]:
        raise ExportError(f"{path.name}: expected input {input_name!r} and output {OUTPUT_NAME!r}, got {ins} -> {outs}")
    for v in (m.graph.input[0], m.graph.output[0]):
        d0 = v.type.tensor_type.shape.dim[0]
        if d0.HasField("dim_value"):
            raise ExportError(f"{path.name}: the exporter fixed the batch axis of {v.name!r} to {d0.dim_value}; "
                              "export with a batch of 2 or more and a dynamic batch dimension")


@torch.no_grad()
def parity_check(model: SlimCLIP, bundle_dir: str | Path, normalize: bool = False, atol: float = FP32_ATOL,
                 batch_sizes: Sequence[int] = (1, 3), real_images: torch.Tensor | None = None,
                 real_tokens: torch.Tensor | None = None, files: dict[str, str] | None = None,
                 seed: int = 0) -> dict[str, Any]:
    """ONNX Runtime vs torch (the model's own ``encode_*``) on random and real inputs, per batch size.

    Returns ``{"atol", "passed", "vision": {"random": {...}, "real": {...}}, "text": {...}}`` with the max
    and mean absolute differences; ``passed`` is False if any max exceeds ``atol``. ``files``: tower -> file
    name in ``bundle_dir`` (default: the fp32 graphs).
    """
    bundle_dir = Path(bundle_dir)
    files = files or {t: onnx_name(t) for t in TOWERS}
    g = torch.Generator().manual_seed(seed)
    size = model.config.vision.image_size
    model = model.eval()
    report: dict[str, Any] = {"atol": atol, "batch_sizes": list(batch_sizes)}
    worst = 0.0
    for tower in TOWERS:
        sess = ort_session(bundle_dir / files[tower])
        encode = model.encode_image if tower == "vision" else model.encode_text
        cases: dict[str, torch.Tensor] = {}
        n = sum(batch_sizes)
        if tower == "vision":
            cases["random"] = torch.randn(n, 3, size, size, generator=g)
            if real_images is not None:
                cases["real"] = real_images
        else:
            cases["random"] = random_tokens(model, n, g)
            cases["real"] = real_tokens if real_tokens is not None else tokenize(model, SAMPLE_CAPTIONS)
        rep: dict[str, Any] = {}
        for kind, x in cases.items():
            ref = encode(x.to(torch.int64) if tower == "text" else x, normalize=normalize).float().numpy()
            if kind == "random":  # split into the requested batch sizes so each is run as its own batch
                got, start = [], 0
                for b in batch_sizes:
                    got.append(run_session(sess, x[start:start + b], batch_size=b))
                    start += b
                out = np.concatenate(got)
            else:
                out = run_session(sess, x, batch_size=max(batch_sizes))
            c = compare_embeddings(out, ref)
            rep[kind] = {"max_abs": c["max_abs"], "mean_abs": c["mean_abs"], "n": c["n"]}
            worst = max(worst, rep[kind]["max_abs"])
        report[tower] = rep
    report["max_abs"] = worst
    report["passed"] = bool(worst <= atol)
    return report


@dataclass(frozen=True)
class GraphStyle:
    """How :func:`write_onnx` traces the towers: the file per tower, a ``view`` of the model to trace instead of
    the model (``visual``/``text``/``config``, e.g. with fused attention modules), and the dynamo exporter's
    ``translation`` table for custom ops. The default is the plain fp32 graphs."""

    files: dict[str, str] | None = None
    view: Callable[[SlimCLIP], Any] | None = None
    translation: Callable[[], dict] | None = None


def write_onnx(model: SlimCLIP, out_dir: str | Path, opset: int = MIN_OPSET, normalize: bool = False,
               exporter: str = "auto", external_data: bool | None = None, example_batch: int = 2,
               style: GraphStyle = GraphStyle()) -> dict[str, Any]:
    """Write both graphs into an existing directory (not atomic: the bundle writer is); ``style`` picks the
    files and what is traced (the fused writer passes its own). Returns ``{exporter, normalize, external_data,
    opset, files}``."""
    check_opset(opset)
    exporter = resolve_exporter(exporter)
    if example_batch < 2:
        raise ValueError("example_batch must be >= 2: exporters specialise a traced batch of 1 into the graph")
    out_dir = Path(out_dir)
    model = as_fp32(model)
    traced = style.view(model) if style.view else model
    files = dict(style.files or {t: onnx_name(t) for t in TOWERS})
    translation = style.translation() if style.translation else None
    g = torch.Generator().manual_seed(0)
    size = model.config.vision.image_size
    info: dict[str, Any] = {"exporter": exporter, "normalize": normalize, "external_data": {}, "files": files}
    for tower, module, example in (
        ("vision", ImageEncoder(traced, normalize), torch.randn(example_batch, 3, size, size, generator=g)),
        ("text", TextEncoder(traced, normalize), random_tokens(model, example_batch, g)),
    ):
        ext = _param_bytes(module) > EXTERNAL_DATA_BYTES if external_data is None else external_data
        export_graph(module.eval(), example, out_dir / files[tower], INPUT_NAMES[tower], opset, exporter, ext,
                     translation)
        info["external_data"][tower] = ext
    info["opset"] = graph_opset(out_dir / files["vision"])
    return info


__all__ = ["ExportError", "ImageEncoder", "TextEncoder", "GraphStyle", "input_shape", "write_onnx", "export_graph",
           "check_graph", "parity_check", "pool_positions", "random_tokens", "tokenize", "encoder_specs"]
