"""The real server on a loopback port (uvicorn in a thread), over HTTP with httpx: embeddings equal the encoder's,
bad requests get the right 4xx and the server keeps serving, batching happens across requests, overload is a 503,
metrics labels stay bounded, readiness waits for the warm-up, long texts are truncated as CLIP does."""

from __future__ import annotations

import base64
import shutil
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")

from mope_deploy.serve.config import BatchSettings, Limits, ServeConfig  # noqa: E402
from mope_deploy.serve.index import IndexFileError  # noqa: E402
from mope_deploy.serve.server import build_app, check_host, serve_in_thread  # noqa: E402

KEY = "test-key-0123456789abcdef"


def fixed(max_batch: int = 32, max_wait_ms: float = 5, max_queue: int = 1024, **limits) -> ServeConfig:
    return ServeConfig(limits=Limits(**limits), batching=BatchSettings("fixed", max_batch, max_wait_ms, max_queue))


def wait_ready(client, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get("/ready").status_code != 200:
        assert time.monotonic() < deadline, "the server never became ready"
        time.sleep(0.05)


def png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels (decoding it would need w*h*3 bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def live(demo_index, demo_encoder, tmp_path_factory):
    """A server over a copy of the demo index (tests add items to it), with an API key."""
    index = tmp_path_factory.mktemp("live") / "index"
    shutil.copytree(demo_index, index)
    keyfile = tmp_path_factory.mktemp("key") / "key"
    keyfile.write_text(KEY + "\n")
    config = fixed(max_body_bytes=2_000_000, max_images=4, max_image_pixels=4_000_000)
    app = build_app("demo", backend="torch", index=index, encoder=demo_encoder, config=config, api_key_file=keyfile)
    with serve_in_thread(app) as url:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as client:
            wait_ready(client)
            yield client


def _alive(client) -> None:
    r = client.post("/search", json={"text": "a small green square", "k": 3})
    assert r.status_code == 200 and len(r.json()["results"]) == 3


def test_text_embeddings_equal_the_encoder(live, demo_encoder):
    texts = ["a red star on the left", "two small blue circles", "a white heart on a checkered background"]
    r = live.post("/v1/embeddings", json={"input": texts, "model": "demo"})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1, 2]
    assert body["usage"]["prompt_tokens"] > 0
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, demo_encoder.encode_texts(texts), atol=1e-5)
    one = live.post("/v1/embeddings", json={"input": texts[1], "encoding_format": "base64"}).json()
    vec = np.frombuffer(base64.b64decode(one["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vec, demo_encoder.encode_texts(texts[1:2])[0], atol=1e-5)


def test_image_embeddings_equal_the_encoder(live, demo_encoder, noise_images, b64png):
    ims = noise_images(3, size=50) + [noise_images(1, size=80, seed=3)[0].convert("L")]
    r = live.post("/v1/embeddings/images", json={"input": [b64png(ims[0]), b64png(ims[1], data_url=True),
                                                           b64png(ims[2]), b64png(ims[3])]})
    assert r.status_code == 200, r.text
    got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, demo_encoder.encode_images(ims), atol=1e-5)


def test_search_by_text_and_by_image(live, demo_encoder, b64png):
    from mope_deploy.serve.build import load_collection

    col = load_collection("synthetic:test")
    r = live.post("/search", json={"image": b64png(col.images[42]), "k": 5})
    hits = r.json()["results"]
    assert r.status_code == 200 and hits[0]["id"] == "42" and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5] and hits[0]["captions"] == col.captions[42]
    caps = live.post("/search", json={"image": b64png(col.images[42]), "k": 5, "over": "captions"}).json()["results"]
    assert all("caption" in h for h in caps)
    img = live.get(hits[0]["image_url"])
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"


@pytest.mark.parametrize("case", ["malformed_json", "not_an_object", "empty_input", "empty_string", "missing_input",
                                  "bomb_header", "pixel_limit", "not_base64", "not_an_image", "oversize_body",
                                  "too_many_images", "bad_k", "text_and_image", "wrong_key", "no_key",
                                  "unknown_item", "unknown_image", "duplicate_id", "bad_format"])
def test_bad_requests_get_4xx_and_the_server_keeps_serving(live, case, noise_images, b64png):
    im = b64png(noise_images(1)[0])
    bomb = base64.b64encode(png_header_only(100_000, 100_000)).decode()
    from PIL import Image
    big = b64png(Image.new("RGB", (2100, 2100), (9, 99, 9)))   # 4.4 MP (small file), above this server's 4 MP limit
    cases = {
        "malformed_json": (lambda: live.post("/search", content=b'{"text": "a red', headers={
            "content-type": "application/json"}), 400, "malformed JSON"),
        "not_an_object": (lambda: live.post("/v1/embeddings", json=["a"]), 400, "JSON object"),
        "empty_input": (lambda: live.post("/v1/embeddings", json={"input": []}), 422, "empty list"),
        "empty_string": (lambda: live.post("/v1/embeddings", json={"input": ["ok", "  "]}), 422, "empty string"),
        "missing_input": (lambda: live.post("/v1/embeddings", json={"text": "x"}), 422, "missing 'input'"),
        "bomb_header": (lambda: live.post("/v1/embeddings/images", json={"input": [bomb]}), 413, "100000"),
        "pixel_limit": (lambda: live.post("/search", json={"image": big}), 413, "--max-image-pixels"),
        "not_base64": (lambda: live.post("/search", json={"image": "%%%not base64"}), 422, "not valid base64"),
        "not_an_image": (lambda: live.post("/v1/embeddings/images", json={
            "input": base64.b64encode(b"hello, not an image").decode()}), 422, "not a readable image"),
        "oversize_body": (lambda: live.post("/v1/embeddings", content=b'{"input": "' + b"a" * 2_100_000 + b'"}'),
                          413, "limit"),
        "too_many_images": (lambda: live.post("/v1/embeddings/images", json={"input": [im] * 5}), 413, "--max-images"),
        "bad_k": (lambda: live.post("/search", json={"text": "x", "k": 0}), 422, "k=0"),
        "text_and_image": (lambda: live.post("/search", json={"text": "x", "image": im}), 422, "exactly one"),
        "wrong_key": (lambda: live.post("/search", json={"text": "x"}, headers={"Authorization": "Bearer nope"}),
                      401, "API key"),
        "no_key": (lambda: httpx.post(str(live.base_url) + "/search", json={"text": "x"}), 401, "API key"),
        "unknown_item": (lambda: live.get("/items/no-such-item"), 404, "no item"),
        "unknown_image": (lambda: live.get("/images/no-such-item"), 404, "no item"),
        "duplicate_id": (lambda: live.post("/index/items", json={"items": [{"image": im, "id": "7"}]}), 409,
                         "already"),
        "bad_format": (lambda: live.post("/v1/embeddings", json={"input": "x", "encoding_format": "int8"}), 422,
                       "encoding_format"),
    }
    send, status, message = cases[case]
    t0 = time.perf_counter()
    r = send()
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert message in err["message"] and err["type"] == "invalid_request_error"
    if case == "bomb_header":
        assert time.perf_counter() - t0 < 10          # refused from the header, never decoded (30 GB)
    _alive(live)


def test_health_is_open_and_metrics_show_batches_and_queue(live):
    h = httpx.get(str(live.base_url) + "/health").json()
    assert h["status"] == "ok" and h["index"]["items"] >= 500 and h["queue"] == {"text": 0, "image": 0}
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda i: live.post("/v1/embeddings", json={"input": f"query {i}"}).status_code,
                              range(64)))
    assert codes == [200] * 64
    text = live.get("/metrics").text
    assert 'mope_queue_depth{tower="text"}' in text and "mope_request_seconds_bucket" in text
    def value(prefix: str) -> float:
        return float(next(ln.split()[-1] for ln in text.splitlines() if ln.startswith(prefix)))
    count, total = value('mope_batch_size_count{tower="text"'), value('mope_batch_size_sum{tower="text"')
    assert total / count > 1.0                        # requests were batched together across requests
    assert 'mope_requests_total{endpoint="/v1/embeddings",status="200"}' in text


