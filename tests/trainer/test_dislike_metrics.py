"""Measuring learning from dislikes: like_dislike_auc, dislike_share@20, the dislike
holdout that feeds them (leak-free by construction) and the gate that reads them."""

from __future__ import annotations

import numpy as np
import pytest

from common.config import ConfigError, load_config
from trainer.config import TrainerConfig
from trainer.data.dataset import DISLIKE, HOLDOUT, POSITIVE, TEST, TRAIN, VALID, EvalSet
from trainer.data.examples import build_eval_set, build_judged_set, build_train_examples
from trainer.data.split import (
    apply_dislike_holdout,
    assemble,
    holdout_groups,
    parse_dislike_holdout,
)
from trainer.dislike_metrics import (
    JUDGED_NOT_MEASURED,
    dislike_share,
    embedding_scores,
    judged_metrics,
    like_dislike_auc,
)
from trainer.evaluate import evaluate, popular_baseline
from trainer.pipeline.gate import GateRule, apply_gate, holdout_mismatch

P, D = POSITIVE, DISLIKE


def _csr(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    ptr = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int64)
    vals = np.array([i for x in lists for i in x], dtype=np.int32)
    return ptr, vals


def judged_set(positives, dislikes, masks=None) -> EvalSet:
    u = len(positives)
    tp, ti = _csr(positives)
    dp, di = _csr(dislikes)
    mp, mi = _csr(masks or [[] for _ in range(u)])
    z = np.zeros((u, 1), np.int32)
    return EvalSet(np.arange(u, dtype=np.int32), z, z, tp, ti, mp, mi, dp, di)


# -- the metrics, on hand-computed values ---------------------------------------------------


def test_like_dislike_auc_is_a_mean_over_users_with_ties_as_halves():
    # User 0 likes items 0, 1 and dislikes 2, 6; user 1 likes 3 and dislikes 4, 5.
    ev = judged_set([[0, 1], [3]], [[2, 6], [4, 5]])
    scores = np.array(
        [
            # item:  0    1    2    3    4    5    6
            [0.9, 0.1, 0.5, 0.0, 0.0, 0.0, 0.95],  # user 0
            [0.0, 0.0, 0.0, 0.4, 0.4, 0.1, 0.0],  # user 1
        ]
    )
    # User 0: (0,2) right, (1,2) wrong, (0,6) wrong, (1,6) wrong -> 1/4.
    # User 1: (3,4) tie -> 1/2, (3,5) right -> 1; mean 3/4.
    # Averaged over users: (1/4 + 3/4) / 2 = 0.5 (pooled over the 6 pairs it would be 2.5/6).
    auc = like_dislike_auc(lambda rows, items: scores[rows, items], ev)
    assert auc == pytest.approx(0.5, abs=1e-12)
    # The same scores as user . item inner products (what the ranking uses).
    users = np.eye(2)
    items = scores.T.copy()
    assert like_dislike_auc(embedding_scores(users, items), ev) == pytest.approx(0.5, abs=1e-12)
    # A masked answer is still scored: masks do not change the AUC.
    masked = judged_set([[0, 1], [3]], [[2, 6], [4, 5]], masks=[[0, 2], [3, 4, 5]])
    assert like_dislike_auc(embedding_scores(users, items), masked) == pytest.approx(0.5)
    assert like_dislike_auc(embedding_scores(users, items), judged_set([], [])) == 0.5


def test_like_dislike_auc_matches_a_pairwise_loop_with_ties():
    rng = np.random.default_rng(4)
    u, n = 40, 30
    pos, dis = [], []
    for _ in range(u):
        perm = rng.permutation(n)
        a, b = int(rng.integers(1, 5)), int(rng.integers(1, 6))
        pos.append(perm[:a].tolist())
        dis.append(perm[a : a + b].tolist())
    ev = judged_set(pos, dis)
    scores = rng.integers(0, 4, size=(u, n)).astype(float)  # many ties
    want = np.mean(
        [
            np.mean([1.0 if scores[r, p] > scores[r, d] else 0.5 if scores[r, p] == scores[r, d] else 0.0 for p in pos[r] for d in dis[r]])
            for r in range(u)
        ]
    )  # fmt: skip
    got = like_dislike_auc(lambda rows, items: scores[rows, items], ev)
    assert got == pytest.approx(want, abs=1e-12)


