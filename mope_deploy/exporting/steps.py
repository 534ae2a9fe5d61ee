"""The steps of an export, each taking the run (:class:`ExportRun`: the model, the folder being written, the
:class:`~.config.ExportConfig`, the evaluation inputs) and returning a typed record of
:mod:`mope_deploy.bundle.manifest` that goes into the manifest:

    graphs (fp32 + parity gate) -> optimized -> fused -> precision (int8 | fp16) -> runtime choice
    -> engines (TensorRT) -> torch-tensorrt -> triton -> manifest

:func:`export_onnx` runs the ONNX steps alone into a bundle (what a runtime given a model calls);
:func:`~.pipeline.export_bundle` runs them all. Steps never call the orchestrator.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..atomic import Output, no_room_cause
from ..bundle.directory import Bundle
from ..bundle.manifest import (ONNXRUNTIME, PORTABLE, EncoderSpec, EngineSet, Gates, Manifest, Source, Sparsity,
                               Variant)
from ..bundle.names import BUNDLE_OWNER, onnx_name, variant_names
from ..models.identity import json_hash, provenance_plan_hash, weights_hash
from ..models.slim_clip import SlimCLIP
from ..vocab import TOWERS
from . import onnx as ox
from .config import EvalInputs, ExportConfig, resolve_exporter
from .variant_gate import VariantGate, parity_summary


@dataclass
class ExportRun:
    """What the steps of one export share; ``root`` is the (temporary) folder being written."""

    model: SlimCLIP
    config: ExportConfig
    ev: EvalInputs | None
    gate: VariantGate
    say: Callable[[str], None]
    root: Path = Path(".")
    variants: dict[str, Variant] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    engines: dict[str, EngineSet] = field(default_factory=dict)
    graphs: dict[str, Any] = field(default_factory=dict)  # exporter, opset, external_data, seconds, parity
    base: str = "fp32"  # the best fp32 graphs for ONNX Runtime so far
    sparsity: Sparsity | None = None
    sparse_weights: bool = False

    @property
    def onnx_out(self) -> bool:
        """Whether ONNX graphs are a deliverable (else only the intermediate of engines)."""
        return "onnx" in self.config.formats or "triton" in self.config.formats


def prepare(model: SlimCLIP, config: ExportConfig, eval_inputs: EvalInputs | None,
            log: Callable[[str], None] | None = None, progress: bool = False) -> ExportRun:
    """The run's fp32 model, evaluation inputs (loaded from ``config.eval_data`` when not given), gate and
    sparsity record."""
    say = log or (lambda msg: None)
    model = ox.as_fp32(model)
    ev = eval_inputs
    if ev is None and config.eval_data is not None:
        say(f"loading evaluation data {config.eval_data}")
        ev = EvalInputs.load(model, config.eval_data, config.eval_limit, progress=progress)
    run = ExportRun(model, config, ev, VariantGate(config, ev, model, progress), say)
    run.sparsity, run.sparse_weights = sparsity_record(model, config.sparse)
    return run


def sparsity_record(model: SlimCLIP, requested: bool) -> tuple[Sparsity | None, bool]:
    """The model's weight sparsity (None when dense and not asked for) and whether TensorRT's sparse-weights flag
    is on: when asked for, or when every sparse block linear is valid 2:4 (TensorRT then picks sparse kernels per
    layer, on GPUs with sparse tensor cores; ONNX Runtime on CPU gains nothing from the zeros)."""
    from ..sparsity import sparsity_report

    rep = sparsity_report(model)
    use = bool(requested or rep["pattern"] == "2:4")
    if rep["pattern"] == "dense" and not requested:
        return None, use
    towers = {t: {"pattern": v["pattern"], "sparsity": v["sparsity"], "blocks": v["blocks"]}
              for t, v in rep["towers"].items()}
    return Sparsity(pattern=rep["pattern"], sparsity=rep["sparsity"], towers=towers, recorded=model.config.sparsity,
                    tensorrt_sparse_weights=use, auto_sparse_weights=use and not requested), use


# ------------------------------------------------------------------------------------------ ONNX steps
def graphs_step(run: ExportRun) -> Variant:
    """The fp32 graphs and their parity gate vs torch (refused above ``config.atol``)."""
    c = run.config
    exporter = resolve_exporter(c.exporter)
    t0 = time.perf_counter()
    run.say(f"exporting ONNX graphs ({exporter} exporter, opset {c.opset})")
    info = ox.write_onnx(run.model, run.root, opset=c.opset, normalize=c.normalize, exporter=exporter,
                         external_data=c.external_data)
    run.graphs = {"opset": info["opset"], "exporter": info["exporter"], "external_data": info["external_data"],
                  "export_seconds": round(time.perf_counter() - t0, 2)}
    run.say("parity check: ONNX Runtime vs torch")
    parity = run.gate.parity(run.root, "fp32")
    run.graphs["parity"] = parity
    if not parity["passed"]:
        raise ox.ExportError(f"export refused: ONNX Runtime differs from torch by {parity['max_abs']:.3g} "
                             f"(> atol {c.atol:g}); details: {json.dumps(parity_summary(parity))}")
    v = Variant(files=variant_names("fp32"), precision="fp32", parity=parity_summary(parity))
    if run.gate.labelled:
        run.say("evaluating fp32 graphs")
        v.recall = run.gate.recall(run.root, "fp32")
    return v


def optimize_step(run: ExportRun) -> Variant:
    """ONNX Runtime's transformer fusions of the fp32 graphs (parity-gated, then recall-gated)."""
    from .variants import optimize_onnx

    run.say("ONNX Runtime transformer optimisation")
    stats = {t: optimize_onnx(run.root / onnx_name(t), run.root / onnx_name(t, "optimized")) for t in TOWERS}
    p = run.gate.parity(run.root, "optimized")
    if not p["passed"]:
        raise ox.ExportError(f"export refused: the ORT-optimised graphs differ from torch by {p['max_abs']:.3g} "
                             f"(> atol {run.config.atol:g}); export with --no-optimize")
    v = Variant(files=variant_names("optimized"), precision="fp32", made_from="fp32", parity=parity_summary(p),
                details={"fused_ops": stats})
    return run.gate.judge(run.root, "optimized", v, run.variants["fp32"])


