"""A stand-in for the ``tensorrt`` module's runtime side (TensorRT 10 API: Runtime.deserialize_cuda_engine,
named I/O tensors, optimisation profiles, set_input_shape, set_tensor_address, execute_async_v3).

An "engine" file here is JSON naming a saved SlimCLIP directory, a tower and the profile; executing it reads
the input from the raw address it was given and writes the output to the output address, as TensorRT does,
so the backend's buffer handling is exercised for real (on CPU memory instead of CUDA memory).
"""

from __future__ import annotations

import ctypes
import enum
import json
import types

import numpy as np
import torch

__version__ = "10.3.0"


class DataType(enum.Enum):
    FLOAT = 0
    INT32 = 3


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


def nptype(dt: DataType):
    return {DataType.FLOAT: np.float32, DataType.INT32: np.int32}[dt]


_CTYPES = {DataType.FLOAT: ctypes.c_float, DataType.INT32: ctypes.c_int32}


class Logger:
    WARNING = 2

    def __init__(self, severity=None):
        self.severity = severity


class Runtime:
    def __init__(self, logger):
        self.logger = logger
        self.calls: list[str] = []

    def deserialize_cuda_engine(self, data: bytes):
        try:
            spec = json.loads(bytes(data).decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None  # TensorRT returns None for engines it cannot load
        return Engine(spec)


class Engine:
    def __init__(self, spec):
        from mope_deploy.models import load_model

        self.spec = spec
        self.model = load_model(spec["model_dir"]).eval()
        self.input = spec["input"]
        self.names = [self.input, "embedding"]

    @property
    def num_io_tensors(self):
        return 2

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return TensorIOMode.INPUT if name == self.input else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return DataType.INT32 if name == "tokens" else DataType.FLOAT

    def get_tensor_profile_shape(self, name, profile):
        assert name == self.input and profile == 0
        return self.spec["min"], self.spec["opt"], self.spec["max"]

    def create_execution_context(self):
        return Context(self)


class Context:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.shape = None
        self.addresses: dict[str, int] = {}
        self.executions = 0

    def set_input_shape(self, name, shape):
        lo, hi = self.engine.spec["min"], self.engine.spec["max"]
        if name != self.engine.input or any(not a <= s <= b for s, a, b in zip(shape, lo, hi)):
            return False
        self.shape = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        if name == "embedding":
            return (self.shape[0], self.engine.model.config.embed_dim)
        return self.shape

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = int(ptr)
        return True

    def execute_async_v3(self, stream_handle):
        e = self.engine
        dt = e.get_tensor_dtype(e.input)
        n = int(np.prod(self.shape))
        x = np.ctypeslib.as_array((_CTYPES[dt] * n).from_address(self.addresses[e.input])).reshape(self.shape).copy()
        with torch.no_grad():
            if e.input == "image":
                y = e.model.encode_image(torch.from_numpy(x)).numpy()
            else:
                y = e.model.encode_text(torch.from_numpy(x.astype(np.int64))).numpy()
        out = np.ctypeslib.as_array((ctypes.c_float * y.size).from_address(self.addresses["embedding"]))
        out[:] = y.reshape(-1)
        self.executions += 1
        return True


def make() -> types.ModuleType:
    mod = types.ModuleType("tensorrt")
    for name in ("__version__", "DataType", "TensorIOMode", "nptype", "Logger", "Runtime"):
        setattr(mod, name, globals()[name])
    return mod


def write_engines(bundle, model_dir, image_size: int, context_length: int, max_batch: int = 4) -> None:
    """Engine files and the manifest entry the exporter writes (``tensorrt.engines.<tower>.file``)."""
    from pathlib import Path

    bundle = Path(bundle)
    for tower, name, dims in (("image", "image", [3, image_size, image_size]), ("text", "tokens", [context_length])):
        spec = {"model_dir": str(model_dir), "input": name, "min": [1, *dims], "opt": [2, *dims],
                "max": [max_batch, *dims]}
        (bundle / f"{tower}_encoder.fp32.engine").write_text(json.dumps(spec))
    m = json.loads((bundle / "manifest.json").read_text())
    m["tensorrt"] = {"engines": {t: {"file": f"{t}_encoder.fp32.engine"} for t in ("image", "text")}}
    (bundle / "manifest.json").write_text(json.dumps(m))
