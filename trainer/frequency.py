"""Streaming item-frequency estimate for the logQ correction (Yi et al. 2019, Alg. 2 and 3).

Every global step ``t`` the *distinct* label items of the positive rows of the
global batch hit ``m`` hash functions ``h_i`` into arrays ``A_i`` (step of the
last hit, starts at 0) and ``B_i`` (smoothed gap between hits, starts at
``initial_gap``) of ``H`` buckets each::

    B_i[h_i(y)] <- (1 - alpha) B_i[h_i(y)] + alpha (t - A_i[h_i(y)])
    A_i[h_i(y)] <- t

A bucket is updated at most once per step, also when two distinct items of
the step collide on it. The estimated probability that item ``y`` occurs in
a step's candidate set is ``p(y) = 1 / max_i gap_i(y)``: collisions make a
gap look shorter, so the largest is the least biased.

Stale items (the known weakness of Alg. 3): an item that stops appearing
would keep its last ``B`` forever. At *read* time the gap is taken as
``max(B_i, t - A_i)``: an item not seen for ``s`` steps cannot occur more
often than once per ``s`` steps, so its estimate decays as ``1 / s`` while it
is absent, and ``B`` itself (the EMA of observed gaps) is left as Alg. 3
defines it. Items read right after their update in the same step (the
in-batch candidates of the loss) have ``t - A = 0`` and read ``B`` unchanged;
the rule matters for items that are read without being hit (dislike labels,
mixed negatives, popularity look-ups). An item never seen reads
``1 / max(initial_gap, t)``.

Distribution: all variables are created with
``VariableAggregation.ONLY_FIRST_REPLICA``. Called inside ``strategy.run``,
:meth:`StreamingFrequencyEstimator.update` all-gathers the ids of every
replica, so each replica computes the identical update from the global batch
and the first replica's copy is written to all of them: one step per global
batch, never one per replica. Outside a replica context (no strategy, or
cross-replica code) the ids passed are taken to be the global batch.

State (hash coefficients, ``A``, ``B``, ``t``) lives in non-trainable
variables tracked by ``tf.train.Checkpoint``; the hash coefficients are saved
too, so a restored estimator hashes as the one that was saved even if the
seed changed.
"""

from __future__ import annotations

import numpy as np

from trainer._tf import tf

#: Mersenne prime 2^31 - 1: (a * x + b) with a, b, x < 2^31 fits in int64.
_PRIME = (1 << 31) - 1
_ONLY_FIRST = tf.VariableAggregation.ONLY_FIRST_REPLICA


def replica_context_to_gather() -> tf.distribute.ReplicaContext | None:
    """The replica context whose batches must be all-gathered, or None.

    None without a strategy, in cross-replica code (the caller holds the
    global batch) and with a single replica.
    """
    if not tf.distribute.has_strategy():
        return None
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return None
    return ctx


def all_gather_rows(*tensors: tf.Tensor) -> tuple[tf.Tensor, ...]:
    """Concatenate each tensor along axis 0 over the replicas (identity without any).

    Per-replica sizes along axis 0 may differ. ``all_gather`` is
    differentiable: the gradient of a gathered tensor is the SUM over
    replicas of the upstream gradients, sliced back to this replica's rows.
    """
    ctx = replica_context_to_gather()
    if ctx is None:
        return tensors
    return tuple(_gather(ctx, t) for t in tensors)


def _gather(ctx: tf.distribute.ReplicaContext, t: tf.Tensor) -> tf.Tensor:
    if t.dtype == tf.bool:  # collectives carry numbers only
        return tf.cast(ctx.all_gather(tf.cast(t, tf.int32), axis=0), tf.bool)
    return ctx.all_gather(t, axis=0)


