"""ONNX Runtime backend: an export bundle (``image_encoder.onnx``, ``text_encoder.onnx``, ``manifest.json``)
run on the CPU, or on CUDA / TensorRT execution providers when the installed onnxruntime has them.

``variant`` picks the bundle's graphs: ``fp32``, ``optimized`` (ORT transformer fusions; the default when
present), ``fp16`` or ``int8`` (dynamic quantisation: the bundle's own files, else quantised once into
``work_dir`` with the exporter's :func:`~mope_deploy.exporting.variants.quantize_int8`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..models.config import CLIPConfig, ConfigError
from .base import BackendUnavailableError, Encoder, EncoderInputError

IMAGE_FILE, TEXT_FILE, MANIFEST_FILE = "image_encoder.onnx", "text_encoder.onnx", "manifest.json"
#: provider preference when none is given (TensorRT EP is opt-in: it builds engines on first use)
DEFAULT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


class BundleError(ValueError):
    """An export bundle that is missing files or whose files do not fit together."""


def _ort():
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - onnxruntime is a dependency
        raise BackendUnavailableError(f"onnxruntime is not installed ({e}); pip install onnxruntime") from None
    return ort


def read_bundle_config(bundle: str | Path) -> CLIPConfig:
    """The model config stored with an export bundle (``manifest.json``'s ``config``, or ``config.json``)."""
    bundle = Path(bundle)
    manifest = bundle / MANIFEST_FILE
    if not manifest.is_file():
        raise BundleError(f"{bundle} is not an export bundle: {MANIFEST_FILE} not found "
                          "(write one with `mope export MODEL --out DIR` / mope_deploy.exporting.onnx.export_onnx)")
    try:
        m = json.loads(manifest.read_text())
        d = m.get("config")
        if d is None and (bundle / "config.json").is_file():
            d = json.loads((bundle / "config.json").read_text())
        if d is None:
            raise BundleError(f"{manifest} has no 'config' (and no config.json beside it): the bundle does not say "
                              "how to preprocess images and tokenise text; re-export it")
        return CLIPConfig.from_dict(d)
    except (json.JSONDecodeError, ConfigError, TypeError) as e:
        raise BundleError(f"{manifest}: not a valid manifest ({e}); re-export the bundle") from None


def read_manifest(bundle: str | Path) -> dict[str, Any]:
    path = Path(bundle) / MANIFEST_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: cannot read the manifest ({e})") from None


VARIANTS = ("fp32", "optimized", "int8", "fp16")


def variant_files(bundle: str | Path, variant: str) -> tuple[Path, Path] | None:
    """The (image, text) files of ``variant`` in a bundle (as listed in the manifest), or None if absent."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    listed = (manifest.get("variants") or {}).get(variant, {}).get("files")
    if listed is None and isinstance(manifest.get(variant), dict):
        listed = manifest[variant]
    if listed is None:
        listed = ({"image": IMAGE_FILE, "text": TEXT_FILE} if variant == "fp32" else
                  {"image": f"image_encoder.{variant}.onnx", "text": f"text_encoder.{variant}.onnx"})
    paths = bundle / listed["image"], bundle / listed["text"]
    return paths if all(p.is_file() for p in paths) else None


def int8_files(bundle: Path, work_dir: str | Path) -> tuple[Path, Path]:
    """The bundle's int8 encoders, or int8 copies quantised into ``work_dir`` from its best fp32 graphs
    (the ORT-optimised ones when present: ORT advises fusing before quantising)."""
    found = variant_files(bundle, "int8")
    if found:
        return found
    from ..exporting.variants import quantize_int8

    src = variant_files(bundle, "optimized") or variant_files(bundle, "fp32")
    assert src is not None  # the encoder checked the fp32 files exist
    import shutil
    import tempfile

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for path, name in zip(src, ("image_encoder.int8.onnx", "text_encoder.int8.onnx")):
        dst = work_dir / name
        if not dst.is_file():
            # quantise under the final name in a scratch dir (external weights refer to it by name), then move
            scratch = Path(tempfile.mkdtemp(prefix=".int8-", dir=work_dir))
            try:
                quantize_int8(path, scratch / name)
                for f in sorted(scratch.iterdir(), key=lambda f: f.name == name):  # graph last
                    f.replace(work_dir / f.name)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        out.append(dst)
    return out[0], out[1]


class OnnxRuntimeEncoder(Encoder):
    """An export bundle on ONNX Runtime (graph optimisations on, ``threads`` intra-op threads).

    Inputs and outputs go through host numpy arrays, so GPU timings include the copies (as a service pays them).
    """

    def __init__(self, bundle: str | Path, providers: list[str] | None = None, threads: int | None = None,
                 variant: str | None = None, work_dir: str | Path | None = None, config: CLIPConfig | None = None):
        ort = _ort()
        bundle = Path(bundle)
        for f in (IMAGE_FILE, TEXT_FILE):
            if not (bundle / f).is_file():
                raise BundleError(f"{bundle / f} not found: an export bundle holds {IMAGE_FILE}, {TEXT_FILE} and "
                                  f"{MANIFEST_FILE}; re-export the model")
        super().__init__(config or read_bundle_config(bundle))
        if variant is not None and variant not in VARIANTS:
            raise ValueError(f"unknown ONNX variant {variant!r}: use one of {', '.join(VARIANTS)}")
        if variant == "int8" and work_dir is None and variant_files(bundle, "int8") is None:
            raise ValueError(f"{bundle} has no int8 graphs: pass work_dir= to quantise them there, or export with "
                             "--precision int8")
        # default: ORT's fused fp32 graphs when the exporter wrote them (same numbers, fewer kernels)
        self.variant = variant or ("optimized" if variant_files(bundle, "optimized") else "fp32")
        self.bundle, self.threads = bundle, threads
        self.backend = "onnxruntime-int8" if self.variant == "int8" else "onnxruntime"
        available = ort.get_available_providers()
        if providers:
            missing = [p for p in providers if p not in available]
            if missing:
                raise BackendUnavailableError(f"ONNX Runtime provider(s) {missing} not available here; available: "
                                              f"{available}")
            self.providers = list(providers)
        else:
            self.providers = [p for p in DEFAULT_PROVIDERS if p in available]
        if self.variant == "int8":
            image_path, text_path = int8_files(bundle, work_dir)  # type: ignore[arg-type]
        else:
            found = variant_files(bundle, self.variant)
            if found is None:
                raise BundleError(f"{bundle} has no {self.variant} graphs; re-export with that variant or pick another")
            image_path, text_path = found
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # quantised graphs warn about every unfused node otherwise
        self.files = {"image": str(image_path), "text": str(text_path)}
        self.image_session = self._session(ort, image_path, opts)
        self.text_session = self._session(ort, text_path, opts)
        self._image_in, self._image_dtype = self._check_io(self.image_session, image_path, "image",
                                                           [None, 3, self.config.vision.image_size,
                                                            self.config.vision.image_size])
        self._text_in, self._text_dtype = self._check_io(self.text_session, text_path, "tokens",
                                                         [None, self.context_length])

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
        gpu = self.providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        return {"backend": self.backend, "variant": self.variant, "device": "cuda" if gpu else "cpu",
                "providers": self.providers, "threads": self.threads or "ort-default",
                "files": {k: Path(v).name for k, v in self.files.items()}}
