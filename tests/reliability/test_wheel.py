"""A built wheel works outside the checkout: recipes and export templates ship as package data.

The wheel is installed into a fresh venv that sees this environment's dependencies through a plain path
line in a .pth file (torch is not reinstalled; a path line does not run that folder's own .pth files, so the
checkout's editable install stays inactive), then `mope compress demo` (shortened with --set) and
`mope export demo --format onnx --format triton` run from a folder outside the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

SOURCES = ("pyproject.toml", "README.md", "mope_deploy", "recipes", "export")


def _run(cmd, cwd, env, timeout=600):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def test_wheel_runs_compress_and_export_outside_the_checkout(tmp_path):
    src = tmp_path / "src"             # build from a copy: building in place would write build/ into the checkout
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", tmp_path / "dist", src],
         tmp_path, env)
    wheel = next((tmp_path / "dist").glob("mope_deploy-*.whl"))

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, env)
    py = venv / "bin" / "python"
    purelib = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path,
                        env).stdout.strip())
    (purelib / "deps-from-dev-venv.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([*pip, "--python", py, "install", "--no-deps", "--no-index", "-q", wheel], tmp_path, env)

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    where = _run([py, "-c", "import mope_deploy; print(mope_deploy.__file__)"], outside, env).stdout.strip()
    assert Path(where).is_relative_to(venv) and not Path(where).is_relative_to(REPO), where

    mope = venv / "bin" / "mope"
    short = ["--set", "train.epochs=1", "--set", "train.steps_per_epoch=2", "--set", "train.batch_size=8",
             "--set", "data.val_max_images=12", "--set", "prune.method=magnitude",
             "--set", "prune.depth_method=every-other"]
    r = _run([mope, "compress", "demo", "--out", "run", "--quiet", "--threads", "1", *short], outside, env)
    assert "teacher vs student" in r.stdout
    report = json.loads((outside / "run" / "report.json").read_text())
    assert report["student"]["params"] < report["teacher"]["params"]
    assert json.loads((outside / "run" / "state.json").read_text())["recipe"]["train"]["steps_per_epoch"] == 2

    _run([mope, "export", "demo", "--out", "bundle", "--format", "onnx", "--format", "triton", "--no-optimize",
          "--batch-sizes", "1,2,4"], outside, env)
    manifest = json.loads((outside / "bundle" / "manifest.json").read_text())
    assert manifest["formats"] == ["onnx", "triton"]
    configs = sorted(p.relative_to(outside / "bundle").as_posix()
                     for p in (outside / "bundle").rglob("config.pbtxt"))
    assert configs and all(p.startswith("triton/") for p in configs)
