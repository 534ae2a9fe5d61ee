"""The deployment target: MoPE-CLIP base vs the ViT-L/14 teacher on the CPU backends, timed round-robin in one
process (one-off; not part of CI; needs a quiet machine: run it under the shared timing lock).

    flock /tmp/mope-timing.lock .venv/bin/python benchmarks/target_speedup.py --batch 8 --iters 7 --threads 2 \
        --out benchmarks/results/$(date +%F)_<machine>_target.json

Random weights (latency depends only on shapes). Both models run on the same candidate backends (``--backends``):
``torch`` (SlimCLIP eager fp32), ``onnxruntime`` (fused fp32 graph), ``onnxruntime-int8`` (the default int8:
QAttention with calibrated activation scales, batch-invariant), ``onnxruntime-int8-dynamic`` (per-batch scales:
faster or not, but an embedding moves with its batch-mates, so it never counts as "best"), ``openvino`` (fp32 IR,
f32), ``openvino-int8`` (NNCF int8 IR, f32 inference precision); plus ``per-tower`` = the faster of
``openvino-int8`` / ``onnxruntime-int8`` per tower (what the ``openvino`` runtime backend opens). The teacher also
runs in open_clip eager (the reference). Reported beside the FLOP ratio:

- deployment ratio: teacher in open_clip eager / best batch-invariant student backend;
- fair ratio: best teacher backend / best student backend, both over the same candidates.

Latency = vision + text tower at the same batch, median (and fastest) of the rounds. Token rows end with a real
EOT: the highest id where the model pools by argmax. The JSON records the CPU model and the load average before
and after. Graphs are cached in ``--work`` (delete it to re-export).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TOWERS = ("vision", "text")
ORT_GRAPHS = {"onnxruntime": "fused", "onnxruntime-int8": "int8-calibrated", "onnxruntime-int8-dynamic": "int8-dynamic"}
OV_GRAPHS = {"openvino": "openvino", "openvino-int8": "openvino-int8"}
ALL = ("torch",) + tuple(ORT_GRAPHS) + tuple(OV_GRAPHS)
DEFAULT = "torch,onnxruntime,onnxruntime-int8,onnxruntime-int8-dynamic,openvino-int8"
#: backends whose embeddings depend on the batch (never "best": a service would not deploy them by default)
BATCH_DEPENDENT = ("onnxruntime-int8-dynamic",)
PER_TOWER = "per-tower"


def token_rows(cfg, batch: int, seed: int = 0) -> np.ndarray:
    """int32 token rows like real ones: start id, random ids, one EOT, zero padding. The EOT is the id the graph
    pools at: the highest id of the vocabulary under argmax pooling (CLIP's BPE), else ``eos_id``."""
    from mope_deploy.bench.harness import bench_inputs

    ids = bench_inputs(cfg, "text", batch, seed)
    t = cfg.text
    eot = t.vocab_size - 1 if t.pool == "argmax" else t.eos_id
    ends = (ids == t.eos_id).argmax(axis=1)
    ids[np.arange(batch), ends] = eot
    assert (ids.argmax(axis=1) == ends).all() or t.pool != "argmax"
    return ids.astype(np.int32)


def inputs(cfg, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    from mope_deploy.bench.harness import bench_inputs

    return {"vision": bench_inputs(cfg, "vision", batch, seed), "text": token_rows(cfg, batch, seed)}


def prepare(model, work: Path, need: set[str], threads: int | None, say: Callable[[str], None]) -> dict[str, Any]:
    """The graphs each backend in ``need`` runs, written into ``work`` once (cached by file name)."""
    from mope_deploy.bundle import onnx_name
    from mope_deploy.exporting import quantize as q
    from mope_deploy.exporting.onnx import write_onnx
    from mope_deploy.exporting.ort_fused import write_fused_onnx

    work.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, Path]] = {"fp32": {t: work / onnx_name(t) for t in TOWERS},
                                         "fused": {t: work / onnx_name(t, "fused") for t in TOWERS}}
    if not all(p.is_file() for p in files["fp32"].values()):
        say(f"export plain fp32 -> {work}")
        write_onnx(model, work)
    if not all(p.is_file() for p in files["fused"].values()):
        say("export fused fp32")
        write_fused_onnx(model, work)
    calib = {t: [inputs(model.config, 8, seed=10 + i)[t] for i in range(2)] for t in TOWERS}
    for kind in ("int8-calibrated", "int8-dynamic"):
        if not any(ORT_GRAPHS.get(b) == kind for b in need):
            continue
        files[kind] = {}
        for t in TOWERS:
            dst = work / kind / onnx_name(t, "int8")
            files[kind][t] = dst
            if not dst.is_file():
                say(f"{kind} {t}")
                dst.parent.mkdir(exist_ok=True)
                if kind == "int8-calibrated":
                    q.quantize_calibrated_int8(files["fused"][t], dst, calib[t], threads=threads)
                else:
                    q.quantize_dynamic_int8(files["fused"][t], dst)
    if need & set(OV_GRAPHS):
        from mope_deploy.exporting import openvino as ovx

        for variant in ovx.VARIANTS:
            files[variant] = {t: work / ovx.ir_name(t, variant) for t in TOWERS}
            for t in TOWERS:
                if files[variant][t].is_file():
                    continue
                say(f"{variant} {t}")
                if variant == ovx.FP32:
                    ovx.convert_to_ir(files["fp32"][t], files[variant][t])
                else:
                    ovx.quantize_ir(files[ovx.FP32][t], files[variant][t], calib[t])
    return files


