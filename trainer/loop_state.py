"""The training loop's resumable state: what a checkpoint of :class:`trainer.train.Trainer` holds.

A checkpoint holds the model (with the streaming estimator's arrays), the
optimizer, the (epoch, step) counters, the running sums of the epoch in
progress, the early-stopping state (best validation recall, its epoch, epochs
without improvement), the learning rate of the next epoch, the loss trackers and
the per-epoch history (JSON, written with the counters it describes, in the same
atomic save). ``latest/`` keeps the last two checkpoints, ``best/`` the weights of
the best epoch. The state is restored from ``checkpoint_dir`` and written to
``write_dir`` (who writes where: :mod:`trainer.checkpoints`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from common import interrupts
from trainer._tf import keras, tf
from trainer.model import TwoTowerModel

log = logging.getLogger(__name__)


class IncompatibleCheckpointError(ValueError):
    """A checkpoint in the run's directory cannot be restored into this model."""


class LoopState:
    """The loop's variables (created under ``strategy``'s scope) and their checkpoints."""

    def __init__(
        self,
        model: TwoTowerModel,
        learning_rate: float,
        strategy: tf.distribute.Strategy,
        checkpoint_dir: Path,
        write_dir: Path,
    ):
        self.checkpoint_dir, self.write_dir = checkpoint_dir, write_dir

        def counter(name: str, value: float | int, dtype: tf.DType) -> tf.Variable:
            return tf.Variable(value, dtype=dtype, trainable=False, name=name)

        with strategy.scope():
            self.optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
            self.epoch = counter("epoch", 0, tf.int64)
            self.step_in_epoch = counter("step_in_epoch", 0, tf.int64)
            self.global_step = counter("global_step", 0, tf.int64)
            self.best_recall = counter("best_recall", -1.0, tf.float64)
            self.best_epoch = counter("best_epoch", -1, tf.int64)
            self.bad_epochs = counter("bad_epochs", 0, tf.int64)
            # The rate of the next epoch (train.lr_decay lowers it after a bad epoch).
            self.learning_rate = counter("learning_rate", learning_rate, tf.float64)
            # Running sums of the epoch in progress, so a mid-epoch resume reports
            # the same epoch loss as an uninterrupted run.
            self.epoch_loss_sum = counter("epoch_loss_sum", 0.0, tf.float64)
            self.epoch_steps = counter("epoch_steps", 0, tf.int64)
        # The per-epoch history (JSON) lives in the checkpoint itself: written with
        # the counters it describes, in the same atomic save.
        self.history_json = tf.Variable("[]", dtype=tf.string, trainable=False, name="history")
        self.ckpt = tf.train.Checkpoint(
            model=model,
            optimizer=self.optimizer,
            epoch=self.epoch,
            step_in_epoch=self.step_in_epoch,
            global_step=self.global_step,
            best_recall=self.best_recall,
            best_epoch=self.best_epoch,
            bad_epochs=self.bad_epochs,
            learning_rate=self.learning_rate,
            epoch_loss_sum=self.epoch_loss_sum,
            epoch_steps=self.epoch_steps,
            ssm_tracker=model.ssm_tracker,
            ntr_tracker=model.ntr_tracker,
            history=self.history_json,
        )
        self.manager = tf.train.CheckpointManager(
            self.ckpt, str(self.write_dir / "latest"), max_to_keep=2
        )
        self.best_ckpt = tf.train.Checkpoint(model=model)
        self.best_manager = tf.train.CheckpointManager(
            self.best_ckpt, str(self.write_dir / "best"), max_to_keep=1
        )
        self.history: list[dict] = []

    def restore(self) -> dict | None:
        """Restore the latest checkpoint of ``checkpoint_dir`` if any; where training resumes.

        Raises:
          IncompatibleCheckpointError: the checkpoint's variables do not fit this
            model (e.g. it was written for a catalog of another size) or it is
            unreadable. The model may be partly overwritten: build a new one.
        """
        latest = tf.train.latest_checkpoint(str(self.checkpoint_dir / "latest"))
        if latest is None:
            return None
        try:
            self.ckpt.restore(latest).expect_partial()
        except (ValueError, tf.errors.OpError) as exc:
            raise IncompatibleCheckpointError(f"{latest}: {exc}") from exc
        where = {
            "checkpoint": latest,
            "epoch": int(self.epoch.numpy()),
            "step_in_epoch": int(self.step_in_epoch.numpy()),
            "global_step": int(self.global_step.numpy()),
        }
        self.history = self._read_history()
        log.info("resuming from %s", where)
        return where

    def _read_history(self) -> list[dict]:
        text = self.history_json.numpy().decode("utf-8", errors="replace")
        try:
            history = json.loads(text)
            if isinstance(history, list) and all(isinstance(r, dict) for r in history):
                return history
        except json.JSONDecodeError:
            pass
        log.warning(
            "the checkpoint's per-epoch history is unreadable; the resumed run reports "
            "only the epochs it trains from now on"
        )
        return []

    def save(self) -> None:
        """Write a checkpoint into ``write_dir/latest``, numbered by the global step."""
        # A Ctrl-C during the save takes effect once the checkpoint is complete.
        with interrupts.deferred():
            self.history_json.assign(json.dumps(self.history))
            self.manager.save(checkpoint_number=int(self.global_step.numpy()))

    def best_checkpoint(self) -> str | None:
        """The best epoch's weights: this process's own if it saved them, else the resumed ones."""
        return tf.train.latest_checkpoint(
            str(self.write_dir / "best")
        ) or tf.train.latest_checkpoint(str(self.checkpoint_dir / "best"))
