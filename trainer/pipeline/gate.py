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
  train/valid items are masked);
* the same judged answers for ``like_dislike_auc`` and ``dislike_share@20``:
  the dislike holdout's test users (their last positive and the dislikes of
  their last events, held out of the candidate's training:
  :func:`trainer.data.split.apply_dislike_holdout`, with the running config's
  ``split.*``), sampled once, their answers restricted to the items every
  compared version knows (a score is needed for each), each version scoring
  them with its own user vectors, as it ranks.

Why per-user leave-last-out and not one global cut-off time: the target is
each user's most recent positive, later than everything in their input, so it
is a time-based holdout per user; neither version trained on it (the candidate's
train split stops before it, the published version was trained on an earlier
snapshot, where that event did not exist yet unless it arrived late), and every
user with three or more positives counts, not only those active after a cut-off.
It is also the split every version's training-time figures use.

The dislike holdout is leak-free for the published version too, as long as it
was trained with the same holdout on an earlier snapshot: the holdout depends
on the user id and the event times only, so the answers now (a user's last
positive and last dislikes) were held out then or did not exist yet -- unless
events arrived out of time order (in the issue's two-snapshot synthetic repro,
the second snapshot's users share ids and time span with the first's, and 92 of
593 judged answers had trained the published version: a bias in its favour).
A published version trained with another ``split.dislike_holdout`` may have
trained on them: the gate then leaves those two metrics out and says why
(:func:`holdout_mismatch`). It also leaves out a dislike metric the published
version scores on fewer than ``pipeline.gate_min_users`` users (or, for
``dislike_share@20``, with no judged item in a top 20), rather than comparing
against a figure that means nothing.
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

#: Metric names a gate rule can name: the scalar metrics of docs/CONTRACT.md
#: (``longtail_recall@20`` is a list of ten groups, not a single figure).
SCALAR_METRICS: tuple[str, ...] = (
    *(f"{name}@{k}" for name in ("recall", "ndcg", "hit_rate") for k in (10, 20, 50)),
    "coverage@20",
    "dislike_rate@20",
    "responsiveness@20",
    "like_dislike_auc",
    "dislike_share@20",
)

#: The count of users a dislike metric is measured on: a metric whose published
#: figure covers fewer than the gate's minimum is left out of the gate.
METRIC_USERS: dict[str, str] = {
    "dislike_rate@20": "num_users_with_dislikes",
    "like_dislike_auc": "num_users_judged",
    # The share's figure comes from the users whose top 20 shows a judged item.
    "dislike_share@20": "num_users_judged_in_top20",
}
#: Metrics measured on the dislike holdout (left out when the holdouts differ).
HOLDOUT_METRICS = ("like_dislike_auc", "dislike_share@20")


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


def _left_out(
    name: str, candidate: dict[str, Any], published: dict[str, Any], min_users: int
) -> str | None:
    """Why ``name`` cannot be compared (None: it can)."""
    key = METRIC_USERS.get(name)
    if key is not None and key in published:
        n_pub = int(published[key])
        n_cand = int(candidate.get(key, n_pub))
        if min(n_pub, n_cand) < min_users:
            return (
                f"left out: too few users (published version measured on {n_pub}, "
                f"candidate on {n_cand}; pipeline.gate_min_users = {min_users})"
            )
    if name == "dislike_share@20" and "num_judged_in_top20" in published:
        shown = {
            "published version": int(published["num_judged_in_top20"]),
            "candidate": int(candidate.get("num_judged_in_top20", 1)),
        }
        empty = [who for who, n in shown.items() if n == 0]
        if empty:
            return f"left out: no judged item in the {' or '.join(empty)}'s top 20 lists"
    return None


def apply_gate(
    candidate: dict[str, Any],
    published: dict[str, Any] | None,
    rules: dict[str, GateRule],
    *,
    min_users: int = 0,
    left_out: dict[str, str] | None = None,
) -> tuple[bool, list[dict[str, Any]]]:
    """Compare metric by metric; returns (passed, per-rule report rows).

    A rule is *left out* (its row says why, ``left_out`` True, ``ok`` True: it
    neither passes nor fails the candidate) when ``left_out`` names it, or when
    its metric is one of :data:`METRIC_USERS` and the published (or candidate)
    figure covers fewer than ``min_users`` users, or for ``dislike_share@20`` when
    a version shows no judged item at all. Other rules compare as before.
    """
    rows = []
    passed = True
    for name, rule in rules.items():
        new = float(candidate[name])
        row: dict[str, Any] = {
            "metric": name,
            "direction": rule.direction,
            "candidate": new,
            "published": None,
            "delta": None,
            "tolerance": rule.tolerance,
            "ok": True,
        }
        if published is None:
            rows.append({**row, "why": "nothing published"})
            continue
        old = float(published[name])
        delta = new - old
        row.update(published=old, delta=delta)
        why = (left_out or {}).get(name) or _left_out(name, candidate, published, min_users)
        if why is not None:
            rows.append({**row, "left_out": True, "why": why})
            continue
        regress = -delta if rule.direction == "higher" else delta
        ok = regress <= rule.tolerance + 1e-12
        passed &= ok
        rows.append({**row, "ok": ok})
    return passed, rows


