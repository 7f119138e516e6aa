"""Item features from the feature store's item metadata (the ``events:`` sources, the pipeline).

``twotower ingest`` writes a source's item features as item metadata,
``{item_id: {name: value}}`` with the value the reader encoded (MovieLens
``genre``, synthetic ``category``: integers from 1, 0 = unknown left out).
:func:`attach_item_metadata` reads them back into ``Dataset.item_features``
under the same names and with the same values, so a model trained on the
events warm-starts from one trained on the original source:

* a metadata key is a categorical item feature when its values are
  non-negative integers (``{"title": "..."}`` and other metadata are left
  out); a value of such a key that is not one (a string, a negative number,
  a bool) counts as unknown and is logged;
* an item without metadata, or without that key, has the value 0 (unknown);
* the vocabulary size is the largest value in the metadata + 1. A source
  may have declared more values than it used (``u.item``'s genre flags);
  a warm start widens the sizes to the version's (:func:`trainer.data.vocab.widen_feature_sizes`),
  and a value that appears later grows the table (old rows are kept).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from trainer.data.dataset import Dataset

log = logging.getLogger(__name__)

#: Feature names become variable names (``item_<name>_embedding``).
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_VALUE = 2**31 - 2


def _code(value: Any) -> int | None:
    """The categorical code of a metadata value, or None when it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        return None
    return int(value) if 0 <= value <= MAX_VALUE else None


def features_from_metadata(
    item_ids: np.ndarray, metadata: Mapping[str, Mapping[str, Any]], source: str = "events"
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """``(item_features, item_feature_sizes)`` of ``item_ids`` from ``{item_id: {name: value}}``.

    Sizes come from every item of ``metadata``, not only ``item_ids``, so a
    training window does not shrink a vocabulary. Rules in the module docstring.
    """
    codes: dict[str, dict[str, int]] = {}
    bad: dict[str, list[tuple[str, Any]]] = {}
    for item, meta in metadata.items():
        if not isinstance(meta, Mapping):
            continue
        for name, value in meta.items():
            code = _code(value)
            if code is None:
                bad.setdefault(name, []).append((str(item), value))
            else:
                codes.setdefault(name, {})[str(item)] = code
    features: dict[str, np.ndarray] = {}
    sizes: dict[str, int] = {}
    ids = [str(i) for i in np.asarray(item_ids)]
    for name in sorted(codes):
        if not NAME.match(name):
            log.warning(
                "%s: item metadata key %r is not usable as a feature name "
                "(letters, digits, _ . -); left out",
                source,
                name,
            )
            continue
        if name in bad:
            item, value = bad[name][0]
            log.warning(
                "%s: item feature %r: %d value(s) are not non-negative integers and count as "
                "unknown (0), e.g. item %r: %r",
                source,
                name,
                len(bad[name]),
                item,
                value,
            )
        by_item = codes[name]
        features[name] = np.array([by_item.get(i, 0) for i in ids], dtype=np.int32)
        sizes[name] = max(by_item.values()) + 1
    ignored = sorted(set(bad) - set(codes))
    if ignored:
        log.debug("%s: item metadata keys that are not categorical features: %s", source, ignored)
    return features, sizes


def attach_item_metadata(
    ds: Dataset, metadata: Mapping[str, Mapping[str, Any]] | None, *, where: str = ""
) -> Dataset:
    """Set ``ds.item_features`` / ``item_feature_sizes`` from item metadata (in place; returns ds).

    ``metadata`` None means there is no metadata to read (logged with ``where``);
    an empty mapping means the store holds none for these items.
    """
    if metadata is None:
        log.warning(
            "%s: no item metadata%s; training without item features",
            ds.source,
            f" ({where})" if where else "",
        )
        return ds
    features, sizes = features_from_metadata(ds.item_ids, metadata, ds.source)
    ds.item_features = features
    ds.item_feature_sizes = sizes
    if features:
        known = {name: int((values != 0).sum()) for name, values in features.items()}
        log.info(
            "%s: item features %s (items with a value: %s of %d)",
            ds.source,
            sizes,
            known,
            ds.num_items,
        )
    else:
        log.info("%s: the store has no item features for these items", ds.source)
    return ds