def fused_step(run: ExportRun) -> Variant | None:
    """The fused-attention graphs (:mod:`.ort_fused`), kept only if they match the plain graphs within
    ``config.atol`` at batches 1/3/8 and pass the recall gate. A refusal removes the files and is recorded in
    ``run.refused`` (the plain graphs stay the bundle's contract). ORT's transformer optimizer is not run on top:
    on the MoPE-CLIP base shape its LayerNorm/Gelu fusions made the fused graph and its int8 copy slower
    (benchmarks/cpu_levers.py, RESULTS.md)."""
    from .ort_fused import FUSED_PARITY_BATCHES, FUSED_VARIANT, fused_parity, write_fused_onnx

    run.say("fused-attention graphs for ONNX Runtime (com.microsoft Attention)")
    name, root = FUSED_VARIANT, run.root
    try:
        info = write_fused_onnx(run.model, root, normalize=run.config.normalize,
                                external_data=run.config.external_data)
        p = fused_parity(run.model, {t: root / onnx_name(t) for t in TOWERS},
                         {t: root / onnx_name(t, name) for t in TOWERS}, atol=run.config.atol,
                         batch_sizes=FUSED_PARITY_BATCHES, real_images=run.gate.real_images(),
                         real_tokens=run.gate.real_tokens())
        if not p["passed"]:
            raise ox.ExportError(f"the fused graphs differ from the plain ones by {p['max_abs']:.3g} "
                                 f"(> atol {run.config.atol:g})")
        v = Variant(files=variant_names(name), precision="fp32", made_from=None,
                    parity={"vs": "fp32 graphs", "atol": p["atol"], "max_abs": p["max_abs"], "passed": True,
                            **{t: p[t]["batches"] for t in TOWERS}},
                    details={"opset": info["opset"], "attention": info["attention"]})
        return run.gate.judge(root, name, v, run.variants["fp32"])
    except Exception as e:  # noqa: BLE001 - an optional variant: any failure means "not kept", said and recorded
        if no_room_cause(e) is not None:
            raise   # a full disk is not a refused variant: the export fails whole and replaces nothing
        for t in TOWERS:
            f = root / onnx_name(t, name)
            for g in (f, f.with_name(f.name + ".data")):
                g.unlink(missing_ok=True)
        run.refused[name] = f"{type(e).__name__}: {str(e).splitlines()[0]}"
        run.say(f"fused graphs not kept ({run.refused[name]}); the plain graphs serve ONNX Runtime")
        return None


