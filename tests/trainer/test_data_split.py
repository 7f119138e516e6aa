"""The temporal leave-last-out split and the given split, on handwritten events."""

from __future__ import annotations

import numpy as np

from trainer.data.dataset import DISLIKE, POSITIVE, TEST, TRAIN, VALID
from trainer.data.split import assemble, attach_feature, temporal_split

P, D = POSITIVE, DISLIKE


def build(rows, split=None, timestamped=True):
    """A Dataset from (user, item, label, ts) tuples in 'file order'."""
    users, items, labels, ts = zip(*rows, strict=True)
    return assemble(
        source="test",
        kind="test",
        user_raw=np.array(users),
        item_raw=np.array(items),
        labels=np.array(labels, dtype=np.int8),
        ts=np.array(ts, dtype=float) if timestamped else None,
        split=None if split is None else np.array(split, dtype=np.int8),
    )


def per_user(ds, user):
    sel = ds.users == np.flatnonzero(ds.user_ids == user)[0]
    return list(zip(ds.item_ids[ds.items[sel]].tolist(), ds.split[sel].tolist(), strict=True))


def test_leave_last_out_with_dislikes_around_the_held_out_positives():
    ds = build(
        [
            ("u", "p5", P, 50), ("u", "p1", P, 10), ("u", "d1", D, 15), ("u", "p2", P, 20),
            ("u", "d2", D, 25), ("u", "p3", P, 30), ("u", "d3", D, 35), ("u", "p4", P, 40),
            ("u", "d4", D, 45), ("u", "d5", D, 55),
        ]
    )  # fmt: skip
    assert per_user(ds, "u") == [
        ("p1", TRAIN), ("d1", TRAIN), ("p2", TRAIN), ("d2", TRAIN), ("p3", TRAIN), ("d3", TRAIN),
        ("p4", VALID), ("d4", VALID),
        ("p5", TEST), ("d5", TEST),
    ]  # fmt: skip


def test_users_with_fewer_than_three_positives_stay_in_train():
    ds = build(
        [
            ("a", "x", P, 1),
            ("a", "y", P, 2),
            ("a", "z", D, 3),
            ("b", "x", P, 1),
            ("b", "y", P, 2),
            ("b", "w", P, 3),
        ]
    )
    assert per_user(ds, "a") == [("x", TRAIN), ("y", TRAIN), ("z", TRAIN)]
    assert per_user(ds, "b") == [("x", TRAIN), ("y", VALID), ("w", TEST)]


def test_equal_timestamps_keep_file_order():
    # Three positives in the same second: the file order decides which is "last".
    ds = build(
        [("u", "first", P, 7), ("u", "second", P, 7), ("u", "third", P, 7), ("u", "early", P, 1)]
    )
    assert per_user(ds, "u") == [
        ("early", TRAIN),
        ("first", TRAIN),
        ("second", VALID),
        ("third", TEST),
    ]


def test_events_sorted_by_user_then_time():
    ds = build([("b", "x", P, 3), ("a", "y", P, 9), ("b", "z", D, 1), ("a", "x", P, 2)])
    assert ds.user_ids.tolist() == ["a", "b"]
    assert ds.users.tolist() == [0, 0, 1, 1]
    assert ds.ts.tolist() == [2, 9, 1, 3]


def test_given_split_is_kept_and_untimed_order_is_file_order():
    ds = build(
        [("u", "a", P, 0), ("u", "b", P, 0), ("u", "c", P, 0)],
        split=[TEST, TRAIN, VALID],
        timestamped=False,
    )
    assert not ds.timestamped and np.isnan(ds.ts).all()
    assert per_user(ds, "u") == [("a", TEST), ("b", TRAIN), ("c", VALID)]


def test_temporal_split_matches_a_plain_python_rule_on_random_data():
    rng = np.random.default_rng(0)
    users = np.sort(rng.integers(0, 40, 600))
    labels = np.where(rng.random(600) < 0.3, D, P).astype(np.int8)
    got = temporal_split(users, labels)
    want = np.full(600, TRAIN)
    for u in np.unique(users):
        idx = np.flatnonzero(users == u)
        pos = idx[labels[idx] == P]
        if len(pos) >= 3:
            want[idx[idx >= pos[-2]]] = VALID
            want[idx[idx >= pos[-1]]] = TEST
    assert (got == want).all()


def test_attach_feature_by_id_with_unknowns():
    ds = build([("u", "a", P, 1), ("u", "b", P, 2), ("u", "c", P, 3)])
    attach_feature(ds, "genre", np.array(["c", "a", "zzz"]), np.array([2, 1, 3]), 4)
    assert ds.item_features["genre"].tolist() == [1, 0, 2]
    assert ds.item_feature_sizes["genre"] == 4
