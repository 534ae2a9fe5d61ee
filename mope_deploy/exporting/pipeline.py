"""One export run: ONNX graphs + parity gate, variants + recall gate, engines, Triton repo, manifest.

The orchestrator: it calls the exporters (:mod:`.onnx`, :mod:`.variants`, :mod:`.tensorrt`,
:mod:`.torch_trt`, :mod:`.triton`), which never call back here. Everything is written into a temporary
sibling of ``out_dir`` and renamed into place only when every gate passed, so a refused export leaves
``out_dir`` exactly as it was (absent, or the previous bundle). File names: :mod:`.bundle`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..atomic import atomic_dir, check_target
from ..models.slim_clip import SlimCLIP
from ..vocab import TOWERS
from . import onnx as ox
from .bundle import BUNDLE_OWNER, Bundle, plan_hash, variant_names
from .config import EvalInputs, ExportConfig, ExportConfigError, resolve_exporter

PARITY_BATCHES = (1, 3)  # each parity input is also run as an odd batch, not just the traced one


def preflight(config: ExportConfig, eval_inputs: EvalInputs | None = None) -> None:
    """Every refusal that needs no work: bad settings, missing data, missing GPU libraries (callers run it
    before loading a model; :func:`export_bundle` runs it again)."""
    config.check()
    has_data = config.eval_data is not None or (eval_inputs is not None and eval_inputs.labelled)
    why = None if has_data else config.needs_eval_data()
    if why:
        raise ExportConfigError(why)
    if "tensorrt" in config.formats:
        from .tensorrt import require_tensorrt
        require_tensorrt()
    if "torch-tensorrt" in config.formats:
        if config.precision == "int8":
            raise ExportConfigError("torch-tensorrt int8 needs a ModelOpt-quantised model: use --format tensorrt for "
                                    "int8 (Q/DQ engines) or --precision fp16")
        from .torch_trt import require_torch_tensorrt
        require_torch_tensorrt()


def export_bundle(model: SlimCLIP, out_dir: str | Path, config: ExportConfig | None = None,
                  eval_inputs: EvalInputs | None = None, *, log: Callable[[str], None] | None = None,
                  progress: bool = False, force: bool = False) -> dict[str, Any]:
    """Export ``model`` to ``out_dir`` as ``config`` says and return the manifest written.

    ``out_dir`` may be absent, empty or an earlier bundle (:data:`~.bundle.BUNDLE_OWNER`); ``force`` replaces
    anything else (checked before any work, see :mod:`mope_deploy.atomic`).

    Gates (each raises :class:`~.onnx.ExportError` and leaves ``out_dir`` untouched): ONNX Runtime vs torch
    within ``config.atol`` on random and real inputs; each variant's Recall Mean no more than
    ``config.max_recall_drop`` points below the fp32 graph's. Evaluation data: ``eval_inputs``, else loaded
    from ``config.eval_data``; ``fp16``/``int8`` need it unless ``config.skip_recall_gate``.
    """
    config = config or ExportConfig()
    say = log or (lambda msg: None)
    preflight(config, eval_inputs)
    check_target(out_dir, BUNDLE_OWNER, force)
    bmin, bopt, bmax = config.batch_range
    exporter = resolve_exporter(config.exporter)

    model = ox.as_fp32(model)
    ev = eval_inputs
    if ev is None and config.eval_data is not None:
        say(f"loading evaluation data {config.eval_data}")
        ev = EvalInputs.load(model, config.eval_data, config.eval_limit, progress=progress)
    gate = _Gate(config, ev, model, progress)

    cfg = model.config
    manifest: dict[str, Any] = {
        "kind": "mope-export",
        "formats": list(config.formats), "precision": config.precision, "normalize": config.normalize,
        "batch_sizes": {"min": bmin, "opt": bopt, "max": bmax},
        "export_config": config.to_dict(),
        "config": cfg.to_dict(),
        "source": {"spec": config.source, "arch_hash": cfg.arch_hash(), "plan_hash": plan_hash(cfg),
                   "provenance": cfg.provenance},
        "encoders": ox.encoder_specs(model),
        "tokenizer": {"pool": cfg.text.pool, "eos_id": cfg.text.eos_id, "context_length": cfg.text.context_length,
                      "input_dtype": "int32"},
    }
    sparse_weights = _sparsity_record(model, manifest, config.sparse)
    with atomic_dir(out_dir, owner=BUNDLE_OWNER, force=force) as tmp:
        bundle = Bundle(tmp)
        t0 = time.perf_counter()
        say(f"exporting ONNX graphs ({exporter} exporter, opset {config.opset})")
        info = ox.write_onnx(model, tmp, opset=config.opset, normalize=config.normalize, exporter=exporter,
                             external_data=config.external_data)
        manifest.update(opset=info["opset"], exporter=info["exporter"], external_data=info["external_data"],
                        export_seconds=round(time.perf_counter() - t0, 2))
        say("parity check: ONNX Runtime vs torch")
        parity = gate.parity(tmp, "fp32")
        manifest["parity"] = parity
        if not parity["passed"]:
            raise ox.ExportError(f"export refused: ONNX Runtime differs from torch by {parity['max_abs']:.3g} "
                                 f"(> atol {config.atol:g}); details: {json.dumps(_parity_summary(parity))}")
        variants: dict[str, Any] = {"fp32": {"files": variant_names("fp32"), "precision": "fp32",
                                             "parity": _parity_summary(parity)}}
        base = "fp32"
        if gate.labelled:
            say("evaluating fp32 graphs")
            variants["fp32"]["recall"] = gate.recall(bundle, "fp32")
        if config.optimize:
            from .variants import optimize_onnx

            say("ONNX Runtime transformer optimisation")
            stats = {t: optimize_onnx(bundle.onnx(t, "fp32"), bundle.onnx(t, "optimized")) for t in TOWERS}
            p = gate.parity(tmp, "optimized")
            if not p["passed"]:
                raise ox.ExportError(f"export refused: the ORT-optimised graphs differ from torch by "
                                     f"{p['max_abs']:.3g} (> atol {config.atol:g}); export with --no-optimize")
            variants["optimized"] = {"files": variant_names("optimized"), "precision": "fp32", "fused_ops": stats,
                                     "parity": _parity_summary(p)}
            gate.judge(bundle, variants, "optimized")
            base = "optimized"
        onnx_out = "onnx" in config.formats or "triton" in config.formats
        if config.fused and onnx_out and _fused_variant(model, bundle, variants, manifest, gate, config, say):
            base = "fused"
        precision = config.precision
        if precision == "int8" and onnx_out:
            say(f"int8 ONNX variant ({config.int8_method})")
            variants["int8"] = _int8_variant(bundle, base, gate, config, say)
        elif precision == "fp16" and onnx_out:
            from .variants import convert_fp16

            say(f"{precision} ONNX variant")
            # fp16 from the plain graph, whose standard ops every GPU provider runs
            method = {t: convert_fp16(bundle.onnx(t, "fp32"), bundle.onnx(t, precision)) for t in TOWERS}["vision"]
            variants[precision] = {"files": variant_names(precision), "precision": precision, "from": "fp32",
                                   "method": method}
        if precision in variants and precision != "fp32":
            gate.agreement(bundle, variants, precision)
            gate.judge(bundle, variants, precision)
            manifest[precision] = dict(variants[precision]["files"])  # the runtime looks here for int8 files
        from .ort_fused import graph_runtimes

        for name, v in variants.items():  # contrib ops (com.microsoft) run on ONNX Runtime only
            v["runtimes"] = graph_runtimes([bundle.onnx(t, name) for t in TOWERS])
        manifest["variants"] = variants
        manifest["deploy_variant"] = precision if precision in variants else base
        # which graphs serve which runtime: ONNX Runtime takes the deployed variant; TensorRT and other runtimes
        # take the best standard-op one (the int8 QDQ graph reads as explicit int8 there)
        portable = next(n for n in (precision, "fp32") if n in variants and variants[n]["runtimes"] == ["any"])
        ort_variant = (base if base in variants else "fp32") if precision == "fp32" else manifest["deploy_variant"]
        manifest["runtime_variants"] = {"onnxruntime": ort_variant, "portable": portable}

        if "tensorrt" in config.formats:
            from .tensorrt import build_engines

            say(f"building TensorRT {precision} engines")
            # each engine is gated vs torch at batch 1/OPT/MAX (and fp16/int8 by recall) before it is written
            manifest["tensorrt"] = build_engines(tmp, model, precision=precision, batch_sizes=(bmin, bopt, bmax),
                                                 calib=ev, sparse=sparse_weights, workspace_gb=config.workspace_gb,
                                                 timing_cache=config.timing_cache,
                                                 max_recall_drop=None if config.skip_recall_gate else
                                                 config.max_recall_drop, say=say)
        if "torch-tensorrt" in config.formats:
            from .torch_trt import compile_torch_tensorrt

            say(f"compiling with torch-tensorrt ({precision})")
            manifest["torch_tensorrt"] = compile_torch_tensorrt(model, tmp, precision=precision,
                                                                batch_sizes=(bmin, bopt, bmax),
                                                                normalize=config.normalize,
                                                                real_images=ev.parity_images() if ev else None,
                                                                real_tokens=ev.parity_tokens() if ev else None, say=say,
                                                                calib=ev, max_recall_drop=None if config.skip_recall_gate
                                                                else config.max_recall_drop)
        if "onnx" not in config.formats:  # ONNX was only the intermediate: keep the manifest honest about it
            manifest["intermediate_onnx"] = True
        if "triton" in config.formats:
            from .triton import write_repository

            say("writing the Triton model repository")
            deployed = variants[manifest["deploy_variant"]]["files"]
            manifest["triton"] = write_repository(tmp, model, variant_files=deployed,
                                                  engines=(manifest.get("tensorrt") or {}).get("engines"),
                                                  max_batch=bmax, preferred=(bopt, bmax))
        if ev is not None and ev.info:
            manifest["eval"] = dict(ev.info)
        manifest["gates"] = {"parity_atol": config.atol, "max_recall_drop": config.max_recall_drop,
                             "recall_gate": "skipped" if config.skip_recall_gate else
                             ("on" if gate.labelled else "no eval data")}
        manifest = bundle.write_manifest(manifest)
    return manifest


def export_onnx(model: SlimCLIP, out_dir: str | Path, config: ExportConfig | None = None,
                eval_inputs: EvalInputs | None = None) -> dict[str, Any]:
    """The fp32 ONNX graphs alone (no variants): :func:`export_bundle` with ``formats=("onnx",)``,
    ``precision="fp32"``, ``optimize=False``, ``fused=False``; returns the manifest."""
    config = (config or ExportConfig()).replace(formats=("onnx",), precision="fp32", optimize=False, fused=False)
    return export_bundle(model, out_dir, config, eval_inputs)


class _Gate:
    """Parity and recall checks of one export, on the run's evaluation inputs (if any)."""

    def __init__(self, config: ExportConfig, ev: EvalInputs | None, model: SlimCLIP, progress: bool):
        self.config, self.ev, self.model, self.progress = config, ev, model, progress
        self.labelled = ev is not None and ev.labelled

    def parity(self, root: Path, variant: str) -> dict[str, Any]:
        ev = self.ev
        return ox.parity_check(self.model, root, normalize=self.config.normalize, atol=self.config.atol,
                               batch_sizes=PARITY_BATCHES, real_images=ev.parity_images() if ev else None,
                               real_tokens=ev.parity_tokens() if ev else None, files=variant_names(variant))

    def recall(self, bundle: Bundle, variant: str) -> dict[str, float]:
        from .variants import onnx_retrieval

        ev = self.ev
        assert ev is not None and ev.labelled
        return onnx_retrieval(bundle.onnx("vision", variant), bundle.onnx("text", variant), ev.images, ev.tokens,
                              ev.txt2img, progress=self.progress, label=f"eval {variant}")

    def agreement(self, bundle: Bundle, variants: dict, name: str) -> None:
        from .variants import embedding_agreement

        g = torch.Generator().manual_seed(1)
        size = self.model.config.vision.image_size
        ev = self.ev
        images = ev.parity_images() if ev is not None and ev.images is not None else \
            torch.randn(4, 3, size, size, generator=g)
        tokens = ev.parity_tokens() if ev is not None and ev.tokens is not None else \
            ox.tokenize(self.model, ox.SAMPLE_CAPTIONS)
        variants[name]["agreement_vs_fp32"] = embedding_agreement(
            (bundle.onnx("vision"), bundle.onnx("text")), (bundle.onnx("vision", name), bundle.onnx("text", name)),
            images, tokens)

    def judge(self, bundle: Bundle, variants: dict, name: str) -> None:
        """Measure the variant's Recall Mean and refuse it if it lost more than allowed vs fp32."""
        v, max_drop, skipped = variants[name], self.config.max_recall_drop, self.config.skip_recall_gate
        if not self.labelled:
            v["recall"] = None
            v["recall_gate"] = "skipped by --skip-recall-gate" if skipped else "no --eval-data"
            return
        v["recall"] = self.recall(bundle, name)  # fp16 too: ORT's CPU provider runs fp16 graphs (slowly)
        delta = v["recall"]["recall_mean"] - variants["fp32"]["recall"]["recall_mean"]
        v["recall_delta"] = delta
        if -delta > max_drop and not skipped:
            raise ox.ExportError(f"export refused: the {name} variant loses {-delta:.2f} points of Recall Mean vs "
                                 f"fp32 ({v['recall']['recall_mean']:.2f} vs "
                                 f"{variants['fp32']['recall']['recall_mean']:.2f}; allowed {max_drop:g}); use a "
                                 "higher precision or raise --max-recall-drop")
        v["recall_gate"] = "passed" if -delta <= max_drop else "skipped by --skip-recall-gate"