def test_runtime_items_are_searchable_and_served(live, noise_images, b64png, demo_encoder):
    ims = noise_images(2, size=40, seed=11)
    r = live.post("/index/items", json={"items": [{"image": b64png(ims[0]), "id": "new/one", "captions": ["noise a"]},
                                                  {"image": b64png(ims[1], data_url=True)}]})
    assert r.status_code == 200, r.text
    added = r.json()["added"]
    assert added[0]["id"] == "new/one" and len(added) == 2
    hit = live.post("/search", json={"image": b64png(ims[0]), "k": 1}).json()["results"][0]
    assert hit["id"] == "new/one" and hit["score"] == pytest.approx(1.0, abs=1e-5)
    assert live.get("/items/new%2Fone").json()["captions"] == ["noise a"]
    assert live.get(hit["image_url"]).content.startswith(b"\x89PNG")


def test_server_refuses_an_index_of_another_model(demo_index, tiny_model, model_dir):
    with pytest.raises(IndexFileError, match="not comparable"):
        build_app(str(model_dir), backend="torch", index=demo_index)


def test_remote_host_needs_an_explicit_flag():
    check_host("127.0.0.1", False)
    check_host("::1", False)
    with pytest.raises(ValueError, match="--allow-remote"):
        check_host("0.0.0.0", False)
    check_host("0.0.0.0", True)


