"""Trainer: data readers, the two towers, the loss, training, evaluation and export."""
