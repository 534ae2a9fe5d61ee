"""What a runtime needs from the exporter, through exporting's public steps only (never its orchestrator):
a SlimCLIP as an ONNX bundle (:func:`export_model`), and int8 copies of a bundle that has none
(:func:`int8_files`, with exporting's calibrated quantiser: batch-invariant)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..bundle import ONNXRUNTIME, Bundle, onnx_name
from ..vocab import TOWERS


def export_model(model: Any, out_dir: str | Path, int8: bool = False) -> Path:
    """Export a SlimCLIP to an ONNX bundle for ONNX Runtime (unnormalised embeddings: the encoder normalises):
    fp32 graphs, the ORT variants (optimized, fused) and with ``int8`` calibrated int8 ones (no recall
    gate: there is no evaluation data here; the parity gates still run)."""
    from ..exporting.config import ExportConfig
    from ..exporting.steps import export_onnx

    config = ExportConfig(precision="int8" if int8 else "fp32", skip_recall_gate=int8)
    export_onnx(model, out_dir, config, graphs_only=False)
    return Path(out_dir)


def int8_files(bundle: str | Path, work_dir: str | Path) -> dict[str, Path]:
    """The bundle's int8 graphs, or int8 copies quantised into ``work_dir`` (never into the bundle) from the
    graphs the manifest deploys on ONNX Runtime (fused ones become QAttention), with exporting's
    :func:`~mope_deploy.exporting.quantize.quantize_calibrated_int8` (activation scales from the seeded synthetic
    set through the bundle's preprocess/tokenizer)."""
    b = Bundle(bundle)
    found = b.variant_files("int8")
    if found:
        return found
    from ..exporting.quantize import quantize_calibrated_int8, synthetic_calibration

    chosen, src = b.runtime_files(ONNXRUNTIME)
    for tower, name in chosen.items():  # an fp16 deployment: quantise the plain fp32 graphs instead
        if b.manifest.variants[name].precision != "fp32":
            src[tower] = b.onnx(tower, "fp32")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    calib = None  # fixed activation scales from the synthetic set: embeddings do not depend on their batch
    out = {}
    for tower in TOWERS:
        name = onnx_name(tower, "int8")
        dst = work_dir / name
        if not dst.is_file():
            # quantise under the final name in a scratch dir (external weights refer to it by name), then move
            scratch = Path(tempfile.mkdtemp(prefix=".int8-", dir=work_dir))
            try:
                calib = calib or synthetic_calibration(b.config())
                quantize_calibrated_int8(src[tower], scratch / name, calib[tower], attention=True)
                for f in sorted(scratch.iterdir(), key=lambda f: f.name == name):  # graph last
                    f.replace(work_dir / f.name)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        out[tower] = dst
    return out


__all__ = ["export_model", "int8_files"]
