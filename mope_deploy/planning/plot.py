"""The shapes that meet a budget as a PNG: kept parameters vs predicted latency, the budget as a line."""

from __future__ import annotations

from pathlib import Path

from ..bench.plot import check_plot_path, save_png
from .planner import PlanResult

#: most points drawn (a both-tower plan of ViT-L/14 has ~55k pairs; the best ones are drawn)
MAX_POINTS = 5000


def plot_plan(result: PlanResult, path: str | Path, force: bool = False) -> Path:
    """Write the plot to ``path`` (PNG, atomically; absent or a plot mope wrote, unless ``force``)."""
    path = check_plot_path(path, force)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = result.candidates[:MAX_POINTS]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter([c.params / 1e6 for c in shown], [c.total_ms for c in shown], s=6, alpha=0.5, label="meets the budget")
    best = result.best
    ax.scatter([best.params / 1e6], [best.total_ms], s=60, marker="*", color="C3",
               label=f"best: {best.describe(result.config)}")
    ax.axhline(result.budget_ms, color="C1", linestyle="--", label=f"budget {result.budget_ms:.1f} ms")
    s = result.request.settings
    ax.set_xlabel("kept block parameters (M)")
    ax.set_ylabel(f"predicted latency per batch of {s.batch} (ms)")
    ax.set_title(f"{result.to_dict(top=0)['teacher']} on {s.backend}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_png(fig, path, force)


__all__ = ["plot_plan"]
