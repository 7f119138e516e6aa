"""Data sources (``SRC`` in docs/CONTRACT.md), splits and example building."""
