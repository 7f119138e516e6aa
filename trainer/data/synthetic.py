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
is averse to what, each item's cluster, the late items), and the helpers below
list the benchmark cases built from it. With ``aversions=0`` and
``late_items=0`` (the defaults) the data are exactly those of the generator
before these options existed.

Everything is vectorised NumPy (no per-event Python), so a million-item
catalogue with millions of events takes seconds. The same parameters give
identical arrays.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass

import numpy as np

from trainer.data.dataset import DISLIKE, POSITIVE, TRAIN, Dataset
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
    aversions: int = 0
    """Averse latent clusters per user; 0 = the disliked-categories world (``dislike_categories``)."""
    clusters: int = 10
    """Latent item clusters (with ``aversions >= 1``)."""
    aversion_skew: float = 1.0
    """Cluster c is drawn as an aversion with weight (c + 1) ** -aversion_skew (0 = uniform)."""
    aversion_popular: float = 0.3
    """Share of aversion dislikes that are catalogue-wide popular items of the averse cluster."""
    aversion_noise: float = 0.05
    """Share of dislikes unexplained by the aversions, and of positives that ignore them."""
    late_items: float = 0.0
    """Share of the catalogue added late (cold-start items)."""
    late_window: float = 0.3
    """Late items only have events in this last share of the ``span_days`` window."""
    late_events: int = 5
    """At most this many events per late item."""


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
            near = difflib.get_close_matches(key, FIELDS, n=1, cutoff=0.6)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise DataError(f"synthetic: unknown key {key!r}{hint}; keys: {', '.join(FIELDS)}")
        if key in values:
            raise DataError(f"synthetic: {key} is given twice; give each key once")
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
            0 <= p.dislike_categories < p.categories or p.dislike_rate == 0 or p.aversions,
            "dislike_categories must be in 0..categories-1",
        ),
        (
            p.dislike_categories >= 1 or p.dislike_rate == 0 or p.aversions,
            "dislike_rate > 0 needs dislike_categories >= 1 (or aversions >= 1)",
        ),
        (p.aversions == 0 or 2 <= p.clusters <= p.items, "clusters must be in 2..items"),
        (
            p.aversions < p.clusters,
            "aversions must be in 0..clusters-1 (a user needs a cluster they like)",
        ),
        (p.aversion_skew >= 0, "aversion_skew must be >= 0"),
        (0.0 <= p.aversion_popular <= 1.0, "aversion_popular must be in [0, 1]"),
        (0.0 <= p.aversion_noise <= 1.0, "aversion_noise must be in [0, 1]"),
        (0.0 <= p.late_items < 1.0, "late_items must be in [0, 1)"),
        (0.0 < p.late_window <= 1.0, "late_window must be in (0, 1]"),
        (p.late_events >= 1, "late_events must be >= 1"),
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


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """What the generator knows about the world behind a synthetic Dataset.

    Users and items are the Dataset's indices (user ``u<n>`` is index n, item
    ``i<n>`` index n).

    Attributes:
      cluster_kind: ``"latent"`` (``aversions >= 1``: the latent clusters, not an
        item feature) or ``"category"`` (``aversions=0``: the clusters are the
        categories, ``item_features["category"] - 1``, and a user's aversions are
        their disliked categories).
      num_clusters: C.
      item_cluster: int32 [N], each item's cluster in 0..C-1.
      aversions: int32 [U, A], each user's averse clusters (A may be 0).
      late_items: int32 [n], sorted indices of the items added late (empty
        without ``late_items``).
      late_from: unix time from which late items have events (inf without them).
    """

    cluster_kind: str
    num_clusters: int
    item_cluster: np.ndarray
    aversions: np.ndarray
    late_items: np.ndarray
    late_from: float

    def averse_matrix(self) -> np.ndarray:
        """bool [U, C]: whether user u is averse to cluster c."""
        out = np.zeros((len(self.aversions), self.num_clusters), dtype=bool)
        out[np.arange(len(self.aversions))[:, None], self.aversions] = True
        return out

    def averse(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """bool [E]: whether each (user, item) pair falls in one of the user's aversions."""
        items = np.asarray(items)
        return (self.aversions[np.asarray(users)] == self.item_cluster[items][..., None]).any(
            axis=-1
        )

    def averse_users(self, item: int) -> np.ndarray:
        """int64 [n]: the users averse to ``item``'s cluster."""
        return np.flatnonzero((self.aversions == self.item_cluster[item]).any(axis=1))

    def is_late(self) -> np.ndarray:
        """bool [N]: whether each item was added late."""
        out = np.zeros(len(self.item_cluster), dtype=bool)
        out[self.late_items] = True
        return out


def label_counts(ds: Dataset, split: int | None = TRAIN) -> tuple[np.ndarray, np.ndarray]:
    """int64 [N] positives and int64 [N] dislikes per item, over ``split`` (None = all events)."""
    sel = np.ones(len(ds.items), bool) if split is None else ds.split == split
    pos = np.bincount(ds.items[sel & (ds.labels == POSITIVE)], minlength=ds.num_items)
    dis = np.bincount(ds.items[sel & (ds.labels == DISLIKE)], minlength=ds.num_items)
    return pos.astype(np.int64), dis.astype(np.int64)


def explained_dislike_counts(
    ds: Dataset, truth: GroundTruth, split: int | None = TRAIN
) -> np.ndarray:
    """int64 [N]: dislikes per item by users averse to its cluster, over ``split``."""
    sel = ds.labels == DISLIKE
    if split is not None:
        sel &= ds.split == split
    sel &= truth.averse(ds.users, ds.items)
    return np.bincount(ds.items[sel], minlength=ds.num_items).astype(np.int64)


def popular_disliked_items(
    ds: Dataset,
    truth: GroundTruth,
    *,
    min_likes: int = 100,
    min_dislikes: int = 5,
    split: int | None = TRAIN,
) -> np.ndarray:
    """Benchmark case (a): popular items that the users averse to them dislike.

    Returns:
      int64 item indices with at least ``min_likes`` positives and at least
      ``min_dislikes`` dislikes by users averse to the item's cluster (over
      ``split``; None = all events), most liked first. Their likers are
      ``ds.users[(ds.items == i) & (ds.labels == POSITIVE)]``; every user
      averse to them is ``truth.averse_users(i)``.
    """
    likes, _ = label_counts(ds, split)
    explained = explained_dislike_counts(ds, truth, split)
    items = np.flatnonzero((likes >= min_likes) & (explained >= min_dislikes))
    return items[np.lexsort((items, -likes[items]))]


def cold_and_disliked_items(
    ds: Dataset, truth: GroundTruth, *, max_events: int = 5, split: int | None = TRAIN
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Benchmark case (b): a cold-start item and a disliked item with the same few events.

    Returns:
      n -> (late items with exactly n events, none of them a dislike; items with
      exactly n events, all of them dislikes by users averse to the item), both
      int64 sorted, for each n in 1..``max_events`` where both lists are
      non-empty. Events are counted over ``split`` (None = all events). With this
      generator the disliked ones are mostly late items too: an item added before
      the window has far more events.
    """
    likes, dislikes = label_counts(ds, split)
    explained = explained_dislike_counts(ds, truth, split)
    total = likes + dislikes
    late = truth.is_late()
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for n in range(1, max_events + 1):
        cold = np.flatnonzero(late & (likes == n) & (dislikes == 0))
        disliked = np.flatnonzero((total == n) & (explained == n))
        if len(cold) and len(disliked):
            out[n] = (cold, disliked)
    return out


def _keyed_sampler(weights: np.ndarray, keys: np.ndarray, members: np.ndarray | None = None):
    """Samplers of one member with a given int64 key, by weight; ``has(key)``: any member?"""
    uniq, dense = np.unique(keys, return_inverse=True)
    sample_dense = _segment_sampler(weights, dense, len(uniq))
    ids = np.arange(len(keys)) if members is None else members

    def locate(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        at = np.clip(np.searchsorted(uniq, key), 0, max(len(uniq) - 1, 0))
        return at, (uniq[at] == key) if len(uniq) else np.zeros(len(key), bool)

    def has(key: np.ndarray) -> np.ndarray:
        return locate(key)[1]

    def sample(key: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return ids[sample_dense(locate(key)[0], rng)]

    return sample, has


def _late_items(
    users: np.ndarray,
    items: np.ndarray,
    labels: np.ndarray,
    ts: np.ndarray,
    late: np.ndarray,
    late_from: float,
    max_events: int,
    world: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Rewrite the events so that the ``late`` items are added at ``late_from`` with few events.

    1. Every event drawn on a late item goes to an item of the same category and
       cluster that is not late, by popularity (the user's items stay distinct;
       with no such item, the event is dropped).
    2. Each late item then takes k ~ U{1..max_events} events of the window
       (``ts >= late_from``): a share r ~ Beta(1/2, 1/2) of them (its early
       audience is rarely mixed) are dislikes by users averse to its cluster
       (taken from their window dislikes of that cluster), the rest positives
       of its category by users who are not (taken from their window positives).
       Fewer when the window has too few such events.

    Args:
      world: (pop [N], category [N], cluster [N], is_averse [U, C]).
    Returns:
      (new items, bool mask of the events kept).
    """
    pop, category, cluster, is_averse = world
    n = len(pop)
    is_late = np.zeros(n, bool)
    is_late[late] = True
    segment = category.astype(np.int64) * is_averse.shape[1] + cluster

    # 1. Off the late items.
    old = np.flatnonzero(~is_late)
    sample, has = _keyed_sampler(pop[old], segment[old], old)
    items = items.copy()
    keep = np.ones(len(items), bool)
    rows = np.flatnonzero(is_late[items])
    seg = segment[items[rows]]
    ok = has(seg)
    keep[rows[~ok]] = False
    rows, seg = rows[ok], seg[ok]
    for _ in range(8):
        if not len(rows):
            break
        items[rows] = sample(seg, rng)
        key = users.astype(np.int64) * n + items
        uniq, counts = np.unique(key[keep], return_counts=True)
        repeated = counts[np.searchsorted(uniq, key[rows])] > 1
        rows, seg = rows[repeated], seg[repeated]
    keep[rows] = False  # still repeating one of the user's items

    # 2. Onto the late items, from the window.
    k = rng.integers(1, max_events + 1, len(late))
    n_hate = rng.binomial(k, rng.beta(0.5, 0.5, len(late)))
    window = keep & (ts >= late_from)
    taken = np.full(len(items), -1, np.int64)  # late item each event goes to
    for pool, key_of, wanted in (
        (window & (labels == DISLIKE), cluster, n_hate),
        (window & (labels == POSITIVE), category, k - n_hate),
    ):
        rows = np.flatnonzero(pool)
        rows = rows[np.lexsort((rng.random(len(rows)), key_of[items[rows]]))]
        rank = np.arange(len(rows)) - group_starts(key_of[items[rows]])
        by_key = np.lexsort((np.arange(len(late)), key_of[late]))
        lkey = key_of[late][by_key]
        offset = np.cumsum(wanted[by_key]) - wanted[by_key]
        offset -= offset[group_starts(lkey)]  # exclusive cumsum within each key
        span = len(rows) + 1
        at = (
            np.searchsorted(lkey * span + offset, key_of[items[rows]] * span + rank, side="right")
            - 1
        )
        at_ok = at >= 0
        j = by_key[np.maximum(at, 0)]
        hit = (
            at_ok
            & (key_of[late[j]] == key_of[items[rows]])
            & (rank < offset[np.maximum(at, 0)] + wanted[j])
        )
        taken[rows[hit]] = late[j[hit]]
    moved = np.flatnonzero(taken >= 0)
    # Positives only from users who are not averse to the late item's cluster, dislikes
    # only from users who are; one event per (user, late item).
    fits = is_averse[users[moved], cluster[taken[moved]]] == (labels[moved] == DISLIKE)
    moved = moved[fits]
    _, first = np.unique(users[moved].astype(np.int64) * n + taken[moved], return_index=True)
    moved = moved[first]
    items[moved] = taken[moved]
    return items, keep


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
    two_pi = 2.0 * np.pi
    latent = p.aversions > 0

    # Items: popularity by a random rank, equal-sized random categories (and latent clusters).
    pop = (1.0 + rng.permutation(N)) ** -p.zipf
    category = rng.permutation(np.arange(N) % K)
    sample_item = _segment_sampler(pop, category, K)
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
    if latent:  # redraw positives off the averse clusters, but for a share that ignores them
        free = rng.random(len(pu)) < p.aversion_noise
        for _ in range(8):
            hit = is_averse[pu, cluster[pitem]] & ~free
            if not hit.any():
                break
            pitem[hit] = sample_item(pcat[hit], rng)
        still = is_averse[pu, cluster[pitem]] & ~free

    du, dts = candidates(n_dis, 2.0)
    if latent:
        ditem = _exposures(p, du, dts, centre, direction, averse, pop, category, cluster, rng)
        stray = rng.random(len(du)) < p.aversion_noise  # unexplained: near interests, any cluster
        near = _interest_category(p, du[stray], dts[stray], centre, direction, rng)
        ditem[stray] = sample_item(near, rng)
    else:
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

    late = np.zeros(0, np.int64)
    late_from = math.inf
    if p.late_items > 0:
        late = np.sort(rng.choice(N, min(max(1, round(p.late_items * N)), N - 1), replace=False))
        late_from = p.start + (1.0 - p.late_window) * window
        world = (pop, category, cluster, is_averse)
        items, kept = _late_items(
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
    ds.item_features["category"] = (category + 1).astype(np.int32)
    ds.item_feature_sizes["category"] = K + 1
    truth = GroundTruth(
        cluster_kind="latent" if latent else "category",
        num_clusters=C,
        item_cluster=cluster.astype(np.int32),
        aversions=averse.astype(np.int32),
        late_items=late.astype(np.int32),
        late_from=float(late_from),
    )
    return ds, truth


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
    p: SyntheticParams,
    users: np.ndarray,
    s: np.ndarray,
    centre: np.ndarray,
    direction: np.ndarray,
    averse: np.ndarray,
    pop: np.ndarray,
    category: np.ndarray,
    cluster: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """int64 [n]: the averse item each dislike event was exposed to (see the module docstring)."""
    C = p.clusters
    a = averse[users, rng.integers(0, p.aversions, len(users))]
    seg = _interest_category(p, users, s, centre, direction, rng) * C + a
    sample_seg, has_seg = _keyed_sampler(pop, category.astype(np.int64) * C + cluster)
    popular = (rng.random(len(users)) < p.aversion_popular) | ~has_seg(seg)
    out = np.empty(len(users), np.int64)
    out[popular] = _segment_sampler(pop, cluster, C)(a[popular], rng)
    out[~popular] = sample_seg(seg[~popular], rng)
    return out
