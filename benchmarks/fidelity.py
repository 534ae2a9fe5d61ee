"""The paper's fidelity tables in miniature on the demo teacher (Tables 3/4, 8, 9, 10).

    .venv/bin/python benchmarks/fidelity.py [--tables width,depth,strategy,kd] [--out runs/fidelity]

Every row is a full `mope compress` run of a variant of ``recipes/demo-finetune.yaml`` (fine-tuning stage on
the vision tower, TR Mean as the MoPE metric, as in the paper's ablations), so rows are resumable and their run
directories hold the plans, scores and metrics. Results go to ``benchmarks/results/fidelity-<date>.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time
from pathlib import Path
from typing import Any

from mope_deploy.compress import compress, load_recipe, parse_recipe

RESULTS = Path(__file__).resolve().parent / "results"


def _variant(base: dict[str, Any], **changes: dict[str, Any]) -> dict[str, Any]:
    d = json.loads(json.dumps(base))
    for section, values in changes.items():
        d[section] = {**d.get(section, {}), **values}
    return d


def tables(base: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """Rows of each table: name -> recipe dict."""
    vision = base["prune"]["vision"]
    width_only = {"vision": {"width": vision["width"]}}
    depth_only = {"vision": {"depth": vision["depth"]}}
    return {
        "width": {m: _variant(base, prune={**width_only, "method": m}) for m in ("mope", "gradient", "magnitude")},
        "depth": {m: _variant(base, prune={**depth_only, "depth_method": m})
                  for m in ("mope", "every-other", "top", "bottom", "gradient")},
        "strategy": {o: _variant(base, prune={"order": o}) for o in ("width-first", "depth-first", "joint")},
        "kd": {
            "full KD": base,
            "w/o L_sim": _variant(base, distill={"alpha": 0.0}),
            "w/o L_feat": _variant(base, distill={"beta": 0.0}),
            "w/o L_hidn": _variant(base, distill={"gamma": 0.0}),
            "w/o KD": _variant(base, distill={"enabled": False}),
        },
    }


def run(which: list[str], out: Path, recipe: str, seed: int | None = None) -> dict[str, Any]:
    base = load_recipe(recipe).model_dump(mode="json")
    if seed is not None:
        base["train"]["seed"] = seed
        base["name"] = f"{base['name']}-seed{seed}"
    results: dict[str, Any] = {"date": dt.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
                               "recipe": recipe, "seed": base["train"]["seed"], "tables": {}}
    done: dict[str, dict[str, Any]] = {}  # identical variants (e.g. the base recipe) run once
    for name in which:
        rows = {}
        for row, d in tables(base)[name].items():
            key = json.dumps(d, sort_keys=True)
            if key not in done:
                d = {**d, "name": f"{base['name']}-{name}-{row}".replace(" ", "_").replace("/", "")}
                t0 = time.perf_counter()
                report = compress(parse_recipe(d), out / d["name"], progress=False, log=lambda m: None)
                done[key] = {"student": report["student"], "teacher": report["teacher"], "run": d["name"],
                             "seconds": round(time.perf_counter() - t0, 1), "stages": report["stages"]}
            rows[row] = done[key]
            report = rows[row]
            print(f"{name:8s} {row:12s} TR mean {_tr(report['student']):6.2f} RM {report['student']['recall_mean']:6.2f}"
                  f" params {report['student']['params'] / 1e6:.3f}M", flush=True)
        results["tables"][name] = rows
    return results


def _tr(m: dict[str, Any]) -> float:
    return (m["tr1"] + m["tr5"] + m["tr10"]) / 3


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# Fidelity tables on the demo teacher ({results['date']}, {results['machine']})", ""]
    for name, rows in results["tables"].items():
        teacher = next(iter(rows.values()))["teacher"]
        lines += [f"## {name}", "", "| variant | vision block params (M) | TR@1 | TR@5 | TR@10 | TR mean | IR mean | "
                  "Recall Mean | % of teacher RM |", "|---|---|---|---|---|---|---|---|---|",
                  f"| teacher | {teacher['towers']['vision']['params'] / 1e6:.3f} | {teacher['tr1']:.2f} | "
                  f"{teacher['tr5']:.2f} | {teacher['tr10']:.2f} | {_tr(teacher):.2f} | "
                  f"{(teacher['ir1'] + teacher['ir5'] + teacher['ir10']) / 3:.2f} | {teacher['recall_mean']:.2f} | 100 |"]
        for row, r in rows.items():
            s = r["student"]
            lines.append(f"| {row} | {s['towers']['vision']['params'] / 1e6:.3f} | {s['tr1']:.2f} | {s['tr5']:.2f} | "
                         f"{s['tr10']:.2f} | {_tr(s):.2f} | {(s['ir1'] + s['ir5'] + s['ir10']) / 3:.2f} | "
                         f"{s['recall_mean']:.2f} | {100 * s['recall_mean'] / teacher['recall_mean']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tables", default="width,depth,strategy,kd")
    ap.add_argument("--out", type=Path, default=Path("runs/fidelity"))
    ap.add_argument("--recipe", default="demo-finetune")
    ap.add_argument("--seed", type=int, default=None, help="override the recipe's training seed")
    args = ap.parse_args()
    results = run(args.tables.split(","), args.out, args.recipe, args.seed)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / (f"fidelity-{results['date']}" + (f"-seed{args.seed}" if args.seed is not None else ""))
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1))
    stem.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
