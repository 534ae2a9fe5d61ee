"""A stand-in for the ``tensorrt`` Python package, TensorRT 10.x or 11.x API surface (builder and runtime).

``make(10)`` / ``make(11)`` return a fresh module to put in ``sys.modules["tensorrt"]``. What each generation
has, and what raises, follows NVIDIA's own pages (checked with the search tool, see the H14 report):

* 10.x: ``BuilderFlag.FP16/INT8/OBEY_PRECISION_CONSTRAINTS/PREFER_PRECISION_CONSTRAINTS/TF32/SPARSE_WEIGHTS``,
  ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH`` (ignored) and ``STRONGLY_TYPED`` (opt-in),
  ``ILayer.precision``/``set_output_type``, ``IBuilderConfig.int8_calibrator``/``set_calibration_profile``,
  ``IInt8EntropyCalibrator2``. In a strongly typed network precision flags and per-layer precisions are errors
  (``STRONGLY_TYPED``: "Setting layer precision and layer output types is not allowed").
* 11.x ("Removed Python APIs and Replacements", 10.x -> 11.x migration guide): no FP16/INT8/FP8/BF16/INT4/FP4,
  OBEY/PREFER_PRECISION_CONSTRAINTS or DIRECT_IO builder flags, no ``int8_calibrator`` /
  ``set_calibration_profile``, no calibrator classes, no ``ILayer.precision``/``set_output_type``;
  ``STRONGLY_TYPED`` exists and is ignored (always strongly typed); no ``EXPLICIT_BATCH``.
* both: ``ILogger`` subclasses receive every severity (INTERNAL_ERROR..VERBOSE; the builder emits VERBOSE
  tactic chatter); ``create_timing_cache`` returns None for an unreadable blob and ``set_timing_cache``
  returns False for a cache from another version/GPU, after which ``get_timing_cache()`` is None;
  ``execute_async_v3(stream) -> bool``.

The ONNX parser is real ``onnx`` plus the refusals of onnx-tensorrt (``docs/operators.md``): ops outside its
support list and non-standard domains (``com.microsoft`` contrib ops: "No importer registered"), ``If`` whose
branch outputs differ in rank, Q/DQ with non-zero zero points. Layers get the dtypes ONNX shape inference
gives them; ``ArgMax`` becomes a TopK layer with float values and INT32 indices, as in onnx-tensorrt.

An engine is a JSON plan naming the graph (kept in this process's ``STORE``); executing it runs that graph with
ONNX Runtime on the CPU, reading and writing the raw buffer addresses it was given, so numerics are the graph's
own (an fp16 graph gives fp16 results) and buffer handling is exercised for real. ``FAULTS`` injects failures:
``perturb`` (noise on every output: a wrong engine), ``fail_build``.
"""

from __future__ import annotations

import ctypes
import enum
import hashlib
import json
import importlib.machinery
import types

import numpy as np

# onnx-tensorrt docs/operators.md support matrix (ops marked Y), plus LayerNormalization (TensorRT >= 8.6)
SUPPORTED_OPS = set("""Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast
Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div
Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gemm GlobalAveragePool
GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GRU HardSigmoid Identity If ImageScaler InstanceNormalization IsNaN
LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean Min Mul Neg
Not Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomUniform RandomUniformLike Range ReduceL1 ReduceL2
ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
ReverseSequence RNN Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Sigmoid Sign Sin Sinh Size
Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose
Unsqueeze Upsample Where Xor LayerNormalization""".split())

STORE: dict[str, bytes] = {}  # graph sha -> serialized ONNX (with weights), shared by every fake module
FAULTS: dict = {}


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8


_NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8, DataType.INT32: np.int32,
       DataType.BOOL: np.bool_, DataType.UINT8: np.uint8, DataType.INT64: np.int64}
# ONNX TensorProto elem type -> TensorRT DataType (int64 is narrowed to int32 by the parser where it can)
_ONNX = {1: DataType.FLOAT, 10: DataType.HALF, 3: DataType.INT8, 6: DataType.INT32, 7: DataType.INT64,
         9: DataType.BOOL, 2: DataType.UINT8, 16: DataType.BF16}


def nptype(dt):
    return _NP[DataType(int(dt))]


class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class ILogger:
    Severity = Severity
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = (Severity.INTERNAL_ERROR, Severity.ERROR, Severity.WARNING,
                                                      Severity.INFO, Severity.VERBOSE)

    def __init__(self):
        pass

    def log(self, severity, msg):  # pragma: no cover - overridden
        pass


