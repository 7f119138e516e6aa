"""Training rows and eval sets: no leakage, right alignment, lightgcn sampling, masks."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.data.dataset import DISLIKE, POSITIVE, TEST, TRAIN, VALID
from trainer.data.examples import (
    build_eval_set,
    build_train_examples,
    capped_users,
)
from trainer.data.sources import load_source
from trainer.data.split import assemble

P, D = POSITIVE, DISLIKE


def build(rows, split=None):
    users, items, labels, ts = zip(*rows, strict=True)
    return assemble(
        source="test",
        kind="test",
        user_raw=np.array(users),
        item_raw=np.array(items),
        labels=np.array(labels, dtype=np.int8),
        ts=None if split is not None else np.array(ts, dtype=float),
        split=None if split is None else np.array(split, dtype=np.int8),
    )


def tok(ds, *ids):
    """Tokens (index + 1) of item ids."""
    index = {x: i for i, x in enumerate(ds.item_ids)}
    return [index[x] + 1 for x in ids]


def test_same_timestamp_events_do_not_see_each_other():
    ds = build(
        [
            ("u", "a", P, 1), ("u", "x", D, 1), ("u", "b", P, 5), ("u", "c", P, 5), ("u", "y", D, 5),
            ("u", "d", P, 9), ("u", "v", P, 20), ("u", "t", P, 30),
        ]
    )  # fmt: skip
    ex = build_train_examples(ds, history_length=3, dislike_length=2)
    rows = {ds.item_ids[i - 1]: r for r, i in enumerate(ex.item)}
    assert set(rows) == {"a", "x", "b", "c", "y", "d"}  # TRAIN events only
    # At t=5, b, c and y see only what happened at t=1 -- not each other.
    for item in ("b", "c", "y"):
        assert ex.history[rows[item]].tolist() == [0, 0] + tok(ds, "a")
        assert ex.dislikes[rows[item]].tolist() == [0] + tok(ds, "x")
    # At t=1 nothing came before (not even the event sharing the second).
    assert ex.history[rows["a"]].tolist() == [0, 0, 0] and ex.dislikes[rows["x"]].tolist() == [0, 0]
    # Later: the last H positives, oldest first, right-aligned; ties keep file order.
    assert ex.history[rows["d"]].tolist() == tok(ds, "a", "b", "c")
    assert ex.dislikes[rows["d"]].tolist() == tok(ds, "x", "y")
    assert ex.is_positive[[rows["x"], rows["y"], rows["d"]]].tolist() == [0.0, 0.0, 1.0]
    assert (ex.weight == 1.0).all() and ex.history.dtype == np.int32


def test_ntr_state_after_puts_a_dislike_rows_own_item_last_in_its_dislike_input():
    ds = build(
        [
            ("u", "a", P, 1), ("u", "x", D, 2), ("u", "b", P, 3), ("u", "y", D, 4),
            ("u", "z", D, 5), ("u", "c", P, 6), ("u", "v", P, 20), ("u", "t", P, 30),
        ]
    )  # fmt: skip
    before = build_train_examples(ds, history_length=2, dislike_length=2)
    after = build_train_examples(ds, history_length=2, dislike_length=2, ntr_state="after")
    rows = {ds.item_ids[i - 1]: r for r, i in enumerate(after.item)}
    assert after.dislikes[rows["x"]].tolist() == [0] + tok(ds, "x")
    assert before.dislikes[rows["z"]].tolist() == tok(ds, "x", "y")
    assert after.dislikes[rows["z"]].tolist() == tok(ds, "y", "z")  # x drops out of D = 2
    # Positive rows, histories, labels and weights are the same either way.
    pos = after.is_positive == 1.0
    np.testing.assert_array_equal(after.dislikes[pos], before.dislikes[pos])
    for field in ("history", "item", "is_positive", "weight"):
        np.testing.assert_array_equal(getattr(after, field), getattr(before, field))
    with pytest.raises(ValueError, match="ntr_state"):
        build_train_examples(ds, 2, 2, ntr_state="during")


def test_dislike_rows_carry_the_dislike_weight():
    ds = load_source("synthetic:users=40,items=50,events_per_user=15,categories=5,seed=2")
    ex = build_train_examples(ds, 4, 2, dislike_weight=2.5)
    dislike = ex.is_positive == 0.0
    assert dislike.any() and (~dislike).any()
    assert (ex.weight[dislike] == 2.5).all() and (ex.weight[~dislike] == 1.0).all()
    assert (build_train_examples(ds, 4, 2).weight == 1.0).all()  # the default w = 1
    with pytest.raises(ValueError, match="dislike_weight"):
        build_train_examples(ds, 4, 2, dislike_weight=float("nan"))


def test_history_keeps_only_the_last_h_positives():
    ds = build([("u", f"i{k}", P, k) for k in range(8)])
    ex = build_train_examples(ds, history_length=3, dislike_length=1)
    last_train = ex.item.tolist().index(tok(ds, "i5")[0])
    assert ex.history[last_train].tolist() == tok(ds, "i2", "i3", "i4")
    assert len(ex) == 6  # i6 is VALID, i7 TEST


def reference_inputs(ds, rows, H, D):
    """Plain-Python reading of the rule: last H positives / D dislikes strictly earlier."""
    hist = np.zeros((len(rows), H), np.int32)
    dis = np.zeros((len(rows), D), np.int32)
    for n, r in enumerate(rows):
        same = np.flatnonzero((ds.users == ds.users[r]) & (ds.ts < ds.ts[r]))
        same = same[np.argsort(ds.ts[same], kind="stable")]
        for out, label, width in ((hist, POSITIVE, H), (dis, DISLIKE, D)):
            toks = (ds.items[same[ds.labels[same] == label]] + 1)[-width:]
            if len(toks):
                out[n, width - len(toks) :] = toks
    return hist, dis


def test_train_rows_match_a_plain_python_reference_on_synthetic_data_with_ties():
    ds = load_source("synthetic:users=60,items=80,events_per_user=15,categories=5,seed=11")
    ds.ts = np.floor(ds.ts / 86400.0 / 20) * 86400.0 * 20  # coarse clock: many equal timestamps
    rows = np.flatnonzero(ds.split == TRAIN)
    ex = build_train_examples(ds, 6, 3)
    hist, dis = reference_inputs(ds, rows, 6, 3)
    assert (ex.history == hist).all() and (ex.dislikes == dis).all()
    assert (ex.item == ds.items[rows] + 1).all()
    assert (ex.is_positive == (ds.labels[rows] == P)).all()


def test_eval_sets_timestamped():
    ds = build(
        [
            ("u", "a", P, 1), ("u", "x", D, 2), ("u", "b", P, 3), ("u", "c", P, 4), ("u", "y", D, 5),
            ("u", "v", P, 6), ("u", "z", D, 7), ("u", "t", P, 8), ("u", "w", D, 9),
            ("s", "a", P, 1), ("s", "b", P, 2),
        ]
    )  # fmt: skip
    test = build_eval_set(ds, "test", 4, 4)
    assert len(test) == 1 and ds.user_ids[test.users[0]] == "u"  # s has < 3 positives
    assert test.history[0].tolist() == tok(ds, "a", "b", "c", "v")
    assert test.dislikes[0].tolist() == [0] + tok(ds, "x", "y", "z")
    assert (test.targets(0) + 1).tolist() == tok(ds, "t")
    # Masked: every TRAIN and VALID event's item, dislikes included (z is a VALID input).
    assert sorted(test.mask(0) + 1) == sorted(tok(ds, "a", "b", "c", "v", "x", "y", "z"))
    assert (test.heldout_dislikes(0) + 1).tolist() == tok(ds, "w")  # z is an input, not an answer

    valid = build_eval_set(ds, "valid", 4, 4)
    assert valid.history[0].tolist() == [0] + tok(ds, "a", "b", "c")
    assert valid.dislikes[0].tolist() == [0, 0] + tok(ds, "x", "y")
    assert (valid.targets(0) + 1).tolist() == tok(ds, "v")
    assert sorted(valid.mask(0) + 1) == sorted(tok(ds, "a", "b", "c", "x", "y"))
    assert sorted(valid.heldout_dislikes(0) + 1) == sorted(tok(ds, "z", "w"))
    for ev in (test, valid):  # an answer is never masked
        assert not set(ev.heldout_dislikes(0)) & set(ev.mask(0))
        assert not set(ev.targets(0)) & set(ev.mask(0))


def test_items_disliked_in_train_are_masked_and_never_answers():
    # u disliked x in TRAIN, then "likes" x as its test positive and dislikes x again
    # after it: x can never be ranked for u, so it is neither a target nor a held-out
    # dislike. s disliked q in TRAIN; its test target t stays, q is masked, and its
    # held-out dislike r (same second as t, so not an input) stays unmasked.
    ds = build(
        [
            ("u", "a", P, 1), ("u", "x", D, 2), ("u", "b", P, 3), ("u", "v", P, 4),
            ("u", "x", P, 5), ("u", "x", D, 6),
            ("s", "a", P, 1), ("s", "q", D, 2), ("s", "b", P, 3), ("s", "v", P, 4),
            ("s", "t", P, 5), ("s", "r", D, 5),
        ]
    )  # fmt: skip
    test = build_eval_set(ds, "test", 4, 4)
    assert [ds.user_ids[u] for u in test.users] == ["s"]  # u's only target is masked
    assert (test.targets(0) + 1).tolist() == tok(ds, "t")
    assert sorted(test.mask(0) + 1) == sorted(tok(ds, "a", "q", "b", "v"))
    assert (test.heldout_dislikes(0) + 1).tolist() == tok(ds, "r")
    valid = build_eval_set(ds, "valid", 4, 4)
    u_row = [ds.user_ids[u] for u in valid.users].index("u")
    assert (valid.targets(u_row) + 1).tolist() == tok(ds, "v")
    # u's later dislike of x repeats a TRAIN dislike: masked, so not an answer.
    assert len(valid.heldout_dislikes(u_row)) == 0
    assert tok(ds, "x")[0] - 1 in valid.mask(u_row)


def test_eval_input_excludes_events_in_the_targets_second_and_repeats_are_dropped():
    # x is VALID (after v in file order) and shares t's second: held out, not an input.
    ds = build(
        [("u", "a", P, 1), ("u", "b", P, 2), ("u", "v", P, 3), ("u", "x", D, 3), ("u", "t", P, 3)]
    )
    test = build_eval_set(ds, "test", 3, 2)
    assert test.history[0].tolist() == [0] + tok(ds, "a", "b")  # v shares t's second
    assert test.dislikes[0].tolist() == [0, 0]
    assert sorted(test.heldout_dislikes(0) + 1) == tok(ds, "x")
    # A user whose held-out positive repeats a train item has nothing to rank.
    rep = build([("u", "a", P, 1), ("u", "b", P, 2), ("u", "c", P, 3), ("u", "a", P, 4)])
    assert (
        len(build_eval_set(rep, "test", 3, 2)) == 0 and len(build_eval_set(rep, "valid", 3, 2)) == 1
    )


def lightgcn_ds(disjoint=False):
    rng = np.random.default_rng(5)
    rows, split = [], []
    for u in range(30):
        n = int(rng.integers(1, 12))
        items = u * 20 + np.arange(n + 4) if disjoint else rng.choice(40, n + 4, replace=False)
        for k, i in enumerate(items):
            rows.append((f"{u}", f"{i}", P, 0))
            split.append(TRAIN if k < n else (VALID if k == n else TEST))
    return build(rows, split=split)


def test_lightgcn_history_is_a_sample_of_other_train_items_never_the_target():
    ds = lightgcn_ds(disjoint=True)  # an item names its user
    H = 5
    ex = build_train_examples(ds, H, 2, seed=1, epoch=0)
    train = (ds.split == TRAIN) & (ds.labels == P)
    assert len(ex) == train.sum() and (ex.dislikes == 0).all()
    assert sorted(ex.item.tolist()) == sorted((ds.items[train] + 1).tolist())
    owner = dict(zip((ds.items[train] + 1).tolist(), ds.users[train].tolist(), strict=True))
    sizes = np.bincount(ds.users[train])
    lengths = set()
    for r in range(len(ex)):
        h = ex.history[r]
        got = h[h > 0].tolist()
        target = int(ex.item[r])
        assert target not in got  # never the target itself
        assert len(set(got)) == len(got)  # without replacement
        assert all(owner[i] == owner[target] for i in got)  # the same user's train items
        assert len(got) == min(H, sizes[owner[target]] - 1)
        assert (h[: H - len(got)] == 0).all()  # right-aligned
        lengths.add(len(got))
    assert 0 in lengths and H in lengths  # both a one-item user and a capped sample occur


def test_lightgcn_samples_change_per_epoch_and_repeat_per_seed():
    ds = lightgcn_ds()
    a = build_train_examples(ds, 3, 1, seed=1, epoch=0)
    b = build_train_examples(ds, 3, 1, seed=1, epoch=0)
    c = build_train_examples(ds, 3, 1, seed=1, epoch=1)
    assert (a.history == b.history).all() and (a.item == b.item).all()
    assert not ((a.history == c.history).all() and (a.item == c.item).all())


def test_lightgcn_eval_sets():
    ds = lightgcn_ds()
    for which, known in (("test", (TRAIN, VALID)), ("valid", (TRAIN,))):
        held = TEST if which == "test" else VALID
        ev = build_eval_set(ds, which, 4, 3)
        assert len(ev) == ds.num_users and (ev.dislikes == 0).all() and len(ev.dislike_items) == 0
        for r, u in enumerate(ev.users):
            mine = ds.users == u
            train = set(ds.items[mine & (ds.split == TRAIN)].tolist())
            h = ev.history[r]
            got = h[h > 0] - 1
            assert (
                set(got.tolist()) <= train
                and len(got) == min(4, len(train))
                and (h[: 4 - len(got)] == 0).all()
            )
            assert set(ev.targets(r).tolist()) == set(ds.items[mine & (ds.split == held)].tolist())
            assert set(ev.mask(r).tolist()) == set(
                ds.items[mine & np.isin(ds.split, known)].tolist()
            )


def test_lightgcn_eval_input_is_every_train_item_up_to_h_whatever_the_seed():
    ds = lightgcn_ds()
    H = 6
    a = build_eval_set(ds, "test", H, 1, seed=0)
    b = build_eval_set(ds, "test", H, 1, seed=1)
    train = (ds.split == TRAIN) & (ds.labels == P)
    sizes = np.bincount(ds.users[train], minlength=ds.num_users)
    capped = sizes[a.users] > H
    assert capped.any() and (~capped).any()  # both kinds of user occur
    for r, u in enumerate(a.users):
        mine = np.sort(ds.items[train & (ds.users == u)]) + 1
        if not capped[r]:
            # All train items, in index order, right-aligned; no seed involved.
            assert a.history[r].tolist() == [0] * (H - len(mine)) + mine.tolist()
        else:
            got = a.history[r]
            assert (got > 0).all() and set(got) <= set(mine) and (np.diff(got) > 0).all()
    assert (a.history[~capped] == b.history[~capped]).all()
    assert capped_users(ds, a, H) == int(capped.sum())
    assert capped_users(ds, a, int(sizes.max())) == 0


def test_bad_eval_split_name():
    with pytest.raises(ValueError, match="'valid' or 'test'"):
        build_eval_set(lightgcn_ds(), "train", 3, 1)
