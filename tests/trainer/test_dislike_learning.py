"""The ways to learn from dislikes, as configuration: the positives-only arm, dislike
negatives wired into the training loss, and the ``subtract`` dislike pathway of the user
tower (its response to a new dislike, its export and its place among architecture keys)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from common.config import ConfigError, load_config
from tests.trainer.loss_reference import sampled_softmax_ntr
from trainer._tf import tf
from trainer.config import TrainerConfig, architecture_changes
from trainer.export import SIGNATURE, ServingTower, embed_in_chunks, serving_embed
from trainer.model import TwoTowerModel

N_ITEMS, H, D = 40, 6, 5
SMALL = [
    "model.embedding_dim=16",
    "model.hidden_units=16",
    f"model.history_length={H}",
    f"model.dislike_length={D}",
    "loss.logq=none",
]
POSITIVES_ONLY = ["model.use_dislike_input=false", "loss.ntr_weight=0", "loss.dislike_negatives=0"]


def config(*sets: str) -> TrainerConfig:
    return load_config(TrainerConfig, overrides=[*SMALL, *sets], environ={})


def model_of(cfg: TrainerConfig, features: bool = False) -> TwoTowerModel:
    tf.keras.utils.set_random_seed(0)
    kwargs: dict[str, Any] = {}
    if features:  # a categorical item feature: the export must carry its table too
        genre = (np.arange(N_ITEMS) % 4 + 1).astype(np.int32)
        kwargs = {"item_features": {"genre": genre}, "feature_sizes": {"genre": 5}}
    model = TwoTowerModel(cfg, N_ITEMS, **kwargs)
    model.build_all()
    return model


def batch(seed: int = 0, rows: int = 16) -> dict[str, np.ndarray]:
    """Rows with histories and dislike inputs (some padding), a third of them dislike rows."""
    rng = np.random.default_rng(seed)
    dislikes = rng.integers(1, N_ITEMS + 1, size=(rows, D)).astype(np.int32)
    dislikes[:, : rng.integers(0, D + 1)] = 0  # right-aligned: padding on the left
    dislikes[0] = 0
    return {
        "history": rng.integers(0, N_ITEMS + 1, size=(rows, H)).astype(np.int32),
        "dislikes": dislikes,
        "item": rng.integers(1, N_ITEMS + 1, size=rows).astype(np.int32),
        "is_positive": (np.arange(rows) % 3 != 2).astype(np.float32),
        "weight": np.ones(rows, np.float32),
    }


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


# ---------------------------------------------------------------- configuration


def test_the_new_keys_default_to_todays_behaviour():
    cfg = TrainerConfig()
    assert cfg.model.dislike_pathway == "concat" and cfg.loss.dislike_negatives == 0


def test_dislike_negatives_cannot_exceed_the_dislike_input():
    with pytest.raises(
        ConfigError, match="loss.dislike_negatives=6 exceeds model.dislike_length=5"
    ):
        config("loss.dislike_negatives=6")
    assert config(f"loss.dislike_negatives={D}").loss.dislike_negatives == D


def test_the_pathway_is_an_architecture_key():
    """A version trained with the other pathway cannot be warm-started from (cold start)."""
    old, new = config(), config("model.dislike_pathway=subtract")
    assert architecture_changes(old, new) == [
        "model.dislike_pathway changed ('concat' -> 'subtract')"
    ]
    assert architecture_changes(new, new) == []
    # A manifest written before the key existed reads as ``concat``: warm start goes on.
    legacy = old.as_dict()
    del legacy["model"]["dislike_pathway"]
    assert architecture_changes(TrainerConfig.model_validate(legacy), old) == []
    assert architecture_changes(config("loss.dislike_negatives=3"), old) == []


# ---------------------------------------------------------------- positives only


@pytest.mark.parametrize("pathway", ["concat", "subtract"])
def test_three_keys_give_the_positives_only_arm(pathway: str):
    """Dislikes neither reach the user tower nor the loss: dislike rows add nothing (the
    loss and its gradients equal those of the batch without them)."""
    model = model_of(config(*POSITIVES_ONLY, f"model.dislike_pathway={pathway}"))
    b = batch()
    h = b["history"]
    np.testing.assert_array_equal(
        model.embed_users(h, b["dislikes"]), model.embed_users(h, np.zeros_like(b["dislikes"]))
    )
    keep = b["is_positive"] > 0
    only_pos = {k: v[keep] for k, v in b.items()}

    def loss_and_grads(features):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(features, training=True)
        grads = tape.gradient(loss, model.trainable_variables)
        return loss.numpy(), [tf.convert_to_tensor(g).numpy() for g in grads if g is not None]

    (l_all, g_all), (l_pos, g_pos) = loss_and_grads(b), loss_and_grads(only_pos)
    np.testing.assert_allclose(l_all, l_pos, rtol=1e-6)
    assert len(g_all) == len(g_pos) > 0
    for a, p in zip(g_all, g_pos, strict=True):
        np.testing.assert_allclose(a, p, rtol=1e-4, atol=1e-6)  # float32 sums in another order


# ---------------------------------------------------------------- dislike negatives in training


@pytest.mark.parametrize("n", [1, 3])
def test_model_feeds_the_last_n_dislikes_through_the_item_tower(n: int):
    model = model_of(config(f"loss.dislike_negatives={n}", "loss.ntr_weight=2"))
    b = batch(1)
    got = model.compute_loss(b)
    user = model.user_tower((b["history"], b["dislikes"]))
    negs = b["dislikes"][:, -n:]
    want = sampled_softmax_ntr(
        user, model.item_tower(b["item"]), b["item"], b["is_positive"], b["weight"],
        None, 0.2, 2.0, dislike_item=model.item_tower(negs), dislike_ids=negs,
    ).total  # fmt: skip
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)
    without = model_of(config("loss.ntr_weight=2")).compute_loss(b)
    assert abs(float(without) - float(got)) > 1e-4  # the extras take part


# ---------------------------------------------------------------- the subtract pathway


def _shift_in(dislikes: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The dislike input after a new dislike of t (tokens): as the responsiveness probe does."""
    return np.concatenate([dislikes[:, 1:], t[:, None]], axis=1).astype(np.int32)