class _Slow:
    """The demo encoder, slowed down (a loaded machine)."""

    def __init__(self, enc, delay):
        self._enc, self._delay = enc, delay

    def __getattr__(self, name):
        return getattr(self._enc, name)

    def run_texts(self, tokens):
        time.sleep(self._delay)
        return self._enc.run_texts(tokens)


def test_full_queue_is_a_503_and_a_slow_request_a_504(demo_encoder):
    app = build_app("demo", backend="torch", encoder=_Slow(demo_encoder, 0.3),
                    config=fixed(max_batch=1, max_queue=2, timeout_s=3.0))
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        barrier = threading.Barrier(10)

        def one(i):
            barrier.wait()
            return c.post("/v1/embeddings", json={"input": f"q{i}"})

        with ThreadPoolExecutor(10) as pool:
            rs = list(pool.map(one, range(10)))
        codes = sorted(r.status_code for r in rs)
        assert 503 in codes and 200 in codes and set(codes) <= {200, 503, 504}
        r503 = next(r for r in rs if r.status_code == 503)
        assert "queue full" in r503.json()["error"]["message"] and r503.headers["retry-after"] == "1"
        assert c.post("/v1/embeddings", json={"input": "after"}).status_code == 200
    app = build_app("demo", backend="torch", encoder=_Slow(demo_encoder, 1.5), config=fixed(timeout_s=0.5))
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        wait_ready(c)
        r = c.post("/v1/embeddings", json={"input": "slow"})
        assert r.status_code == 504 and "--timeout" in r.json()["error"]["message"]
        assert c.get("/health").status_code == 200


def test_onnx_bundle_server_matches_onnxruntime_encoder(demo_bundle, noise_images, b64png):
    from mope_deploy.runtime import open_encoder

    enc = open_encoder(demo_bundle, "onnxruntime")
    app = build_app(str(demo_bundle), backend="onnxruntime", encoder=enc, create_index=False)
    texts = ["a purple cross", "three yellow diamonds at the bottom"]
    ims = noise_images(2, size=64, seed=5)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        t = c.post("/v1/embeddings", json={"input": texts}).json()["data"]
        i = c.post("/v1/embeddings/images", json={"input": [b64png(x) for x in ims]}).json()["data"]
        assert c.post("/search", json={"text": "x"}).status_code == 409        # no index: says how to add one
    np.testing.assert_allclose(np.array([d["embedding"] for d in t]), enc.encode_texts(texts), atol=1e-5)
    np.testing.assert_allclose(np.array([d["embedding"] for d in i]), enc.encode_images(ims), atol=1e-5)
