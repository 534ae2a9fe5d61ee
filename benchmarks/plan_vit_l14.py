"""`mope plan ViT-L-14 --backend onnxruntime-int8 --batch 8 --speedup 3.34` measured: the shapes it picks, predicted
vs measured latency of the best three, and where the paper's MoPE-CLIP base shape (vision 384 x 18, text 384 x 12)
sits among the candidates (one-off; not part of CI; run it under the shared timing lock).

    .venv/bin/python benchmarks/plan_vit_l14.py --batch 8 --speedup 3.34 --backend onnxruntime-int8 --threads 2 \
        --out benchmarks/results/$(date +%F)_plan_vit_l14.json

The script takes the shared timing lock (``--lock``, default /tmp/mope-timing.lock) itself, around the timed rounds
only: building and exporting the shapes (the slow part) runs outside it. Do not wrap it in ``flock`` on the same
file (the inner lock would wait for the outer one forever).

Random weights (latency depends only on shapes). The planner's cost models are cached (``--cache-dir``), so a rerun
only re-times the verification shapes. ``--teacher`` also builds and times the whole teacher (a full ViT-L/14
export: minutes and ~5 GB of memory) beside the chosen shapes, to check the predicted teacher figure the speed-up
budget divides.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mope_deploy.bench.harness import cpu_model  # noqa: E402
from mope_deploy.planning import MeasureSettings, PlanRequest, measure, plan, teacher_shape  # noqa: E402
from mope_deploy.planning.shapes import shape_params, tower_shape  # noqa: E402

#: MoPE-CLIP base (paper Table 5): vision width 384 x 18 blocks, text width 384 x 12
BASE = {"vision": (384, 18), "text": (384, 12)}


def shape_arg(text: str) -> dict:
    """``vision=384x18,text=384x12`` -> {tower: (width, depth)}"""
    out = {}
    for part in text.split(","):
        tower, _, wd = part.partition("=")
        w, _, d = wd.partition("x")
        out[tower.strip()] = (int(w), int(d))
    return out


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", dest="teacher_name", default="ViT-L-14")
    p.add_argument("--backend", default="onnxruntime-int8")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--speedup", type=float, default=3.34)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=5, help="timed rounds of the cost-model design")
    p.add_argument("--verify-iters", type=int, default=5, help="timed rounds of the verification shapes")
    p.add_argument("--max-depth", type=int, default=4)
    p.add_argument("--top", type=int, default=3)
    p.add_argument("--base", type=shape_arg, default=BASE, help="reference shape, e.g. vision=384x18,text=384x12")
    p.add_argument("--with-teacher", action="store_true", help="also time the whole teacher (slow)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--lock", default="/tmp/mope-timing.lock", help="flock held during the timed rounds only")
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args()


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def base_position(result, config, base: dict) -> dict:
    """The paper's base shape: its predicted latency, and its rank by kept parameters among the shapes that meet
    the budget (or by how much it misses it)."""
    shapes = {t: tower_shape(config, t, w // config.tower(t).head_dim, d) for t, (w, d) in base.items()}
    ms = {t: result.models[t].predict(s.heads, s.depth) for t, s in shapes.items()}
    params = sum(shape_params(config, t, s) for t, s in shapes.items())
    more = sum(1 for c in result.candidates if c.params > params)
    return {"shapes": {t: {"width": w, "depth": d} for t, (w, d) in base.items()}, "predicted_ms": ms,
            "predicted_total_ms": sum(ms.values()), "params": params, "meets_budget": sum(ms.values()) <= result.budget_ms,
            "candidates_with_more_params": more, "n_meeting_budget": len(result.candidates)}


def main() -> None:
    a = parse()
    settings = MeasureSettings(a.backend, batch=a.batch, threads=a.threads, iters=a.iters, lock=a.lock)
    record = {"cpu": cpu_model(), "load_before": load(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "command": " ".join(sys.argv)}
    t0 = time.perf_counter()
    result = plan(PlanRequest(a.teacher_name, speedup=a.speedup, settings=settings, max_depth=a.max_depth,
                              cache_dir=a.cache_dir))
    record["plan_seconds"] = time.perf_counter() - t0
    record["plan"] = result.to_dict(top=20)
    config = result.config
    base = base_position(result, config, a.base)
    record["base"] = base
    chosen = result.candidates[: a.top]
    samples = [c.shapes for c in chosen]
    base_shapes = {t: tower_shape(config, t, w // config.tower(t).head_dim, d) for t, (w, d) in a.base.items()}
    samples.append(base_shapes)
    if a.with_teacher:
        samples.append({t: teacher_shape(config, t) for t in ("vision", "text")})
    t1 = time.perf_counter()
    measured = measure(config, samples, MeasureSettings(a.backend, batch=a.batch, threads=a.threads,
                                                        iters=a.verify_iters, lock=a.lock))
    record["verify_seconds"] = time.perf_counter() - t1
    rows = []
    names = [f"#{i + 1}" for i in range(len(chosen))] + ["reference (MoPE-CLIP base)"] + (["teacher"] if a.with_teacher else [])
    preds = [c.predicted_ms for c in chosen] + [base["predicted_ms"]] + ([result.teacher_ms] if a.with_teacher else [])
    for name, shapes, pred, meas in zip(names, samples, preds, measured):
        rows.append({"name": name, "shapes": {t: s.to_dict(config.tower(t).head_dim) for t, s in shapes.items()},
                     "params": sum(shape_params(config, t, s) for t, s in shapes.items()),
                     "predicted_ms": pred, "measured_ms": meas, "predicted_total_ms": sum(pred.values()),
                     "measured_total_ms": sum(meas.values()),
                     "error": sum(pred.values()) / sum(meas.values()) - 1})
    record["verification"] = rows
    record["load_after"] = load()
    print(json.dumps({k: record[k] for k in ("cpu", "load_before", "load_after", "plan_seconds", "verify_seconds")}))
    print(f"budget {result.budget_ms:.1f} ms (teacher predicted {sum(result.teacher_ms.values()):.1f} ms / "
          f"{a.speedup}); checks: " + ", ".join(f"{t} max {c['max_abs_error']:.1%}" for t, c in result.checks.items()))
    print("| shape | vision w x d | text w x d | Mparams | predicted ms | measured ms | error |")
    for r in rows:
        v, t = r["shapes"]["vision"], r["shapes"]["text"]
        print(f"| {r['name']} | {v['width']} x {v['depth']} | {t['width']} x {t['depth']} | {r['params'] / 1e6:.1f} | "
              f"{r['predicted_total_ms']:.0f} | {r['measured_total_ms']:.0f} | {r['error']:+.1%} |")
    print(json.dumps(base))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
