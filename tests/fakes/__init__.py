"""Faithful fakes of GPU libraries that cannot be installed here (TensorRT 10/11, torch-tensorrt releases).

``install_tensorrt(monkeypatch, generation)`` puts a fresh fake ``tensorrt`` in ``sys.modules``, claims a CUDA
device for the exporter's and runtime's checks (``mope_deploy.device.cuda_available``) and makes engine buffers live in CPU memory with a recorded stream, so the
real exporter, gate and runtime code run unchanged against it.
"""

from __future__ import annotations

import sys


class FakeStream:
    """Stands in for ``torch.cuda.Stream``: a non-zero handle and a sync counter."""

    handle = 0x5EED

    def __init__(self):
        self.cuda_stream = self.handle
        self.syncs = 0

    def synchronize(self):
        self.syncs += 1

    def wait_stream(self, other):  # pragma: no cover - only used with CUDA buffers
        pass


def install_tensorrt(monkeypatch, generation: int = 10, **kw):
    import torch

    from mope_deploy import device
    from mope_deploy.exporting.tensorrt import runner as trt_engine

    from . import tensorrt_fake

    fake = tensorrt_fake.make(generation, **kw)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(device, "cuda_available", lambda: True)
    monkeypatch.setattr(trt_engine, "buffer_device", lambda device: torch.device("cpu"))
    streams: list[FakeStream] = []

    def new_stream(device):
        streams.append(FakeStream())
        return streams[-1]

    monkeypatch.setattr(trt_engine, "new_stream", new_stream)
    fake.streams = streams
    return fake


def install_torch_tensorrt(monkeypatch, release: str):
    from mope_deploy import device

    from . import torch_tensorrt_fake

    fake = torch_tensorrt_fake.make(release)
    monkeypatch.setitem(sys.modules, "torch_tensorrt", fake)
    monkeypatch.setattr(device, "cuda_available", lambda: True)
    return fake