class Logger(ILogger):
    def __init__(self, min_severity=Severity.WARNING):
        self.min_severity = min_severity
        self.messages: list = []

    def log(self, severity, msg):
        if int(severity) <= int(self.min_severity):
            self.messages.append((severity, msg))


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0
    DLA_MANAGED_SRAM = 1


LayerType = enum.IntEnum("LayerType", "CONVOLUTION MATRIX_MULTIPLY ELEMENTWISE ACTIVATION SOFTMAX REDUCE "
                                      "NORMALIZATION TOPK GATHER SHUFFLE CONSTANT UNARY CAST IDENTITY SLICE "
                                      "CONCATENATION SHAPE CONDITION QUANTIZE DEQUANTIZE SELECT FILL")
OP_LAYERS = {"LayerNormalization": "NORMALIZATION", "Softmax": "SOFTMAX", "ReduceL2": "REDUCE", "ReduceMean": "REDUCE",
             "ReduceMax": "REDUCE", "ReduceSum": "REDUCE", "ReduceSumSquare": "REDUCE", "ArgMax": "TOPK",
             "TopK": "TOPK", "MatMul": "MATRIX_MULTIPLY", "Gemm": "MATRIX_MULTIPLY", "Conv": "CONVOLUTION",
             "Gather": "GATHER", "GatherElements": "GATHER", "Cast": "CAST", "Constant": "CONSTANT", "Shape": "SHAPE",
             "Reshape": "SHUFFLE", "Transpose": "SHUFFLE", "Squeeze": "SHUFFLE", "Unsqueeze": "SHUFFLE",
             "Slice": "SLICE", "Concat": "CONCATENATION", "If": "CONDITION", "Identity": "IDENTITY",
             "QuantizeLinear": "QUANTIZE", "DequantizeLinear": "DEQUANTIZE", "Where": "SELECT", "Erf": "UNARY",
             "Sqrt": "UNARY"}
FLOATS = (DataType.FLOAT, DataType.HALF)
LOW_PRECISION_FLAGS = ("FP16", "INT8", "BF16", "FP8", "INT4", "FP4")


class Tensor:
    def __init__(self, name, dtype, rank=None):
        self.name, self.dtype, self.rank = name, dtype, rank


class _LayerBase:
    __slots__ = ("_network", "name", "op", "type", "_inputs", "_outputs")

    def __init__(self, network, name, op, type_, inputs, outputs):
        self._network, self.name, self.op, self.type = network, name, op, type_
        self._inputs, self._outputs = inputs, outputs

    @property
    def num_outputs(self):
        return len(self._outputs)

    @property
    def num_inputs(self):
        return len(self._inputs)

    def get_output(self, i):
        return self._outputs[i]

    def get_input(self, i):
        return self._inputs[i]


class Layer10(_LayerBase):
    """TensorRT 10 ILayer: precision and output types can be set (errors in a strongly typed network)."""

    def __init__(self, *a):
        super().__init__(*a)
        self._precision = None
        self.output_types: dict = {}

    @property
    def precision(self):
        return self._precision if self._precision is not None else DataType.FLOAT

    @precision.setter
    def precision(self, dt):
        if self._network.strongly_typed:
            self._network.errors.append(f"{self.name}: setting layer precision is not allowed in a strongly typed "
                                        "network")
        self._precision = dt

    @property
    def precision_is_set(self):
        return self._precision is not None

    def set_output_type(self, index, dt):
        if self._network.strongly_typed:
            self._network.errors.append(f"{self.name}: setting layer output types is not allowed in a strongly "
                                        "typed network")
        self.output_types[index] = dt


class Layer11(_LayerBase):
    """TensorRT 11 ILayer: no precision, no set_output_type (``__slots__`` makes setting them raise)."""

    __slots__ = ()


class Network:
    def __init__(self, strongly_typed: bool):
        self.strongly_typed = strongly_typed
        self.layers: list = []
        self.inputs: list[Tensor] = []
        self.outputs: list[Tensor] = []
        self.errors: list[str] = []
        self.graph_sha = None
        self.has_qdq = self.fp16_tensors = False

    @property
    def num_layers(self):
        return len(self.layers)

    def get_layer(self, i):
        return self.layers[i]

    @property
    def num_inputs(self):
        return len(self.inputs)

    def get_input(self, i):
        return self.inputs[i]