@pytest.mark.parametrize("prior", ["none", "some"])
def test_a_new_dislike_moves_the_user_away_from_the_item(prior: str):
    """At initialisation (gate g > 0, W = identity) adding a dislike of t moves u by exactly
    -g v_t / |v_t|: the cosine with v_t drops for every user, and u's inner product with
    every item on t's side (cos(v_t, v_j) > 0) drops too."""
    model = model_of(config("model.dislike_pathway=subtract"), features=True)
    tower = model.user_tower
    gate = float(tf.nn.softplus(tower.dislike_gate[0] + tower.dislike_gate[1] * np.log(3.0)))
    assert gate > 0.0
    rng = np.random.default_rng(2)
    users = 32
    history = rng.integers(1, N_ITEMS + 1, size=(users, H)).astype(np.int32)
    dislikes = np.zeros((users, D), np.int32)
    if prior == "some":  # room left for one more: nothing falls off the left
        dislikes[:, 2:] = rng.integers(1, N_ITEMS + 1, size=(users, D - 2))
    t = rng.integers(1, N_ITEMS + 1, size=users).astype(np.int32)
    items = model.embed_items()  # [N, d], token k -> row k - 1
    v_t = items[t - 1]
    before = model.embed_users(history, dislikes)
    after = model.embed_users(history, _shift_in(dislikes, t))
    assert np.all(cosine(after, v_t) < cosine(before, v_t) - 1e-4)
    unit = items / np.linalg.norm(items, axis=1, keepdims=True)
    np.testing.assert_allclose(after - before, -gate * unit[t - 1], atol=1e-5)
    side = (unit[t - 1] @ unit.T) > 0  # [users, N]
    drop = (after - before) @ unit.T
    assert np.all(drop[side] < 0)


def test_no_weights_make_a_new_dislike_pull_the_user_towards_the_item():
    """W = M M^T is positive semi-definite and g > 0: for any M, gate and recency weight, a
    first dislike of t moves u by -g W v_t / |v_t|, never towards v_t."""
    model = model_of(config("model.dislike_pathway=subtract"))
    tower = model.user_tower
    rng = np.random.default_rng(4)
    users = 64
    history = rng.integers(1, N_ITEMS + 1, size=(users, H)).astype(np.int32)
    t = rng.integers(1, N_ITEMS + 1, size=users).astype(np.int32)
    none = np.zeros((users, D), np.int32)
    items = model.embed_items()
    unit = items / np.linalg.norm(items, axis=1, keepdims=True)
    for seed in range(3):
        w = np.random.default_rng(seed)
        tower.dislike_direction.assign(w.normal(size=(16, 16)).astype(np.float32))
        tower.dislike_gate.assign(w.normal(size=2).astype(np.float32))
        tower.dislike_recency.assign(float(w.normal()))
        before = model.embed_users(history, none)
        after = model.embed_users(history, _shift_in(none, t))
        step = np.sum((after - before) * unit[t - 1], axis=1)
        assert np.all(step < 0), seed


def test_concat_pathway_is_unchanged_by_the_new_key():
    """``concat`` builds today's tower: the same variables as before the key existed."""
    names = [v.name for v in model_of(config()).user_tower.trainable_variables]
    assert any("dislike_projection" in n for n in names)
    assert not any("dislike_gate" in n or "dislike_direction" in n for n in names)


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_exported_user_tower_round_trips_with_the_pathway(tmp_path, similarity: str):
    """The SavedModel's user tower carries the pathway (the item tower inside it, item
    feature tables included): loaded, it gives the in-memory serving function's vectors."""
    model = model_of(config("model.dislike_pathway=subtract"), features=True)
    # Trained-looking weights: not the identity / initial gate.
    tower = model.user_tower
    tower.dislike_gate.assign([0.3, -0.2])
    tower.dislike_recency.assign(-0.4)
    m = tower.dislike_direction
    m.assign(m + 0.1 * tf.random.stateless_normal(m.shape, seed=[1, 2]))
    serving = ServingTower(model, normalize=similarity == "cosine")
    path = str(tmp_path / "user_tower")
    tf.saved_model.save(serving, path, signatures={SIGNATURE: serving.serve})
    loaded = tf.saved_model.load(path).signatures[SIGNATURE]
    b = batch(3, rows=24)
    in_memory = serving_embed(model, similarity)(b["history"], b["dislikes"])
    from_disk = embed_in_chunks(loaded, b["history"], b["dislikes"], 16)
    np.testing.assert_array_equal(from_disk, in_memory)
    # ... and it responds to the dislike input.
    no_dislikes = embed_in_chunks(loaded, b["history"], np.zeros_like(b["dislikes"]), 16)
    moved = np.abs(from_disk - no_dislikes).max(axis=1) > 1e-4
    assert moved.tolist() == (b["dislikes"] > 0).any(axis=1).tolist()