def _calibration(ev: EvalInputs | None) -> dict[str, list]:
    from .quantize import calibration_batches

    calib: dict[str, list] = {t: [] for t in TOWERS}
    if ev is not None and ev.images is not None:
        calib["vision"] = calibration_batches(ev.images.float().numpy())
    if ev is not None and ev.tokens is not None:
        calib["text"] = calibration_batches(ev.tokens.to(torch.int32).numpy())
    return calib


def int8_step(run: ExportRun) -> Variant:
    """The int8 graphs: ``dynamic`` (and ``calibrated``) from the deployed fp32 variant (the fused one when kept:
    its Attention nodes become QAttention), ``static`` as QDQ on the plain graph (standard ops, calibrated on the
    evaluation inputs). With ``config.int8_fp32_nodes`` the most harmful nodes (measured by
    :func:`~.quantize.sensitivity`) stay fp32."""
    from . import quantize as q

    c, root = run.config, run.root
    method = c.int8_method
    run.say(f"int8 ONNX variant ({method})")
    calib = _calibration(run.ev)
    if method == "calibrated" and not all(calib.values()):  # no --eval-data: the seeded synthetic set
        calib = q.synthetic_calibration(run.model.config)
    src = "fp32" if method == "static" else run.base

    def quant(s: Path, d: Path, exclude, tower: str) -> dict[str, Any]:
        if method == "static":
            return q.quantize_static_qdq(s, d, calib[tower], exclude_nodes=exclude)
        if method == "calibrated":
            return q.quantize_calibrated_int8(s, d, calib[tower], exclude_nodes=exclude)
        return q.quantize_dynamic_int8(s, d, attention=True, exclude_nodes=exclude)

    keep: dict[str, list[str]] = {t: [] for t in TOWERS}
    sens: dict[str, Any] = {}
    for t in TOWERS if c.int8_fp32_nodes else ():
        run.say(f"int8 sensitivity pass ({t})")
        rep = q.sensitivity(root / onnx_name(t, src), lambda s, d, ex, t=t: quant(s, d, ex, t), calib[t])
        keep[t] = q.pick_fp32_nodes(rep, c.int8_fp32_nodes)
        sens[t] = {"all_int8": rep["all_int8"], "top": rep["nodes"][:max(5, c.int8_fp32_nodes)],
                   "kept_fp32": keep[t], "metric": rep["metric"]}
    how = {t: quant(root / onnx_name(t, src), root / onnx_name(t, "int8"), keep[t], t) for t in TOWERS}
    details: dict[str, Any] = {"fp32_nodes": keep, **({"sensitivity": sens} if sens else {})}
    invariant = getattr(q, "BATCH_INVARIANT", {}).get(method)
    return Variant(files=variant_names("int8"), precision="int8", made_from=src, method=how["vision"],
                   batch_invariant=invariant, details=details)


