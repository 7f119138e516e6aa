"""twotower: two-tower candidate retrieval that learns from dislikes."""

__version__ = "0.1.0"
