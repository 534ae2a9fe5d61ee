"""`kill -9` of `mope sparsify --recover sparselora` at three points (issue 22): right after its work folder is
claimed, after the first SparseLoRA checkpoint, and at step 5 of 8 (between the second and the third). The same
command run again completes without any clean-up, removes its work folder, leaves no temporary, and writes exactly
the model an uninterrupted run writes (tensor for tensor). (`kill -9` of `mope index`: the serve suite.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mope_deploy.models import SlimCLIP, save_model
from mope_deploy.models.tiny import tiny_config
from reliability_helpers import tree

pytestmark = pytest.mark.slow

# The global RNG is seeded first: SparseLoRA's adapters are initialised from it before training starts (an
# unseeded run differs from the next one; reported in issue 22's closing note), and the comparison below is about
# resuming, not about that.
MOPE = ("import sys, torch; torch.manual_seed(0); from mope_deploy.cli.app import main; sys.argv[0] = 'mope'; "
        "main()")
ARGS = ["--method", "magnitude", "--sparsity", "0.5", "--data", "synthetic", "--samples", "8", "--recover",
        "sparselora", "--recover-steps", "8", "--recover-batch", "4", "--threads", "1", "-q"]
# 8 steps, a checkpoint every 2 (steps 2, 4, 6, 8), a metrics.jsonl line every step


def _start(teacher: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", MOPE, "sparsify", str(teacher), *ARGS, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _run(teacher: Path, out: Path) -> str:
    p = _start(teacher, out)
    output, _ = p.communicate(timeout=600)
    assert p.returncode == 0, output
    return output


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_model(SlimCLIP(tiny_config()).eval(), tmp_path_factory.mktemp("kill") / "teacher")


@pytest.fixture(scope="module")
def reference(teacher, tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("ref") / "out"
    _run(teacher, out)
    return load_file(str(out / "model.safetensors"))


def _point(name: str, work: Path):
    """A condition on the work folder that says "kill now"."""
    def logged(step: int) -> bool:
        try:
            lines = (work / "metrics.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return False
        return any(json.loads(ln).get("step", 0) >= step for ln in lines[-3:] if ln.endswith("}"))

    return {"work-folder-claimed": lambda: (work / ".mope-work").is_file(),
            "first-checkpoint": lambda: (work / "last.pt").is_file(),
            "step-5": lambda: logged(5)}[name]


@pytest.mark.parametrize("point", ["work-folder-claimed", "first-checkpoint", "step-5"])
def test_kill_9_then_rerun_equals_an_uninterrupted_run(point, teacher, reference, tmp_path):
    out = tmp_path / "out"
    work = tmp_path / ".out.sparselora"
    ready = _point(point, work)
    p = _start(teacher, out)
    t0 = time.monotonic()
    try:
        while not ready():
            assert p.poll() is None, f"the run ended before the kill point {point}: {p.stdout.read()}"
            assert time.monotonic() - t0 < 300, f"kill point {point} never reached"
            time.sleep(0.005)
        p.send_signal(signal.SIGKILL)
    finally:
        p.kill()
        p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL
    assert not out.exists(), "killed before its model was written"
    assert (work / ".mope-work").is_file()

    _run(teacher, out)                                    # the same command; nothing cleaned up by hand
    got = load_file(str(out / "model.safetensors"))
    assert got.keys() == reference.keys()
    assert all(torch.equal(got[k], reference[k]) for k in reference), "the resumed run differs"
    assert not work.exists(), "the work folder was not removed"
    assert not [k for k in tree(tmp_path) if ".tmp-" in k or ".old-" in k]
