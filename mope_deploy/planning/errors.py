"""The planner's one error type."""

from __future__ import annotations

from ..errors import MopeError


class PlanningError(MopeError, ValueError):
    """A latency budget or planning request that cannot be met or run (names the problem and the fix)."""


__all__ = ["PlanningError"]
