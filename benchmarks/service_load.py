"""Load test of the retrieval service on loopback, and index-build throughput.

1. Service: ``mope serve`` runs in its own process over an index of
   synthetic:test; a client process keeps ``--clients`` concurrent connections busy with ``POST /search`` text
   queries (the captions of synthetic:test, shuffled) for ``--duration`` seconds per configuration (bounded also by
   ``--max-requests``). Configurations run back to back in one invocation, alternating, so they see the same machine:
   micro-batching (``--max-batch 32 --max-wait-ms 5``) vs no batching (``--max-batch 1``). Reported: requests/s,
   p50/p99 latency, errors (any non-200 or transport error), and the mean encoder batch (from /metrics).
2. Index build: images/s of `build_index` on synthetic:test (images only) with the demo bundle on ONNX Runtime fp32
   and int8, alternated ``--build-repeats`` times (best kept).

    .venv/bin/python benchmarks/service_load.py --duration 120 --rounds 2 \
        --json benchmarks/results/$(date +%F)_<machine>_service-load.json

Only 127.0.0.1 is contacted; every loop stops by count and by time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# `mope serve` itself, run with this interpreter
MOPE = [sys.executable, "-c", "import sys; from mope_deploy.cli.app import main; sys.argv[0] = 'mope'; main()"]


def _free_port() -> int:
    from mope_deploy.serve.server import loopback_socket

    s = loopback_socket()
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of process ``pid`` and its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(args, index: Path, max_batch: int, max_wait_ms: float) -> tuple[subprocess.Popen, str]:
    import httpx

    port = _free_port()
    cmd = MOPE + ["serve", args.model, "--backend", args.backend, "--index", str(index), "--max-batch", str(max_batch),
                  "--max-wait-ms", str(max_wait_ms), "--threads", str(args.threads), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited during startup")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.25)
    proc.kill()
    raise RuntimeError("server did not start")


async def drive(url: str, queries: list[str], clients: int, duration: float, max_requests: int) -> dict:
    import httpx

    lat: list[float] = []
    errors = 0
    reasons: dict[str, int] = {}
    sent = 0
    deadline = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
        async def client(i: int):
            nonlocal errors, sent
            j = i
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1
                q = queries[j % len(queries)]
                j += clients
                t0 = time.perf_counter()
                try:
                    r = await c.post("/search", json={"text": q, "k": 10})
                    ok, why = r.status_code == 200, f"HTTP {r.status_code}"
                except httpx.HTTPError as e:
                    ok, why = False, f"{type(e).__name__}: {str(e)[:80]}"
                if ok:
                    lat.append(time.perf_counter() - t0)
                else:
                    errors += 1
                    reasons[why] = reasons.get(why, 0) + 1
        t0 = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        wall = time.perf_counter() - t0
        metrics = (await c.get("/metrics")).text
    s = float(re.search(r'mope_batch_size_sum\{tower="text"\} (\S+)', metrics).group(1))
    n = float(re.search(r'mope_batch_size_count\{tower="text"\} (\S+)', metrics).group(1))
    a = np.asarray(lat) * 1000
    return {"requests": len(lat) + errors, "ok": len(lat), "errors": errors, "error_kinds": reasons,
            "seconds": round(wall, 2),
            "rps": round(len(lat) / wall, 1), "p50_ms": round(float(np.percentile(a, 50)), 2) if len(a) else None,
            "p99_ms": round(float(np.percentile(a, 99)), 2) if len(a) else None,
            "mean_batch": round(s / n, 2) if n else None}


def build_throughput(bundle: str, work: Path, repeats: int) -> dict:
    from mope_deploy.runtime import open_encoder
    from mope_deploy.serve.build import build_index, load_collection
    from mope_deploy.serve.index import model_fingerprint

    col = load_collection("synthetic:test")
    encoders = {b: open_encoder(bundle, b, threads=1, work_dir=str(work / f"w-{b}"))
                for b in ("onnxruntime", "onnxruntime-int8")}
    best: dict[str, float] = {}
    for r in range(repeats):
        for b, enc in encoders.items():
            out = work / f"idx-{b}-{r}"
            t0 = time.perf_counter()
            build_index(col, enc, out, fingerprint=model_fingerprint(bundle), data_spec="synthetic:test",
                        captions=False, progress=False, chunk_size=256)
            best[b] = max(best.get(b, 0.0), len(col.images) / (time.perf_counter() - t0))
    return {b: round(v, 1) for b, v in best.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="bundle or model (default: the demo teacher exported to ONNX)")
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--threads", type=int, default=1, help="encoder intra-op threads in the server")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--duration", type=float, default=120.0, help="seconds per configuration")
    p.add_argument("--max-requests", type=int, default=1_000_000, help="bound per configuration")
    p.add_argument("--rounds", type=int, default=1, help="alternations of the configurations")
    p.add_argument("--configs", default="32:5,1:0",
                   help="MAX_BATCH:MAX_WAIT_MS pairs to compare (the first is the micro-batching one, "
                        "1:0 the unbatched baseline)")
    p.add_argument("--build-repeats", type=int, default=3)
    p.add_argument("--skip-build", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    import torch

    from mope_deploy.runtime import open_encoder
    from mope_deploy.serve.build import build_index, load_collection
    from mope_deploy.serve.index import model_fingerprint

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="mope-service-load-") as tmp:
        work = Path(tmp)
        if args.model is None:
            from mope_deploy.exporting import export_bundle
            from mope_deploy.models import load
            export_bundle(load("demo"), work / "demo-bundle")
            args.model = str(work / "demo-bundle")
        col = load_collection("synthetic:test")
        enc = open_encoder(args.model, args.backend, threads=1, work_dir=str(work / "enc"))
        index = work / "index"
        build_index(col, enc, index, fingerprint=model_fingerprint(args.model), data_spec="synthetic:test",
                    progress=False)
        queries = [c for cs in col.captions for c in cs]
        random.Random(0).shuffle(queries)
        configs = []
        for pair in args.configs.split(","):
            mb, mw = int(pair.split(":")[0]), float(pair.split(":")[1])
            configs.append((f"max-batch {mb}, max-wait {mw:g} ms" if mb > 1 else "no batching (max-batch 1)", mb, mw))
        rows = []
        for r in range(args.rounds):
            for name, mb, mw in configs:
                proc, url = start_server(args, index, mb, mw)
                try:
                    asyncio.run(drive(url, queries[:200], args.clients, 3.0, 2000))      # warm-up, not recorded
                    s0, c0 = cpu_seconds(proc.pid), time.process_time()
                    res = asyncio.run(drive(url, queries, args.clients, args.duration, args.max_requests))
                    res["server_cpu_ms_per_request"] = round(1000 * (cpu_seconds(proc.pid) - s0) / max(1, res["ok"]), 3)
                    res["client_cpu_ms_per_request"] = round(1000 * (time.process_time() - c0) / max(1, res["ok"]), 3)
                    res["loadavg_1m"] = round(os.getloadavg()[0], 2)
                finally:
                    proc.terminate()
                    proc.wait(30)
                res.update(config=name, round=r, max_batch=mb, max_wait_ms=mw)
                rows.append(res)
                print(json.dumps(res), flush=True)
        build = None if args.skip_build else build_throughput(args.model, work, args.build_repeats)
        if build:
            print(json.dumps({"index_build_images_per_s": build}), flush=True)
    by = {name: [x for x in rows if x["config"] == name] for name, _, _ in configs}
    base = by[configs[-1][0]]
    summary = {"errors": sum(x["errors"] for x in rows), "baseline": configs[-1][0]}
    for name, _, _ in configs[:-1]:
        rps_ratio = sum(x["rps"] for x in by[name]) / max(1e-9, sum(x["rps"] for x in base))
        summary[name] = {"rps_ratio": round(rps_ratio, 2),
                         "p99_ratio": round(np.mean([x["p99_ms"] for x in by[name]]) /
                                            np.mean([x["p99_ms"] for x in base]), 3)}
    print(json.dumps(summary))
    if args.json:
        from mope_deploy.atomic import atomic_write_text

        payload = {"rows": rows, "summary": summary, "index_build_images_per_s": build, "clients": args.clients,
                   "duration_s": args.duration, "model": "demo teacher (ONNX bundle)" if "demo-bundle" in args.model
                   else args.model, "backend": args.backend, "threads": args.threads,
                   "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                               "loadavg_at_end": os.getloadavg()}}
        atomic_write_text(args.json, json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
