"""Reading model files (``config.json`` + ``model.safetensors``; writing them is :mod:`.files`): loading never
unpickles and checks every tensor against the config before anything is used."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .config import CLIPConfig, ConfigError
from .files import (CONFIG_FILE, WEIGHTS_FILE, ModelFileError, check_pair, model_dir_owner, replace_model_files,
                    save_model)
from .slim_clip import SlimCLIP

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "FLOAT_DTYPES", "ModelFileError", "check_pair", "check_weights",
           "expected_tensors", "load_model", "model_dir_owner", "read_config", "replace_model_files", "save_model"]

# safetensors dtype names a float parameter may be stored in (loading casts them to the model's dtype)
FLOAT_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


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
            check_pair(directory, f.metadata())
            state = {k: f.get_tensor(k) for k in expected}
    except (SafetensorError, OSError) as e:
        raise ModelFileError(f"{wpath} is corrupt or truncated ({e}); re-save or re-export the model") from None
    model = SlimCLIP(config, init=False)  # allocated only now that the file is known to fit the config
    dtypes = {v.dtype for v in state.values()}
    if len(dtypes) == 1:
        model = model.to(dtype=dtypes.pop())
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