def candidates(model, files: dict[str, Any], backends: list[str], x: dict[str, np.ndarray],
               threads: int | None) -> dict[str, dict[str, Callable[[], Any]]]:
    """``{backend: {tower: fn}}``: one forward pass each, on the same inputs."""
    out: dict[str, dict[str, Callable[[], Any]]] = {}
    for b in backends:
        if b == "torch":
            xt = {"vision": torch.from_numpy(x["vision"]), "text": torch.from_numpy(x["text"]).long()}

            def tfn(tower: str) -> Callable[[], Any]:
                f = model.encode_image if tower == "vision" else model.encode_text

                def run() -> Any:
                    with torch.inference_mode():
                        return f(xt[tower])
                return run
            out[b] = {t: tfn(t) for t in TOWERS}
        elif b in ORT_GRAPHS:
            import onnxruntime as ort

            from mope_deploy.runtime.ort_settings import SessionSettings

            opts = SessionSettings(intra_op_threads=threads).session_options()
            out[b] = {}
            for t in TOWERS:
                s = ort.InferenceSession(str(files[ORT_GRAPHS[b]][t]), opts, providers=["CPUExecutionProvider"])
                feed = {s.get_inputs()[0].name: x[t]}
                out[b][t] = lambda s=s, feed=feed: s.run(None, feed)
        elif b in OV_GRAPHS:
            from mope_deploy.exporting import openvino as ovx

            out[b] = {}
            for t in TOWERS:
                req = ovx.compile_ir(files[OV_GRAPHS[b]][t], threads, "f32").create_infer_request()
                out[b][t] = lambda req=req, xx=x[t]: req.infer({0: xx})
        else:
            raise SystemExit(f"unknown backend {b!r}: use any of {', '.join(ALL)}")
    return out


