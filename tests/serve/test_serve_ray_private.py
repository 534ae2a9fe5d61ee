"""A local Ray confined to loopback: `mope index --ray` runs its Ray in a private network namespace (checked from
outside with psutil and /proc, not with the code under test), failures come back typed, `mope serve --ray` refuses
to start a local Ray without --allow-remote."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")
psutil = pytest.importorskip("psutil")

from mope_deploy.serve import netns  # noqa: E402
from mope_deploy.serve.build import IndexJob, RayOptions, build  # noqa: E402
from mope_deploy.serve.errors import ServeError  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
RAY_SERVICES = {"raylet", "gcs_server"}


def _net_ns(pid: int | str = "self") -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def _interfaces(pid: int) -> set[str]:
    """Naive reference for netns.interfaces: the names before ':' in /proc/PID/net/dev."""
    with open(f"/proc/{pid}/net/dev") as f:
        return {line.split(":")[0].strip() for line in f if ":" in line}


def _listening(pid: int) -> set[str]:
    """Naive reference: ``hexaddr:port`` of the listening TCP sockets ``pid`` owns, read from the tables of its own
    network namespace (psutil reads the caller's, where a private namespace's sockets do not appear)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        link = os.readlink(f"/proc/{pid}/fd/{fd}")
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    found = set()
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for row in f.readlines()[1:]:
                cols = row.split()
                if cols[3] == "0A" and cols[9] in inodes:                    # 0A: TCP_LISTEN
                    addr, port = cols[1].split(":")
                    found.add(f"{addr}:{int(port, 16)}")
    return found


