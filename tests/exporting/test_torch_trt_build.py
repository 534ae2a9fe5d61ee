"""torch-tensorrt programs against fakes of several releases' signatures: fp16 by converting the module, the
batch kept dynamic on save in the way each release honours, and the numeric gate on the reloaded program."""

from __future__ import annotations

import pytest
import torch

from export_helpers import tiny
from fakes import install_torch_tensorrt
from mope_deploy.exporting.tensorrt import EngineBuild
from mope_deploy.exporting.tensorrt import torch_trt as torch_trt_export
from mope_deploy.exporting.tensorrt import torch_trt_api
from mope_deploy.exporting.onnx import ExportError

pytestmark = pytest.mark.slow  # torch.export of both encoders per case (~5 s)


@pytest.mark.parametrize("release, precision", [("2.5", "fp16"), ("2.12", "fp16"), ("2.14", "fp32")])
def test_programs_compile_save_reload_and_pass_the_gate(tmp_path, monkeypatch, release, precision):
    fake = install_torch_tensorrt(monkeypatch, release)
    model = tiny()
    info = torch_trt_export.compile_torch_tensorrt(model, tmp_path, EngineBuild(precision, (1, 4, 8), device="cpu"))
    assert {t: e.file for t, e in info.engines.items()} == {"vision": f"image_encoder.{precision}.ep",
                                                            "text": f"text_encoder.{precision}.ep"}
    assert info.format == "torch-tensorrt" and info.precision == precision
    for tower in ("vision", "text"):
        gate = info.engines[tower].gate
        assert gate["passed"] and {"random@1", "random@4", "random@8"} <= set(gate["cases"])
    compiles = [c for c in fake.CALLS if c[0] == "compile"]
    kw = compiles[0][2]
    spec = compiles[0][3]
    assert (spec.min_shape, spec.opt_shape, spec.max_shape) == ((1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32))
    assert compiles[1][3].dtype == torch.int32
    saves = [c for c in fake.CALLS if c[0] == "save"]
    if release == "2.5":  # weak typing era: precisions as a set, no dynamic_shapes on save, keep symbolic batch
        assert kw["enabled_precisions"] == {torch.float32, torch.float16} and "use_explicit_typing" not in kw
        assert saves[0][2] == {"retrace": False}
    else:  # explicit typing / dynamo ignores enabled_precisions: the module carries the precision
        assert kw["enabled_precisions"] is None
        assert kw.get("use_explicit_typing", True) is True
        d = saves[0][2]["dynamic_shapes"][0][0]
        assert (d.min, d.max) == (1, 8)
    if precision == "fp16":
        # ln_pre/ln_post + 2 per block; ln_final + 2 per block
        assert {t: e.details["fp32_layernorms"] for t, e in info.engines.items()} == {"vision": 6, "text": 5}
    else:
        assert kw["disable_tf32"] is True
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is untouched


def test_a_program_whose_batch_was_fixed_is_refused(tmp_path, monkeypatch):
    """torch-tensorrt 2.9 re-traces on save by default and swallows ``dynamic_shapes``: the old exporter's call
    saved a program fixed to the example's batch. The gate runs the reloaded program at 1/opt/max and refuses."""
    install_torch_tensorrt(monkeypatch, "2.9")
    monkeypatch.setattr(torch_trt_api, "save_kwargs", lambda feats, name, bmax: {
        "output_format": "exported_program", "dynamic_shapes": {name: {0: torch.export.Dim("batch", min=1, max=bmax)}}})
    with pytest.raises(ExportError, match="refused by the numeric gate.*random@1"):
        torch_trt_export.compile_torch_tensorrt(tiny(), tmp_path, EngineBuild("fp32", (1, 4, 8), device="cpu"))
    assert not list(tmp_path.glob("*.ep"))


def test_fp16_with_enabled_precisions_raises_on_explicit_typing_releases(monkeypatch):
    """What the old exporter did (enabled_precisions={torch.float16}) on a 2.12-style release."""
    fake = install_torch_tensorrt(monkeypatch, "2.12")
    spec = fake.Input(min_shape=(1, 4), opt_shape=(2, 4), max_shape=(4, 4))
    with pytest.raises(ValueError, match="explicit_typing"):
        fake.compile(torch.nn.Linear(4, 4), ir="dynamo", arg_inputs=[spec], enabled_precisions={torch.float16})
    kw = torch_trt_api.compile_kwargs(fake, torch_trt_api.features(fake), "fp16")
    assert "enabled_precisions" not in kw and kw["use_explicit_typing"] is True


def test_int8_and_missing_library(tmp_path, monkeypatch):
    import sys

    install_torch_tensorrt(monkeypatch, "2.14")
    with pytest.raises(ValueError, match="ModelOpt"):  # ExportConfigError is a ValueError
        torch_trt_export.compile_torch_tensorrt(tiny(), tmp_path, EngineBuild("int8", device="cpu"))
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)
    with pytest.raises(torch_trt_export.TensorRTUnavailableError, match="not installed"):
        torch_trt_export.require_torch_tensorrt()


def test_recall_gate_on_fp16_programs(tmp_path, monkeypatch):
    from mope_deploy.exporting.config import EvalInputs

    install_torch_tensorrt(monkeypatch, "2.14")
    model = tiny()
    g = torch.Generator().manual_seed(0)
    images = torch.randn(8, 3, 32, 32, generator=g)
    tokens = torch_trt_export.random_tokens(model, 8, g)
    with torch.no_grad():  # label each caption with its best image, one-to-one: torch fp32 retrieves well
        sim = model.encode_text(tokens.long(), normalize=True) @ model.encode_image(images, normalize=True).T
    used, t2i = set(), []
    for row in sim:
        j = next(int(j) for j in row.argsort(descending=True) if int(j) not in used)
        used.add(j)
        t2i.append(j)
    ev = EvalInputs(images, tokens, torch.tensor(t2i))
    (tmp_path / "ok").mkdir()
    info = torch_trt_export.compile_torch_tensorrt(model, tmp_path / "ok", EngineBuild("fp16", (1, 4, 8), device="cpu",
                                                                                    max_recall_drop=1.0), calib=ev)
    assert info.recall_gate["passed"] and abs(info.recall_gate["recall_delta"]) <= 1.0
    real_load = torch_trt_export.load_program

    def noisy(path, device):  # a program that computes something else
        prog = real_load(path, device)
        return lambda x: prog(x) + 3.0 * torch.randn_like(prog(x)) * prog(x).abs().max()

    monkeypatch.setattr(torch_trt_export, "load_program", noisy)
    (tmp_path / "bad").mkdir()
    with pytest.raises(ExportError, match="Recall Mean"):
        loose = {"min_cosine": -1.0, "max_abs": 10.0}
        torch_trt_export.compile_torch_tensorrt(model, tmp_path / "bad", EngineBuild(
            "fp16", (1, 4, 8), device="cpu", thresholds=loose, max_recall_drop=1.0), calib=ev)
    assert not list((tmp_path / "bad").glob("*.ep"))
