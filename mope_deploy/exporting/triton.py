"""A Triton Inference Server model repository from an export bundle.

One model per encoder and backend: ``clip_image_onnx`` / ``clip_text_onnx`` (onnxruntime backend) and,
when engines were built, ``clip_image_trt`` / ``clip_text_trt`` (``tensorrt_plan``), each
``NAME/config.pbtxt`` + ``NAME/1/model.{onnx,plan}``. Configs are filled from the templates in the
top-level ``export/triton/`` folder (shipped as ``mope_deploy.templates``); batching is dynamic, so dims
leave the batch axis out. Model names use the deployed tower words (``image``/``text``, see :mod:`.bundle`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from string import Template
from typing import Any, Sequence

from ..models.slim_clip import SlimCLIP
from ..resources import TEMPLATES, read_text
from ..bundle.names import DEPLOY_NAMES, INPUT_NAMES, TRITON_DIR
from .config import ExportConfigError
from .onnx import input_shape

TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int32": "TYPE_INT32", "int64": "TYPE_INT64"}


def _template(backend: str) -> Template:
    return Template(read_text(TEMPLATES, "triton", f"{backend}.pbtxt.tmpl"))


def render_config(backend: str, name: str, input_name: str, input_dtype: str, input_dims: Sequence[int],
                  embed_dim: int, max_batch: int, preferred: Sequence[int], instance_kind: str = "KIND_GPU",
                  queue_delay_us: int = 100) -> str:
    """``config.pbtxt`` text for one encoder (``backend``: ``onnxruntime`` or ``tensorrt_plan``)."""
    if max_batch < 1:
        raise ExportConfigError(f"Triton max_batch_size must be >= 1 for dynamic batching, got {max_batch}")
    pref = sorted({int(p) for p in preferred if 1 <= int(p) <= max_batch}) or [max_batch]
    return _template(backend).substitute(
        name=name, input_name=input_name, input_dtype=TRITON_DTYPES[input_dtype],
        input_dims=", ".join(str(int(d)) for d in input_dims), embed_dim=int(embed_dim), max_batch_size=int(max_batch),
        preferred=", ".join(map(str, pref)), instance_kind=instance_kind, queue_delay_us=int(queue_delay_us))


def _place(src: Path, dst: Path) -> None:
    """Hard-link when possible (large weights are not duplicated on disk), else copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_repository(bundle_dir: str | Path, model: SlimCLIP, variant_files: dict[str, str],
                     engines: dict[str, str] | None = None, max_batch: int = 64,
                     preferred: Sequence[int] = (8, 64), prefix: str = "clip",
                     onnx_instance_kind: str | None = None) -> dict[str, Any]:
    """Write ``bundle_dir/triton/`` from the bundle's ONNX files (``variant_files``: tower -> file) and
    TensorRT engines (``engines``: tower -> engine file name); returns the model names and files."""
    bundle_dir = Path(bundle_dir)
    repo = bundle_dir / TRITON_DIR
    e = model.config.embed_dim
    kind = onnx_instance_kind or ("KIND_CPU" if "int8" in variant_files["vision"] else "KIND_GPU")
    models: dict[str, Any] = {}
    for tower, dtype in (("vision", "float32"), ("text", "int32")):
        input_name, dims, word = INPUT_NAMES[tower], input_shape(model, tower), DEPLOY_NAMES[tower]
        name = f"{prefix}_{word}_onnx"
        src = bundle_dir / variant_files[tower]
        _place(src, repo / name / "1" / "model.onnx")
        for data in src.parent.glob(src.name + ".data"):  # external weights keep the name the graph refers to
            _place(data, repo / name / "1" / data.name)
        (repo / name / "config.pbtxt").write_text(render_config(
            "onnxruntime", name, input_name, dtype, dims, e, max_batch, preferred, instance_kind=kind))
        models[name] = {"backend": "onnxruntime", "source": variant_files[tower], "tower": tower}
        if engines and tower in engines:
            name = f"{prefix}_{word}_trt"
            _place(bundle_dir / engines[tower], repo / name / "1" / "model.plan")
            (repo / name / "config.pbtxt").write_text(render_config(
                "tensorrt_plan", name, input_name, dtype, dims, e, max_batch, preferred))
            models[name] = {"backend": "tensorrt_plan", "source": engines[tower], "tower": tower}
    return {"repository": TRITON_DIR, "models": models, "max_batch_size": max_batch}
