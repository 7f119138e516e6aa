"""The cross-batch memory (``loss.memory_batches``) against the NumPy reference of LOSSES.md.

A step with f batches in the memory is the reference loss with the memory's
positive labels, embedded *now*, as extra candidate slots after the batch's own,
and every q = (1 + f) p + M / N (deduplicated: 1 - (1 - p)^(1 + f) (1 - 1/N)^M).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.trainer.test_losses import assert_matches, reference_loss
from trainer._tf import tf
from trainer.config import TrainerConfig
from trainer.model import TwoTowerModel
from trainer.retrieval_task import NTRRetrievalTask

N, M, ROWS, DIM = 12, 3, 8, 4
PROBS = np.linspace(0.02, 0.6, N + 1).astype(np.float32)  # token-indexed, entry 0 unused


def _table(seed: int) -> np.ndarray:
    """An item tower's outputs by token [N + 1, DIM] (another seed: the tower a step later)."""
    return np.random.default_rng(100 + seed).normal(size=(N + 1, DIM)).astype(np.float32)


def _batch(seed: int) -> dict[str, np.ndarray]:
    """8 rows: repeated labels (accidental hits, also across batches), dislikes of
    in-batch items and of an item no positive row holds."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 8, size=ROWS)
    ids[-1] = 11
    pos = np.array([1, 1, 1, 1, 1, 0, 1, 0], np.float32)
    return {
        "user": rng.normal(size=(ROWS, DIM)).astype(np.float32),
        "ids": ids,
        "pos": pos,
        "weight": np.where(pos > 0, 1.0, 1.4).astype(np.float32),
        "extra_ids": rng.integers(1, N + 1, size=M),
    }


def _task(memory: int, dedupe: bool = False) -> NTRRetrievalTask:
    return NTRRetrievalTask(
        N, 0.3, 0.7, logq="counts", item_probabilities=PROBS, mixed_negatives=M,
        dedupe_candidates=dedupe, memory_batches=memory, memory_rows=ROWS,
    )  # fmt: skip


def _call(task: NTRRetrievalTask, b: dict, table: np.ndarray, training: bool = True):
    """One step as the model takes it: every item, the memory's included, from ``table``."""
    held = task.memory_ids()
    return task(
        b["user"], tf.gather(table, b["ids"]), b["ids"], b["pos"], b["weight"],
        extra_item_embeddings=tf.gather(table, b["extra_ids"]), extra_ids=b["extra_ids"],
        training=training,
        memory_item_embeddings=None if held is None else tf.gather(table, held),
    )  # fmt: skip


def _q(draws: int, dedupe: bool) -> dict[int, float]:
    p = PROBS.astype(np.float64)
    q = 1 - (1 - p) ** draws * (1 - 1 / N) ** M if dedupe else draws * p + M / N
    return {j: float(np.clip(q[j], 1e-6, 1.0)) for j in range(1, N + 1)}


def _reference(b: dict, held: list[dict], table: np.ndarray, dedupe: bool) -> dict:
    """The reference loss of ``b`` with the positive labels of ``held`` (in slot order) in C."""
    mem_ids = [h["ids"][h["pos"] > 0] for h in held]
    extra_ids = np.concatenate([*mem_ids, b["extra_ids"]])
    return reference_loss(
        b["user"], table[b["ids"]], b["ids"], b["pos"], b["weight"], _q(1 + len(held), dedupe),
        0.3, 0.7, table[extra_ids], extra_ids, dedupe=dedupe,
    )  # fmt: skip


@pytest.mark.parametrize("dedupe", [False, True])
def test_each_step_is_the_reference_loss_with_the_last_k_batches_as_candidates(dedupe: bool):
    """K = 2 over 4 steps, the item tower changing every step: empty, one batch, two,
    then the oldest overwritten; the memory's items are embedded by the current tower."""
    task = _task(2, dedupe)
    batches = [_batch(s) for s in range(4)]
    for t, b in enumerate(batches):
        out = _call(task, b, _table(t))
        # In the slot order the task uses (dedupe keeps the first slot of an item):
        # the ring's blocks in place, so after a wrap the newest block comes first.
        held = batches[max(0, t - 2) : t]
        ring = held if t < 2 or t % 2 == 0 else held[::-1]
        assert_matches(out, _reference(b, ring, _table(t), dedupe))
    assert int(task.memory.filled.numpy()) == 2


