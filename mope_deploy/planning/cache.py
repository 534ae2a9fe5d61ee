"""Measured cost models on disk, one JSON file per (teacher architecture, backend, batch, tower, machine), so a
second plan of the same teacher on the same machine is instant. Written atomically; a file that does not parse
(or was written by another version) is ignored and measured again, never trusted."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..models.identity import json_hash

#: overrides the default cache folder (``--cache-dir`` overrides both)
ENV = "MOPE_PLAN_CACHE"
DEFAULT = Path("~/.cache/mope-deploy/plans")
VERSION = 1


def cache_dir(override: str | Path | None = None) -> Path:
    """``override``, else ``$MOPE_PLAN_CACHE``, else ``~/.cache/mope-deploy/plans``."""
    return Path(override or os.environ.get(ENV) or DEFAULT).expanduser()


def cache_path(folder: Path, key: dict[str, Any]) -> Path:
    """The file for ``key`` (a plain dict naming everything a measurement depends on)."""
    return folder / f"{key.get('tower', 'plan')}-{key.get('backend', '')}-b{key.get('batch', '')}-{json_hash(key)}.json"


def load(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The cached entry for ``key``, or None when absent, unreadable or recorded for another key."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != VERSION or data.get("key") != key:
        return None
    return data


def save(path: Path, key: dict[str, Any], entry: dict[str, Any]) -> Path:
    return atomic_write_text(path, json.dumps({"version": VERSION, "key": key, **entry}, indent=1))


__all__ = ["DEFAULT", "ENV", "cache_dir", "cache_path", "load", "save"]
