"""Everything that needs a GPU, in one command that always finishes and keeps what it measured:

    python benchmarks/gpu_check.py [--out DIR] [--budget-s 420] [--iters 20] [--compile]

1. The paper's Table 7 in PyTorch on CUDA: the ViT-L/14 teacher and MoPE-CLIP large/base/small shapes (Table 5,
   random weights), batch 64, eager fp16 and fp32 (``--compile`` adds ``torch.compile``), timed with CUDA events
   (vision + text tower at the same batch). Each model is built on the GPU once per dtype.
2. Cross-request batching on the GPU: encoder throughput at batch 1 vs 32 (demo and MoPE-CLIP base, fp16), the
   service's ">= 3x from batching" criterion measured where it belongs.
3. Where importable: TensorRT engines (fp32, fp16) for the demo model and the MoPE-CLIP base shape, each gated
   against torch (the exporter's own gate), then timed; torch-tensorrt programs (fp16); ONNX Runtime's CUDA
   execution provider on the fp32 graphs.

It always finishes: the time budget (default 420 s) is checked before each model and each step, a step that
cannot run here prints ``SKIP <step>: <why>`` (every import a step needs is checked first), a step that fails
prints ``FAIL`` and is recorded without losing the rows measured before it, and the exit status is 1 only when
something failed. Each row is printed as it is measured and ``gpu_check.json`` / ``gpu_check.md`` (in ``--out``)
are rewritten after every row. Runs with only torch (+CUDA), numpy and safetensors importable.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
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
BUDGET_S = 420.0
BATCHING = (1, 32)
#: what each optional step imports (checked before it runs, so a missing library is a SKIP, not a FAIL)
STEP_IMPORTS = {"tensorrt": ("tensorrt", "onnx", "onnxscript", "onnxruntime"),
                "torch-tensorrt": ("torch_tensorrt", "onnx", "onnxruntime"),
                "onnxruntime-cuda": ("onnxruntime", "onnx", "onnxscript")}
#: rough seconds one model needs per step (the budget check before each model)
NEED_S = {"eager": 15, "compiled": 90, "batching": 20, "tensorrt": 90, "torch-tensorrt": 120,
          "onnxruntime-cuda": 30}


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
    """Runs steps within a time budget; records steps and rows, and rewrites the report after every row."""

    def __init__(self, budget_s: float, out: Path | None = None, env: dict[str, Any] | None = None):
        self.t0 = time.perf_counter()
        self.budget = budget_s
        self.steps: list[dict[str, Any]] = []
        self.failed = False
        self.out = out
        self.env = env or {}
        self._current: dict[str, Any] | None = None

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def affords(self, need_s: float) -> bool:
        return self.left() >= need_s

    def skip(self, name: str, why: str) -> None:
        print(f"SKIP {name}: {why}", flush=True)
        self.steps.append({"step": name, "status": "skipped", "why": why, "rows": []})
        self.save()

    def row(self, row: dict[str, Any]) -> None:
        """Record one measured row of the running step: printed now, written now."""
        step = self._current if self._current is not None else self._orphan()
        step["rows"].append(row)
        print("ROW  " + json.dumps(row, default=str), flush=True)
        self.save()

    def _orphan(self) -> dict[str, Any]:
        self._current = {"step": "rows", "status": "running", "rows": []}
        self.steps.append(self._current)
        return self._current

    def run(self, name: str, fn: Callable[[], Any], need_s: float = 0.0) -> Any:
        """Run ``fn`` as step ``name`` (skipped when the budget is short); an exception marks it failed and keeps
        the rows it had recorded."""
        if not self.affords(need_s):
            self.skip(name, f"time budget: {self.left():.0f} s left, the step needs about {need_s:.0f} s")
            return None
        print(f"RUN  {name}", flush=True)
        t = time.perf_counter()
        step: dict[str, Any] = {"step": name, "status": "running", "rows": []}
        self.steps.append(step)
        self._current = step
        try:
            out = fn()
        except Exception as e:  # a failed step is reported and the next ones still run
            self.failed = True
            msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            print(f"FAIL {name}: {msg} (kept {len(step['rows'])} rows)", flush=True)
            step.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(limit=6),
                        seconds=round(time.perf_counter() - t, 1))
            return None
        finally:
            self._current = None
            self.save()
        step.update(status="ok", seconds=round(time.perf_counter() - t, 1), result=out)
        print(f"OK   {name} ({time.perf_counter() - t:.1f} s)", flush=True)
        self.save()
        return out

    def report(self) -> dict[str, Any]:
        return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "environment": self.env,
                "budget_s": self.budget, "elapsed_s": round(time.perf_counter() - self.t0, 1), "steps": self.steps}

    def save(self) -> None:
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        rep = self.report()
        _write(self.out / "gpu_check.json", json.dumps(rep, indent=2, default=str))
        _write(self.out / "gpu_check.md", markdown(rep))


def _write(path: Path, text: str) -> None:
    """Temp sibling + replace: a reader never sees half a report. (Not mope_deploy.atomic: importing the package
    pulls its dependencies, and the skip-only path must run with torch, numpy and safetensors alone.)"""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], Any], warmup: int, iters: int, device: str = "cuda") -> dict[str, float]:
    """Per-call milliseconds: CUDA events around each call on a GPU (device time), a wall clock on the CPU."""
    for _ in range(warmup):
        fn()
    sync(device)
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
    """Random images and token rows whose EOT is the highest id (the id argmax pooling looks for)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    s = cfg.vision.image_size
    images = torch.randn(batch, 3, s, s, generator=g)
    n = cfg.text.context_length
    eot = cfg.text.vocab_size - 1 if cfg.text.pool == "argmax" else cfg.text.eos_id
    tokens = torch.randint(1, cfg.text.vocab_size - 1, (batch, n), generator=g)
    ends = torch.randint(5, n, (batch,), generator=g)
    tokens[torch.arange(batch), ends] = eot
    tokens = torch.where(torch.arange(n)[None] > ends[:, None], torch.zeros_like(tokens), tokens)
    return images.to(device), tokens.to(device)


