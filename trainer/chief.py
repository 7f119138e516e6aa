"""Which process of a multi-worker job is the chief: the one that exports, gates and publishes.

One rule for the training loop (which asks its ``tf.distribute`` strategy) and the
pipeline (which reads ``TF_CONFIG`` before TensorFlow is loaded): the ``chief`` task,
or worker 0 when the cluster has no chief; a single process is always the chief.
TensorFlow is not imported here.
"""

from __future__ import annotations

import json

from common.config import ConfigError


def is_chief_role(task_type: str | None, task_id: int, cluster_has_chief: bool) -> bool:
    """The rule itself (``task_type`` None or empty: not a multi-worker job)."""
    if not task_type or task_type == "chief":
        return True
    return task_type == "worker" and task_id == 0 and not cluster_has_chief


def is_chief_task(tf_config: str | None) -> bool:
    """:func:`is_chief_role` of the task ``TF_CONFIG`` describes (none = a single process).

    Raises:
      ConfigError: ``TF_CONFIG`` is not JSON with a task.
    """
    if not tf_config:
        return True
    try:
        spec = json.loads(tf_config)
        task = spec.get("task", {})
        kind, index = task.get("type"), int(task.get("index", 0))
        has_chief = "chief" in spec.get("cluster", {})
    except (ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(f"TF_CONFIG is not valid JSON with a task ({exc})") from exc
    return is_chief_role(kind, index, has_chief)
