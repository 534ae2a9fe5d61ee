"""One ``mope bench`` request as a checked value: what to time (models, or the paper's Table 7 shapes), how, and
how many timed steps it will take (the progress total), so the CLI only parses, calls :func:`run_request` and
prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..vocab import TOWERS
from .harness import BenchError
from .paper import PAPER_MODELS, default_batch


@dataclass(frozen=True)
class BenchRequest:
    """``models`` (specs, bundles, SlimCLIPs) or ``paper`` (the Table 7 shapes cut from ``teacher``, with an
    optional open_clip ``reference``); ``batch_sizes`` None = the defaults (1,8; --paper: 64 on a GPU, 8 on a
    CPU); ``interleave`` None = the default (round-robin for --paper, sequential otherwise)."""

    models: Sequence[Any] = ()
    backends: Sequence[str] = ("torch",)
    batch_sizes: Sequence[int] | None = None
    warmup: int = 3
    iters: int = 10
    threads: int | None = None
    device: str | None = None
    ort_settings: Any = field(default=None, compare=False)
    paper: bool = False
    teacher: str = "ViT-L-14"
    reference: str | None = None
    interleave: bool | None = None

    def check(self) -> "BenchRequest":
        """Refuse contradictory settings (a :class:`BenchError` naming the fix) before any work."""
        from ..runtime.registry import check_backends

        check_backends(list(self.backends))
        if self.paper and self.models:
            raise BenchError("--paper builds its own models: drop the MODEL arguments (or drop --paper)")
        if self.reference and not self.paper:
            raise BenchError("--reference only applies with --paper")
        if self.paper and self.batch_sizes and len(self.batch_sizes) != 1:
            raise BenchError("--paper runs one batch size: give one value to --batch-sizes")
        if not self.paper and not self.models:
            raise BenchError("no MODEL given: pass one or more models (demo, a model directory, an open_clip name, "
                             "an export bundle) or use --paper")
        return self

    def resolved_device(self) -> str:
        from ..device import default_device

        return self.device or default_device()

    def sizes(self) -> list[int]:
        if self.batch_sizes:
            return list(self.batch_sizes)
        return [default_batch(self.resolved_device())] if self.paper else [1, 8]

    def notice(self) -> str | None:
        """What the user should know before a long run (a CPU paper run at a smaller batch than the paper's)."""
        batch = self.sizes()[0]
        if self.paper and not self.batch_sizes and batch != 64:
            return (f"CPU run: batch {batch} instead of the paper's 64 (pass --batch-sizes 64 to match it; ViT-L/14 "
                    "at 64 takes minutes per call on a CPU)")
        return None

    def total_steps(self) -> int:
        """Timed and warm-up calls the run makes (one progress tick each)."""
        per_encoder = len(TOWERS) * (self.warmup + self.iters) * len(self.sizes())
        if self.paper:
            return (len(PAPER_MODELS) * len(self.backends) + (1 if self.reference else 0)) * per_encoder
        return len(self.models) * len(self.backends) * per_encoder


def run_request(request: BenchRequest, on_step: Callable[[str], None] | None = None,
                on_iter: Callable[[], None] | None = None) -> dict[str, Any]:
    """Check ``request`` and run it: :func:`~.paper.run_paper` or :func:`~.run.run_bench`; returns the report."""
    from .paper import run_paper
    from .run import run_bench

    r = request.check()
    if r.paper:
        return run_paper(list(r.backends), r.sizes()[0], warmup=r.warmup, iters=r.iters, threads=r.threads,
                         device=r.resolved_device(), teacher=r.teacher, reference=r.reference, on_step=on_step,
                         on_iter=on_iter, interleave=True if r.interleave is None else r.interleave)
    return run_bench(list(r.models), list(r.backends), r.sizes(), warmup=r.warmup, iters=r.iters, threads=r.threads,
                     device=r.device, on_step=on_step, on_iter=on_iter, interleave=bool(r.interleave),
                     ort_settings=r.ort_settings)


__all__ = ["BenchRequest", "run_request"]
