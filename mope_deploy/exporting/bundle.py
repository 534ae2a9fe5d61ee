"""One export run: ONNX graphs + parity gate, variants + recall gate, engines, Triton repo, manifest.

Everything is written into a temporary sibling of ``out_dir`` and renamed into place only when every
gate passed, so a refused export leaves ``out_dir`` exactly as it was (absent, or the previous bundle).

Layout::

    image_encoder.onnx, text_encoder.onnx          fp32 reference graphs (always)
    *.onnx.data                                    external weights of large graphs
    {image,text}_encoder.optimized.onnx            ORT transformer fusions (fp32; --optimize)
    {image,text}_encoder.{int8,fp16}.onnx          --precision int8 / fp16 (CPU int8, GPU fp16)
    {image,text}_encoder.{precision}.engine        --format tensorrt, with tensorrt_build.log
    {image,text}_encoder.{precision}.ep            --format torch-tensorrt (torch.export program)
    triton/                                        --format triton: a Triton model repository
    manifest.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..atomic import atomic_dir
from ..models.slim_clip import SlimCLIP
from . import onnx as ox
from .manifest import MANIFEST_FILE, plan_hash, write_manifest

FORMATS = ("onnx", "tensorrt", "torch-tensorrt", "triton")
PRECISIONS = ("fp32", "fp16", "int8")
MAX_RECALL_DROP = 1.0  # Recall Mean points a variant may lose vs fp32
PARITY_BATCHES = (1, 3)  # each parity input is also run as an odd batch, not just the traced one


def _variant_files(name: str) -> dict[str, str]:
    if name == "fp32":
        return {"image": ox.IMAGE_FILE, "text": ox.TEXT_FILE}
    return {"image": f"image_encoder.{name}.onnx", "text": f"text_encoder.{name}.onnx"}


def check_formats(formats: Sequence[str]) -> list[str]:
    out = []
    for f in formats:
        if f not in FORMATS:
            raise ValueError(f"unknown export format {f!r}: use one or more of {', '.join(FORMATS)}")
        if f not in out:
            out.append(f)
    if not out:
        raise ValueError(f"no export format given: use --format with one of {', '.join(FORMATS)}")
    return out


def load_eval_inputs(model: SlimCLIP, spec: str, limit: int | None = 200, progress: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Preprocessed images, tokens and txt2img of the first ``limit`` images of dataset ``spec``
    (all captions of those images), with the model's own preprocess and tokenizer."""
    from ..data.datasets import RetrievalDataset, load_dataset
    from ..eval.retrieval import encode_inputs

    ds = load_dataset(spec)
    if limit is not None and ds.n_images > limit:
        keep = [c for c, i in enumerate(ds.txt2img) if i < limit]
        names = ds.image_names[:limit] if ds.image_names is not None else None
        ds = RetrievalDataset(name=ds.name, images=[ds.images[i] for i in range(limit)],
                              captions=[ds.captions[c] for c in keep], txt2img=[ds.txt2img[c] for c in keep],
                              report=ds.report, image_names=names)
    images, tokens, txt2img = encode_inputs(model, ds, progress=progress)
    info = {"spec": str(spec), "name": ds.name, "n_images": int(images.shape[0]), "n_captions": int(tokens.shape[0]),
            "limit": limit, "skipped": len(ds.report)}
    return images, tokens, txt2img, info


