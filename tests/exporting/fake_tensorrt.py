"""A stand-in for the ``tensorrt`` package (TensorRT 10 Python API surface used by the exporter).

It parses the ONNX file for real (with ``onnx``) into fake layers, records every call and flag, drives an
int8 calibrator the way TensorRT does (``get_batch`` until it returns None), and "serialises" an engine
as JSON of what the builder was asked to do, so tests can assert on it. Tests inject it with
``monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt.make())``; it is not importable from the package.
"""

from __future__ import annotations

import enum
import json
import types

import onnx

__version__ = "10.3.0"


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    INT64 = 5


float32, float16, int8, int32, int64 = DataType.FLOAT, DataType.HALF, DataType.INT8, DataType.INT32, DataType.INT64

BuilderFlag = enum.Enum("BuilderFlag", "FP16 INT8 TF32 SPARSE_WEIGHTS OBEY_PRECISION_CONSTRAINTS "
                                       "PREFER_PRECISION_CONSTRAINTS STRICT_TYPES REFIT")
MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE DLA_MANAGED_SRAM")
LayerType = enum.Enum("LayerType", "CONVOLUTION MATRIX_MULTIPLY ELEMENTWISE ACTIVATION SOFTMAX REDUCE "
                                   "NORMALIZATION TOPK GATHER SHUFFLE CONSTANT UNARY CAST IDENTITY SLICE CONCATENATION")

# ONNX op -> the layer TensorRT's parser makes of it (the ones the exporter pins, and a few others)
OP_LAYERS = {"LayerNormalization": LayerType.NORMALIZATION, "Softmax": LayerType.SOFTMAX,
             "ReduceL2": LayerType.REDUCE, "ReduceMean": LayerType.REDUCE, "ReduceMax": LayerType.REDUCE,
             "ReduceSum": LayerType.REDUCE, "ArgMax": LayerType.TOPK, "MatMul": LayerType.MATRIX_MULTIPLY,
             "Gemm": LayerType.MATRIX_MULTIPLY, "Conv": LayerType.CONVOLUTION, "Gather": LayerType.GATHER,
             "GatherElements": LayerType.GATHER, "Cast": LayerType.CAST, "Constant": LayerType.CONSTANT}
INT_OUTPUT_OPS = {"ArgMax", "Equal", "Shape"}


class Logger:
    WARNING, INFO, ERROR, VERBOSE = "WARNING", "INFO", "ERROR", "VERBOSE"

    def __init__(self, severity="WARNING"):
        self.severity = severity


class ILogger:
    def __init__(self):
        pass

    def log(self, severity, msg):  # pragma: no cover - overridden
        pass


class _Severity:
    name = "INFO"


class Tensor:
    def __init__(self, name, dtype):
        self.name, self.dtype = name, dtype


class Layer:
    def __init__(self, name, op, type_, outputs):
        self.name, self.op, self.type = name, op, type_
        self._outputs = outputs
        self.precision = DataType.FLOAT
        self.precision_is_set = False
        self.output_types: dict[int, DataType] = {}

    @property
    def num_outputs(self):
        return len(self._outputs)

    def get_output(self, i):
        return self._outputs[i]

    def set_output_type(self, i, dtype):
        self.output_types[i] = dtype

    def __setattr__(self, key, value):
        if key == "precision" and hasattr(self, "precision_is_set"):
            object.__setattr__(self, "precision_is_set", True)
        object.__setattr__(self, key, value)


class Network:
    def __init__(self, flags):
        self.flags = flags
        self.layers: list[Layer] = []
        self.inputs: list[Tensor] = []

    @property
    def num_layers(self):
        return len(self.layers)

    def get_layer(self, i):
        return self.layers[i]


class OnnxParser:
    def __init__(self, network, logger):
        self.network, self.logger = network, logger
        self.errors: list[str] = []

    def parse_from_file(self, path):
        RECORD["parsed"].append(path)
        try:
            model = onnx.load(path)  # loads external data from beside the file, as TensorRT does
        except Exception as e:  # noqa: BLE001
            self.errors.append(str(e))
            return False
        for i, node in enumerate(model.graph.node):
            outs = [Tensor(o, DataType.INT32 if node.op_type in INT_OUTPUT_OPS else DataType.FLOAT)
                    for o in node.output]
            self.network.layers.append(Layer(node.name or f"{node.op_type}_{i}", node.op_type,
                                             OP_LAYERS.get(node.op_type, LayerType.ELEMENTWISE), outs))
        self.network.inputs = [Tensor(v.name, v.type.tensor_type.elem_type) for v in model.graph.input]
        return True

    @property
    def num_errors(self):
        return len(self.errors)

    def get_error(self, i):
        return self.errors[i]


