"""Where a training run keeps its resumable checkpoints, and who writes them.

The run directory ``ART/.train-<hash>`` is named by everything that makes
two runs the same run: the data (source string *and* a fingerprint of the
data itself: item vocabulary, events), the full trainer config and the
warm-start version. A killed run restarted on the same inputs finds its
checkpoint again; a run on new data (the scheduled job's next window, a
data file with one more item) gets a fresh directory instead of restoring
a model of the wrong shape.

Multi-worker runs follow TF's documented pattern: every worker *restores*
from the chief's directory (on storage all workers share), so after a kill
they all resume at the same step; only the chief *writes* there, the other
workers write their (identical) checkpoints into scratch directories of
their own that nothing restores from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from trainer._tf import tf
from trainer.chief import is_chief_role
from trainer.config import TrainerConfig
from trainer.data.dataset import Dataset

log = logging.getLogger(__name__)

RUN_PREFIX = ".train-"
#: A run directory untouched this long belongs to a run that was killed and whose
#: inputs have changed since (a restart on the same inputs would have resumed it).
STALE_RUN_SECONDS = 24 * 3600


def data_fingerprint(ds: Dataset) -> dict[str, Any]:
    """Sizes and SHA-256 digests of what a training run reads from ``ds``.

    ``items``/``item_ids_sha256`` pin the item vocabulary (the embedding
    table's shape and row meaning); ``events``/``events_sha256`` the events
    (users, items, labels, times, split) the batches are cut from.
    """
    items = hashlib.sha256("\n".join(np.asarray(ds.item_ids).astype(str)).encode())
    events = hashlib.sha256("\n".join(np.asarray(ds.user_ids).astype(str)).encode())
    for arr, dtype in (
        (ds.users, np.int32),
        (ds.items, np.int32),
        (ds.labels, np.int8),
        (ds.ts, np.float64),
        (ds.split, np.int8),
    ):
        events.update(np.ascontiguousarray(arr, dtype=dtype).tobytes())
    return {
        "items": ds.num_items,
        "item_ids_sha256": items.hexdigest(),
        "events": int(len(ds.users)),
        "events_sha256": events.hexdigest(),
    }


def run_directory(
    out: Path, spec: str, config: TrainerConfig, warm: str | None, ds: Dataset
) -> Path:
    """``out/.train-<12 hex>``: the checkpoint directory of this exact run."""
    key = json.dumps(
        {
            "data": spec,
            "fingerprint": data_fingerprint(ds),
            "config": config.as_dict(),
            "warm": warm,
        },
        sort_keys=True,
    )
    return Path(out) / f"{RUN_PREFIX}{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _last_write(path: Path) -> float:
    newest = path.stat().st_mtime
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                newest = max(newest, (Path(root) / name).stat().st_mtime)
            except FileNotFoundError:  # removed while we looked
                continue
    return newest


def prune_stale_runs(
    out: Path, keep: Path | None = None, older_than_s: float = STALE_RUN_SECONDS
) -> list[Path]:
    """Remove run directories of ``out`` nothing has written to for ``older_than_s``.

    A killed run leaves its directory behind; once the data or config moved on,
    no run will ever resume it. A live run checkpoints far more often than
    this, so its directory is never old. Returns the removed directories.
    """
    removed = []
    now = time.time()
    for path in sorted(Path(out).glob(f"{RUN_PREFIX}*")):
        if not path.is_dir() or (keep is not None and path == Path(keep)):
            continue
        try:
            stale = now - _last_write(path) > older_than_s
        except FileNotFoundError:
            continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        log.info("removed %d stale run directories: %s", len(removed), [p.name for p in removed])
    return removed


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True unless this is a non-chief worker of a multi-worker run (rule: :mod:`trainer.chief`)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return is_chief_role(resolver.task_type, int(resolver.task_id or 0), has_chief)


def checkpoint_paths(ckpt_dir: Path, strategy: tf.distribute.Strategy) -> tuple[Path, Path]:
    """(restore from, write to) for this process.

    Every process restores from ``ckpt_dir`` (the chief's, on shared storage);
    the chief also writes there. Any other worker writes into its own scratch
    ``ckpt_dir/worker-<type>-<id>``, emptied here: what it held was a copy of
    the chief's state, never read back. The chief removes ``ckpt_dir`` (scratch
    included) when the run completes.
    """
    ckpt_dir = Path(ckpt_dir)
    if is_chief(strategy):
        return ckpt_dir, ckpt_dir
    resolver = strategy.cluster_resolver
    scratch = ckpt_dir / f"worker-{resolver.task_type}-{resolver.task_id}"
    shutil.rmtree(scratch, ignore_errors=True)
    return ckpt_dir, scratch
