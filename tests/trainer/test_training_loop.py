"""The training loop and the run around it: early stopping that survives a resume, the
checkpoint directory of a run, the dislike weight and the mixed negatives reaching the
loss, warm starts that carry rows and estimator state, and input errors that exit 2."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import types
from pathlib import Path

import numpy as np
import pytest

from common import artifacts
from tests.trainer.tiny import TINY, TINY_SETS
from trainer._tf import tf
from trainer.checkpoints import (
    checkpoint_paths,
    data_fingerprint,
    prune_stale_runs,
    run_directory,
)
from trainer.data.examples import build_eval_set
from trainer.data.sources import load_source
from trainer.fitting import exact_item_probabilities, training_examples
from trainer.model import TwoTowerModel
from trainer.run import _index_queries, train, trainer_config
from trainer.train import Trainer, epoch_line, format_duration, seed_everything
from twotower.cli import main

# Adam's step with this rate moves no float32 weight of the tiny model: every epoch
# scores validation exactly as the one before, so early stopping must trigger.
FROZEN = ["train.learning_rate=1e-12", "train.early_stopping_patience=1", "train.epochs=6"]


@pytest.fixture(scope="module")
def tiny_ds():
    return load_source(TINY)


def _trainer(ds, cfg, ckpt: Path) -> tuple[TwoTowerModel, Trainer]:
    seed_everything(cfg.train.seed)
    strategy = tf.distribute.get_strategy()
    model = TwoTowerModel(cfg, ds.num_items, ds.item_features, ds.item_feature_sizes)
    model.build_all()
    H, D = cfg.model.history_length, cfg.model.dislike_length
    valid = build_eval_set(ds, "valid", H, D)
    trainer = Trainer(
        model, cfg, lambda e: training_examples(ds, cfg, e), valid, ckpt, strategy, False
    )
    return model, trainer


def test_early_stopping_triggers_and_a_resumed_run_does_not_train_further(tiny_ds, tmp_path):
    cfg = trainer_config("synthetic", overrides=[*TINY_SETS, *FROZEN])
    model, trainer = _trainer(tiny_ds, cfg, tmp_path / "ckpt")
    first = trainer.fit()
    # Epoch 1 sets the best; epoch 2 is no better: patience 1 is exhausted.
    assert first.epochs_run == 2 and first.best_epoch == 1, first
    assert [r["epoch"] for r in first.history] == [1, 2]
    assert first.history[0]["valid_recall@20"] == first.history[1]["valid_recall@20"]
    steps_per_epoch = first.steps // 2

    # As if killed right after the stopping epoch's checkpoint: a new process resumes.
    model2, again = _trainer(tiny_ds, cfg, tmp_path / "ckpt")
    second = again.fit()
    assert second.resumed_from is not None and second.resumed_from["epoch"] == 2
    assert second.steps == first.steps == 2 * steps_per_epoch  # not one more step
    assert second.epochs_run == 2 and second.best_epoch == 1
    assert second.history == first.history  # the history came back with the checkpoint
    assert second.examples_per_second == 0.0
    np.testing.assert_array_equal(model2.embed_items(), model.embed_items())


def test_lr_decay_lowers_the_rate_after_each_bad_epoch_and_a_resume_keeps_it(tiny_ds, tmp_path):
    sets = [*TINY_SETS, *FROZEN, "train.early_stopping_patience=3", "train.lr_decay=0.5"]
    cfg = trainer_config("synthetic", overrides=[*sets, "train.epochs=2"])
    _model, trainer = _trainer(tiny_ds, cfg, tmp_path / "ckpt")
    first = trainer.fit()
    assert [r["learning_rate"] for r in first.history] == pytest.approx([1e-12, 1e-12])
    # Epoch 2 was no better: the next epoch's rate, halved, is in the checkpoint.
    longer = trainer_config("synthetic", overrides=[*sets, "train.epochs=6"])
    _model, again = _trainer(tiny_ds, longer, tmp_path / "ckpt")
    resumed = again.fit()
    assert resumed.resumed_from is not None and resumed.resumed_from["epoch"] == 2
    # Epochs 2, 3 and 4 are no better than epoch 1: patience 3 stops after epoch 4.
    assert resumed.epochs_run == 4 and resumed.best_epoch == 1
    rates = [r["learning_rate"] for r in resumed.history]
    assert rates == pytest.approx([1e-12, 1e-12, 5e-13, 2.5e-13], rel=1e-9)
    assert float(again.state.optimizer.learning_rate.numpy()) == pytest.approx(2.5e-13, rel=1e-6)


def test_replayed_learning_rates_reach_the_training_step(tiny_ds, tmp_path):
    """A rate of 0 leaves Adam's weights where they were; the same epoch at 0.01 moves them."""
    cfg = trainer_config("synthetic", overrides=[*TINY_SETS, "train.epochs=2"])
    one = trainer_config("synthetic", overrides=[*TINY_SETS, "train.epochs=1"])

    def items_after(config, rates, name):
        model, _ = _trainer(tiny_ds, config, tmp_path / name)
        trainer = Trainer(
            model,
            config,
            lambda e: training_examples(tiny_ds, config, e),
            None,
            tmp_path / name,
            tf.distribute.get_strategy(),
            False,
            learning_rates=rates,
        )
        result = trainer.fit()
        assert [r["learning_rate"] for r in result.history] == pytest.approx(rates)
        return model.embed_items()

    after_first = items_after(one, [0.01], "one")
    np.testing.assert_array_equal(items_after(cfg, [0.01, 0.0], "frozen"), after_first)
    assert not np.allclose(items_after(cfg, [0.01, 0.01], "moving"), after_first)


