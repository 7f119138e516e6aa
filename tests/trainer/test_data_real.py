"""The real reference data sets (read in place from ../shared/data, never copied)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from trainer.data.dataset import DISLIKE, POSITIVE, TEST, TRAIN, VALID
from trainer.data.examples import build_eval_set, build_train_examples
from trainer.data.sources import load_source

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
ML100K = DATA / "ml-100k" / "u.data"
GOWALLA = DATA / "gowalla"


def need(path: Path) -> None:
    if not path.exists():
        pytest.fail(f"reference data missing: {path} (reference data: ../shared/data)")


def test_ml100k_counts():
    need(ML100K)
    # An independent plain-Python count of the file.
    rows = [line.split() for line in ML100K.read_text().splitlines() if line.strip()]
    ratings = np.array([[int(x) for x in r] for r in rows])
    started = time.perf_counter()
    ds = load_source(f"movielens:{ML100K}")
    seconds = time.perf_counter() - started
    c = ds.summary()["counts"]
    assert c["positives"] == int((ratings[:, 2] >= 4).sum())
    assert c["dislikes"] == int((ratings[:, 2] <= 2).sum()) == 17_537  # the README's figure
    assert c["neutral"] == int((ratings[:, 2] == 3).sum())
    assert c["positives"] + c["dislikes"] + c["neutral"] == len(ratings)
    assert c["items"] == 1682 and c["skipped_lines"] == 0
    # The 943 users of ml-100k hold its 100,000 ratings; this copy of u.data also
    # carries rows for 4 more users (995-998), read like any other rows.
    original = ratings[:, 0] <= 943
    assert original.sum() == 100_000 and len(np.unique(ratings[original, 0])) == 943
    assert c["users"] == len(np.unique(ratings[(ratings[:, 2] != 3), 0]))
    assert ds.ts.min() == ratings[:, 3].min() and ds.ts.max() == ratings[:, 3].max()
    assert ds.item_feature_sizes["genre"] == 20 and (ds.item_features["genre"] > 0).all()
    # Leave-last-out: one VALID and one TEST positive per user with >= 3 positives.
    pos = ds.labels == POSITIVE
    n_pos = np.bincount(ds.users[pos], minlength=ds.num_users)
    assert int((pos & (ds.split == TEST)).sum()) == int((n_pos >= 3).sum())
    assert int((pos & (ds.split == VALID)).sum()) == int((n_pos >= 3).sum())
    assert seconds < 5, f"ml-100k took {seconds:.2f}s to load (expected ~0.3s)"

    started = time.perf_counter()
    ex = build_train_examples(ds, 50, 10)
    test = build_eval_set(ds, "test", 50, 10)
    seconds = time.perf_counter() - started
    assert len(ex) == int((ds.split == TRAIN).sum())
    assert int((ex.is_positive == 0).sum()) == int(
        ((ds.labels == DISLIKE) & (ds.split == TRAIN)).sum()
    )
    assert len(test) == int((n_pos >= 3).sum()) and len(test.target_items) == len(test)
    assert seconds < 3, f"ml-100k examples took {seconds:.2f}s (expected ~0.1s)"


def test_gowalla_counts_and_examples():
    need(GOWALLA)
    started = time.perf_counter()
    ds = load_source(f"lightgcn:{GOWALLA}")
    load_seconds = time.perf_counter() - started
    c = ds.summary()["counts"]
    assert (c["users"], c["items"], c["events"]) == (29_858, 40_981, 1_027_370)  # data README
    assert c["dislikes"] == 0 and not ds.timestamped
    shares = np.array([c["train"], c["valid"], c["test"]]) / c["events"]
    assert np.allclose(shares, [0.70, 0.09, 0.21], atol=0.01), shares
    started = time.perf_counter()
    ex = build_train_examples(ds, 50, 10, seed=0, epoch=0)
    build_seconds = time.perf_counter() - started
    assert len(ex) == c["train"]
    assert not (ex.history == ex.item[:, None]).any()  # the target is never its own input
    test = build_eval_set(ds, "test", 50, 10)
    assert len(test) == 29_858 and len(test.target_items) == c["test"]
    assert len(test.mask_items) == c["train"] + c["valid"]
    assert load_seconds < 10 and build_seconds < 10, (load_seconds, build_seconds)