def build_model(cfg, device: str, dtype: torch.dtype, seed: int):
    """A random-weight SlimCLIP built on ``device`` in ``dtype`` (one build per model and dtype)."""
    from mope_deploy.models.slim_clip import SlimCLIP

    torch.manual_seed(seed)
    with torch.device(device):
        model = SlimCLIP(cfg)
    return model.to(dtype).eval()


def _time_model(model, cfg, mode: str, batch: int, warmup: int, iters: int, device: str, dtype) -> dict[str, Any]:
    images, tokens = _inputs(cfg, batch, device)
    images = images.to(dtype)
    vis, txt = model.encode_image, model.encode_text
    t_compile = None
    if mode == "compiled":
        t = time.perf_counter()
        vis, txt = torch.compile(vis), torch.compile(txt)
        with torch.inference_mode():
            vis(images), txt(tokens)
        sync(device)
        t_compile = round(time.perf_counter() - t, 1)
    with torch.inference_mode():
        tv = time_ms(lambda: vis(images), warmup, iters, device)
        tt = time_ms(lambda: txt(tokens), warmup, iters, device)
    if mode == "compiled":
        torch._dynamo.reset()
    return {"vision_ms": tv["median_ms"], "text_ms": tt["median_ms"], "latency_ms": tv["median_ms"] + tt["median_ms"],
            "latency_min_ms": tv["min_ms"] + tt["min_ms"], "compile_s": t_compile}


