"""The trainer across processes: torchrun data parallelism (gloo) and SIGKILL + resume, both with KD."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).with_name("train_script.py")
sys.path.insert(0, str(SCRIPT.parent))
import train_script  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SCRIPT.parents[2])}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reference(steps: int) -> dict[str, torch.Tensor]:
    torch.set_num_threads(1)
    t = train_script.trainer(None, steps)
    t.train()
    return t.model.state_dict()


def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path):
    steps = 4
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(_free_port())]
    res = subprocess.run([*torchrun, str(SCRIPT), str(tmp_path), str(steps)], env=ENV, capture_output=True,
                         text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    ddp = load_file(str(tmp_path / "final.safetensors"))
    ref = _reference(steps)
    diffs = {k: (ddp[k] - ref[k]).abs().max().item() for k in ref}
    assert max(diffs.values()) < 1e-4, sorted(diffs.items(), key=lambda kv: -kv[1])[:3]
    # and the run really trained: weights moved well beyond that tolerance
    start = train_script.models()[0].state_dict()
    assert max((ref[k] - start[k]).abs().max().item() for k in ref) > 1e-3
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == steps  # rank 0 alone logs


def test_sigkill_mid_run_then_resume_is_bit_identical(tmp_path):
    steps = 8
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(tmp_path), str(steps), "--slow"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "final.safetensors").exists()
    killed_at = len(metrics.read_text().splitlines())
    assert 3 <= killed_at < steps
    res = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), str(steps)], env=ENV, capture_output=True,
                         text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    resumed = load_file(str(tmp_path / "final.safetensors"))
    ref = _reference(steps)
    assert all(torch.equal(resumed[k], ref[k]) for k in ref)
    lines = metrics.read_text().splitlines()
    assert [int(__import__("json").loads(x)["step"]) for x in lines] == list(range(1, steps + 1))
