"""Time and peak memory of sparsifying a randomly initialised ViT-L/14 (both towers), per method (one-off; not in CI).

    flock /tmp/mope-timing.lock .venv/bin/python benchmarks/sparsify_memory.py \
        [--model ViT-L-14] [--methods wanda,sparsegpt] [--pattern 2:4] [--samples 32] [--out results/...json]
    flock /tmp/mope-timing.lock .venv/bin/python benchmarks/sparsify_memory.py --layers   # per-layer SparseGPT

``--layers``: SparseGPT on one 4096x1024 and one 1024x4096 layer (ViT-L/14's c_fc and c_proj shapes), 256 tokens,
2:4, one thread: the previous float64 implementation (kept in tests/sparsity/test_sparsegpt.py as the naive
reference) and the current one, interleaved, best of ``--repeat``; both reconstruction errors.

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


def _machine() -> dict:
    """CPU model and load average, taken in the same run as the figures they qualify."""
    import platform

    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), model)
    except OSError:
        pass
    return {"cpu_model": model, "cpu_count": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()]}


def layers(repeat: int = 2) -> dict:
    """Per-layer SparseGPT seconds, previous float64 implementation vs the current one (see the module doc)."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "sparsity"))
    from test_sparsegpt import float64_sparsegpt  # the previous implementation, kept as the naive reference

    from mope_deploy.sparsity import Pattern, sparsegpt_prune
    from mope_deploy.sparsity.sparsegpt import reconstruction_error

    torch.set_num_threads(1)
    rows_out = []
    for rows, cols in ((4096, 1024), (1024, 4096)):
        g = torch.Generator().manual_seed(0)
        X = torch.randn(256, cols, generator=g)
        W0 = torch.randn(rows, cols, generator=g) * 0.02
        H = X.t() @ X / X.shape[0]
        best = {"before": float("inf"), "after": float("inf")}
        errs = {}
        for _ in range(repeat):
            for name, fn in (("before", float64_sparsegpt), ("after", sparsegpt_prune)):
                t0 = time.perf_counter()
                W, _ = fn(W0, H, 0.5, Pattern(2, 4))
                best[name] = min(best[name], time.perf_counter() - t0)
                errs[name] = reconstruction_error(W.double(), W0.double(), H.double())
        rows_out.append({"shape": f"{rows}x{cols}", "before_s": round(best["before"], 2),
                         "after_s": round(best["after"], 2), "speedup": round(best["before"] / best["after"], 2),
                         "error_before": round(errs["before"], 4), "error_after": round(errs["after"], 4)})
        print(json.dumps(rows_out[-1]), flush=True)
    return {"tokens": 256, "pattern": "2:4", "threads": 1, "repeat": repeat, "layers": rows_out, **_machine()}


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
    load_before = _machine()["loadavg"]
    t0, c0 = time.perf_counter(), time.process_time()
    rep = sparsify(model, spec, calib, progress=False)
    seconds, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    peak_sparsify = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as d:
        t1 = time.perf_counter()
        model.save(Path(d) / "sparse")
        save_s = time.perf_counter() - t1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"model": model_name, "params_m": round(n_params / 1e6, 1), "method": method, "pattern": pattern,
            "samples": samples, "batch_size": batch, "rss_after_load_mb": round(after_load),
            "peak_rss_sparsify_mb": round(peak_sparsify), "peak_rss_mb": round(peak),
            "sparsify_seconds": round(seconds, 1), "sparsify_cpu_seconds": round(cpu_s, 1),
            "save_seconds": round(save_s, 1), "loadavg_before": load_before, **_machine(),
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
    ap.add_argument("--layers", action="store_true", help="per-layer SparseGPT seconds, before/after (see doc)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.layers:
        from mope_deploy.atomic import atomic_write_text

        res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **layers(a.repeat)}
        atomic_write_text(Path(__file__).resolve().parent / "results" / "sparsegpt_layers.json", json.dumps(res, indent=2))
        return res
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
        result = {"machine": "vm", **_machine(),
                  "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "limit_mb": 6144, "runs": runs}
        atomic_write_text(a.out, json.dumps(result, indent=2))  # after every method: a long one loses nothing
    return result


if __name__ == "__main__":
    main()
