"""ONNX Runtime backend: an export bundle (``image_encoder.onnx``, ``text_encoder.onnx``, ``manifest.json``)
run on the CPU, or on CUDA / TensorRT execution providers when the installed onnxruntime has them.

By default each tower opens the variant the manifest's ``runtime`` section names for ONNX Runtime (``portable``
under TensorRT's execution provider, which reads standard ops only): the exporter decided it once, the runtime
does not re-decide. ``variant`` overrides it: ``fp32``, ``fused``, ``optimized``, ``fp16`` or ``int8`` (the
bundle's own files, else quantised once into ``work_dir``: :func:`.export.int8_files`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import ONNXRUNTIME, PORTABLE, Bundle, BundleError, onnx_name
from ..models.config import CLIPConfig
from ..vocab import TOWERS, VARIANTS
from .base import BackendUnavailableError, Encoder, EncoderInputError
from .ort_settings import SessionSettings

#: provider preference when none is given (TensorRT EP is opt-in: it builds engines on first use)
DEFAULT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


def _ort():
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - onnxruntime is a dependency
        raise BackendUnavailableError(f"onnxruntime is not installed ({e}); pip install onnxruntime") from None
    return ort


class OnnxRuntimeEncoder(Encoder):
    """An export bundle on ONNX Runtime (graph optimisations on, ``threads`` intra-op threads).

    Inputs and outputs go through host numpy arrays, so GPU timings include the copies (as a service pays them).
    :meth:`from_model` exports a SlimCLIP first, into a temporary directory the encoder owns (removed with it).
    """

    def __init__(self, bundle: str | Path, providers: list[str] | None = None, threads: int | None = None,
                 variant: str | None = None, work_dir: str | Path | None = None, config: CLIPConfig | None = None,
                 settings: SessionSettings | None = None):
        ort = _ort()
        b = Bundle(bundle)
        bundle = b.root
        for t in TOWERS:
            if not b.onnx(t).is_file():
                names = ", ".join(onnx_name(x) for x in TOWERS)
                raise BundleError(f"{b.onnx(t)} not found: an export bundle holds {names} and its manifest; "
                                  "re-export the model")
        super().__init__(config or b.config())
        if variant is not None and variant not in VARIANTS:
            raise BundleError(f"unknown ONNX variant {variant!r}: use one of {', '.join(VARIANTS)}")
        self._owned_dir = None
        if variant == "int8" and work_dir is None and b.variant_files("int8") is None:
            # quantise into a directory this encoder owns: never write into the user's bundle
            import tempfile

            self._owned_dir = tempfile.TemporaryDirectory(prefix="mope-int8-")
            work_dir = self._owned_dir.name
        available = ort.get_available_providers()
        if providers:
            missing = [p for p in providers if p not in available]
            if missing:
                raise BackendUnavailableError(f"ONNX Runtime provider(s) {missing} not available here; available: "
                                              f"{available}")
            self.providers = list(providers)
        else:
            self.providers = [p for p in DEFAULT_PROVIDERS if p in available]
        self.variant, paths = self._graphs(b, variant, work_dir)
        self.bundle, self.threads = bundle, threads
        self.settings = (settings or SessionSettings()).replace(
            intra_op_threads=threads or (settings.intra_op_threads if settings else None))
        self.backend = "onnxruntime-int8" if self.variant == "int8" else "onnxruntime"
        image_path, text_path = paths["vision"], paths["text"]
        opts = self.settings.session_options()
        self.files = {"image": str(image_path), "text": str(text_path)}
        self.image_session = self._session(ort, image_path, opts)
        self.text_session = self._session(ort, text_path, opts)
        self._image_in, self._image_dtype = self._check_io(self.image_session, image_path, "image",
                                                           [None, 3, self.config.vision.image_size,
                                                            self.config.vision.image_size])
        self._text_in, self._text_dtype = self._check_io(self.text_session, text_path, "tokens",
                                                         [None, self.context_length])

    def _graphs(self, b: Bundle, variant: str | None, work_dir: str | Path | None) -> tuple[str, dict[str, Path]]:
        """(variant name, {tower: path}): ``variant`` when given, else what the manifest's runtime section names."""
        if variant == "int8":
            from .export import int8_files

            return "int8", int8_files(b.root, work_dir)  # type: ignore[arg-type]
        if variant is not None:
            found = b.variant_files(variant)
            if found is None:
                raise BundleError(f"{b.root} has no {variant} graphs; re-export with that variant or pick another")
            return variant, found
        key = PORTABLE if "TensorrtExecutionProvider" in self.providers else ONNXRUNTIME
        chosen, paths = b.runtime_files(key)
        return "/".join(dict.fromkeys(chosen.values())), paths

    @classmethod
    def from_model(cls, model: Any, int8: bool = False, work_dir: str | Path | None = None,
                   **kwargs: Any) -> "OnnxRuntimeEncoder":
        """Export ``model`` (a SlimCLIP) into ``work_dir`` (default: a temporary directory this encoder owns
        and removes when it is garbage-collected) and open the result."""
        import tempfile

        owned = None
        if work_dir is None:
            owned = tempfile.TemporaryDirectory(prefix="mope-onnx-")
            work_dir = owned.name
        from .export import export_model

        bundle = export_model(model, Path(work_dir) / "bundle", int8=int8)
        variant = kwargs.pop("variant", None)  # popped either way: int8 overrides it (passing both was a TypeError)
        enc = cls(bundle, variant="int8" if int8 else variant, work_dir=work_dir, **kwargs)
        enc._owned_dir = owned  # the export lives as long as the encoder
        return enc

    def _session(self, ort, path: Path, opts):
        try:
            return ort.InferenceSession(str(path), sess_options=opts, providers=self.providers)
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types
            raise BundleError(f"{path}: ONNX Runtime cannot load it ({str(e).splitlines()[0]}); re-export the "
                              "bundle") from None

    def _check_io(self, session, path: Path, name: str, shape: list[int | None]) -> tuple[str, type]:
        ins = session.get_inputs()
        if len(ins) != 1 or ins[0].name != name:
            raise BundleError(f"{path}: expected one input named {name!r}, found {[i.name for i in ins]}; "
                              "the file is not an encoder from this toolchain's exporter")
        for i, (want, got) in enumerate(zip(shape, ins[0].shape)):
            if want is not None and isinstance(got, int) and got != want:
                raise BundleError(f"{path}: input {name!r} dim {i} is {got} but the bundle's config says {want}; "
                                  "the ONNX file and the manifest belong to different models")
        outs = session.get_outputs()
        e = outs[0].shape[-1] if outs and outs[0].shape else None
        if isinstance(e, int) and e != self.config.embed_dim:
            raise BundleError(f"{path}: output width {e} but the config's embed_dim is {self.config.embed_dim}; "
                              "the ONNX file and the manifest belong to different models")
        dtypes = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int32)": np.int32,
                  "tensor(int64)": np.int64}
        return ins[0].name, dtypes.get(ins[0].type, np.float32)

    def run_images(self, pixels: np.ndarray) -> np.ndarray:
        x = self.check_pixels(pixels).astype(self._image_dtype, copy=False)
        return self._run(self.image_session, self._image_in, x)

    def run_texts(self, tokens: np.ndarray) -> np.ndarray:
        x = self.check_tokens(tokens).astype(self._text_dtype, copy=False)
        return self._run(self.text_session, self._text_in, x)

    def _run(self, session, name: str, x: np.ndarray) -> np.ndarray:
        try:
            return np.asarray(session.run(None, {name: x})[0], dtype=np.float32)
        except Exception as e:
            msg = str(e).splitlines()[0]
            raise EncoderInputError(f"ONNX Runtime rejected a batch of shape {tuple(x.shape)}: {msg}") from None

    def timing_fn(self, tower: str, inputs: np.ndarray):
        if tower == "vision":
            x = self.check_pixels(inputs).astype(self._image_dtype)
            session, name = self.image_session, self._image_in
        else:
            x = self.check_tokens(inputs).astype(self._text_dtype)
            session, name = self.text_session, self._text_in
        feed = {name: x}
        return lambda: session.run(None, feed)

    def describe(self) -> dict[str, Any]:
        # what the sessions actually run on: ORT falls back to the CPU provider silently when a requested GPU
        # provider cannot load (missing CUDA/cuDNN libraries), so the requested list can be wrong
        actual = list(self.image_session.get_providers())
        gpu = actual[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        return {"backend": self.backend, "variant": self.variant, "device": "cuda" if gpu else "cpu",
                "providers": actual, "requested_providers": self.providers,
                "text_providers": list(self.text_session.get_providers()),
                "threads": self.threads or "ort-default", "session_settings": self.settings.to_dict(),
                "files": {k: Path(v).name for k, v in self.files.items()}}
