"""The dislike benchmark's pure figures (bench/dislikes.py): ranks, audiences, the case
sums and the tuning rule, on arrays small enough to check by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.dislikes import (
    ARMS,
    _targets_table,
    add_sums,
    audience,
    describe,
    finish_reach,
    item_ranks,
    paired_changes,
    pick_default,
    rank_separation,
    reach_sums,
    select_arms,
    sweep_arms,
    tune_arms,
)
from trainer.metrics import select_topk


def test_item_ranks_follow_the_evaluation_order_and_skip_masked_items():
    scores = np.array([[0.1, 0.9, 0.5, 0.9], [1.0, 0.0, 0.0, 2.0]])
    # user 0 masks item 1; user 1 masks nothing
    ranks = item_ranks(scores, np.array([0, 1, 1]), np.array([1]))
    assert ranks.tolist() == [[2, -1, 1, 0], [1, 2, 3, 0]]
    # The order is topk_all_ranking's: score descending, ties by index.
    neg = -scores[1]
    assert np.argsort(ranks[1]).tolist() == select_topk(neg, 4).tolist()


def test_audience_counts_input_positives_per_category():
    category = np.array([1, 1, 2, 0])  # item 3: unknown category, nobody's audience
    history = np.array([[0, 1, 2, 3], [0, 0, 0, 3]])  # tokens = index + 1
    out = audience(history, category, 2)
    assert out.tolist() == [[True, True, False, False], [False, False, False, False]]
    assert audience(history, category, 1)[1].tolist() == [False, False, True, False]


def test_rank_separation_is_the_mann_whitney_share_with_half_ties():
    assert rank_separation(np.array([5, 6]), np.array([1, 2])) == 1.0
    assert rank_separation(np.array([1]), np.array([5])) == 0.0
    assert rank_separation(np.array([3]), np.array([3, 1])) == 0.75
    assert math.isnan(rank_separation(np.array([]), np.array([1])))


def test_reach_sums_pool_pairs_and_finish_into_shares():
    # 4 users, 2 items. Item 0: users 0, 1 averse; user 3 masked it (-1).
    ranks = np.array([[30, 5], [10, 50], [2, 1], [-1, 200]])
    averse = np.array([[True, False], [True, False], [False, True], [False, True]])
    eligible = np.ones_like(averse)
    s = reach_sums(ranks, averse, eligible, np.array([0]), k=20)
    f = finish_reach(s)
    assert (f["averse_pairs"], f["other_pairs"]) == (2, 1)
    assert f["averse_in_top"] == 0.5 and f["other_in_top"] == 1.0 and f["ratio"] == 0.5
    assert f["averse_mean_rank"] == 20.0 and f["other_mean_rank"] == 2.0
    assert f["separation"] == 1.0
    # Pooled over items (and seeds): sums add up.
    both = finish_reach(add_sums(s, reach_sums(ranks, averse, eligible, np.array([1]), k=20)))
    assert (both["items"], both["averse_pairs"], both["other_pairs"]) == (2, 4, 3)
    assert both["averse_in_top"] == 0.5 and both["other_in_top"] == pytest.approx(2 / 3)
    # Not eligible = not counted; no pair at all = no figure.
    none = finish_reach(reach_sums(ranks, averse, np.zeros_like(averse), np.array([0]), k=20))
    assert none["averse_in_top"] is None and none["ratio"] is None and none["separation"] is None


def test_pick_default_keeps_recall_then_share_then_takes_the_best_auc():
    summary = {
        "positives_only": {"recall@20": 0.300, "like_dislike_auc": 0.60, "dislike_share@20": 0.30},
        # recall 2% down: not eligible, however good its dislike figures
        "strong": {"recall@20": 0.294, "like_dislike_auc": 0.90, "dislike_share@20": 0.10},
        "a": {"recall@20": 0.298, "like_dislike_auc": 0.80, "dislike_share@20": 0.20},
        # best AUC but its share is more than 0.01 above the best eligible share
        "b": {"recall@20": 0.310, "like_dislike_auc": 0.85, "dislike_share@20": 0.215},
        "c": {"recall@20": 0.305, "like_dislike_auc": 0.75, "dislike_share@20": 0.205},
    }
    out = pick_default(summary)
    assert sorted(out["eligible"]) == ["a", "b", "c", "positives_only"]
    assert out["share_floor"] == 0.20 and out["best"] == "a"
    assert pick_default(summary, share_slack=0.02)["best"] == "b"
    # Positives-only is always eligible: there is always a pick.
    assert pick_default({"positives_only": summary["positives_only"]})["best"] == "positives_only"


def test_arms_pin_every_dislike_knob_and_the_sweep_reuses_them():
    for sets in ARMS.values():
        keys = [s.split("=")[0] for s in sets]
        assert keys == [
            "model.use_dislike_input",
            "model.dislike_pathway",
            "loss.ntr_weight",
            "loss.dislike_negatives",
        ]
    extra, points = sweep_arms((0, 20, 100), ARMS)
    assert [p["arm"] for p in points["concat"]] == ["input_only", "ntr", "concat_ntr100"]
    assert [p["arm"] for p in points["subtract"]] == [
        "subtract_ntr0",
        "subtract_ntr",
        "subtract_ntr100",
    ]
    assert sorted(extra) == ["concat_ntr100", "subtract_ntr0", "subtract_ntr100"]
    assert describe(ARMS["dislike_negatives_ntr"]) == "input concat, λ 20, N 5"
    assert describe(ARMS["positives_only"]) == "no input, λ 0, N 0"
    tune = tune_arms((5, 20, 50), (1, 2))
    # 5 without NTR, pathway x N x λ x w, the NTR-state-after rows, NTR without input, 6 with the
    # item dislike ratio.
    assert len(tune) == 5 + 2 * 2 * 3 * 2 + 2 * 3 * 2 + 1 + 6 and "subtract_dn_ntr50_w2" in tune
    assert tune["positives_only_ratio10"] == [
        *tune["positives_only"],
        "model.item_dislike_ratio_buckets=10",
    ]
    assert tune["subtract_dn_ntr5_w1_ratio10"][:-1] == tune["subtract_dn_ntr5_w1"]
    assert (
        describe(tune["ntr_no_input_ratio10"]) == "no input, λ 20, N 0, item dislike ratio 10 bins"
    )
    assert "loss.dislike_weight=2" in tune["subtract_dn_ntr50_w2"]
    assert "loss.ntr_state=after" in tune["subtract_after_ntr20_w1"]
    assert describe(tune["subtract_after_ntr20_w1"]).endswith("w 1, NTR state after")


def test_select_arms_keeps_grid_order_adds_the_reference_and_names_unknown_arms():
    tune = tune_arms((5, 20), (1,))
    picked = select_arms(tune, ["subtract_ntr5_w1", " input_only"], "positives_only")
    assert list(picked) == ["positives_only", "input_only", "subtract_ntr5_w1"]
    assert picked["subtract_ntr5_w1"] == tune["subtract_ntr5_w1"]
    with pytest.raises(ValueError, match="unknown arm.*concat_ntr7_w1.*known: positives_only"):
        select_arms(tune, ["concat_ntr7_w1"], "positives_only")


def _run(seed: int, **test: float) -> dict:
    return {"settings": ["loss.ntr_weight=5", f"train.seed={seed}"], "test": test}


def test_targets_pair_each_arm_with_positives_only_of_the_same_seed():
    ref = [
        _run(1, **{"recall@20": 0.20, "like_dislike_auc": 0.60, "dislike_share@20": 0.50}),
        _run(0, **{"recall@20": 0.25, "like_dislike_auc": 0.70, "dislike_share@20": 0.40}),
    ]
    arm = [  # seed 0 first: pairing is by train.seed, not by position
        _run(
            0,
            **{
                "recall@20": 0.25,
                "like_dislike_auc": 0.74,
                "dislike_share@20": 0.30,
                "responsiveness@20": -0.4,
            },
        ),
        _run(
            1,
            **{
                "recall@20": 0.19,
                "like_dislike_auc": 0.64,
                "dislike_share@20": 0.40,
                "responsiveness@20": -0.2,
            },
        ),
    ]
    doc = {
        "arms": {
            "positives_only": {"runs": ref, "settings": []},
            "ntr": {"runs": arm, "settings": [], "default": True},
        }
    }
    changes = paired_changes(doc, "ntr")
    np.testing.assert_allclose(changes["recall@20"]["values"], [0.0, -0.05])
    np.testing.assert_allclose(changes["like_dislike_auc"]["values"], [0.04, 0.04])
    np.testing.assert_allclose(changes["dislike_share@20"]["values"], [-0.25, -0.20])
    np.testing.assert_allclose(changes["responsiveness@20"]["values"], [-0.4, -0.2])
    (row,) = [
        line for line in _targets_table(doc, "test", ["positives_only", "ntr"]) if "ntr" in line
    ]
    # recall -2.5% (misses -1%), AUC +0.04 (meets +0.03), share -22.5% (meets -20%),
    # responsiveness -0.30 (meets <= -0.30).
    assert row.startswith("| **ntr** (default) | -2.5% ± 3.5% ✗ | +0.0400 ± 0.0000 ✓ |")
    assert "-22.5% ± 3.5% ✓" in row and "-0.3000 ± 0.1414 ✓" in row
    assert row.endswith("| 3/4 |")
