"""``mope bench --paper``: the paper's Table 7 on this machine.

The teacher is ViT-L/14 and the students are MoPE-CLIP large / base / small with the shapes of Table 5
(every kept block has ``width/64`` heads and ``4*width`` FFN neurons). Latency depends only on shapes, so
all four are built with random weights. A model's latency is one batch of images plus one batch of texts
(vision + text towers at the same batch size).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..device import default_device
from ..models.config import BlockConfig, CLIPConfig
from ..models.counting import model_stats
from ..vocab import TOWERS
from .harness import BenchError

TEACHER = "ViT-L-14"
PAPER_BATCH = 64
CPU_BATCH = 8


@dataclass(frozen=True)
class PaperModel:
    """One column of Table 7 and its Table 5 shape, as fractions of the teacher (ViT-L/14: vision width
    1024 x 24 blocks, text 768 x 12), so tiny stand-in teachers get the same relative shapes."""

    name: str
    vision_width: float
    vision_depth: float
    text_width: float
    text_depth: float
    paper_params_m: float
    paper_latency_ms: float

    @property
    def paper_speedup(self) -> float:
        return round(PAPER_MODELS[0].paper_latency_ms / self.paper_latency_ms, 2)


# Table 5 (widths/depths; 512/1024, 384/1024, 384/768, 192/768, 18/24) and Table 7 (V100, batch 64, PyTorch).
PAPER_MODELS = (
    PaperModel("CLIP-ViT-L/14", 1.0, 1.0, 1.0, 1.0, 390, 141.96),
    PaperModel("MoPE-CLIP large", 0.5, 1.0, 0.5, 1.0, 194, 79.00),
    PaperModel("MoPE-CLIP base", 0.375, 0.75, 0.5, 1.0, 128, 58.73),
    PaperModel("MoPE-CLIP small", 0.375, 0.75, 0.25, 1.0, 107, 49.48),
)


def kept_blocks(depth: int, keep: int) -> list[int]:
    """``keep`` of ``depth`` block indices spread evenly, first and last included (shape-only stand-in for
    the MoPE depth choice; the pruning stage picks real ones)."""
    if not 1 <= keep <= depth:
        raise BenchError(f"cannot keep {keep} of {depth} blocks")
    if keep == 1:
        return [depth - 1]
    return sorted({round(i * (depth - 1) / (keep - 1)) for i in range(keep)})


def _shrink(tower, width_frac: float, depth_frac: float, where: str):
    t = copy.deepcopy(tower)
    h = t.head_dim
    full_heads = max(b.heads for b in t.blocks)
    heads = round(full_heads * width_frac)
    if heads < 1 or abs(heads * h - full_heads * h * width_frac) > 1e-6:
        raise BenchError(f"{where}: width fraction {width_frac} of {full_heads} heads is not a whole number of heads")
    keep = round(t.depth * depth_frac)
    if abs(keep - t.depth * depth_frac) > 1e-6:
        raise BenchError(f"{where}: depth fraction {depth_frac} of {t.depth} blocks is not a whole number of blocks")
    # the paper's students keep FFN = 4 x attention width in every block
    t.blocks = [BlockConfig(heads=heads, mlp=4 * heads * h, source=s) for s in kept_blocks(t.depth, keep)]
    return t


def student_config(teacher: CLIPConfig, spec: PaperModel) -> CLIPConfig:
    """A student architecture of ``teacher`` with ``spec``'s width and depth fractions (Table 5 shapes)."""
    if spec.vision_width == spec.vision_depth == spec.text_width == spec.text_depth == 1.0:
        return copy.deepcopy(teacher)
    cfg = copy.deepcopy(teacher)
    cfg.vision = _shrink(teacher.vision, spec.vision_width, spec.vision_depth, f"{spec.name} vision")
    cfg.text = _shrink(teacher.text, spec.text_width, spec.text_depth, f"{spec.name} text")
    cfg.provenance = {**teacher.provenance, "source": "paper-shape", "paper_model": spec.name}
    return cfg.validate()


def paper_configs(teacher: CLIPConfig) -> dict[str, CLIPConfig]:
    """``{model name: config}`` for the teacher and the three MoPE-CLIP students."""
    return {m.name: student_config(teacher, m) for m in PAPER_MODELS}


def default_batch(device: str) -> int:
    """The paper's batch 64 on a GPU; 8 on a CPU (batch 64 of ViT-L/14 takes minutes per call there)."""
    return PAPER_BATCH if device.startswith("cuda") else CPU_BATCH


