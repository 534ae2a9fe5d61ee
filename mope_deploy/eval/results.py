"""The results file of ``mope eval --json``: its one writer, under the output policy (absent, or a results file
mope wrote; anything else needs ``--force``), written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..atomic import FileOwner, atomic_write_text, check_file_target, json_with

EVAL_RESULT_FILE = FileOwner("evaluation results file", json_with("model", "data", "task"))


def check_result_path(path: str | Path, force: bool = False) -> None:
    """Refuse a results path mope may not write, before any evaluation is spent."""
    check_file_target(path, EVAL_RESULT_FILE, force)


def write_result(path: str | Path, result: dict[str, Any], force: bool = False) -> Path:
    """Write ``result`` (metrics + ``model``, ``data``, ``task``) as JSON atomically."""
    missing = [k for k in ("model", "data", "task") if k not in result]
    if missing:
        raise ValueError(f"an evaluation result needs {missing}")
    check_result_path(path, force)
    return atomic_write_text(path, json.dumps(result, indent=2))