def table7(batch: int, warmup: int, iters: int, modes: list[str], dtypes: list[str], check: Check,
           teacher=None, device: str = "cuda") -> dict[str, Any]:
    """Table 7 rows for every (dtype, model, mode), each recorded as measured; a model that fails is recorded
    as an error row and the next one still runs; speed-ups vs the teacher's row of the same mode and dtype."""
    from mope_deploy.bench.paper import PAPER_MODELS, paper_configs
    from mope_deploy.models.counting import model_stats

    configs = paper_configs(teacher or vit_l14_config())
    paper = {m.name: m for m in PAPER_MODELS}
    rows: list[dict[str, Any]] = []
    need = sum(NEED_S[m] for m in modes)
    for dname in dtypes:
        dtype = {"fp16": torch.float16, "fp32": torch.float32}[dname]
        for i, (name, cfg) in enumerate(configs.items()):
            if not check.affords(need):
                check.skip(f"table7 {name} {dname}", f"time budget ({check.left():.0f} s left)")
                continue
            try:
                model = build_model(cfg, device, dtype, seed=i)
            except Exception as e:  # noqa: BLE001 - recorded, the next model still runs
                check.row({"model": name, "dtype": dname, "error": f"{type(e).__name__}: {e}"})
                continue
            stats = model_stats(cfg)
            for mode in modes:
                row: dict[str, Any] = {"model": name, "mode": mode, "dtype": dname, "batch": batch,
                                       "params_m": round(stats["params"] / 1e6, 1), "gflops": stats["gflops"]}
                try:
                    row.update(_time_model(model, cfg, mode, batch, warmup, iters, device, dtype))
                except Exception as e:  # noqa: BLE001
                    row["error"] = f"{type(e).__name__}: {e}"
                t = row if name == PAPER_MODELS[0].name else next(
                    (r for r in rows if r["mode"] == mode and r["dtype"] == dname and "latency_ms" in r
                     and r["model"] == PAPER_MODELS[0].name), None)
                if t is not None and "latency_ms" in row:
                    row["speedup"] = t["latency_ms"] / row["latency_ms"]
                    row["flop_ratio"] = t["gflops"] / row["gflops"]
                pm = paper.get(name)
                row["paper_v100_ms"], row["paper_speedup"] = (pm.paper_latency_ms, pm.paper_speedup) if pm else (None,
                                                                                                                 None)
                rows.append(row)
                check.row(row)
            del model
            if device == "cuda":
                torch.cuda.empty_cache()
    return {"batch": batch, "rows": rows, "note": "random weights; latency = vision + text median (CUDA events)"}


def batching(kinds: list[str], check: Check, warmup: int, iters: int, device: str = "cuda",
             dtype: torch.dtype = torch.float16, batches: tuple[int, int] = BATCHING) -> dict[str, Any]:
    """Encoder throughput (items/s) at batch 1 vs 32 per model and tower: what cross-request batching buys on
    the GPU (the service's >= 3x criterion)."""
    rows = []
    for kind in kinds:
        if not check.affords(NEED_S["batching"]):
            check.skip(f"batching {kind}", f"time budget ({check.left():.0f} s left)")
            continue
        model = _student(kind).to(device, dtype)
        cfg = model.config
        for tower in ("vision", "text"):
            thr = {}
            for b in batches:
                images, tokens = _inputs(cfg, b, device)
                fn = (lambda x=images.to(dtype), m=model: m.encode_image(x)) if tower == "vision" else \
                    (lambda x=tokens, m=model: m.encode_text(x))
                with torch.inference_mode():
                    ms = time_ms(fn, warmup, iters, device)["median_ms"]
                thr[b] = b / (ms / 1e3)
            row = {"model": kind, "tower": tower, "dtype": str(dtype).replace("torch.", ""),
                   **{f"items_per_s_b{b}": round(v, 1) for b, v in thr.items()},
                   "batching_gain": thr[batches[1]] / thr[batches[0]]}
            row["meets_3x"] = row["batching_gain"] >= 3.0
            rows.append(row)
            check.row(row)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    return {"batches": list(batches), "rows": rows}


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


def tensorrt_step(kind: str, work: Path, batch: int, warmup: int, iters: int, device: str = "cuda",
                  check: Check | None = None) -> dict[str, Any]:
    import tensorrt as trt

    from mope_deploy.exporting.tensorrt import EngineBuild, build_engines
    from mope_deploy.exporting.tensorrt.runner import load_runner

    model = _student(kind)
    d = work / f"trt-{kind}"
    _export_fp32(model, d)
    out: dict[str, Any] = {"tensorrt": trt.__version__}
    images, tokens = _inputs(model.config, batch, device)
    for precision in ("fp32", "fp16"):
        es = build_engines(d, model, EngineBuild(precision=precision, batch_sizes=(1, min(8, batch), batch),
                                                 device=device, max_recall_drop=None))
        res: dict[str, Any] = {"precision": precision, "gates": {t: {k: e.gate[k] for k in ("min_cosine", "max_abs",
                                                                                          "passed")}
                                                               for t, e in es.engines.items()}}
        for tower, name, x in (("vision", "image", images), ("text", "tokens", tokens.int())):
            r = load_runner(trt, d / es.engines[tower].file, name, device=device)
            xp = r.prepare(x)
            res[f"{tower}_ms"] = time_ms(lambda: (r.enqueue(xp), r.synchronize()), warmup, iters, device)["median_ms"]
        out[precision] = res
        if check is not None:
            check.row({"model": kind, **res})
    return out


