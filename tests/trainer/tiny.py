"""A tiny synthetic data set and model config shared by the trainer's end-to-end tests."""

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
