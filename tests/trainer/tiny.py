"""A tiny synthetic data set and model config shared by the trainer's end-to-end tests."""

from __future__ import annotations

from pathlib import Path

TINY = "synthetic:users=150,items=120,events_per_user=20,seed=3"
TINY_SETS = [
    "train.epochs=2",
    "train.batch_size=64",
    "model.embedding_dim=16",
    "model.hidden_units=16",
    "model.history_length=10",
    "model.dislike_length=5",
    "frequency.buckets=4096",
]


def tiny_lightgcn_files(root: Path) -> str:
    """TINY's positives as LightGCN train/valid/test files (no time order); the source spec."""
    from trainer.data.sources import load_source

    ds = load_source(TINY)
    root.mkdir()
    pos = ds.labels == 1
    for name, split in (("train.txt", 0), ("valid.txt", 1), ("test.txt", 2)):
        lines = []
        for u in range(ds.num_users):
            items = ds.items[pos & (ds.split == split) & (ds.users == u)]
            if len(items):
                lines.append(" ".join(map(str, [u, *sorted(items.tolist())])))
        (root / name).write_text("\n".join(lines) + "\n")
    return f"lightgcn:{root}"
