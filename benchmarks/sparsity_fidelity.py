"""Sparsity fidelity table: Recall Mean of the demo teacher and of the MoPE demo student after magnitude, Wanda,
SparseGPT and ECoFLaP (zeroth- and first-order scores) at 40/50/60/70% unstructured and at 2:4, each before and
after a short SparseLoRA recovery, over several seeds. One command:

    .venv/bin/python benchmarks/sparsity_fidelity.py [--seeds 0,1] [--steps 40] [--work runs/sparsity-fidelity]

- teacher: ``mope_deploy.load("demo")`` (trained on the synthetic data); student: the shipped ``recipes/demo.yaml``
  run once with ``mope compress`` into ``WORK/student`` (MoPE pruning of both towers + distillation; reused if
  there);
- calibration: 128 image-caption pairs of the synthetic training stream (ECoFLaP's 128), a different slice per
  seed; the seed also drives ECoFLaP's noise and the recovery's data order and LoRA init;
- ECoFLaP: max block sparsity = target + 0.1; at 2:4 with a 50% target every block is 2:4 (the n:m choice of
  blocks only matters below 50%), so its 2:4 rows equal Wanda's by construction;
- recovery: SparseLoRA (RecoverSpec defaults: rank 4 on both towers, ``0.99 InfoNCE + 0.01 KL(T=2)`` against
  the dense path; before issue 21: vision only, ``0.9 InfoNCE + 0.1 * T^2 KL``),
  ``--steps`` steps at batch 32, lr 1e-3, on synthetic training pairs that are not the calibration pairs;
- evaluation: synthetic:test (500 images, 2,500 captions), Recall Mean (mean of TR@1/5/10, IR@1/5/10).

Every cell is cached in ``WORK/cells.json`` (an interrupted run resumes); the table goes to
``benchmarks/results/sparsity_fidelity.{json,md}``.

Two side studies (issue 21), each written to ``benchmarks/results/``:

    .venv/bin/python benchmarks/sparsity_fidelity.py --nm-choice [--seeds 0,1,2] [--target 0.4]
    .venv/bin/python benchmarks/sparsity_fidelity.py --zo-spread [--seeds 0,1,2] [--zo 4,16]

- ``--nm-choice``: ECoFLaP with 2:4 below 50% on the demo teacher: which blocks become 2:4, by score (least
  important first) or ``uniform`` (spread evenly over depth and towers), Recall Mean per seed; plain Wanda 2:4
  (every block, 50%) for reference; no recovery;
- ``--zo-spread``: ECoFLaP's allocated per-block ratios (50% unstructured, cap 0.6) on the demo teacher across
  seeds, for each number of zeroth-order perturbations: the largest spread of a block's ratio between seeds.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SETTINGS = [("40%", 0.4, "unstructured"), ("50%", 0.5, "unstructured"), ("60%", 0.6, "unstructured"),
            ("70%", 0.7, "unstructured"), ("2:4", None, "2:4")]
METHODS = [("magnitude", "magnitude", None), ("wanda", "wanda", None), ("sparsegpt", "sparsegpt", None),
           ("ecoflap-zeroth", "ecoflap", "zeroth"), ("ecoflap-first", "ecoflap", "first"),
           ("ecoflap-sparsegpt", "ecoflap", "zeroth")]  # ECoFLaP's allocation, SparseGPT inside the blocks


def _student(work: Path):
    from mope_deploy.models import load_model

    out = work / "student"
    if not (out / "report.json").is_file():
        mope = Path(sys.executable).parent / "mope"
        subprocess.run([str(mope), "compress", str(ROOT / "recipes" / "demo.yaml"), "--out", str(out), "--threads", "1",
                        "-q"], check=True)
    return load_model(out)


def _pairs(model, start: int, n: int):
    from mope_deploy.data.synthetic import stream

    it = stream(0, start=start, size=model.config.vision.image_size)
    pairs = [next(it) for _ in range(n)]
    return (torch.stack([model.preprocess(im) for im, _ in pairs]), model.tokenizer([c for _, c in pairs]))


def _test_set(model):
    from mope_deploy.data.datasets import load_dataset

    ds = load_dataset("synthetic", split="test")
    return (torch.stack([model.preprocess(im) for im in ds.images]), model.tokenizer(ds.captions),
            torch.tensor(ds.txt2img))


def _recall(model, test) -> float:
    from mope_deploy.eval.retrieval import embed, retrieval_metrics

    img, txt = embed(model, test[0], test[1], batch_size=250)
    return float(retrieval_metrics(img, txt, test[2])["recall_mean"])


def _data(pool, batch_size: int):
    images, tokens = pool

    def data(start: int):
        i = start
        n = images.shape[0] // batch_size
        while True:
            s = (i % n) * batch_size
            yield {"images": images[s:s + batch_size], "tokens": tokens[s:s + batch_size]}
            i += 1

    return data


def run(seeds: list[int], steps: int, work: Path, models: list[str], batch: int = 32,
        later_settings: list[str] | None = None) -> dict:
    import mope_deploy
    from mope_deploy.atomic import atomic_write_text
    from mope_deploy.sparsity import Calibration, RecoverSpec, SparsifySpec, recover, sparsify

    work.mkdir(parents=True, exist_ok=True)
    cache_path = work / "cells.json"
    cells = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    dense_models = {"teacher": lambda: mope_deploy.load("demo"), "student": lambda: _student(work)}
    loaded: dict = {}
    for seed in seeds:  # seed-major: an interrupted run still has every model at the first seeds
        for mname in models:
            if mname not in loaded:
                dense = dense_models[mname]()
                loaded[mname] = (dense, _test_set(dense))
            dense, test = loaded[mname]
            key = f"{mname}/dense"
            if key not in cells:
                cells[key] = {"recall_mean": _recall(dense, test)}
                atomic_write_text(cache_path, json.dumps(cells, indent=1))
            calib = Calibration(*_pairs(dense, 100_000 + 128 * seed, 128))
            pool = _pairs(dense, 200_000 + steps * batch * seed, steps * batch)
            for label, s, pattern in SETTINGS:
                if seed != seeds[0] and later_settings and label not in later_settings:
                    continue  # seeds after the first: only the settings asked for (time)
                for mlabel, method, scores in METHODS:
                    key = f"{mname}/{mlabel}/{label}/seed{seed}"
                    if key in cells:
                        continue
                    local = "sparsegpt" if mlabel == "ecoflap-sparsegpt" else "wanda"
                    same = f"{mname}/{local}/{label}/seed{seed}"
                    if method == "ecoflap" and s is None and same in cells:  # n:m at 1 - n/m: every block n:m, no
                        cells[key] = {**cells[same], "same_as": same}     # scores: ECoFLaP = its local method
                        continue
                    t0 = time.time()
                    sparse = copy.deepcopy(dense)
                    spec = SparsifySpec(method=method, sparsity=s, pattern=pattern, scores=scores or "zeroth",
                                        local="sparsegpt" if mlabel == "ecoflap-sparsegpt" else None,
                                        seed=seed, max_block_sparsity=(min(0.99, s + 0.1) if s and method == "ecoflap"
                                                                       else None))
                    rep = sparsify(sparse, spec, calib, progress=False)
                    t1 = time.time()
                    before = _recall(sparse, test)
                    rec = recover(copy.deepcopy(dense), sparse, _data(pool, batch),
                                  RecoverSpec(steps=steps, batch_size=batch, seed=seed), progress=False)
                    after = _recall(rec, test)
                    cells[key] = {"before": before, "after": after, "achieved": rep["sparsity"],
                                  "pattern": rep["pattern"], "sparsify_s": round(t1 - t0, 2),
                                  "total_s": round(time.time() - t0, 2)}
                    atomic_write_text(cache_path, json.dumps(cells, indent=1))
                    print(f"{key}: {before:.2f} -> {after:.2f} ({cells[key]['total_s']} s)", flush=True)
    return cells


def table(cells: dict, seeds: list[int], models: list[str], steps: int) -> tuple[dict, str]:
    summary: dict = {}
    lines = []
    for mname in models:
        dense = cells[f"{mname}/dense"]["recall_mean"]
        summary[mname] = {"dense": dense, "rows": {}}
        lines += [f"### {mname} (dense Recall Mean {dense:.2f}); before -> after SparseLoRA ({steps} steps), "
                  f"mean over the seeds run ({','.join(map(str, seeds))}; '±' = spread of 'before' when 2+ seeds)", "",
                  "| method | " + " | ".join(l for l, *_ in SETTINGS) + " |",
                  "|---|" + "---|" * len(SETTINGS)]
        for mlabel, *_ in METHODS:
            row = []
            for label, *_ in SETTINGS:
                cs = [cells[f"{mname}/{mlabel}/{label}/seed{s}"] for s in seeds
                      if f"{mname}/{mlabel}/{label}/seed{s}" in cells]
                if not cs:
                    row.append("-")
                    continue
                b = statistics.mean(c["before"] for c in cs)
                a = statistics.mean(c["after"] for c in cs)
                sd = statistics.pstdev([c["before"] for c in cs]) if len(cs) > 1 else 0.0
                summary[mname]["rows"].setdefault(mlabel, {})[label] = {
                    "before": b, "after": a, "before_sd": sd, "n": len(cs),
                    "gap_closed": (a - b) / (dense - b) if dense - b > 1e-9 else None}
                row.append(f"{b:.2f} -> {a:.2f}" + (f" (±{sd:.2f})" if len(cs) > 1 else ""))
            lines.append(f"| {mlabel} | " + " | ".join(row) + " |")
        lines.append("")
    return summary, "\n".join(lines)


def nm_choice(seeds: list[int], target: float, local: str = "wanda") -> dict:
    """ECoFLaP 2:4 at ``target`` (< 50%): score vs uniform block choice, and plain 2:4, per seed (no recovery)."""
    import mope_deploy
    from mope_deploy.sparsity import Calibration, SparsifySpec, sparsify

    dense = mope_deploy.load("demo")
    test = _test_set(dense)
    rows = []
    for seed in seeds:
        calib = Calibration(*_pairs(dense, 100_000 + 128 * seed, 128))
        for label, spec in (("score", SparsifySpec(method="ecoflap", pattern="2:4", sparsity=target, local=local,
                                                   nm_blocks="score", seed=seed)),
                            ("uniform", SparsifySpec(method="ecoflap", pattern="2:4", sparsity=target, local=local,
                                                     nm_blocks="uniform", seed=seed)),
                            ("all blocks 2:4 (50%)", SparsifySpec(method=local, pattern="2:4", seed=seed))):
            t0 = time.time()
            m = copy.deepcopy(dense)
            rep = sparsify(m, spec, calib, progress=False)
            rows.append({"seed": seed, "choice": label, "recall_mean": round(_recall(m, test), 2),
                         "achieved": round(rep["sparsity"], 4),
                         "nm_blocks": {t: [b > 0 for b in rep["towers"][t]["blocks"]] for t in ("vision", "text")},
                         "seconds": round(time.time() - t0, 1)})
            print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for label in ("score", "uniform", "all blocks 2:4 (50%)"):
        v = [r["recall_mean"] for r in rows if r["choice"] == label]
        summary[label] = {"mean": round(statistics.mean(v), 2), "min": min(v), "max": max(v), "n": len(v)}
    return {"model": "demo", "target": target, "local": local, "dense": round(_recall(dense, test), 2),
            "rows": rows, "summary": summary}


def zo_spread(seeds: list[int], counts: list[int]) -> dict:
    """Largest between-seed spread of ECoFLaP's allocated block ratio, per number of zeroth-order perturbations."""
    import mope_deploy
    from mope_deploy.sparsity import Calibration, SparsifySpec, sparsify

    dense = mope_deploy.load("demo")
    out = {}
    for n in counts:
        ratios, t0 = [], time.time()
        for seed in seeds:
            calib = Calibration(*_pairs(dense, 100_000 + 128 * seed, 128))
            rep = sparsify(copy.deepcopy(dense), SparsifySpec(method="ecoflap", sparsity=0.5, max_block_sparsity=0.6,
                                                              zo_samples=n, seed=seed), calib, progress=False)
            ratios.append([r for t in ("vision", "text") for r in rep["allocated"][t]])
        per_block = [max(col) - min(col) for col in zip(*ratios)]
        between = [max(r) - min(r) for r in ratios]
        out[str(n)] = {"max_seed_spread": round(max(per_block), 4), "mean_seed_spread": round(statistics.mean(per_block), 4),
                       "between_block_range": [round(b, 4) for b in between], "ratios": ratios,
                       "seconds": round(time.time() - t0, 1)}
        print(n, json.dumps({k: v for k, v in out[str(n)].items() if k != "ratios"}), flush=True)
    return {"model": "demo", "sparsity": 0.5, "cap": 0.6, "seeds": seeds, "by_zo_samples": out}