def _ranks_and_types(model):
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    info = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        tt = v.type.tensor_type
        info[v.name] = (tt.elem_type, len(tt.shape.dim) if tt.HasField("shape") else None)
    for t in inferred.graph.initializer:
        info[t.name] = (t.data_type, len(t.dims))
    return inferred, info


def _branch_rank(graph, outer: dict, name: str):
    for v in list(graph.output) + list(graph.value_info):
        if v.name == name and v.type.tensor_type.HasField("shape"):
            return len(v.type.tensor_type.shape.dim)
    for n in graph.node:  # an Identity/Squeeze of a known outer tensor
        if name in n.output and n.op_type == "Identity" and n.input[0] in outer:
            return outer[n.input[0]][1]
    return None


class OnnxParser:
    def __init__(self, network, logger):
        self.network, self.logger = network, logger
        self.errors: list[str] = []

    def parse_from_file(self, path):
        import onnx

        RECORD["parsed"].append(str(path))
        try:
            model = onnx.load(str(path))  # loads external data from beside the file, as TensorRT does
        except Exception as e:  # noqa: BLE001
            self.errors.append(f"failed to load {path}: {e}")
            return False
        return self._parse(model)

    def parse(self, data: bytes):
        import onnx

        return self._parse(onnx.load_from_string(bytes(data)))

    def _parse(self, model) -> bool:
        from onnx import numpy_helper

        inferred, info = _ranks_and_types(model)
        inits = {t.name: t for t in model.graph.initializer}
        for node in model.graph.node:
            where = f"node {node.name or node.op_type} ({node.op_type})"
            if node.domain not in ("", "ai.onnx"):
                self.errors.append(f"{where}: No importer registered for op: {node.op_type} (domain {node.domain})")
            elif node.op_type not in SUPPORTED_OPS:
                self.errors.append(f"{where}: No importer registered for op: {node.op_type}")
            elif node.op_type == "If":
                branches = {a.name: a.g for a in node.attribute}
                for k in range(len(node.output)):
                    ranks = [_branch_rank(branches[b], info, branches[b].output[k].name)
                             for b in ("then_branch", "else_branch")]
                    if None not in ranks and ranks[0] != ranks[1]:
                        self.errors.append(f"{where}: then and else branch outputs must have the same rank, got "
                                           f"{ranks[0]} and {ranks[1]}")
            elif node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
                zp = inits.get(node.input[2])
                if zp is not None and np.any(numpy_helper.to_array(zp) != 0):
                    self.errors.append(f"{where}: zero point must be 0")
        if self.errors:
            return False
        net = self.network
        for i, node in enumerate(model.graph.node):
            ins = [Tensor(n, _ONNX.get(info.get(n, (1, None))[0], DataType.FLOAT)) for n in node.input if n]
            if node.op_type == "ArgMax":  # onnx-tensorrt builds ArgMax as TopK(k=1): values + INT32 indices
                outs = [Tensor(node.output[0] + "_values", ins[0].dtype), Tensor(node.output[0], DataType.INT32)]
            else:
                outs = [Tensor(o, _ONNX.get(info.get(o, (1, None))[0], DataType.FLOAT)) for o in node.output]
            cls = Layer11 if GEN[0] >= 11 else Layer10
            net.layers.append(cls(net, node.name or f"{node.op_type}_{i}", node.op_type,
                                  getattr(LayerType, OP_LAYERS.get(node.op_type, "ELEMENTWISE")), ins, outs))
        net.inputs = [Tensor(v.name, _ONNX[v.type.tensor_type.elem_type]) for v in model.graph.input]
        net.outputs = [Tensor(v.name, _ONNX[v.type.tensor_type.elem_type],
                              [d.dim_value or -1 for d in v.type.tensor_type.shape.dim]) for v in model.graph.output]
        data = model.SerializeToString()
        sha = hashlib.sha256(data).hexdigest()[:16]
        STORE[sha] = data
        net.graph_sha = sha
        net.has_qdq = any(n.op_type == "QuantizeLinear" for n in model.graph.node)
        net.fp16_tensors = any(t.dtype == DataType.HALF for l in net.layers for t in l._outputs)
        return True

    @property
    def num_errors(self):
        return len(self.errors)

    def get_error(self, i):
        return self.errors[i]


