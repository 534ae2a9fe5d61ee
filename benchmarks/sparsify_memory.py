"""Time and peak memory of sparsifying a randomly initialised ViT-L/14 (both towers), per method (one-off; not in CI).

    flock /tmp/coord/heavy.lock .venv/bin/python benchmarks/sparsify_memory.py \
        [--model ViT-L-14] [--methods wanda,sparsegpt] [--pattern 2:4] [--samples 32] [--out results/...json]

Each method runs in its own fresh process so peaks do not mix. The model is built from the open_clip
architecture without materialising open_clip's own copy (random weights: memory and time do not depend on
them). Calibration: random images and random captions, ``--samples`` pairs. Reported: RSS after the model was
built, peak RSS (``ru_maxrss``, which includes saving the sparse model directory), wall time of ``sparsify``
and of the save, achieved sparsity. Target (issue 11): the whole run fits in 6 GB RSS on the 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from export_memory import _rss_mb  # noqa: E402  (the one RSS reader of the memory benchmarks; benchmarks/ is on sys.path)


def child(model_name: str, method: str, pattern: str, samples: int, sparsity: float | None, batch: int) -> dict:
    import torch

    from mope_deploy.models import SlimCLIP
    from mope_deploy.models.registry import load_config
    from mope_deploy.sparsity import Calibration, SparsifySpec, sparsify

    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = load_config(model_name)
    model = SlimCLIP(cfg).eval()
    n_params = sum(p.numel() for p in model.parameters())
    after_load = _rss_mb()
    g = torch.Generator().manual_seed(0)
    size, ctx = cfg.vision.image_size, cfg.text.context_length
    tokens = torch.randint(1, cfg.text.vocab_size - 1, (samples, ctx), generator=g)
    eot = torch.randint(8, ctx, (samples,), generator=g)
    tokens[torch.arange(samples), eot] = cfg.text.vocab_size - 1
    tokens[torch.arange(ctx).view(1, -1) > eot.view(-1, 1)] = 0
    calib = Calibration(torch.randn(samples, 3, size, size, generator=g), tokens)
    spec = SparsifySpec(method=method, pattern=pattern, sparsity=sparsity, samples=samples, batch_size=batch)
    t0 = time.perf_counter()
    rep = sparsify(model, spec, calib, progress=False)
    seconds = time.perf_counter() - t0
    peak_sparsify = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as d:
        t1 = time.perf_counter()
        model.save(Path(d) / "sparse")
        save_s = time.perf_counter() - t1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"model": model_name, "params_m": round(n_params / 1e6, 1), "method": method, "pattern": pattern,
            "samples": samples, "batch_size": batch, "rss_after_load_mb": round(after_load),
            "peak_rss_sparsify_mb": round(peak_sparsify), "peak_rss_mb": round(peak),
            "sparsify_seconds": round(seconds, 1), "save_seconds": round(save_s, 1),
            "achieved_sparsity": round(rep["sparsity"], 4), "detected_pattern": rep["pattern"]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-L-14")
    ap.add_argument("--methods", default="wanda,sparsegpt")
    ap.add_argument("--pattern", default="2:4")
    ap.add_argument("--sparsity", type=float, default=None)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "sparsify_memory_vitl14.json"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.model, a.methods, a.pattern, a.samples, a.sparsity, a.batch_size)))
        return {}
    from mope_deploy.atomic import atomic_write_text

    runs, result = [], {}
    for m in a.methods.split(","):
        cmd = [sys.executable, __file__, "--child", "--model", a.model, "--methods", m, "--pattern", a.pattern,
               "--samples", str(a.samples), "--batch-size", str(a.batch_size)]
        if a.sparsity is not None:
            cmd += ["--sparsity", str(a.sparsity)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            runs.append({"method": m, "error": out.stderr[-2000:]})
        else:
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), flush=True)
        result = {"machine": "vm", "cpu_count": os.cpu_count(),
                  "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "limit_mb": 6144, "runs": runs}
        atomic_write_text(a.out, json.dumps(result, indent=2))  # after every method: a long one loses nothing
    return result


if __name__ == "__main__":
    main()