def test_the_per_epoch_progress_line():
    record = {"epoch": 3, "loss": 4.123456, "ssm": 4.0, "ntr": 0.1, "valid_recall@20": 0.22901}
    assert epoch_line(record, 20, 41234.4, 65.2) == (
        "epoch 3/20: loss 4.1235, valid recall@20 0.2290, 41,234 examples/s, elapsed 1m05s"
    )
    del record["valid_recall@20"]  # no validation split
    assert epoch_line(record, 20, 0.0, 2.0) == "epoch 3/20: loss 4.1235, 0 examples/s, elapsed 2.0s"
    assert [format_duration(s) for s in (0.04, 59.94, 60, 3599.4, 3600, 7385)] == [
        "0.0s",
        "59.9s",
        "1m00s",
        "59m59s",
        "1h00m",
        "2h03m",
    ]


def test_a_corrupt_history_in_the_checkpoint_is_tolerated(tiny_ds, tmp_path, caplog):
    cfg = trainer_config("synthetic", overrides=[*TINY_SETS, "train.epochs=1"])
    _model, trainer = _trainer(tiny_ds, cfg, tmp_path / "ckpt")
    trainer.fit()
    trainer.state.history_json.assign("{not json")
    trainer.state.manager.save(checkpoint_number=10_000)
    cfg2 = trainer_config("synthetic", overrides=[*TINY_SETS, "train.epochs=2"])
    _model, resumed = _trainer(tiny_ds, cfg2, tmp_path / "ckpt")
    with caplog.at_level(logging.WARNING):
        result = resumed.fit()
    assert "history is unreadable" in caplog.text
    assert result.epochs_run == 2 and [r["epoch"] for r in result.history] == [2]


def test_dislike_weight_reaches_the_loss(tiny_ds):
    """w = 2 doubles ntr_mean on the same batch; the softmax term does not move."""
    parts = {}
    for w in (1.0, 2.0):
        cfg = trainer_config("synthetic", overrides=[*TINY_SETS, f"loss.dislike_weight={w}"])
        ex = training_examples(tiny_ds, cfg, 0)  # what train() feeds the Trainer
        seed_everything(cfg.train.seed)
        model = TwoTowerModel(
            cfg, tiny_ds.num_items, tiny_ds.item_features, tiny_ds.item_feature_sizes
        )
        model.build_all()
        rows = slice(0, 256)
        batch = {
            "history": tf.constant(ex.history[rows]),
            "dislikes": tf.constant(ex.dislikes[rows]),
            "item": tf.constant(ex.item[rows]),
            "is_positive": tf.constant(ex.is_positive[rows]),
            "weight": tf.constant(ex.weight[rows]),
        }
        assert 0 < (ex.is_positive[rows] == 0).sum() < 256
        total = float(model.compute_loss(batch, training=False).numpy())
        parts[w] = (
            total,
            float(model.ssm_tracker.result().numpy()),
            float(model.ntr_tracker.result().numpy()),
        )
    (t1, s1, n1), (t2, s2, n2) = parts[1.0], parts[2.0]
    assert n1 > 0 and n2 == pytest.approx(2 * n1, rel=1e-6)
    assert s2 == pytest.approx(s1, rel=1e-6)
    lam = trainer_config("synthetic").loss.ntr_weight
    assert t2 - t1 == pytest.approx(lam * n1, rel=1e-4)


