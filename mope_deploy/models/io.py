"""Model files: ``config.json`` (architecture + what travels with it) and ``model.safetensors``.

Saving is atomic (a temporary sibling directory renamed into place); loading never unpickles and
checks every tensor against the config before anything is used.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..atomic import atomic_dir
from .config import CLIPConfig, ConfigError
from .slim_clip import SlimCLIP

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class ModelFileError(ValueError):
    """A model directory that is missing, corrupt, or whose weights do not fit its config."""


def save_model(model: SlimCLIP, directory: str | Path, extra_files: dict[str, str | bytes] | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (plus ``extra_files``) into ``directory`` atomically."""
    directory = Path(directory)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_dir(directory) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "arch_hash": model.config.arch_hash()})
        (tmp / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2))
        for name, content in (extra_files or {}).items():
            (tmp / name).write_bytes(content.encode() if isinstance(content, str) else content)
    return directory


def read_config(directory: str | Path) -> CLIPConfig:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ModelFileError(f"{path} not found: a model directory holds {CONFIG_FILE} and {WEIGHTS_FILE} "
                             "(written by SlimCLIP.save / mope prune / mope compress)")
    try:
        return CLIPConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, ConfigError, TypeError) as e:
        raise ModelFileError(f"{path}: not a valid model config: {e}") from None


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> SlimCLIP:
    """Read a model directory back bit-exactly (weights keep their saved dtype)."""
    directory = Path(directory)
    config = read_config(directory)
    wpath = directory / WEIGHTS_FILE
    if not wpath.is_file():
        raise ModelFileError(f"{wpath} not found")
    model = SlimCLIP(config, init=False)
    expected = model.state_dict()
    try:
        with safe_open(str(wpath), framework="pt", device=str(device)) as f:
            keys = set(f.keys())
            for name, ref in expected.items():
                if name not in keys:
                    raise ModelFileError(f"{wpath}: tensor {name!r} missing (config expects shape {tuple(ref.shape)})")
                shape = tuple(f.get_slice(name).get_shape())
                if shape != tuple(ref.shape):
                    raise ModelFileError(f"{wpath}: tensor {name!r} has shape {shape} but {CONFIG_FILE} implies "
                                         f"{tuple(ref.shape)}; the weights do not belong to this config")
            extra = sorted(keys - set(expected))
            if extra:
                raise ModelFileError(f"{wpath}: tensor {extra[0]!r} is not part of the model in {CONFIG_FILE}")
            state = {k: f.get_tensor(k) for k in expected}
    except SafetensorError as e:
        raise ModelFileError(f"{wpath} is corrupt or truncated ({e}); re-save or re-export the model") from None
    dtypes = {v.dtype for v in state.values()}
    if len(dtypes) == 1:
        model = model.to(dtype=dtypes.pop())
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