def export_bundle(model: SlimCLIP, out_dir: str | Path, formats: Sequence[str] = ("onnx",), precision: str = "fp32",
                  batch_sizes: Sequence[int] = (1, 8, 64), opset: int = 17, normalize: bool = False,
                  exporter: str = "auto", external_data: bool | None = None, atol: float = ox.FP32_ATOL,
                  real_images: torch.Tensor | None = None, real_tokens: torch.Tensor | None = None,
                  optimize: bool = True, eval_data: str | None = None, eval_limit: int | None = 200,
                  max_recall_drop: float = MAX_RECALL_DROP, skip_recall_gate: bool = False, sparse: bool = False,
                  workspace_gb: float = 4.0, timing_cache: str | Path | None = None, source: str | None = None,
                  log: Callable[[str], None] | None = None, progress: bool = False) -> dict[str, Any]:
    """Export ``model`` to ``out_dir`` in every format of ``formats`` and return the manifest written.

    Gates (each raises :class:`ExportError` and leaves ``out_dir`` untouched): ONNX Runtime vs torch
    within ``atol`` on random and real inputs; each variant's Recall Mean on ``eval_data`` no more than
    ``max_recall_drop`` points below the fp32 graph's. ``fp16``/``int8`` need ``eval_data`` (int8 TensorRT
    calibrates on it) unless ``skip_recall_gate``.
    """
    say = log or (lambda msg: None)
    formats = check_formats(formats)
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    bmin, bopt, bmax = ox.check_batch_sizes(batch_sizes)
    ox._check_opset(opset)
    exporter = ox.resolve_exporter(exporter)
    if max_recall_drop < 0:
        raise ValueError(f"max_recall_drop must be >= 0 points, got {max_recall_drop}")
    if precision != "fp32" and eval_data is None and not skip_recall_gate:
        raise ValueError(f"--precision {precision} needs --eval-data SPEC: the {precision} variant is kept only if its "
                         f"Recall Mean stays within {max_recall_drop} points of fp32 (or pass --skip-recall-gate)")
    if precision == "int8" and "tensorrt" in formats and eval_data is None:
        raise ValueError("TensorRT int8 calibrates on real inputs: give --eval-data SPEC")
    if "tensorrt" in formats:
        from .tensorrt import require_tensorrt
        require_tensorrt()
    if "torch-tensorrt" in formats:
        if precision == "int8":
            raise ValueError("torch-tensorrt int8 needs a ModelOpt-quantised model: use --format tensorrt for int8 "
                             "(calibrated engines) or --precision fp16")
        from .torch_trt import require_torch_tensorrt
        require_torch_tensorrt()

    model = ox.as_fp32(model)
    ev = None
    if eval_data is not None:
        say(f"loading evaluation data {eval_data}")
        ev = load_eval_inputs(model, eval_data, eval_limit, progress=progress)
        ev[3]["progress"] = progress
        if real_images is None:
            real_images = ev[0][:8]
        if real_tokens is None:
            real_tokens = ev[1][:8].to(torch.int32)

    cfg = model.config
    manifest: dict[str, Any] = {
        "kind": "mope-export",
        "formats": formats, "precision": precision, "normalize": normalize,
        "batch_sizes": {"min": bmin, "opt": bopt, "max": bmax},
        "config": cfg.to_dict(),
        "source": {"spec": source, "arch_hash": cfg.arch_hash(), "plan_hash": plan_hash(cfg),
                   "provenance": cfg.provenance},
        "encoders": ox.encoder_specs(model),
        "tokenizer": {"pool": cfg.text.pool, "eos_id": cfg.text.eos_id, "context_length": cfg.text.context_length,
                      "input_dtype": "int32"},
    }
    with atomic_dir(out_dir) as tmp:
        t0 = time.perf_counter()
        say(f"exporting ONNX graphs ({exporter} exporter, opset {opset})")
        info = ox.write_onnx(model, tmp, opset=opset, normalize=normalize, exporter=exporter,
                             external_data=external_data)
        manifest.update(opset=info["opset"], exporter=info["exporter"], external_data=info["external_data"],
                        export_seconds=round(time.perf_counter() - t0, 2))
        say("parity check: ONNX Runtime vs torch")
        parity = ox.parity_check(model, tmp, normalize=normalize, atol=atol, batch_sizes=PARITY_BATCHES,
                                 real_images=real_images, real_tokens=real_tokens)
        manifest["parity"] = parity
        if not parity["passed"]:
            raise ox.ExportError(f"export refused: ONNX Runtime differs from torch by {parity['max_abs']:.3g} "
                                 f"(> atol {atol:g}); details: {json.dumps(_parity_summary(parity))}")
        variants: dict[str, Any] = {"fp32": {"files": _variant_files("fp32"), "precision": "fp32",
                                             "parity": _parity_summary(parity)}}
        base = "fp32"
        if ev is not None:
            say("evaluating fp32 graphs")
            variants["fp32"]["recall"] = _recall(tmp, "fp32", ev)
        if optimize:
            say("ONNX Runtime transformer optimisation")
            stats = {t: _make(tmp, "fp32", "optimized", t, _opt) for t in ("image", "text")}
            p = ox.parity_check(model, tmp, normalize=normalize, atol=atol, batch_sizes=PARITY_BATCHES,
                                real_images=real_images, real_tokens=real_tokens, files=_variant_files("optimized"))
            if not p["passed"]:
                raise ox.ExportError(f"export refused: the ORT-optimised graphs differ from torch by {p['max_abs']:.3g} "
                                     f"(> atol {atol:g}); export with --no-optimize")
            variants["optimized"] = {"files": _variant_files("optimized"), "precision": "fp32", "fused_ops": stats,
                                     "parity": _parity_summary(p)}
            _gate(tmp, variants, "optimized", ev, max_recall_drop)
            base = "optimized"
        if precision in ("int8", "fp16") and ("onnx" in formats or "triton" in formats):
            from .variants import convert_fp16, quantize_int8

            fn = quantize_int8 if precision == "int8" else convert_fp16
            say(f"{precision} ONNX variant")
            # int8 from the fused graph (ORT's advice: optimise first); fp16 from the plain one, whose
            # standard ops every GPU provider runs
            src = base if precision == "int8" else "fp32"
            method = {t: _make(tmp, src, precision, t, fn) for t in ("image", "text")}["image"]
            variants[precision] = {"files": _variant_files(precision), "precision": precision, "from": src,
                                   "method": method}
            _agreement(tmp, variants, precision, model, real_images, real_tokens)
            _gate(tmp, variants, precision, ev, max_recall_drop, skipped=skip_recall_gate)
            manifest[precision] = dict(variants[precision]["files"])  # the runtime looks here for int8 files
        manifest["variants"] = variants
        manifest["deploy_variant"] = precision if precision in variants else base

        if "tensorrt" in formats:
            from .tensorrt import build_engines

            say(f"building TensorRT {precision} engines")
            manifest["tensorrt"] = build_engines(tmp, model, precision=precision, batch_sizes=(bmin, bopt, bmax),
                                                 calib=ev, sparse=sparse, workspace_gb=workspace_gb,
                                                 timing_cache=timing_cache)
        if "torch-tensorrt" in formats:
            from .torch_trt import compile_torch_tensorrt

            say(f"compiling with torch-tensorrt ({precision})")
            manifest["torch_tensorrt"] = compile_torch_tensorrt(model, tmp, precision=precision,
                                                                batch_sizes=(bmin, bopt, bmax), normalize=normalize)
        if "onnx" not in formats:  # ONNX was only the intermediate: keep the manifest honest about it
            manifest["intermediate_onnx"] = True
        if "triton" in formats:
            from .triton import write_repository

            say("writing the Triton model repository")
            manifest["triton"] = write_repository(tmp, model, variant_files=variants[manifest["deploy_variant"]]["files"],
                                                  engines=(manifest.get("tensorrt") or {}).get("engines"),
                                                  max_batch=bmax, preferred=(bopt, bmax))
        if ev is not None:
            manifest["eval"] = {k: v for k, v in ev[3].items() if k != "progress"}
        manifest["gates"] = {"parity_atol": atol, "max_recall_drop": max_recall_drop,
                             "recall_gate": "skipped" if skip_recall_gate else ("on" if ev is not None else "no eval data")}
        manifest = write_manifest(tmp, manifest)
    return manifest


