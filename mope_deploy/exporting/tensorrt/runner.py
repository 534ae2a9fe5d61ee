"""Run one serialized TensorRT engine (one input, one output) from torch CUDA tensors.

Shared by the exporter's engine gate and the runtime backend. TensorRT 10/11 runtime API: named I/O tensors,
``set_input_shape``, ``set_tensor_address`` and ``execute_async_v3(stream_handle) -> bool``. Work is enqueued
on a stream this runner owns (``torch.cuda.Stream``), never on the legacy default stream (handle 0), which
synchronises with every other stream on the device and inflates latency; the caller synchronises through
:meth:`TrtEngineRunner.synchronize`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch


class EngineError(RuntimeError):
    """An engine that cannot be loaded or run (wrong file, wrong I/O, batch outside its profile)."""


def _torch_dtype(trt, trt_dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=trt.nptype(trt_dtype))).dtype


def new_stream(device: torch.device):
    """A dedicated CUDA stream on ``device`` (patched in tests that run the fakes on the CPU)."""
    return torch.cuda.Stream(device=device)


def buffer_device(device: torch.device) -> torch.device:
    """Where input/output buffers live: the engine's CUDA device (patched to the CPU in fake-based tests)."""
    return device


class TrtEngineRunner:
    """A deserialized engine with its execution context and own stream."""

    def __init__(self, trt, runtime, plan: bytes, input_name: str, device: torch.device, name: str = "engine"):
        self.name, self.device = name, torch.device(device)
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise EngineError(f"{name}: TensorRT could not deserialize the engine; engines only load with the "
                              "TensorRT version and GPU model that built them: rebuild it here")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if inputs != [input_name] or len(outputs) != 1:
            raise EngineError(f"{name}: expected one input {input_name!r} and one output, found inputs {inputs} and "
                              f"outputs {outputs}; the engine was not built from this bundle's encoders")
        self.engine, self.input, self.output = engine, input_name, outputs[0]
        lo, _opt, hi = engine.get_tensor_profile_shape(input_name, 0)
        self.profile_shapes = (tuple(int(v) for v in lo), tuple(int(v) for v in hi))
        self.min_batch, self.max_batch = self.profile_shapes[0][0], self.profile_shapes[1][0]
        self.in_dtype = _torch_dtype(trt, engine.get_tensor_dtype(input_name))
        self.out_dtype = _torch_dtype(trt, engine.get_tensor_dtype(self.output))
        self.context = engine.create_execution_context()
        self.buffers = buffer_device(self.device)
        self.stream = new_stream(self.device)
        self._keep: tuple = ()

    def check(self, shape: tuple[int, ...]) -> None:
        lo, hi = self.profile_shapes
        if len(shape) != len(lo) or any(not (a <= s <= b) for s, a, b in zip(shape, lo, hi)):
            raise EngineError(f"{self.name}: input shape {tuple(shape)} is outside the engine's optimisation profile "
                              f"(min {lo}, max {hi}); use a batch between {self.min_batch} and {self.max_batch} or "
                              "rebuild the engine with a wider profile")

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as the engine's input dtype, contiguous, on the buffer device."""
        return x.to(self.buffers, self.in_dtype).contiguous()

    def enqueue(self, x: torch.Tensor) -> torch.Tensor:
        """Enqueue the engine on ``x`` (prepared) on the runner's stream; returns the output (not yet synced)."""
        self.check(tuple(x.shape))
        if not self.context.set_input_shape(self.input, tuple(x.shape)):
            raise EngineError(f"{self.name}: TensorRT refused input shape {tuple(x.shape)}")
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=self.out_dtype,
                          device=self.buffers)
        self.context.set_tensor_address(self.input, int(x.data_ptr()))
        self.context.set_tensor_address(self.output, int(out.data_ptr()))
        if self.buffers.type == "cuda":
            # the input was written on torch's current stream: order our stream after it, and tell the caching
            # allocator both buffers are in use on our stream (no reuse before the engine is done with them)
            self.stream.wait_stream(torch.cuda.current_stream(self.buffers))
            x.record_stream(self.stream)
            out.record_stream(self.stream)
        if not self.context.execute_async_v3(int(self.stream.cuda_stream)):
            raise EngineError(f"{self.name}: TensorRT execution failed (see the TensorRT log)")
        self._keep = (x, out)  # buffers must outlive the asynchronous execution
        return out

    def synchronize(self) -> None:
        self.stream.synchronize()

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        """Run and wait; float32 numpy output."""
        out = self.enqueue(self.prepare(x))
        self.synchronize()
        return out.float().cpu().numpy()


def load_runner(trt, path_or_plan: str | Path | bytes, input_name: str, device: str | torch.device = "cuda",
                logger: Any = None) -> TrtEngineRunner:
    """A runner for an engine file (or plan bytes), with its own ``trt.Runtime``."""
    plan = path_or_plan if isinstance(path_or_plan, (bytes, bytearray)) else Path(path_or_plan).read_bytes()
    name = "engine" if isinstance(path_or_plan, (bytes, bytearray)) else Path(path_or_plan).name
    runtime = trt.Runtime(logger or trt.Logger(trt.Logger.WARNING))
    runner = TrtEngineRunner(trt, runtime, bytes(plan), input_name, torch.device(device), name=name)
    runner.runtime = runtime  # the runtime must outlive the engine
    return runner