def _side_study(a) -> None:
    import os

    from mope_deploy.atomic import atomic_write_text

    seeds = [int(x) for x in a.seeds.split(",")]
    load0 = os.getloadavg()
    res = (nm_choice(seeds, a.target, a.local) if a.nm_choice
           else zo_spread(seeds, [int(x) for x in a.zo.split(",")]))
    res.update(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), threads=a.threads,
               loadavg_start=[round(x, 2) for x in load0], loadavg_end=[round(x, 2) for x in os.getloadavg()])
    name = "sparsity_nm_choice.json" if a.nm_choice else "sparsity_zo_spread.json"
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / name, json.dumps(res, indent=1))
    print(json.dumps(res.get("summary", {}), indent=1))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--models", default="teacher,student")
    ap.add_argument("--work", default=str(ROOT / "runs" / "sparsity-fidelity"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--later-seeds-settings", default=None,
                    help="seeds after the first run only these settings (e.g. 50%%,60%%); default: all")
    ap.add_argument("--methods", default=None, help="only these method rows (e.g. sparsegpt,ecoflap-sparsegpt)")
    ap.add_argument("--settings", default=None, help="only these columns (e.g. 50%%,2:4)")
    ap.add_argument("--name", default="sparsity_fidelity", help="results file name (benchmarks/results/NAME.*)")
    ap.add_argument("--nm-choice", action="store_true", help="side study: ECoFLaP's n:m block choice vs uniform")
    ap.add_argument("--target", type=float, default=0.4, help="--nm-choice: global sparsity (< 0.5)")
    ap.add_argument("--local", default="wanda", help="--nm-choice: method inside the blocks")
    ap.add_argument("--zo-spread", action="store_true", help="side study: ratio spread vs zeroth-order samples")
    ap.add_argument("--zo", default="4,16", help="--zo-spread: perturbation counts")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.nm_choice or a.zo_spread:
        return _side_study(a)
    global METHODS, SETTINGS  # a partial re-run: the rows and columns asked for (run() and table() read these)
    if a.methods:
        METHODS = [m for m in METHODS if m[0] in a.methods.split(",")]
    if a.settings:
        SETTINGS = [x for x in SETTINGS if x[0] in a.settings.split(",")]
    seeds = [int(s) for s in a.seeds.split(",")]
    models = a.models.split(",")
    t0 = time.time()
    later = a.later_seeds_settings.split(",") if a.later_seeds_settings else None
    cells = run(seeds, a.steps, Path(a.work), models, later_settings=later)
    summary, md = table(cells, seeds, models, a.steps)
    from mope_deploy.atomic import atomic_write_text

    RESULTS.mkdir(exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "seeds": seeds, "steps": a.steps, "minutes": round((time.time() - t0) / 60, 1)}
    meta["recovery"] = "SparseLoRA rank 4 on both towers, 0.99 InfoNCE + 0.01 KL(T=2)"
    atomic_write_text(RESULTS / f"{a.name}.json", json.dumps({**meta, "summary": summary, "cells": cells}, indent=1))
    atomic_write_text(RESULTS / f"{a.name}.md", md + "\n")
    print(md)


if __name__ == "__main__":
    main()
