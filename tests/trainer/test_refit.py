"""``train.refit``: the epochs chosen on validation, trained again on train + valid."""

from __future__ import annotations

import numpy as np
import pytest

from common import artifacts
from tests.trainer.tiny import TINY, TINY_SETS, tiny_lightgcn_files
from trainer.data.dataset import TRAIN, VALID
from trainer.data.sources import load_source
from trainer.data.split import train_and_valid
from trainer.exported import evaluate_version
from trainer.fitting import training_examples
from trainer.run import train, trainer_config

SETS = [*TINY_SETS, "train.epochs=3", "train.early_stopping_patience=0", "train.lr_decay=0.5"]


@pytest.fixture(scope="module")
def refitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("refit")
    spec = tiny_lightgcn_files(tmp / "data")
    cfg = trainer_config("lightgcn", overrides=[*SETS, "train.refit=true"])
    outcome = train(spec, tmp / "art", cfg, progress=False)
    return spec, tmp / "art", cfg, outcome


def test_train_and_valid_moves_only_the_valid_events():
    ds = load_source(TINY)
    merged = train_and_valid(ds)
    assert (merged.split == VALID).sum() == 0
    np.testing.assert_array_equal(merged.split == TRAIN, np.isin(ds.split, (TRAIN, VALID)))
    np.testing.assert_array_equal(merged.split[ds.split != VALID], ds.split[ds.split != VALID])
    assert (ds.split == VALID).sum() > 0  # the input is untouched


def test_refit_trains_the_chosen_epochs_on_train_and_valid(refitted):
    spec, art, cfg, outcome = refitted
    m = artifacts.read_manifest(art)
    refit = m["training"]["refit"]
    assert refit["done"] is True
    assert 1 <= m["training"]["best_epoch"] <= 3
    assert refit["epochs"] == m["training"]["best_epoch"]
    # Each refit epoch at the rate the first run's epoch had (train.lr_decay lowers it).
    first = [r["learning_rate"] for r in m["training"]["history"]]
    assert refit["learning_rates"] == first[: refit["epochs"]]
    best = -1.0
    history = m["training"]["history"]
    for record, rate, next_rate in zip(history[:-1], first[:-1], first[1:], strict=True):
        improved = record["valid_recall@20"] > best
        best = max(best, record["valid_recall@20"])
        assert next_rate == (rate if improved else rate * 0.5)
    # Every epoch of the refit sees the train + valid rows.
    ds = load_source(spec)
    rows = len(training_examples(train_and_valid(ds), cfg, 0))
    assert rows > len(training_examples(ds, cfg, 0))
    assert refit["steps"] == refit["epochs"] * (rows // cfg.train.batch_size)
    # The manifest keeps the configuration as given.
    assert m["config"]["train"]["refit"] is True and m["config"]["train"]["epochs"] == 3
    before = refit["test_metrics_without_refit"]
    assert 0.0 <= before["recall@20"] <= 1.0
    assert before["recall@20"] != m["metrics"]["recall@20"]


def test_evaluate_reproduces_a_refitted_version(refitted):
    """The evaluation input of an untimed source is the user's training items: after a
    refit, train + valid, in training and in ``twotower evaluate`` alike."""
    spec, art, _, outcome = refitted
    result = evaluate_version(art, None, load_source(spec))
    for name in ("recall@20", "ndcg@20"):
        assert result["metrics"][name] == pytest.approx(outcome.metrics[name], abs=1e-9), name


def test_without_refit_the_manifest_says_so(tmp_path):
    cfg = trainer_config("synthetic", overrides=[*TINY_SETS, "train.epochs=1"])
    train(TINY, tmp_path / "art", cfg, progress=False)
    assert artifacts.read_manifest(tmp_path / "art")["training"]["refit"] == {"done": False}
