"""The version file format (common.artifact_format): round trips, refusals, and a version
exported before the format had one owner still reading and serving."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from common import artifacts
from common.artifact_format import (
    FormatError,
    IndexMismatchError,
    Manifest,
    parse_manifest,
    read_index,
    read_item_ids,
    read_items,
    write_index,
    write_items,
)

EXPORTED = Path(__file__).parent / "exported_version"


def _items(n: int = 30, dim: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return np.array([f"item-{i}" for i in range(n)]), rng.standard_normal((n, dim))


def test_items_round_trip(tmp_path: Path) -> None:
    ids, emb = _items()
    write_items(tmp_path / "items.npz", list(ids), emb)
    items = read_items(tmp_path / "items.npz", dim=6)
    assert items.ids.tolist() == ids.tolist() and items.ids.dtype.kind == "U"
    assert items.embeddings.dtype == np.float32 and items.embeddings.flags.c_contiguous
    np.testing.assert_array_equal(items.embeddings, emb.astype(np.float32))
    assert len(items) == 30 and items.dim == 6
    assert read_item_ids(tmp_path / "items.npz").tolist() == ids.tolist()


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"ids": np.array(["a", "b"]), "embeddings": np.zeros((3, 2))}, "2 ids but 3 embeddings"),
        ({"ids": np.array(["a", "a"]), "embeddings": np.zeros((2, 2))}, "not unique"),
        ({"ids": np.array(["a", "b"])}, "no embeddings array"),
        (
            {"ids": np.array(["a", None], dtype=object), "embeddings": np.zeros((2, 2))},
            "allow_pickle",
        ),
        ({"ids": np.array(["a", "b"]), "embeddings": np.zeros(2)}, "embeddings"),
    ],
)
def test_a_bad_item_table_is_refused_naming_the_file(
    tmp_path: Path, arrays: dict[str, np.ndarray], match: str
) -> None:
    path = tmp_path / "items.npz"
    np.savez(path, **arrays)
    with pytest.raises(FormatError, match=match) as info:
        read_items(path)
    assert str(path) in str(info.value)


def test_items_of_another_dimension_than_the_manifest_are_refused(tmp_path: Path) -> None:
    write_items(tmp_path / "items.npz", *_items(dim=6))
    with pytest.raises(FormatError, match="dim 6 != manifest embedding_dim 8"):
        read_items(tmp_path / "items.npz", dim=8)
    with pytest.raises(FormatError, match="is missing"):
        read_items(tmp_path / "nothing.npz")
    with pytest.raises(FormatError, match=r"\[N\] ids and \[N, dim\]"):
        write_items(tmp_path / "bad.npz", ["a"], np.zeros((2, 3)))
    assert not (tmp_path / "bad.npz").exists()


def test_index_round_trip_checks_sizes_and_applies_params(tmp_path: Path) -> None:
    _, emb = _items(n=400, dim=8)
    x = emb.astype(np.float32)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(8), 8, 4, faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add(x)
    write_index(index, tmp_path / "index.faiss")
    assert [p.name for p in tmp_path.iterdir()] == ["index.faiss"]  # no temp file left
    loaded = read_index(tmp_path / "index.faiss", {"params": {"nprobe": 3}}, ntotal=400, dim=8)
    assert faiss.extract_index_ivf(loaded).nprobe == 3
    index.nprobe = 3
    np.testing.assert_array_equal(loaded.search(x[:5], 3)[1], index.search(x[:5], 3)[1])
    with pytest.raises(IndexMismatchError, match="400 vectors, the manifest expects 401"):
        read_index(tmp_path / "index.faiss", ntotal=401)
    assert issubclass(IndexMismatchError, artifacts.ArtifactError)


def test_manifest_keeps_every_field_and_types_what_serving_needs(tmp_path: Path) -> None:
    data = {
        "version": "v1",
        "embedding_dim": 8,
        "history_length": 4,
        "dislike_length": 2,
        "index": {"type": "flat", "params": {}},
        "metrics": {"recall@20": np.float32(0.25)},
        "config": {"model": {"embedding_dim": 8}},
    }
    vdir = tmp_path / "v1"
    vdir.mkdir()
    artifacts.write_manifest(vdir, data)
    manifest = parse_manifest(vdir / artifacts.MANIFEST, "v1")
    assert isinstance(manifest, Manifest) and manifest.embedding_dim == 8
    assert manifest.as_dict() == {**data, "metrics": {"recall@20": 0.25}}
    assert json.loads((vdir / artifacts.MANIFEST).read_text()) == manifest.as_dict()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{", "not valid JSON"),
        ("[1]", "not a JSON object"),
        ('{"embedding_dim": 8, "history_length": 4, "dislike_length": 2}', "'index' is missing"),
        (
            '{"embedding_dim": "wide", "history_length": 4, "dislike_length": 2, "index": {}}',
            "embedding_dim",
        ),
        (
            '{"version": "v2", "embedding_dim": 8, "history_length": 4, "dislike_length": 2, '
            '"index": {}}',
            "names version 'v2', but it is the manifest of 'v1'",
        ),
    ],
)
def test_a_bad_manifest_is_refused(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(FormatError, match=match):
        parse_manifest(tmp_path / "manifest.json", "v1")


def test_a_version_exported_before_the_format_moved_still_reads() -> None:
    version = artifacts.latest_version(EXPORTED)
    assert version is not None
    vdir = artifacts.version_dir(EXPORTED, version)
    manifest = parse_manifest(vdir / artifacts.MANIFEST, version)
    items = read_items(vdir / artifacts.ITEMS, dim=manifest.embedding_dim)
    assert len(items) == manifest.num_items == 40
    index = read_index(
        vdir / artifacts.INDEX, manifest.index, ntotal=len(items), dim=manifest.embedding_dim
    )
    scores, _ = index.search(items.embeddings[:3], 1)
    exact = (items.embeddings[:3] @ items.embeddings.T).max(axis=1)  # a flat index is exact
    np.testing.assert_allclose(scores[:, 0], exact, rtol=1e-5)


def test_a_version_exported_before_the_format_moved_still_serves(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.settings import Settings

    art = tmp_path / "art"
    shutil.copytree(EXPORTED, art)
    version = artifacts.latest_version(art)
    ids = read_item_ids(artifacts.version_dir(art, str(version)) / artifacts.ITEMS).tolist()
    settings = Settings(
        artifacts=art, store_url=f"sqlite:///{tmp_path / 'store.sqlite'}", reload_poll_s=3600
    )
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/model").json()["version"] == version
        r = client.post("/v1/recommend", json={"history": ids[:3], "k": 5})
        assert r.status_code == 200, r.text
        got = [it["item_id"] for it in r.json()["items"]]
        assert len(got) == 5 and set(got) <= set(ids) and not set(got) & set(ids[:3])