def summarize(times: dict[tuple[str, str, str], dict[str, Any]], backends: list[str]) -> dict[str, dict[str, Any]]:
    """Per (model, backend): vision/text/total median and fastest ms; plus the per-tower mix."""
    rows: dict[str, dict[str, Any]] = {}
    for (model, backend, tower), r in times.items():
        row = rows.setdefault(f"{model}|{backend}", {"model": model, "backend": backend})
        row[f"{tower}_ms"], row[f"{tower}_min_ms"] = r["median_ms"], r["min_ms"]
    for row in rows.values():
        row["median_ms"] = row["vision_ms"] + row["text_ms"]
        row["min_ms"] = row["vision_min_ms"] + row["text_min_ms"]
    for model in {r["model"] for r in rows.values()}:
        pair = [rows.get(f"{model}|{b}") for b in ("openvino-int8", "onnxruntime-int8")]
        if all(pair):
            mix: dict[str, Any] = {"model": model, "backend": PER_TOWER, "towers": {}}
            for t in TOWERS:
                best = min(pair, key=lambda r: r[f"{t}_ms"])
                mix["towers"][t] = best["backend"]
                mix[f"{t}_ms"], mix[f"{t}_min_ms"] = best[f"{t}_ms"], best[f"{t}_min_ms"]
            mix["median_ms"] = mix["vision_ms"] + mix["text_ms"]
            mix["min_ms"] = mix["vision_min_ms"] + mix["text_min_ms"]
            rows[f"{model}|{PER_TOWER}"] = mix
    return rows


def ratios(rows: dict[str, dict[str, Any]], student: str, teacher: str, reference: str, flop_ratio: float
           ) -> dict[str, Any]:
    """Deployment ratio (reference / best student), fair ratio (best teacher / best student, same candidates)."""
    def best(model: str, key: str = "median_ms") -> dict[str, Any]:
        pool = [r for r in rows.values() if r["model"] == model and r["backend"] not in BATCH_DEPENDENT]
        return min(pool, key=lambda r: r[key])

    ref = rows[f"{reference}|open_clip"]
    s, t = best(student), best(teacher)
    out = {"flop_ratio": flop_ratio, "reference_ms": ref["median_ms"],
           "best_student": {"backend": s["backend"], "median_ms": s["median_ms"], "min_ms": s["min_ms"]},
           "best_teacher": {"backend": t["backend"], "median_ms": t["median_ms"], "min_ms": t["min_ms"]},
           "deployment_ratio": ref["median_ms"] / s["median_ms"],
           "deployment_ratio_fastest_calls": ref["min_ms"] / best(student, "min_ms")["min_ms"],
           "fair_ratio": t["median_ms"] / s["median_ms"],
           "fair_ratio_fastest_calls": best(teacher, "min_ms")["min_ms"] / best(student, "min_ms")["min_ms"]}
    out["per_backend"] = {r["backend"]: {"student_ms": r["median_ms"],
                                         "deployment_ratio": ref["median_ms"] / r["median_ms"],
                                         **({"fair_same_backend": rows[f"{teacher}|{r['backend']}"]["median_ms"]
                                             / r["median_ms"]} if f"{teacher}|{r['backend']}" in rows else {})}
                          for r in rows.values() if r["model"] == student}
    return out


