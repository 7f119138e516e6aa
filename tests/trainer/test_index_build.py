"""FAISS index builder: exact for small corpora, tuned IVF/HNSW above, checked against exact search."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from common.artifact_format import IndexMismatchError, read_index, write_index
from tests.recall import tie_aware_recall
from trainer.index_build import IvfCodec, build_index

K = 100
INFO_KEYS = {"type", "metric", "params", "recall_at_k_vs_exact", "k", "num_queries"}


def clustered(n: int, d: int = 32, clusters: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, d))
    x = centers[rng.integers(0, clusters, n)] + 0.5 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def user_queries(items: np.ndarray, q: int = 300, seed: int = 1) -> np.ndarray:
    """Query vectors unlike the default ones: means of a few random items, normalised."""
    rng = np.random.default_rng(seed)
    u = items[rng.integers(0, len(items), size=(q, 5))].mean(axis=1)
    return (u / np.linalg.norm(u, axis=1, keepdims=True)).astype(np.float32)


def numpy_recall(index: faiss.Index, items: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Recall@k of ``index`` against a NumPy brute-force top-k (independent of FAISS), tie-aware."""
    _, got = index.search(queries, k)
    return tie_aware_recall(got, queries, items, k)


@pytest.fixture(scope="module")
def big() -> np.ndarray:
    return clustered(60_000)


def test_flat_is_exact_and_recorded() -> None:
    items = clustered(3000, d=16)
    index, info = build_index(items)
    assert isinstance(index, faiss.IndexFlatIP) and index.ntotal == 3000
    assert set(info) == INFO_KEYS
    assert (
        info["type"] == "flat"
        and info["metric"] == "inner_product"
        and info["recall_at_k_vs_exact"] == 1.0
    )
    q = user_queries(items, 50)
    _, ids = index.search(q, 10)
    want = np.argsort(-(q.astype(np.float64) @ items.T.astype(np.float64)), axis=1, kind="stable")[
        :, :10
    ]
    np.testing.assert_array_equal(ids, want)


@pytest.mark.parametrize(
    "kind,param,codec",
    [("ivf", "nprobe", "flat"), ("ivf", "nprobe", "sq8"), ("hnsw", "efSearch", "flat")],
)
def test_approximate_reaches_target_and_records_true_recall(
    big: np.ndarray, kind: str, param: str, codec: IvfCodec, tmp_path
) -> None:
    queries = user_queries(big)
    index, info = build_index(big, kind=kind, queries=queries, target_recall=0.95, ivf_codec=codec)
    assert set(info) == INFO_KEYS
    if kind == "ivf":
        assert info["params"]["codec"] == codec
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        assert isinstance(
            ivf, faiss.IndexIVFFlat if codec == "flat" else faiss.IndexIVFScalarQuantizer
        )
    assert info["type"] == kind and info["k"] == K and info["num_queries"] == len(queries)
    assert info["recall_at_k_vs_exact"] >= 0.95
    # An independent measurement on the same queries gets the recorded number.
    measured = numpy_recall(index, big, queries, K)
    assert measured == pytest.approx(info["recall_at_k_vs_exact"], abs=2e-3)
    # ... and on fresh queries the index still holds the target (within sampling noise).
    assert numpy_recall(index, big, user_queries(big, seed=9), K) >= 0.93
    value = info["params"][param]
    if kind == "ivf":
        assert info["params"]["nlist"] == round(4 * np.sqrt(len(big)))
        faiss.extract_index_ivf(index).nprobe = max(1, value - 1)
    else:
        assert info["params"]["M"] > 0
        index.hnsw.efSearch = max(1, value - 1)
    # The smallest sufficient value was recorded (one less falls short, by the picker's
    # measurement: this one agrees with it to 2e-3, as checked above).
    if value > (1 if kind == "ivf" else K):
        assert numpy_recall(index, big, queries, K) < 0.95 + 2e-3

    # Round trip: the loaded index, with the recorded parameters applied, answers identically.
    path = tmp_path / "index.faiss"
    faiss_index_param_reset(index, param, value)
    write_index(index, path)
    loaded = read_index(path, info, ntotal=len(big), dim=big.shape[1])
    d0, i0 = index.search(queries, K)
    d1, i1 = loaded.search(queries, K)
    np.testing.assert_array_equal(i0, i1)
    np.testing.assert_array_equal(d0, d1)
    assert [p.name for p in tmp_path.iterdir()] == ["index.faiss"]