def test_dislike_share_is_pooled_and_ignores_unjudged_items():
    ev = judged_set([[0, 1], [3]], [[2, 6], [4, 5]])
    topk = np.full((2, 20), -1, dtype=np.int64)
    topk[0, :4] = [9, 2, 0, 8]  # one dislike, one positive, two unjudged items
    topk[1, :3] = [3, 7, 10]  # one positive
    share, shown, users = dislike_share(topk, ev)
    assert (share, shown, users) == (pytest.approx(1 / 3), 3, 2)
    # Hits below the 20th slot do not count.
    deep = np.full((2, 25), -1, dtype=np.int64)
    deep[0, 22] = 2
    assert dislike_share(deep, ev) == (0.0, 0, 0)
    m = judged_metrics(topk, lambda rows, items: np.zeros(len(rows)), ev)
    assert m == {
        "like_dislike_auc": 0.5,  # all scores tied
        "dislike_share@20": pytest.approx(1 / 3),
        "num_users_judged": 2,
        "num_judged_in_top20": 3,
        "num_users_judged_in_top20": 2,
    }
    assert judged_metrics(topk[:0], lambda r, i: r, judged_set([], [])) == JUDGED_NOT_MEASURED


def test_model_and_popularity_scores_on_a_judged_set():
    # Two users, four items; the mask holds item 3 for user 0.
    ev = judged_set([[0], [1]], [[2], [0]], masks=[[3], []])
    item_emb = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [2.0, 2.0]], np.float32)

    def embed(history, dislikes):
        return np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)[: len(history)]

    empty = judged_set([[]], [[]])  # no leave-last-out user needed for these figures
    ev_counts = np.array([5, 1, 5, 9])
    m = evaluate(embed, item_emb, empty, ev_counts, None, ev).metrics
    # User 0: positive 0 scores 1.0 > dislike 2 at 0.5 -> 1. User 1: positive 1 (1.0) >
    # dislike 0 (0.0) -> 1. Top 20 (item 3 masked for user 0): user 0 [0, 2, 1],
    # user 1 [3, 1, 2, 0]: dislikes shown 2 (item 2 to user 0, item 0 to user 1),
    # positives shown 2 -> share 1/2.
    assert m["like_dislike_auc"] == pytest.approx(1.0)
    assert m["dislike_share@20"] == pytest.approx(0.5) and m["num_judged_in_top20"] == 4
    # Popularity: user 0: positive 0 (5) ties dislike 2 (5) -> 1/2; user 1: positive 1 (1)
    # below dislike 0 (5) -> 0; mean 1/4. Its lists show everything judged here too.
    b = popular_baseline(empty, ev_counts, ev)
    assert b["like_dislike_auc"] == pytest.approx(0.25)
    assert b["dislike_share@20"] == pytest.approx(0.5) and b["num_users_judged"] == 2
    # Without a judged set: reported as not measured.
    plain = evaluate(embed, item_emb, empty, ev_counts, None).metrics
    assert {k: plain[k] for k in JUDGED_NOT_MEASURED} == JUDGED_NOT_MEASURED


def test_an_answer_outside_the_catalog_is_not_judged():
    ev = judged_set([[0], [1]], [[5], [2]])  # item 5 is beyond a 4-item catalog
    item_emb = np.eye(4, dtype=np.float32)[:, :2]

    def embed(history, dislikes):
        return np.ones((len(history), 2), np.float32)

    m = evaluate(embed, item_emb, judged_set([[]], [[]]), np.ones(4), None, ev).metrics
    assert m["num_users_judged"] == 1  # user 0 has no dislike left to judge


# -- the dislike holdout --------------------------------------------------------------------


def build(rows):
    users, items, labels, ts = zip(*rows, strict=True)
    return assemble(
        source="test",
        kind="test",
        user_raw=np.array(users),
        item_raw=np.array(items),
        labels=np.array(labels, dtype=np.int8),
        ts=np.array(ts, dtype=float),
    )


def per_user(ds, user):
    sel = ds.users == np.flatnonzero(ds.user_ids == user)[0]
    return list(zip(ds.item_ids[ds.items[sel]].tolist(), ds.split[sel].tolist(), strict=True))


