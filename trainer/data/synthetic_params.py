"""The synthetic source's knobs: ``synthetic[:key=value,...]`` parsed and checked.

What each knob does to the generated world: :mod:`trainer.data.synthetic`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass

import numpy as np

from trainer.data.errors import DataError
from trainer.data.ids import id_problem


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