def test_sq8_stores_a_quarter_of_the_bytes_and_unknown_codecs_are_refused(tmp_path) -> None:
    items = clustered(20_000, d=32, clusters=100)
    sizes = {}
    for codec in ("flat", "sq8"):
        index, _ = build_index(items, kind="ivf", num_queries=50, ivf_codec=codec)  # type: ignore[arg-type]
        write_index(index, tmp_path / f"{codec}.faiss")
        sizes[codec] = (tmp_path / f"{codec}.faiss").stat().st_size
    assert sizes["sq8"] < 0.35 * sizes["flat"], sizes
    with pytest.raises(ValueError, match="unknown IVF codec 'pq'"):
        build_index(items, kind="ivf", ivf_codec="pq")  # type: ignore[arg-type]


def test_sq8_that_cannot_reach_the_target_stores_float32(caplog: pytest.LogCaptureFixture) -> None:
    items = clustered(4000, d=32, clusters=40)
    index, info = build_index(
        items, kind="ivf", num_queries=100, target_recall=1.0, ivf_codec="sq8"
    )
    assert info["params"]["codec"] == "flat" and info["recall_at_k_vs_exact"] == 1.0
    assert isinstance(faiss.downcast_index(faiss.extract_index_ivf(index)), faiss.IndexIVFFlat)
    assert "storing float32 vectors instead" in caplog.text


def faiss_index_param_reset(index: faiss.Index, param: str, value: int) -> None:
    if param == "nprobe":
        faiss.extract_index_ivf(index).nprobe = value
    else:
        index.hnsw.efSearch = value


def test_auto_switches_above_threshold_and_default_queries_are_seeded() -> None:
    items = clustered(4000, d=16, clusters=40)
    index, info = build_index(items, exact_max_items=1000, num_queries=200, seed=3)
    assert (
        info["type"] == "ivf"
        and info["num_queries"] == 200
        and info["recall_at_k_vs_exact"] >= 0.95
    )
    assert faiss.extract_index_ivf(index).nprobe == info["params"]["nprobe"]
    _, again = build_index(items, exact_max_items=1000, num_queries=200, seed=3)
    assert again == info
    assert build_index(items, exact_max_items=4000)[1]["type"] == "flat"


def test_read_index_applies_params_and_checks_sizes(tmp_path) -> None:
    items = clustered(4000, d=16, clusters=40)
    index, info = build_index(items, kind="ivf", num_queries=100)
    assert info["params"]["nprobe"] > 1
    path = tmp_path / "index.faiss"
    # The file carries whatever nprobe the object had; the manifest's value wins on load.
    faiss.extract_index_ivf(index).nprobe = 1
    write_index(index, path)
    assert faiss.extract_index_ivf(read_index(path)).nprobe == 1
    assert (
        faiss.extract_index_ivf(read_index(path, info["params"])).nprobe == info["params"]["nprobe"]
    )
    assert faiss.extract_index_ivf(read_index(path, info)).nprobe == info["params"]["nprobe"]
    with pytest.raises(IndexMismatchError, match="4000 vectors.*expects 4001"):
        read_index(path, info, ntotal=4001)
    with pytest.raises(IndexMismatchError, match="dimension is 16.*expects 32"):
        read_index(path, info, dim=32)
    bad = tmp_path / "garbage.faiss"
    bad.write_bytes(b"not an index at all")
    with pytest.raises(IndexMismatchError, match="not a readable FAISS index"):
        read_index(bad)
    with pytest.raises(FileNotFoundError):
        read_index(tmp_path / "missing.faiss")
    flat_path = tmp_path / "flat.faiss"
    write_index(build_index(items)[0], flat_path)
    with pytest.raises(IndexMismatchError, match="cannot set nprobe"):
        read_index(flat_path, {"nprobe": 4})


def test_bad_embeddings_are_refused() -> None:
    items = clustered(100, d=8)
    items[5, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        build_index(items)
    with pytest.raises(ValueError, match="kind"):
        build_index(clustered(100, d=8), kind="lsh")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="queries"):
        build_index(clustered(100, d=8), kind="ivf", queries=np.zeros((3, 4), np.float32))


def test_search_parameter_is_the_smallest_that_reaches_the_target() -> None:
    from trainer.index_build import _smallest_sufficient

    asked: list[int] = []

    def recall_at(v: int) -> float:
        asked.append(v)
        return min(1.0, v / 100.0)

    assert _smallest_sufficient(recall_at, 1, 1265, 0.95) == (95, 0.95)
    assert asked[:8] == [1, 2, 4, 8, 16, 32, 64, 128]  # doubled past it, then bisected
    assert len(asked) <= 8 + 7
    assert _smallest_sufficient(recall_at, 1, 50, 0.95) == (50, 0.5)  # the limit falls short
    assert _smallest_sufficient(recall_at, 120, 1265, 0.95) == (120, 1.0)  # the start suffices
