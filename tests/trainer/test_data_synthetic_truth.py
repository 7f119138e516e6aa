"""The synthetic generator's known aversions, late items and the ground truth it exposes."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.data.dataset import DISLIKE, POSITIVE, TRAIN
from trainer.data.synthetic import generate, generate_with_truth
from trainer.data.synthetic_params import parse_params
from trainer.data.synthetic_truth import (
    cold_and_disliked_items,
    explained_dislike_counts,
    label_counts,
    popular_disliked_items,
)

WORLD = "users=2000,items=1000,aversions=1,late_items=0.1,seed=1"


def world(arg: str = WORLD):
    return generate_with_truth(parse_params(arg), source=f"synthetic:{arg}")


@pytest.fixture(scope="module")
def known():
    return world()


def per_user_share(ds, mask_num, mask_den) -> np.ndarray:
    num = np.bincount(ds.users[mask_num], minlength=ds.num_users)
    den = np.bincount(ds.users[mask_den], minlength=ds.num_users)
    return num[den > 0] / den[den > 0]


def test_dislikes_concentrate_in_the_averse_clusters_positives_avoid_them(known):
    ds, truth = known
    assert truth.cluster_kind == "latent" and truth.num_clusters == 10
    assert truth.aversions.shape == (2000, 1) and truth.item_cluster.shape == (1000,)
    averse = truth.averse(ds.users, ds.items)
    dis, pos = ds.labels == DISLIKE, ds.labels == POSITIVE
    assert averse[dis].mean() > 0.93, averse[dis].mean()  # aversion_noise=0.05 strays
    shares = per_user_share(ds, dis & averse, dis)
    assert np.median(shares) == 1.0 and (shares >= 0.9).mean() > 0.8, (shares >= 0.9).mean()
    # Positives rarely are: 10x below what the same world puts there when positives
    # ignore the aversions.
    blind, blind_truth = world(WORLD + ",aversion_noise=1")
    blind_pos = blind.labels == POSITIVE
    blind_share = blind_truth.averse(blind.users, blind.items)[blind_pos].mean()
    assert averse[pos].mean() < 0.02 and averse[pos].mean() < blind_share / 10, (
        averse[pos].mean(),
        blind_share,
    )
    share = float(dis.mean())
    assert 0.13 <= share <= 0.17, share  # dislike_rate is still the dislike share


def test_aversion_prevalence_follows_the_skew(known):
    _, truth = known
    prevalence = np.bincount(truth.aversions.ravel(), minlength=10) / 2000
    assert prevalence[0] > 0.25 and prevalence[0] > 5 * prevalence[9], prevalence
    _, flat = world("users=2000,items=1000,aversions=2,aversion_skew=0,seed=1")
    assert (flat.aversions[:, 0] != flat.aversions[:, 1]).all()  # distinct per user
    flat_prevalence = np.bincount(flat.aversions.ravel(), minlength=10) / 2000
    assert np.allclose(flat_prevalence, 0.2, atol=0.04), flat_prevalence
    assert flat.averse_matrix().sum(axis=1).tolist() == [2] * 2000


def angular_gap(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    return np.abs(np.angle(np.exp(2j * np.pi * (a - b) / k)))


def dislike_to_interest_gap(arg: str) -> float:
    """Mean ring distance of a dislike's category to the user's positives' mean category."""
    ds = generate(parse_params(arg))
    cat = ds.item_features["category"] - 1
    pos = ds.labels == POSITIVE
    vec = np.bincount(ds.users[pos], weights=np.cos(2 * np.pi * cat[ds.items[pos]] / 20))
    vec = vec + 1j * np.bincount(ds.users[pos], weights=np.sin(2 * np.pi * cat[ds.items[pos]] / 20))
    centre = np.angle(vec) / (2 * np.pi) * 20
    dis = ds.labels == DISLIKE
    return float(angular_gap(cat[ds.items[dis]], centre[ds.users[dis]], 20).mean())


def test_dislikes_are_exposures_near_interests_or_to_popular_items(known):
    ds, truth = known
    # Exposures hit the popular items of the averse cluster.
    likes, _ = label_counts(ds, None)
    rank_in_cluster = np.empty(1000, np.int64)
    for c in range(10):
        members = np.flatnonzero(truth.item_cluster == c)
        rank_in_cluster[members[np.argsort(-likes[members], kind="stable")]] = np.arange(
            len(members)
        )
    dis = (ds.labels == DISLIKE) & truth.averse(ds.users, ds.items)
    assert np.median(rank_in_cluster[ds.items[dis]]) < 100 / 4
    # Neighbourhood exposures are near the user's interests; catalogue-wide ones are not.
    base = "users=1000,items=1000,aversions=1,aversion_noise=0,seed=3"
    near = dislike_to_interest_gap(base + ",aversion_popular=0")
    anywhere = dislike_to_interest_gap(base + ",aversion_popular=1")
    assert near < 0.8 and anywhere > 1.2, (near, anywhere)  # uniform would be pi/2


def test_popular_items_that_averse_users_dislike(known):
    ds, truth = known
    items = popular_disliked_items(ds, truth, min_likes=100, min_dislikes=5)
    assert len(items) >= 30, len(items)
    likes, _ = label_counts(ds, TRAIN)
    explained = explained_dislike_counts(ds, truth, TRAIN)
    assert (likes[items] >= 100).all() and (explained[items] >= 5).all()
    assert (np.diff(likes[items]) <= 0).all()  # most liked first
    for item in items[:10].tolist():
        on = ds.items == item
        likers = ds.users[on & (ds.labels == POSITIVE)]
        dislikers = ds.users[on & (ds.labels == DISLIKE)]
        assert truth.averse(likers, np.full(len(likers), item)).mean() < 0.1
        assert truth.averse(dislikers, np.full(len(dislikers), item)).mean() > 0.8
        averse_users = truth.averse_users(item)
        assert np.isin(dislikers, averse_users).mean() > 0.8
        assert len(averse_users) > len(dislikers)  # more averse users to protect


