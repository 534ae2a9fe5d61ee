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


def test_a_full_disk_on_index_items_is_a_507_and_adds_nothing(live, noise_images, b64png, monkeypatch):
    import errno

    from mope_deploy.serve import wal

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    before = live.get("/health").json()
    monkeypatch.setattr(wal, "append", full)
    im = noise_images(1, size=40, seed=12)[0]
    r = live.post("/index/items", json={"items": [{"image": b64png(im), "id": "no-room"}]})
    assert r.status_code == 507, r.text
    err = r.json()["error"]
    assert err["code"] == "insufficient_storage"
    assert "ENOSPC" in err["message"] and "adding to the index" in err["message"]
    monkeypatch.undo()
    assert live.get("/items/no-room").status_code == 404
    assert live.get("/health").json()["index"]["items"] == before["index"]["items"]
    _alive(live)


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
        wait_ready(c)
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


@pytest.mark.parametrize("case", ["json_bomb", "too_deep", "token_ids", "token_id_lists", "too_many_texts",
                                  "text_chars", "k_above_max"])
def test_more_bad_requests_name_their_flag_or_cause(live, case):
    deep = b'{"input": ' + b"[" * 401 + b"]" * 401 + b"}"
    cases = {
        "json_bomb": (lambda: live.post("/v1/embeddings", content=b"[" * 100_000), 400, "--max-json-depth"),
        "too_deep": (lambda: live.post("/search", content=deep), 400, "deeper than 400 levels (--max-json-depth)"),
        "token_ids": (lambda: live.post("/v1/embeddings", json={"input": [101, 2023, 102]}), 400,
                      "check_embedding_ctx_length=False"),
        "token_id_lists": (lambda: live.post("/v1/embeddings", json={"input": [[101, 2023], [7]]}), 400,
                           "token ids"),
        "too_many_texts": (lambda: live.post("/v1/embeddings", json={"input": ["a"] * 257}), 413, "--max-texts"),
        "text_chars": (lambda: live.post("/v1/embeddings", json={"input": "a" * 20_001}), 413, "--max-text-chars"),
        "k_above_max": (lambda: live.post("/search", json={"text": "x", "k": 1001}), 422, "(--max-k)"),
    }
    send, status, message = cases[case]
    r = send()
    assert r.status_code == status, r.text
    assert message in r.json()["error"]["message"]
    _alive(live)


def test_nesting_below_the_limit_is_parsed(live):
    ok = b'{"input": "x", "user": ' + b"[" * 399 + b"]" * 399 + b"}"      # 400 levels with the outer object
    assert live.post("/v1/embeddings", content=ok).status_code == 200