def test_mixed_negatives_are_a_stateless_draw_per_global_step(tiny_ds):
    cfg = trainer_config("synthetic", overrides=[*TINY_SETS, "loss.mixed_negatives=32"])
    models = []
    for _ in range(2):
        m = TwoTowerModel(cfg, tiny_ds.num_items, tiny_ds.item_features, tiny_ds.item_feature_sizes)
        tf.random.uniform([7])  # stateful RNG use in between changes nothing
        models.append(m)
    a5, b5 = (m.mixed_negative_ids(5).numpy() for m in models)
    assert a5.shape == (32,) and a5.min() >= 1 and a5.max() <= tiny_ds.num_items
    np.testing.assert_array_equal(a5, b5)  # same (seed, step): same items
    assert not np.array_equal(a5, models[0].mixed_negative_ids(6).numpy())
    other = TwoTowerModel(
        trainer_config(
            "synthetic", overrides=[*TINY_SETS, "loss.mixed_negatives=32", "train.seed=1"]
        ),
        tiny_ds.num_items,
    )
    assert not np.array_equal(a5, other.mixed_negative_ids(5).numpy())
    ex = training_examples(tiny_ds, cfg, 0)
    batch = {
        k: tf.constant(getattr(ex, k)[:8])
        for k in ("history", "dislikes", "item", "is_positive", "weight")
    }
    models[0].build_all()
    with pytest.raises(ValueError, match="needs the global step"):
        models[0].compute_loss(batch, training=True)


def test_exact_counts_as_expected_occurrences_or_as_probability_of_occurring(tiny_ds):
    counts = tiny_ds.train_item_counts().astype(np.float64)
    rows = float((tiny_ds.split == 0).sum())
    expected = exact_item_probabilities(tiny_ds, 64)
    distinct = exact_item_probabilities(tiny_ds, 64, distinct=True)
    assert expected[0] == distinct[0] == 0.0 and len(expected) == tiny_ds.num_items + 1
    np.testing.assert_allclose(expected[1:], counts * 64 / rows, rtol=1e-6)
    np.testing.assert_allclose(distinct[1:], 1 - (1 - counts / rows) ** 64, rtol=1e-5)
    assert (distinct <= expected + 1e-7).all() and distinct.max() < 1.0 < expected.max()


# ---------------------------------------------------------------- where checkpoints live


def _with_new_item(ds):
    """The data set plus one catalog item (no events): what a grown catalog looks like."""
    features = {k: np.append(v, 1).astype(np.int32) for k, v in ds.item_features.items()}
    return dataclasses.replace(ds, item_ids=np.append(ds.item_ids, "i-new"), item_features=features)


def test_the_run_directory_changes_with_the_data(tiny_ds, tmp_path):
    cfg = trainer_config("synthetic", overrides=TINY_SETS)
    here = run_directory(tmp_path, TINY, cfg, None, tiny_ds)
    assert here == run_directory(tmp_path, TINY, cfg, None, load_source(TINY))  # same run
    grown = _with_new_item(tiny_ds)
    assert data_fingerprint(grown)["items"] == tiny_ds.num_items + 1
    assert run_directory(tmp_path, TINY, cfg, None, grown) != here
    moved = dataclasses.replace(tiny_ds, ts=tiny_ds.ts + 1.0)  # same sizes, other events
    assert run_directory(tmp_path, TINY, cfg, None, moved) != here
    other_cfg = trainer_config("synthetic", overrides=[*TINY_SETS, "train.seed=9"])
    assert run_directory(tmp_path, TINY, other_cfg, None, tiny_ds) != here


def _killed_run(ds, cfg, ckpt: Path) -> None:
    """Leave what a run killed after its first checkpoint leaves behind."""
    _model, trainer = _trainer(ds, cfg, ckpt)
    ckpt.mkdir(parents=True, exist_ok=True)
    trainer.state.global_step.assign(3)
    trainer.state.save()
    assert tf.train.latest_checkpoint(str(ckpt / "latest"))


def test_killed_run_then_one_more_item_completes(tiny_ds, tmp_path):
    """The scheduled job's case: same config, the data grew by an item since the kill."""
    cfg = trainer_config("synthetic", overrides=[*TINY_SETS, "train.epochs=1"])
    art = tmp_path / "art"
    _killed_run(tiny_ds, cfg, run_directory(art, TINY, cfg, None, tiny_ds))
    grown = _with_new_item(tiny_ds)
    out = train(TINY, art, cfg, ds=grown, progress=False)
    assert out.training["resumed_from"] is None
    assert artifacts.read_manifest(art)["num_items"] == tiny_ds.num_items + 1


