"""The deployment target: the exported MoPE-CLIP base shape on the CPU backends vs the ViT-L/14 teacher in open_clip
eager, timed round-robin in one process (one-off; not part of CI).

    .venv/bin/python benchmarks/target_speedup.py --batch 8 --iters 7 --threads 2 \
        --out benchmarks/results/$(date +%F)_<machine>_target.json

Random weights (latency depends only on shapes). MoPE-base runs on ``--backends`` (default torch, onnxruntime,
onnxruntime-int8); the teacher runs once per round in open_clip eager. Fewer models per round than
``mope bench --paper`` gives more rounds in the same time, so the ratio is steadier on a shared machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default="ViT-L-14")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--backends", default="torch,onnxruntime,onnxruntime-int8")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from mope_deploy.bench.paper import PAPER_MODELS, paper_configs
    from mope_deploy.bench.run import run_bench, write_json
    from mope_deploy.models import SlimCLIP, load_config

    cfg = paper_configs(load_config(args.teacher))[PAPER_MODELS[2].name]
    torch.manual_seed(0)
    ref = f"{args.teacher} (open_clip eager)"
    report = run_bench([lambda: SlimCLIP(cfg).eval()], args.backends.split(","), [args.batch], warmup=args.warmup,
                       iters=args.iters, threads=args.threads, device="cpu", labels=[PAPER_MODELS[2].name],
                       interleave=True, extra_runs=[(args.teacher, ref, "open_clip")], on_step=print)

    def latency(model: str, backend: str, key: str) -> float:
        return sum(r[key] for r in report["results"] if r["model"] == model and r["backend"] == backend)

    rows = []
    for b in args.backends.split(","):
        row = {"backend": b, "batch": args.batch}
        for key in ("median_ms", "min_ms"):
            row[key] = latency(PAPER_MODELS[2].name, b, key)
            row[f"speedup_{key[:-3]}"] = latency(ref, "open_clip", key) / row[key]
        rows.append(row)
        print(f"{b:18s} {row['median_ms']:9.0f} ms  {row['speedup_median']:.2f}x vs open_clip eager "
              f"(fastest calls: {row['speedup_min']:.2f}x)")
    report["target"] = {"reference_ms": latency(ref, "open_clip", "median_ms"),
                        "reference_min_ms": latency(ref, "open_clip", "min_ms"), "rows": rows,
                        "latency": "vision + text tower at the same batch"}
    if args.out:
        write_json(report, args.out)


if __name__ == "__main__":
    main()