class OptimizationProfile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, input, min, opt, max):  # noqa: A002  (TensorRT's own keyword names)
        self.shapes[input] = (tuple(min), tuple(opt), tuple(max))


class TimingCache:
    def __init__(self, data: bytes):
        self.entries = data

    def serialize(self):
        return _cache_header() + self.entries + b"+timed"


def _cache_header() -> bytes:
    return f"TRTCACHE{GEN[0]}:{RECORD.get('gpu', 'H200')}|".encode()


class _ConfigBase:
    __slots__ = ("_logger", "flags", "cleared", "pools", "profiles", "_cache", "timing_cache_input")

    def __init__(self, logger):
        self._logger = logger
        self.flags: set = set()
        self.cleared: set = set()
        self.pools = {}
        self.profiles: list = []
        self._cache = None
        self.timing_cache_input = None

    def set_flag(self, flag):
        self.flags.add(flag)

    def clear_flag(self, flag):
        self.flags.discard(flag)
        self.cleared.add(flag)

    def get_flag(self, flag):
        return flag in self.flags

    def set_memory_pool_limit(self, pool, size):
        self.pools[pool] = size

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data):
        data = bytes(data)
        if data and not data.startswith(b"TRTCACHE"):
            self._logger.log(Severity.ERROR, "Timing cache blob is invalid or corrupted")
            return None
        self.timing_cache_input = data
        return TimingCache(data.split(b"|", 1)[1] if b"|" in data else b"")

    def set_timing_cache(self, cache, ignore_mismatch):
        header = self.timing_cache_input.split(b"|", 1)[0] + b"|" if self.timing_cache_input else b""
        if header and header != _cache_header() and not ignore_mismatch:
            self._logger.log(Severity.ERROR, "Timing cache was created by a different TensorRT version or device")
            self._cache = None
            return False
        self._cache = cache
        return True

    def get_timing_cache(self):
        return self._cache


class BuilderConfig10(_ConfigBase):
    def __init__(self, logger):
        super().__init__(logger)
        self.int8_calibrator = None
        self.calibration_profile = None

    def set_calibration_profile(self, profile):
        self.calibration_profile = profile


class BuilderConfig11(_ConfigBase):
    """No int8_calibrator / calibration profile in TensorRT 11 (setting them raises AttributeError)."""

    __slots__ = ()


