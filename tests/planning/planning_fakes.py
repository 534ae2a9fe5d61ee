"""A deterministic stand-in for the planner's timing step (fast tests of everything around it)."""

from __future__ import annotations

from mope_deploy.planning.shapes import max_heads

#: ms = A + depth * (B + C * heads / max_heads), per tower
FORMULA = {"vision": (2.0, 1.0, 3.0), "text": (1.0, 0.5, 1.0)}


def formula_ms(config, tower: str, heads: int, depth: int) -> float:
    a, b, c = FORMULA[tower]
    return a + depth * (b + c * heads / max_heads(config, tower))


class FakeTimer:
    """Replaces :func:`mope_deploy.planning.planner.measure`: latencies from :data:`FORMULA`, calls counted."""

    def __init__(self):
        self.calls = 0
        self.fail = False

    def __call__(self, config, samples, settings):
        if self.fail:
            raise AssertionError("timed again: the cost model should have come from the cache")
        self.calls += 1
        return [{t: formula_ms(config, t, s.heads, s.depth) for t, s in shapes.items()} for shapes in samples]