class OptimizationProfile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, min, opt, max):  # noqa: A002  (TensorRT's own keyword names)
        self.shapes[name] = (tuple(min), tuple(opt), tuple(max))


class TimingCache:
    def __init__(self, data):
        self.data = bytes(data)

    def serialize(self):
        return self.data + b"+timed"


class BuilderConfig:
    def __init__(self):
        self.flags: set = set()
        self.cleared: set = set()
        self.pools = {}
        self.profiles: list[OptimizationProfile] = []
        self.int8_calibrator = None
        self.calibration_profile = None
        self.timing_cache = None
        self.timing_cache_input = None

    def set_flag(self, flag):
        self.flags.add(flag)

    def clear_flag(self, flag):
        self.flags.discard(flag)
        self.cleared.add(flag)

    def set_memory_pool_limit(self, pool, size):
        self.pools[pool] = size

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def set_calibration_profile(self, profile):
        self.calibration_profile = profile

    def create_timing_cache(self, data):
        self.timing_cache_input = bytes(data)
        return TimingCache(data)

    def set_timing_cache(self, cache, ignore_mismatch):
        self.timing_cache = cache
        return True

    def get_timing_cache(self):
        return self.timing_cache


class Builder:
    def __init__(self, logger):
        self.logger = logger
        RECORD["builders"] += 1

    def create_network(self, flags=0):
        return Network(flags)

    def create_builder_config(self):
        return BuilderConfig()

    def create_optimization_profile(self):
        return OptimizationProfile()

    def build_serialized_network(self, network, config):
        if RECORD.get("fail_build"):
            self.logger.log(_Severity(), "fake failure: out of tactics")
            return None
        if BuilderFlag.OBEY_PRECISION_CONSTRAINTS in config.flags:
            for layer in network.layers:  # a pin on an int tensor is an error in real TensorRT too
                for j, t in layer.output_types.items():
                    if layer.get_output(j).dtype not in (DataType.FLOAT, DataType.HALF):
                        raise AssertionError(f"float output type set on a non-float tensor of {layer.name}")
        batches = []
        if BuilderFlag.INT8 in config.flags:
            cal = config.int8_calibrator
            assert cal is not None, "INT8 without a calibrator"
            assert config.calibration_profile is not None, "dynamic shapes need a calibration profile"
            names = [t.name for t in network.inputs]
            bs = cal.get_batch_size()
            while (ptrs := cal.get_batch(names)) is not None:
                assert len(ptrs) == len(names) and all(isinstance(p, int) and p for p in ptrs)
                batches.append(bs)
            cal.write_calibration_cache(b"fake-calibration-table")
        self.logger.log(_Severity(), f"built {len(network.layers)} layers")
        plan = {
            "flags": sorted(f.name for f in config.flags), "cleared": sorted(f.name for f in config.cleared),
            "pools": {k.name: v for k, v in config.pools.items()},
            "profiles": [{k: [list(s) for s in v] for k, v in p.shapes.items()} for p in config.profiles],
            "pinned": [l.name for l in network.layers if l.precision_is_set and l.precision == DataType.FLOAT],
            "pinned_types": sorted({l.type.name for l in network.layers if l.precision_is_set}),
            "calibration_batches": batches, "timing_cache_input": (config.timing_cache_input or b"").decode(),
            "layers": len(network.layers),
        }
        RECORD["plans"].append(plan)
        return json.dumps(plan).encode()


class IInt8EntropyCalibrator2:
    def __init__(self):
        pass


RECORD: dict = {}


def make() -> types.ModuleType:
    """A fresh copy of this module (with an empty ``RECORD``) to put in ``sys.modules['tensorrt']``."""
    import sys

    mod = sys.modules[__name__]
    RECORD.clear()
    RECORD.update(parsed=[], builders=0, plans=[])
    return mod
