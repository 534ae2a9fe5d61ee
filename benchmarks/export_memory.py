"""Peak memory of exporting a randomly initialised ViT-L/14 to ONNX, per exporter (one-off; not in CI).

    python benchmarks/export_memory.py [--model ViT-L-14] [--exporters legacy,dynamo] [--out results/...json]

Each exporter runs in its own fresh process so peaks do not mix; the peak RSS (``ru_maxrss``) is reported
together with the RSS right after the model was loaded, so the exporter's own cost is the difference.
Only the graph export is measured (no parity run, which loads the graph into ONNX Runtime on top).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(model_name: str, exporter: str, full: bool = False) -> dict:
    import torch

    import mope_deploy
    from mope_deploy.exporting.graphs import onnx_size
    from mope_deploy.exporting.onnx import write_onnx

    torch.set_num_threads(2)
    model = mope_deploy.load(model_name)
    after_load = _rss_mb()
    peak_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        if full:  # the whole `mope export --format onnx --no-optimize` path: export + parity gate + manifest
            from mope_deploy.exporting import ExportConfig, export_onnx

            d = str(Path(d) / "bundle")
            info = export_onnx(model, d, ExportConfig(exporter=exporter))
            parity = info.parity["max_abs"]
        else:
            info, parity = write_onnx(model, d, exporter=exporter), None
        seconds = time.perf_counter() - t0
        sizes = {f: onnx_size(Path(d) / f) / 2**20 for f in ("image_encoder.onnx", "text_encoder.onnx")}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"model": model_name, "exporter": exporter, "rss_after_load_mb": round(after_load),
            "peak_during_load_mb": round(peak_load), "peak_rss_mb": round(peak),
            "export_overhead_mb": round(peak - after_load), "seconds": round(seconds, 1),
            "onnx_mb": {k: round(v) for k, v in sizes.items()}, "external_data": info["external_data"],
            "opset": info["opset"], "full_export_with_parity": full, "parity_max_abs": parity}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ViT-L-14")
    ap.add_argument("--exporters", default="legacy,dynamo")
    ap.add_argument("--out", default=None)
    ap.add_argument("--full", action="store_true", help="measure the whole export_onnx (with the parity gate)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.model, a.child, a.full)))
        return
    rows = []
    for exp in a.exporters.split(","):
        cmd = [sys.executable, __file__, "--model", a.model, "--child", exp] + (["--full"] if a.full else [])
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            rows.append({"exporter": exp, "error": r.stderr[-2000:], "returncode": r.returncode})
        else:
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    result = {"machine": platform.node(), "cpu_count": __import__("os").cpu_count(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": rows}
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
