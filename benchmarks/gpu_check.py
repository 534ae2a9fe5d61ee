"""Everything that needs a GPU, in one command (< 10 minutes on one data-centre GPU):

    python benchmarks/gpu_check.py [--out DIR] [--budget-s 540] [--iters 20]

1. The paper's Table 7 in PyTorch on CUDA: the ViT-L/14 teacher and MoPE-CLIP large/base/small shapes (Table 5,
   random weights), batch 64, fp16 and fp32, eager and ``torch.compile``, timed with CUDA events (vision + text
   tower at the same batch).
2. Where importable: TensorRT engines (fp32, fp16) for the demo model and the MoPE-CLIP base shape, each gated
   against torch at batch 1/opt/max (the exporter's own gate), then timed; torch-tensorrt programs (fp16) the
   same way; ONNX Runtime's CUDA execution provider on the fp32 graphs (parity and latency).

Every step that cannot run here prints ``SKIP <step>: <why>`` and the script still exits 0; a step that runs
and fails prints ``FAIL`` with the reason, is recorded, and makes the exit status 1. Results: ``gpu_check.json`` and
``gpu_check.md`` in ``--out`` (written when ``--out`` is given or any GPU step ran).

Runs from a source checkout with torch (+CUDA) and numpy plus ``safetensors`` (imported by ``mope_deploy``);
``onnx`` only for the ONNX/TensorRT steps. Nothing imports open_clip or needs a network.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

PAPER_BATCH = 64


def vit_l14_config():
    """open_clip's ViT-L-14 (OpenAI) architecture as a CLIPConfig, written out so no open_clip is needed."""
    from mope_deploy.models.config import CLIPConfig, TextConfig, VisionConfig, uniform_blocks

    vision = VisionConfig(width=1024, head_dim=64, blocks=uniform_blocks(24, 16, 4096), act="quick_gelu",
                          image_size=224, patch_size=14)
    text = TextConfig(width=768, head_dim=64, blocks=uniform_blocks(12, 12, 3072), act="quick_gelu",
                      context_length=77, vocab_size=49408, eos_id=49407)
    return CLIPConfig(embed_dim=768, vision=vision, text=text,
                      preprocess={"size": 224, "mean": [0.48145466, 0.4578275, 0.40821073],
                                  "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic",
                                  "resize_mode": "shortest"},
                      tokenizer={"type": "open_clip", "name": "ViT-L-14"},
                      provenance={"source": "gpu_check", "teacher": "ViT-L-14"}).validate()


class Check:
    """Runs steps within a time budget and records what ran, what was skipped and why."""

    def __init__(self, budget_s: float):
        self.t0 = time.perf_counter()
        self.budget = budget_s
        self.steps: list[dict[str, Any]] = []
        self.failed = False

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def skip(self, name: str, why: str) -> None:
        print(f"SKIP {name}: {why}", flush=True)
        self.steps.append({"step": name, "status": "skipped", "why": why})

    def run(self, name: str, fn: Callable[[], Any], need_s: float = 0.0) -> Any:
        if self.left() < need_s:
            self.skip(name, f"time budget: {self.left():.0f} s left, the step needs about {need_s:.0f} s")
            return None
        print(f"RUN  {name}", flush=True)
        t = time.perf_counter()
        try:
            out = fn()
        except Exception as e:  # a failed step is reported and the next ones still run
            self.failed = True
            print(f"FAIL {name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", flush=True)
            self.steps.append({"step": name, "status": "failed", "error": f"{type(e).__name__}: {e}",
                               "traceback": traceback.format_exc(limit=6), "seconds": time.perf_counter() - t})
            return None
        self.steps.append({"step": name, "status": "ok", "seconds": round(time.perf_counter() - t, 1), "result": out})
        print(f"OK   {name} ({time.perf_counter() - t:.1f} s)", flush=True)
        return out