def test_late_items_come_late_with_few_events(known):
    ds, truth = known
    assert len(truth.late_items) == 100 and (np.diff(truth.late_items) > 0).all()
    p = parse_params(WORLD)
    assert truth.late_from == p.start + 0.7 * p.span_days * 86400
    late = truth.is_late()[ds.items]
    assert late.sum() > 0 and (ds.ts[late] >= truth.late_from).all()
    counts = np.bincount(ds.items[late], minlength=1000)[truth.late_items]
    assert counts.max() <= 5 and (counts >= 1).mean() > 0.9, np.bincount(counts)
    others = np.bincount(ds.items[~late], minlength=1000)[~truth.is_late()]
    assert np.median(others) > 20
    # Their events follow the world: dislikes by averse users, positives by the others.
    averse = truth.averse(ds.users[late], ds.items[late])
    assert (averse == (ds.labels[late] == DISLIKE)).all()
    # Some are held out: cold-start targets for evaluation.
    assert (ds.split[late] != TRAIN).sum() >= 10


def test_cold_start_and_disliked_items_with_the_same_few_events(known):
    ds, truth = known
    cases = cold_and_disliked_items(ds, truth, max_events=5)
    likes, dislikes = label_counts(ds, TRAIN)
    explained = explained_dislike_counts(ds, truth, TRAIN)
    for n in (1, 2, 3):
        cold, disliked = cases[n]
        assert len(cold) >= 3 and len(disliked) >= 3, (n, len(cold), len(disliked))
    for n, (cold, disliked) in cases.items():
        assert truth.is_late()[cold].all()
        assert (likes[cold] == n).all() and (dislikes[cold] == 0).all()
        assert (dislikes[disliked] == n).all() and (likes[disliked] == 0).all()
        assert (explained[disliked] == n).all()


def test_the_truth_is_reproducible_and_follows_the_seed():
    (a, ta), (b, tb) = world(), world()
    for name in ("users", "items", "labels", "ts", "split"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    for name in ("item_cluster", "aversions", "late_items"):
        assert np.array_equal(getattr(ta, name), getattr(tb, name)), name
    assert ta.late_from == tb.late_from
    _, tc = world(WORLD.replace("seed=1", "seed=2"))
    assert not np.array_equal(ta.aversions, tc.aversions)
    assert not np.array_equal(ta.late_items, tc.late_items)


def test_without_aversions_the_truth_is_the_disliked_categories():
    ds, truth = world("users=400,items=500,seed=1")
    assert truth.cluster_kind == "category" and truth.num_clusters == 20
    assert np.array_equal(truth.item_cluster + 1, ds.item_features["category"])
    assert truth.aversions.shape == (400, 2) and len(truth.late_items) == 0
    assert truth.late_from == np.inf
    dis = ds.labels == DISLIKE
    assert truth.averse(ds.users, ds.items)[dis].all()
    assert not truth.averse(ds.users, ds.items)[~dis].any()


def test_late_items_without_aversions_keep_the_category_world():
    ds, truth = world("users=1000,items=500,late_items=0.1,seed=4")
    late = truth.is_late()[ds.items]
    assert (ds.ts[late] >= truth.late_from).all() and late.sum() > 20
    averse = truth.averse(ds.users, ds.items)
    assert (averse == (ds.labels == DISLIKE)).all()  # dislikes only in disliked categories
    assert len(np.unique(ds.users.astype(np.int64) * 500 + ds.items)) == len(ds.users)


@pytest.mark.parametrize(
    "arg, why",
    [
        ("aversions=10", "aversions must be in 0..clusters-1"),
        ("aversions=1,clusters=1", "clusters must be in 2..items"),
        ("aversions=1,clusters=30,items=20", "clusters must be in 2..items"),
        ("aversion_skew=-1", "aversion_skew must be >= 0"),
        ("aversion_popular=1.5", "aversion_popular must be in"),
        ("aversion_noise=-0.1", "aversion_noise must be in"),
        ("late_items=1", r"late_items must be in \[0, 1\)"),
        ("late_window=0", "late_window must be in"),
        ("late_events=0", "late_events must be >= 1"),
        ("aversions=1.5", "aversions='1.5' is not a non-negative integer"),
        ("aversion=1", "unknown key 'aversion' \\(did you mean 'aversions'\\?\\)"),
        ("late_item=0.1", "did you mean 'late_items'"),
        ("late_event=3", "did you mean 'late_events'"),
    ],
)
def test_parameter_errors(arg, why):
    from trainer.data.errors import DataError

    with pytest.raises(DataError, match=why):
        parse_params(arg)


def test_aversions_replace_the_disliked_categories():
    # dislike_categories is unused with aversions, so 0 is fine there (and clusters is
    # unused without them, so a tiny catalogue still works).
    ds, truth = world("users=50,items=40,aversions=1,dislike_categories=0,seed=2")
    assert (ds.labels == DISLIKE).any() and truth.cluster_kind == "latent"
    assert parse_params("items=5,categories=5").clusters == 10


def test_a_million_item_catalog_with_aversions_and_late_items():
    ds, truth = world(
        "users=200,items=1000000,events_per_user=10,categories=50,aversions=2,late_items=0.01"
    )
    assert ds.num_items == 1_000_000 and len(truth.late_items) == 10_000
    assert truth.averse(ds.users, ds.items)[ds.labels == DISLIKE].mean() > 0.9
