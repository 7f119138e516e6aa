"""A seeded synthetic interaction generator (``synthetic[:key=value,...]``).

The world it simulates, chosen so that every part of the model has something
real to learn:

* **Items** have a power-law popularity (weight ``rank ** -zipf`` over a random
  ranking) and one of ``categories`` categories (equal-sized, random), exposed
  as ``item_features["category"]`` in 1..K (0 = unknown). Categories sit on a
  ring, so neighbouring categories are "similar".
* **Users** have an interest centre on that ring. A positive event draws its
  category around the centre (von Mises noise, concentration ``focus``; a
  share ``noise`` of positives picks a category uniformly instead) and then an
  item of that category by popularity. The centre **drifts** along the ring
  over the user's lifetime, by ``drift * pi`` radians in total (in a random
  direction per user), so recent history predicts better than old history.
* **Dislikes** are systematic, hence learnable: each user has
  ``dislike_categories`` disliked categories drawn from the broad
  neighbourhood of their interests (within a quarter ring of the centre, never
  the favourite), never consumes them positively, and a share ``dislike_rate``
  of their events are dislikes of *popular* items of those categories -- the
  items a popularity-minded or neighbourhood-minded model would show them.
* A user acts ``events_per_user`` times on average (log-normal spread, at least
  ``min_events``), on distinct items, over a random period of the
  ``span_days``-day window starting at unix time ``start``, with strictly
  increasing timestamps (whole seconds).

Everything is vectorised NumPy (no per-event Python), so a million-item
catalogue with millions of events takes seconds. The same parameters give
identical arrays.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from trainer.data.dataset import DISLIKE, POSITIVE, Dataset
from trainer.data.errors import DataError
from trainer.data.ids import id_problem
from trainer.data.split import assemble, group_starts


@dataclass(frozen=True)
class SyntheticParams:
    """Generator knobs; the SRC string's ``key=value`` pairs set them."""

    users: int = 2000
    items: int = 1000
    events_per_user: int = 30
    """Mean events (positives + dislikes) per user."""
    dislike_rate: float = 0.15
    """Expected share of events that are dislikes."""
    categories: int = 20
    seed: int = 0
    zipf: float = 1.1
    """Popularity exponent: item weight = rank ** -zipf."""
    drift: float = 0.3
    """Total interest drift over a user's lifetime, in units of pi radians on the category ring."""
    focus: float = 4.0
    """von Mises concentration of a user's categories around their centre (0 = uniform)."""
    noise: float = 0.1
    """Share of positives whose category is uniform (exploration) instead of interest-driven."""
    dislike_categories: int = 2
    """Disliked categories per user."""
    min_events: int = 5
    span_days: float = 365.0
    start: float = 1_600_000_000.0
    """Unix time where the simulated window begins (2020-09-13)."""


FIELDS = {f.name: f.type for f in dataclasses.fields(SyntheticParams)}


def parse_params(arg: str) -> SyntheticParams:
    """``key=value,...`` (may be empty) -> validated params. Unknown keys raise DataError."""
    values: dict[str, int | float] = {}
    for piece in filter(None, (p.strip() for p in arg.split(","))):
        key, eq, raw = piece.partition("=")
        key = key.strip()
        if not eq:
            raise DataError(f"synthetic: {piece!r} is not key=value; keys: {', '.join(FIELDS)}")
        if key not in FIELDS:
            raise DataError(f"synthetic: unknown key {key!r}; keys: {', '.join(FIELDS)}")
        raw = raw.strip()
        is_int = FIELDS[key] == "int"
        # ASCII only: int() and float() also read Unicode digits ('\u0663' -> 3).
        bad = (
            id_problem(raw) is not None
            if is_int
            else not (raw.isascii() and math.isfinite(_float_or_nan(raw)))
        )
        if bad:
            raise DataError(
                f"synthetic: {key}={raw!r} is not a{' non-negative integer' if is_int else ' finite number'}"
            )
        values[key] = int(raw) if is_int else float(raw)
    params = SyntheticParams(**values)  # type: ignore[arg-type]
    _validate(params)
    return params


