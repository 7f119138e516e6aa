"""Which process of a multi-worker job is the chief: the one that exports, gates and publishes.

One rule for the training loop (which asks its ``tf.distribute`` strategy) and the
pipeline (whose ``TF_CONFIG`` the command line reads at its start, before TensorFlow
is loaded, and hands down parsed: :func:`parse_tf_config`): the ``chief`` task, or
worker 0 when the cluster has no chief; a single process is always the chief.
TensorFlow is not imported here (it reads ``TF_CONFIG`` itself for its strategy).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from common.config import ConfigError

#: TensorFlow's description of a multi-worker cluster and this process's task in it.
TF_CONFIG_ENV = "TF_CONFIG"


def is_chief_role(task_type: str | None, task_id: int, cluster_has_chief: bool) -> bool:
    """The rule itself (``task_type`` None or empty: not a multi-worker job)."""
    if not task_type or task_type == "chief":
        return True
    return task_type == "worker" and task_id == 0 and not cluster_has_chief


@dataclass(frozen=True)
class TaskRole:
    """This process's task in a multi-worker job (``task_type`` None: a single process)."""

    task_type: str | None = None
    task_id: int = 0
    cluster_has_chief: bool = False

    @property
    def is_chief(self) -> bool:
        return is_chief_role(self.task_type, self.task_id, self.cluster_has_chief)


def parse_tf_config(tf_config: str | None) -> TaskRole:
    """The task ``TF_CONFIG`` (its JSON text) describes; none or empty: a single process.

    Raises:
      ConfigError: ``TF_CONFIG`` is not JSON with a task.
    """
    if not tf_config:
        return TaskRole()
    try:
        spec = json.loads(tf_config)
        task = spec.get("task", {})
        role = TaskRole(
            task.get("type"), int(task.get("index", 0)), "chief" in spec.get("cluster", {})
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{TF_CONFIG_ENV} is not valid JSON with a task ({exc})") from exc
    return role
