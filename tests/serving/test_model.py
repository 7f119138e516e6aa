"""Loading a version: GPU/CPU placement logic, index parameters, recall against exact search."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common import artifacts
from serving.model import (
    GPU_MAX_K,
    GPU_MAX_NPROBE,
    ModelLoadError,
    choose_device,
    configure_tf_gpus,
    load_model,
    place_index,
    rescore,
)
from tests.recall import tie_aware_recall
from tests.serving.artifact_factory import make_artifact


class FakeFaiss:
    """Records GPU calls; stands in for a faiss build with GPUs (this machine has none)."""

    def __init__(self, gpus: int, copy_error: Exception | None = None) -> None:
        self.gpus = gpus
        self.copy_error = copy_error
        self.copied: list[tuple[Any, int, Any]] = []

    def get_num_gpus(self) -> int:
        return self.gpus

    def StandardGpuResources(self) -> str:  # noqa: N802 - faiss name
        return "resources"

    def index_cpu_to_gpu(self, res: Any, device: int, index: Any) -> str:
        self.copied.append((res, device, index))
        if self.copy_error is not None:
            raise self.copy_error
        return f"gpu:{index}"


@pytest.mark.parametrize(
    ("index_type", "gpus", "use_gpu", "params", "expected"),
    [
        ("flat", 0, "auto", {}, "cpu"),
        ("flat", 1, "auto", {}, "gpu"),
        ("ivf", 2, "auto", {"nprobe": 64}, "gpu"),
        ("ivf", 1, "auto", {"nprobe": GPU_MAX_NPROBE}, "gpu"),
        ("ivf", 1, "auto", {"nprobe": GPU_MAX_NPROBE + 1}, "cpu"),  # GPU would cut nprobe
        ("hnsw", 1, "auto", {}, "cpu"),  # no GPU HNSW in FAISS
        ("ivf", 1, "never", {"nprobe": 8}, "cpu"),
    ],
)
def test_choose_device(
    index_type: str, gpus: int, use_gpu: str, params: dict, expected: str
) -> None:
    device, why = choose_device(index_type, gpus, use_gpu, params)
    assert device == expected and why


def test_place_index_copies_to_gpu_only_when_present() -> None:
    with_gpu = FakeFaiss(gpus=1)
    placed = place_index("cpu-index", "ivf", faiss_module=with_gpu)
    assert (placed.device, placed.index, placed.resources) == ("gpu", "gpu:cpu-index", "resources")
    assert with_gpu.copied == [("resources", 0, "cpu-index")]
    assert placed.max_k == GPU_MAX_K

    without = FakeFaiss(gpus=0)
    placed = place_index("cpu-index", "flat", faiss_module=without)
    assert (placed.device, placed.index) == ("cpu", "cpu-index")
    assert without.copied == []
    hnsw = FakeFaiss(gpus=4)
    assert place_index("cpu-index", "hnsw", faiss_module=hnsw).device == "cpu"
    assert hnsw.copied == []
    deep = FakeFaiss(gpus=1)
    placed = place_index(
        "cpu-index", "ivf", params={"nprobe": GPU_MAX_NPROBE * 2}, faiss_module=deep
    )
    assert placed.device == "cpu" and deep.copied == []


def test_a_failed_gpu_copy_keeps_the_index_on_the_cpu(caplog: pytest.LogCaptureFixture) -> None:
    oom = FakeFaiss(gpus=1, copy_error=RuntimeError("cudaMalloc error out of memory [2]"))
    placed = place_index("cpu-index", "flat", faiss_module=oom)
    assert (placed.device, placed.index, placed.resources) == ("cpu", "cpu-index", None)
    assert len(oom.copied) == 1 and "out of memory" in caplog.text


class FakeTFConfig:
    """Records the GPU calls of ``tf.config`` (this machine has no GPU to hand to TF)."""

    def __init__(self, gpus: list[str], started: bool = False) -> None:
        self.gpus, self.started = gpus, started
        self.visible: list[Any] | None = None
        self.growth: list[str] = []
        self.experimental = self

    def list_physical_devices(self, kind: str) -> list[str]:
        assert kind == "GPU"
        return self.gpus

    def set_visible_devices(self, devices: list[Any], kind: str) -> None:
        if self.started:
            raise RuntimeError("Visible devices cannot be modified after being initialized")
        assert kind == "GPU"
        self.visible = devices

    def set_memory_growth(self, gpu: str, on: bool) -> None:
        if self.started:
            raise RuntimeError("Physical devices cannot be modified after being initialized")
        self.growth.append(gpu)


class FakeTF:
    def __init__(self, config: FakeTFConfig) -> None:
        self.config = config


def test_tensorflow_is_kept_off_the_gpu_or_grows_its_memory() -> None:
    hidden = FakeTFConfig(["gpu0", "gpu1"])
    assert "hidden" in configure_tf_gpus("hidden", FakeTF(hidden))
    assert hidden.visible == [] and hidden.growth == []
    grow = FakeTFConfig(["gpu0", "gpu1"])
    assert "growth" in configure_tf_gpus("memory_growth", FakeTF(grow))
    assert grow.visible is None and grow.growth == ["gpu0", "gpu1"]
    none = FakeTFConfig([])
    assert "no GPU" in configure_tf_gpus("hidden", FakeTF(none)) and none.visible is None
    late = FakeTFConfig(["gpu0"], started=True)
    assert "not applied" in configure_tf_gpus("hidden", FakeTF(late))


def test_use_gpu_never_serves_a_cpu_index_with_the_same_answers(art: Path) -> None:
    import faiss

    version = artifacts.latest_version(art)
    never = load_model(art, version, use_gpu="never")
    assert never.index.device == "cpu"
    assert not type(never.index.index).__name__.startswith("Gpu")
    auto = load_model(art, version)
    if faiss.get_num_gpus() == 0:  # this machine: auto has nowhere else to go
        assert auto.index.device == "cpu" and auto.index.resources is None
    q = never.embeddings[:5] + 0.01
    np.testing.assert_array_equal(never.search(q, 10)[1], auto.search(q, 10)[1])


@pytest.mark.parametrize(
    ("index_type", "min_recall"),
    [("flat", 1.0), ("ivf", 0.75), ("ivf_sq8", 0.75), ("hnsw", 0.97)],
)
def test_index_recall_against_exact_search(
    tmp_path: Path, index_type: str, min_recall: float
) -> None:
    version = make_artifact(tmp_path, num_items=2000, dim=16, index_type=index_type, seed=3)
    model = load_model(tmp_path, version, use_gpu="never")
    params = model.manifest["index"]["params"]
    if index_type.startswith("ivf"):
        import faiss

        assert faiss.extract_index_ivf(model.index.index).nprobe == params["nprobe"]
    if index_type == "hnsw":
        assert model.index.index.hnsw.efSearch == params["efSearch"]
    rng = np.random.default_rng(0)
    hist = np.zeros((64, model.history_length), np.int32)
    hist[:, -3:] = rng.integers(1, model.num_items + 1, size=(64, 3))
    queries = model.embed(hist, np.zeros((64, model.dislike_length), np.int32))
    k = 50
    _, approx = model.search(queries, k)
    recall = tie_aware_recall(approx, queries, model.embeddings, k)
    assert recall >= min_recall, f"{index_type} recall@{k} {recall:.3f} < {min_recall}"
    # Served as measured: the manifest's figure (other queries, k = 100) is close.
    assert recall == pytest.approx(model.manifest["index"]["recall_at_k_vs_exact"], abs=0.08)


def test_tower_matches_its_definition(art: Path) -> None:
    model = load_model(art, artifacts.latest_version(art))
    hist = model.tokens(["i5", "i7", "unknown"], model.history_length)
    assert hist.tolist() == [0] * (model.history_length - 2) + [6, 8]  # right-aligned, row + 1
    u = model.embed(hist[None], np.zeros((1, model.dislike_length), np.int32))[0]
    expected = model.embeddings[[5, 7]].mean(axis=0)
    np.testing.assert_allclose(u, expected / np.linalg.norm(expected), rtol=1e-5, atol=1e-6)


def test_broken_versions_are_refused_with_the_file(tmp_path: Path) -> None:
    version = make_artifact(tmp_path, num_items=50, publish=False)
    vdir = artifacts.version_dir(tmp_path, version)
    (vdir / artifacts.INDEX).unlink()
    with pytest.raises(ModelLoadError, match="index.faiss"):
        load_model(tmp_path, version)
    other = make_artifact(tmp_path, num_items=50, dim=8, publish=False)
    # A 16-dim item table next to an 8-dim index: caught, not served.
    np.savez(
        artifacts.version_dir(tmp_path, other) / artifacts.ITEMS,
        ids=np.array([f"i{i}" for i in range(50)]),
        embeddings=np.zeros((50, 16), np.float32),
    )
    with pytest.raises(ModelLoadError, match="dim 16"):
        load_model(tmp_path, other)


@pytest.mark.parametrize("index_type", ["flat", "ivf", "ivf_sq8", "hnsw"])
def test_answers_carry_exact_scores_in_exact_order(tmp_path: Path, index_type: str) -> None:
    """A compressed index (IVF-SQ8) is re-scored: its candidates, with exact scores, in exact order."""
    version = make_artifact(tmp_path, num_items=2000, dim=16, index_type=index_type, seed=4)
    model = load_model(tmp_path, version, use_gpu="never")
    assert model.index.rescore == (index_type == "ivf_sq8")
    rng = np.random.default_rng(1)
    queries = model.embeddings[rng.choice(model.num_items, 40, replace=False)] + 0.05
    queries = queries.astype(np.float32)
    scores, rows = model.search(queries, 60)
    raw_scores, raw_rows = model.index.index.search(queries, 60)
    valid = rows >= 0
    exact = np.einsum("bd,bkd->bk", queries, model.embeddings[np.where(valid, rows, 0)])
    np.testing.assert_allclose(scores[valid], exact[valid], rtol=1e-5, atol=1e-5)
    assert (np.diff(np.where(valid, scores, -np.inf), axis=1) <= 1e-6).all()  # best first
    for j in range(len(queries)):  # the index's own candidates, padding kept last
        assert set(rows[j].tolist()) == set(raw_rows[j].tolist())
        assert (rows[j][valid[j].sum() :] == -1).all()
    if index_type == "ivf_sq8":  # its own scores were the compressed vectors'
        assert not np.allclose(raw_scores[valid], exact[valid], rtol=1e-6, atol=1e-6)


def test_rescore_orders_by_exact_scores_and_keeps_padding_last() -> None:
    """With and without padding (an index that ran dry): exact inner products, best first;
    a -1 row keeps the index's score and stays behind every real row."""
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(50, 8)).astype(np.float32)
    q = rng.normal(size=(2, 8)).astype(np.float32)
    rows = np.array([[4, 9, 1, 30, 22], [7, 3, -1, -1, 11]], np.int64)
    missing = np.finfo(np.float32).min  # FAISS's score of "no result" by inner product
    approx = np.where(rows >= 0, 0.0, missing).astype(np.float32)
    for padded in (False, True):
        r = rows if padded else rows[:1]
        scores, got = rescore(emb, q[: len(r)], approx[: len(r)], r)
        for j in range(len(r)):
            real = r[j][r[j] >= 0]
            exact = emb[real] @ q[j]
            want = real[np.argsort(-exact, kind="stable")]
            np.testing.assert_array_equal(got[j][: len(real)], want)
            np.testing.assert_allclose(scores[j][: len(real)], np.sort(exact)[::-1], rtol=1e-6)
            assert (got[j][len(real) :] == -1).all()
            assert (scores[j][len(real) :] == missing).all()
        assert scores.dtype == np.float32