def _opt(src: Path, dst: Path) -> dict[str, int]:
    from .variants import optimize_onnx

    return optimize_onnx(src, dst)


def _make(root: Path, src_variant: str, dst_variant: str, tower: str, fn) -> Any:
    return fn(root / _variant_files(src_variant)[tower], root / _variant_files(dst_variant)[tower])


def _parity_summary(p: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"atol": p["atol"], "max_abs": p["max_abs"], "passed": p["passed"]}
    for tower in ("image", "text"):
        out[tower] = {k: v["max_abs"] for k, v in p[tower].items()}
    return out


def _recall(root: Path, variant: str, ev) -> dict[str, float]:
    from .variants import onnx_retrieval

    files = _variant_files(variant)
    return onnx_retrieval(root / files["image"], root / files["text"], ev[0], ev[1], ev[2],
                          progress=bool(ev[3].get("progress")), label=f"eval {variant}")


def _agreement(root: Path, variants: dict, name: str, model: SlimCLIP, real_images, real_tokens) -> None:
    from .variants import embedding_agreement

    g = torch.Generator().manual_seed(1)
    size = model.config.vision.image_size
    images = real_images if real_images is not None else torch.randn(4, 3, size, size, generator=g)
    tokens = real_tokens if real_tokens is not None else ox.tokenize(model, ox.SAMPLE_CAPTIONS)
    ref, new = _variant_files("fp32"), _variant_files(name)
    variants[name]["agreement_vs_fp32"] = embedding_agreement(
        (root / ref["image"], root / ref["text"]), (root / new["image"], root / new["text"]), images, tokens)


def _gate(root: Path, variants: dict, name: str, ev, max_drop: float, skipped: bool = False) -> None:
    """Measure the variant's Recall Mean and refuse it if it lost more than ``max_drop`` points vs fp32."""
    v = variants[name]
    if ev is None:
        v["recall"] = None
        v["recall_gate"] = "skipped by --skip-recall-gate" if skipped else "no --eval-data"
        return
    v["recall"] = _recall(root, name, ev)  # fp16 too: ORT's CPU provider runs fp16 graphs (slowly)
    delta = v["recall"]["recall_mean"] - variants["fp32"]["recall"]["recall_mean"]
    v["recall_delta"] = delta
    if -delta > max_drop and not skipped:
        raise ox.ExportError(f"export refused: the {name} variant loses {-delta:.2f} points of Recall Mean vs fp32 "
                             f"({v['recall']['recall_mean']:.2f} vs {variants['fp32']['recall']['recall_mean']:.2f}; "
                             f"allowed {max_drop:g}); use a higher precision or raise --max-recall-drop")
    v["recall_gate"] = "passed" if -delta <= max_drop else "skipped by --skip-recall-gate"


def read_manifest(bundle: str | Path) -> dict[str, Any]:
    return json.loads((Path(bundle) / MANIFEST_FILE).read_text())