def _fused_variant(model: SlimCLIP, bundle: Bundle, variants: dict, manifest: dict, gate: "_Gate",
                   config: ExportConfig, say: Callable[[str], None]) -> bool:
    """Write the fused-attention graphs (:mod:`.ort_fused`); keep them only if they match the plain graphs
    within ``config.atol`` at batches 1/3/8 and pass the recall gate. A refusal removes the files and is
    recorded in ``manifest["refused_variants"]`` (the plain graphs stay the bundle's contract); returns whether
    the variant was kept. ORT's transformer optimizer is not run on top: on the MoPE-CLIP base shape its
    LayerNorm/Gelu fusions made the fused graph and its int8 copy slower (benchmarks/cpu_levers.py, RESULTS.md)."""
    from .ort_fused import FUSED_PARITY_BATCHES, FUSED_VARIANT, fused_parity, write_fused_onnx

    say("fused-attention graphs for ONNX Runtime (com.microsoft Attention)")
    name = FUSED_VARIANT
    try:
        info = write_fused_onnx(model, bundle.root, normalize=config.normalize, external_data=config.external_data)
        ev = gate.ev
        p = fused_parity(model, {t: bundle.onnx(t) for t in TOWERS}, {t: bundle.onnx(t, name) for t in TOWERS},
                         atol=config.atol, batch_sizes=FUSED_PARITY_BATCHES,
                         real_images=ev.parity_images() if ev is not None and ev.images is not None else None,
                         real_tokens=ev.parity_tokens() if ev is not None and ev.tokens is not None else None)
        if not p["passed"]:
            raise ox.ExportError(f"the fused graphs differ from the plain ones by {p['max_abs']:.3g} "
                                 f"(> atol {config.atol:g})")
        variants[name] = {"files": variant_names(name), "precision": "fp32", "opset": info["opset"],
                          "attention": info["attention"],
                          "parity_vs_fp32_graph": {"atol": p["atol"], "max_abs": p["max_abs"], "passed": True,
                                                   **{t: p[t]["batches"] for t in TOWERS}}}
        gate.judge(bundle, variants, name)
        return True
    except Exception as e:  # noqa: BLE001 - an optional variant: any failure means "not kept", said and recorded
        variants.pop(name, None)
        for t in TOWERS:
            f = bundle.onnx(t, name)
            for g in (f, f.with_name(f.name + ".data")):
                g.unlink(missing_ok=True)
        manifest.setdefault("refused_variants", {})[name] = f"{type(e).__name__}: {str(e).splitlines()[0]}"
        say(f"fused graphs not kept ({manifest['refused_variants'][name]}); the plain graphs serve ONNX Runtime")
        return False