def _watch(proc: subprocess.Popen, limit_s: float = 300.0) -> dict[int, dict]:
    """Every descendant of ``proc`` seen while it runs: name, network namespace, its interfaces, its listening
    sockets in its own namespace, and whether this (the host's) namespace sees it listen (psutil)."""
    seen: dict[int, dict] = {}
    t_end = time.monotonic() + limit_s
    while proc.poll() is None and time.monotonic() < t_end:
        kids = psutil.Process(proc.pid).children(recursive=True) if psutil.pid_exists(proc.pid) else []
        host_listeners = {c.pid for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
        for p in kids:
            try:
                listen = _listening(p.pid)
                rec = seen.setdefault(p.pid, {"name": p.name(), "ns": _net_ns(p.pid), "ifaces": _interfaces(p.pid),
                                              "loopback_only": netns.loopback_only(p.pid), "listen": set(),
                                              "host_listen": False})
            except (psutil.Error, OSError):
                continue
            rec["listen"].update(listen)
            rec["host_listen"] |= p.pid in host_listeners
        time.sleep(0.2)
    return seen


def test_mope_index_ray_default_runs_ray_in_a_private_network(tmp_path, demo_encoder):
    """Default flags, no Ray running: the build completes, and no Ray process listens on any address of this
    host's network (its sockets live in a namespace whose only interface is loopback)."""
    out = tmp_path / "private.index"
    cmd = [sys.executable, "-c", "from mope_deploy.cli.app import main; main()", "index", "synthetic:val", "--model",
           "demo", "--out", str(out), "--ray", "--backend", "torch", "--threads", "1", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = _watch(proc)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output
    assert "private network namespace" in " ".join(output.split())
    ray_procs = [r for r in seen.values() if r["name"] in RAY_SERVICES]
    assert ray_procs and any(r["listen"] for r in ray_procs), seen        # the watch did see Ray's servers listen
    listening = [r for r in seen.values() if r["listen"]]
    assert all(r["ns"] != _net_ns() and "lo" in r["ifaces"] and r["loopback_only"] for r in listening), listening
    assert not [r for r in seen.values() if r["host_listen"]]             # nothing in the host's namespace
    from mope_deploy.serve.build import load_collection
    from mope_deploy.serve.index import EmbeddingIndex, model_fingerprint

    idx = EmbeddingIndex.open(out, model_fingerprint("demo"))
    np.testing.assert_allclose(idx.embeddings(), demo_encoder.encode_images(load_collection("synthetic:val").images),
                               atol=1e-5)
    assert not (tmp_path / ".private.index.partial").exists()


def test_exposed_listeners_ignores_a_loopback_only_namespace():
    """Inside a private network a socket bound to 0.0.0.0 is reachable on loopback only: psutil sees it listen there,
    exposed_listeners does not report it (the same bind on the host's network is reported: test_serve_ray.py)."""
    code = (f"import json,os,runpy,socket; m=runpy.run_path({netns.__file__!r}); m['enter_private_network']()\n"
            "s=socket.socket(); s.bind(('0.0.0.0',0)); s.listen()\n"
            "import psutil; from mope_deploy.serve.ray_cluster import exposed_listeners\n"
            "seen=[c.laddr.ip for c in psutil.Process().net_connections('inet') if c.status==psutil.CONN_LISTEN]\n"
            "print(json.dumps({'seen': seen, 'exposed': exposed_listeners([os.getpid()]),\n"
            "                  'addresses': m['addresses']()}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.splitlines()[-1])
    assert got["seen"] == ["0.0.0.0"] and got["exposed"] == []
    assert got["addresses"] in (["127.0.0.1", "::1"], ["127.0.0.1"])     # ::1 unless IPv6 is off


@pytest.mark.skipif(not shutil.which("ip"), reason="iproute2's ip is the reference here")
def test_addresses_match_iproute2():
    """netns.addresses of this process's namespace against `ip -o addr` (the naive reference)."""
    out = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    want = {str(ipaddress.ip_interface(line.split()[3]).ip) for line in out.splitlines()}
    assert set(netns.addresses()) == want
    assert netns.loopback_only() == all(ipaddress.ip_address(a).is_loopback for a in want)


def test_namespace_refused_is_a_clear_error():
    """The kernel's refusal comes back as PrivateNetworkError naming the cause: a real refusal, for root one without
    CAP_SYS_ADMIN (dropped from the bounding set by setpriv), otherwise a threaded process asking for a user
    namespace."""
    code = (f"import runpy,threading,time; m=runpy.run_path({netns.__file__!r});"
            "threading.Thread(target=time.sleep, args=(5,), daemon=True).start();\n"
            "try: m['enter_private_network']()\nexcept OSError as e: print(type(e).__name__, e.strerror)")
    cmd = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("util-linux's setpriv is needed to drop CAP_SYS_ADMIN as root")
        cmd = ["setpriv", "--bounding-set", "-sys_admin", "--inh-caps", "-sys_admin", *cmd]
        want = "PrivateNetworkError unshare(CLONE_NEWNET) failed: root without CAP_SYS_ADMIN here"
    else:
        want = "PrivateNetworkError unshare(CLONE_NEWUSER|CLONE_NEWNET) failed: the process already runs threads"
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith(want), (out.stdout, out.stderr)


def test_build_without_a_private_network_names_the_ways_on(tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise netns.PrivateNetworkError(1, "unshare(CLONE_NEWUSER|CLONE_NEWNET) failed: disabled here")

    monkeypatch.setattr(netns, "run_private", refuse)
    out = tmp_path / "o"
    with pytest.raises(ServeError) as e:
        build(IndexJob("synthetic:val", "demo", out, backend="torch", progress=False, ray=RayOptions()))
    msg = str(e.value)
    assert "disabled here" in msg and "--allow-remote" in msg and "--address" in msg
    assert not list(tmp_path.iterdir())


def test_child_errors_come_back_typed_and_logs_flow(tmp_path):
    """An error in the private child is raised here as the caller's most specific known class, with its message."""
    from mope_deploy.data.datasets import DatasetError

    job = IndexJob(str(tmp_path / "missing.csv"), "demo", tmp_path / "o", backend="torch", progress=False)
    lines: list[str] = []
    with pytest.raises(DatasetError) as e:
        netns.run_private("mope_deploy.serve.build:build_private", job.to_json(), errors=(ServeError, DatasetError),
                          log=lines.append)
    assert "missing.csv" in str(e.value)
    assert not (tmp_path / "o").exists()
    ok = IndexJob("synthetic:val", "demo", tmp_path / "ok", backend="torch", threads=1, progress=False)
    meta = netns.run_private("mope_deploy.serve.build:build_private", ok.to_json(), log=lines.append)
    assert meta["n_items"] == 250 and (tmp_path / "ok" / "index.json").is_file()
    assert any("250 images" in line for line in lines), lines          # the child's log lines reached the caller


def test_job_round_trips_through_json(tmp_path):
    job = IndexJob("synthetic:val", "demo", tmp_path / "o", ray=RayOptions(workers=3, private=True), chunk_size=7)
    assert IndexJob.from_json(job.to_json()) == job


def test_mope_serve_ray_refuses_to_start_an_exposed_local_ray():
    from typer.testing import CliRunner

    from mope_deploy.cli.app import app

    assert not ray.is_initialized()
    r = CliRunner().invoke(app, ["serve", "demo", "--ray", "--backend", "torch"])
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "cannot confine to loopback" in text and "--address auto" in text
    assert "--allow-remote" in text and "Traceback" not in text and not ray.is_initialized()
