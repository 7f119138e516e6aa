"""Data sources (SPEC ``SRC``), splits and example building."""
