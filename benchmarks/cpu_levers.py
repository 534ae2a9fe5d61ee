"""Every CPU speed lever side by side on one model, timed round-robin in one process (one-off; not part of CI).

    .venv/bin/python benchmarks/cpu_levers.py --model base --batch 1,8 --iters 5 --threads 2 \
        --out benchmarks/results/$(date +%F)_cpu_levers_base.json
    .venv/bin/python benchmarks/cpu_levers.py --settings ...     # ORT session-settings sweep on the best variant

``--model base``: the MoPE-CLIP base shape of ViT-L/14 (random weights, as in target_speedup.py); ``demo``: the
shipped demo teacher. Levers (ONNX Runtime unless said): plain fp32 graph, ORT transformer-optimised fp32,
fused fp32 (one com.microsoft Attention per block), fused + ORT's other fusions (``-opt``), dynamic int8 of the
optimised plain graph (the previous default), dynamic int8 of the fused graph without / with QAttention (and of
fused-opt), QAttention int8 with calibrated activation scales (``ort-int8-calibrated``: batch-invariant, the
default int8), OpenVINO IR fp32 / NNCF int8 / NNCF int8 under the THROUGHPUT hint (``ov-*``), static QDQ int8
(symmetric int8 activations,
TensorRT's form) and static QDQ uint8 (ORT CPU's form), the three static ones calibrated on ``--calib`` batches;
torch eager fp32, torch bf16 (AVX-512 BF16 / AMX through oneDNN) and torch.compile (inductor) bf16. Each
variant's embeddings are compared with the plain fp32 graph's (cosine).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from mope_deploy.bundle import onnx_name
from mope_deploy.vocab import TOWERS

ORT_LEVERS = ("ort-fp32", "ort-optimized", "ort-fused", "ort-fused-opt", "ort-int8-dynamic", "ort-int8-fused",
              "ort-int8-qattention", "ort-int8-qattention-opt", "ort-int8-calibrated", "ort-int8-qdq-s8",
              "ort-int8-qdq-u8")
#: OpenVINO IR, f32 inference precision: fp32, NNCF int8 (latency hint), NNCF int8 with the throughput hint
OV_LEVERS = ("ov-fp32", "ov-int8", "ov-int8-throughput")
TORCH_LEVERS = ("torch-fp32", "torch-bf16", "torch-compile-bf16")


def build(model_name: str):
    from mope_deploy.models import SlimCLIP, load_config

    if model_name == "demo":
        import mope_deploy

        return mope_deploy.load("demo").eval()
    from mope_deploy.bench.paper import PAPER_MODELS, paper_configs

    torch.manual_seed(0)
    return SlimCLIP(paper_configs(load_config("ViT-L-14"))[PAPER_MODELS[2].name]).eval()


def make_graphs(model, work: Path, levers, calib: int, say) -> dict[str, dict[str, Path]]:
    from mope_deploy.exporting.onnx import write_onnx
    from mope_deploy.exporting.ort_fused import write_fused_onnx
    from mope_deploy.exporting.quantize import quantize_dynamic_int8, quantize_static_qdq
    from mope_deploy.exporting.variants import optimize_onnx

    work.mkdir(parents=True, exist_ok=True)
    # fixed names here (not the bundle's): this folder is a scratch area, never a bundle
    files = {"ort-fp32": {t: work / f"{t}.fp32.onnx" for t in TOWERS},
             "ort-fused": {t: work / f"{t}.fused.onnx" for t in TOWERS}}
    if not all(p.is_file() for p in files["ort-fp32"].values()):
        say("export plain")
        write_onnx(model, work)
        for t in TOWERS:
            (work / onnx_name(t)).replace(files["ort-fp32"][t])
    if not all(p.is_file() for p in files["ort-fused"].values()):
        say("export fused")
        write_fused_onnx(model, work, files={t: p.name for t, p in files["ort-fused"].items()})
    made = {}
    for lever in levers:
        if lever in files or not lever.startswith("ort-"):
            continue
        out = {t: work / f"{t}.{lever}.onnx" for t in TOWERS}
        for tower in TOWERS:
            src = files["ort-fp32"][tower]
            if out[tower].is_file():
                continue
            say(f"make {lever} {tower}")
            t0 = time.perf_counter()
            if lever == "ort-optimized":
                optimize_onnx(src, out[tower])
            elif lever == "ort-fused-opt":  # ORT's LayerNorm/Gelu fusions on top of our attention nodes
                optimize_onnx(files["ort-fused"][tower], out[tower])
            elif lever == "ort-int8-qattention-opt":
                opt = work / f"{tower}.ort-fused-opt.onnx"
                if not opt.is_file():
                    optimize_onnx(files["ort-fused"][tower], opt)
                quantize_dynamic_int8(opt, out[tower], attention=True)
            elif lever == "ort-int8-dynamic":  # the previous default: int8 of the ORT-optimised plain graph
                opt = work / f"{tower}.ort-optimized.onnx"
                if not opt.is_file():
                    optimize_onnx(src, opt)
                quantize_dynamic_int8(opt, out[tower], attention=False)
            elif lever == "ort-int8-fused":
                quantize_dynamic_int8(files["ort-fused"][tower], out[tower], attention=False)
            elif lever == "ort-int8-qattention":
                quantize_dynamic_int8(files["ort-fused"][tower], out[tower], attention=True)
            elif lever == "ort-int8-calibrated":
                from mope_deploy.exporting.quantize import quantize_calibrated_int8

                quantize_calibrated_int8(files["ort-fused"][tower], out[tower],
                                         _calib(model, tower, calib))
            elif lever.startswith("ort-int8-qdq"):
                batches = _calib(model, tower, calib)
                quantize_static_qdq(src, out[tower], batches,
                                    activation_type="int8" if lever.endswith("s8") else "uint8",
                                    symmetric_activations=lever.endswith("s8"))
            made[(lever, tower)] = round(time.perf_counter() - t0, 1)
        files[lever] = out
    if any(lever.startswith("ov-") for lever in levers):
        from mope_deploy.exporting import openvino as ovx

        files["ov-fp32"] = {t: work / f"{t}.ov-fp32.xml" for t in TOWERS}
        files["ov-int8"] = files["ov-int8-throughput"] = {t: work / f"{t}.ov-int8.xml" for t in TOWERS}
        for t in TOWERS:
            if not files["ov-fp32"][t].is_file():
                say(f"make ov-fp32 {t}")
                ovx.convert_to_ir(files["ort-fp32"][t], files["ov-fp32"][t])
            if not files["ov-int8"][t].is_file():
                say(f"make ov-int8 {t}")
                ovx.quantize_ir(files["ov-fp32"][t], files["ov-int8"][t], _calib(model, t, calib))
    return files


def _calib(model, tower: str, n_batches: int) -> list:
    """Calibration batches of 8: the seeded synthetic set through the model's own preprocess/tokenizer (real-looking
    inputs, as an export with --eval-data would use), so the calibrated levers are judged fairly."""
    from mope_deploy.exporting.quantize import synthetic_calibration

    return synthetic_calibration(model.config, 8 * n_batches, 8)[tower]


class TorchRunner:
    def __init__(self, model, mode: str):
        self.model, self.mode = model, mode
        self.fns = {}
        if mode == "torch-bf16":
            self.model = _bf16_copy(model)
        elif mode == "torch-compile-bf16":
            m = _bf16_copy(model)
            self.fns = {"vision": torch.compile(m.encode_image), "text": torch.compile(m.encode_text)}
            self.model = m

    def fn(self, tower: str, x: np.ndarray):
        t = torch.from_numpy(x)
        if self.mode != "torch-fp32":
            t = t.to(torch.bfloat16) if tower == "vision" else t
        f = self.fns.get(tower) or (self.model.encode_image if tower == "vision" else self.model.encode_text)
        t = t if tower == "vision" else t.long()

        def call():
            with torch.inference_mode():
                return f(t).float().numpy()
        return call


def _bf16_copy(model):
    import copy

    return copy.deepcopy(model).to(torch.bfloat16).eval()


def _runner_fn(r, tower: str):
    """A lever's runner as ``x -> unnormalised embeddings`` (numpy)."""
    if isinstance(r, TorchRunner):
        return lambda x: r.fn(tower, x)()
    if hasattr(r[tower], "infer"):  # an OpenVINO infer request
        return lambda x: np.array(r[tower].infer({0: np.ascontiguousarray(x)})[0])
    s = r[tower]
    return lambda x: s.run(None, {s.get_inputs()[0].name: np.ascontiguousarray(x)})[0]


