"""All-ranking evaluation of a user-embedding function against item embeddings.

Shared by ``twotower train`` (the in-memory model) and ``twotower evaluate``
(an exported SavedModel), so both report the same numbers for the same version.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainer.config import SplitConfig
from trainer.data.dataset import DISLIKE, POSITIVE, TRAIN, Dataset, EvalSet
from trainer.data.examples import capped_users
from trainer.dislike_metrics import (
    JUDGED_NOT_MEASURED,
    csr_within_catalog,
    embedding_scores,
    judged_in_catalog,
    judged_metrics,
    responsiveness,
)
from trainer.metrics import popular_topk, ranking_metrics, topk_all_ranking
from trainer.reference import cooccurrence_neighbors

EmbedFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

TOPK = 50


@dataclass
class Evaluation:
    metrics: dict[str, Any]
    topk: np.ndarray


def sample_rows(evalset: EvalSet, max_users: int | None, seed: int) -> EvalSet:
    """A seeded sample of ``max_users`` users (all when None or fewer)."""
    if max_users is None or len(evalset) <= max_users:
        return evalset
    rows = np.sort(np.random.default_rng(seed).choice(len(evalset), max_users, replace=False))
    return evalset.subset(rows)


def restrict_to_catalog(evalset: EvalSet, num_items: int) -> EvalSet:
    """Drop mask/dislike entries for items outside a catalog of ``num_items``.

    Targets outside the catalog are kept: they can never be retrieved, and
    counting them as misses is the honest figure.
    """
    if (evalset.mask_items < num_items).all() and (evalset.dislike_items < num_items).all():
        return evalset
    mp, mi = csr_within_catalog(evalset.mask_ptr, evalset.mask_items, num_items)
    dp, di = csr_within_catalog(evalset.dislike_ptr, evalset.dislike_items, num_items)
    return EvalSet(
        evalset.users,
        evalset.history,
        evalset.dislikes,
        evalset.target_ptr,
        evalset.target_items,
        mp,
        mi,
        dp,
        di,
    )


def reference_neighbors(ds: Dataset, num_items: int) -> np.ndarray:
    """The fixed reference space for responsiveness: co-occurrence neighbours on train positives."""
    sel = (ds.split == TRAIN) & (ds.labels == POSITIVE)
    return cooccurrence_neighbors(ds.users[sel], ds.items[sel], num_items)


def version_neighbors(ds: Dataset, num_items: int) -> np.ndarray:
    """:func:`reference_neighbors` for a version that knows the first ``num_items`` items of
    ``ds`` (aligned to it): rows and neighbours beyond them dropped (-1)."""
    neighbors = reference_neighbors(ds, ds.num_items)[:num_items]
    return np.where(neighbors >= num_items, -1, neighbors)


def version_dislike_holdout(manifest: dict[str, Any]) -> tuple[str, float, float]:
    """``split.dislike_holdout``, ``split.dislike_valid_share`` and
    ``split.dislike_holdout_users`` of the config a version was trained with.

    A version from before the dislike holdout existed trained on every event
    leave-last-out allows: ``"none"``, so its figures are reproduced as they were
    and no dislike-holdout figure is claimed for it.
    """
    split = (manifest.get("config") or {}).get("split") or {}
    fields = SplitConfig.model_fields
    return (
        str(split.get("dislike_holdout", "none")),
        float(split.get("dislike_valid_share", fields["dislike_valid_share"].default)),
        float(split.get("dislike_holdout_users", fields["dislike_holdout_users"].default)),
    )


def evaluate(
    embed: EmbedFn,
    item_emb: np.ndarray,
    evalset: EvalSet,
    item_counts: np.ndarray,
    neighbors: np.ndarray | None,
    judged: EvalSet | None = None,
) -> Evaluation:
    """The contract's metrics (docs/CONTRACT.md) of ``embed`` (tokens -> user vectors) ranked against ``item_emb`` [N, d].

    The score is the inner product of what ``embed`` and ``item_emb`` give: pass
    normalised vectors for cosine. ``judged`` (the dislike holdout's users,
    :func:`trainer.data.examples.build_judged_set`) gives ``like_dislike_auc`` and
    ``dislike_share@20`` with the same user vectors and scores; without it they
    are reported as not measured (0.5, 0.0, ``num_users_judged`` 0).
    """
    evalset = restrict_to_catalog(evalset, item_emb.shape[0])
    users = embed(evalset.history, evalset.dislikes)
    topk = topk_all_ranking(users, item_emb, evalset, k=TOPK)
    metrics = ranking_metrics(topk, evalset, item_counts)
    if neighbors is not None:
        metrics["responsiveness@20"] = responsiveness(
            embed, item_emb, evalset, topk, neighbors, k=20
        )
    metrics.update(_judged(embed, item_emb, judged))
    return Evaluation(metrics=metrics, topk=topk)


def _judged(embed: EmbedFn, item_emb: np.ndarray, judged: EvalSet | None) -> dict[str, Any]:
    if judged is None:
        return dict(JUDGED_NOT_MEASURED)
    judged = judged_in_catalog(judged, item_emb.shape[0])
    if not len(judged):
        return dict(JUDGED_NOT_MEASURED)
    users = embed(judged.history, judged.dislikes)
    topk = topk_all_ranking(users, item_emb, judged, k=20)
    return judged_metrics(topk, embedding_scores(users, item_emb), judged)


def popular_baseline(
    evalset: EvalSet, item_counts: np.ndarray, judged: EvalSet | None = None
) -> dict[str, Any]:
    """The same metrics for a most-popular ranking, same split and masking; on
    ``judged`` its score is the item's train popularity (ties: the AUC counts a half)."""
    evalset = restrict_to_catalog(evalset, len(item_counts))
    topk = popular_topk(item_counts, evalset, k=TOPK)
    metrics = ranking_metrics(topk, evalset, item_counts)
    # A popularity ranking ignores the dislike input: by definition it does not respond.
    metrics["responsiveness@20"] = 0.0
    metrics.update(popular_judged(item_counts, judged))
    return metrics


