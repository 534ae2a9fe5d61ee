"""`kill -9` of `mope serve` while clients add items through /index/items, then a restart: no acknowledged item
is lost (the write-ahead log is replayed)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

httpx = pytest.importorskip("httpx")

from mope_deploy.serve.server import loopback_socket  # noqa: E402

pytestmark = pytest.mark.slow

# `mope serve` itself (the console script's entry point, run with this interpreter)
MOPE = [sys.executable, "-c", "import sys; from mope_deploy.cli.app import main; sys.argv[0] = 'mope'; main()"]


def _start(index, port):
    log = open(index.parent / f"server-{time.monotonic_ns()}.log", "w+")    # a file: a full pipe would block it
    proc = subprocess.Popen(MOPE + ["serve", "demo", "--backend", "torch", "--threads", "1", "--index", str(index),
                                    "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"server exited: {log.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start within 120 s")


def _free_port() -> int:
    s = loopback_socket()
    port = s.getsockname()[1]
    s.close()
    return port


def test_acknowledged_items_survive_kill_9(demo_index, tmp_path, noise_images, b64png):
    index = tmp_path / "index"
    shutil.copytree(demo_index, index)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start(index, port)
    images = noise_images(200, size=32, seed=21)
    acked: list[str] = []
    lock, stop = threading.Lock(), threading.Event()

    def writer(w: int):
        with httpx.Client(base_url=url, timeout=10) as c:
            for j in range(w, len(images), 4):
                if stop.is_set():
                    return
                item_id = f"live-{j}"
                try:
                    r = c.post("/index/items", json={"items": [{"image": b64png(images[j]), "id": item_id,
                                                                "captions": [f"noise {j}"]}]})
                except httpx.HTTPError:
                    return                                 # the server died mid-request: not acknowledged
                if r.status_code == 200:
                    with lock:
                        acked.append(item_id)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)                   # mid-stream: writers have requests in flight
    proc.wait(10)
    stop.set()
    for t in threads:
        t.join(30)
    assert len(acked) >= 20, "too few items acknowledged before the kill"

    proc = _start(index, port)
    try:
        with httpx.Client(base_url=url, timeout=30) as c:
            health = c.get("/health").json()
            assert health["index"]["items"] >= 500 + len(acked)
            for item_id in acked:
                r = c.get(f"/items/{item_id}")
                assert r.status_code == 200, f"acknowledged item {item_id} lost"
                assert r.json()["captions"] == [f"noise {item_id.split('-')[1]}"]
            j = int(acked[-1].split("-")[1])
            hit = c.post("/search", json={"image": b64png(images[j]), "k": 1}).json()["results"][0]
            assert hit["id"] == acked[-1] and c.get(hit["image_url"]).status_code == 200
    finally:
        proc.terminate()
        proc.wait(30)