class Builder:
    def __init__(self, logger):
        self.logger = logger
        RECORD["builders"] += 1

    def create_network(self, flags=0):
        strong = bool(flags & (1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED))) or GEN[0] >= 11
        RECORD["network_flags"].append(flags)
        return Network(strong)

    def create_builder_config(self):
        return (BuilderConfig11 if GEN[0] >= 11 else BuilderConfig10)(self.logger)

    def create_optimization_profile(self):
        return OptimizationProfile()

    def _fail(self, msg):
        self.logger.log(Severity.ERROR, msg)
        return None

    def build_serialized_network(self, network, config):
        log = self.logger.log
        for i in range(25):  # real builds emit thousands of these
            log(Severity.VERBOSE, f"Tactic 0x{i:04x}: timing 0.0{i} ms")
        log(Severity.INFO, f"[MemUsageChange] Init builder kernel library (TensorRT {__version__})")
        if FAULTS.get("fail_build"):
            return self._fail("fake failure: could not find any implementation for node (out of tactics)")
        if network.errors:
            return self._fail("; ".join(network.errors))
        low = [f.name for f in config.flags if f.name in LOW_PRECISION_FLAGS]
        if network.strongly_typed and low:
            return self._fail(f"BuilderFlag(s) {low} are not allowed with a strongly typed network")
        if not config.profiles or any(t.name not in p.shapes for p in config.profiles for t in network.inputs):
            return self._fail("Network has dynamic or shape inputs, but no optimization profile has been defined")
        weak_fp16 = not network.strongly_typed and "FP16" in [f.name for f in config.flags]
        if not network.strongly_typed and GEN[0] < 11:
            obey = "OBEY_PRECISION_CONSTRAINTS" in [f.name for f in config.flags]
            for layer in network.layers:
                if layer.precision_is_set and obey and not any(t.dtype in FLOATS for t in layer._outputs):
                    return self._fail(f"{layer.name}: no implementation obeys the requested precision FLOAT for a "
                                      "layer with INT32 outputs (OBEY_PRECISION_CONSTRAINTS)")
                for j in layer.output_types:
                    if layer.get_output(j).dtype not in FLOATS:
                        return self._fail(f"{layer.name}: float output type set on a non-float tensor")
        batches = []
        if GEN[0] < 11 and "INT8" in [f.name for f in config.flags] and not network.has_qdq:
            cal = config.int8_calibrator
            if cal is None:
                return self._fail("INT8 requested without a calibrator or Q/DQ nodes")
            if config.calibration_profile is None:
                return self._fail("dynamic shapes need a calibration profile")
            names = [t.name for t in network.inputs]
            bs = cal.get_batch_size()
            while (ptrs := cal.get_batch(names)) is not None:
                assert len(ptrs) == len(names) and all(isinstance(p, int) and p for p in ptrs)
                batches.append(bs)
            cal.write_calibration_cache(b"fake-calibration-table")
        if network.strongly_typed and not network.fp16_tensors and not network.has_qdq:
            log(Severity.WARNING, "strongly typed network has no reduced-precision tensors")
        cache = config.get_timing_cache()
        if cache is not None:
            cache.entries = cache.entries + b"."
        log(Severity.INFO, f"Engine built: {len(network.layers)} layers")
        prof = config.profiles[0].shapes
        inp = network.inputs[0]
        out = network.outputs[0]
        plan = {
            "fake_tensorrt": GEN[0], "graph": network.graph_sha, "strongly_typed": network.strongly_typed,
            "flags": sorted(f.name for f in config.flags), "cleared": sorted(f.name for f in config.cleared),
            "pools": {k.name: v for k, v in config.pools.items()},
            "profile": {k: [list(s) for s in v] for k, v in prof.items()},
            "input": {"name": inp.name, "dtype": int(inp.dtype)},
            "output": {"name": out.name, "dtype": int(out.dtype), "shape": out.rank},
            "pinned": [l.name for l in network.layers if getattr(l, "precision_is_set", False)],
            "pinned_types": sorted({l.type.name for l in network.layers if getattr(l, "precision_is_set", False)}),
            "calibration_batches": batches, "weak_fp16": weak_fp16,
            "timing_cache_input": (config.timing_cache_input or b"").decode(errors="replace"),
            "layers": len(network.layers),
        }
        RECORD["plans"].append(plan)
        return json.dumps(plan).encode()


class IInt8EntropyCalibrator2:
    def __init__(self):
        pass