def popular_judged(item_counts: np.ndarray, judged: EvalSet | None) -> dict[str, Any]:
    """``like_dislike_auc`` and ``dislike_share@20`` of the most-popular ranking."""
    if judged is None:
        return dict(JUDGED_NOT_MEASURED)
    judged = judged_in_catalog(judged, len(item_counts))
    if not len(judged):
        return dict(JUDGED_NOT_MEASURED)
    counts = np.asarray(item_counts, dtype=np.float64)
    topk = popular_topk(item_counts, judged, k=20)
    return judged_metrics(topk, lambda rows, items: counts[items], judged)


#: Which protocol each metric is measured with (the manifest's ``eval.protocols``).
LEAVE_LAST_OUT_METRICS = (
    *(f"{name}@{k}" for name in ("recall", "ndcg", "hit_rate") for k in (10, 20, 50)),
    "coverage@20",
    "longtail_recall@20",
    "dislike_rate@20",
    "responsiveness@20",
)
DISLIKE_HOLDOUT_METRICS = ("like_dislike_auc", "dislike_share@20")


def dislike_protocol(
    ds: Dataset, metrics: dict[str, Any], split: str, spec: str | None = None
) -> dict[str, Any]:
    """How ``like_dislike_auc`` and ``dislike_share@20`` were measured (``eval.dislike_protocol``).

    ``holdout`` is the applied ``split.dislike_holdout`` (``"none"`` when it did
    not apply: the gate compares only versions whose holdouts match); ``status``
    says whether the figures mean anything and on how many users.
    """
    held = ds.dislike_holdout
    users = int(metrics.get("num_users_judged", 0))
    out: dict[str, Any] = {"holdout": held.spec if held is not None else "none", "users": users}
    if held is None:
        if not ds.timestamped:
            why = "the source has no time order"
        elif not (ds.labels == DISLIKE).any():
            why = "the source has no dislikes"
        else:
            why = f"split.dislike_holdout is {spec or 'none'!r}"
        out["status"] = f"not applicable: {why}"
        return out
    out.update(
        users_share=held.users_share,
        valid_share=held.valid_share,
        answers=(
            f"the dislikes among the last {held.fraction:g} of the events (by time) of "
            f"{held.users_share:g} of the users (a stable hash of the user id) are held out "
            f"of training, as rows and as inputs; the same hash makes {held.valid_share:g} "
            "of them validation users, the rest test users; a user's answers are the "
            "split's leave-last-out positive and their held-out dislikes (with the split's "
            "own leave-last-out dislikes); input: every positive and every other dislike "
            "before the positive; masked: the items of the other known events"
        ),
        like_dislike_auc="averaged over users: per user, the share of (held-out positive, "
        "held-out dislike) pairs scored positive above dislike (ties 1/2), by the ranking's "
        "score over the full catalog (masked or not); 0.5 = cannot tell likes from dislikes",
        **{
            "dislike_share@20": "pooled over users: held-out dislikes in the top 20 / "
            "(held-out dislikes + held-out positives in the top 20); the input's items "
            "masked; lower is better"
        },
        judged_in_top20=int(metrics.get("num_judged_in_top20", 0)),
    )
    if users:
        out["status"] = (
            f"measured on {users} {split} users with a held-out positive and a held-out dislike"
        )
    else:
        out["status"] = f"not measured: no {split} user of the holdout has both kinds of answer"
    return out


