"""Fuzzed parsers of the index (issue 22): index.json and write-ahead-log records take arbitrary and mutated input
and answer with a MopeError (or a valid result), never another exception and never a hang (bounded examples,
a deadline per example)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mope_deploy.errors import MopeError  # noqa: E402
from mope_deploy.serve import wal  # noqa: E402
from mope_deploy.serve.index import EmbeddingIndex, Item, model_fingerprint  # noqa: E402
from mope_deploy.serve.store import check_meta, read_meta  # noqa: E402

FUZZ = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow], derandomize=True)
DIM = 4
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(scalars,
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                       max_size=4), max_leaves=12)


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz") / "live"
    idx = EmbeddingIndex.create(root, model_fingerprint("demo"), DIM)
    for i in range(2):
        v = np.eye(DIM, dtype=np.float32)[i:i + 1]
        idx.add([Item(f"x{i}", {"type": "stored"}, [f"c{i}"])], v, [b"img"], [v])
    return root


def _mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    b = bytearray(data)
    for pos, val in edits:
        if b:
            b[pos % len(b)] = val
    return bytes(b)


edits = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=6)


@FUZZ
@given(value=json_values)
def test_index_json_of_any_shape(value):
    try:
        check_meta(value, "index.json")
    except MopeError:
        pass


@FUZZ
@given(field=st.sampled_from(["format", "format_version", "model", "dim", "kind", "generation", "n_items"]),
       value=json_values)
def test_index_json_with_one_field_replaced(live, tmp_path_factory, field, value):
    meta = json.loads((live / "index.json").read_text())
    meta[field] = value
    try:
        check_meta(meta, "index.json")
    except MopeError:
        pass


@FUZZ
@given(data=st.binary(max_size=400) | st.text(max_size=200).map(str.encode))
def test_index_json_arbitrary_bytes(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("raw")
    (root / "index.json").write_bytes(data)
    with pytest.raises(MopeError):
        read_meta(root)


@settings(max_examples=40, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow], derandomize=True)
@given(changes=edits)
def test_open_with_a_mutated_index_json(live, tmp_path_factory, changes):
    root = tmp_path_factory.mktemp("m") / "idx"
    shutil.copytree(live, root)
    (root / "index.json").write_bytes(_mutate((live / "index.json").read_bytes(), changes))
    try:
        EmbeddingIndex.open(root, compact_over=None)
    except MopeError:
        pass


@FUZZ
@given(line=st.binary(max_size=300))
def test_wal_record_arbitrary_bytes(line):
    with pytest.raises(MopeError):
        wal.decode_record(line, DIM)


@FUZZ
@given(changes=edits)
def test_wal_record_mutated(live, changes):
    good = (live / "wal.jsonl").read_bytes().split(b"\n")[0]
    try:
        rec = wal.decode_record(_mutate(good, changes), DIM)
        assert rec.emb.shape == (DIM,)
    except MopeError:
        pass


@FUZZ
@given(value=json_values)
def test_wal_record_any_json(value):
    with pytest.raises(MopeError):
        wal.decode_record(json.dumps(value).encode(), DIM)


@settings(max_examples=40, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow], derandomize=True)
@given(tail=st.binary(max_size=200), changes=edits)
def test_open_with_a_damaged_log_never_fails_and_keeps_every_byte(live, tmp_path_factory, tail, changes):
    root = tmp_path_factory.mktemp("w") / "idx"
    shutil.copytree(live, root)
    log = _mutate((live / "wal.jsonl").read_bytes(), changes) + tail
    (root / "wal.jsonl").write_bytes(log)
    idx = EmbeddingIndex.open(root, compact_over=None)
    kept = (root / "wal.jsonl").read_bytes() if (root / "wal.jsonl").exists() else b""
    rejected = b"".join(r["raw"] + b"\n" for r in wal.read_rejected(root))
    # every non-blank line of the damaged log is either still in the log or set aside in wal.rejected
    assert sorted(ln for ln in log.split(b"\n") if ln.strip()) == sorted(
        ln for ln in (kept + rejected).split(b"\n") if ln.strip())
    assert len(idx) == len([ln for ln in kept.split(b"\n") if ln.strip()])