def openvino_step(run: ExportRun) -> dict[str, str] | None:
    """OpenVINO IR (fp32 and NNCF int8) from the fp32 graphs, under the same gates (:mod:`.openvino`); adds the
    variants kept and the refused ones to ``run``; returns the per-tower choice for ``runtime["openvino"]``."""
    from . import openvino as ovx

    ort = run.variants.get("int8")
    ort_int8 = ("int8", {t: run.root / ort.files[t] for t in TOWERS}) if ort is not None and ort.batch_invariant \
        else None
    rec = ovx.export_openvino(run.model, run.root, {t: run.root / onnx_name(t) for t in TOWERS}, run.ev,
                              ovx.OpenVINOExportConfig.from_export(run.config), ort_int8, run.say)
    run.variants.update({n: Variant.from_dict(v) for n, v in rec["variants"].items()})
    run.refused.update(rec["refused"])
    return rec["runtime"] or None


def fp16_step(run: ExportRun) -> Variant:
    """fp16 graphs from the plain fp32 ones, whose standard ops every GPU provider runs."""
    from .variants import convert_fp16

    run.say("fp16 ONNX variant")
    how = {t: convert_fp16(run.root / onnx_name(t), run.root / onnx_name(t, "fp16")) for t in TOWERS}
    return Variant(files=variant_names("fp16"), precision="fp16", made_from="fp32", method=how["vision"])


def precision_step(run: ExportRun) -> Variant | None:
    """The ``config.precision`` variant (int8 or fp16), agreement-measured and recall-gated; None for fp32."""
    p = run.config.precision
    if p == "fp32" or not run.onnx_out:
        return None
    v = int8_step(run) if p == "int8" else fp16_step(run)
    v.details["agreement_vs_fp32"] = run.gate.agreement(run.root, p)
    return run.gate.judge(run.root, p, v, run.variants["fp32"])


def runtime_section(variants: dict[str, Variant], precision: str, base: str) -> tuple[str, dict[str, dict[str, str]]]:
    """The deployed variant (the precision asked for; Triton serves it) and which variant each runtime opens,
    decided once here: ONNX Runtime takes the deployed one, or for an fp32 export the fastest fp32 graphs
    (``base``: fused, else optimized); runtimes that read standard ops only (TensorRT, OpenVINO...) take the best
    standard-op one (an int8 QDQ graph reads as explicit int8 there)."""
    deploy = precision if precision in variants else base
    ort = base if precision == "fp32" else deploy
    portable = next(n for n in (precision, "fp32") if n in variants and variants[n].runtimes == ["any"])
    return deploy, {ONNXRUNTIME: {t: ort for t in TOWERS}, PORTABLE: {t: portable for t in TOWERS}}


def onnx_steps(run: ExportRun) -> None:
    """fp32 graphs, then the ORT variants the config asks for; fills ``run.variants``/``run.base``."""
    from .ort_fused import graph_runtimes

    run.variants["fp32"] = graphs_step(run)
    if run.config.optimize:
        run.variants["optimized"] = optimize_step(run)
        run.base = "optimized"
    if run.config.fused and run.onnx_out:
        fused = fused_step(run)
        if fused is not None:
            run.variants["fused"] = fused
            run.base = "fused"
    extra = precision_step(run)
    if extra is not None:
        run.variants[run.config.precision] = extra
    for name, v in run.variants.items():  # contrib ops (com.microsoft) run on ONNX Runtime only
        v.runtimes = graph_runtimes([run.root / f for f in v.files.values()])


# ---------------------------------------------------------------------------------------- engine steps
def engines_step(run: ExportRun) -> EngineSet:
    """TensorRT engines, each gated vs torch at batch 1/OPT/MAX (fp16/int8 also by recall) before it is written."""
    from . import tensorrt as trt

    run.say(f"building TensorRT {run.config.precision} engines")
    return trt.build_engines(run.root, run.model, trt.EngineBuild.from_export(run.config, run.sparse_weights),
                             calib=run.ev, say=run.say)


def torch_tensorrt_step(run: ExportRun) -> EngineSet:
    from . import tensorrt as trt

    run.say(f"compiling with torch-tensorrt ({run.config.precision})")
    return trt.compile_torch_tensorrt(run.model, run.root, trt.EngineBuild.from_export(run.config, False),
                                      calib=run.ev, say=run.say)


