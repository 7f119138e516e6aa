"""The training loop: tf.distribute, resumable checkpoints, early stopping.

A custom loop rather than ``Model.fit`` because an epoch's examples are
rebuilt per epoch (lightgcn histories are resampled) and a killed run must
resume at the exact step it checkpointed, as the same run: the checkpoint
(:mod:`trainer.loop_state`) holds the model (with the streaming estimator's
arrays), the optimizer, the (epoch, step) counters, the running sums of the
epoch in progress, the early-stopping state (best validation recall, its epoch,
epochs without improvement), the next epoch's learning rate and the per-epoch
history. Batches are a pure function of (seed, epoch) and the mixed negatives of
(seed, global step), so the resumed run replays the same remaining batches and
ends with the weights, history and estimator state of an uninterrupted run.

Early stopping: after each epoch the validation recall@20 is compared with
the best so far; ``train.early_stopping_patience`` epochs in a row without
improvement stop the run, and the weights of the best epoch are restored. A
run resumed from a checkpoint whose patience is already exhausted stops at
once (it does not train further). ``train.lr_decay`` below 1 also multiplies the
learning rate by it after each such epoch (each epoch's rate is in the history).

Multi-worker runs (TF's documented checkpoint pattern): every worker
restores from the chief's checkpoint directory (shared storage) and writes
its own checkpoints into scratch (``write_dir``); only the chief writes into
the shared directory. So after a kill every worker resumes at the same step.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common import interrupts
from common.config import ConfigError
from trainer._tf import keras, tf
from trainer.config import TrainerConfig
from trainer.data.dataset import EvalSet, Examples
from trainer.loop_state import LoopState
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
      checkpoint_dir: resumable state; restored from when present (the chief's
        directory in a multi-worker run).
      strategy: the tf.distribute strategy the model was built under.
      progress: show a progress bar per epoch on stderr when it is a terminal.
        Every epoch also logs one line (loss, valid recall@20, examples/s,
        elapsed time), which is all a log file or a pipe gets.
      write_dir: where this process writes its checkpoints; ``checkpoint_dir``
        when None (single process, or the chief). Non-chief workers pass scratch.
      learning_rates: the rate of each epoch, replayed (``train.refit``: the first
        run's rates); None = ``train.learning_rate``, lowered by ``train.lr_decay``
        after each epoch without a better validation recall@20.
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
        write_dir: Path | None = None,
        learning_rates: Sequence[float] | None = None,
    ):
        self.model = model
        self.config = config
        self.examples_fn = examples_fn
        self.valid = valid
        self.strategy = strategy
        self.progress = progress
        self.checkpoint_dir = Path(checkpoint_dir)
        self.write_dir = Path(write_dir) if write_dir is not None else self.checkpoint_dir
        self.learning_rates = list(learning_rates) if learning_rates is not None else None
        self.state = LoopState(
            model, config.train.learning_rate, strategy, self.checkpoint_dir, self.write_dir
        )
        self._train_step = self._make_train_step()

    def _make_train_step(self) -> Callable:
        model, optimizer, strategy = self.model, self.state.optimizer, self.strategy
        global_step = self.state.global_step

        def step_fn(batch: dict[str, tf.Tensor]) -> tf.Tensor:
            with tf.GradientTape() as tape:
                # The global step (identical on every replica) keys the mixed negatives.
                loss = model.compute_loss(batch, training=True, step=global_step.read_value())
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

    def _patience_exhausted(self) -> bool:
        patience = self.config.train.early_stopping_patience
        return (
            self.valid is not None
            and patience > 0
            and int(self.state.bad_epochs.numpy()) >= patience
        )

    def fit(self, resume: bool = True) -> TrainResult:
        """Train to ``train.epochs`` (or early stopping), resuming when a checkpoint exists.

        Ctrl-C stops it between two steps (see :mod:`common.interrupts`); the
        last checkpoint is where the same run resumes.

        Raises:
          IncompatibleCheckpointError: see :meth:`LoopState.restore`.
          ConfigError: ``train.batch_size`` exceeds an epoch's training rows.
          KeyboardInterrupt: Ctrl-C.
        """
        tc, state = self.config.train, self.state
        self.write_dir.mkdir(parents=True, exist_ok=True)
        resumed = state.restore() if resume else None
        start = time.perf_counter()
        trained_rows = 0
        # Carriage-return bars only where they redraw in place; logs get a line per epoch.
        bars = self.progress and sys.stderr.isatty()
        if resumed is not None and self._patience_exhausted():
            log.info(
                "the checkpoint's run had already stopped early at epoch %d "
                "(no better valid recall@20 for %d epochs); not training further",
                int(state.epoch.numpy()),
                tc.early_stopping_patience,
            )
        while int(state.epoch.numpy()) < tc.epochs and not self._patience_exhausted():
            interrupts.check()
            epoch = int(state.epoch.numpy())
            rate = self._start_epoch(epoch)
            epoch_rows, train_seconds = self._train_epoch(epoch, bars)
            trained_rows += epoch_rows
            record = self._end_epoch(epoch, rate)
            log.info(
                "%s",
                epoch_line(
                    record,
                    tc.epochs,
                    epoch_rows / train_seconds if train_seconds > 0 else 0.0,
                    time.perf_counter() - start,
                ),
            )
            state.save()
            if self._patience_exhausted():
                log.info(
                    "early stopping: no better valid recall@20 for %d epochs",
                    tc.early_stopping_patience,
                )
        interrupts.check()
        self._keep_best()
        seconds = time.perf_counter() - start
        return TrainResult(
            epochs_run=int(state.epoch.numpy()),
            best_epoch=int(state.best_epoch.numpy()),
            best_valid_recall=float(state.best_recall.numpy()),
            steps=int(state.global_step.numpy()),
            seconds=seconds,
            examples_per_second=trained_rows / seconds if seconds > 0 else 0.0,
            history=list(state.history),
            resumed_from=resumed,
        )

    def _train_epoch(self, epoch: int, bars: bool) -> tuple[int, float]:
        """The remaining steps of epoch ``epoch`` (0-based): (rows trained, seconds)."""
        tc, state = self.config.train, self.state
        examples = self.examples_fn(epoch)
        steps = len(examples) // tc.batch_size
        if tc.max_steps_per_epoch is not None:
            steps = min(steps, tc.max_steps_per_epoch)
        if steps == 0:
            raise ConfigError(
                f"train.batch_size={tc.batch_size} is larger than the {len(examples)} "
                f"training rows of epoch {epoch + 1}: nothing to train on; lower it "
                f"(e.g. --set train.batch_size={_smaller_batch(len(examples))})"
            )
        skip = int(state.step_in_epoch.numpy())
        ds = _batches(examples, tc.batch_size, tc.seed, epoch).take(steps).skip(skip)
        dist = self.strategy.experimental_distribute_dataset(ds)
        bar = tqdm(
            total=steps,
            initial=skip,
            desc=f"epoch {epoch + 1}/{tc.epochs}",
            unit="step",
            file=sys.stderr,
            disable=not bars,
            mininterval=0.5,
        )
        epoch_start, epoch_rows = time.perf_counter(), 0
        for batch in dist:
            interrupts.check()  # a Ctrl-C whose exception TF or Keras swallowed
            loss = float(self._train_step(batch).numpy())
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {loss} at epoch {epoch + 1}, step "
                    f"{int(state.step_in_epoch.numpy()) + 1}"
                )
            state.epoch_loss_sum.assign_add(loss)
            state.epoch_steps.assign_add(1)
            epoch_rows += tc.batch_size
            state.step_in_epoch.assign_add(1)
            state.global_step.assign_add(1)
            bar.update(1)
            n = int(state.epoch_steps.numpy())
            bar.set_postfix(loss=f"{float(state.epoch_loss_sum.numpy()) / n:.4f}", refresh=False)
            if int(state.global_step.numpy()) % tc.checkpoint_every == 0:
                state.save()
        bar.close()
        return epoch_rows, time.perf_counter() - epoch_start

    def _keep_best(self) -> None:
        """Load the best epoch's weights, when a best checkpoint exists."""
        best = self.state.best_checkpoint()
        if best is None:
            return
        self.state.best_ckpt.restore(best).expect_partial()
        if self.valid is not None:
            log.info(
                "keeping the weights of epoch %d (best valid recall@20 %.4f)",
                int(self.state.best_epoch.numpy()),
                float(self.state.best_recall.numpy()),
            )

    def _start_epoch(self, epoch: int) -> float:
        """Set the optimizer's learning rate for epoch ``epoch`` (0-based); returns it."""
        state = self.state
        if self.learning_rates is not None and epoch < len(self.learning_rates):
            state.learning_rate.assign(self.learning_rates[epoch])
        rate = float(state.learning_rate.numpy())
        # A variable of the optimizer read by the compiled step: no retracing.
        state.optimizer.learning_rate = rate
        return rate

    def _end_epoch(self, epoch: int, rate: float) -> dict:
        """Record epoch ``epoch`` (0-based) trained at ``rate``, update early stopping and
        the next epoch's rate, advance the counters.

        Returns the epoch's history record.
        """
        state = self.state
        n = int(state.epoch_steps.numpy())
        record = {
            "epoch": epoch + 1,
            "learning_rate": rate,
            "loss": float(state.epoch_loss_sum.numpy()) / max(n, 1),
            "ssm": float(self.model.ssm_tracker.result().numpy()),
            "ntr": float(self.model.ntr_tracker.result().numpy()),
        }
        self.model.ssm_tracker.reset_state()
        self.model.ntr_tracker.reset_state()
        if self.valid is not None:
            recall = validation_recall(self.model, self.valid)
            record["valid_recall@20"] = recall
            if recall > float(state.best_recall.numpy()):
                state.best_recall.assign(recall)
                state.best_epoch.assign(epoch + 1)
                state.bad_epochs.assign(0)
                state.best_manager.save()
            else:
                state.bad_epochs.assign_add(1)
                decay = self.config.train.lr_decay
                if decay < 1.0 and self.learning_rates is None:
                    state.learning_rate.assign(rate * decay)
        log.debug("epoch %s", json.dumps(record))
        state.history.append(record)
        state.epoch.assign_add(1)
        state.step_in_epoch.assign(0)
        state.epoch_loss_sum.assign(0.0)
        state.epoch_steps.assign(0)
        return record


def epoch_line(record: dict, epochs: int, examples_per_second: float, elapsed: float) -> str:
    """The per-epoch progress line, e.g. ``epoch 3/20: loss 5.1234, valid recall@20 0.1234,
    41,200 examples/s, elapsed 1m05s``."""
    parts = [f"epoch {record['epoch']}/{epochs}: loss {record['loss']:.4f}"]
    if "valid_recall@20" in record:
        parts.append(f"valid recall@20 {record['valid_recall@20']:.4f}")
    parts.append(f"{examples_per_second:,.0f} examples/s")
    parts.append(f"elapsed {format_duration(elapsed)}")
    return ", ".join(parts)


def format_duration(seconds: float) -> str:
    """``42.1s``, ``3m05s``, ``2h03m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _smaller_batch(rows: int) -> int:
    """A power of two at most half the rows (>= 2): a batch size that trains."""
    return max(2, 1 << max(1, (max(rows, 4) // 2).bit_length() - 1))