def _int8_variant(bundle: Bundle, base: str, gate: "_Gate", config: ExportConfig,
                  say: Callable[[str], None]) -> dict[str, Any]:
    """The int8 graphs: ``dynamic`` from the deployed fp32 variant (the fused one when kept: its Attention
    nodes become QAttention), ``static`` as QDQ on the plain graph (standard ops, attention MatMuls included,
    calibrated on the evaluation inputs). With ``config.int8_fp32_nodes`` the most harmful nodes (measured by
    :func:`~.quantize.sensitivity` on the evaluation inputs) stay fp32."""
    from .quantize import (calibration_batches, pick_fp32_nodes, quantize_dynamic_int8, quantize_static_qdq,
                           sensitivity)

    ev = gate.ev
    calib: dict[str, list] = {t: [] for t in TOWERS}
    if ev is not None and ev.images is not None:
        calib["vision"] = calibration_batches(ev.images.float().numpy())
    if ev is not None and ev.tokens is not None:
        calib["text"] = calibration_batches(ev.tokens.to(torch.int32).numpy())
    static = config.int8_method == "static"
    src = "fp32" if static else base

    def quant(s: Path, d: Path, exclude, tower: str) -> dict[str, Any]:
        if static:
            return quantize_static_qdq(s, d, calib[tower], exclude_nodes=exclude)
        return quantize_dynamic_int8(s, d, attention=True, exclude_nodes=exclude)

    keep: dict[str, list[str]] = {t: [] for t in TOWERS}
    sens: dict[str, Any] = {}
    if config.int8_fp32_nodes:
        for t in TOWERS:
            say(f"int8 sensitivity pass ({t})")
            rep = sensitivity(bundle.onnx(t, src), lambda s, d, ex, t=t: quant(s, d, ex, t), calib[t])
            keep[t] = pick_fp32_nodes(rep, config.int8_fp32_nodes)
            sens[t] = {"all_int8": rep["all_int8"], "top": rep["nodes"][:max(5, config.int8_fp32_nodes)],
                       "kept_fp32": keep[t], "metric": rep["metric"]}
    method = {t: quant(bundle.onnx(t, src), bundle.onnx(t, "int8"), keep[t], t) for t in TOWERS}
    out: dict[str, Any] = {"files": variant_names("int8"), "precision": "int8", "from": src,
                           "method": method["vision"], "fp32_nodes": keep}
    if sens:
        out["sensitivity"] = sens
    return out


