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
* **Dislikes** are systematic, hence learnable. A share ``dislike_rate`` of a
  user's events are dislikes, in one of two worlds:

  - ``aversions=0`` (the default): each user has ``dislike_categories``
    disliked categories drawn from the broad neighbourhood of their interests
    (within a quarter ring of the centre, never the favourite), never consumes
    them positively, and dislikes *popular* items of those categories -- the
    items a popularity-minded or neighbourhood-minded model would show them.
  - ``aversions=A >= 1`` (**known aversions**): every item also belongs to one
    of ``clusters`` *latent* clusters (equal-sized, random, independent of the
    category and not exposed as a feature), and each user is averse to ``A``
    of them, drawn without replacement with weight ``(c + 1) ** -aversion_skew``
    (cluster 0 is the most widely disliked). Positives are drawn as above but
    never from an averse cluster (except a share ``aversion_noise`` that ignores
    the aversions). A dislike is an *exposure* to an item of an averse cluster:
    with probability ``aversion_popular`` a catalogue-wide popular item of that
    cluster (the item everyone is shown), otherwise an item of that cluster in
    the category the user is currently interested in, by popularity; a share
    ``aversion_noise`` of dislikes is unexplained (an item of their current
    category, any cluster). ``dislike_categories`` is unused. The same popular
    item is liked by most users near its category and disliked by the averse
    ones among them: the dislikes are the direct evidence that sets them apart.
* **Late items** (cold start): a share ``late_items`` of the catalogue (random
  items) is added late, at the start of the last ``late_window`` of the
  ``span_days`` window. Any event the simulation drew on them goes to another
  item of the same category (and cluster), by popularity; then each takes 1..``late_events``
  (uniform) events of that last part: a share r ~ Beta(1/2, 1/2) of them (an
  early audience is rarely mixed) are dislikes by users averse to its cluster
  (or category), the rest positives of its category by users who are not.
  Some late items thus have a few likes, some a few dislikes only.
* A user acts ``events_per_user`` times on average (log-normal spread, at least
  ``min_events``), on distinct items, over a random period of the
  ``span_days``-day window starting at unix time ``start``, with strictly
  increasing timestamps (whole seconds).

:func:`generate_with_truth` also returns the world's :class:`GroundTruth` (who
is averse to what, each item's cluster, the late items), and the helpers of
:mod:`trainer.data.synthetic_truth` list the benchmark cases built from it. With ``aversions=0`` and
``late_items=0`` (the defaults) the data are exactly those of the generator
before these options existed.

Everything is vectorised NumPy (no per-event Python), so a million-item
catalogue with millions of events takes seconds. The same parameters give
identical arrays.

The knobs and their checks are :mod:`trainer.data.synthetic_params`, the late
items' rewrite :mod:`trainer.data.synthetic_late`, the weighted draws
:mod:`trainer.data.sampling`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from trainer.data.dataset import DISLIKE, POSITIVE, Dataset
from trainer.data.sampling import first_k_per_user, keyed_sampler, segment_sampler
from trainer.data.split import assemble, group_starts
from trainer.data.synthetic_late import late_items
from trainer.data.synthetic_params import SyntheticParams
from trainer.data.synthetic_truth import GroundTruth

__all__ = ["generate", "generate_with_truth"]


def generate(params: SyntheticParams, source: str | None = None) -> Dataset:
    """Generate the data set described in the module docstring.

    Returns:
      a timestamped Dataset (temporal leave-last-out split) with
      ``item_features["category"]``; user ids ``u<n>``, item ids ``i<n>``.
    """
    return generate_with_truth(params, source)[0]


def generate_with_truth(
    params: SyntheticParams, source: str | None = None
) -> tuple[Dataset, GroundTruth]:
    """:func:`generate`, and the world's :class:`GroundTruth`."""
    p = params
    rng = np.random.default_rng(p.seed)
    U, N, K = p.users, p.items, p.categories
    latent = p.aversions > 0
    w = _draw_world(p, rng)
    positives = _positives(p, w, rng)
    dislikes = _dislikes(p, w, rng)
    users, items, s, labels = _distinct(w, positives, dislikes, rng)
    users, items, labels, ts = _timestamps(p, users, items, labels, s, rng)

    late = np.zeros(0, np.int64)
    late_from = math.inf
    if p.late_items > 0:
        late = np.sort(rng.choice(N, min(max(1, round(p.late_items * N)), N - 1), replace=False))
        window = p.span_days * 86400.0
        late_from = p.start + (1.0 - p.late_window) * window
        world = (w.pop, w.category, w.cluster, w.is_averse)
        items, kept = late_items(
            users, items, labels, ts, late, late_from, p.late_events, world, rng
        )
        users, items, labels, ts = users[kept], items[kept], labels[kept], ts[kept]

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
    ds.item_features["category"] = (w.category + 1).astype(np.int32)
    ds.item_feature_sizes["category"] = K + 1
    truth = GroundTruth(
        cluster_kind="latent" if latent else "category",
        num_clusters=w.num_clusters,
        item_cluster=w.cluster.astype(np.int32),
        aversions=w.averse.astype(np.int32),
        late_items=late.astype(np.int32),
        late_from=float(late_from),
    )
    return ds, truth