def paper_table(results: Sequence[dict[str, Any]], configs: dict[str, CLIPConfig], backend: str, batch: int,
                reference_ms: float | None = None) -> list[dict[str, Any]]:
    """Table 7 rows for one backend from benchmark rows (model latency = vision + text median).

    ``speedup`` and ``flop_ratio`` are relative to the first model (the teacher); ``efficiency`` is their
    ratio (1.0: the speed-up structured pruning promises); ``speedup_min`` uses each tower's fastest call.
    ``reference_ms`` (the teacher in open_clip eager)
    adds ``speedup_vs_reference``.
    """
    names = list(configs)
    lat: dict[str, float] = {}
    lat_min: dict[str, float] = {}
    for name in names:
        rows = [r for r in results if r["model"] == name and r["backend"] == backend and r["batch"] == batch]
        towers = {r["tower"] for r in rows}
        if towers != set(TOWERS) or len(rows) != 2:
            raise BenchError(f"paper table needs vision and text timings of {name!r} on {backend} at batch {batch}; "
                             f"found {sorted(towers)}")
        lat[name] = sum(r["median_ms"] for r in rows)
        lat_min[name] = sum(r.get("min_ms", r["median_ms"]) for r in rows)
    stats = {n: model_stats(c) for n, c in configs.items()}
    t_name = names[0]
    out = []
    paper = {m.name: m for m in PAPER_MODELS}
    for name in names:
        s, pm = stats[name], paper.get(name)
        speedup = lat[t_name] / lat[name]
        flop_ratio = stats[t_name]["gflops"] / s["gflops"]
        row = {
            "model": name, "params": s["params"], "params_m": round(s["params"] / 1e6, 1),
            "vision_params_m": round(s["vision"]["params"] / 1e6, 1), "text_params_m": round(s["text"]["params"] / 1e6, 1),
            "gflops": s["gflops"], "latency_ms": lat[name], "speedup": speedup, "flop_ratio": flop_ratio,
            "efficiency": speedup / flop_ratio,
            # contention on a shared machine only ever adds time, so the fastest call is the steadier estimate
            "latency_min_ms": lat_min[name], "speedup_min": lat_min[t_name] / lat_min[name],
            "paper_params_m": pm.paper_params_m if pm else None,
            "paper_latency_ms": pm.paper_latency_ms if pm else None,
            "paper_speedup": (pm.paper_speedup if pm and name != t_name else 1.0) if pm else None,
            "backend": backend, "batch": batch,
        }
        if reference_ms is not None:
            row["speedup_vs_reference"] = reference_ms / lat[name]
        out.append(row)
    return out


def run_paper(backends: Sequence[str] = ("torch",), settings: Any = None, *, teacher: CLIPConfig | str = TEACHER,
              reference: str | None = None, on_step: Callable[[str], None] | None = None,
              on_iter: Callable[[], None] | None = None, seed: int = 0) -> dict[str, Any]:
    """Build the four Table 7 architectures from ``teacher`` (random weights), benchmark them on every
    backend at one batch size, and return the bench report plus ``paper_table``.

    ``settings``: a :class:`~.run.BenchSettings` (default: warm-up 1, 5 timed calls, one batch: 64 on a GPU, 8 on
    a CPU, interleaved). ``reference="open_clip"`` also times the teacher in open_clip eager (only for an open_clip
    name). Interleaving (the default) keeps every model open and times them round-robin, so machine load hits all
    alike; it needs memory for all of them at once (about 5 GB for ViT-L/14 shapes in torch).
    """
    from ..models import load_config
    from ..models.registry import resolve
    from .run import BenchSettings, run_bench

    if reference is not None and (reference != "open_clip" or not isinstance(teacher, str)
                                  or resolve(teacher) is not None):
        raise BenchError("reference takes 'open_clip' and needs the teacher as an open_clip name (e.g. ViT-L-14)")
    s = settings or BenchSettings(warmup=1, iters=5)
    dev = s.device or default_device()
    batch = (s.batch_sizes or [default_batch(dev)])[0]
    s = s.replace(device=dev, batch_sizes=[batch], interleave=True if s.interleave is None else s.interleave)
    teacher_cfg = load_config(teacher) if isinstance(teacher, str) else teacher
    configs = paper_configs(teacher_cfg)
    # built one at a time inside run_bench: four ViT-L-sized models at once do not fit a small machine
    models = [_factory(cfg, seed + i) for i, cfg in enumerate(configs.values())]
    ref_label = f"{teacher} (open_clip eager)" if reference else None
    report = run_bench(models, backends, s, labels=list(configs), on_step=on_step, on_iter=on_iter,
                       extra_runs=[(teacher, ref_label, "open_clip")] if reference else ())
    del models
    ref_ms = None
    if reference:
        ref_ms = sum(r["median_ms"] for r in report["results"] if r["model"] == ref_label)
        report["reference"] = {"backend": "open_clip", "model": teacher, "label": ref_label, "batch": batch,
                               "latency_ms": ref_ms}
    report["paper_table"] = [r for b in backends for r in paper_table(report["results"], configs, b, batch, ref_ms)]
    report["paper"] = {"batch": batch, "paper_batch": PAPER_BATCH, "paper_device": "NVIDIA V100, PyTorch, batch 64",
                       "backend": backends[0] if len(backends) == 1 else None, "backends": list(backends),
                       "device": dev, "teacher": teacher if isinstance(teacher, str) else "custom",
                       "note": (f"CPU run: batch {batch} instead of the paper's {PAPER_BATCH}" if batch != PAPER_BATCH
                                else "batch as in the paper"),
                       "latency": "vision + text median at the same batch (random weights; shapes of Table 5)",
                       "interleaved": s.interleave}
    return report


def _factory(cfg: CLIPConfig, seed: int) -> Callable[[], Any]:
    def build():
        import torch

        from ..models.slim_clip import SlimCLIP

        torch.manual_seed(seed)
        return SlimCLIP(cfg).eval()

    return build


def paper_markdown(report: dict[str, Any]) -> str:
    """The ``paper_table`` of a report as a Markdown table (for READMEs and result notes)."""
    ref = "reference" in report
    head = ["model", "backend", "batch", "params (M)", "GFLOPs", "latency (ms)", "speed-up", "FLOP ratio",
            "speed-up / FLOP ratio", "paper V100 b64 (ms)", "paper speed-up"] + (["vs open_clip eager"] if ref else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["paper_table"]:
        cells = [r["model"], r["backend"], str(r["batch"]), f"{r['params_m']:.0f}", f"{r['gflops']:.1f}",
                 f"{r['latency_ms']:.0f}", f"{r['speedup']:.2f}x", f"{r['flop_ratio']:.2f}x", f"{r['efficiency']:.2f}",
                 f"{r['paper_latency_ms']:.2f}", f"{r['paper_speedup']:.2f}x"]
        if ref:
            cells.append(f"{r['speedup_vs_reference']:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