#: Ten events of one user: the last fifth is the last two (d9 and p10).
TEN = [
    ("u", "p1", P, 10), ("u", "d2", D, 20), ("u", "p3", P, 30), ("u", "p4", P, 40),
    ("u", "d5", D, 50), ("u", "p6", P, 60), ("u", "p7", P, 70), ("u", "d8", D, 80),
    ("u", "d9", D, 85), ("u", "p10", P, 90),
]  # fmt: skip


def _test_user_holdout(rows, fraction="last_fraction:0.2"):
    ds = build(rows)
    # valid_share tiny: the one user is a test user (whatever its hash).
    return apply_dislike_holdout(ds, fraction, 1e-9)


def test_the_last_fractions_dislikes_leave_training_and_positives_stay():
    ds = _test_user_holdout(TEN)
    assert per_user(ds, "u") == [
        ("p1", TRAIN), ("d2", TRAIN), ("p3", TRAIN), ("p4", TRAIN), ("d5", TRAIN),
        ("p6", TRAIN), ("p7", VALID), ("d8", VALID), ("d9", VALID), ("p10", TEST),
    ]  # fmt: skip
    # A fraction of 0.4 (four events: d8, d9 are VALID already; p7, p10 are positives)
    # and 0.6 (six: d5 becomes HOLDOUT, p4 and p6 stay TRAIN).
    assert [s for _, s in per_user(_test_user_holdout(TEN, "last_fraction:0.6"), "u")] == [
        TRAIN, TRAIN, TRAIN, TRAIN, HOLDOUT, TRAIN, VALID, VALID, VALID, TEST,
    ]  # fmt: skip
    held = _test_user_holdout(TEN, "last_fraction:0.6")
    assert held.summary()["counts"]["holdout"] == 1
    # Training: no row for d5, and no row's dislike input holds it (p6 is after it).
    ex = build_train_examples(held, 5, 5)
    tok = {x: i + 1 for i, x in enumerate(held.item_ids)}
    assert tok["d5"] not in set(ex.item.tolist())
    assert tok["d5"] not in set(ex.dislikes.ravel().tolist())
    assert tok["p6"] in set(ex.item.tolist())
    # ...while without the holdout p6's row sees d5.
    plain = build_train_examples(build(TEN), 5, 5)
    assert tok["d5"] in set(plain.dislikes.ravel().tolist())


