"""Model files: ``config.json`` (architecture + what travels with it) and ``model.safetensors``.

Saving is atomic (a temporary sibling directory renamed into place); loading never unpickles and
checks every tensor against the config before anything is used.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import CLIPConfig, ConfigError
from .slim_clip import SlimCLIP

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class ModelFileError(ValueError):
    """A model directory that is missing, corrupt, or whose weights do not fit its config."""


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_dir(target: str | Path) -> "_AtomicDir":
    """Context manager yielding a temp dir that replaces ``target`` only if the block succeeds."""
    return _AtomicDir(Path(target))


class _AtomicDir:
    def __init__(self, target: Path):
        self.target = target

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.tmp-", dir=self.target.parent))
        return self.tmp

    def _publish_permissions(self) -> None:
        # mkdtemp makes 0700 dirs (and some writers 0600 files); the result should look like any other output
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)
        for p in self.tmp.rglob("*"):
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        self._publish_permissions()
        old = None
        if self.target.exists():
            old = self.target.with_name(f".{self.target.name}.old-{os.getpid()}")
            os.replace(self.target, old)
        os.replace(self.tmp, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def save_model(model: SlimCLIP, directory: str | Path, extra_files: dict[str, str | bytes] | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (plus ``extra_files``) into ``directory`` atomically."""
    directory = Path(directory)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_dir(directory) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "arch_hash": model.config.arch_hash()})
        _fsync_write(tmp / CONFIG_FILE, json.dumps(model.config.to_dict(), indent=2).encode())
        for name, content in (extra_files or {}).items():
            _fsync_write(tmp / name, content.encode() if isinstance(content, str) else content)
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