def torch_tensorrt_step(kind: str, work: Path, batch: int, warmup: int, iters: int, device: str = "cuda",
                        check: Check | None = None) -> dict[str, Any]:
    from mope_deploy.exporting.tensorrt import EngineBuild, compile_torch_tensorrt
    from mope_deploy.exporting.tensorrt.torch_trt import load_program

    model = _student(kind)
    d = work / f"ttrt-{kind}"
    d.mkdir(parents=True, exist_ok=True)
    es = compile_torch_tensorrt(model, d, EngineBuild(precision="fp16", batch_sizes=(1, min(8, batch), batch),
                                                      device=device, max_recall_drop=None))
    images, tokens = _inputs(model.config, batch, device)
    res: dict[str, Any] = {"version": es.version,
                           "gates": {t: {k: e.gate[k] for k in ("min_cosine", "max_abs", "passed")}
                                     for t, e in es.engines.items()}}
    for tower, x in (("vision", images), ("text", tokens.int())):
        prog = load_program(d / es.engines[tower].file, device)
        with torch.inference_mode():
            res[f"{tower}_ms"] = time_ms(lambda: prog(x), warmup, iters, device)["median_ms"]
    if check is not None:
        check.row({"model": kind, **res})
    return res


def ort_cuda_step(kind: str, work: Path, batch: int, warmup: int, iters: int,
                  check: Check | None = None) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort

    from mope_deploy.bundle import onnx_name

    model = _student(kind)
    d = work / f"ort-{kind}"
    _export_fp32(model, d)
    images, tokens = _inputs(model.config, batch, "cpu")
    res: dict[str, Any] = {"onnxruntime": ort.__version__}
    for tower, x, ref in (("vision", images, model.encode_image),
                          ("text", tokens.int(), lambda t: model.encode_text(t.long()))):
        s = ort.InferenceSession(str(d / onnx_name(tower)), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        feed = {s.get_inputs()[0].name: x.numpy()}
        got = np.asarray(s.run(None, feed)[0])
        with torch.no_grad():
            want = ref(x).numpy()
        res[tower] = {"providers": s.get_providers(), "max_abs": float(np.abs(got - want).max())}
        t = []
        for i in range(warmup + iters):
            t0 = time.perf_counter()
            s.run(None, feed)
            if i >= warmup:
                t.append((time.perf_counter() - t0) * 1e3)
        res[tower]["median_ms_host"] = sorted(t)[len(t) // 2]
        if check is not None:
            check.row({"model": kind, "tower": tower, **res[tower]})
    return res


def _importable(name: str) -> str | None:
    try:
        importlib.import_module(name)
        return None
    except Exception as e:  # ImportError, or a broken install raising something else
        return f"{name} is not importable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


def missing(step: str) -> str | None:
    """Why ``step`` cannot run here (its first missing import), or None."""
    for lib in STEP_IMPORTS[step]:
        why = _importable(lib)
        if why:
            return why
    return None


def _detail(s: dict[str, Any]) -> str:
    if s["status"] == "ok":
        return f"{s.get('seconds')} s, {len(s.get('rows', []))} rows"
    if s["status"] == "failed":
        return s.get("error", "").splitlines()[0] + f" (kept {len(s.get('rows', []))} rows)"
    return s.get("why") or s["status"]


def _rows(step: dict[str, Any]) -> list[dict[str, Any]]:
    """A step's rows as recorded (or, for a report written without them, its result's)."""
    return step.get("rows") or (step.get("result") or {}).get("rows", [])


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [f"# GPU check {report['date']}", "", f"Device: {env.get('gpu') or 'none'}; torch {env.get('torch')}, "
             f"CUDA {env.get('cuda')}", "", "| step | status | detail |", "|---|---|---|"]
    lines += [f"| {s['step']} | {s['status']} | {_detail(s)} |" for s in report["steps"]]
    t7 = [r for s in report["steps"] if s["step"] == "table7" for r in _rows(s) if "latency_ms" in r]
    if t7:
        lines += ["", "## Table 7 (random weights)", "",
                  "| model | mode | dtype | batch | vision ms | text ms | latency ms | speed-up | FLOP ratio | "
                  "paper V100 ms | paper speed-up |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in t7:
            sp = f"{r['speedup']:.2f}x" if "speedup" in r else "-"
            fr = f"{r['flop_ratio']:.2f}x" if "flop_ratio" in r else "-"
            lines.append(f"| {r['model']} | {r['mode']} | {r['dtype']} | {r['batch']} | {r['vision_ms']:.1f} | "
                         f"{r['text_ms']:.1f} | {r['latency_ms']:.1f} | {sp} | {fr} | {r['paper_v100_ms']} | "
                         f"{r['paper_speedup']}x |")
    bt = [r for s in report["steps"] if s["step"] == "batching" for r in _rows(s)]
    if bt:
        b0, b1 = BATCHING
        lines += ["", f"## Cross-request batching (items/s at batch {b0} vs {b1})", "",
                  f"| model | tower | dtype | b{b0} | b{b1} | gain | >= 3x |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['tower']} | {r['dtype']} | {r[f'items_per_s_b{b0}']} | "
                  f"{r[f'items_per_s_b{b1}']} | {r['batching_gain']:.2f}x | {r['meets_3x']} |" for r in bt]
    return "\n".join(lines) + "\n"


def environment(cuda: bool) -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cuda": torch.version.cuda, "cuda_available": cuda,
                           "gpu": torch.cuda.get_device_name(0) if cuda else None, "host": platform.node()}
    for lib in ("numpy", "safetensors", "onnx", "onnxscript", "onnxruntime", "tensorrt", "torch_tensorrt",
                "open_clip"):
        env[lib] = None if _importable(lib) else getattr(sys.modules[lib], "__version__", "?")
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="folder for gpu_check.json / gpu_check.md")
    ap.add_argument("--budget-s", type=float, default=BUDGET_S, help="start no model or step after this many seconds")
    ap.add_argument("--batch", type=int, default=PAPER_BATCH)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (minutes of compilation)")
    ap.add_argument("--dtypes", default="fp16,fp32")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder for graphs and engines")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    out = args.out or (ROOT / "benchmarks" / "results" / f"{dt.date.today()}_gpu_check" if cuda else None)
    check = Check(args.budget_s, out, environment(cuda))
    print(f"gpu_check: torch {torch.__version__}, CUDA device: {check.env['gpu'] or 'none'}, budget "
          f"{args.budget_s:.0f} s", flush=True)
    no_cuda = "no CUDA device (torch.cuda.is_available() is False)"
    modes = ["eager"] + (["compiled"] if args.compile else [])
    dtypes = [d for d in args.dtypes.split(",") if d]
    if cuda:
        check.run("table7", lambda: table7(args.batch, args.warmup, args.iters, modes, dtypes, check), need_s=30)
        check.run("batching", lambda: batching(["demo", "mope-base"], check, args.warmup, args.iters), need_s=20)
    else:
        check.skip("table7", no_cuda)
        check.skip("batching", no_cuda)
    import tempfile

    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    for step, fn in (("tensorrt", tensorrt_step), ("torch-tensorrt", torch_tensorrt_step),
                     ("onnxruntime-cuda", ort_cuda_step)):
        for kind in ("demo", "mope-base"):
            name = f"{step} {kind}"
            why = missing(step)
            if not cuda:
                why = no_cuda if why is None else f"{why}; {no_cuda}"
            if why is None and step == "onnxruntime-cuda":
                import onnxruntime as ort

                if "CUDAExecutionProvider" not in ort.get_available_providers():
                    why = f"onnxruntime has no CUDAExecutionProvider (providers: {ort.get_available_providers()})"
            if why:
                check.skip(name, why)
                continue
            check.run(name, lambda fn=fn, kind=kind: fn(kind, work, args.batch, args.warmup, args.iters, check=check),
                      need_s=NEED_S[step])
    check.save()
    if out is not None:
        print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    print(markdown(check.report()))
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