def test_the_step_is_the_same_in_a_graph():
    eager, graph = _task(1), _task(1)
    step = tf.function(lambda b, table: _call(graph, b, table))
    for t in range(3):
        b = _batch(t)
        want = _call(eager, b, _table(t))
        got = step({k: tf.constant(v) for k, v in b.items()}, tf.constant(_table(t)))
        np.testing.assert_allclose(got.total.numpy(), want.total.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(graph.memory.ids.numpy(), eager.memory.ids.numpy())


def test_memory_blocks_hold_positive_labels_and_wrap():
    task = _task(2)
    batches = [_batch(s) for s in range(3)]
    for b in batches:
        _call(task, b, _table(0))
    ids = task.memory.ids.numpy().reshape(2, ROWS)
    want = [np.where(b["pos"] > 0, b["ids"], 0) for b in batches]
    np.testing.assert_array_equal(ids[0], want[2])  # the third batch overwrote the first
    np.testing.assert_array_equal(ids[1], want[1])
    assert int(task.memory.next.numpy()) == 1


def test_evaluation_neither_writes_nor_changes_q():
    task, plain = _task(1), _task(0)
    b, table = _batch(0), _table(0)
    assert_matches(_call(task, b, table, training=False), _reference(b, [], table, dedupe=False))
    assert int(task.memory.filled.numpy()) == 0 and not task.memory.ids.numpy().any()
    assert_matches(_call(plain, b, table), _reference(b, [], table, dedupe=False))


def test_memory_needs_its_vectors_and_whole_global_batches():
    task = _task(1)
    b = {k: (v[:6] if len(v) == ROWS else v) for k, v in _batch(0).items()}
    with pytest.raises(tf.errors.InvalidArgumentError, match="train.batch_size rows"):
        _call(task, b, _table(0))
    full = _batch(0)
    with pytest.raises(ValueError, match="memory's item vectors were not given"):
        task(full["user"], tf.gather(_table(0), full["ids"]), full["ids"], full["pos"],
             full["weight"], extra_item_embeddings=tf.gather(_table(0), full["extra_ids"]),
             extra_ids=full["extra_ids"])  # fmt: skip
    with pytest.raises(ValueError, match="needs the global batch's rows"):
        NTRRetrievalTask(N, 0.3, 0.7, logq="none", memory_batches=2)
    with pytest.raises(ValueError, match="must be >= 0"):
        NTRRetrievalTask(N, 0.3, 0.7, logq="none", memory_batches=-1)


def test_memory_is_training_state_not_part_of_a_version(tmp_path):
    """The training checkpoint (the model) restores it; an exported version's weights do not hold it."""
    cfg = TrainerConfig.model_validate(
        {
            "loss": {"memory_batches": 1},
            "train": {"batch_size": ROWS},
            "model": {"embedding_dim": DIM},
        }
    )
    model = TwoTowerModel(cfg, N)
    model.build_all()
    memory = model.task.memory
    memory.ids.assign(tf.range(1, ROWS + 1, dtype=tf.int64))
    memory.filled.assign(1)
    path = tf.train.Checkpoint(model=model).write(str(tmp_path / "train"))
    fresh = TwoTowerModel(cfg, N)
    fresh.build_all()
    tf.train.Checkpoint(model=fresh).read(path).assert_consumed()
    np.testing.assert_array_equal(fresh.task.memory.ids.numpy(), np.arange(1, ROWS + 1))
    assert int(fresh.task.memory.filled.numpy()) == 1
    version = model.weights_checkpoint().write(str(tmp_path / "version"))
    names = [name for name, _ in tf.train.list_variables(version)]
    assert names and not any("memory" in name for name in names), names