def quality(model, runners: dict, spec: str, limit: int, say) -> dict:
    """Per lever: Recall Mean on ``spec`` (and its delta vs the first lever) and the largest change of a
    normalised embedding between being encoded alone and inside batches of 3 and 8 (0 = batch-invariant)."""
    from mope_deploy.eval.retrieval import retrieval_metrics
    from mope_deploy.exporting.config import EvalInputs

    ev = EvalInputs.load(model, spec, limit)
    x = {"vision": ev.images.float().numpy(), "text": ev.tokens.numpy().astype(np.int32)}
    rows = []
    for k, r in runners.items():
        say(f"quality {k}")
        emb, inv = {}, {}
        for t in TOWERS:
            f = _runner_fn(r, t)
            out = np.concatenate([f(x[t][i:i + 64]) for i in range(0, len(x[t]), 64)]).astype(np.float64)
            emb[t] = torch.from_numpy(out / np.linalg.norm(out, axis=-1, keepdims=True)).float()
            n = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
            alone = n(np.concatenate([f(x[t][i:i + 1]) for i in range(8)]).astype(np.float64))
            inv[t] = max(float(np.abs(n(np.concatenate([f(x[t][i:i + b]) for i in range(0, 8 - 8 % b, b)])
                                        .astype(np.float64)) - alone[:8 - 8 % b]).max()) for b in (3, 8))
        m = retrieval_metrics(emb["vision"], emb["text"], ev.txt2img)
        rows.append({"lever": k, "recall_mean": float(m["recall_mean"]), "batch_dependence_max_abs": inv})
    for row in rows:
        row["recall_delta"] = row["recall_mean"] - rows[0]["recall_mean"]
        print(json.dumps(row))
    return {"recall_data": ev.info, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="base", choices=("base", "demo"))
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--levers", default=",".join(ORT_LEVERS + OV_LEVERS + TORCH_LEVERS))
    ap.add_argument("--calib", type=int, default=4, help="calibration batches of 8 for the static QDQ levers")
    ap.add_argument("--work", type=Path, default=Path("/tmp/mope-cpu-levers"))
    ap.add_argument("--settings", action="store_true", help="sweep ORT session settings on --settings-lever")
    ap.add_argument("--settings-lever", default="ort-int8-qattention")
    ap.add_argument("--recall", default=None, metavar="SPEC",
                    help="also measure each lever's Recall Mean on SPEC (e.g. synthetic:test with --model demo) and "
                         "whether an input's embedding is the same alone and in batches of 3 and 8; no timing then")
    ap.add_argument("--recall-limit", type=int, default=500)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    say = lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True)  # noqa: E731

    from mope_deploy.bench.harness import bench_inputs, environment, time_interleaved
    from mope_deploy.runtime.ort_settings import SessionSettings

    torch.set_num_threads(args.threads)
    levers = [x for x in args.levers.split(",") if x]
    batches = [int(b) for b in args.batch.split(",")]
    model = build(args.model)
    work = args.work / args.model
    files = make_graphs(model, work, levers if not args.settings else [args.settings_lever], args.calib, say)
    import onnxruntime as ort

    cfg = model.config
    base = SessionSettings(intra_op_threads=args.threads)
    if args.settings:
        lever = args.settings_lever
        variants = {"default(all,spin,arena)": base, "extended": base.replace(graph_optimization="extended"),
                    "basic": base.replace(graph_optimization="basic"),
                    "no-spinning": base.replace(allow_spinning=False),
                    "no-arena": base.replace(cpu_mem_arena=False), "1-thread": base.replace(intra_op_threads=1)}
        runners = {k: {t: ort.InferenceSession(str(files[lever][t]), v.session_options(),
                                               providers=["CPUExecutionProvider"]) for t in TOWERS}
                   for k, v in variants.items()}
    else:
        runners = {}
        for lever in levers:
            if lever.startswith("ort-"):
                runners[lever] = {t: ort.InferenceSession(str(files[lever][t]), base.session_options(),
                                                          providers=["CPUExecutionProvider"]) for t in TOWERS}
            elif lever.startswith("ov-"):
                from mope_deploy.exporting.openvino import compile_ir

                hint = "THROUGHPUT" if lever.endswith("throughput") else "LATENCY"
                runners[lever] = {t: compile_ir(files[lever][t], args.threads, "f32", hint).create_infer_request()
                                  for t in TOWERS}
            else:
                runners[lever] = TorchRunner(model, lever)
    if args.recall:
        report = quality(model, runners, args.recall, args.recall_limit, say)
        report["environment"] = environment("cpu", args.threads)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2))
        return
    results, accuracy = [], {}
    for tower in TOWERS:
        for b in batches:
            x = bench_inputs(cfg, tower, b, seed=0)
            x = x.astype(np.float32) if tower == "vision" else x.astype(np.int32)
            fns = {}
            for k, r in runners.items():
                if isinstance(r, TorchRunner):
                    fns[k] = (r.fn(tower, x), lambda: None)
                elif k.startswith("ov-"):
                    fns[k] = ((lambda req=r[tower], x=x: np.array(req.infer({0: x})[0])), lambda: None)
                else:
                    s = r[tower]
                    feed = {s.get_inputs()[0].name: x}
                    fns[k] = ((lambda s=s, feed=feed: s.run(None, feed)[0]), lambda: None)
            say(f"timing {tower} batch {b}: {len(fns)} variants round-robin")
            ref = None
            for k, (fn, _) in fns.items():  # accuracy vs the first (plain fp32) on the same inputs
                out = np.asarray(fn(), dtype=np.float64)
                out /= np.linalg.norm(out, axis=-1, keepdims=True)
                ref = out if ref is None else ref
                accuracy.setdefault(k, {}).setdefault(tower, []).append(float((out * ref).sum(-1).min()))
            t = time_interleaved(fns, warmup=args.warmup, iters=args.iters)
            for k, v in t.items():
                results.append({"lever": k, "tower": tower, "batch": b, "median_ms": v["median_ms"],
                                "min_ms": v["min_ms"], "times_ms": v["times_ms"]})
                say(f"  {k:26s} {v['median_ms']:9.1f} ms (min {v['min_ms']:.1f})")
    first = next(iter(runners))
    table = []
    for k in runners:
        row = {"lever": k}
        for tower in TOWERS:
            for b in batches:
                r = next(r for r in results if r["lever"] == k and r["tower"] == tower and r["batch"] == b)
                r0 = next(r for r in results if r["lever"] == first and r["tower"] == tower and r["batch"] == b)
                row[f"{tower}_b{b}_ms"] = round(r["median_ms"], 1)
                row[f"{tower}_b{b}_x"] = round(r0["median_ms"] / r["median_ms"], 2)
        row["min_cosine_vs_first"] = min(min(v) for v in accuracy[k].values())
        table.append(row)
    for row in table:
        print(json.dumps(row))
    report = {"environment": environment("cpu", args.threads), "model": args.model, "threads": args.threads,
              "iters": args.iters, "batches": batches, "session_settings": base.to_dict(), "table": table,
              "results": results, "accuracy_min_cosine": accuracy, "settings_sweep": bool(args.settings)}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