def applied_holdout(manifest: dict[str, Any]) -> str:
    """The dislike holdout a version's training left out, as a comparable string:
    its manifest's ``eval.dislike_protocol`` (``"none"`` where it did not apply,
    and for a version from before the holdout existed)."""
    protocol = (manifest.get("eval") or {}).get("dislike_protocol") or {}
    held = str(protocol.get("holdout", "none"))
    if held == "none":
        return held
    return f"{held} of {float(protocol.get('users_share', 1.0)):g} of the users"


def holdout_mismatch(published: dict[str, Any], candidate: dict[str, Any]) -> str | None:
    """Why the dislike-holdout metrics cannot compare these two versions (None: they can).

    Both manifests must record the same applied holdout (fraction and share of
    users held out): a published version trained with another one, or none, may
    have trained on this holdout's answers.
    """
    theirs, ours = applied_holdout(published), applied_holdout(candidate)
    if theirs == ours:
        return None
    return (
        f"left out: the published version was trained with dislike holdout {theirs!r}, the "
        f"candidate with {ours!r} (the published version may have trained on the answers)"
    )


@dataclass(frozen=True)
class Holdout:
    """One evaluation shared by every version the gate compares.

    Attributes:
      ds: the data, re-indexed so that ``catalog`` occupies indices 0..N-1, with
        the dislike holdout applied.
      catalog: str [N] item ids of the shared catalog.
      users: str [U] ids of the evaluated test users, sorted.
      judged_users: str [J] ids of the dislike holdout's judged test users, sorted.
      common_items: str [C] ids of the items every compared version knows: the
        judged answers are restricted to them.
    """

    ds: Dataset
    catalog: np.ndarray
    users: np.ndarray
    judged_users: np.ndarray
    common_items: np.ndarray

    def describe(self) -> dict[str, Any]:
        held = self.ds.dislike_holdout
        return {
            "split": "test (per-user temporal leave-last-out)",
            "users": len(self.users),
            "catalog_items": len(self.catalog),
            "protocol": "all-ranking, train/valid items masked, one catalog for all versions",
            "dislike_holdout": held.spec if held is not None else "none",
            "judged_users": len(self.judged_users),
            "judged_protocol": "like_dislike_auc and dislike_share@20 on the dislike holdout's "
            "test users (their last positive against the dislikes of their last events, "
            "none trained on), answers restricted to the items every compared version knows",
        }


def shared_holdout(
    ds: Dataset,
    item_id_lists: Sequence[np.ndarray],
    max_users: int | None,
    seed: int,
    dislike_holdout: str = "none",
    dislike_valid_share: float = 0.2,
    dislike_holdout_users: float = 1.0,
) -> Holdout:
    """Fix the users and the catalog once, for every version in ``item_id_lists``.

    Args:
      ds: the current data (split).
      item_id_lists: each compared version's item ids (``items.npz`` order).
      max_users: evaluate a seeded sample of this many test users (None = all), and
        as many judged users.
      seed: the sample's seed.
      dislike_holdout, dislike_valid_share, dislike_holdout_users: the running
        config's ``split.*`` (the candidate's training held the same events out).
    """
    from trainer.data.examples import build_eval_set, build_judged_set
    from trainer.data.split import apply_dislike_holdout
    from trainer.data.vocab import align_items
    from trainer.evaluate import sample_rows

    catalog: list[str] = []
    seen: set[str] = set()
    for ids in [*item_id_lists, ds.item_ids]:
        for x in np.asarray(ids).astype(str):
            if x not in seen:
                seen.add(x)
                catalog.append(x)
    common = set(catalog)
    for ids in item_id_lists:
        common &= set(np.asarray(ids).astype(str).tolist())
    common_items = np.asarray(sorted(common), dtype=str)
    held = apply_dislike_holdout(ds, dislike_holdout, dislike_valid_share, dislike_holdout_users)
    shared = align_items(held, np.asarray(catalog, dtype=str))
    # The evaluated users depend on the targets only, not on H or D.
    evalset = sample_rows(build_eval_set(shared, "test", 1, 1), max_users, seed)
    users = np.sort(shared.user_ids[evalset.users].astype(str))
    judged = _common_answers(build_judged_set(shared, "test", 1, 1), shared.item_ids, common_items)
    judged = sample_rows(judged, max_users, seed)
    judged_users = np.sort(shared.user_ids[judged.users].astype(str))
    return Holdout(
        ds=shared,
        catalog=shared.item_ids.astype(str),
        users=users,
        judged_users=judged_users,
        common_items=common_items,
    )


