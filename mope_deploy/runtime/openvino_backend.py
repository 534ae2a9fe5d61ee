"""OpenVINO backend: an export bundle's OpenVINO IR (``mope export -f openvino``) on the CPU.

Per tower it opens the variant the manifest's ``runtime["openvino"]`` names: what the export measured fastest,
the NNCF int8 IR or ONNX Runtime's int8 graph of the same bundle (the text tower often stays on ONNX Runtime).
``variant="fp32"`` opens the fp32 IR for both towers, ``variant="int8"`` the int8 IR for both. Inference
precision is set explicitly (the export's, ``f32`` by default: OpenVINO's own CPU default is bf16, slower
without AMX and not the numbers the gates checked).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..bundle import Bundle, BundleError
from ..exporting.openvino import FP32, INT8, INSTALL, PERFORMANCE_HINTS, compile_ir, openvino_missing, require_openvino
from ..vocab import TOWERS
from .base import Encoder, EncoderInputError

BACKEND = "openvino"
OPENVINO_RUNTIME = "openvino"  # the word in a variant's ``runtimes`` for an IR


def openvino_status() -> str | None:
    """None when the backend can run here, else why not (with the install command)."""
    return openvino_missing()


def tower_plan(bundle: Bundle, variant: str | None = None) -> dict[str, str]:
    """Per tower, the variant to open: the manifest's ``runtime["openvino"]`` (default), else the int8 IR when
    written, else the fp32 IR; ``variant`` ``fp32``/``int8`` forces the fp32/int8 IR for both towers."""
    m = bundle.manifest
    have = m.variants
    if FP32 not in have:
        raise BundleError(f"{bundle.root} has no OpenVINO IR: export with `mope export MODEL -f openvino "
                          f"--eval-data SPEC --out DIR` ({INSTALL})")
    if variant in ("fp32", FP32):
        return {t: FP32 for t in TOWERS}
    if variant in ("int8", INT8):
        if INT8 not in have:
            why = m.refused_variants.get(INT8, "not exported")
            raise BundleError(f"{bundle.root}: the OpenVINO int8 IR was not written ({why}); use variant fp32 or "
                              "re-export with --eval-data")
        return {t: INT8 for t in TOWERS}
    if variant is not None:
        raise BundleError(f"unknown OpenVINO variant {variant!r}: use int8 or fp32 (default: the export's choice)")
    chosen = m.runtime.get(BACKEND)
    if chosen:
        return {t: chosen[t] for t in TOWERS}
    return {t: INT8 if INT8 in have else FP32 for t in TOWERS}


class OpenVINOEncoder(Encoder):
    """A bundle's OpenVINO IR per tower (or, where the export found it faster, ONNX Runtime's int8 graph)."""

    backend = BACKEND

    def __init__(self, bundle: str | Path, threads: int | None = None, variant: str | None = None,
                 hint: str = "LATENCY", precision: str | None = None, ort_settings: Any = None):
        ov = require_openvino()
        b = Bundle(bundle)
        super().__init__(b.config())
        if hint not in PERFORMANCE_HINTS:
            raise EncoderInputError(f"unknown OpenVINO performance hint {hint!r}: use one of {PERFORMANCE_HINTS}")
        self.bundle, self.threads, self.hint = b.root, threads, hint
        self.plan = tower_plan(b, variant)
        self.variant = INT8 if INT8 in self.plan.values() else FP32
        self.precision = precision
        core = ov.Core()
        self._run: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
        self.files: dict[str, str] = {}
        self._ort: Any = None
        for t in TOWERS:
            v = b.manifest.variants.get(self.plan[t])
            if v is None:
                raise BundleError(f"{b.manifest_path}: runtime section names variant {self.plan[t]!r}, which it does "
                                  "not list; re-export the bundle")
            path = b.root / v.files[t]
            if not path.is_file():
                raise BundleError(f"{path} not found: the manifest lists it; re-export the bundle")
            self.files[t] = path.name
            if OPENVINO_RUNTIME in v.runtimes:
                prec = precision or v.details.get("inference_precision", "f32")
                self._run[t] = _infer_fn(compile_ir(path, threads, prec, hint, core=core))
                self.precision = prec
            else:
                self._run[t] = self._ort_fn(b, t, self.plan[t], threads, ort_settings)

    @classmethod
    def from_model(cls, model: Any, work_dir: str | Path | None = None, **kwargs: Any) -> "OpenVINOEncoder":
        """Export a SlimCLIP into ``work_dir`` (default: a temporary directory this encoder owns) as a bundle with
        ONNX Runtime's calibrated int8 graphs and the OpenVINO IR (calibrated on the seeded synthetic set; no
        recall gate without evaluation data), then open it."""
        import tempfile

        from ..exporting.openvino import add_to_bundle
        from .export import export_model

        owned = None
        if work_dir is None:
            owned = tempfile.TemporaryDirectory(prefix="mope-openvino-")
            work_dir = owned.name
        bundle = export_model(model, Path(work_dir) / "bundle", int8=True)
        add_to_bundle(bundle, model)
        enc = cls(bundle, **kwargs)
        enc._owned_dir = owned  # the export lives as long as the encoder
        return enc

    def _ort_fn(self, b: Bundle, tower: str, variant: str, threads: int | None, settings: Any):
        from .onnxruntime_backend import OnnxRuntimeEncoder

        if self._ort is None:
            self._ort = OnnxRuntimeEncoder(b.root, threads=threads, variant=variant, settings=settings)
        return self._ort.run_images if tower == "vision" else self._ort.run_texts

    def run_images(self, pixels: np.ndarray) -> np.ndarray:
        return self._run["vision"](self.check_pixels(pixels))

    def run_texts(self, tokens: np.ndarray) -> np.ndarray:
        return self._run["text"](self.check_tokens(tokens).astype(np.int32, copy=False))

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "variant": self.variant, "device": "cpu", "towers": dict(self.plan),
                "inference_precision": self.precision, "performance_hint": self.hint,
                "threads": self.threads or "openvino-default", "files": dict(self.files)}


def _infer_fn(compiled: Any) -> Callable[[np.ndarray], np.ndarray]:
    req = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        try:
            req.infer({0: np.ascontiguousarray(x)})
        except RuntimeError as e:
            raise EncoderInputError(f"OpenVINO rejected a batch of shape {tuple(x.shape)}: "
                                    f"{str(e).splitlines()[0]}") from None
        return np.array(req.get_output_tensor(0).data, dtype=np.float32)
    return run


__all__ = ["OpenVINOEncoder", "openvino_status", "tower_plan", "BACKEND"]
