"""``mope index`` and ``mope serve`` through typer's CliRunner (the servers themselves: tests/serve)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

pytest.importorskip("faiss", reason="the serve extra is not installed: pip install -e '.[serve]'")

from mope_deploy.cli.app import app  # noqa: E402

runner = CliRunner()


def test_index_builds_rebuilds_with_the_output_policy_and_reports(tmp_path, caption_csv, noise_images):
    csv = caption_csv(noise_images(5), [[f"photo {i}", f"picture {i}"] for i in range(5)],
                      extra_rows=["missing.png,gone"])
    out = tmp_path / "idx"
    r = runner.invoke(app, ["index", str(csv), "--model", "demo", "--out", str(out), "-q", "--chunk-size", "2"])
    assert r.exit_code == 0, r.output
    assert "indexed 5 images, 10 captions" in r.output and "exact" in r.output
    meta = json.loads((out / "index.json").read_text())
    assert meta["n_items"] == 5 and meta["skipped"]["counts"] == {"missing image": 1}
    assert meta["model"]["name"] == "demo" and meta["backend"]["backend"] == "torch"
    rebuilt = runner.invoke(app, ["index", str(csv), "--model", "demo", "--out", str(out), "-q", "--no-captions"])
    assert rebuilt.exit_code == 0, rebuilt.output          # an index mope wrote: rebuilt in place
    assert json.loads((out / "index.json").read_text())["n_captions"] == 0
    (out / "my-notes.txt").write_text("keep")  # a user's file inside the index: never replaced without --force
    refused = runner.invoke(app, ["index", str(csv), "--model", "demo", "--out", str(out), "-q"])
    assert refused.exit_code == 2 and "my-notes.txt" in refused.output.replace("\n", " "), refused.output
    assert "--force" in refused.output.replace("\n", " ")
    assert (out / "my-notes.txt").read_text() == "keep" and (out / "index.json").is_file()
    hnsw = runner.invoke(app, ["index", "synthetic:val", "--model", "demo", "--out", str(tmp_path / "h"), "-q",
                               "--kind", "hnsw", "--no-captions"])
    assert hnsw.exit_code == 0 and "recall@10 vs exact" in hnsw.output, hnsw.output


@pytest.mark.parametrize("args, message", [
    (["index", "synthetic:test", "--model", "demo", "--out", "X", "--backend", "nope"], "unknown backend 'nope'"),
    (["index", "no/such.csv", "--model", "demo", "--out", "X"], "not found"),
    (["serve", "demo", "--host", "0.0.0.0"], "--allow-remote"),
    (["serve", "demo", "--backend", "nope"], "unknown backend 'nope'"),
    (["serve", "demo", "--api-key-file", "no-such-keyfile"], "--api-key-file"),
    (["serve", "demo", "--index", "no-such.index"], "--create-index"),
    (["serve", "demo", "--batch-policy", "eager"], "--batch-policy 'eager'"),
])
def test_bad_options_are_one_line_errors_before_any_work(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and message in r.output.replace("\n", " "), r.output
    assert not (tmp_path / "X").exists()


def test_serve_refuses_a_folder_that_is_not_an_index(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "a.txt").write_text("x")
    r = runner.invoke(app, ["serve", "demo", "--index", str(tmp_path / "stuff")])
    assert r.exit_code == 2 and "not an index" in r.output


@pytest.mark.slow
def test_mope_serve_freezes_its_startup_heap_after_warm_up():
    """`mope serve` owns its process: once warm, the startup heap is frozen out of the cyclic GC (the full
    collections that made the p99 tail under batching), and /ready says how many objects."""
    import subprocess
    import sys
    import time

    import httpx

    from mope_deploy.serve.server import loopback_socket

    s = loopback_socket()
    port = s.getsockname()[1]
    s.close()
    code = "import sys; from mope_deploy.cli.app import main; sys.argv[0] = 'mope'; main()"
    proc = subprocess.Popen([sys.executable, "-c", code, "serve", "demo", "--backend", "torch", "--threads", "1",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ready, deadline = None, time.monotonic() + 180
        while ready is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2)
                ready = r.json() if r.status_code == 200 else None
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        assert ready is not None, "the server did not become ready"
        assert ready["warm_up"]["gc_frozen_objects"] > 50_000      # torch, open_clip's tokenizer tables, the model
    finally:
        proc.terminate()
        proc.wait(30)


def test_library_apps_leave_the_gc_alone():
    from mope_deploy.serve.config import ServeConfig

    assert ServeConfig().freeze_heap is False          # only `mope serve`, which owns its process, freezes
