"""How fast is torch's fp32 GEMM on this CPU, with and without MKL's vendor check overridden, vs ONNX Runtime?

    .venv/bin/python benchmarks/cpu_gemm_check.py [--threads 2] [--out benchmarks/results/...json]

PyTorch's x86 wheels link Intel MKL statically; MKL picks slower code paths on non-Intel CPUs. Its check is the
exported function ``mkl_serv_intel_cpu_true``: a one-line shared library returning 1, loaded with LD_PRELOAD,
makes MKL take its AVX2/AVX-512 paths on AMD. This script times one ViT-L/14 FFN matmul (batch 8 x 257 tokens,
1024 -> 4096) in torch (default and overridden, each in a fresh process) and in ONNX Runtime (MLAS), so the
README can say which setting a torch figure used. One-off; not part of CI.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHIM = "int mkl_serv_intel_cpu_true(void) { return 1; }\n"
M, K, N = 8 * 257, 1024, 4096


def _median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2]


def child(engine: str, threads: int, reps: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((M, K), dtype=np.float32)
    b = rng.standard_normal((K, N), dtype=np.float32)
    if engine == "torch":
        import torch

        torch.set_num_threads(threads)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        ms = _median_ms(lambda: ta @ tb, reps)
    else:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [M, K])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [M, N])],
                              initializer=[numpy_helper.from_array(b, "b")])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        ms = _median_ms(lambda: s.run(None, {"a": a}), reps)
        onnx.checker.check_model(m)
    return {"engine": engine, "median_ms": ms, "gflop_s": 2 * M * K * N / (ms / 1e3) / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", choices=["torch", "onnxruntime"])
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.threads, args.reps)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src, lib = Path(tmp) / "shim.c", Path(tmp) / "libmklshim.so"
        src.write_text(SHIM)
        subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(lib), str(src)], check=True)
        for name, engine, env in (("torch (MKL default)", "torch", {}),
                                  ("torch (MKL vendor check overridden)", "torch", {"LD_PRELOAD": str(lib)}),
                                  ("onnxruntime (MLAS)", "onnxruntime", {})):
            out = subprocess.run([sys.executable, __file__, "--child", engine, "--threads", str(args.threads),
                                  "--reps", str(args.reps)], env={**os.environ, **env}, check=True,
                                 capture_output=True, text=True).stdout
            rows.append({"setting": name, **json.loads(out.strip().splitlines()[-1])})
            print(f"{name:40s} {rows[-1]['median_ms']:8.1f} ms  {rows[-1]['gflop_s']:6.1f} GFLOP/s")
    if args.out:
        from mope_deploy.bench.harness import environment
        from mope_deploy.bench.run import write_json
        write_json({"shape": [M, K, N], "threads": args.threads, "rows": rows,
                    "environment": environment("cpu", args.threads)}, args.out)


if __name__ == "__main__":
    main()
