"""One ``mope bench`` request as a checked value: what to time (models, or the paper's Table 7 shapes), how, and
how many timed steps it will take (the progress total), so the CLI only parses, calls :func:`run_request` and
prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .harness import BenchError
from .paper import PAPER_BATCH, PAPER_MODELS, default_batch
from .run import BenchSettings


@dataclass(frozen=True)
class BenchRequest:
    """``models`` (specs, bundles, SlimCLIPs) or ``paper`` (the Table 7 shapes cut from ``teacher``, with an
    optional open_clip ``reference``), on ``backends``, timed as ``settings`` says."""

    models: Sequence[Any] = ()
    backends: Sequence[str] = ("torch",)
    settings: BenchSettings = field(default_factory=BenchSettings)
    paper: bool = False
    teacher: str = "ViT-L-14"
    reference: str | None = None

    def check(self) -> "BenchRequest":
        """Refuse contradictory settings (a :class:`BenchError` naming the fix) before any work."""
        from ..runtime.registry import check_backends

        check_backends(list(self.backends))
        if self.paper and self.models:
            raise BenchError("--paper builds its own models: drop the MODEL arguments (or drop --paper)")
        if self.reference and not self.paper:
            raise BenchError("--reference only applies with --paper")
        if self.paper and self.settings.batch_sizes and len(self.settings.batch_sizes) != 1:
            raise BenchError("--paper runs one batch size: give one value to --batch-sizes")
        if not self.paper and not self.models:
            raise BenchError("no MODEL given: pass one or more models (demo, a model directory, an open_clip name, "
                             "an export bundle) or use --paper")
        return self

    def sizes(self) -> list[int]:
        if self.settings.batch_sizes:
            return list(self.settings.batch_sizes)
        if not self.paper:
            return [1, 8]
        from ..device import default_device

        return [default_batch(self.settings.device or default_device())]

    def notice(self) -> str | None:
        """What the user should know before a long run (a CPU paper run at a smaller batch than the paper's)."""
        batch = self.sizes()[0]
        if self.paper and not self.settings.batch_sizes and batch != PAPER_BATCH:
            return (f"CPU run: batch {batch} instead of the paper's {PAPER_BATCH} (pass --batch-sizes {PAPER_BATCH} "
                    "to match it; ViT-L/14 at 64 takes minutes per call on a CPU)")
        return None

    def total_steps(self) -> int:
        """Timed and warm-up calls the run makes (one progress tick each)."""
        s = self.settings
        per_encoder = len(s.towers) * (s.warmup + s.iters) * len(self.sizes())
        if self.paper:
            return (len(PAPER_MODELS) * len(self.backends) + (1 if self.reference else 0)) * per_encoder
        return len(self.models) * len(self.backends) * per_encoder


def run_request(request: BenchRequest, on_step: Callable[[str], None] | None = None,
                on_iter: Callable[[], None] | None = None) -> dict[str, Any]:
    """Check ``request`` and run it: :func:`~.paper.run_paper` or :func:`~.run.run_bench`; returns the report."""
    from .paper import run_paper
    from .run import run_bench

    r = request.check()
    s = r.settings.replace(batch_sizes=r.sizes())
    if r.paper:
        return run_paper(list(r.backends), s, teacher=r.teacher, reference=r.reference, on_step=on_step,
                         on_iter=on_iter)
    return run_bench(list(r.models), list(r.backends), s, on_step=on_step, on_iter=on_iter)


__all__ = ["BenchRequest", "run_request"]
