"""``model.item_graph_neighbors``: the item tower's smoothing over the co-occurrence graph."""

from __future__ import annotations

import numpy as np
import pytest

from tests.trainer.tiny import TINY_SETS, tiny_lightgcn_files
from trainer.config import ModelConfig
from trainer.data.sources import load_source
from trainer.data.split import train_and_valid
from trainer.evaluate import reference_neighbors
from trainer.exported import ExportedModel
from trainer.run import train, trainer_config
from trainer.towers import ItemTower
from trainer.warmstart import WarmStartError

# Item 0's neighbours: 1 and 2; item 1's: 0; item 2 has none.
GRAPH = np.array([[1, 2], [0, -1], [-1, -1]])


def _tower(k: int, weight: float, graph: np.ndarray | None = GRAPH) -> ItemTower:
    config = ModelConfig(
        embedding_dim=4, hidden_units=0, item_graph_neighbors=k, item_graph_weight=weight
    )
    tower = ItemTower(3, config, item_graph=graph)
    tower(np.array([0, 1, 2, 3]))  # builds the variables
    table = np.arange(16, dtype=np.float32).reshape(4, 4) / 10  # row t = token t
    tower.id_embedding.embeddings.assign(table)
    return tower


def test_each_item_adds_the_weighted_mean_of_its_neighbours_embeddings():
    tower = _tower(k=2, weight=2.0)
    e = tower.id_embedding.embeddings.numpy()  # token = item + 1
    smoothed = np.stack(
        [
            e[0],  # padding: no neighbours
            e[1] + 2.0 * (e[2] + e[3]) / 2,
            e[2] + 2.0 * e[1],  # the -1 entry is not counted in the mean
            e[3],  # no neighbours: its own embedding
        ]
    )
    tokens = np.array([0, 1, 2, 3])
    expected = smoothed + tower.mlp(smoothed).numpy()
    np.testing.assert_allclose(tower(tokens).numpy(), expected, rtol=1e-6, atol=1e-6)


def test_k_limits_the_neighbours_and_zero_or_no_graph_turns_it_off():
    e = _tower(k=1, weight=1.0).id_embedding.embeddings.numpy()
    one = _tower(k=1, weight=1.0)
    x = one(np.array([1])).numpy()
    first = e[1] + e[2]  # only the first neighbour of item 0
    np.testing.assert_allclose(x, first[None] + one.mlp(first[None]).numpy(), rtol=1e-6)
    for off in (_tower(k=0, weight=1.0), _tower(k=2, weight=1.0, graph=None)):
        raw = off.id_embedding.embeddings.numpy()[[1]]
        np.testing.assert_allclose(
            off(np.array([1])).numpy(), raw + off.mlp(raw).numpy(), rtol=1e-6
        )


@pytest.mark.parametrize(
    "graph, why",
    [
        (np.zeros((2, 2), dtype=int), "must be int"),  # one row short
        (np.zeros((3, 1), dtype=int), "must be int"),  # fewer than K columns
        (np.array([[3, 0], [0, 0], [0, 0]]), "must lie in"),  # no item 3
        (np.array([[-2, 0], [0, 0], [0, 0]]), "must lie in"),
    ],
)
def test_a_malformed_graph_is_refused(graph, why):
    with pytest.raises(ValueError, match=why):
        ItemTower(3, ModelConfig(embedding_dim=4, item_graph_neighbors=2), item_graph=graph)


@pytest.fixture(scope="module")
def with_graph(tmp_path_factory):
    spec = tiny_lightgcn_files(tmp_path_factory.mktemp("data") / "gcn")
    art = tmp_path_factory.mktemp("graph")
    sets = [*TINY_SETS, "model.item_graph_neighbors=5", "train.refit=false"]
    cfg = trainer_config("lightgcn", overrides=sets)
    return spec, art, cfg, train(spec, art, cfg, progress=False)


def test_training_builds_the_graph_from_train_positives_and_exports_smoothed_vectors(with_graph):
    spec, art, _cfg, outcome = with_graph
    ds = load_source(spec)
    table = outcome.model.item_tower._graph.numpy()
    np.testing.assert_array_equal(table[1:], reference_neighbors(ds, ds.num_items)[:, :5] + 1)
    assert (table[1:] > 0).any()
    exported = ExportedModel(art)
    assert exported.manifest["config"]["model"]["item_graph_neighbors"] == 5
    raw = outcome.model.embed_items()
    if exported.manifest["similarity"] == "cosine":
        raw = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    np.testing.assert_allclose(exported.item_emb, raw, rtol=1e-4, atol=1e-5)


def test_a_version_with_the_graph_warm_starts_only_a_model_with_it(with_graph):
    spec, art, cfg, outcome = with_graph
    again = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 0})})
    out = train(spec, art, again, warm_version=outcome.version, progress=False, prune=False)
    np.testing.assert_array_equal(out.model.embed_items(), outcome.model.embed_items())
    without = again.model_copy(
        update={"model": again.model.model_copy(update={"item_graph_neighbors": 0})}
    )
    with pytest.raises(WarmStartError, match="item_graph_neighbors"):
        train(spec, art, without, warm_version=outcome.version, progress=False, prune=False)


def test_a_refit_rebuilds_the_graph_from_train_and_valid(with_graph, tmp_path):
    spec, _art, cfg, _outcome = with_graph
    refit = cfg.model_copy(update={"train": cfg.train.model_copy(update={"refit": True})})
    out = train(spec, tmp_path, refit, progress=False)
    assert out.training["refit"]
    ds = load_source(spec)
    both = train_and_valid(ds)
    expected = reference_neighbors(both, both.num_items)[:, :5] + 1
    assert not np.array_equal(expected, reference_neighbors(ds, ds.num_items)[:, :5] + 1)
    np.testing.assert_array_equal(out.model.item_tower._graph.numpy()[1:], expected)