def test_an_incompatible_checkpoint_is_discarded_with_a_warning(tiny_ds, tmp_path, caplog):
    """An explicit --checkpoint-dir reused for a bigger catalog: warn, start fresh, finish."""
    cfg = trainer_config("synthetic", overrides=[*TINY_SETS, "train.epochs=1"])
    ckpt = tmp_path / "ckpt"
    _killed_run(tiny_ds, cfg, ckpt)
    with caplog.at_level(logging.WARNING):
        out = train(
            TINY,
            tmp_path / "art",
            cfg,
            ds=_with_new_item(tiny_ds),
            checkpoint_dir=ckpt,
            progress=False,
        )
    assert "discarding the checkpoint" in caplog.text and "incompatible" in caplog.text
    assert out.training["resumed_from"] is None and out.training["epochs_run"] == 1
    # The fresh start is the run a clean directory gives.
    clean = train(TINY, tmp_path / "art2", cfg, ds=_with_new_item(tiny_ds), progress=False)
    assert clean.training["history"] == out.training["history"]


def test_stale_run_directories_are_pruned_live_ones_kept(tmp_path):
    import os
    import time

    old_run, live_run, mine = (tmp_path / f".train-{n}" for n in ("old", "live", "mine"))
    for d in (old_run, live_run, mine):
        (d / "latest").mkdir(parents=True)
        (d / "latest" / "checkpoint").write_text("x")
    day_ago = time.time() - 2 * 24 * 3600
    for run in (old_run, mine):  # mine is old too, but it is the caller's own
        for path in (run, run / "latest", run / "latest" / "checkpoint"):
            os.utime(path, (day_ago, day_ago))
    os.utime(live_run, (day_ago, day_ago))  # only its directory is old: it still writes
    (tmp_path / "versions").mkdir()
    assert prune_stale_runs(tmp_path, keep=mine) == [old_run]
    assert live_run.exists() and mine.exists() and (tmp_path / "versions").exists()


def test_every_worker_restores_from_the_chief_and_writes_its_own_scratch(tmp_path):
    ckpt = tmp_path / "ckpt"

    def strategy(cluster, task_type, task_id):
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id
        )
        return types.SimpleNamespace(cluster_resolver=resolver)

    workers = {"worker": ["a:1", "b:1", "c:1"]}
    chief = checkpoint_paths(ckpt, strategy(workers, "worker", 0))
    assert chief == (ckpt, ckpt)
    writes = set()
    for task in (1, 2):
        (ckpt / f"worker-worker-{task}").mkdir(parents=True)
        (ckpt / f"worker-worker-{task}" / "stale").write_text("x")
        restore, write = checkpoint_paths(ckpt, strategy(workers, "worker", task))
        assert restore == ckpt  # the chief's checkpoint, not a fresh directory
        assert write != ckpt and write.parent == ckpt and not write.exists()
        writes.add(write)
    assert len(writes) == 2
    with_chief = {"chief": ["a:1"], "worker": ["b:1"]}
    assert checkpoint_paths(ckpt, strategy(with_chief, "chief", 0)) == (ckpt, ckpt)
    assert checkpoint_paths(ckpt, strategy(with_chief, "worker", 0))[0] == ckpt
    assert checkpoint_paths(ckpt, tf.distribute.get_strategy()) == (ckpt, ckpt)


def test_index_is_tuned_on_validation_users(tiny_ds):
    H, D = 10, 5
    valid = build_eval_set(tiny_ds, "valid", H, D)
    test = build_eval_set(tiny_ds, "test", H, D)
    assert not np.array_equal(valid.history, test.history[: len(valid)])
    seen = []

    def embed(history, dislikes):
        seen.append(history)
        return history.astype(np.float32)

    cfg = trainer_config("synthetic", overrides=TINY_SETS)
    queries = _index_queries(embed, valid, lambda e: training_examples(tiny_ds, cfg, e))
    np.testing.assert_array_equal(queries, valid.history[:500])
    empty = valid.subset(np.zeros(0, np.int64))
    fallback = _index_queries(embed, empty, lambda e: training_examples(tiny_ds, cfg, e))
    np.testing.assert_array_equal(fallback, training_examples(tiny_ds, cfg, 0).history[:500])


# ---------------------------------------------------------------- warm starts


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    art = tmp_path_factory.mktemp("warm")
    cfg = trainer_config("synthetic", overrides=[*TINY_SETS, "train.epochs=1"])
    out = train(TINY, art, cfg, progress=False)
    return art, out.version