def test_long_text_is_truncated_like_clip_and_says_so(live, demo_encoder):
    long = "a large red star on a blue striped background " * 20
    r = live.post("/v1/embeddings", json={"input": ["a red star", long]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["truncated_inputs"] == [1]
    ctx = demo_encoder.context_length
    assert body["usage"]["prompt_tokens"] > ctx                         # the long text counts its context only
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, demo_encoder.encode_texts(["a red star", long]), atol=1e-5)
    s = live.post("/search", json={"text": long, "k": 2}).json()
    assert s["truncated"] is True and len(s["results"]) == 2
    assert live.post("/search", json={"text": "a red star", "k": 2}).json()["truncated"] is False


def test_strict_length_refuses_long_texts(demo_encoder):
    app = build_app("demo", backend="torch", encoder=demo_encoder, config=ServeConfig(strict_length=True))
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        wait_ready(c)
        r = c.post("/v1/embeddings", json={"input": ["short", "word " * 200]})
        assert r.status_code == 400 and "--strict-length" in r.json()["error"]["message"]
        assert "input[1]" in r.json()["error"]["message"]
        assert c.post("/v1/embeddings", json={"input": "short"}).status_code == 200


def test_tokenizer_matches_open_clip_and_reports_lengths(demo_encoder):
    import open_clip

    from mope_deploy.models import load_config
    from mope_deploy.models.processing import build_tokenizer
    from mope_deploy.models.tiny import tiny_config
    from mope_deploy.serve.embedder import tokenize

    texts = ["a red star", "word " * 100, "Ünïcödé & punctuation!!"]
    for cfg, ref in ((load_config("demo"), demo_encoder.tokenizer),
                     (tiny_config(), open_clip.get_tokenizer("ViT-B-32", context_length=16))):
        tok = build_tokenizer(cfg)
        ctx = int(dict(cfg.tokenizer).get("context_length", cfg.text.context_length))
        ids, lengths = tokenize(tok, texts, ctx)
        np.testing.assert_array_equal(ids, np.asarray(ref(texts)))
        assert lengths[0] < ctx < lengths[1] and ids.shape == (3, ctx)


def test_tokenising_imports_neither_torchvision_nor_the_model_zoo():
    import subprocess
    import sys

    code = ("import sys; from mope_deploy.models import load_config; "
            "from mope_deploy.models.processing import build_tokenizer; "
            "from mope_deploy.models.tiny import tiny_config; "
            "[build_tokenizer(c)(['a red star']) for c in (load_config('demo'), tiny_config())]; "
            "bad = [m for m in ('torchvision', 'open_clip', 'open_clip.factory') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_openai_models_and_favicon_and_ready(live):
    models = live.get("/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "demo"
    assert live.get("/v1/models/demo").json()["id"] == "demo"
    assert live.get("/v1/models/other").status_code == 404
    base = str(live.base_url)
    icon = httpx.get(base + "/favicon.ico")                      # open: browsers ask without a key
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"
    ready = httpx.get(base + "/ready").json()
    assert ready["status"] == "ready" and ready["warm_up"]["warm_s"] > 0
    assert "wal_pending" in ready["index"] or "wal_replayed" in ready["index"]


class _Gated:
    """The demo encoder whose first image run waits for a gate (a slow warm-up)."""

    def __init__(self, enc, gate):
        self._enc, self._gate = enc, gate

    def __getattr__(self, name):
        return getattr(self._enc, name)

    def run_images(self, pixels):
        self._gate.wait(30)
        return self._enc.run_images(pixels)


def test_ready_is_503_until_the_warm_up_has_run(demo_encoder):
    gate = threading.Event()
    app = build_app("demo", backend="torch", encoder=_Gated(demo_encoder, gate), config=fixed())
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        assert c.get("/health").status_code == 200 and c.get("/health").json()["ready"] is False
        r = c.get("/ready")
        assert r.status_code == 503 and "warming up" in r.json()["reason"]
        gate.set()
        wait_ready(c, 30)
        assert c.get("/health").json()["ready"] is True


@pytest.mark.slow
def test_unknown_paths_leave_metrics_and_memory_bounded(demo_encoder):
    """5,000 distinct unknown paths (half without the key) add no labels: /metrics stays small, RSS flat."""
    psutil = pytest.importorskip("psutil")

    keyfile_dir = __import__("tempfile").mkdtemp()
    keyfile = f"{keyfile_dir}/key"
    with open(keyfile, "w") as f:
        f.write(KEY)
    app = build_app("demo", backend="torch", encoder=demo_encoder, config=fixed(), api_key_file=keyfile)
    proc = psutil.Process()
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        auth = {"Authorization": f"Bearer {KEY}"}
        wait_ready(c)                                            # the encoders' first runs allocate: not counted
        for i in range(300):                                     # allocator warm-up: not counted
            c.get(f"/warm/{i}", headers=auth if i % 2 else {})
        rss0 = proc.memory_info().rss
        for i in range(5000):
            r = c.get(f"/no/such/path/{i}-{'x' * (i % 50)}", headers=auth if i % 2 else {})
            assert r.status_code in (401, 404)
        rss1 = proc.memory_info().rss
        text = c.get("/metrics", headers=auth).text
        c.get("/search", headers={})                             # a real route without the key: 401, label other
        text = c.get("/metrics", headers=auth).text
    assert len(text.encode()) < 100_000
    assert (rss1 - rss0) < 20 * 1024 * 1024
    assert "/no/such" not in text and "/warm/" not in text
    assert 'mope_requests_total{endpoint="other",status="404"} 2650.0' in text
    assert 'mope_requests_total{endpoint="other",status="401"} 2651.0' in text
    assert 'endpoint="/metrics"' in text


def test_metrics_use_route_templates(live):
    live.get("/items/42")
    live.get("/items/no-such-item")
    text = live.get("/metrics").text
    assert 'mope_requests_total{endpoint="/items/{item_id:path}",status="200"}' in text
    assert 'mope_requests_total{endpoint="/items/{item_id:path}",status="404"}' in text
    assert "/items/42" not in text


def test_ray_embedder_exports_batch_and_queue_metrics(demo_encoder):
    """The --ray embedder over a stand-in handle that batches the calls of one event-loop turn, as @serve.batch
    does: /metrics sees each batch once, with its size, and the queue counts inputs in flight."""
    import asyncio

    from mope_deploy.models import load_config
    from mope_deploy.runtime import l2_normalize
    from mope_deploy.serve.metrics import Metrics
    from mope_deploy.serve.ray_embedder import RayEmbedder, batch_rows

    class Method:
        def __init__(self, run):
            self.run, self.pending = run, []

        def remote(self, x):
            fut = asyncio.get_running_loop().create_future()
            if not self.pending:
                asyncio.get_running_loop().call_soon(self.flush)
            self.pending.append((x, fut))
            return fut

        def flush(self):
            batch, self.pending = self.pending, []
            for (_, fut), row in zip(batch, batch_rows(l2_normalize(self.run(np.stack([x for x, _ in batch]))), .01)):
                fut.set_result(row)

    class Handle:
        embed_tokens, embed_pixels = Method(demo_encoder.run_texts), Method(demo_encoder.run_images)

    emb = RayEmbedder(Handle(), load_config("demo"), {"backend": "torch"})
    metrics = Metrics()
    emb.attach_metrics(metrics)
    texts = ["a red star", "two blue circles", "word " * 50]

    async def main():
        seen = []
        task = asyncio.ensure_future(emb.embed_texts(texts))
        await asyncio.sleep(0)
        seen.append(emb.queue_depth()["text"])
        return await task, seen

    out, seen = asyncio.run(main())
    np.testing.assert_allclose(out.vectors, demo_encoder.encode_texts(texts), atol=1e-5)
    assert out.truncated == [2] and seen == [3] and emb.queue_depth() == {"text": 0, "image": 0}
    text = metrics.render().decode()
    assert 'mope_batch_size_count{tower="text"} 1.0' in text and 'mope_batch_size_sum{tower="text"} 3.0' in text


def test_serve_flags_named_in_messages_exist():
    """Every `--flag` the HTTP side's messages name is an option of `mope serve` or `mope index` (no made-up
    flags)."""
    import re
    from pathlib import Path

    import typer.main

    import mope_deploy.serve as pkg
    from mope_deploy.cli.app import app as cli
    from mope_deploy.serve.config import LIMIT_FLAGS

    command = typer.main.get_command(cli)
    flags = {o for name in ("serve", "index") for p in command.commands[name].params for o in p.opts}
    named = set(LIMIT_FLAGS.values())
    modules = ("app", "config", "inputs", "models", "routes_embeddings", "routes_search", "routes_ops", "service",
               "metrics", "embedder", "batcher", "server", "ray_embedder", "page")
    for name in modules:
        named |= set(re.findall(r"(--[a-z][a-z0-9-]+)", (Path(pkg.__file__).parent / f"{name}.py").read_text()))
    assert named <= flags, named - flags


def test_openai_sdk_models_embeddings_truncation_and_token_ids(live, demo_encoder):
    """The official `openai` client, unchanged: /v1/models, embeddings (its default base64 decoding), usage, the
    truncation field, and the 400 for token ids that names LangChain's setting."""
    openai = pytest.importorskip("openai")

    client = openai.OpenAI(base_url=str(live.base_url) + "/v1", api_key=KEY, max_retries=0, timeout=60)
    assert [m.id for m in client.models.list().data] == ["demo"]
    assert client.models.retrieve("demo").owned_by == "mope-deploy"
    long = "three small yellow diamonds at the bottom " * 20
    r = client.embeddings.create(model="demo", input=["a red star", long])
    got = np.array([d.embedding for d in r.data], dtype=np.float32)
    np.testing.assert_array_equal(got, demo_encoder.encode_texts(["a red star", long]))
    assert r.usage.prompt_tokens == r.usage.total_tokens > demo_encoder.context_length
    assert r.model_extra["truncated_inputs"] == [1]
    one = client.embeddings.create(model="demo", input="a red star", encoding_format="float")
    assert len(one.data[0].embedding) == demo_encoder.config.embed_dim and one.model_extra["truncated_inputs"] == []
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="demo", input=[[320, 1929, 2851]])
    assert "check_embedding_ctx_length=False" in str(e.value)
    bad = openai.OpenAI(base_url=str(live.base_url) + "/v1", api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_image_pixel_limit_is_the_flag_not_pillows():
    """--max-image-pixels decides alone: above Pillow's 89.5 Mpx bomb threshold an image may be allowed (it reaches
    the decoder), and a refusal names the flag; Pillow's process-wide setting is never touched."""
    from PIL import Image

    from mope_deploy.serve.inputs import RequestError, open_image

    before = Image.MAX_IMAGE_PIXELS
    header = png_header_only(10_000, 9_500)                    # 95 Mpx: Pillow alone would refuse it
    with pytest.raises(RequestError) as refused:
        open_image(header, Limits(max_image_pixels=40_000_000), "image")
    assert refused.value.status == 413 and "(--max-image-pixels)" in refused.value.message
    with pytest.raises(RequestError) as allowed:
        open_image(header, Limits(max_image_pixels=100_000_000), "image")
    assert allowed.value.status == 422 and "not a readable image" in allowed.value.message   # decoding was tried
    assert "DecompressionBomb" not in allowed.value.message
    assert Image.MAX_IMAGE_PIXELS == before


def test_missing_index_path_needs_create_index(demo_encoder, tmp_path):
    from mope_deploy.serve.errors import ServeError

    with pytest.raises(ServeError, match="--create-index"):
        build_app("demo", backend="torch", encoder=demo_encoder, index=tmp_path / "typo.index")
    assert not (tmp_path / "typo.index").exists()
    app = build_app("demo", backend="torch", encoder=demo_encoder, index=tmp_path / "new.index", create_index=True)
    assert len(app.state.index) == 0 and (tmp_path / "new.index").is_dir()


@pytest.mark.slow
def test_first_search_after_ready_is_fast_on_the_demo_bundle(demo_bundle, demo_index, tmp_path):
    """`mope serve` in its own process (nothing imported beforehand): /health answers while warming, and the
    first search after /ready turns 200 takes < 1 s (tokenizer, both encoders and the index are warm)."""
    import subprocess
    import sys

    from mope_deploy.serve.index import EmbeddingIndex, Item, model_fingerprint
    from mope_deploy.serve.server import loopback_socket

    index = tmp_path / "bundle.index"
    old = EmbeddingIndex.open(demo_index)
    EmbeddingIndex.create(index, model_fingerprint(str(demo_bundle)), old.dim).add(
        [Item(it.id, {"type": "stored"}, it.captions) for it in old.items[:50]], old.embeddings()[:50],
        [old.image_bytes(it) for it in old.items[:50]])
    sock = loopback_socket()
    port = sock.getsockname()[1]
    sock.close()
    cmd = [sys.executable, "-c", "import sys; from mope_deploy.cli.app import main; sys.argv[0] = 'mope'; main()",
           "serve", str(demo_bundle), "--index", str(index), "--port", str(port), "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None and time.monotonic() < deadline, "server did not become ready"
                try:
                    if c.get("/ready").status_code == 200:
                        break
                    assert c.get("/health").status_code == 200        # alive while warming
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
            t0 = time.perf_counter()
            r = c.post("/search", json={"text": "a large red star", "k": 5})
            first = time.perf_counter() - t0
        assert r.status_code == 200 and len(r.json()["results"]) == 5
        assert first < 1.0, f"first search after /ready took {first:.2f} s"
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_header_parse_decodes_the_web_formats_only(fmt):
    """The per-request header parse (Pillow's format plugins, no global bomb check) decodes what Image.open would,
    for the web formats; any other format is a 422."""
    import io

    from PIL import Image

    from mope_deploy.serve.inputs import FORMATS, RequestError, open_image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, format=fmt)
    if fmt not in FORMATS:
        with pytest.raises(RequestError, match="not a readable image"):
            open_image(buf.getvalue(), Limits(), "image")
        return
    im = open_image(buf.getvalue(), Limits(), "image")
    ref = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    assert im.mode == "RGB" and im.size == (40, 30)
    assert np.array_equal(np.asarray(im), np.asarray(ref))


def test_json_depth_skips_strings_and_matches_a_reference():
    import json
    import random

    from mope_deploy.serve.inputs import json_depth

    def reference(x) -> int:                              # the naive recursive depth of a parsed value
        if isinstance(x, dict):
            return 1 + max((reference(v) for v in x.values()), default=0)
        if isinstance(x, list):
            return 1 + max((reference(v) for v in x), default=0)
        return 0

    rng = random.Random(0)
    for _ in range(200):
        value: object = rng.choice(["[[{", 'a "quoted" ]]}', "\\\\[", 3])
        for _ in range(rng.randint(0, 30)):
            value = rng.choice([[value], {"k[": value, "x": "]]"}, [1, value, "{"]])
        body = json.dumps(value).encode()
        assert json_depth(body) == reference(value), body
