"""Bulk indexing and the index files: exact search vs numpy, HNSW recall vs a naive reference, resumable chunks,
bad images skipped and counted, the model fingerprint, atomic and refusing writes, the write-ahead log."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mope_deploy.serve.build import build_index, load_collection
from mope_deploy.serve.index import (WAL_FILE, EmbeddingIndex, IndexFileError, Item, approx_recall,
                                     model_fingerprint)


def test_built_index_matches_encoder_and_exact_search(demo_index, demo_encoder):
    idx = EmbeddingIndex.open(demo_index, model_fingerprint("demo"))
    col = load_collection("synthetic:test")
    assert len(idx) == 500 and len(idx.caption_rows) == 2500 and idx.meta["kind"] == "exact"
    emb = idx.embeddings()
    ref = demo_encoder.encode_images([col.images[i] for i in (0, 7, 499)])
    np.testing.assert_allclose(emb[[0, 7, 499]], ref, atol=1e-5)
    q = demo_encoder.encode_texts(["a large blue star on a striped background"])[0]
    hits = idx.search(q, 10)
    naive = np.argsort(-(emb @ q), kind="stable")[:10]
    assert [h.position for h in hits] == naive.tolist()
    np.testing.assert_allclose([h.score for h in hits], (emb @ q)[naive], atol=1e-5)
    # stored images of an in-memory dataset are the images themselves
    it = idx.items[7]
    assert it.captions == col.captions[7] and it.source["type"] == "stored"
    import io
    got = Image.open(io.BytesIO(idx.image_bytes(it))).convert("RGB")
    assert np.array_equal(np.asarray(got), np.asarray(col.images[7]))


def test_index_refuses_another_model(demo_index, tmp_path, tiny_model):
    with pytest.raises(IndexFileError, match="different models are not comparable"):
        EmbeddingIndex.open(demo_index, model_fingerprint(tiny_model))
    with pytest.raises(IndexFileError, match="not an index"):
        EmbeddingIndex.open(tmp_path)


def test_hnsw_recall_reported_and_checked_against_naive(tmp_path, demo_encoder):
    col = load_collection("synthetic:val")
    meta = build_index(col, demo_encoder, tmp_path / "h", fingerprint=model_fingerprint("demo"),
                       data_spec="synthetic:val", kind="hnsw", progress=False)
    assert meta["kind"] == "hnsw" and 0.5 <= meta["approx_recall_at_10"] <= 1.0
    idx = EmbeddingIndex.open(tmp_path / "h")
    emb = idx.embeddings()
    q = demo_encoder.encode_texts([c for cs in col.captions[:40] for c in cs[:1]])
    # naive recall@10: python sets over numpy's full sort
    naive = np.mean([len({h.position for h in idx.search(v, 10)} & set(np.argsort(-(emb @ v))[:10].tolist())) / 10
                     for v in q])
    assert abs(approx_recall(emb, q, "hnsw") - naive) < 1e-9


def test_resume_skips_committed_chunks_and_counts_bad_images(tmp_path, demo_encoder, caption_csv, noise_images,
                                                             monkeypatch):
    csv = caption_csv(noise_images(7), [[f"photo {i}"] for i in range(7)])
    (csv.parent / "images" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)   # header ok, body broken
    col = load_collection(csv)
    assert col.report.counts() == {"unreadable image": 1}   # caught by the loader's header check
    out = tmp_path / "idx"
    import mope_deploy.serve.build as build

    calls = []
    real = build.embed_chunk

    def crash_on_third(enc, c, s, e, *a, **k):
        calls.append(s)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(enc, c, s, e, *a, **k)

    monkeypatch.setattr(build, "embed_chunk", crash_on_third)
    kw = dict(fingerprint=model_fingerprint("demo"), data_spec=str(csv), chunk_size=2, progress=False)
    with pytest.raises(KeyboardInterrupt):
        build_index(col, demo_encoder, out, **kw)
    assert not out.exists() and len(list((tmp_path / ".idx.partial" / "chunks").glob("*.npz"))) == 2
    calls.clear()
    meta = build_index(col, demo_encoder, out, **kw)
    assert calls == [4]                      # chunks [0,2) and [2,4) were not recomputed
    assert meta["n_items"] == 6 and meta["skipped"]["n_skipped"] == 1
    assert not (tmp_path / ".idx.partial").exists()
    idx = EmbeddingIndex.open(out)
    assert [it.id for it in idx.items] == ["0.png", "1.png", "2.png", "4.png", "5.png", "6.png"]
    ref = demo_encoder.encode_images([col.images[i] for i in range(6)])
    np.testing.assert_allclose(idx.embeddings(), ref, atol=1e-5)


def test_decode_failures_are_skipped_and_counted(tmp_path, demo_encoder, noise_images):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i, im in enumerate(noise_images(3)):
        im.save(folder / ("sub" if i else ".") / f"{i}.png")
    good = (folder / "sub" / "1.png").read_bytes()
    (folder / "sub" / "trunc.png").write_bytes(good[: len(good) // 2])   # verify() passes, decoding fails
    col = load_collection(folder)
    meta = build_index(col, demo_encoder, tmp_path / "i", fingerprint=model_fingerprint("demo"),
                       data_spec=str(folder), progress=False)
    assert meta["n_items"] + meta["skipped"]["n_skipped"] == 4 and meta["n_items"] == 3
    idx = EmbeddingIndex.open(tmp_path / "i")
    assert idx.items[0].source == {"type": "file", "path": str((folder / "0.png").resolve())}
    assert not idx.has_captions


def test_out_is_never_a_foreign_folder(tmp_path, demo_encoder, demo_index):
    col = load_collection("synthetic:test")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    kw = dict(fingerprint=model_fingerprint("demo"), data_spec="synthetic:test", progress=False)
    with pytest.raises(IndexFileError, match="not an index; refusing"):
        build_index(col, demo_encoder, foreign, **kw)
    with pytest.raises(IndexFileError, match="--overwrite"):
        build_index(col, demo_encoder, demo_index, **kw)
    assert (foreign / "notes.txt").read_text() == "keep"


def test_wal_replays_acknowledged_items_and_drops_a_torn_tail(tmp_path, demo_encoder, noise_images):
    fp = model_fingerprint("demo")
    root = tmp_path / "live"
    idx = EmbeddingIndex.create(root, fp, 128)
    ims = noise_images(3)
    emb = demo_encoder.encode_images(ims)
    for i in range(3):
        idx.add([Item(f"x{i}", {"type": "stored"}, [f"caption {i}"])], emb[i:i + 1], [b"\x89PNG fake"],
                [demo_encoder.encode_texts([f"caption {i}"])])
    with open(root / WAL_FILE, "ab") as f:
        f.write(b'{"item": {"id": "torn"')          # a crash mid-append (never acknowledged)
    again = EmbeddingIndex.open(root, fp)
    assert [it.id for it in again.items] == ["x0", "x1", "x2"] and again.wal_torn == 1
    np.testing.assert_allclose(again.embeddings(), emb, atol=0)
    assert again.search(emb[1], 1)[0].item.id == "x1"
    assert again.search(demo_encoder.encode_texts(["caption 2"])[0], 1, over="captions")[0].caption == "caption 2"
    # appending after a torn tail starts a new line; the earlier records still replay
    again.add([Item("x3", {"type": "stored"})], emb[:1], [b"img"])
    assert [it.id for it in EmbeddingIndex.open(root, fp).items] == ["x0", "x1", "x2", "x3"]
    lines = (root / WAL_FILE).read_bytes().split(b"\n")
    bad = lines[:1] + [lines[1][:-5] + b'XXXX}'] + lines[2:]
    (root / WAL_FILE).write_bytes(b"\n".join(bad))
    with pytest.raises(IndexFileError, match="corrupt and is not the last"):
        EmbeddingIndex.open(root, fp)
    assert json.loads((root / "index.json").read_text())["n_items"] == 0
