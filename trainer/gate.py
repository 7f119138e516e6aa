"""The pipeline's quality gate: its rules, and the holdout both versions are scored on.

A gate compares like with like. The candidate and the published version are
evaluated here, not read from their manifests (each manifest holds figures on
*its own* training-time test split, a different sample of a different data
snapshot). :func:`shared_holdout` fixes one evaluation for both:

* the same users: the test users of the current data, sampled once
  (``split.max_users_eval``, ``train.seed`` of the running config);
* the same items: one catalog, the union of both versions' items and the
  data's (in that order). A version cannot retrieve an item it does not know:
  such a target is a miss, and ``coverage@20`` is the share of that one
  catalog, so both coverages have the same denominator;
* the same ground truth and masking: the per-user temporal leave-last-out of
  :mod:`trainer.data.split` (each user's last positive is the target, their
  train/valid items are masked).

Why per-user leave-last-out and not one global cut-off time: the target is
each user's most recent positive, later than everything in their input, so it
is a time-based holdout per user; neither version trained on it (the candidate's
train split stops before it, the published version was trained on an earlier
snapshot, where that event did not exist yet unless it arrived late), and every
user with three or more positives counts, not only those active after a cut-off.
It is also the split every version's training-time figures use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from trainer.data.dataset import Dataset, EvalSet

#: Metric names a gate rule can name: the scalar metrics of the SPEC
#: (``longtail_recall@20`` is a list of ten groups, not a single figure).
SCALAR_METRICS: tuple[str, ...] = (
    *(f"{name}@{k}" for name in ("recall", "ndcg", "hit_rate") for k in (10, 20, 50)),
    "coverage@20",
    "dislike_rate@20",
    "responsiveness@20",
)


class GateRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    direction: Literal["higher", "lower"]
    """``higher``: larger is better (recall); ``lower``: smaller is better (dislike rate)."""
    tolerance: float = Field(0.0, ge=0.0)
    """Allowed regression in the metric's own units (absolute)."""


def check_gate_names(rules: dict[str, GateRule]) -> dict[str, GateRule]:
    """Refuse gate rules on names that are not scalar metrics (at config load, not after training).

    Raises:
      ValueError: naming the unknown keys and listing the valid ones.
    """
    unknown = sorted(set(rules) - set(SCALAR_METRICS))
    if unknown:
        raise ValueError(
            f"unknown metric {', '.join(repr(u) for u in unknown)}; "
            f"a gate rule names one of: {', '.join(SCALAR_METRICS)}"
        )
    return rules


def apply_gate(
    candidate: dict[str, Any], published: dict[str, Any] | None, rules: dict[str, GateRule]
) -> tuple[bool, list[dict[str, Any]]]:
    """Compare metric by metric; returns (passed, per-rule report rows)."""
    rows = []
    passed = True
    for name, rule in rules.items():
        new = float(candidate[name])
        if published is None:
            rows.append(
                {
                    "metric": name,
                    "direction": rule.direction,
                    "candidate": new,
                    "published": None,
                    "delta": None,
                    "tolerance": rule.tolerance,
                    "ok": True,
                    "why": "nothing published",
                }
            )
            continue
        old = float(published[name])
        delta = new - old
        regress = -delta if rule.direction == "higher" else delta
        ok = regress <= rule.tolerance + 1e-12
        passed &= ok
        rows.append(
            {
                "metric": name,
                "direction": rule.direction,
                "candidate": new,
                "published": old,
                "delta": delta,
                "tolerance": rule.tolerance,
                "ok": ok,
            }
        )
    return passed, rows


@dataclass(frozen=True)
class Holdout:
    """One evaluation shared by every version the gate compares.

    Attributes:
      ds: the data, re-indexed so that ``catalog`` occupies indices 0..N-1.
      catalog: str [N] item ids of the shared catalog.
      users: str [U] ids of the evaluated test users, sorted.
    """

    ds: Dataset
    catalog: np.ndarray
    users: np.ndarray

    def describe(self) -> dict[str, Any]:
        return {
            "split": "test (per-user temporal leave-last-out)",
            "users": len(self.users),
            "catalog_items": len(self.catalog),
            "protocol": "all-ranking, train/valid items masked, one catalog for all versions",
        }


def shared_holdout(
    ds: Dataset, item_id_lists: Sequence[np.ndarray], max_users: int | None, seed: int
) -> Holdout:
    """Fix the users and the catalog once, for every version in ``item_id_lists``.

    Args:
      ds: the current data (split).
      item_id_lists: each compared version's item ids (``items.npz`` order).
      max_users: evaluate a seeded sample of this many test users (None = all).
      seed: the sample's seed.
    """
    from trainer.data.examples import build_eval_set
    from trainer.data.vocab import align_items
    from trainer.evaluate import sample_rows

    catalog: list[str] = []
    seen: set[str] = set()
    for ids in [*item_id_lists, ds.item_ids]:
        for x in np.asarray(ids).astype(str):
            if x not in seen:
                seen.add(x)
                catalog.append(x)
    shared = align_items(ds, np.asarray(catalog, dtype=str))
    # The evaluated users depend on the targets only, not on H or D.
    evalset = sample_rows(build_eval_set(shared, "test", 1, 1), max_users, seed)
    users = np.sort(shared.user_ids[evalset.users].astype(str))
    return Holdout(ds=shared, catalog=shared.item_ids.astype(str), users=users)


def _only(evalset: EvalSet, user_ids: np.ndarray, users: np.ndarray) -> EvalSet:
    rows = np.flatnonzero(np.isin(user_ids[evalset.users].astype(str), users))
    return evalset.subset(rows)


def evaluate_on_holdout(art: str | Path, version: str, holdout: Holdout) -> dict[str, Any]:
    """SPEC metrics of ``version`` on ``holdout`` (same users and catalog for every version).

    The version ranks the items it knows (its own index space, its own history
    length), then its top-50 lists are scored in the shared catalog. Returns the
    metrics dict (``num_users`` = the holdout's users with a target).
    """
    from trainer.data.examples import build_eval_set
    from trainer.data.vocab import align_items
    from trainer.evaluate import evaluate, version_neighbors
    from trainer.metrics import ranking_metrics
    from twotower.tf_logging import import_tensorflow_quietly

    import_tensorflow_quietly()
    from trainer.run import ExportedModel

    exported = ExportedModel(art, version)
    H, D = int(exported.manifest["history_length"]), int(exported.manifest["dislike_length"])
    ids = exported.item_ids.astype(str)
    n = len(ids)
    own = align_items(holdout.ds, ids)
    own_set = _only(build_eval_set(own, "test", H, D), own.user_ids, holdout.users)
    ev = evaluate(
        exported.embed,
        exported.item_emb,
        own_set,
        own.train_item_counts()[:n],
        version_neighbors(own, n),
    )

    position = {x: i for i, x in enumerate(holdout.catalog)}
    to_shared = np.fromiter((position[x] for x in ids), dtype=np.int64, count=n)
    topk = np.where(ev.topk >= 0, to_shared[np.clip(ev.topk, 0, None)], -1)
    shared_set = _only(build_eval_set(holdout.ds, "test", H, D), holdout.ds.user_ids, holdout.users)
    if not np.array_equal(shared_set.users, own_set.users):  # same users, same order
        raise RuntimeError(f"{version}: holdout users differ between index spaces")
    metrics: dict[str, Any] = ranking_metrics(topk, shared_set, holdout.ds.train_item_counts())
    metrics["responsiveness@20"] = ev.metrics["responsiveness@20"]
    return metrics
