"""Writing model files: ``config.json`` (architecture + what travels with it) and ``model.safetensors``, as one
unit (:mod:`.io` reads them). This module never builds a SlimCLIP, so the model class can offer ``save`` without an
import cycle."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from ..atomic import Owner, atomic_dir, atomic_file, atomic_path, check_target
from ..errors import MopeError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class ModelFileError(MopeError, ValueError):
    """A model directory that is missing, corrupt, or whose weights do not fit its config."""


def model_dir_owner(extra_files=()) -> Owner:
    """What a model directory written by :func:`save_model` looks like (the ownership rule of ``atomic_dir``)."""
    return Owner("model directory", markers=[(CONFIG_FILE, WEIGHTS_FILE)],
                 allowed=(CONFIG_FILE, WEIGHTS_FILE, "plan.json", *extra_files))


def save_model(model: Any, directory: str | Path, extra_files: dict[str, str | bytes] | None = None,
               force: bool = False) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (plus ``extra_files``) into ``directory`` atomically.

    ``directory`` may be absent, empty or a model directory written before (then replaced whole); anything
    else is refused (:class:`~mope_deploy.atomic.OutputPathError`) unless ``force``."""
    directory = Path(directory)
    owner = model_dir_owner(extra_files or ())
    check_target(directory, owner, force)  # before the weights are copied to the CPU
    with atomic_dir(directory, owner=owner, force=force) as tmp:
        _write_pair(model, tmp)
        for name, content in (extra_files or {}).items():
            (tmp / name).write_bytes(content.encode() if isinstance(content, str) else content)
    return directory


def replace_model_files(model: Any, directory: str | Path) -> Path:
    """Replace ``config.json`` + ``model.safetensors`` inside a folder the caller owns (e.g. a compress run) as
    one unit: each file is written atomically, and the weights record the sha256 of the config text they were
    written with, so a reader never uses a half-replaced pair (:func:`load_model` refuses it, naming both)."""
    directory = Path(directory)
    _write_pair(model, directory)
    return directory


def _write_pair(model: Any, directory: Path) -> None:
    text = json.dumps(model.config.to_dict(), indent=2)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": "pt", "arch_hash": model.config.arch_hash(), "config_sha256": _sha256_text(text)}
    with atomic_path(directory / WEIGHTS_FILE) as tmp:   # replaced last: weights name the config they belong to
        save_file(state, str(tmp), metadata=meta)        # streamed to disk: no second copy of the weights in memory
        del state
        with atomic_file(directory / CONFIG_FILE, "w") as fc:
            fc.write(text)


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_pair(directory: Path, metadata: dict[str, str] | None) -> None:
    """Refuse a config.json that is not the one the weights were saved with (a write interrupted between the
    two files, or a config edited by hand). Model files written before this check existed carry no hash."""
    want = (metadata or {}).get("config_sha256")
    if want is None:
        return
    have = _sha256_text((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    if have != want:
        raise ModelFileError(f"{directory / CONFIG_FILE} is not the config {directory / WEIGHTS_FILE} was saved with "
                             "(a write interrupted between the two files, or config.json edited by hand); rerun the "
                             "command that wrote them (mope compress resumes and rewrites both)")