def load_info() -> dict[str, Any]:
    return {"loadavg": [round(x, 2) for x in os.getloadavg()], "time_utc": dt.datetime.now(dt.timezone.utc)
            .isoformat(timespec="seconds")}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default="ViT-L-14")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--backends", default=DEFAULT, help=f"any of {', '.join(ALL)}")
    ap.add_argument("--teacher-backends", default="onnxruntime-int8,openvino-int8",
                    help="the teacher's candidates besides open_clip eager (the fair ratio's pool)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/mope-target-work"))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--prepare-only", action="store_true",
                    help="write the graphs into --work and stop (no timing: run it outside the timing lock)")
    args = ap.parse_args(argv)

    from mope_deploy.bench.harness import environment, time_interleaved
    from mope_deploy.bench.paper import PAPER_MODELS, paper_configs
    from mope_deploy.models import SlimCLIP, load_config
    from mope_deploy.models.counting import model_stats
    from mope_deploy.runtime import open_encoder

    if args.threads:
        torch.set_num_threads(args.threads)  # a benchmark script, not library code
    before = load_info()
    say = lambda m: print(m, flush=True)  # noqa: E731
    tcfg = load_config(args.teacher)
    scfg = paper_configs(tcfg)[PAPER_MODELS[2].name]
    student_name, teacher_name = PAPER_MODELS[2].name, args.teacher
    backends = [b for b in args.backends.split(",") if b]
    tbackends = [b for b in args.teacher_backends.split(",") if b]
    torch.manual_seed(0)
    student = SlimCLIP(scfg).eval()
    fns: dict[tuple[str, str, str], tuple[Callable[[], Any], Callable[[], None]]] = {}
    nosync = lambda: None  # noqa: E731
    sx = inputs(scfg, args.batch)
    sfiles = prepare(student, args.work / "student", set(backends), args.threads, say)
    if not args.prepare_only:
        for b, per in candidates(student, sfiles, backends, sx, args.threads).items():
            fns.update({(student_name, b, t): (f, nosync) for t, f in per.items()})
    if tbackends:
        torch.manual_seed(1)
        teacher_slim = SlimCLIP(tcfg).eval()
        tx = inputs(tcfg, args.batch)
        tfiles = prepare(teacher_slim, args.work / "teacher", set(tbackends), args.threads, say)
        for b, per in (() if args.prepare_only else candidates(teacher_slim, tfiles, tbackends, tx,
                                                                 args.threads).items()):
            fns.update({(teacher_name, b, t): (f, nosync) for t, f in per.items()})
        del teacher_slim
    if args.prepare_only:
        say(f"graphs ready in {args.work}")
        return {}
    ref = open_encoder(args.teacher, "open_clip", threads=args.threads)
    tx = inputs(tcfg, args.batch)
    for t in TOWERS:
        fns[(teacher_name, "open_clip", t)] = (ref.timing_fn(t, tx[t]), ref.synchronize)
    say(f"timing {len(fns)} (model, backend, tower) cells round-robin: {args.warmup} warm-up + {args.iters} rounds")
    start = load_info()
    times = time_interleaved(fns, warmup=args.warmup, iters=args.iters, on_iter=None)
    end = load_info()
    rows = summarize(times, backends)
    flop = model_stats(tcfg)["gflops"] / model_stats(scfg)["gflops"]
    target = ratios(rows, student_name, teacher_name, teacher_name, flop)
    for r in sorted(rows.values(), key=lambda r: (r["model"], r["median_ms"])):
        print(f"{r['model']:16s} {r['backend']:26s} {r['median_ms']:9.0f} ms (vision {r['vision_ms']:.0f} + text "
              f"{r['text_ms']:.0f})", flush=True)
    print(f"deployment ratio {target['deployment_ratio']:.2f}x ({target['best_student']['backend']} vs "
          f"{teacher_name} open_clip eager; fastest calls {target['deployment_ratio_fastest_calls']:.2f}x), fair ratio "
          f"{target['fair_ratio']:.2f}x (vs teacher on {target['best_teacher']['backend']}), FLOP ratio {flop:.2f}x",
          flush=True)
    print(f"load average: before {before['loadavg']}, timing start {start['loadavg']}, end {end['loadavg']}")
    report = {"environment": environment("cpu", args.threads), "settings": vars(args) | {"work": str(args.work),
                                                                                         "out": str(args.out)},
              "load": {"before": before, "timing_start": start, "timing_end": end},
              "results": [{"model": k[0], "backend": k[1], "tower": k[2], **v} for k, v in times.items()],
              "rows": list(rows.values()), "target": target,
              "notes": "random weights; latency = vision + text at the same batch; ratios of medians of "
                       "round-robin rounds; onnxruntime-int8-dynamic is batch-dependent and never 'best'"}
    if args.out:
        from mope_deploy.atomic import atomic_write_text

        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(report, indent=2, default=str))
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
