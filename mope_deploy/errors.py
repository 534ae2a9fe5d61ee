"""``MopeError``: the base of every error this library raises on purpose (bad input, refused work).

The CLI prints a ``MopeError`` as one red line (exit 2) and lets anything else - an internal invariant, CUDA
out of memory, a bug - surface with its traceback. A domain error subclasses ``MopeError`` and, where callers
catch it by its builtin kind, that builtin too::

    class PlanError(MopeError, ValueError):
        \"\"\"A target that cannot be met.\"\"\"
"""

from __future__ import annotations


class MopeError(Exception):
    """An expected failure whose message names the problem and the fix."""


__all__ = ["MopeError"]