def eval_notes(
    ds: Dataset,
    evalset: EvalSet,
    metrics: dict[str, Any],
    history_length: int,
    split: str,
    holdout_spec: str | None = None,
) -> dict[str, Any]:
    """What the metrics were measured on: the manifest's ``eval`` (and ``evaluate``'s JSON).

    ``dislike_metrics`` says whether ``dislike_rate@20`` and ``responsiveness@20``
    mean anything. They stay numeric for every source, but for a source without
    dislikes (lightgcn) they are 0.0 by construction and the note says "not
    applicable". ``input`` says what the user tower was fed; for untimed sources
    ``users_capped`` counts the evaluated users with more train items than the
    input width H (their input is a seeded sample of H of them).

    ``dislike_protocol`` (:func:`dislike_protocol`) and ``protocols`` (which
    metrics each protocol measured, on how many users) cover the dislike holdout.
    """
    if not (ds.labels == DISLIKE).any():
        dislike_note = "not applicable: the source has no dislikes"
    elif int(metrics.get("num_users_with_dislikes", 0)) == 0:
        dislike_note = f"not measured: no evaluated user has a held-out dislike in {split}"
    else:
        dislike_note = (
            f"measured on {int(metrics['num_users_with_dislikes'])} users with held-out dislikes"
        )
    inputs: dict[str, Any] = {"history_length": int(history_length)}
    if ds.timestamped:
        inputs["history"] = "the user's most recent positives before the target, up to H"
    else:
        inputs["history"] = "every train item of the user, up to H (a seeded sample above H)"
        inputs["users_capped"] = capped_users(ds, evalset, history_length)
    return {
        "split": split,
        "users": len(evalset),
        "protocol": "all-ranking; masked: the items of the user's train (test: and valid) "
        "events, dislikes included; held-out dislikes stay rankable",
        "input": inputs,
        "dislike_metrics": dislike_note,
        "dislike_protocol": dislike_protocol(ds, metrics, split, holdout_spec),
        "protocols": {
            "leave_last_out": {
                "what": "each user's last positive is the test target, the one before it "
                "the validation target",
                "metrics": list(LEAVE_LAST_OUT_METRICS),
                "users": int(metrics.get("num_users", 0)),
                "users_with_dislikes": int(metrics.get("num_users_with_dislikes", 0)),
            },
            "dislike_holdout": {
                "what": "each user's held-out positive against their held-out dislikes, "
                "none of them trained on (dislike_protocol)",
                "metrics": list(DISLIKE_HOLDOUT_METRICS),
                "users": int(metrics.get("num_users_judged", 0)),
            },
        },
    }