def _version_state(art: Path, version: str) -> dict[str, np.ndarray]:
    path = artifacts.version_dir(art, version) / artifacts.CHECKPOINT / "model"
    reader = tf.train.load_checkpoint(str(path))
    return {
        name.split("/")[2]: reader.get_tensor(name)
        for name, _ in tf.train.list_variables(str(path))
        if name.startswith("model/estimator/")
    }


def _copy(art: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "art"
    shutil.copytree(art, dst)
    return dst


def test_warm_start_carries_old_rows_and_the_estimator_state(published, tiny_ds, tmp_path):
    art, v1 = published
    art = _copy(art, tmp_path)
    cfg = trainer_config("synthetic", overrides=[*TINY_SETS, "train.epochs=0"])
    out = train(TINY, art, cfg, ds=_with_new_item(tiny_ds), warm_version=v1, progress=False)
    summary = out.training["warm_start"]
    assert summary["estimator"] == "carried over" and summary["grown"] >= 1
    with (
        np.load(artifacts.version_dir(art, v1) / artifacts.ITEMS) as old,
        np.load(artifacts.version_dir(art, out.version) / artifacts.ITEMS) as new,
    ):
        assert new["ids"].tolist() == [*old["ids"].tolist(), "i-new"]
    old_model_items = _version_items_raw(art, v1)
    # The same weights, run over one more item: other batch shapes may round the last bits
    # of a few rows differently (seen: 1.5e-8); a row not carried over would differ by ~0.1.
    np.testing.assert_allclose(
        out.model.embed_items()[: tiny_ds.num_items], old_model_items, rtol=1e-5, atol=1e-6
    )
    old_state, new_state = _version_state(art, v1), _version_state(art, out.version)
    assert int(old_state["step"]) > 0
    for name in ("hash_a", "hash_b", "last_seen", "gap", "step"):
        np.testing.assert_array_equal(new_state[name], old_state[name], err_msg=name)


def _version_items_raw(art: Path, version: str) -> np.ndarray:
    """Raw item-tower outputs of a version, from its checkpoint."""
    m = artifacts.read_manifest(art, version)
    cfg = trainer_config("synthetic").model_validate(m["config"])
    ds = load_source(TINY)
    model = TwoTowerModel(cfg, m["num_items"], ds.item_features, ds.item_feature_sizes)
    model.build_all()
    path = artifacts.version_dir(art, version) / artifacts.CHECKPOINT / "model"
    tf.train.Checkpoint(model=model).read(str(path)).expect_partial()
    return model.embed_items()


def test_warm_start_resets_the_estimator_when_its_hash_layout_changes(
    published, tiny_ds, tmp_path, caplog
):
    art, v1 = published
    art = _copy(art, tmp_path)
    cfg = trainer_config(
        "synthetic", overrides=[*TINY_SETS, "train.epochs=0", "frequency.buckets=8192"]
    )
    with caplog.at_level(logging.WARNING):
        out = train(TINY, art, cfg, warm_version=v1, progress=False)
    assert "frequency estimator is reset" in caplog.text
    assert out.training["warm_start"]["estimator"] == "reset: frequency.buckets 4096 -> 8192"
    est = out.model.estimator
    assert int(est.step.numpy()) == 0 and est.gap.shape == (2 * 8192,)
    assert (est.gap.numpy() == cfg.frequency.initial_gap).all() and (
        est.last_seen.numpy() == 0
    ).all()
    # The towers still warm-started.
    np.testing.assert_array_equal(out.model.embed_items(), _version_items_raw(art, v1))


# ---------------------------------------------------------------- exit codes


def test_warm_start_with_another_architecture_exits_2(published, tmp_path, capsys):
    art, _ = published
    art = _copy(art, tmp_path)
    sets = [x for s in TINY_SETS if "embedding_dim" not in s for x in ("--set", s)]
    code = main(
        [
            "train",
            "--data",
            TINY,
            "--out",
            str(art),
            "--warm-start",
            *sets,
            "--set",
            "model.embedding_dim=8",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "model.embedding_dim changed (16 -> 8)" in err and "Traceback" not in err


def test_batch_larger_than_the_data_exits_2(tmp_path, capsys):
    sets = [x for s in TINY_SETS if "batch_size" not in s for x in ("--set", s)]
    code = main(
        ["train", "--data", TINY, "--out", str(tmp_path), *sets, "--set", "train.batch_size=100000"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "train.batch_size=100000 is larger than the" in err and "--set train.batch_size=" in err