class StreamingFrequencyEstimator(tf.Module):
    """Count-sketch-like estimate of how often each item id occurs per step.

    Args:
      buckets: H, buckets per hash function.
      hashes: m, number of hash functions.
      alpha: EMA rate of the gap estimate, in (0, 1].
      initial_gap: B's initial value, in steps (p starts at 1 / initial_gap).
      seed: seeds the hash coefficients ``h_i(x) = ((a_i x + b_i) mod P) mod H``.
      name: module name.

    Variables: ``hash_a``, ``hash_b`` int64 [m]; ``last_seen`` (A) int64
    [m * H]; ``gap`` (B) float32 [m * H]; ``step`` (t) int64 scalar. Bucket
    ``k`` of hash ``i`` is element ``i * H + k`` (flat, so that reads and
    writes gather and scatter only the touched buckets).
    """

    def __init__(
        self,
        buckets: int,
        hashes: int,
        alpha: float,
        initial_gap: float = 100.0,
        seed: int = 0,
        name: str | None = None,
    ):
        super().__init__(name=name)
        if buckets < 1:
            raise ValueError(f"frequency.buckets must be >= 1, got {buckets}")
        if hashes < 1:
            raise ValueError(f"frequency.hashes must be >= 1, got {hashes}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"frequency.alpha must be in (0, 1], got {alpha}")
        if initial_gap <= 0.0:
            raise ValueError(f"frequency.initial_gap must be > 0 steps, got {initial_gap}")
        self.buckets = int(buckets)
        self.hashes = int(hashes)
        self.alpha = float(alpha)
        self.initial_gap = float(initial_gap)
        a, b = hash_coefficients(hashes, seed)
        size = self.hashes * self.buckets
        with self.name_scope:
            self.hash_a = self._variable(tf.constant(a, tf.int64), "hash_a")
            self.hash_b = self._variable(tf.constant(b, tf.int64), "hash_b")
            self.last_seen = self._variable(tf.zeros([size], tf.int64), "last_seen")
            self.gap = self._variable(
                tf.fill([size], tf.constant(self.initial_gap, tf.float32)), "gap"
            )
            self.step = self._variable(tf.constant(0, tf.int64), "step")

    @staticmethod
    def _variable(initial: tf.Tensor, name: str) -> tf.Variable:
        return tf.Variable(initial, trainable=False, name=name, aggregation=_ONLY_FIRST)

    def flat_buckets(self, item_ids: tf.Tensor) -> tf.Tensor:
        """int64 [m, n]: flat index ``i * H + h_i(id)`` of each id [n] under each hash."""
        x = tf.math.floormod(tf.reshape(tf.cast(item_ids, tf.int64), [1, -1]), _PRIME)
        a = tf.reshape(self.hash_a.read_value(), [-1, 1])
        b = tf.reshape(self.hash_b.read_value(), [-1, 1])
        h = tf.math.floormod(tf.math.floormod(a * x + b, _PRIME), self.buckets)
        offsets = tf.range(self.hashes, dtype=tf.int64)[:, None] * self.buckets
        return h + offsets

    def update(self, item_ids: tf.Tensor, mask: tf.Tensor | None = None) -> tf.Tensor:
        """Advance one global step with the batch's label items.

        Args:
          item_ids: int [n] label items of this replica's (or the global) batch.
          mask: bool [n], rows that count (the positive rows); all when None.
            Inside ``strategy.run`` both are all-gathered first, so the step
            sees the distinct ids of the global batch.

        Returns:
          int64 scalar, the new step t.
        """
        ids = tf.reshape(tf.cast(item_ids, tf.int64), [-1])
        keep = (
            tf.ones_like(ids, tf.bool) if mask is None else tf.reshape(tf.cast(mask, tf.bool), [-1])
        )
        ctx = replica_context_to_gather()
        if ctx is not None and not isinstance(self.step, tf.distribute.DistributedValues):
            raise RuntimeError(
                "StreamingFrequencyEstimator used inside strategy.run but created outside "
                "strategy.scope(): every replica would update it. Create it under the strategy's scope."
            )
        ids, keep = all_gather_rows(ids, keep)
        distinct = tf.unique(tf.boolean_mask(ids, keep)).y
        # One update per bucket per step: distinct items colliding on a bucket hit it once.
        touched = tf.unique(tf.reshape(self.flat_buckets(distinct), [-1])).y
        t = self.step.read_value() + 1
        last = tf.gather(self.last_seen, touched)
        gap = tf.gather(self.gap, touched)
        elapsed = tf.cast(t - last, tf.float32)
        new_gap = (1.0 - self.alpha) * gap + self.alpha * elapsed
        self.gap.scatter_update(tf.IndexedSlices(new_gap, touched))
        self.last_seen.scatter_update(tf.IndexedSlices(tf.fill(tf.shape(touched), t), touched))
        self.step.assign(t)
        return t

    def probability(self, item_ids: tf.Tensor) -> tf.Tensor:
        """float32 [n]: estimated probability that each id [n] occurs in one step.

        ``1 / max_i max(B_i, t - A_i)`` (see the module docstring for the
        ``t - A`` term). Reads the current state: call after :meth:`update`
        of the step.
        """
        flat = self.flat_buckets(tf.reshape(item_ids, [-1]))
        t = self.step.read_value()
        since = tf.cast(t - tf.gather(self.last_seen, flat), tf.float32)
        gap = tf.maximum(tf.gather(self.gap, flat), since)
        return 1.0 / tf.reduce_max(gap, axis=0)


def hash_coefficients(hashes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """int64 [m] multipliers a_i in [1, P) and offsets b_i in [0, P), P = 2^31 - 1."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, _PRIME, size=hashes, dtype=np.int64)
    b = rng.integers(0, _PRIME, size=hashes, dtype=np.int64)
    return a, b