def time_ms(fn: Callable[[], Any], warmup: int, iters: int, device: str = "cuda") -> dict[str, float]:
    """Per-call milliseconds: CUDA events around each call on a GPU (device time, not host time); a wall clock
    on the CPU (the script's self-test)."""
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {"median_ms": times[len(times) // 2], "min_ms": times[0], "p90_ms": times[int(0.9 * (len(times) - 1))],
            "n": len(times)}


def _inputs(cfg, batch: int, device: str):
    g = torch.Generator(device="cpu").manual_seed(0)
    s = cfg.vision.image_size
    images = torch.randn(batch, 3, s, s, generator=g)
    n = cfg.text.context_length
    tokens = torch.randint(1, cfg.text.vocab_size - 1, (batch, n), generator=g)
    ends = torch.randint(5, n, (batch,), generator=g)
    tokens[torch.arange(batch), ends] = cfg.text.eos_id
    tokens = torch.where(torch.arange(n)[None] > ends[:, None], torch.zeros_like(tokens), tokens)
    return images.to(device), tokens.to(device)


def table7(batch: int, warmup: int, iters: int, modes: list[str], dtypes: list[str], check: Check,
           teacher=None, device: str = "cuda") -> dict[str, Any]:
    """Table 7 rows for every (mode, dtype): vision + text median latency and speed-up vs the teacher
    (ViT-L/14 unless ``teacher`` is another CLIPConfig, e.g. a tiny stand-in for the CPU self-test)."""
    from mope_deploy.bench.paper import PAPER_MODELS, paper_configs
    from mope_deploy.models.counting import model_stats
    from mope_deploy.models.slim_clip import SlimCLIP

    configs = paper_configs(teacher or vit_l14_config())
    rows: list[dict[str, Any]] = []
    for mode in modes:
        for dname in dtypes:
            dtype = {"fp16": torch.float16, "fp32": torch.float32}[dname]
            if check.left() < (90 if mode == "compiled" else 20):
                check.skip(f"table7 {mode} {dname}", f"time budget ({check.left():.0f} s left)")
                continue
            for i, (name, cfg) in enumerate(configs.items()):
                torch.manual_seed(i)
                model = SlimCLIP(cfg).eval().to(device, dtype)
                images, tokens = _inputs(cfg, batch, device)
                images = images.to(dtype)
                vis, txt = model.encode_image, model.encode_text
                t_compile = None
                if mode == "compiled":
                    t = time.perf_counter()
                    vis, txt = torch.compile(vis), torch.compile(txt)
                    with torch.inference_mode():
                        vis(images), txt(tokens)
                    if device == "cuda":
                        torch.cuda.synchronize()
                    t_compile = round(time.perf_counter() - t, 1)
                with torch.inference_mode():
                    tv = time_ms(lambda: vis(images), warmup, iters, device)
                    tt = time_ms(lambda: txt(tokens), warmup, iters, device)
                stats = model_stats(cfg)
                rows.append({"model": name, "mode": mode, "dtype": dname, "batch": batch,
                             "vision_ms": tv["median_ms"], "text_ms": tt["median_ms"],
                             "latency_ms": tv["median_ms"] + tt["median_ms"],
                             "latency_min_ms": tv["min_ms"] + tt["min_ms"], "params_m": round(stats["params"] / 1e6, 1),
                             "gflops": stats["gflops"], "compile_s": t_compile})
                del model, vis, txt
                if device == "cuda":
                    torch.cuda.empty_cache()
                if mode == "compiled":
                    torch._dynamo.reset()
    paper = {m.name: m for m in PAPER_MODELS}
    for r in rows:
        teacher = next(x for x in rows if x["mode"] == r["mode"] and x["dtype"] == r["dtype"]
                       and x["model"] == PAPER_MODELS[0].name)
        r["speedup"] = teacher["latency_ms"] / r["latency_ms"]
        r["flop_ratio"] = teacher["gflops"] / r["gflops"]
        pm = paper.get(r["model"])
        r["paper_v100_ms"], r["paper_speedup"] = (pm.paper_latency_ms, pm.paper_speedup) if pm else (None, None)
    return {"batch": batch, "rows": rows, "note": "random weights; latency = vision + text median (CUDA events)"}


def _student(kind: str):
    from mope_deploy.bench.paper import PAPER_MODELS, student_config
    from mope_deploy.models.registry import DEMO_DIR, load_model
    from mope_deploy.models.slim_clip import SlimCLIP

    if kind == "demo":
        return load_model(DEMO_DIR).float().eval()
    torch.manual_seed(0)
    spec = next(m for m in PAPER_MODELS if m.name == "MoPE-CLIP base")
    return SlimCLIP(student_config(vit_l14_config(), spec)).eval()


def _export_fp32(model, out: Path) -> None:
    from mope_deploy.exporting.onnx import write_onnx

    out.mkdir(parents=True, exist_ok=True)
    write_onnx(model, out)  # the project default exporter, as `mope export` uses


def tensorrt_step(kind: str, work: Path, batch: int, warmup: int, iters: int, device: str = "cuda") -> dict[str, Any]:
    import tensorrt as trt

    from mope_deploy.exporting import tensorrt as trt_export
    from mope_deploy.exporting.tensorrt.runner import load_runner

    model = _student(kind)
    d = work / f"trt-{kind}"
    _export_fp32(model, d)
    out: dict[str, Any] = {"tensorrt": trt.__version__}
    cfg = model.config
    images, tokens = _inputs(cfg, batch, device)
    for precision in ("fp32", "fp16"):
        info = trt_export.build_engines(d, model, trt_export.EngineBuild(precision, (1, min(8, batch), batch),
                                                                         device=device))
        res = {"gates": {t: {k: info.engines[t].gate[k] for k in ("min_cosine", "max_abs", "passed")}
                         for t in ("vision", "text")},
               "build_s": {t: info.engines[t].details["build_seconds"] for t in ("vision", "text")}}
        for tower, name, x in (("vision", "image", images), ("text", "tokens", tokens.int())):
            r = load_runner(trt, d / info.engines[tower].file, name, device=device)
            xp = r.prepare(x)
            res[f"{tower}_ms"] = time_ms(lambda: (r.enqueue(xp), r.synchronize()), warmup, iters, device)["median_ms"]
        out[precision] = res
    return out


def torch_tensorrt_step(kind: str, work: Path, batch: int, warmup: int, iters: int,
                        device: str = "cuda") -> dict[str, Any]:
    from mope_deploy.exporting.tensorrt import EngineBuild
    from mope_deploy.exporting.tensorrt import torch_trt as torch_trt_export

    model = _student(kind)
    d = work / f"ttrt-{kind}"
    d.mkdir(parents=True, exist_ok=True)
    info = torch_trt_export.compile_torch_tensorrt(model, d, EngineBuild("fp16", (1, min(8, batch), batch),
                                                                         device=device))
    images, tokens = _inputs(model.config, batch, device)
    res: dict[str, Any] = {"version": info.version, "features": info.details["features"],
                           "gates": {t: {k: e.gate[k] for k in ("min_cosine", "max_abs", "passed")}
                                     for t, e in info.engines.items()}}
    for tower, x in (("vision", images), ("text", tokens.int())):
        prog = torch_trt_export.load_program(d / info.engines[tower].file, device)
        with torch.inference_mode():
            res[f"{tower}_ms"] = time_ms(lambda: prog(x), warmup, iters, device)["median_ms"]
    return res


def ort_cuda_step(kind: str, work: Path, batch: int, warmup: int, iters: int) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort

    from mope_deploy.exporting.tensorrt.gate import compare

    model = _student(kind)
    d = work / f"ort-{kind}"
    _export_fp32(model, d)
    images, tokens = _inputs(model.config, batch, "cpu")
    res: dict[str, Any] = {"onnxruntime": ort.__version__}
    for tower, file, x, ref in (("image", "image_encoder.onnx", images, model.encode_image),
                                ("text", "text_encoder.onnx", tokens.int(), lambda t: model.encode_text(t.long()))):
        s = ort.InferenceSession(str(d / file), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        feed = {s.get_inputs()[0].name: x.numpy()}
        got = s.run(None, feed)[0]
        with torch.no_grad():
            want = ref(x).numpy()
        res[tower] = {"providers": s.get_providers(), **compare(np.asarray(got), want)}
        t = []
        for i in range(warmup + iters):
            t0 = time.perf_counter()
            s.run(None, feed)
            if i >= warmup:
                t.append((time.perf_counter() - t0) * 1e3)
        res[tower]["median_ms_host"] = sorted(t)[len(t) // 2]
    return res


def _importable(name: str) -> str | None:
    import importlib

    try:
        importlib.import_module(name)
        return None
    except Exception as e:  # ImportError, or a broken install raising something else
        return f"{name} is not importable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [f"# GPU check {report['date']}", "", f"Device: {env.get('gpu') or 'none'}; torch {env['torch']}, "
             f"CUDA {env.get('cuda')}", "", "| step | status | detail |", "|---|---|---|"]
    for s in report["steps"]:
        detail = s.get("why") or s.get("error", "").splitlines()[0] if s["status"] != "ok" else f"{s['seconds']} s"
        lines.append(f"| {s['step']} | {s['status']} | {detail} |")
    t7 = next((s["result"] for s in report["steps"] if s["step"] == "table7" and s["status"] == "ok"), None)
    if t7:
        lines += ["", f"## Table 7 (batch {t7['batch']}, random weights)", "",
                  "| model | mode | dtype | vision ms | text ms | latency ms | speed-up | FLOP ratio | paper V100 ms | "
                  "paper speed-up |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in t7["rows"]:
            lines.append(f"| {r['model']} | {r['mode']} | {r['dtype']} | {r['vision_ms']:.1f} | {r['text_ms']:.1f} | "
                         f"{r['latency_ms']:.1f} | {r['speedup']:.2f}x | {r['flop_ratio']:.2f}x | "
                         f"{r['paper_v100_ms']} | {r['paper_speedup']}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="folder for gpu_check.json / gpu_check.md")
    ap.add_argument("--budget-s", type=float, default=540.0, help="stop starting new steps after this many seconds")
    ap.add_argument("--batch", type=int, default=PAPER_BATCH)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--modes", default="eager,compiled")
    ap.add_argument("--dtypes", default="fp16,fp32")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder for graphs and engines")
    args = ap.parse_args(argv)
    check = Check(args.budget_s)
    cuda = torch.cuda.is_available()
    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cuda": torch.version.cuda, "cuda_available": cuda,
                           "gpu": torch.cuda.get_device_name(0) if cuda else None, "host": platform.node()}
    for lib in ("numpy", "safetensors", "onnx", "onnxruntime", "tensorrt", "torch_tensorrt", "open_clip"):
        env[lib] = None if _importable(lib) else getattr(sys.modules[lib], "__version__", "?")
    print(f"gpu_check: torch {torch.__version__}, CUDA device: {env['gpu'] or 'none'}", flush=True)
    no_cuda = "no CUDA device (torch.cuda.is_available() is False)"
    modes = [m for m in args.modes.split(",") if m]
    dtypes = [d for d in args.dtypes.split(",") if d]
    if cuda:
        check.run("table7", lambda: table7(args.batch, args.warmup, args.iters, modes, dtypes, check), need_s=60)
    else:
        check.skip("table7", no_cuda)
    import tempfile

    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    for lib, step, fn, need in (("tensorrt", "tensorrt", tensorrt_step, 90),
                                ("torch_tensorrt", "torch-tensorrt", torch_tensorrt_step, 120),
                                ("onnxruntime", "onnxruntime-cuda", ort_cuda_step, 30)):
        for kind in ("demo", "mope-base"):
            name = f"{step} {kind}"
            why = _importable(lib) or _importable("onnx") if lib != "torch_tensorrt" else _importable(lib)
            if not cuda:
                why = no_cuda if why is None else f"{why}; {no_cuda}"
            if why is None and lib == "onnxruntime":
                import onnxruntime as ort

                if "CUDAExecutionProvider" not in ort.get_available_providers():
                    why = f"onnxruntime has no CUDAExecutionProvider (providers: {ort.get_available_providers()})"
            if why:
                check.skip(name, why)
                continue
            check.run(name, lambda fn=fn, kind=kind: fn(kind, work, args.batch, args.warmup, args.iters), need_s=need)
    report = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "environment": env,
              "budget_s": args.budget_s, "elapsed_s": round(time.perf_counter() - check.t0, 1), "steps": check.steps}
    ran = any(s["status"] != "skipped" for s in check.steps)
    out = args.out or ((ROOT / "benchmarks" / "results" / f"{dt.date.today()}_gpu_check") if ran else None)
    if out is not None:
        from mope_deploy.atomic import atomic_write_text

        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "gpu_check.json", json.dumps(report, indent=2, default=str))
        atomic_write_text(out / "gpu_check.md", markdown(report))
        print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    print(markdown(report))
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
