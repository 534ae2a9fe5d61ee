"""Latency vs parameters, one line per backend (one panel per batch size), as a PNG."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from ..atomic import FileOwner, atomic_file, check_file_target
from .harness import BenchError


#: a PNG this toolchain wrote (save_png tags it), under the output policy
PLOT_FILE = FileOwner("mope plot (PNG)", lambda data: data.startswith(b"\x89PNG") and b"mope-deploy" in data[:4096],
                      max_bytes=16 << 20)


def model_points(results: Sequence[dict[str, Any]]) -> dict[tuple[int, str], list[tuple[float, float, str]]]:
    """``{(batch, backend): [(params, latency_ms, model), ...]}`` sorted by params; a model's latency and
    params are summed over the towers measured."""
    acc: dict[tuple[int, str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for r in results:
        a = acc[(r["batch"], r["backend"], r["model"])]
        a[0] += r["params"]
        a[1] += r["median_ms"]
    out: dict[tuple[int, str], list[tuple[float, float, str]]] = defaultdict(list)
    for (batch, backend, model), (params, ms) in acc.items():
        out[(batch, backend)].append((params, ms, model))
    return {k: sorted(v) for k, v in out.items()}


def check_plot_path(path: str | Path, force: bool = False) -> Path:
    """``path`` ends in .png and is absent or a plot mope wrote (any file with ``force``): checked before work."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise BenchError(f"--plot writes a PNG: give a file name ending in .png, got {path.name!r}")
    check_file_target(path, PLOT_FILE, force)
    return path


def plot_latency(report: dict[str, Any], path: str | Path, title: str | None = None, force: bool = False) -> Path:
    """Write the plot to ``path`` (PNG, written atomically; see :func:`save_png`)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = check_plot_path(path, force)
    points = model_points(report["results"])
    if not points:
        raise BenchError("nothing to plot: the report has no results")
    batches = sorted({b for b, _ in points})
    fig, axes = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 4.2), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        for (b, backend), pts in sorted(points.items()):
            if b != batch:
                continue
            xs, ys = [p[0] / 1e6 for p in pts], [p[1] for p in pts]
            ax.plot(xs, ys, marker="o", label=backend)
            for x, y, name in pts:
                ax.annotate(name, (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3))
        ax.set_xlabel("parameters (M, transformer blocks)")
        ax.set_ylabel("latency (ms, median)")
        ax.set_title(f"batch {batch}")
        ax.grid(alpha=0.3)
        ax.legend()
    env = report.get("environment", {})
    fig.suptitle(title or f"{env.get('gpu') or env.get('cpu', '')} ({env.get('device', '')})", fontsize=9)
    return save_png(fig, path, force)


def save_png(fig, path: str | Path, force: bool = False) -> Path:
    """Write a matplotlib figure as PNG atomically and close it (every plot of the toolchain goes through here):
    ``path`` must be absent or a plot mope wrote, unless ``force``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        check_file_target(path, PLOT_FILE, force)
        with atomic_file(path) as f:
            fig.savefig(f, dpi=120, format="png", metadata={"Software": "mope-deploy"})
    finally:
        plt.close(fig)
    return Path(path)
