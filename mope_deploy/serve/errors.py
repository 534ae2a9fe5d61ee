"""The serve package's user-facing error (the CLI prints it as one line)."""

from __future__ import annotations

from ..errors import MopeError


class ServeError(MopeError, ValueError):
    """Settings, files or optional libraries that indexing or serving cannot use (names the problem and the fix)."""
