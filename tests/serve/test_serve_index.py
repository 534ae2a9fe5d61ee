"""Bulk indexing and the index files: exact search vs numpy, HNSW recall vs a naive reference, resumable chunks,
bad images skipped and counted, the model fingerprint, atomic and refusing writes, the write-ahead log."""

from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

from mope_deploy.atomic import OutputPathError
from mope_deploy.data.datasets import DatasetError
from mope_deploy.serve.build import Collection, auto_chunk_size, build_index, load_collection
from mope_deploy.serve.errors import ServeError
from mope_deploy.serve.index import (REJECTED_FILE, WAL_FILE, EmbeddingIndex, IndexFileError, Item, approx_recall,
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
    assert (tmp_path / ".idx.partial" / ".mope-work").is_file()     # claimed: mope may remove it
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
    col = load_collection("synthetic:val")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    kw = dict(fingerprint=model_fingerprint("demo"), data_spec="synthetic:val", progress=False)
    with pytest.raises(OutputPathError, match="notes.txt, which mope did not write"):
        build_index(col, demo_encoder, foreign, **kw)
    assert (foreign / "notes.txt").read_text() == "keep"
    assert not (tmp_path / ".mine.partial").exists()


def test_rebuild_replaces_an_index_but_not_runtime_additions_without_force(tmp_path, demo_encoder, noise_images):
    ims = noise_images(3)
    col = Collection("n", ims, ["a", "b", "c"], [[], [], []])
    kw = dict(fingerprint=model_fingerprint("demo"), data_spec="noise", progress=False)
    out = tmp_path / "idx"
    build_index(col, demo_encoder, out, **kw)
    build_index(col, demo_encoder, out, **kw)                 # an index mope wrote: rebuilt in place
    idx = EmbeddingIndex.open(out)
    idx.add([Item("live", {"type": "stored"})], demo_encoder.encode_images(ims[:1]), [b"png"])
    before = (out / WAL_FILE).read_bytes()
    with pytest.raises(ServeError, match="added at runtime.*--force"):
        build_index(col, demo_encoder, out, **kw)
    assert (out / WAL_FILE).read_bytes() == before
    build_index(col, demo_encoder, out, force=True, **kw)
    assert [it.id for it in EmbeddingIndex.open(out).items] == ["a", "b", "c"]
    (out / REJECTED_FILE).write_bytes(b'{"damaged record kept for restoring"\n')   # set aside by a replay
    with pytest.raises(ServeError, match="set aside for restoring: wal.rejected.*--force"):
        build_index(col, demo_encoder, out, **kw)
    assert (out / REJECTED_FILE).is_file()


def test_ray_chunks_are_capped_so_one_beats_the_stall_timeout():
    from mope_deploy.serve.build import RAY_MAX_AUTO_CHUNK, IndexJob, RayOptions, job_chunk_size

    local, ray = IndexJob("d", "demo", "o"), IndexJob("d", "demo", "o", ray=RayOptions())
    assert job_chunk_size(local, 100_000) is None                          # build_index's own rule: 1024
    assert job_chunk_size(ray, 100_000) == RAY_MAX_AUTO_CHUNK == 128
    assert job_chunk_size(ray, 250) == auto_chunk_size(250) == 31
    assert job_chunk_size(IndexJob("d", "demo", "o", chunk_size=500, ray=RayOptions()), 100_000) == 500


def test_chunk_size_adapts_to_at_least_8_chunks(tmp_path, demo_encoder, noise_images):
    assert [auto_chunk_size(n) for n in (1, 7, 8, 9, 500, 100_000)] == [1, 1, 1, 1, 62, 1024]
    ims = noise_images(20)
    col = Collection("n", ims, [str(i) for i in range(20)], [[] for _ in ims])
    meta = build_index(col, demo_encoder, tmp_path / "i", fingerprint=model_fingerprint("demo"), data_spec="n",
                       progress=False)
    assert meta["build"]["chunk_size"] == 2                   # 10 chunks
    for n in (8, 9, 15, 20, 500, 8191, 8192, 50_000):
        assert -(-n // auto_chunk_size(n)) >= 8


def test_failed_build_with_nothing_to_resume_leaves_nothing(tmp_path, demo_encoder):
    """issue 22 item 5: every image fails to decode -> a clear error and no hidden .OUT.partial left behind."""

    class Broken:
        mode = "RGB"

        def convert(self, mode):
            raise OSError("image file is truncated")

    col = Collection("broken", [Broken()] * 9, [f"{i}.png" for i in range(9)], [["x"]] * 9)
    with pytest.raises(DatasetError, match="could be decoded"):
        build_index(col, demo_encoder, tmp_path / "out", fingerprint=model_fingerprint("demo"), data_spec="broken",
                    progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_users_folder_named_like_the_work_folder_is_never_touched(tmp_path, demo_encoder, noise_images):
    mine = tmp_path / ".out.partial"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    col = Collection("n", noise_images(2), ["a", "b"], [[], []])
    with pytest.raises(OutputPathError, match="did not create"):
        build_index(col, demo_encoder, tmp_path / "out", fingerprint=model_fingerprint("demo"), data_spec="n",
                    progress=False)
    assert (mine / "thesis.tex").read_text() == "precious" and sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]


def test_open_missing_index_is_an_error_unless_create(tmp_path):
    fp = model_fingerprint("demo")
    with pytest.raises(IndexFileError, match="does not exist.*--create-index"):
        EmbeddingIndex.open(tmp_path / "typo", fp)
    assert not (tmp_path / "typo").exists()
    idx = EmbeddingIndex.open(tmp_path / "new", fp, create=True, dim=128)
    assert len(idx) == 0 and (tmp_path / "new" / "index.json").is_file()


class _Described:
    """``encoder`` as another backend/precision would describe itself (the numbers are the same: only the plan
    can tell the runs apart)."""

    def __init__(self, encoder, **changes):
        self._encoder, self._changes = encoder, changes

    def __getattr__(self, name):
        return getattr(self._encoder, name)

    def describe(self):
        return {**self._encoder.describe(), **self._changes}


def _embed_spy(monkeypatch) -> tuple[list[int], dict[str, int | None]]:
    """embed_chunk records the start of each chunk it embeds; with ``kill["after"] = n`` the call after the
    first ``n`` recorded ones is killed."""
    import mope_deploy.serve.build as build

    calls, kill, real = [], {"after": None}, build.embed_chunk

    def embed(enc, c, s, e, *a, **k):
        calls.append(s)
        if kill["after"] is not None and len(calls) > kill["after"]:
            raise KeyboardInterrupt("killed")
        return real(enc, c, s, e, *a, **k)

    monkeypatch.setattr(build, "embed_chunk", embed)
    return calls, kill


def test_a_partial_build_resumes_only_with_the_same_encoder_numerics(tmp_path, demo_encoder, noise_images,
                                                                      monkeypatch):
    col = Collection("n", noise_images(4), ["a", "b", "c", "d"], [[], [], [], []])
    kw = dict(fingerprint=model_fingerprint("demo"), data_spec="noise", chunk_size=1, progress=False)
    out, said = tmp_path / "idx", []
    calls, kill = _embed_spy(monkeypatch)
    kill["after"] = 2
    int8 = _Described(demo_encoder, backend="onnxruntime", variant="int8")
    with pytest.raises(KeyboardInterrupt):
        build_index(col, int8, out, **kw)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):                 # another backend: its 2 chunks are not reused
        build_index(col, demo_encoder, out, log=said.append, **kw)
    assert calls == [0, 1, 2] and any("starting over" in m for m in said)
    calls.clear()
    said.clear()
    kill["after"] = None
    more_threads = _Described(demo_encoder, threads=7)     # same numerics: resumed
    meta = build_index(col, more_threads, out, log=said.append, **kw)
    assert calls == [2, 3] and any("resuming" in m for m in said) and meta["n_items"] == 4


def test_a_partial_build_of_the_same_names_under_another_root_starts_over(tmp_path, demo_encoder, noise_images,
                                                                           monkeypatch):
    """--image-root (or a copy elsewhere): same ids, same count, other pixels; chunks must not mix."""
    for where, seed in (("a", 1), ("b", 2)):
        (tmp_path / where / "photos").mkdir(parents=True)
        for i, im in enumerate(noise_images(3, seed=seed)):
            im.save(tmp_path / where / "photos" / f"{i}.png")
    kw = dict(fingerprint=model_fingerprint("demo"), data_spec="photos", chunk_size=1, progress=False)
    (calls, kill), said = _embed_spy(monkeypatch), []
    kill["after"] = 1
    with pytest.raises(KeyboardInterrupt):
        build_index(load_collection(tmp_path / "a" / "photos"), demo_encoder, tmp_path / "idx", **kw)
    calls.clear()
    kill["after"] = None
    col = load_collection(tmp_path / "b" / "photos")
    build_index(col, demo_encoder, tmp_path / "idx", log=said.append, **kw)
    assert calls == [0, 1, 2] and any("starting over" in m for m in said)
    ref = demo_encoder.encode_images([col.images[i] for i in range(3)])
    np.testing.assert_allclose(EmbeddingIndex.open(tmp_path / "idx").embeddings(), ref, atol=1e-5)
