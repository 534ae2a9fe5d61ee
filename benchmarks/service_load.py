"""Load test of the retrieval service on loopback with `wrk` (a compiled load generator: ~0.05 ms of CPU per
request, so on a small machine the client does not take the CPU the server needs).

For each bundle (``--bundles``: the demo teacher's ONNX bundle on ONNX Runtime fp32, and the MoPE-CLIP base shape
(random weights) exported with int8 variants, on ``onnxruntime-int8``: encoder-bound), ``mope serve`` runs in its
own process over an index of synthetic:test, and ``wrk`` keeps ``--clients`` connections busy with ``POST /search``
text queries (the captions of synthetic:test, rotating) for ``--duration`` seconds per configuration. The batching
policies (``--policies``) alternate ``--rounds`` times so they see the same machine:

    adaptive   --batch-policy adaptive --max-batch 32      (the default: no fill wait, cap from the encoder's cost)
    fixed      --batch-policy fixed --max-batch 32 --max-wait-ms 5
    none       --batch-policy fixed --max-batch 1 --max-wait-ms 0      (the unbatched baseline)

Reported per run: requests/s, p50/p99 latency (wrk's), errors (non-2xx, socket errors, timeouts), the mean encoder
batch (from /metrics), server CPU ms per request, the load average; per bundle and policy: requests/s and p99 as
ratios to ``none`` (the CPU criterion: >= 1.0x and <= 1.25x, 0 errors).

    flock /tmp/mope-timing.lock .venv/bin/python benchmarks/service_load.py --duration 120 --rounds 2 \\
        --json benchmarks/results/$(date +%F)_<machine>_service-load-wrk.json

``wrk`` is installed with apt-get when absent (root) or must be on PATH. Only 127.0.0.1 is contacted; every loop
stops by count and by time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# `mope serve` itself, run with this interpreter
MOPE = [sys.executable, "-c", "import sys; from mope_deploy.cli.app import main; sys.argv[0] = 'mope'; main()"]
POLICIES = {"adaptive": ["--batch-policy", "adaptive", "--max-batch", "32"],
            "fixed": ["--batch-policy", "fixed", "--max-batch", "32", "--max-wait-ms", "5"],
            "none": ["--batch-policy", "fixed", "--max-batch", "1", "--max-wait-ms", "0"]}
BUNDLES = {"demo": "onnxruntime", "mope-base-int8": "onnxruntime-int8"}
#: images indexed per bundle (search cost is not what is measured; the big model embeds slowly on a CPU)
INDEX_IMAGES = {"demo": 500, "mope-base-int8": 64}
LUA = r"""
local queries = {}
for line in io.lines(os.getenv("MOPE_QUERIES")) do queries[#queries + 1] = line end
local i = 0
request = function()
  i = i + 1
  return wrk.format("POST", "/search", {["Content-Type"] = "application/json"}, queries[(i % #queries) + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('MOPE {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n', summary.requests,
    summary.duration, e.connect, e.read, e.write, e.status, e.timeout, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def ensure_wrk() -> str:
    """The wrk binary, installed with apt-get when absent and this runs as root."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing wrk (apt-get install -y wrk)", flush=True)
        subprocess.run(["apt-get", "install", "-y", "wrk"], check=False, stdout=subprocess.DEVNULL)
        if subprocess.run(["which", "wrk"], capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update"], check=False, stdout=subprocess.DEVNULL)
            subprocess.run(["apt-get", "install", "-y", "wrk"], check=True, stdout=subprocess.DEVNULL)
        found = shutil.which("wrk")
    if not found:
        sys.exit("wrk is not installed: apt-get install wrk (or put a wrk binary on PATH)")
    return found


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of process ``pid`` and its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_bundle(name: str, cache: Path) -> Path:
    """The bundle ``name`` in ``cache`` (exported once, reused by later runs)."""
    from mope_deploy.runtime import is_bundle

    out = cache / name
    if is_bundle(out):
        return out
    import torch

    from mope_deploy.exporting import export_bundle
    from mope_deploy.models import SlimCLIP, load

    if name == "demo":
        export_bundle(load("demo"), out)
        return out
    from mope_deploy.bench.paper import paper_configs
    from mope_deploy.exporting.config import ExportConfig
    from mope_deploy.models import load_config

    torch.manual_seed(0)
    model = SlimCLIP(paper_configs(load_config("ViT-L-14"))["MoPE-CLIP base"]).eval()
    export_bundle(model, out, ExportConfig(precision="int8", skip_recall_gate=True))   # random weights: no recall
    return out


def make_index(name: str, bundle: Path, backend: str, cache: Path) -> Path:
    from mope_deploy.runtime import open_encoder
    from mope_deploy.serve.build import Collection, build_index, load_collection
    from mope_deploy.serve.index import is_index, model_fingerprint

    out = cache / f"{name}.index"
    if is_index(out):
        return out
    full, n = load_collection("synthetic:test"), INDEX_IMAGES[name]
    col = Collection(full.name, [full.images[i] for i in range(n)], full.ids[:n], full.captions[:n])
    enc = open_encoder(bundle, backend, threads=1, work_dir=str(cache / f"{name}-work"))
    build_index(col, enc, out, fingerprint=model_fingerprint(str(bundle)), data_spec="synthetic:test",
                captions=False, progress=False)
    return out


def start_server(bundle: Path, backend: str, index: Path, policy: str, threads: int, timeout_s: float = 600):
    import httpx

    from mope_deploy.serve.server import loopback_socket

    s = loopback_socket()
    port = s.getsockname()[1]
    s.close()
    cmd = MOPE + ["serve", str(bundle), "--backend", backend, "--index", str(index), "--threads", str(threads),
                  "--port", str(port), "--max-queue", "4096", *POLICIES[policy]]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited during startup: {' '.join(cmd)}")
        try:
            r = httpx.get(url + "/ready", timeout=2)
            if r.status_code == 200:
                return proc, url, r.json().get("warm_up", {})
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    proc.kill()
    raise RuntimeError("server did not become ready")


def run_wrk(wrk: str, url: str, queries: Path, clients: int, duration: float, script: Path) -> dict:
    cmd = [wrk, "-t1", f"-c{clients}", f"-d{max(1, int(duration))}s", "--timeout", "30s", "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "MOPE_QUERIES": str(queries)},
                         timeout=duration + 120)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("MOPE ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no summary: {out.stdout[-500:]} {out.stderr[-500:]}")
    return json.loads(line[5:])


def mean_batch(url: str) -> float | None:
    import httpx

    text = httpx.get(url + "/metrics", timeout=30).text
    s = re.search(r'mope_batch_size_sum\{tower="text"\} (\S+)', text)
    n = re.search(r'mope_batch_size_count\{tower="text"\} (\S+)', text)
    return round(float(s.group(1)) / float(n.group(1)), 2) if s and n and float(n.group(1)) else None


def measure(args, wrk: str, bundle: Path, backend: str, index: Path, policy: str, files: tuple[Path, Path]) -> dict:
    """One configuration: start, warm (not recorded), measure, stop."""
    queries, script = files
    proc, url, warm = start_server(bundle, backend, index, policy, args.threads)
    try:
        run_wrk(wrk, url, queries, args.clients, min(5.0, args.duration), script)
        b0, s0 = mean_batch(url), cpu_seconds(proc.pid)
        w = run_wrk(wrk, url, queries, args.clients, args.duration, script)
        server_cpu = cpu_seconds(proc.pid) - s0
        batch = mean_batch(url)
        load = os.getloadavg()[0]
    finally:
        proc.terminate()
        proc.wait(30)
    errors = w["connect"] + w["read"] + w["write"] + w["status"] + w["timeout"]
    secs = w["duration_us"] / 1e6
    return {"policy": policy, "requests": w["requests"], "errors": errors,
            "error_kinds": {k: w[k] for k in ("connect", "read", "write", "status", "timeout") if w[k]},
            "seconds": round(secs, 1), "rps": round((w["requests"] - errors) / secs, 1),
            "p50_ms": round(w["p50_us"] / 1000, 1), "p99_ms": round(w["p99_us"] / 1000, 1),
            "max_ms": round(w["max_us"] / 1000, 1), "mean_batch_cumulative": batch, "mean_batch_before": b0,
            "server_cpu_ms_per_request": round(1000 * server_cpu / max(1, w["requests"]), 3),
            "loadavg_1m": round(load, 2), "batch_caps": {t: warm[t]["cap"] for t in ("text", "image") if t in warm}}


def summarise(rows: list[dict], policies: list[str]) -> dict:
    """Per bundle and policy: requests/s and p99 as ratios to ``none`` (means over rounds), and the criterion."""
    out: dict = {}
    for bundle in dict.fromkeys(r["bundle"] for r in rows):
        base = [r for r in rows if r["bundle"] == bundle and r["policy"] == "none"]
        out[bundle] = {}
        for p in policies:
            mine = [r for r in rows if r["bundle"] == bundle and r["policy"] == p]
            if not mine or not base or p == "none":
                continue
            rps = sum(r["rps"] for r in mine) / sum(r["rps"] for r in base)
            p99 = (sum(r["p99_ms"] for r in mine) / len(mine)) / (sum(r["p99_ms"] for r in base) / len(base))
            errors = sum(r["errors"] for r in mine)
            out[bundle][p] = {"rps_ratio": round(rps, 3), "p99_ratio": round(p99, 3), "errors": errors,
                              "meets_cpu_criterion": rps >= 1.0 and p99 <= 1.25 and errors == 0}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundles", default="demo,mope-base-int8", help=f"comma list of {', '.join(BUNDLES)}")
    p.add_argument("--policies", default="adaptive,fixed,none", help=f"comma list of {', '.join(POLICIES)}")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--duration", type=float, default=120.0, help="seconds measured per configuration")
    p.add_argument("--rounds", type=int, default=2, help="alternations of the policies")
    p.add_argument("--threads", type=int, default=1, help="encoder intra-op threads in the server")
    p.add_argument("--cache", type=Path, default=None, help="folder for the bundles and indexes (reused)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    bundles, policies = args.bundles.split(","), args.policies.split(",")
    for b in bundles:
        if b not in BUNDLES:
            sys.exit(f"--bundles: unknown {b!r}; use {', '.join(BUNDLES)}")
    for x in policies:
        if x not in POLICIES:
            sys.exit(f"--policies: unknown {x!r}; use {', '.join(POLICIES)}")
    wrk = ensure_wrk()
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    from mope_deploy.serve.build import load_collection

    with tempfile.TemporaryDirectory(prefix="mope-service-load-") as tmp:
        cache = args.cache or Path(tmp)
        cache.mkdir(parents=True, exist_ok=True)
        queries, script = Path(tmp) / "queries.jsonl", Path(tmp) / "search.lua"
        caps = [c for cs in load_collection("synthetic:test").captions for c in cs]
        queries.write_text("".join(json.dumps({"text": c, "k": 10}) + "\n" for c in caps))
        script.write_text(LUA)
        rows = []
        for name in bundles:
            bundle = make_bundle(name, cache)
            index = make_index(name, bundle, BUNDLES[name], cache)
            for r in range(args.rounds):
                for policy in policies:
                    res = measure(args, wrk, bundle, BUNDLES[name], index, policy, (queries, script))
                    res.update(bundle=name, backend=BUNDLES[name], round=r + 1)
                    rows.append(res)
                    print(json.dumps(res), flush=True)
                    write_json(args, rows, policies, cpu)        # after every run: a stopped job keeps its rows
    print(json.dumps(summarise(rows, policies), indent=1))
    write_json(args, rows, policies, cpu)


def write_json(args, rows: list[dict], policies: list[str], cpu: str) -> None:
    if not args.json:
        return
    from mope_deploy.atomic import atomic_write_text

    payload = {"rows": rows, "summary": summarise(rows, policies), "clients": args.clients,
               "duration_s": args.duration, "rounds": args.rounds, "threads": args.threads,
               "load_generator": "wrk -t1 (Lua: POST /search)",
               "machine": {"cpu": cpu, "cores": os.cpu_count(), "loadavg_at_end": os.getloadavg()}}
    atomic_write_text(args.json, json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
