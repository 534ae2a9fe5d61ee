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

from ..atomic import Owner, atomic_dir, check_target
from ..errors import MopeError
from .config import CLIPConfig, ConfigError
from .slim_clip import SlimCLIP

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# safetensors dtype names a float parameter may be stored in (loading casts them to the model's dtype)
FLOAT_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


class ModelFileError(MopeError, ValueError):
    """A model directory that is missing, corrupt, or whose weights do not fit its config."""


def model_dir_owner(extra_files=()) -> Owner:
    """What a model directory written by :func:`save_model` looks like (the ownership rule of ``atomic_dir``)."""
    return Owner("model directory", markers=[(CONFIG_FILE, WEIGHTS_FILE)],
                 allowed=(CONFIG_FILE, WEIGHTS_FILE, "plan.json", *extra_files))


def save_model(model: SlimCLIP, directory: str | Path, extra_files: dict[str, str | bytes] | None = None,
               force: bool = False) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (plus ``extra_files``) into ``directory`` atomically.

    ``directory`` may be absent, empty or a model directory written before (then replaced whole); anything
    else is refused (:class:`~mope_deploy.atomic.OutputPathError`) unless ``force``."""
    directory = Path(directory)
    owner = model_dir_owner(extra_files or ())
    check_target(directory, owner, force)  # before the weights are copied to the CPU
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_dir(directory, owner=owner, force=force) as tmp:
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
        return CLIPConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError, ConfigError, TypeError, ValueError) as e:
        raise ModelFileError(f"{path}: not a valid model config: {e}") from None
    except RecursionError:
        raise ModelFileError(f"{path}: not a valid model config (nested too deeply)") from None


def expected_tensors(config: CLIPConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of every tensor the model ``config`` describes, built on the meta device
    (no memory is allocated, whatever the config says)."""
    with torch.device("meta"):
        model = SlimCLIP(config, init=False)
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


def check_weights(path: Path, f, expected: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> None:
    """Compare the safetensors header (names, shapes, dtypes) with ``expected`` before any tensor is read."""
    keys = set(f.keys())
    for name, (shape, dtype) in expected.items():
        if name not in keys:
            raise ModelFileError(f"{path}: tensor {name!r} missing (config expects shape {shape})")
        sl = f.get_slice(name)
        have = tuple(sl.get_shape())
        if have != shape:
            raise ModelFileError(f"{path}: tensor {name!r} has shape {have} but {CONFIG_FILE} implies {shape}; the "
                                 "weights do not belong to this config")
        stored = sl.get_dtype()
        if dtype.is_floating_point and stored not in FLOAT_DTYPES:
            raise ModelFileError(f"{path}: tensor {name!r} is stored as {stored}, which the model cannot hold; its "
                                 f"weights must be floating point ({', '.join(FLOAT_DTYPES)}) (quantised or "
                                 "integer weights are not a SlimCLIP model file)")
    extra = sorted(keys - set(expected))
    if extra:
        raise ModelFileError(f"{path}: tensor {extra[0]!r} is not part of the model in {CONFIG_FILE}")


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> SlimCLIP:
    """Read a model directory back bit-exactly (weights keep their saved dtype)."""
    directory = Path(directory)
    config = read_config(directory)
    wpath = directory / WEIGHTS_FILE
    if not wpath.is_file():
        raise ModelFileError(f"{wpath} not found")
    expected = expected_tensors(config)
    try:
        with safe_open(str(wpath), framework="pt", device=str(device)) as f:
            check_weights(wpath, f, expected)
            state = {k: f.get_tensor(k) for k in expected}
    except (SafetensorError, OSError) as e:
        raise ModelFileError(f"{wpath} is corrupt or truncated ({e}); re-save or re-export the model") from None
    model = SlimCLIP(config, init=False)  # allocated only now that the file is known to fit the config
    dtypes = {v.dtype for v in state.values()}
    if len(dtypes) == 1:
        model = model.to(dtype=dtypes.pop())
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
