"""FAISS: which index kind to use, making one, and its recall against exact search.

Embeddings are L2-normalised, so inner product is cosine similarity. ``exact`` (``IndexFlatIP``) is the default;
``hnsw`` (``IndexHNSWFlat``) is picked above :data:`APPROX_MIN_ITEMS` items and its recall@10 against exact
search is measured at build time and stored in ``index.json``.
"""

from __future__ import annotations

import numpy as np

from .store import IndexFileError, require_faiss

KINDS = ("auto", "exact", "hnsw")
#: ``auto`` switches from exact search to HNSW at this many items (exact search of 100k x 768 floats is
#: ~30 ms per query on one core; HNSW stays ~1 ms with recall@10 near 0.99)
APPROX_MIN_ITEMS = 100_000
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 200, 128


def resolve_kind(kind: str, n_items: int) -> str:
    if kind not in KINDS:
        raise IndexFileError(f"unknown index kind {kind!r}: use one of {', '.join(KINDS)}")
    if kind == "auto":
        return "hnsw" if n_items >= APPROX_MIN_ITEMS else "exact"
    return kind


def make_faiss(dim: int, kind: str):
    faiss = require_faiss()
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
        return index
    return faiss.IndexFlatIP(dim)


def approx_recall(vectors: np.ndarray, queries: np.ndarray, kind: str, k: int = 10) -> float:
    """Mean |approx top-k  ∩  exact top-k| / k of ``kind`` against exact inner-product search."""
    if kind == "exact":
        return 1.0
    k = min(k, len(vectors))
    exact, approx = make_faiss(vectors.shape[1], "exact"), make_faiss(vectors.shape[1], kind)
    exact.add(vectors)
    approx.add(vectors)
    _, ie = exact.search(queries, k)
    _, ia = approx.search(queries, k)
    return float(np.mean([len(set(a) & set(e)) / k for a, e in zip(ia.tolist(), ie.tolist())]))


def as_rows(x: np.ndarray, dim: int) -> np.ndarray:
    """``x`` as contiguous float32 rows of width ``dim`` (one vector becomes one row)."""
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] != dim:
        raise IndexFileError(f"embeddings of shape {tuple(x.shape)} do not fit an index of width {dim}")
    return x


def filled(dim: int, kind: str, vectors: np.ndarray | None):
    """A new FAISS index of ``kind`` holding ``vectors`` (None or empty: none)."""
    index = make_faiss(dim, kind)
    if vectors is not None and len(vectors):
        index.add(as_rows(vectors, dim))
    return index