@dataclass(frozen=True, eq=False)
class _World:
    """The drawn items and users (module docstring)."""

    pop: np.ndarray  # [N] popularity weight
    category: np.ndarray  # [N] in 0..K-1
    cluster: np.ndarray  # [N] latent cluster (aversions >= 1), else the category
    num_clusters: int  # C
    sample_item: Callable[[np.ndarray, np.random.Generator], np.ndarray]  # an item of a category
    centre: np.ndarray  # [U] interest centre on the category ring
    direction: np.ndarray  # [U] drift direction, +-1
    disliked: np.ndarray  # [U, m] disliked categories (aversions=0; m = 0 otherwise)
    averse: np.ndarray  # [U, A] averse clusters (aversions=0: the disliked categories)
    is_disliked: np.ndarray  # bool [U, K]
    is_averse: np.ndarray  # bool [U, C]
    n_pos: np.ndarray  # [U] positives to draw
    n_dis: np.ndarray  # [U] dislikes to draw


def _draw_world(p: SyntheticParams, rng: np.random.Generator) -> _World:
    """Items, then users: the first draws of ``rng``."""
    U, N, K = p.users, p.items, p.categories
    two_pi = 2.0 * np.pi
    latent = p.aversions > 0

    # Items: popularity by a random rank, equal-sized random categories (and latent clusters).
    pop = (1.0 + rng.permutation(N)) ** -p.zipf
    category = rng.permutation(np.arange(N) % K)
    sample_item = segment_sampler(pop, category, K)
    C = p.clusters if latent else K
    cluster = rng.permutation(np.arange(N) % C) if latent else category

    # Users: centre, drift direction, disliked categories or averse clusters, event counts.
    centre = rng.random(U) * two_pi
    direction = rng.choice([-1.0, 1.0], U)
    home = np.rint(centre / two_pi * K).astype(np.int64) % K
    if latent:
        m = 0
        disliked = np.zeros((U, 0), np.int64)
        # Weighted draw without replacement (Efraimidis-Spirakis): top A of log(u) / w.
        weight = (1.0 + np.arange(C)) ** -p.aversion_skew
        keys = np.log(np.maximum(rng.random((U, C)), 1e-300)) / weight
        averse = np.argsort(-keys, axis=1)[:, : p.aversions]  # [U, A]
    else:
        reach = max(1, K // 4)
        offsets = np.concatenate([np.arange(1, reach + 1), -np.arange(1, reach + 1)])
        m = min(p.dislike_categories, len(offsets), K - 1)
        pick = np.argsort(rng.random((U, len(offsets))), axis=1)[:, :m]
        disliked = (home[:, None] + offsets[pick]) % K  # [U, m]
        averse = disliked
    is_disliked = np.zeros((U, K), dtype=bool)
    if m:
        is_disliked[np.arange(U)[:, None], disliked] = True
    is_averse = np.zeros((U, C), dtype=bool)
    is_averse[np.arange(U)[:, None], averse] = True
    spread = rng.lognormal(-0.125, 0.5, U)  # mean 1
    n_events = np.clip(
        np.rint(p.events_per_user * spread), p.min_events, 20 * p.events_per_user
    ).astype(np.int64)
    n_dis = rng.binomial(n_events, p.dislike_rate) if m or latent else np.zeros(U, np.int64)
    return _World(
        pop=pop,
        category=category,
        cluster=cluster,
        num_clusters=C,
        sample_item=sample_item,
        centre=centre,
        direction=direction,
        disliked=disliked,
        averse=averse,
        is_disliked=is_disliked,
        is_averse=is_averse,
        n_pos=n_events - n_dis,
        n_dis=n_dis,
    )


def _candidates(
    counts: np.ndarray, factor: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(user, relative time s in [0, 1)) of candidate events, oversampled so that dropping
    repeated items still leaves ``counts[u]`` for user u."""
    c = np.ceil(counts * factor).astype(np.int64) + 2 * (counts > 0)
    users = np.repeat(np.arange(len(counts)), c)
    return users, rng.random(len(users))


def _positives(
    p: SyntheticParams, w: _World, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Candidate positives: (user, relative time, item, whether it is one the user avoids)."""
    K = p.categories
    two_pi = 2.0 * np.pi
    pu, ps = _candidates(w.n_pos, 1.6, rng)
    angle = (
        w.centre[pu]
        + w.direction[pu] * p.drift * np.pi * ps
        + rng.vonmises(0.0, max(p.focus, 1e-9), len(pu))
    )
    explore = rng.random(len(pu)) < p.noise
    angle[explore] = rng.random(int(explore.sum())) * two_pi
    pcat = np.rint(angle / two_pi * K).astype(np.int64) % K
    for _ in range(w.disliked.shape[1] + 1):  # step off disliked categories (never liked)
        hit = w.is_disliked[pu, pcat]
        if not hit.any():
            break
        pcat[hit] = (pcat[hit] + np.where(rng.random(int(hit.sum())) < 0.5, 1, -1)) % K
    still = w.is_disliked[pu, pcat]
    pitem = w.sample_item(pcat, rng)
    if (
        p.aversions > 0
    ):  # redraw positives off the averse clusters, but for a share that ignores them
        free = rng.random(len(pu)) < p.aversion_noise
        for _ in range(8):
            hit = w.is_averse[pu, w.cluster[pitem]] & ~free
            if not hit.any():
                break
            pitem[hit] = w.sample_item(pcat[hit], rng)
        still = w.is_averse[pu, w.cluster[pitem]] & ~free
    return pu, ps, pitem, still


def _dislikes(
    p: SyntheticParams, w: _World, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate dislikes: (user, relative time, item)."""
    du, dts = _candidates(w.n_dis, 2.0, rng)
    if p.aversions > 0:
        ditem = _exposures(p, w, du, dts, rng)
        stray = rng.random(len(du)) < p.aversion_noise  # unexplained: near interests, any cluster
        near = _interest_category(p, du[stray], dts[stray], w.centre, w.direction, rng)
        ditem[stray] = w.sample_item(near, rng)
    else:
        m = w.disliked.shape[1]
        dcat = w.disliked[du, rng.integers(0, max(m, 1), len(du))] if m else np.zeros(0, np.int64)
        ditem = w.sample_item(dcat, rng)
    return du, dts, ditem


def _distinct(
    w: _World,
    positives: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    dislikes: tuple[np.ndarray, np.ndarray, np.ndarray],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(user, item, relative time, label) of the events kept: distinct items per user, at
    most each user's positive and dislike counts."""
    pu, ps, pitem, still = positives
    du, dts, ditem = dislikes
    N = len(w.pop)
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
    target = np.stack([w.n_pos, w.n_dis], axis=1)
    keep_pos = first_k_per_user(users, distinct & ok & (labels == POSITIVE), target[:, 0], rng)
    keep_dis = first_k_per_user(users, distinct & ok & (labels == DISLIKE), target[:, 1], rng)
    keep = np.concatenate([keep_pos, keep_dis])
    return users[keep], items[keep], s[keep], labels[keep]


def _timestamps(
    p: SyntheticParams,
    users: np.ndarray,
    items: np.ndarray,
    labels: np.ndarray,
    s: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(user, item, label, ts) in (user, time) order: each user is active over a random
    part of the window, with strictly increasing whole seconds."""
    U = p.users
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
    return users, items, labels, ts


def _interest_category(
    p: SyntheticParams,
    users: np.ndarray,
    s: np.ndarray,
    centre: np.ndarray,
    direction: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """int64 [n]: a category drawn around each user's (drifted) interest centre at relative time s."""
    angle = (
        centre[users]
        + direction[users] * p.drift * np.pi * s
        + rng.vonmises(0.0, max(p.focus, 1e-9), len(users))
    )
    return np.rint(angle / (2.0 * np.pi) * p.categories).astype(np.int64) % p.categories


def _exposures(
    p: SyntheticParams, w: _World, users: np.ndarray, s: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """int64 [n]: the averse item each dislike event was exposed to (see the module docstring)."""
    C = p.clusters
    a = w.averse[users, rng.integers(0, p.aversions, len(users))]
    seg = _interest_category(p, users, s, w.centre, w.direction, rng) * C + a
    sample_seg, has_seg = keyed_sampler(w.pop, w.category.astype(np.int64) * C + w.cluster)
    popular = (rng.random(len(users)) < p.aversion_popular) | ~has_seg(seg)
    out = np.empty(len(users), np.int64)
    out[popular] = segment_sampler(w.pop, w.cluster, C)(a[popular], rng)
    out[~popular] = sample_seg(seg[~popular], rng)
    return out
