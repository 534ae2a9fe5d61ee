"""Ray scale-out against a local Ray the test starts (2 CPUs, no dashboard): the Ray Serve deployment answers the
same HTTP API with embeddings equal to the encoder's and batches across requests with @serve.batch; Ray Data
bulk indexing (map_batches) writes the same index as the local build."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")
httpx = pytest.importorskip("httpx")

from mope_deploy.serve.build import build_index, load_collection, partial_dir  # noqa: E402
from mope_deploy.serve.index import EmbeddingIndex, model_fingerprint  # noqa: E402
from mope_deploy.serve.ray_scale import ray_application, ray_chunk_fn, run_ray  # noqa: E402
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
    fn = ray_chunk_fn("demo", "torch", data, {}, partial_dir(out) / "images", batch_size=64, concurrency=1)
    meta = build_index(col, demo_encoder, out, fingerprint=model_fingerprint("demo"), data_spec=data, chunk_size=128,
                       chunk_fn=fn, progress=False)
    assert meta["n_items"] == 250
    idx = EmbeddingIndex.open(out, model_fingerprint("demo"))
    np.testing.assert_allclose(idx.embeddings(), demo_encoder.encode_images(col.images), atol=1e-5)
    assert [it.id for it in idx.items] == [str(i) for i in range(250)]
    assert idx.image_bytes(idx.items[249]).startswith(b"\x89PNG")


def test_ray_serve_deployment_batches_and_matches_encoder(local_ray, demo_index, demo_encoder):
    from ray import serve

    sock = loopback_socket()
    port = sock.getsockname()[1]
    sock.close()
    app = ray_application("demo", backend="torch", index=demo_index, replicas=1, max_batch=16, max_wait_ms=20)
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
    stats = serve.get_deployment_handle("mope-encoder", app_name="mope").stats.remote().result()
    assert stats["max_batch"] > 1 and stats["batches"] < stats["inputs"]   # @serve.batch batched across requests
    serve.delete("mope")


def test_mope_index_ray_cli(local_ray, tmp_path, caption_csv, noise_images, demo_encoder):
    """`mope index --ray` joins the running Ray (ignore_reinit_error) and embeds files on Ray Data actors."""
    from typer.testing import CliRunner

    from mope_deploy.cli.app import app

    ims = noise_images(6, size=40, seed=3)
    csv = caption_csv(ims, [[f"noise {i}"] for i in range(6)], name="raycsv")
    out = tmp_path / "ray-cli.index"
    r = CliRunner().invoke(app, ["index", str(csv), "--model", "demo", "--out", str(out), "--ray", "--ray-workers", "1",
                                 "--chunk-size", "4", "-q"])
    assert r.exit_code == 0, r.output
    idx = EmbeddingIndex.open(out, model_fingerprint("demo"))
    assert [it.id for it in idx.items] == [f"{i}.png" for i in range(6)] and idx.items[0].source["type"] == "file"
    np.testing.assert_allclose(idx.embeddings(), demo_encoder.encode_images(ims), atol=1e-5)