def _parity_summary(p: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"atol": p["atol"], "max_abs": p["max_abs"], "passed": p["passed"]}
    for tower in TOWERS:
        out[tower] = {k: v["max_abs"] for k, v in p[tower].items()}
    return out


__all__ = ["export_bundle", "export_onnx", "preflight", "PARITY_BATCHES"]


def _sparsity_record(model: SlimCLIP, manifest: dict[str, Any], requested: bool) -> bool:
    """Record the model's weight sparsity in the manifest; TensorRT's sparse-weights flag is on when asked for or
    when every sparse block linear is valid 2:4 (TensorRT then picks sparse kernels per layer, on GPUs with sparse
    tensor cores; ONNX Runtime on CPU gains nothing from the zeros)."""
    from ..sparsity import sparsity_report

    rep = sparsity_report(model)
    use = bool(requested or rep["pattern"] == "2:4")
    if rep["pattern"] != "dense" or requested:
        manifest["sparsity"] = {"pattern": rep["pattern"], "sparsity": rep["sparsity"],
                                "towers": {t: {"pattern": v["pattern"], "sparsity": v["sparsity"], "blocks": v["blocks"]}
                                           for t, v in rep["towers"].items()},
                                "recorded": model.config.sparsity, "tensorrt_sparse_weights": use,
                                "auto_sparse_weights": use and not requested}
    return use