# ----------------------------------------------------------------------------- runtime
class Runtime:
    def __init__(self, logger):
        self.logger = logger

    def deserialize_cuda_engine(self, data):
        try:
            plan = json.loads(bytes(data).decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            self.logger.log(Severity.ERROR, "Serialization assertion failed: magic tag does not match")
            return None
        if plan.get("fake_tensorrt") != GEN[0] or plan.get("graph") not in STORE:
            self.logger.log(Severity.ERROR, "The engine plan file is not compatible with this version of TensorRT")
            return None
        return ICudaEngine(plan)


class ICudaEngine:
    def __init__(self, plan):
        self.plan = plan
        self.names = [plan["input"]["name"], plan["output"]["name"]]

    @property
    def num_io_tensors(self):
        return 2

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return TensorIOMode.INPUT if name == self.names[0] else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return DataType(self.plan["input" if name == self.names[0] else "output"]["dtype"])

    def get_tensor_profile_shape(self, name, profile):
        assert profile == 0
        return tuple(tuple(s) for s in self.plan["profile"][name])

    def create_execution_context(self):
        return IExecutionContext(self)


_SESSIONS: dict = {}


def _session(sha):
    if sha not in _SESSIONS:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        _SESSIONS[sha] = ort.InferenceSession(STORE[sha], sess_options=so, providers=["CPUExecutionProvider"])
    return _SESSIONS[sha]


class IExecutionContext:
    def __init__(self, engine):
        self.engine = engine
        self.shape = None
        self.addresses: dict[str, int] = {}
        self.executions = 0

    def set_input_shape(self, name, shape):
        lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
        if name != self.engine.names[0] or len(shape) != len(lo) or any(not a <= s <= b for s, a, b in
                                                                        zip(shape, lo, hi)):
            return False
        self.shape = tuple(int(s) for s in shape)
        return True

    def get_tensor_shape(self, name):
        if name == self.engine.names[1]:
            dims = self.engine.plan["output"]["shape"]
            return (self.shape[0], *dims[1:])
        return self.shape

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = int(ptr)
        return True

    def execute_async_v3(self, stream_handle):
        RECORD["streams"].append(int(stream_handle))
        e = self.engine
        in_np = nptype(e.get_tensor_dtype(e.names[0]))
        n = int(np.prod(self.shape))
        buf = (ctypes.c_byte * (n * np.dtype(in_np).itemsize)).from_address(self.addresses[e.names[0]])
        x = np.frombuffer(buf, dtype=in_np).reshape(self.shape).copy()
        sess = _session(e.plan["graph"])
        y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        if FAULTS.get("perturb"):
            y = y + np.random.default_rng(0).normal(0, FAULTS["perturb"], y.shape).astype(y.dtype) * np.abs(y).max()
        out_np = nptype(e.get_tensor_dtype(e.names[1]))
        y = np.ascontiguousarray(y, dtype=out_np)
        obuf = (ctypes.c_byte * y.nbytes).from_address(self.addresses[e.names[1]])
        np.frombuffer(obuf, dtype=out_np)[:] = y.reshape(-1)
        self.executions += 1
        return True


# ----------------------------------------------------------------------------- module assembly
GEN = [10]
RECORD: dict = {}
__version__ = "10.13.3"

_COMMON_FLAGS = ("DEBUG GPU_FALLBACK REFIT DISABLE_TIMING_CACHE TF32 SPARSE_WEIGHTS SAFETY_SCOPE REJECT_EMPTY_ALGORITHMS "
                 "VERSION_COMPATIBLE EXCLUDE_LEAN_RUNTIME ERROR_ON_TIMING_CACHE_MISS DISABLE_COMPILATION_CACHE "
                 "STRIP_PLAN REFIT_IDENTICAL WEIGHT_STREAMING REFIT_INDIVIDUAL STRICT_NANS MONITOR_MEMORY "
                 "EDITABLE_TIMING_CACHE")
BuilderFlag = enum.IntEnum("BuilderFlag", "FP16 INT8 OBEY_PRECISION_CONSTRAINTS PREFER_PRECISION_CONSTRAINTS DIRECT_IO "
                                          "FP8 BF16 INT4 FP4 " + _COMMON_FLAGS)
NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0,
                                                                               "STRONGLY_TYPED": 1})

_EXPORTS = ("DataType", "nptype", "ILogger", "Logger", "TensorIOMode", "MemoryPoolType", "LayerType", "OnnxParser",
            "Builder", "Runtime", "ICudaEngine", "IExecutionContext")


def make(generation: int = 10, version: str | None = None, gpu: str = "H200") -> types.ModuleType:
    """A fresh fake ``tensorrt`` module of TensorRT ``generation`` (10 or 11), with an empty ``RECORD``."""
    global BuilderFlag, NetworkDefinitionCreationFlag, __version__
    GEN[0] = int(generation)
    FAULTS.clear()
    RECORD.clear()
    RECORD.update(parsed=[], builders=0, plans=[], streams=[], network_flags=[], gpu=gpu)
    mod = types.ModuleType("tensorrt")
    mod.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # torch._dynamo calls find_spec on it
    if GEN[0] >= 11:
        BuilderFlag = enum.IntEnum("BuilderFlag", _COMMON_FLAGS)
        NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 0})
        __version__ = version or "11.4.0"
    else:
        BuilderFlag = enum.IntEnum("BuilderFlag", "FP16 INT8 OBEY_PRECISION_CONSTRAINTS PREFER_PRECISION_CONSTRAINTS "
                                                  "DIRECT_IO FP8 BF16 INT4 FP4 " + _COMMON_FLAGS)
        NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0,
                                                                                       "STRONGLY_TYPED": 1})
        __version__ = version or "10.13.3"
        mod.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
    for name in _EXPORTS:
        setattr(mod, name, globals()[name])
    mod.BuilderFlag, mod.NetworkDefinitionCreationFlag, mod.__version__ = (BuilderFlag, NetworkDefinitionCreationFlag,
                                                                           __version__)
    for name, dt in (("float32", DataType.FLOAT), ("float16", DataType.HALF), ("int8", DataType.INT8),
                     ("int32", DataType.INT32), ("int64", DataType.INT64), ("bool", DataType.BOOL)):
        setattr(mod, name, dt)
    mod.RECORD, mod.FAULTS, mod.STORE = RECORD, FAULTS, STORE
    return mod