def triton_step(run: ExportRun, deploy_variant: str) -> dict[str, Any]:
    from .triton import write_repository

    run.say("writing the Triton model repository")
    trt = run.engines.get("tensorrt")
    _, bopt, bmax = run.config.batch_range
    return write_repository(run.root, run.model, variant_files=run.variants[deploy_variant].files,
                            engines={t: e.file for t, e in trt.engines.items()} if trt else None,
                            max_batch=bmax, preferred=(bopt, bmax))


# ------------------------------------------------------------------------------------------ manifest
def manifest_of(run: ExportRun, deploy: str, runtime: dict[str, dict[str, str]],
                triton: dict[str, Any] | None = None) -> Manifest:
    """The run's manifest (unstamped: :meth:`~mope_deploy.bundle.Bundle.write_manifest` adds files/versions)."""
    c, cfg = run.config, run.model.config
    bmin, bopt, bmax = c.batch_range
    specs = {t: EncoderSpec.from_dict(s) for t, s in ox.encoder_specs(run.model).items()}
    source = Source(spec=c.source, arch_hash=cfg.arch_hash(), config_hash=json_hash(cfg.to_dict()),
                    weights_hash=weights_hash(run.model), plan_hash=provenance_plan_hash(cfg.provenance),
                    provenance=dict(cfg.provenance or {}))
    gates = Gates(parity_atol=c.atol, max_recall_drop=c.max_recall_drop,
                  recall_gate="skipped" if c.skip_recall_gate else ("on" if run.gate.labelled else "no eval data"))
    tokenizer = {"pool": cfg.text.pool, "eos_id": cfg.text.eos_id, "context_length": cfg.text.context_length,
                 "input_dtype": "int32"}
    return Manifest(formats=list(c.formats), precision=c.precision, normalize=c.normalize,
                    batch_sizes={"min": bmin, "opt": bopt, "max": bmax}, config=cfg.to_dict(),
                    export_config=c.to_dict(), source=source, encoders=specs, tokenizer=tokenizer, gates=gates,
                    variants=run.variants, deploy_variant=deploy, runtime=runtime, parity=run.graphs.get("parity"),
                    refused_variants=run.refused, engines=run.engines, triton=triton, sparsity=run.sparsity,
                    intermediate_onnx="onnx" not in c.formats, opset=run.graphs.get("opset"),
                    exporter=run.graphs.get("exporter"), external_data=run.graphs.get("external_data", {}),
                    export_seconds=run.graphs.get("export_seconds"),
                    eval=dict(run.ev.info) if run.ev is not None and run.ev.info else None)


def export_onnx(model: SlimCLIP, out_dir: str | Path, config: ExportConfig | None = None,
                eval_inputs: EvalInputs | None = None, *, graphs_only: bool = True, force: bool = False,
                log: Callable[[str], None] | None = None) -> Manifest:
    """The ONNX steps alone, written as a bundle (``formats=("onnx",)``; no engines, no Triton).

    ``graphs_only`` (default): the fp32 graphs and their parity gate, nothing else; ``graphs_only=False`` also
    writes the ORT variants ``config`` asks for (optimized, fused, int8/fp16), as ``mope export`` would."""
    config = (config or ExportConfig()).replace(formats=("onnx",))
    if graphs_only:
        config = config.replace(precision="fp32", optimize=False, fused=False)
    config.check()
    output = Output(Path(out_dir), BUNDLE_OWNER, force).check()
    run = prepare(model, config, eval_inputs, log)
    with output.write() as tmp:
        run.root = Path(tmp)
        onnx_steps(run)
        deploy, runtime = runtime_section(run.variants, config.precision, run.base)
        return Bundle(tmp).write_manifest(manifest_of(run, deploy, runtime))


__all__ = ["ExportRun", "prepare", "sparsity_record", "graphs_step", "optimize_step", "fused_step", "int8_step",
           "fp16_step", "precision_step", "runtime_section", "onnx_steps", "engines_step", "torch_tensorrt_step",
           "triton_step", "manifest_of", "export_onnx"]