def _float_or_nan(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        return math.nan


#: Users and items are int32 indices.
_MAX_INDEX = (1 << 31) - 1


def _validate(p: SyntheticParams) -> None:
    checks = [
        (1 <= p.users <= _MAX_INDEX, f"users must be in 1..{_MAX_INDEX}"),
        (2 <= p.items <= _MAX_INDEX, f"items must be in 2..{_MAX_INDEX}"),
        (p.events_per_user >= 1, "events_per_user must be >= 1"),
        (0.0 <= p.dislike_rate < 1.0, "dislike_rate must be in [0, 1)"),
        (1 <= p.categories <= p.items, "categories must be in 1..items"),
        (p.zipf >= 0 and p.drift >= 0 and p.focus >= 0, "zipf, drift and focus must be >= 0"),
        (0.0 <= p.noise <= 1.0, "noise must be in [0, 1]"),
        (
            0 <= p.dislike_categories < p.categories or p.dislike_rate == 0,
            "dislike_categories must be in 0..categories-1",
        ),
        (
            p.dislike_categories >= 1 or p.dislike_rate == 0,
            "dislike_rate > 0 needs dislike_categories >= 1",
        ),
        (p.min_events >= 1 and p.span_days > 0, "min_events must be >= 1 and span_days > 0"),
        (
            np.isfinite(p.start) and p.start >= 946684800,
            "start must be a unix time after 2000-01-01",
        ),
    ]
    for ok, why in checks:
        if not ok:
            raise DataError(f"synthetic: {why}")


def _segment_sampler(weights: np.ndarray, groups: np.ndarray, num_groups: int):
    """A sampler of one member of group g with probability proportional to its weight."""
    order = np.argsort(groups, kind="stable")
    g = groups[order]
    w = weights[order]
    cum = np.cumsum(w)
    starts = np.searchsorted(g, np.arange(num_groups))
    ends = np.searchsorted(g, np.arange(num_groups), side="right")
    base = np.where(starts > 0, cum[np.maximum(starts - 1, 0)], 0.0)
    total = cum[ends - 1] - base

    def sample(group: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        target = base[group] + rng.random(len(group)) * total[group]
        # Sorted queries walk ``cum`` once instead of jumping around it.
        by_target = np.argsort(target)
        at = np.empty(len(target), dtype=np.int64)
        at[by_target] = np.searchsorted(cum, target[by_target], side="right")
        return order[np.clip(at, starts[group], ends[group] - 1)]

    return sample


def _first_k_per_user(
    users: np.ndarray, keep: np.ndarray, k: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Indices of a random subset of the ``keep`` rows: at most ``k[u]`` per user."""
    idx = np.flatnonzero(keep)
    order = idx[np.lexsort((rng.random(len(idx)), users[idx]))]
    u = users[order]
    rank = np.arange(len(order)) - group_starts(u)
    return np.sort(order[rank < k[u]])


def generate(params: SyntheticParams, source: str | None = None) -> Dataset:
    """Generate the data set described in the module docstring.

    Returns:
      a timestamped Dataset (temporal leave-last-out split) with
      ``item_features["category"]``; user ids ``u<n>``, item ids ``i<n>``.
    """
    p = params
    rng = np.random.default_rng(p.seed)
    U, N, K = p.users, p.items, p.categories
    two_pi = 2.0 * np.pi

    # Items: popularity by a random rank, equal-sized random categories.
    pop = (1.0 + rng.permutation(N)) ** -p.zipf
    category = rng.permutation(np.arange(N) % K)
    sample_item = _segment_sampler(pop, category, K)

    # Users: centre, drift direction, disliked categories, event counts.
    centre = rng.random(U) * two_pi
    direction = rng.choice([-1.0, 1.0], U)
    home = np.rint(centre / two_pi * K).astype(np.int64) % K
    reach = max(1, K // 4)
    offsets = np.concatenate([np.arange(1, reach + 1), -np.arange(1, reach + 1)])
    m = min(p.dislike_categories, len(offsets), K - 1)
    pick = np.argsort(rng.random((U, len(offsets))), axis=1)[:, :m]
    disliked = (home[:, None] + offsets[pick]) % K  # [U, m]
    is_disliked = np.zeros((U, K), dtype=bool)
    if m:
        is_disliked[np.arange(U)[:, None], disliked] = True
    spread = rng.lognormal(-0.125, 0.5, U)  # mean 1
    n_events = np.clip(
        np.rint(p.events_per_user * spread), p.min_events, 20 * p.events_per_user
    ).astype(np.int64)
    n_dis = rng.binomial(n_events, p.dislike_rate) if m else np.zeros(U, np.int64)
    n_pos = n_events - n_dis

    # Candidates, oversampled so that dropping repeated items still leaves enough.
    def candidates(counts: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
        c = np.ceil(counts * factor).astype(np.int64) + 2 * (counts > 0)
        users = np.repeat(np.arange(U), c)
        return users, rng.random(len(users))  # (user, relative time s in [0, 1))

    pu, ps = candidates(n_pos, 1.6)
    angle = (
        centre[pu]
        + direction[pu] * p.drift * np.pi * ps
        + rng.vonmises(0.0, max(p.focus, 1e-9), len(pu))
    )
    explore = rng.random(len(pu)) < p.noise
    angle[explore] = rng.random(int(explore.sum())) * two_pi
    pcat = np.rint(angle / two_pi * K).astype(np.int64) % K
    for _ in range(m + 1):  # step off disliked categories (never liked)
        hit = is_disliked[pu, pcat]
        if not hit.any():
            break
        pcat[hit] = (pcat[hit] + np.where(rng.random(int(hit.sum())) < 0.5, 1, -1)) % K
    still = is_disliked[pu, pcat]
    pitem = sample_item(pcat, rng)

    du, dts = candidates(n_dis, 2.0)
    dcat = disliked[du, rng.integers(0, max(m, 1), len(du))] if m else np.zeros(0, np.int64)
    ditem = sample_item(dcat, rng)

    users = np.concatenate([pu, du])
    items = np.concatenate([pitem, ditem])
    s = np.concatenate([ps, dts])
    labels = np.concatenate(
        [np.full(len(pu), POSITIVE, np.int8), np.full(len(du), DISLIKE, np.int8)]
    )
    ok = np.concatenate([~still, np.ones(len(du), bool)])
    # Distinct items per user: keep one occurrence of each (user, item).
    _, first = np.unique(users * N + items, return_index=True)
    distinct = np.zeros(len(users), bool)
    distinct[first] = True
    target = np.stack([n_pos, n_dis], axis=1)
    keep_pos = _first_k_per_user(users, distinct & ok & (labels == POSITIVE), target[:, 0], rng)
    keep_dis = _first_k_per_user(users, distinct & ok & (labels == DISLIKE), target[:, 1], rng)
    keep = np.concatenate([keep_pos, keep_dis])
    users, items, s, labels = users[keep], items[keep], s[keep], labels[keep]

    # Time: each user is active over a random part of the window; strictly increasing seconds.
    window = p.span_days * 86400.0
    begin = p.start + rng.random(U) * 0.5 * window
    length = (0.1 + 0.4 * rng.random(U)) * window
    ts = np.floor(begin[users] + s * length[users]).astype(np.int64)
    order = np.lexsort((ts, users))
    users, items, labels, ts = users[order], items[order], labels[order], ts[order]
    rank = np.arange(len(users)) - group_starts(users)
    # ts - rank non-decreasing within a user <=> ts strictly increasing.
    shifted = ts - rank + users.astype(np.int64) * 10**11
    ts = np.maximum.accumulate(shifted) - users.astype(np.int64) * 10**11 + rank

    ds = assemble(
        source=source or "synthetic",
        kind="synthetic",
        user_raw=users,
        item_raw=items,
        labels=labels,
        ts=ts.astype(np.float64),
        user_vocab=np.char.add("u", np.arange(U).astype(str)),
        item_vocab=np.char.add("i", np.arange(N).astype(str)),
    )
    ds.item_features["category"] = (category + 1).astype(np.int32)
    ds.item_feature_sizes["category"] = K + 1
    return ds
