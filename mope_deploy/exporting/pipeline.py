"""One export run: the orchestrator over the steps of :mod:`.steps` (which never call back here).

Everything is written into a temporary sibling of ``out_dir`` and renamed into place only when every gate passed
(:class:`mope_deploy.atomic.Output`), so a refused export leaves ``out_dir`` exactly as it was (absent, or the
previous bundle). File names and the manifest: :mod:`mope_deploy.bundle`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..atomic import Output
from ..bundle.directory import Bundle
from ..bundle.manifest import Manifest
from ..bundle.names import BUNDLE_OWNER
from ..models.slim_clip import SlimCLIP
from . import steps
from .config import EvalInputs, ExportConfig, ExportConfigError


def preflight(config: ExportConfig, eval_inputs: EvalInputs | None = None) -> None:
    """Every refusal that needs no work: bad settings, missing data, missing GPU libraries (callers run it
    before loading a model; :func:`export_bundle` runs it again)."""
    config.check()
    has_data = config.eval_data is not None or (eval_inputs is not None and eval_inputs.labelled)
    why = None if has_data else config.needs_eval_data()
    if why:
        raise ExportConfigError(why)
    from . import tensorrt as trt

    if "tensorrt" in config.formats:
        trt.require_tensorrt()
    if "openvino" in config.formats:
        from .openvino import require_openvino

        require_openvino(int8=True)
    if "torch-tensorrt" in config.formats:
        if config.precision == "int8":
            raise ExportConfigError("torch-tensorrt int8 needs a ModelOpt-quantised model: use --format tensorrt for "
                                    "int8 (Q/DQ engines) or --precision fp16")
        trt.require_torch_tensorrt()


def export_bundle(model: SlimCLIP, out_dir: str | Path, config: ExportConfig | None = None,
                  eval_inputs: EvalInputs | None = None, *, log: Callable[[str], None] | None = None,
                  progress: bool = False, force: bool = False) -> Manifest:
    """Export ``model`` to ``out_dir`` as ``config`` says and return the manifest written.

    ``out_dir`` may be absent, empty or an earlier bundle (:data:`~mope_deploy.bundle.BUNDLE_OWNER`); ``force``
    replaces anything else, but only once the new bundle is complete and passed its gates."""
    config = config or ExportConfig()
    preflight(config, eval_inputs)
    output = Output(Path(out_dir), BUNDLE_OWNER, force).check()
    run = steps.prepare(model, config, eval_inputs, log, progress)
    with output.write() as tmp:
        run.root = Path(tmp)
        steps.onnx_steps(run)
        deploy, runtime = steps.runtime_section(run.variants, config.precision, run.base)
        if "openvino" in config.formats:
            chosen = steps.openvino_step(run)
            if chosen:
                runtime["openvino"] = chosen
        if "tensorrt" in config.formats:
            run.engines["tensorrt"] = steps.engines_step(run)
        if "torch-tensorrt" in config.formats:
            run.engines["torch-tensorrt"] = steps.torch_tensorrt_step(run)
        triton = steps.triton_step(run, deploy) if "triton" in config.formats else None
        return Bundle(tmp).write_manifest(steps.manifest_of(run, deploy, runtime, triton))


def export_spec(spec: str, out_dir: str | Path, config: ExportConfig, *, force: bool = False,
                log: Callable[[str], None] | None = None, progress: bool = False) -> Manifest:
    """``mope export``: every refusal (settings, data, GPU libraries, ``--out``) before the model ``spec`` is
    loaded, then :func:`export_bundle`."""
    preflight(config)
    Output(Path(out_dir), BUNDLE_OWNER, force).check()
    if log:
        log(f"loading {spec}")
    from ..models import load

    return export_bundle(load(spec), out_dir, config, log=log, progress=progress, force=force)


__all__ = ["export_bundle", "export_spec", "preflight"]
