"""Build and tune the FAISS index of an export (its file: :mod:`common.artifact_format`).

The index is inner product over the exported item vectors (the caller has
normalised them when the export's similarity is cosine). Small catalogs get an
exact ``IndexFlatIP``; above ``exact_max_items`` an IVF (default) or HNSW index
whose search parameter is doubled until recall@k against the exact index
reaches the target on sampled queries, then bisected down to the smallest
value that still reaches it. That measured recall goes into the
manifest, so the serving index's quality is a recorded number, not a hope.

Threads: FAISS uses OpenMP, TensorFlow its own pools. The build runs after
training, when TensorFlow is idle, so it takes all the process's cores and
restores the previous OpenMP setting afterwards; serving decides its own
thread count (see ``faiss_threads``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterator
from typing import Any, Literal

import faiss
import numpy as np

from common.artifact_format import set_search_param

log = logging.getLogger(__name__)

IndexKind = Literal["auto", "flat", "ivf", "hnsw"]
#: How an IVF index stores its vectors: float32, or 8 bits per dimension.
IvfCodec = Literal["flat", "sq8"]

#: A built, untuned index: (index, params, search parameter, its first value, its limit).
_Built = tuple[faiss.Index, dict[str, Any], str, int, int]

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 100
# k-means on more than this many points per list buys nothing (FAISS warns below 39).
IVF_TRAIN_POINTS_PER_LIST = 64


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def faiss_threads(n: int | None) -> Iterator[None]:
    """Run a block with ``n`` OpenMP threads for FAISS (None: all available cores).

    OpenMP's thread count is process-global, so it is restored on exit.
    """
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, n if n is not None else _available_cores()))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def default_queries(item_emb: np.ndarray, num_queries: int, seed: int) -> np.ndarray:
    """float32 [q, d]: a seeded sample of items plus Gaussian noise of 0.3x their scale.

    Noise keeps queries off the stored points (a query equal to an item finds it
    trivially); users are the better queries and the caller passes them when it has them.
    """
    rng = np.random.default_rng(seed)
    n, d = item_emb.shape
    pick = rng.choice(n, size=min(num_queries, n), replace=False)
    base = item_emb[np.sort(pick)].astype(np.float32)
    scale = 0.3 * float(np.sqrt((base**2).sum(axis=1).mean() / max(d, 1)))
    return (base + rng.normal(0.0, scale, size=base.shape)).astype(np.float32)


def recall_vs_exact(
    index: faiss.Index, exact_ids: np.ndarray, queries: np.ndarray, k: int
) -> float:
    """Mean over queries of |approximate top-k ∩ exact top-k| / k."""
    _, ids = index.search(queries, k)
    hits = sum(
        len(np.intersect1d(a[a >= 0], e[e >= 0])) for a, e in zip(ids, exact_ids, strict=True)
    )
    return hits / float(k * len(queries))


def build_index(
    item_emb: np.ndarray,
    *,
    kind: IndexKind = "auto",
    exact_max_items: int = 50_000,
    target_recall: float = 0.95,
    k: int = 100,
    num_queries: int = 500,
    seed: int = 0,
    queries: np.ndarray | None = None,
    threads: int | None = None,
    ivf_codec: IvfCodec = "flat",
) -> tuple[faiss.Index, dict[str, Any]]:
    """An inner-product index over ``item_emb`` and the manifest's description of it.

    Args:
      item_emb: float32 [N, d]; FAISS id i = row i = item index i.
      kind: ``auto`` (flat up to ``exact_max_items``, IVF above), or force one.
      target_recall: recall@k vs exact search that IVF/HNSW must reach.
      k: the k of that recall (capped at N).
      num_queries: sampled queries when ``queries`` is None (see ``default_queries``).
      queries: float32 [q, d] real query vectors (user embeddings), preferred.
      threads: OpenMP threads for the build (None = all cores).
      ivf_codec: ``flat`` (float32 vectors) or ``sq8`` (8 bits per dimension: a
        quarter of the memory and a faster scan; the scores it returns are
        approximate, so serving re-scores its candidates with the exact vectors).
        The recall target is met by the index as built, codec included; where sq8
        cannot reach it at any nprobe, the index stores float32 (``params.codec`` says which).
    Returns:
      (index, info) with info = ``{"type", "metric": "inner_product", "params",
      "recall_at_k_vs_exact", "k", "num_queries"}``; ``params`` holds nlist/nprobe
      (IVF, and ``codec``) or M/efConstruction/efSearch (HNSW), ``{}`` for flat
      (recall 1.0, 0 queries).
    """
    x = np.ascontiguousarray(item_emb, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"item embeddings must be a non-empty [N, d] matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("item embeddings contain NaN or inf; refusing to build an index")
    n, d = x.shape
    if kind == "auto":
        kind = "flat" if n <= exact_max_items else "ivf"
    if kind not in ("flat", "ivf", "hnsw"):
        raise ValueError(f"unknown index kind {kind!r} (choose auto, flat, ivf or hnsw)")
    if ivf_codec not in ("flat", "sq8"):
        raise ValueError(f"unknown IVF codec {ivf_codec!r} (choose flat or sq8)")
    with faiss_threads(threads):
        if kind == "flat":
            flat = faiss.IndexFlatIP(d)
            flat.add(x)
            return flat, _info("flat", {}, 1.0, min(k, n), 0)
        q = (
            default_queries(x, num_queries, seed)
            if queries is None
            else np.ascontiguousarray(queries, np.float32)
        )
        if q.ndim != 2 or q.shape[1] != d or len(q) == 0:
            raise ValueError(f"queries must be [q, {d}] with q >= 1, got shape {q.shape}")
        kk = min(k, n)
        exact = faiss.IndexFlatIP(d)
        exact.add(x)
        _, exact_ids = exact.search(q, kk)

        def tune(built: _Built) -> tuple[faiss.Index, dict[str, Any], str, int, float]:
            index, params, name, start, limit = built
            value, recall = _smallest_sufficient(
                lambda v: _recall_at(index, name, v, exact_ids, q, kk), start, limit, target_recall
            )
            return index, params, name, value, recall

        built = _build_ivf(x, seed, ivf_codec) if kind == "ivf" else _build_hnsw(x, kk)
        index, params, name, value, recall = tune(built)
        if kind == "ivf" and ivf_codec != "flat" and recall < target_recall:
            # The compressed vectors cap the recall below the target: float32 can reach it.
            log.warning(
                "IVF-%s reached recall@%d %.4f < target %.4f even at nprobe=%d: storing "
                "float32 vectors instead",
                ivf_codec,
                kk,
                recall,
                target_recall,
                value,
            )
            index, params, name, value, recall = tune(_build_ivf(x, seed, "flat"))
        set_search_param(index, name, value)
        if recall < target_recall:
            log.warning(
                "%s index reached recall@%d %.4f < target %.4f at %s=%d",
                kind,
                kk,
                recall,
                target_recall,
                name,
                value,
            )
        params[name] = int(value)
        log.info(
            "%s index: %s, recall@%d vs exact %.4f on %d queries", kind, params, kk, recall, len(q)
        )
        return index, _info(kind, params, recall, kk, len(q))


def _recall_at(
    index: faiss.Index, name: str, value: int, exact_ids: np.ndarray, q: np.ndarray, k: int
) -> float:
    set_search_param(index, name, value)
    return recall_vs_exact(index, exact_ids, q, k)


def _smallest_sufficient(
    recall_at: Callable[[int], float], start: int, limit: int, target: float
) -> tuple[int, float]:
    """The smallest search parameter in [start, limit] whose recall reaches ``target``.

    Doubles from ``start`` until the target is reached (or ``limit``), then
    bisects between the last value that fell short and the first that did not:
    a parameter past the target costs search time on every request (an IVF
    search's time grows with ``nprobe``). Recall grows with the parameter.

    Returns:
      (value, its recall); ``limit`` and its recall when even that falls short.
    """
    value, recall = start, recall_at(start)
    short = start - 1  # below the range: never evaluated
    while recall < target and value < limit:
        short, value = value, min(2 * value, limit)
        recall = recall_at(value)
    if recall < target:
        return value, recall
    while value - short > 1:
        mid = (short + value) // 2
        mid_recall = recall_at(mid)
        if mid_recall >= target:
            value, recall = mid, mid_recall
        else:
            short = mid
    return value, recall


def _info(
    kind: str, params: dict[str, Any], recall: float, k: int, num_queries: int
) -> dict[str, Any]:
    return {
        "type": kind,
        "metric": "inner_product",
        "params": params,
        "recall_at_k_vs_exact": float(recall),
        "k": int(k),
        "num_queries": int(num_queries),
    }


def _build_ivf(x: np.ndarray, seed: int, codec: IvfCodec = "flat") -> _Built:
    n, d = x.shape
    nlist = max(1, min(n, int(round(4 * math.sqrt(n)))))
    quantizer = faiss.IndexFlatIP(d)
    index: faiss.Index
    if codec == "sq8":
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
    else:
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    train_n = min(n, IVF_TRAIN_POINTS_PER_LIST * nlist)
    sample = (
        x
        if train_n == n
        else x[np.sort(np.random.default_rng(seed).choice(n, train_n, replace=False))]
    )
    index.train(sample)
    index.add(x)
    # FAISS's Python wrapper keeps ``quantizer`` referenced by ``index``.
    return index, {"nlist": nlist, "codec": codec}, "nprobe", 1, nlist


def _build_hnsw(x: np.ndarray, k: int) -> _Built:
    n, d = x.shape
    index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.add(x)
    params = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION}
    # efSearch below k cannot return k good results; past N it is a full scan.
    return index, params, "efSearch", max(k, 16), max(k, 16, n)
