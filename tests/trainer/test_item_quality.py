"""The train-split dislike ratio item feature (``model.item_dislike_ratio_buckets``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tests.trainer.tiny import TINY, TINY_SETS
from trainer.config import ModelConfig
from trainer.data.dataset import DISLIKE, HOLDOUT, POSITIVE, TEST, TRAIN, VALID
from trainer.data.item_quality import DISLIKE_RATIO, dislike_ratio_values, tower_item_features
from trainer.data.sources import load_source
from trainer.data.split import apply_dislike_holdout, assemble
from trainer.exported import ExportedModel
from trainer.run import train, trainer_config
from trainer.towers import ItemTower
from trainer.warmstart import WarmStartError

P, D = POSITIVE, DISLIKE


def _dataset(rows):
    """(user, item, label, split) rows; items a..e in the catalog."""
    rows = sorted(rows, key=lambda row: row[0])  # assemble's (user, ts) order = row order
    users, items, labels, split = zip(*rows, strict=True)
    ds = assemble(
        source="test",
        kind="test",
        user_raw=np.array(users),
        item_raw=np.array(items),
        labels=np.array(labels, dtype=np.int8),
        ts=np.arange(len(rows), dtype=float),
        split=np.array([TRAIN if s == HOLDOUT else s for s in split], dtype=np.int8),
        catalog=np.array(["a", "b", "c", "d", "e"]),
    )
    return dataclasses.replace(ds, split=np.array(split, dtype=np.int8))


def test_the_ratio_counts_train_events_only():
    rows = [
        # a: 4 train dislikes, 1 train positive -> 0.8 -> bin 8 of 10 -> value 10
        *[("u", "a", D, TRAIN)] * 4,
        ("u", "a", P, TRAIN),
        # ... and non-train positives that would dilute it to 4/9 if they counted
        *[("u", "a", P, s) for s in (VALID, TEST, HOLDOUT, TEST)],
        # b: 5 train positives -> 0.0 -> value 2; its non-train dislikes do not count
        *[("u", "b", P, TRAIN)] * 5,
        *[("u", "b", D, s) for s in (VALID, TEST, HOLDOUT)],
        # c: 4 train events (too few) -> 1, whatever the held-out dislikes say
        *[("u", "c", D, TRAIN)] * 4,
        *[("u", "c", D, HOLDOUT)] * 3,
        # d: only held-out / test events -> no train event -> too few
        ("u", "d", D, HOLDOUT),
        ("u", "d", P, TEST),
        # e: 5 train dislikes -> ratio 1.0 -> the last bin (value 11)
        *[("u", "e", D, TRAIN)] * 5,
    ]
    ds = _dataset(rows)
    values = dict(zip(ds.item_ids.tolist(), dislike_ratio_values(ds, 10, 5).tolist(), strict=True))
    assert values == {"a": 10, "b": 2, "c": 1, "d": 1, "e": 11}


def test_no_non_train_event_changes_the_feature():
    rng = np.random.default_rng(0)
    n = 3000
    rows = list(
        zip(
            rng.integers(0, 40, n).astype(str),
            rng.choice(["a", "b", "c", "d", "e"], n),
            rng.choice([P, D], n),
            rng.choice([TRAIN, TRAIN, VALID, TEST, HOLDOUT], n),
            strict=True,
        )
    )
    ds = _dataset(rows)
    base = dislike_ratio_values(ds, 7, 5)
    not_train = ds.split != TRAIN
    for seed in range(5):
        flipped = ds.labels.copy()
        flipped[not_train] = np.random.default_rng(seed).choice([P, D], int(not_train.sum()))
        moved = dataclasses.replace(ds, labels=flipped)
        np.testing.assert_array_equal(dislike_ratio_values(moved, 7, 5), base)
    # ... while a train label does change it.
    flipped = ds.labels.copy()
    flipped[ds.split == TRAIN] = D
    assert not np.array_equal(
        dislike_ratio_values(dataclasses.replace(ds, labels=flipped), 7, 5), base
    )


def test_the_tower_uses_the_feature_only_when_asked_and_apart_from_metadata():
    ds = load_source(TINY)
    assert ds.item_features  # the tiny source has metadata
    off = ModelConfig(embedding_dim=8, hidden_units=0)
    on = ModelConfig(embedding_dim=8, hidden_units=0, item_dislike_ratio_buckets=4)
    on_no_meta = on.model_copy(update={"use_item_features": False})
    assert DISLIKE_RATIO not in tower_item_features(ds, off)[0]
    features, sizes = tower_item_features(ds, on)
    assert sizes[DISLIKE_RATIO] == 6 and set(sizes) == {*ds.item_feature_sizes, DISLIKE_RATIO}
    assert ds.item_features.keys() == features.keys() - {DISLIKE_RATIO}  # ds untouched
    # A dislike_ratio table handed to a tower whose config has the feature off is ignored.
    assert DISLIKE_RATIO not in ItemTower(ds.num_items, off, features, sizes)._feature_embeddings
    assert set(ItemTower(ds.num_items, on, features, sizes)._feature_embeddings) == set(sizes)
    assert set(ItemTower(ds.num_items, on_no_meta, features, sizes)._feature_embeddings) == {
        DISLIKE_RATIO
    }


@pytest.fixture(scope="module")
def with_ratio(tmp_path_factory):
    art = tmp_path_factory.mktemp("ratio")
    cfg = trainer_config(
        "synthetic", overrides=[*TINY_SETS, "train.epochs=1", "model.item_dislike_ratio_buckets=4"]
    )
    return art, cfg, train(TINY, art, cfg, progress=False)


def test_training_computes_it_after_the_holdout_and_exports_it_in_the_item_vectors(with_ratio):
    art, cfg, outcome = with_ratio
    held = apply_dislike_holdout(
        load_source(TINY),
        cfg.split.dislike_holdout,
        cfg.split.dislike_valid_share,
        cfg.split.dislike_holdout_users,
    )
    assert (held.split == HOLDOUT).any()
    table = outcome.model.item_tower._feature_tables[DISLIKE_RATIO].numpy()
    np.testing.assert_array_equal(table[1:], dislike_ratio_values(held, 4, 5))
    exported = ExportedModel(art)
    assert exported.manifest["item_feature_sizes"][DISLIKE_RATIO] == 6
    raw = outcome.model.embed_items()
    if exported.manifest["similarity"] == "cosine":
        raw = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    np.testing.assert_allclose(exported.item_emb, raw, rtol=1e-4, atol=1e-5)


def test_a_version_with_the_feature_warm_starts_only_a_model_with_it(with_ratio):
    art, cfg, outcome = with_ratio
    again = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 0})})
    out = train(TINY, art, again, warm_version=outcome.version, progress=False, prune=False)
    assert out.training["warm_start"]["version"] == outcome.version
    np.testing.assert_array_equal(out.model.embed_items(), outcome.model.embed_items())
    without = again.model_copy(
        update={"model": again.model.model_copy(update={"item_dislike_ratio_buckets": 0})}
    )
    with pytest.raises(WarmStartError, match="item_dislike_ratio_buckets"):
        train(TINY, art, without, warm_version=outcome.version, progress=False, prune=False)
