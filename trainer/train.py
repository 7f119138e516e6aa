"""The training loop: tf.distribute, resumable checkpoints, early stopping.

A custom loop rather than ``Model.fit`` because an epoch's examples are
rebuilt per epoch (lightgcn histories are resampled) and a killed run must
resume at the exact step it checkpointed: the checkpoint holds the model, the
optimizer, the streaming estimator's arrays, and the (epoch, step) counters;
batches are a pure function of (seed, epoch), so the resumed run replays the
same remaining batches.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from trainer._tf import keras, tf
from trainer.config import TrainerConfig
from trainer.data.dataset import EvalSet, Examples
from trainer.metrics import ranking_metrics, topk_all_ranking
from trainer.model import TwoTowerModel, l2_normalize

log = logging.getLogger(__name__)


def make_strategy(name: str) -> tf.distribute.Strategy:
    """``default`` (one device), ``mirrored`` (all local devices) or ``multiworker`` (TF_CONFIG)."""
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def seed_everything(seed: int) -> None:
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


@dataclass
class TrainResult:
    epochs_run: int
    best_epoch: int
    best_valid_recall: float
    steps: int
    seconds: float
    examples_per_second: float
    history: list[dict] = field(default_factory=list)
    resumed_from: dict | None = None


def _batches(examples: Examples, batch_size: int, seed: int, epoch: int) -> tf.data.Dataset:
    """A shuffled, fixed-size batched dataset; the order is a function of (seed, epoch)."""
    perm = np.random.default_rng([seed, epoch]).permutation(len(examples))
    features = {
        "history": examples.history[perm],
        "dislikes": examples.dislikes[perm],
        "item": examples.item[perm],
        "is_positive": examples.is_positive[perm],
        "weight": examples.weight[perm],
    }
    ds = tf.data.Dataset.from_tensor_slices(features)
    return ds.batch(batch_size, drop_remainder=True).prefetch(2)


def validation_recall(model: TwoTowerModel, evalset: EvalSet, k: int = 20) -> float:
    """recall@k on ``evalset`` with cosine similarity (the training geometry)."""
    if len(evalset) == 0:
        return 0.0
    users = l2_normalize(model.embed_users(evalset.history, evalset.dislikes))
    items = l2_normalize(model.embed_items())
    topk = topk_all_ranking(users, items, evalset, k=k)
    counts = np.zeros(items.shape[0], np.int64)
    return float(ranking_metrics(topk, evalset, counts)[f"recall@{k}"])


class Trainer:
    """Runs epochs of ``examples_fn(epoch)`` on ``model`` under ``strategy``.

    Args:
      model: built inside ``strategy.scope()``.
      config: the trainer config (train section drives the loop).
      examples_fn: epoch -> Examples (deterministic per epoch).
      valid: validation EvalSet for early stopping on recall@20 (None = no early stopping).
      checkpoint_dir: resumable state; reused when present.
      strategy: the tf.distribute strategy the model was built under.
    """

    def __init__(
        self,
        model: TwoTowerModel,
        config: TrainerConfig,
        examples_fn: Callable[[int], Examples],
        valid: EvalSet | None,
        checkpoint_dir: Path,
        strategy: tf.distribute.Strategy,
        progress: bool = True,
    ):
        self.model = model
        self.config = config
        self.examples_fn = examples_fn
        self.valid = valid
        self.strategy = strategy
        self.progress = progress
        self.checkpoint_dir = Path(checkpoint_dir)
        tc = config.train
        with strategy.scope():
            self.optimizer = keras.optimizers.Adam(learning_rate=tc.learning_rate)
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
            self.step_in_epoch = tf.Variable(
                0, dtype=tf.int64, trainable=False, name="step_in_epoch"
            )
            self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
            self.best_recall = tf.Variable(
                -1.0, dtype=tf.float64, trainable=False, name="best_recall"
            )
            self.best_epoch = tf.Variable(-1, dtype=tf.int64, trainable=False, name="best_epoch")
            self.bad_epochs = tf.Variable(0, dtype=tf.int64, trainable=False, name="bad_epochs")
        self.ckpt = tf.train.Checkpoint(
            model=model,
            optimizer=self.optimizer,
            epoch=self.epoch,
            step_in_epoch=self.step_in_epoch,
            global_step=self.global_step,
            best_recall=self.best_recall,
            best_epoch=self.best_epoch,
            bad_epochs=self.bad_epochs,
        )
        self.manager = tf.train.CheckpointManager(
            self.ckpt, str(self.checkpoint_dir / "latest"), max_to_keep=2
        )
        self.best_ckpt = tf.train.Checkpoint(model=model)
        self.best_manager = tf.train.CheckpointManager(
            self.best_ckpt, str(self.checkpoint_dir / "best"), max_to_keep=1
        )
        self.history: list[dict] = []
        self._train_step = self._make_train_step()

    def _make_train_step(self) -> Callable:
        model, optimizer, strategy = self.model, self.optimizer, self.strategy

        def step_fn(batch: dict[str, tf.Tensor]) -> tf.Tensor:
            with tf.GradientTape() as tape:
                loss = model.compute_loss(batch, training=True)
                reg = tf.add_n(model.losses) if model.losses else tf.constant(0.0)
                # Regularisation is per replica; gradients are summed over replicas.
                total = loss + reg / strategy.num_replicas_in_sync
            grads = tape.gradient(total, model.trainable_variables)
            optimizer.apply_gradients(
                [
                    (g, v)
                    for g, v in zip(grads, model.trainable_variables, strict=True)
                    if g is not None
                ]
            )
            return loss

        @tf.function
        def train_step(batch: dict[str, tf.Tensor]) -> tf.Tensor:
            per_replica = strategy.run(step_fn, args=(batch,))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        return train_step

    def restore(self) -> dict | None:
        """Restore the latest checkpoint if any; returns where training resumes."""
        latest = self.manager.latest_checkpoint
        if latest is None:
            return None
        self.ckpt.restore(latest).expect_partial()
        where = {
            "checkpoint": latest,
            "epoch": int(self.epoch.numpy()),
            "step_in_epoch": int(self.step_in_epoch.numpy()),
            "global_step": int(self.global_step.numpy()),
        }
        hist_file = self.checkpoint_dir / "history.json"
        if hist_file.is_file():
            self.history = json.loads(hist_file.read_text())
        log.info("resuming from %s", where)
        return where

    def _save(self) -> None:
        self.manager.save(checkpoint_number=int(self.global_step.numpy()))
        (self.checkpoint_dir / "history.json").write_text(json.dumps(self.history))

    def fit(self) -> TrainResult:
        tc = self.config.train
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        resumed = self.restore()
        start = time.perf_counter()
        trained_rows = 0
        while int(self.epoch.numpy()) < tc.epochs:
            epoch = int(self.epoch.numpy())
            examples = self.examples_fn(epoch)
            steps = len(examples) // tc.batch_size
            if tc.max_steps_per_epoch is not None:
                steps = min(steps, tc.max_steps_per_epoch)
            if steps == 0:
                raise ValueError(
                    f"train.batch_size={tc.batch_size} is larger than the {len(examples)} training rows"
                )
            skip = int(self.step_in_epoch.numpy())
            ds = _batches(examples, tc.batch_size, tc.seed, epoch).take(steps).skip(skip)
            dist = self.strategy.experimental_distribute_dataset(ds)
            bar = tqdm(
                total=steps,
                initial=skip,
                desc=f"epoch {epoch + 1}/{tc.epochs}",
                unit="step",
                file=sys.stderr,
                disable=not self.progress,
                mininterval=0.5 if sys.stderr.isatty() else 5.0,
            )
            loss_sum, loss_n = 0.0, 0
            for batch in dist:
                loss = float(self._train_step(batch).numpy())
                if not math.isfinite(loss):
                    raise FloatingPointError(
                        f"loss became {loss} at epoch {epoch + 1}, step {skip + loss_n + 1}"
                    )
                loss_sum += loss
                loss_n += 1
                trained_rows += tc.batch_size
                self.step_in_epoch.assign_add(1)
                self.global_step.assign_add(1)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / loss_n:.4f}", refresh=False)
                if int(self.global_step.numpy()) % tc.checkpoint_every == 0:
                    self._save()
            bar.close()
            record = {
                "epoch": epoch + 1,
                "loss": loss_sum / max(loss_n, 1),
                "ssm": float(self.model.ssm_tracker.result().numpy()),
                "ntr": float(self.model.ntr_tracker.result().numpy()),
            }
            self.model.ssm_tracker.reset_state()
            self.model.ntr_tracker.reset_state()
            stop = False
            if self.valid is not None:
                recall = validation_recall(self.model, self.valid)
                record["valid_recall@20"] = recall
                if recall > float(self.best_recall.numpy()):
                    self.best_recall.assign(recall)
                    self.best_epoch.assign(epoch + 1)
                    self.bad_epochs.assign(0)
                    self.best_manager.save()
                else:
                    self.bad_epochs.assign_add(1)
                    patience = tc.early_stopping_patience
                    stop = patience > 0 and int(self.bad_epochs.numpy()) >= patience
            log.info("epoch %s", json.dumps(record))
            self.history.append(record)
            self.epoch.assign_add(1)
            self.step_in_epoch.assign(0)
            self._save()
            if stop:
                log.info(
                    "early stopping: no better valid recall@20 for %d epochs",
                    tc.early_stopping_patience,
                )
                break
        if self.best_manager.latest_checkpoint is not None:
            self.best_ckpt.restore(self.best_manager.latest_checkpoint).expect_partial()
        seconds = time.perf_counter() - start
        return TrainResult(
            epochs_run=len(self.history),
            best_epoch=int(self.best_epoch.numpy()),
            best_valid_recall=float(self.best_recall.numpy()),
            steps=int(self.global_step.numpy()),
            seconds=seconds,
            examples_per_second=trained_rows / seconds if seconds > 0 else 0.0,
            history=list(self.history),
            resumed_from=resumed,
        )
