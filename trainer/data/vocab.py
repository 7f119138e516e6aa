"""Id vocabularies that grow without breaking old ids.

A published version fixes an item order (its ``items.npz``). Warm starts and
``twotower evaluate`` re-index a freshly read data set onto that order: known
ids keep their index (so embedding rows and the frequency estimator's hashed
buckets still mean the same items), new ids are appended after them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from trainer.data.dataset import Dataset


def align_items(ds: Dataset, item_ids: np.ndarray) -> Dataset:
    """Re-index ``ds`` so that ``item_ids`` occupy indices 0..len-1 in that order.

    Items of ``ds`` not in ``item_ids`` are appended (in their current order);
    items of ``item_ids`` absent from ``ds`` stay in the catalog with no events.

    Returns:
      a new Dataset; ``ds`` is untouched.
    """
    known = {str(x): i for i, x in enumerate(np.asarray(item_ids).astype(str))}
    extra = [str(x) for x in ds.item_ids if str(x) not in known]
    new_ids = np.concatenate([np.asarray(item_ids).astype(str), np.asarray(extra, dtype=str)])
    pos = {x: i for i, x in enumerate(new_ids)}
    old_to_new = np.fromiter(
        (pos[str(x)] for x in ds.item_ids), dtype=np.int64, count=len(ds.item_ids)
    )
    features = {}
    for name, values in ds.item_features.items():
        out = np.zeros(len(new_ids), dtype=np.int32)
        out[old_to_new] = values
        features[name] = out
    return dataclasses.replace(
        ds,
        item_ids=new_ids,
        items=old_to_new[ds.items].astype(np.int32),
        item_features=features,
    )


def widen_feature_sizes(ds: Dataset, sizes: Mapping[str, int]) -> Dataset:
    """``ds`` with each item feature's vocabulary at least as large as in ``sizes``.

    A warm start copies a version's feature tables and can only grow them: data
    that uses fewer values than the version declared (item metadata read back
    from the store knows only the values in use) keeps the version's size.

    Returns:
      a new Dataset; ``ds`` is untouched.
    """
    widened = {
        name: max(int(size), int(sizes.get(name, 0)))
        for name, size in ds.item_feature_sizes.items()
    }
    return dataclasses.replace(ds, item_feature_sizes=widened)
