"""twotower: two-tower candidate retrieval that learns from dislikes (the command line)."""

from common import __version__

__all__ = ["__version__"]
