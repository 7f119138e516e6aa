"""Warm starts from a published version: vocabularies grow, old ids keep their rows.

The data set is first re-indexed onto the version's item order
(:func:`trainer.data.vocab.align_items`), so item ``i`` of the old version is
item ``i`` of the new one. Then a model of the *old* shape is restored from the
version's checkpoint and its variables are copied into the new model: equal
shapes are copied whole, grown tables (item ids, feature values) get their old
rows copied and keep fresh initialisation for the new rows. The streaming
frequency estimator's arrays and step counter carry over, so logQ estimates
survive the warm start -- as long as ``frequency.buckets`` and
``frequency.hashes`` are unchanged. Its arrays are flat ``[hashes * buckets]``
hash tables: with another H or m an old bucket means another set of items, so
copying (or "growing") them would silently feed wrong probabilities to the
logQ correction. Then the estimator is *reset* instead (fresh arrays, step 0;
it re-converges within ~1/alpha steps), with a logged warning and the reason
in the summary's ``estimator`` field, while the towers still warm-start.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from common import artifacts
from common.artifact_format import read_item_ids
from trainer._tf import tf
from trainer.config import TrainerConfig, architecture_changes
from trainer.model import TwoTowerModel

log = logging.getLogger(__name__)


class WarmStartError(ValueError):
    """The version cannot initialise this model (incompatible shapes or config)."""


def load_version_items(art: str | Path, version: str) -> tuple[dict[str, Any], np.ndarray]:
    manifest = artifacts.read_manifest(art, version)
    return manifest, read_item_ids(artifacts.version_dir(art, version) / artifacts.ITEMS)


def warm_start(model: TwoTowerModel, art: str | Path, version: str) -> dict[str, Any]:
    """Initialise ``model`` (already built, data aligned to the version) from ``version``.

    Returns a summary: copied / grown variables and the item counts.
    """
    manifest, _ids = load_version_items(art, version)
    ckpt_path = artifacts.version_dir(art, version) / artifacts.CHECKPOINT / "model"
    if not Path(str(ckpt_path) + ".index").is_file():
        raise WarmStartError(
            f"version {version} has no checkpoint ({ckpt_path}); it cannot be warm-started from"
        )
    old_config = TrainerConfig.model_validate(manifest["config"])
    new_config = model.config
    changed = architecture_changes(old_config, new_config)
    if changed:
        raise WarmStartError(
            f"{'; '.join(changed)}; "
            "warm start needs the same architecture (train from scratch instead)"
        )
    old_sizes: dict[str, int] = manifest.get("item_feature_sizes", {})
    old_n = int(manifest["num_items"])
    old_features = {name: np.zeros(old_n, np.int32) for name in old_sizes}
    old_model = TwoTowerModel(
        new_config.model_copy(
            update={"model": old_config.model, "frequency": old_config.frequency}
        ),
        old_n,
        item_features=old_features,
        feature_sizes=old_sizes,
    )
    old_model.build_all()
    tf.train.Checkpoint(model=old_model).read(str(ckpt_path)).expect_partial()
    copied, grown = 0, 0
    new_vars = model.variables
    old_vars = old_model.variables
    if len(new_vars) != len(old_vars):
        raise WarmStartError(
            f"variable count differs: {len(old_vars)} in {version}, {len(new_vars)} now"
        )
    estimator_note = _estimator_compatibility(old_config, new_config, version)
    estimator_vars = (
        {v.ref() for v in model.estimator.variables} if model.estimator is not None else set()
    )
    for new, old in zip(new_vars, old_vars, strict=True):
        if new.ref() in estimator_vars and estimator_note.startswith("reset"):
            continue  # keeps its fresh initial state
        if new.shape == old.shape:
            new.assign(old)
            copied += 1
        elif (
            new.shape.rank == old.shape.rank
            and new.shape[1:] == old.shape[1:]
            and new.shape[0] >= old.shape[0]
        ):
            rows = int(old.shape[0])
            new.assign(tf.concat([old.read_value(), new.read_value()[rows:]], axis=0))
            grown += 1
        else:
            raise WarmStartError(
                f"variable {new.name}: shape {old.shape} in {version} cannot grow to {new.shape}"
            )
    summary = {
        "version": version,
        "copied": copied,
        "grown": grown,
        "old_items": old_n,
        "new_items": model.num_items,
        "estimator": estimator_note if model.estimator is not None else None,
    }
    log.info("warm start %s", summary)
    return summary


def _estimator_compatibility(old: TrainerConfig, new: TrainerConfig, version: str) -> str:
    """``carried over``, or ``reset: <why>`` when the hash tables' layout changed."""
    changed = [
        f"frequency.{key} {getattr(old.frequency, key)} -> {getattr(new.frequency, key)}"
        for key in ("buckets", "hashes")
        if getattr(old.frequency, key) != getattr(new.frequency, key)
    ]
    if not changed:
        return "carried over"
    note = f"reset: {', '.join(changed)}"
    log.warning(
        "warm start from %s: the streaming frequency estimator is reset (%s; its hash "
        "tables cannot be remapped); the towers are warm-started, the logQ estimate "
        "re-converges within ~1/frequency.alpha steps",
        version,
        ", ".join(changed),
    )
    return note
