"""ONNX Runtime CPU speed and recall of the exported variants (fp32, ORT-optimised, int8), side by side.

    python benchmarks/export_variants.py --model demo --eval-data synthetic --batch 8 --reps 20

One run exports MODEL with the int8 variant (recall gate recorded, not enforced), then times every
variant's image and text encoder with interleaved repetitions (so load on a shared machine hits all alike)
and prints/writes parity, Recall Mean and its delta vs fp32, and the median latency per batch.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch


def small_model():
    """A ViT-B/32-shaped but shallower CLIP (random weights) when no trained model is at hand."""
    from mope_deploy.models import SlimCLIP
    from mope_deploy.models.tiny import tiny_config

    torch.manual_seed(0)
    return SlimCLIP(tiny_config(width=384, depth=6, heads=6, head_dim=64, image_size=224, patch_size=32,
                                context_length=77, embed_dim=256)).eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="small", help="'small' (random) or a MODEL spec for mope_deploy.load")
    ap.add_argument("--eval-data", default=None)
    ap.add_argument("--eval-limit", type=int, default=200)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--magnitude-student", type=float, default=None, metavar="KEEP",
                    help="export MODEL pruned to KEEP of its heads/neurons by magnitude (a student without retraining)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    import mope_deploy
    from mope_deploy.exporting import ExportConfig, export_bundle
    from mope_deploy.exporting.onnx import ort_session, random_tokens

    torch.set_num_threads(a.threads)
    model = small_model() if a.model == "small" else mope_deploy.load(a.model)
    if a.magnitude_student:
        from train_demo import magnitude_student  # benchmarks/train_demo.py (this folder is on sys.path)

        model = magnitude_student(model, a.magnitude_student)
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "bundle"
        t0 = time.perf_counter()
        m = export_bundle(model, out, ExportConfig(precision="int8", eval_data=a.eval_data, eval_limit=a.eval_limit,
                                                   max_recall_drop=1e9, skip_recall_gate=a.eval_data is None)
                          ).to_dict()
        export_s = time.perf_counter() - t0
        size = model.config.vision.image_size
        inputs = {"vision": torch.randn(a.batch, 3, size, size).numpy(),
                  "text": random_tokens(model, a.batch).numpy()}
        sessions = {(v, t): ort_session(out / info["files"][t], threads=a.threads)
                    for v, info in m["variants"].items() for t in ("vision", "text")}
        times = {k: [] for k in sessions}
        for k, s in sessions.items():  # warm-up
            s.run(None, {s.get_inputs()[0].name: inputs[k[1]]})
        for _ in range(a.reps):
            for k, s in sessions.items():
                t = time.perf_counter()
                s.run(None, {s.get_inputs()[0].name: inputs[k[1]]})
                times[k].append((time.perf_counter() - t) * 1000)
    rows = []
    for v, info in m["variants"].items():
        row = {"variant": v, "parity_max_abs": (info.get("parity") or {}).get("max_abs"),
               "agreement": info.get("agreement_vs_fp32"),
               "recall_mean": (info.get("recall") or {}).get("recall_mean"), "recall_delta": info.get("recall_delta")}
        for t, label in (("vision", "image"), ("text", "text")):  # row names as in the committed results
            ms = statistics.median(times[(v, t)])
            row[f"{label}_ms"] = round(ms, 2)
            row[f"{label}_speedup"] = round(statistics.median(times[("fp32", t)]) / ms, 2)
        rows.append(row)
    result = {"model": a.model, "magnitude_student": a.magnitude_student, "eval_data": a.eval_data, "eval": m.get("eval"), "batch": a.batch, "reps": a.reps,
              "threads": a.threads, "export_seconds": round(export_s, 1), "fp32_parity": m["parity"]["max_abs"],
              "machine": platform.node(), "cpu": platform.processor(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}
    print(f"{'variant':10s} {'image ms':>9s} {'x':>5s} {'text ms':>8s} {'x':>5s} {'recall':>7s} {'delta':>6s}")
    for r in rows:
        rec = "-" if r["recall_mean"] is None else f"{r['recall_mean']:.2f}"
        dl = "-" if r["recall_delta"] is None else f"{r['recall_delta']:+.2f}"
        print(f"{r['variant']:10s} {r['image_ms']:9.2f} {r['image_speedup']:5.2f} {r['text_ms']:8.2f} "
              f"{r['text_speedup']:5.2f} {rec:>7s} {dl:>6s}")
    print(f"fp32 parity max |ORT - torch| = {m['parity']['max_abs']:.2e}")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