def test_judged_set_answers_input_and_mask():
    ds = _test_user_holdout(TEN, "last_fraction:0.6")
    tok = {x: i for i, x in enumerate(ds.item_ids)}
    test = build_judged_set(ds, "test", 5, 5)
    assert len(test) == 1
    assert ds.item_ids[test.targets(0)].tolist() == ["p10"]
    assert sorted(ds.item_ids[test.heldout_dislikes(0)].tolist()) == ["d5"]  # not d8/d9 (VALID)
    # Input: every positive before p10 and the dislikes other than d5.
    assert test.history[0].tolist() == [tok[x] + 1 for x in ("p1", "p3", "p4", "p6", "p7")]
    assert test.dislikes[0].tolist() == [0, 0] + [tok[x] + 1 for x in ("d2", "d8", "d9")]
    # Mask: TRAIN and VALID items; the answer d5 stays rankable.
    assert sorted(ds.item_ids[test.mask(0)].tolist()) == sorted(
        ["p1", "d2", "p3", "p4", "p6", "p7", "d8", "d9"]
    )
    # The user is a test user: no validation answers.
    assert len(build_judged_set(ds, "valid", 5, 5)) == 0
    # As a validation user: the VALID positive against d5 and the VALID dislikes d8, d9.
    as_valid = apply_dislike_holdout(build(TEN), "last_fraction:0.6", 1 - 1e-9)
    valid = build_judged_set(as_valid, "valid", 5, 5)
    assert ds.item_ids[valid.targets(0)].tolist() == ["p7"]
    assert sorted(ds.item_ids[valid.heldout_dislikes(0)].tolist()) == ["d5", "d8", "d9"]
    assert valid.dislikes[0].tolist() == [0, 0, 0, 0, tok["d2"] + 1]
    assert len(build_judged_set(as_valid, "test", 5, 5)) == 0
    # Leave-last-out is untouched by the holdout: the same test set either way.
    a, b = build_eval_set(ds, "test", 5, 5), build_eval_set(build(TEN), "test", 5, 5)
    for field in ("users", "history", "dislikes", "target_items", "mask_items", "dislike_items"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_the_cut_never_splits_a_second_and_never_reads_labels():
    # The last fifth would start at d9, which shares its second with d8: both are held out.
    rows = [(u, i, lab, 80 if i in ("d8", "d9") else t) for u, i, lab, t in TEN]
    ds = _test_user_holdout(rows, "last_fraction:0.2")
    assert dict(per_user(ds, "u"))["d8"] == VALID and dict(per_user(ds, "u"))["d9"] == VALID
    assert ds.dislike_holdout.first[0] == 7  # d8's position
    # Which users are held out, and where, does not depend on the labels.
    flipped = [(u, i, P if lab == D else D, t) for u, i, lab, t in TEN]
    a, b = (
        _test_user_holdout(TEN, "last_fraction:0.3"),
        _test_user_holdout(flipped, "last_fraction:0.3"),
    )
    np.testing.assert_array_equal(a.dislike_holdout.first, b.dislike_holdout.first)


def test_a_later_snapshot_holds_out_a_suffix_of_what_an_earlier_one_held_out():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n, k = int(rng.integers(1, 40)), int(rng.integers(0, 20))
        labels = rng.choice([P, D], size=n + k)
        rows = [("u", f"i{j}", int(labels[j]), float(j)) for j in range(n + k)]
        rows[0] = ("u", "i0", D, 0.0)  # the source has a dislike
        old = apply_dislike_holdout(build(rows[:n]), "last_fraction:0.2", 0.5)
        new = apply_dislike_holdout(build(rows), "last_fraction:0.2", 0.5)
        assert new.dislike_holdout.first[0] >= old.dislike_holdout.first[0]


def test_groups_are_a_stable_hash_of_the_id():
    ids = np.array([f"user-{i}" for i in range(2000)])
    g = holdout_groups(ids, 0.2)
    assert set(g.tolist()) == {VALID, TEST}
    assert 0.15 < (g == VALID).mean() < 0.25
    # The same id, the same group, whatever the other ids are.
    np.testing.assert_array_equal(holdout_groups(ids[::-1], 0.2), g[::-1])
    half = holdout_groups(ids, 0.2, users_share=0.5)
    assert 0.45 < (half != TRAIN).mean() < 0.55
    assert 0.15 < (half == VALID).sum() / (half != TRAIN).sum() < 0.25


def test_the_holdout_applies_only_where_it_can_be_measured():
    no_dislikes = build([(u, i, P, t) for u, i, lab, t in TEN])
    assert apply_dislike_holdout(no_dislikes, "last_fraction:0.2", 0.2) is no_dislikes
    ds = build(TEN)
    assert apply_dislike_holdout(ds, "none", 0.2) is ds
    held = apply_dislike_holdout(ds, "last_fraction:0.2", 0.2)
    assert apply_dislike_holdout(held, "last_fraction:0.2", 0.2) is held  # idempotent
    with pytest.raises(ValueError, match="already applied"):
        apply_dislike_holdout(held, "last_fraction:0.3", 0.2)
    assert len(build_judged_set(ds, "test", 3, 3)) == 0  # no holdout, no judged users
    assert parse_dislike_holdout("last_fraction:0.25") == 0.25
    for bad in ("last_fraction:1", "last_fraction:0", "fraction:0.2", "last_fraction:x"):
        with pytest.raises(ValueError, match="split.dislike_holdout"):
            parse_dislike_holdout(bad)
        with pytest.raises(ConfigError, match="split.dislike_holdout.*'last_fraction:F'"):
            load_config(TrainerConfig, overrides=[f"split.dislike_holdout={bad}"], environ={})


def test_synthetic_judged_answers_were_never_trained_on():
    from trainer.data.sources import load_source

    ds = apply_dislike_holdout(
        load_source("synthetic:users=200,items=150,events_per_user=25,seed=2"),
        "last_fraction:0.2",
        0.2,
    )
    ex = build_train_examples(ds, 10, 5)
    trained = {
        (int(u), int(i))
        for u, i in zip(ds.users[ds.split == TRAIN], ds.items[ds.split == TRAIN], strict=True)
    }
    shown = set()  # (user, item) pairs of any training row's dislike input
    rows = np.flatnonzero(ds.split == TRAIN)
    for r, toks in zip(rows, ex.dislikes, strict=True):
        shown |= {(int(ds.users[r]), int(t) - 1) for t in toks if t}
    for which in ("valid", "test"):
        judged = build_judged_set(ds, which, 10, 5)
        assert len(judged) > 20
        for r, u in enumerate(judged.users):
            answers = {(int(u), int(i)) for i in [*judged.targets(r), *judged.heldout_dislikes(r)]}
            assert not answers & trained and not answers & shown
            toks = {int(t) - 1 for t in judged.dislikes[r] if t}
            assert not toks & set(judged.heldout_dislikes(r).tolist())
    v = set(build_judged_set(ds, "valid", 1, 1).users.tolist())
    assert not v & set(build_judged_set(ds, "test", 1, 1).users.tolist())


# -- the gate -------------------------------------------------------------------------------


RULES = {
    "recall@20": GateRule(direction="higher", tolerance=0.01),
    "like_dislike_auc": GateRule(direction="higher", tolerance=0.02),
    "dislike_share@20": GateRule(direction="lower", tolerance=0.03),
}


def _m(recall, auc, share, judged=200, shown=100, users_shown=80):
    return {
        "recall@20": recall,
        "like_dislike_auc": auc,
        "dislike_share@20": share,
        "num_users_judged": judged,
        "num_judged_in_top20": shown,
        "num_users_judged_in_top20": users_shown,
    }


def test_gate_compares_dislike_metrics_and_leaves_out_thin_ones():
    ok, rows = apply_gate(_m(0.30, 0.70, 0.20), _m(0.30, 0.71, 0.22), RULES, min_users=50)
    assert ok and not any(r.get("left_out") for r in rows)
    ok, rows = apply_gate(_m(0.30, 0.67, 0.20), _m(0.30, 0.70, 0.20), RULES, min_users=50)
    assert not ok and [r["metric"] for r in rows if not r["ok"]] == ["like_dislike_auc"]
    ok, rows = apply_gate(_m(0.30, 0.70, 0.30), _m(0.30, 0.70, 0.20), RULES, min_users=50)
    assert not ok and [r["metric"] for r in rows if not r["ok"]] == ["dislike_share@20"]
    # The issue's case: a much better candidate against a published version whose dislike
    # figures rest on nothing. They are left out, with the reason; recall decides.
    ok, rows = apply_gate(
        _m(0.19, 0.60, 0.6, judged=153, shown=69, users_shown=55),
        _m(0.04, 0.70, 0.0, judged=12, shown=0, users_shown=0),
        RULES,
        min_users=50,
    )
    assert ok
    why = {r["metric"]: r.get("why", "") for r in rows}
    assert why["like_dislike_auc"].startswith("left out: too few users")
    assert "published version measured on 12" in why["like_dislike_auc"]
    assert why["dislike_share@20"].startswith("left out: too few users")
    assert all(r["ok"] for r in rows) and [r.get("left_out") for r in rows] == [None, True, True]
    # With no minimum, a share over no judged item is still not compared against 0.0.
    _, rows = apply_gate(_m(0.3, 0.7, 0.5), _m(0.3, 0.7, 0.0, shown=0, users_shown=0), RULES)
    assert rows[2]["why"] == "left out: no judged item in the published version's top 20 lists"
    # A worse recall is refused whatever the dislike figures say.
    ok, rows = apply_gate(_m(0.25, 0.80, 0.05), _m(0.30, 0.70, 0.20), RULES, min_users=50)
    assert not ok and [r["metric"] for r in rows if not r["ok"]] == ["recall@20"]
    # Left out by the caller (e.g. the holdouts differ).
    ok, rows = apply_gate(
        _m(0.3, 0.5, 0.9), _m(0.3, 0.7, 0.2), RULES, left_out={"like_dislike_auc": "left out: x"}
    )
    assert not ok and rows[1]["why"] == "left out: x" and not rows[2]["ok"]


def test_holdout_mismatch_reads_what_each_version_applied():
    def manifest(holdout, users=1.0):
        eval_ = {"dislike_protocol": {"holdout": holdout, "users_share": users}}
        return {"config": {"split": {"dislike_holdout": holdout}}, "eval": eval_}

    assert holdout_mismatch(manifest("last_fraction:0.2"), manifest("last_fraction:0.2")) is None
    assert holdout_mismatch(manifest("none"), manifest("none")) is None
    why = holdout_mismatch(manifest("none"), manifest("last_fraction:0.2"))
    assert why.startswith("left out: the published version was trained with dislike holdout 'none'")
    assert holdout_mismatch(manifest("last_fraction:0.2", 0.5), manifest("last_fraction:0.2"))
    # A version from before the holdout existed: nothing in its manifest.
    assert holdout_mismatch({"config": {}}, manifest("last_fraction:0.2"))


# -- the scheduled job ----------------------------------------------------------------------


@pytest.mark.slow
def test_the_issue_repro_publishes_and_a_worse_recall_is_still_refused(tmp_path):
    """Two snapshots of synthetic data (the issue's repro, smaller model and fewer epochs):
    the better candidate publishes; a bad one is refused on recall, and the report and
    stderr say which dislike figures were left out and why."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from common import artifacts
    from tests.trainer.test_pipeline import BAD_CANDIDATE, _append, _ingest, _likes
    from trainer.pipeline.config import load_pipeline_config
    from trainer.pipeline.run import run_once

    sets = [
        "train.epochs=3",
        "train.batch_size=128",
        "model.embedding_dim=16",
        "model.hidden_units=16",
        "model.history_length=10",
        "model.dislike_length=5",
        "frequency.buckets=4096",
    ]
    config = load_pipeline_config(overrides=sets, environ={})
    assert list(config.pipeline.gate) == ["recall@20", "like_dislike_auc"]  # the default gate
    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    art = tmp_path / "art"
    _ingest(url, "synthetic:users=300,items=2000,seed=5")
    first = run_once(url, art, config, progress=False)
    assert first["outcome"] == "published"
    _ingest(url, "synthetic:users=300,items=2000,seed=6")
    second = run_once(url, art, config, progress=False)
    assert second["outcome"] == "published", second["reason"]
    rows = {r["metric"]: r for r in second["gate"]}
    assert rows["recall@20"]["delta"] > 0.05  # the candidate is much better...
    auc = rows["like_dislike_auc"]
    assert not auc.get("left_out") and auc["ok"]  # ...and its dislike figure was compared
    holdout = second["holdout"]
    assert holdout["dislike_holdout"] == "last_fraction:0.2" and holdout["judged_users"] >= 50
    for version in ("candidate", "published"):
        assert second[version]["metrics"]["num_users_judged"] == holdout["judged_users"]
    saved = json.loads((art / "reports" / f"{second['run_id']}.json").read_text())
    assert saved["gate"] == json.loads(json.dumps(second["gate"]))
    manifest = artifacts.read_manifest(art, second["version"])
    assert manifest["eval"]["dislike_protocol"]["users"] == manifest["metrics"]["num_users_judged"]
    assert "like_dislike_auc" in manifest["training"]["valid_metrics"]

    # A bad candidate, gated with a minimum no holdout reaches: refused on recall, the
    # dislike figure left out (not compared against anything), and both said.
    known = [f"i{j}" for j in range(40)]
    _append(url, [{**e, "item_id": known[u]} for u, e in enumerate(_likes("x", "", 40, 1.7e9))])
    cmd = [
        sys.executable,
        "-m",
        "twotower.cli",
        "pipeline",
        "--store",
        url,
        "--artifacts",
        str(art),
    ]
    for s in [*sets, *BAD_CANDIDATE, "pipeline.gate_min_users=100000"]:
        cmd += ["--set", s]
    cli = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[2]
    )
    assert cli.returncode == 1, cli.stderr[-3000:]
    refused = json.loads(cli.stdout)
    assert refused["outcome"] == "refused"
    assert refused["reason"].startswith("regression on recall@20; not compared: like_dislike_auc")
    assert "left out: too few users" in refused["reason"]
    assert "recall@20: published" in cli.stderr and "REGRESSION" in cli.stderr
    assert "like_dislike_auc: published" in cli.stderr and "left out: too few users" in cli.stderr
    saved = json.loads((art / "reports" / f"{refused['run_id']}.json").read_text())
    assert saved["reason"] == refused["reason"]
    assert [r.get("left_out", False) for r in saved["gate"]] == [False, True]
    assert artifacts.latest_version(art) == second["version"]
