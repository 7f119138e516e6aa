"""Learning from dislikes against known aversions (the synthetic source's ground truth).

Each user of ``synthetic:...,aversions=1`` is averse to one hidden cluster and
dislikes what they are shown of it. A model that learns from dislikes must tell
a user's held-out likes from their held-out dislikes better than the same model
trained on positives only, on the leak-free dislike holdout, and recommend a
smaller share of dislikes among the judged items it lists.

Margins are set from measurements (users=1000, items=600, 5 epochs, seed 2):
like_dislike_auc default 0.683 vs positives-only 0.623 (validation 0.693 vs
0.635); dislike_share@20 0.341 vs 0.435 (validation, a later run: 0.386 vs 0.396).
"""

from __future__ import annotations

import pytest

SPEC = "synthetic:users=1000,items=600,aversions=1,seed=2"
COMMON = ["train.epochs=5", "train.seed=2"]
POSITIVES_ONLY = [
    "model.use_dislike_input=false",
    "loss.ntr_weight=0",
    "loss.dislike_negatives=0",
]


@pytest.mark.slow
def test_the_default_learns_known_aversions_that_positives_only_cannot(tmp_path):
    from trainer.data.sources import load_source
    from trainer.run import train, trainer_config

    ds = load_source(SPEC)
    out = {}
    for arm, sets in {"default": [], "positives_only": POSITIVES_ONLY}.items():
        cfg = trainer_config("synthetic", overrides=[*COMMON, *sets])
        out[arm] = train(SPEC, tmp_path / arm, cfg, ds=ds, progress=False)
    default, positives = out["default"], out["positives_only"]
    for split, get in (
        ("test", lambda o: o.metrics),
        ("validation", lambda o: o.training["valid_metrics"]),
    ):
        d, p = get(default), get(positives)
        assert d["like_dislike_auc"] >= p["like_dislike_auc"] + 0.03, (split, d, p)
        # Test split: at least 10% fewer dislikes among the judged top-20 items. Validation
        # (fewer judged users) measured 0.386 against 0.396 on 2026-12-05: not more.
        share_cap = 0.9 if split == "test" else 1.0
        assert d["dislike_share@20"] <= share_cap * p["dislike_share@20"], (split, d, p)
        assert d["recall@20"] >= 0.85 * p["recall@20"], (split, d, p)  # not by recommending worse
        assert d["num_users_judged"] == p["num_users_judged"] >= 50, (split, d, p)
