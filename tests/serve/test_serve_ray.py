"""Ray scale-out against a local Ray the test starts (2 CPUs, no dashboard): the Ray Serve deployment answers the
same HTTP API with embeddings equal to the encoder's and batches across requests with @serve.batch; Ray Data
bulk indexing (map_batches) writes the same index as the local build."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")
httpx = pytest.importorskip("httpx")

from mope_deploy.serve.build import IndexJob, RayOptions, build, load_collection  # noqa: E402
from mope_deploy.serve.index import EmbeddingIndex, model_fingerprint  # noqa: E402
from mope_deploy.serve.ray_scale import ray_application, run_ray  # noqa: E402
from mope_deploy.serve.server import loopback_socket  # noqa: E402

# Ray's own modules raise pydantic/DeprecationWarnings on import and start; they are not ours to fix
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        from ray import serve
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def test_ray_data_index_equals_local_build(local_ray, demo_encoder, tmp_path):
    data = "synthetic:val"
    col = load_collection(data)
    out = tmp_path / "ray.index"
    meta = build(IndexJob(data, "demo", out, backend="torch", threads=1, progress=False,
                          ray=RayOptions(workers=2)))
    assert meta["n_items"] == 250 and meta["build"]["chunk_size"] == 31      # adaptive: >= 8 chunks
    idx = EmbeddingIndex.open(out, model_fingerprint("demo"))
    np.testing.assert_allclose(idx.embeddings(), demo_encoder.encode_images(col.images), atol=1e-5)
    assert [it.id for it in idx.items] == [str(i) for i in range(250)]
    assert idx.image_bytes(idx.items[249]).startswith(b"\x89PNG")
    assert not (tmp_path / ".ray.index.partial").exists()


def test_ray_serve_deployment_batches_and_matches_encoder(local_ray, demo_index, demo_encoder):
    from ray import serve

    sock = loopback_socket()
    port = sock.getsockname()[1]
    sock.close()
    from mope_deploy.serve.config import BatchSettings, ServeConfig

    app = ray_application("demo", backend="torch", index=demo_index, replicas=1,
                          config=ServeConfig(batching=BatchSettings("fixed", max_batch=16, max_wait_ms=20)))
    run_ray(app, host="127.0.0.1", port=port, blocking=False)
    texts = [f"a picture of {n} red stars" for n in ("one", "two", "three")] * 8
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as c:
        assert c.get("/health").json()["encoder"]["batching"] == "ray serve @serve.batch"
        with ThreadPoolExecutor(12) as pool:
            rs = list(pool.map(lambda t: c.post("/v1/embeddings", json={"input": t}), texts))
        assert [r.status_code for r in rs] == [200] * len(texts)
        got = np.array([r.json()["data"][0]["embedding"] for r in rs], dtype=np.float32)
        np.testing.assert_allclose(got, demo_encoder.encode_texts(texts), atol=1e-5)
        hits = c.post("/search", json={"text": "a large blue square", "k": 5}).json()["results"]
        assert len(hits) == 5
        assert c.post("/search", json={"text": ""}).status_code == 422
        metrics = c.get("/metrics").text                     # the same batch and queue metrics as the local server
        assert 'mope_batch_size_count{tower="text"}' in metrics and 'mope_queue_depth{tower="text"} 0.0' in metrics
    stats = serve.get_deployment_handle("mope-encoder", app_name="mope").stats.remote().result()
    assert stats["max_batch"] > 1 and stats["batches"] < stats["inputs"]   # @serve.batch batched across requests
    serve.delete("mope")


def test_mope_index_ray_cli_default_flags(local_ray, tmp_path, caption_csv, noise_images, demo_encoder):
    """`mope index --ray` with default flags on a 2-CPU Ray: as many actors as fit (1), never a hang."""
    from typer.testing import CliRunner

    from mope_deploy.cli.app import app

    ims = noise_images(6, size=40, seed=3)
    csv = caption_csv(ims, [[f"noise {i}"] for i in range(6)], name="raycsv")
    out = tmp_path / "ray-cli.index"
    r = CliRunner().invoke(app, ["index", str(csv), "--model", "demo", "--out", str(out), "--ray", "-q"])
    assert r.exit_code == 0, r.output
    assert "1 encoder actor(s) (2 CPU in total" in " ".join(r.output.split())
    idx = EmbeddingIndex.open(out, model_fingerprint("demo"))
    assert [it.id for it in idx.items] == [f"{i}.png" for i in range(6)] and idx.items[0].source["type"] == "file"
    np.testing.assert_allclose(idx.embeddings(), demo_encoder.encode_images(ims), atol=1e-5)


def test_mope_index_ray_over_asked_workers_fail_fast(local_ray, tmp_path):
    import time

    from typer.testing import CliRunner

    from mope_deploy.cli.app import app

    t0 = time.monotonic()
    r = CliRunner().invoke(app, ["index", "synthetic:val", "--model", "demo", "--out", str(tmp_path / "o"), "--ray",
                                 "--ray-workers", "8", "-q"])
    assert r.exit_code == 2 and time.monotonic() - t0 < 60
    assert "--ray-workers 8 asks for 8 CPU" in " ".join(r.output.split()) and "2 CPU in total" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "o").exists()
    assert not list(tmp_path.iterdir())


def test_exposed_listeners_sees_a_port_on_every_interface():
    """The check behind the loopback warning of a local Ray: a child listening on 0.0.0.0 is reported, one on
    127.0.0.1 is not."""
    import subprocess
    import sys

    from mope_deploy.serve.ray_cluster import exposed_listeners

    pytest.importorskip("psutil")
    code = ("import socket,sys,time; s=socket.socket(); s.bind((sys.argv[1],0)); s.listen(); print(s.getsockname()[1],"
            " flush=True); time.sleep(60)")
    procs = [subprocess.Popen([sys.executable, "-c", code, host], stdout=subprocess.PIPE, text=True)
             for host in ("0.0.0.0", "127.0.0.1")]
    try:
        ports = [int(p.stdout.readline()) for p in procs]
        found = exposed_listeners([p.pid for p in procs])
        assert [f for f in found if f.endswith(f":{ports[0]}")] and not [f for f in found if f.endswith(f":{ports[1]}")]
    finally:
        for p in procs:
            p.kill()
            p.wait(10)
