"""MirroredStrategy over 2 logical CPUs computes the single-device loss, gradients and estimator state.

Logical devices must be configured before TensorFlow initialises its devices,
so the comparison runs in a fresh interpreter (``subprocess``) and reports
its figures as JSON; the rest of the test session is unaffected.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np
    from trainer._tf import tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from trainer.frequency import StreamingFrequencyEstimator
    from trainer.retrieval_task import NTRRetrievalTask

    N, D, M, STEPS = 30, 8, 3, 5  # catalog, embedding dim, mixed negatives per GLOBAL batch, steps
    rng = np.random.default_rng(0)
    USER0 = rng.normal(size=(40, D)).astype(np.float32)
    ITEM0 = rng.normal(size=(N + 1, D)).astype(np.float32)
    NEGS = 3  # dislike negatives per row (when on)
    neg_rng = np.random.default_rng(1)  # apart from rng: the other variants' data stay as they were


    def batches(split):
        # A global batch of 12 rows: duplicates (accidental hits), dislikes of candidate
        # items and of a non-candidate item, a second dislike weight.
        out = []
        for _ in range(STEPS):
            ids = rng.integers(1, 9, size=12)
            ids[-1] = 25
            pos = (rng.random(12) < 0.7).astype(np.float32)
            pos[-1] = 0.0
            out.append({
                "user": rng.integers(0, 40, size=12), "item": ids, "is_positive": pos,
                "weight": np.where(pos > 0, 1.0, 1.5).astype(np.float32),
                "extra": rng.integers(1, N + 1, size=M),
                # Each row's dislike input: padding, items in the batch, own labels, repeats.
                "dislikes": neg_rng.integers(0, 10, size=(12, NEGS)),
            })
        return out


    def build(dedupe, negs=0, label="corrected", hits=True, memory=0):
        users = tf.Variable(USER0, name="users")
        items = tf.Variable(ITEM0, name="items")
        est = StreamingFrequencyEstimator(buckets=16, hashes=2, alpha=0.3, initial_gap=10.0, seed=3)
        task = NTRRetrievalTask(
            N, 0.2, 0.6, logq="streaming", estimator=est, mixed_negatives=M, dedupe_candidates=dedupe,
            dislike_negatives=negs, logq_label=label, remove_accidental_hits=hits,
            memory_batches=memory, memory_rows=12,
        )
        return users, items, est, task


    def loss_and_grads(users, items, task, b):
        negs = {}
        if task.dislike_negatives:
            negs = {"dislike_item_embeddings": tf.gather(items, b["dislikes"]), "dislike_ids": b["dislikes"]}
        with tf.GradientTape() as tape:
            if task.memory is not None:  # the memory's ids, embedded now (with gradient)
                negs["memory_item_embeddings"] = tf.gather(items, task.memory_ids())
            out = task(
                tf.gather(users, b["user"]), tf.gather(items, b["item"]), b["item"], b["is_positive"],
                b["weight"], extra_item_embeddings=tf.gather(items, b["extra"]), extra_ids=b["extra"],
                **negs,
            )
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(out.total, [users, items])]
        return out.total, out.ssm_mean, out.ntr_mean, out.num_positive, grads


    def state(est):
        def first(v):
            return v.values[0] if hasattr(v, "values") else v
        return {n: first(getattr(est, n)).numpy() for n in ("last_seen", "gap", "step")}


    def run(strategy, split, dedupe=False, negs=0, label="corrected", hits=True, memory=0):
        data = batches(split)
        res = {"single": [], "mirrored": []}

        users, items, est, task = build(dedupe, negs, label, hits, memory)
        step = tf.function(lambda b: loss_and_grads(users, items, task, b))
        for b in data:
            total, ssm, ntr, npos, grads = step({k: tf.constant(v) for k, v in b.items()})
            res["single"].append([total.numpy(), ssm.numpy(), ntr.numpy(), npos.numpy(), [g.numpy() for g in grads]])
        single_state = state(est)

        with strategy.scope():
            m_users, m_items, m_est, m_task = build(dedupe, negs, label, hits, memory)

        @tf.function
        def m_step(per_replica):
            out = strategy.run(lambda b: loss_and_grads(m_users, m_items, m_task, b), args=(per_replica,))
            total, ssm, ntr, npos, grads = out
            red = lambda x: strategy.reduce("SUM", x, axis=None)
            first = lambda x: strategy.experimental_local_results(x)[0]
            return red(total), first(ssm), first(ntr), first(npos), [red(g) for g in grads]

        for b in data:
            def shard(ctx, b=b):
                r = ctx.replica_id_in_sync_group
                rows = slice(0, split) if r == 0 else slice(split, 12)
                d = {k: tf.constant(v[rows]) for k, v in b.items() if k != "extra"}
                d["extra"] = tf.constant(b["extra"])  # the same M on every replica
                return d
            per_replica = strategy.experimental_distribute_values_from_function(shard)
            total, ssm, ntr, npos, grads = m_step(per_replica)
            res["mirrored"].append([total.numpy(), ssm.numpy(), ntr.numpy(), npos.numpy(), [g.numpy() for g in grads]])

        diffs = {"loss": 0.0, "ssm": 0.0, "ntr": 0.0, "npos": 0.0, "grad": 0.0}
        for s, m in zip(res["single"], res["mirrored"]):
            for i, key in enumerate(["loss", "ssm", "ntr", "npos"]):
                diffs[key] = max(diffs[key], float(abs(s[i] - m[i])))
            for gs, gm in zip(s[4], m[4]):
                diffs["grad"] = max(diffs["grad"], float(np.abs(gs - gm).max()))
        replicas_agree = all(
            np.array_equal(a.numpy(), b.numpy())
            for n in ("last_seen", "gap", "step")
            for a, b in [getattr(m_est, n).values]
        )
        m_state = state(m_est)
        return {
            "diffs": diffs,
            "loss_scale": float(max(abs(s[0]) for s in res["single"])),
            "grad_scale": float(max(np.abs(g).max() for s in res["single"] for g in s[4])),
            "single_step": int(single_state["step"]),
            "mirrored_step": int(m_state["step"]),
            "state_max_diff": max(
                float(np.abs(single_state[n].astype(np.float64) - m_state[n].astype(np.float64)).max())
                for n in ("last_seen", "gap", "step")
            ),
            "replicas_agree": bool(replicas_agree),
        }


    def cross_replica(strategy):
        # update() called in cross-replica code (under the scope, outside run): the ids are the global batch.
        ids = np.array([1, 2, 3, 2, 9])
        plain = StreamingFrequencyEstimator(buckets=16, hashes=2, alpha=0.3, seed=3)
        with strategy.scope():
            mirrored = StreamingFrequencyEstimator(buckets=16, hashes=2, alpha=0.3, seed=3)
        for _ in range(3):
            plain.update(ids)
            mirrored.update(ids)
        return bool(
            all(np.array_equal(c.numpy(), getattr(plain, n).numpy()) for n in ("gap", "step") for c in getattr(mirrored, n).values)
        )


    # One strategy for the whole process: strategies on the same devices would reuse collective keys.
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    print(json.dumps({
        "even": run(strategy, 6), "uneven": run(strategy, 5),
        "dedupe": run(strategy, 5, dedupe=True), "cross_replica": cross_replica(strategy),
        "dislike_negatives": run(strategy, 5, negs=NEGS),
        "dislike_negatives_dedupe": run(strategy, 7, dedupe=True, negs=NEGS),
        "exact_label": run(strategy, 5, label="exact"),
        "exact_label_with_hits": run(strategy, 7, label="exact", hits=False, negs=NEGS),
        "memory": run(strategy, 5, memory=2),
        "memory_dedupe": run(strategy, 7, dedupe=True, memory=2),
    }))
    """
)


