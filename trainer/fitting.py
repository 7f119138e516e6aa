"""Fitting a model for one run of ``twotower train``: build, fit, resume, refit.

:class:`Fit` holds what the run's fits share: the data set, the strategy, the
checkpoint directories (see :mod:`trainer.checkpoints`), the validation users that
stop early, and the training rows of an epoch (built once for timestamped data). A
checkpoint that does not fit the model is discarded with a warning and the fit
starts fresh; ``train.refit`` fits the chosen number of epochs afresh on train +
valid. The loop itself is :class:`trainer.train.Trainer`.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common import interrupts
from trainer.checkpoints import checkpoint_paths, is_chief, run_directory
from trainer.config import TrainerConfig
from trainer.data.dataset import Dataset, EvalSet, Examples
from trainer.data.examples import build_eval_set, build_train_examples
from trainer.data.item_quality import tower_item_features
from trainer.data.split import train_and_valid
from trainer.evaluate import reference_neighbors, sample_rows
from trainer.loop_state import IncompatibleCheckpointError
from trainer.model import TwoTowerModel
from trainer.train import Trainer, TrainResult, make_strategy, seed_everything
from trainer.warmstart import warm_start

log = logging.getLogger(__name__)


def item_graph(ds: Dataset, k: int) -> np.ndarray | None:
    """int32 [N, k]: each item's k nearest items on the TRAIN positives' co-occurrence
    graph (``model.item_graph_neighbors``), or None when k = 0."""
    if k <= 0:
        return None
    return reference_neighbors(ds, ds.num_items)[:, :k]


def exact_item_probabilities(ds: Dataset, batch_size: int, distinct: bool = False) -> np.ndarray:
    """Token-indexed float32 [N + 1] from exact train counts (``loss.logq=counts``).

    Expected occurrences of each item per batch of ``batch_size`` rows, or with
    ``distinct`` the probability that it occurs at least once (the quantity
    ``loss.dedupe_candidates`` corrects by). Entry 0 (padding) is 0.
    """
    counts = ds.train_item_counts().astype(np.float64)
    rows = max(float((ds.split == 0).sum()), 1.0)
    share = counts / rows
    per_batch = (
        -np.expm1(batch_size * np.log1p(-np.minimum(share, 1.0 - 1e-12)))
        if distinct
        else share * batch_size
    )
    return np.concatenate([[0.0], per_batch]).astype(np.float32)


def training_examples(ds: Dataset, cfg: TrainerConfig, epoch: int) -> Examples:
    """The training rows of ``epoch`` as the config asks for them (H, D, seed, w)."""
    return build_train_examples(
        ds,
        cfg.model.history_length,
        cfg.model.dislike_length,
        seed=cfg.train.seed,
        epoch=epoch,
        dislike_weight=cfg.loss.dislike_weight,
        ntr_state=cfg.loss.ntr_state,
    )


class Fit:
    """The fits of one training run on ``ds`` (module docstring).

    ``ds`` has its dislike holdout applied; ``warm_from`` is the version of ``out``
    to warm-start from, or None. The checkpoint directory is ``checkpoint_dir``, by
    default ``out/.train-<hash of data, config and warm version>``.
    """

    def __init__(
        self,
        out: Path,
        spec: str,
        cfg: TrainerConfig,
        ds: Dataset,
        warm_from: str | None,
        checkpoint_dir: str | Path | None,
        progress: bool,
    ) -> None:
        self.out, self.cfg, self.ds, self.warm_from, self.progress = (
            out,
            cfg,
            ds,
            warm_from,
            progress,
        )
        # The item tower's features: metadata, plus the train-split dislike ratio when
        # asked for (computed here, after the holdout, from TRAIN events only).
        self.tower_features, self.tower_sizes = tower_item_features(ds, cfg.model)
        self.item_graph = item_graph(ds, cfg.model.item_graph_neighbors)
        seed_everything(cfg.train.seed)
        self.strategy = make_strategy(cfg.train.strategy)
        self._cache: dict[int, Examples] = {}
        H, D = cfg.model.history_length, cfg.model.dislike_length
        self.valid: EvalSet = sample_rows(
            build_eval_set(ds, "valid", H, D), cfg.train.valid_max_users, cfg.train.seed
        )
        self.ckpt_dir = (
            Path(checkpoint_dir) if checkpoint_dir else run_directory(out, spec, cfg, warm_from, ds)
        )
        self.chief = is_chief(self.strategy)
        # Every worker restores from the chief's directory; only the chief writes there.
        self.restore_dir, self.write_dir = checkpoint_paths(self.ckpt_dir, self.strategy)
        # What the loop reads (train.refit changes both); the model and manifest keep cfg.
        self._fit_cfg = cfg
        self._stop_on: EvalSet | None = self.valid if len(self.valid) else None
        self._learning_rates: Sequence[float] | None = None  # a refit replays the first run's

    def examples(self, epoch: int) -> Examples:
        """The training rows of ``epoch`` (read at call time: a refit changes the data set)."""
        # Timestamped data gives the same rows every epoch; build them once.
        key = epoch if not self.ds.timestamped else 0
        if key not in self._cache:
            self._cache.clear()
            self._cache[key] = training_examples(self.ds, self.cfg, epoch)
        return self._cache[key]

    def _build(self) -> tuple[TwoTowerModel, Trainer, dict | None]:
        """A new model (warm-started if asked for) and its Trainer; the warm start's summary."""
        cfg, ds = self.cfg, self.ds
        seed_everything(cfg.train.seed)  # a rebuilt model starts as a first one would
        probs = (
            exact_item_probabilities(ds, cfg.train.batch_size, cfg.loss.dedupe_candidates)
            if cfg.loss.logq == "counts"
            else None
        )
        with self.strategy.scope():
            model = TwoTowerModel(
                cfg, ds.num_items, self.tower_features, self.tower_sizes, probs, self.item_graph
            )
            model.build_all()
        summary = warm_start(model, self.out, self.warm_from) if self.warm_from else None
        trainer = Trainer(
            model,
            self._fit_cfg,
            self.examples,
            self._stop_on,
            self.restore_dir,
            self.strategy,
            self.progress,
            write_dir=self.write_dir,
            learning_rates=self._learning_rates,
        )
        return model, trainer, summary

    def fit(self) -> tuple[TwoTowerModel, TrainResult, dict | None]:
        """The fitted model, the loop's result and the warm start's summary (or None)."""
        model, trainer, warm_summary = self._build()
        interrupts.check()  # tf_keras swallows a KeyboardInterrupt raised while the towers build
        try:
            return model, trainer.fit(), warm_summary
        except IncompatibleCheckpointError as exc:
            log.warning(
                "discarding the checkpoint in %s: it does not fit this run (%s); training from scratch",
                self.restore_dir,
                exc,
            )
            if self.chief:
                shutil.rmtree(self.restore_dir, ignore_errors=True)
            model, trainer, warm_summary = self._build()
            interrupts.check()
            return model, trainer.fit(resume=False), warm_summary

    def refit(
        self, epochs: int, learning_rates: Sequence[float] | None = None
    ) -> tuple[TwoTowerModel, TrainResult]:
        """``epochs`` fitted afresh on train + valid (``train.refit``); ``ds`` becomes that.

        ``learning_rates``: the rate of each epoch (the first run's), replayed.
        """
        self._learning_rates = learning_rates
        self.ds = train_and_valid(self.ds)
        self.tower_features, self.tower_sizes = tower_item_features(self.ds, self.cfg.model)
        self.item_graph = item_graph(self.ds, self.cfg.model.item_graph_neighbors)
        self._fit_cfg = self.cfg.model_copy(
            update={"train": self.cfg.train.model_copy(update={"epochs": epochs})}
        )
        self._stop_on = None  # no early stopping: the epochs are fixed
        self._cache.clear()
        self.restore_dir, self.write_dir = checkpoint_paths(self.ckpt_dir / "refit", self.strategy)
        log.info("refit: %d epochs on train + valid...", epochs)
        model, trainer, _ = self._build()
        interrupts.check()
        return model, trainer.fit()