def _only(evalset: EvalSet, user_ids: np.ndarray, users: np.ndarray) -> EvalSet:
    rows = np.flatnonzero(np.isin(user_ids[evalset.users].astype(str), users))
    return evalset.subset(rows)


def _common_answers(judged: EvalSet, item_ids: np.ndarray, common: np.ndarray) -> EvalSet:
    """``judged`` with only the answers on ``common`` item ids; users left without a
    positive or a dislike answer dropped (the input and mask are untouched)."""
    from trainer.data.dataset import EvalSet as _EvalSet

    known = np.isin(np.asarray(item_ids).astype(str), common)

    def keep(ptr: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ok = known[vals]
        rows = np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))
        counts = np.bincount(rows[ok], minlength=len(ptr) - 1)
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), vals[ok]

    tp, ti = keep(judged.target_ptr, judged.target_items)
    dp, di = keep(judged.dislike_ptr, judged.dislike_items)
    out = _EvalSet(
        judged.users,
        judged.history,
        judged.dislikes,
        tp,
        ti,
        judged.mask_ptr,
        judged.mask_items,
        dp,
        di,
    )
    return out.subset(np.flatnonzero((np.diff(tp) > 0) & (np.diff(dp) > 0)))


def evaluate_on_holdout(art: str | Path, version: str, holdout: Holdout) -> dict[str, Any]:
    """The contract's metrics (docs/CONTRACT.md) of ``version`` on ``holdout`` (same users and catalog for every version).

    The version ranks the items it knows (its own index space, its own history
    length), then its top-50 lists are scored in the shared catalog. The judged
    metrics are computed in its own index space on the holdout's judged users and
    answers (the same for every version). Returns the metrics dict (``num_users``
    = the holdout's users with a target, ``num_users_judged`` = its judged users).
    """
    from common.tf_logging import import_tensorflow_quietly
    from trainer.data.examples import build_eval_set, build_judged_set
    from trainer.data.vocab import align_items
    from trainer.dislike_metrics import JUDGED_NOT_MEASURED
    from trainer.evaluate import evaluate, version_neighbors
    from trainer.metrics import ranking_metrics

    import_tensorflow_quietly()
    from trainer.exported import ExportedModel

    exported = ExportedModel(art, version)
    H, D = int(exported.manifest["history_length"]), int(exported.manifest["dislike_length"])
    ids = exported.item_ids.astype(str)
    n = len(ids)
    own = align_items(holdout.ds, ids)
    own_set = _only(build_eval_set(own, "test", H, D), own.user_ids, holdout.users)
    own_judged = _common_answers(
        _only(build_judged_set(own, "test", H, D), own.user_ids, holdout.judged_users),
        own.item_ids,
        holdout.common_items,
    )
    if len(own_judged) != len(holdout.judged_users):
        raise RuntimeError(f"{version}: judged users differ between index spaces")
    ev = evaluate(
        exported.embed,
        exported.item_emb,
        own_set,
        own.train_item_counts()[:n],
        version_neighbors(own, n),
        own_judged,
    )

    position = {x: i for i, x in enumerate(holdout.catalog)}
    to_shared = np.fromiter((position[x] for x in ids), dtype=np.int64, count=n)
    topk = np.where(ev.topk >= 0, to_shared[np.clip(ev.topk, 0, None)], -1)
    shared_set = _only(build_eval_set(holdout.ds, "test", H, D), holdout.ds.user_ids, holdout.users)
    if not np.array_equal(shared_set.users, own_set.users):  # same users, same order
        raise RuntimeError(f"{version}: holdout users differ between index spaces")
    metrics: dict[str, Any] = ranking_metrics(topk, shared_set, holdout.ds.train_item_counts())
    metrics["responsiveness@20"] = ev.metrics["responsiveness@20"]
    for key in JUDGED_NOT_MEASURED:
        metrics[key] = ev.metrics[key]
    return metrics
