"""The bundle's file names, owned here and only here: graphs per tower and variant, engines, programs, the
Triton folder, the manifest, and the ownership rule for a bundle folder.

Layout of a bundle::

    image_encoder.onnx, text_encoder.onnx          fp32 reference graphs (always)
    *.onnx.data                                    external weights of large graphs
    {image,text}_encoder.{variant}.onnx            variants: optimized (ORT fusions), fused, int8, fp16
    {image,text}_encoder.{precision}.engine        TensorRT engines, with tensorrt_build.log
    {image,text}_encoder.{precision}.ep            torch-tensorrt programs (torch.export)
    triton/                                        a Triton model repository
    manifest.json                                  the typed manifest (:mod:`.manifest`)

Towers are ``vision`` and ``text`` in Python and in the manifest. Deployed names keep the word ``image`` for the
vision tower (file names, the image graph's input ``image``, Triton model names): clients already hold them.
"""

from __future__ import annotations

from ..atomic import Owner
from ..errors import MopeError
from ..vocab import TOWERS, VARIANTS

MANIFEST_FILE = "manifest.json"
#: the word for each tower in deployed names (files, graph inputs, Triton models)
DEPLOY_NAMES = {"vision": "image", "text": "text"}
#: each graph's input tensor name; the output is always OUTPUT_NAME
INPUT_NAMES = {"vision": "image", "text": "tokens"}
OUTPUT_NAME = "embedding"
BUILD_LOG_FILE = "tensorrt_build.log"
TIMING_CACHE_FILE = "tensorrt_timing.cache"
TRITON_DIR = "triton"
#: how to write a bundle again, quoted by every refusal of an unreadable one
REEXPORT = "re-export it: mope export MODEL --out DIR --force"
#: The ownership rule for ``--out`` (mope_deploy.atomic): a folder with a manifest that holds only bundle files
#: may be replaced by a new export; anything else only with --force.
BUNDLE_OWNER = Owner("export bundle", markers=[(MANIFEST_FILE,)],
                     allowed=(MANIFEST_FILE, "image_encoder*", "text_encoder*", BUILD_LOG_FILE, TIMING_CACHE_FILE,
                              TRITON_DIR))


class BundleError(MopeError, ValueError):
    """An export bundle that is missing files, whose files do not fit together, or whose manifest is unreadable."""


def check_tower(tower: str) -> None:
    if tower not in TOWERS:
        raise ValueError(f"unknown tower {tower!r}: use one of {', '.join(TOWERS)}")


def encoder_stem(tower: str) -> str:
    """``image_encoder`` / ``text_encoder``: the stem of every file of ``tower``."""
    check_tower(tower)
    return f"{DEPLOY_NAMES[tower]}_encoder"


def onnx_name(tower: str, variant: str = "fp32") -> str:
    """``image_encoder.onnx`` (fp32) or ``image_encoder.<variant>.onnx``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown ONNX variant {variant!r}: use one of {', '.join(VARIANTS)}")
    return f"{encoder_stem(tower)}{'' if variant == 'fp32' else '.' + variant}.onnx"


def variant_names(variant: str) -> dict[str, str]:
    """``{tower: file name}`` of one ONNX variant."""
    return {t: onnx_name(t, variant) for t in TOWERS}


def engine_name(tower: str, precision: str) -> str:
    """``image_encoder.<precision>.engine`` (TensorRT)."""
    return f"{encoder_stem(tower)}.{precision}.engine"


def program_name(tower: str, precision: str) -> str:
    """``image_encoder.<precision>.ep`` (torch-tensorrt ExportedProgram)."""
    return f"{encoder_stem(tower)}.{precision}.ep"


def trt_graph_name(tower: str, precision: str) -> str:
    """``image_encoder.trt-<precision>.onnx``: the graph a TensorRT engine of ``precision`` is built from."""
    return f"{encoder_stem(tower)}.trt-{precision}.onnx"


def calibration_cache_name(tower: str) -> str:
    """``image_encoder.int8.calib.cache``: TensorRT 10's implicit int8 calibration cache."""
    return f"{encoder_stem(tower)}.int8.calib.cache"


__all__ = ["MANIFEST_FILE", "DEPLOY_NAMES", "INPUT_NAMES", "OUTPUT_NAME", "BUILD_LOG_FILE", "TIMING_CACHE_FILE",
           "TRITON_DIR", "REEXPORT", "BUNDLE_OWNER", "BundleError", "check_tower", "encoder_stem", "onnx_name",
           "variant_names", "engine_name", "program_name", "trt_graph_name", "calibration_cache_name"]
