"""TensorRT 10's implicit-quantisation calibrator, for the weak-typing (builder flag) path only.

``IInt8EntropyCalibrator2`` and ``IBuilderConfig.int8_calibrator`` were removed in TensorRT 11 (explicit Q/DQ
replaces them); :func:`make_calibrator` refuses clearly when the installed module lacks them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..onnx import ExportError


def make_calibrator(trt, inputs: torch.Tensor, input_name: str, batch_size: int, cache_file: Path,
                    device: str = "cuda", max_batches: int = 32):
    """An ``IInt8EntropyCalibrator2`` feeding ``inputs`` (preprocessed images or int32 tokens) in batches."""
    if not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise ExportError(f"TensorRT {getattr(trt, '__version__', '?')} has no int8 calibrators (removed in TensorRT "
                          "11): build strongly typed int8 engines from a Q/DQ graph (typing='strong', the default)")

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            n = min(len(inputs), batch_size * max_batches)
            self.batches = [inputs[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]
            if not self.batches:
                raise ExportError(f"int8 calibration needs at least {batch_size} inputs, got {len(inputs)}: "
                                  "use more --eval-data or a smaller OPT batch size")
            self.index, self.current, self.fed = 0, None, 0

        def get_batch_size(self):
            return batch_size

        def get_batch(self, names):
            if self.index >= len(self.batches):
                return None
            # the device buffer must stay alive until the next call: keep a reference
            self.current = self.batches[self.index].contiguous().to(device)
            self.index += 1
            self.fed += 1
            return [int(self.current.data_ptr()) for _ in names]

        def read_calibration_cache(self):
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache):
            cache_file.write_bytes(bytes(cache))

    return Calibrator()