@pytest.fixture(scope="module")
def mirrored_results() -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "TF_USE_LEGACY_KERAS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"distributed check failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "split",
    [
        "even",
        "uneven",
        "dedupe",
        "dislike_negatives",
        "dislike_negatives_dedupe",
        "exact_label",
        "exact_label_with_hits",
        "memory",
        "memory_dedupe",
    ],
)
def test_mirrored_loss_and_gradients_equal_single_device(mirrored_results: dict, split: str):
    """5 global batches of 12 rows split 6/6 (and 5/7) over 2 replicas; M = 3 mixed negatives
    per global batch: the single device gets M, each replica the same M (not 2M in all).
    ``dedupe``: one slot per distinct item of the gathered (global) candidate set.
    ``dislike_negatives``: 3 per row, each replica its own rows' (split 5/7, and 7/5 with
    dedupe, where a row's dislikes also drop C's slots of those items). ``exact_label``:
    ``loss.logq_label=exact`` (split 5/7), and without hit removal (7/5), where each row's
    own slot must be found among the gathered slots. ``memory``: a cross-batch memory of
    2 global batches (5/7, and 7/5 with dedupe): it fills, then wraps, over the 5 steps,
    and both replicas must write and read the same global batches."""
    r = mirrored_results[split]
    assert r["loss_scale"] > 0.1 and r["grad_scale"] > 1e-3, (
        r
    )  # the compared values are not trivial
    for key, diff in r["diffs"].items():
        assert diff <= 1e-5, (key, r)


@pytest.mark.parametrize("split", ["even", "uneven"])
def test_mirrored_estimator_steps_once_per_global_batch(mirrored_results: dict, split: str):
    r = mirrored_results[split]
    assert r["single_step"] == r["mirrored_step"] == 5, r
    assert r["state_max_diff"] <= 1e-6, r
    assert r["replicas_agree"], r


def test_estimator_update_in_cross_replica_code(mirrored_results: dict):
    assert mirrored_results["cross_replica"]
