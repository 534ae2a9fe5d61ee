"""Recall@1/5/10 measured THROUGH the running server's /search on synthetic:test equals `mope eval` on the same model.

Every one of the 2500 captions is a text query over the images (IR@k) and every one of the 500 images is an image
query over the captions (TR@k); ranks use eval's documented tie rule (a wrong item with a score equal to the
best correct one ranks ahead of it), read off the scores /search returns.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

httpx = pytest.importorskip("httpx")

from mope_deploy.serve.build import load_collection  # noqa: E402
from mope_deploy.serve.server import build_app, serve_in_thread  # noqa: E402

pytestmark = pytest.mark.slow


def _rank(client, query: dict, correct) -> int:
    """0-based rank of the best correct hit (pessimistic ties); >= k when none is in the top k."""
    k = 16
    while True:
        hits = client.post("/search", json={**query, "k": k}).json()["results"]
        good = [h["score"] for h in hits if correct(h)]
        if not good:
            return k
        best = max(good)
        rank = sum(1 for h in hits if not correct(h) and h["score"] >= best)
        if len(hits) < k or hits[-1]["score"] < best:   # every item tied with or above `best` was returned
            return rank
        k *= 4                                          # ties may continue past the page: ask for more


def test_recall_through_search_equals_mope_eval(demo_index, demo_encoder, b64png, tmp_path):
    from typer.testing import CliRunner

    import mope_deploy.cli.eval  # noqa: F401  (registers `eval`)
    from mope_deploy.cli.app import app as cli

    out = tmp_path / "eval.json"
    r = CliRunner().invoke(cli, ["eval", "demo", "--data", "synthetic:test", "--json", str(out), "-q"])
    assert r.exit_code == 0, r.output
    ref = json.loads(out.read_text())

    col = load_collection("synthetic:test")
    app = build_app("demo", backend="torch", index=demo_index, encoder=demo_encoder)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=120) as c:
        captions = [(cap, str(i)) for i, caps in enumerate(col.captions) for cap in caps]
        with ThreadPoolExecutor(16) as pool:
            ir = list(pool.map(lambda q: _rank(c, {"text": q[0]}, lambda h, want=q[1]: h["id"] == want), captions))
            tr = list(pool.map(lambda i: _rank(c, {"image": b64png(col.images[i]), "over": "captions"},
                                               lambda h, want=str(i): h["id"] == want), range(len(col.images))))
    assert len(ir) == ref["n_captions"] == 2500 and len(tr) == ref["n_images"] == 500
    for k in (1, 5, 10):
        assert 100.0 * sum(x < k for x in ir) / len(ir) == pytest.approx(ref[f"ir{k}"], abs=1e-9)
        assert 100.0 * sum(x < k for x in tr) / len(tr) == pytest.approx(ref[f"tr{k}"], abs=1e-9)
