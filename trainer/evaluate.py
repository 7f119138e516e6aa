"""All-ranking evaluation of a user-embedding function against item embeddings.

Shared by ``twotower train`` (the in-memory model) and ``twotower evaluate``
(an exported SavedModel), so both report the same numbers for the same version.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainer.data.dataset import DISLIKE, POSITIVE, TRAIN, Dataset, EvalSet
from trainer.data.examples import capped_users
from trainer.metrics import popular_topk, ranking_metrics, responsiveness, topk_all_ranking
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

    def keep(ptr: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ok = vals < num_items
        rows = np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))
        counts = np.bincount(rows[ok], minlength=len(ptr) - 1)
        return np.concatenate([[0], np.cumsum(counts)]).astype(ptr.dtype), vals[ok]

    mp, mi = keep(evalset.mask_ptr, evalset.mask_items)
    dp, di = keep(evalset.dislike_ptr, evalset.dislike_items)
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


def evaluate(
    embed: EmbedFn,
    item_emb: np.ndarray,
    evalset: EvalSet,
    item_counts: np.ndarray,
    neighbors: np.ndarray | None,
) -> Evaluation:
    """SPEC metrics of ``embed`` (tokens -> user vectors) ranked against ``item_emb`` [N, d].

    The score is the inner product of what ``embed`` and ``item_emb`` give: pass
    normalised vectors for cosine.
    """
    evalset = restrict_to_catalog(evalset, item_emb.shape[0])
    users = embed(evalset.history, evalset.dislikes)
    topk = topk_all_ranking(users, item_emb, evalset, k=TOPK)
    metrics = ranking_metrics(topk, evalset, item_counts)
    if neighbors is not None:
        metrics["responsiveness@20"] = responsiveness(
            embed, item_emb, evalset, topk, neighbors, k=20
        )
    return Evaluation(metrics=metrics, topk=topk)


def popular_baseline(evalset: EvalSet, item_counts: np.ndarray) -> dict[str, Any]:
    """The same metrics for a most-popular ranking, same split and masking."""
    evalset = restrict_to_catalog(evalset, len(item_counts))
    topk = popular_topk(item_counts, evalset, k=TOPK)
    metrics = ranking_metrics(topk, evalset, item_counts)
    # A popularity ranking ignores the dislike input: by definition it does not respond.
    metrics["responsiveness@20"] = 0.0
    return metrics


def eval_notes(
    ds: Dataset, evalset: EvalSet, metrics: dict[str, Any], history_length: int, split: str
) -> dict[str, Any]:
    """What the metrics were measured on: the manifest's ``eval`` (and ``evaluate``'s JSON).

    ``dislike_metrics`` says whether ``dislike_rate@20`` and ``responsiveness@20``
    mean anything. They stay numeric for every source, but for a source without
    dislikes (lightgcn) they are 0.0 by construction and the note says "not
    applicable". ``input`` says what the user tower was fed; for untimed sources
    ``users_capped`` counts the evaluated users with more train items than the
    input width H (their input is a seeded sample of H of them).
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
    }
