"""One module per ``twotower`` subcommand: flags in, a typed library call, an exit status out.

``argparse`` is used here, in :mod:`twotower.parser` and :mod:`twotower.cli` only; the
libraries take typed arguments (see ``docs/ARCHITECTURE.md``).
"""

from __future__ import annotations

import json
import sys
from typing import Any


def print_json(doc: Any) -> None:
    """``doc`` as indented JSON on stdout, NumPy arrays and scalars as plain lists and numbers."""
    json.dump(doc, sys.stdout, indent=2, default=_plain)
    print()


def _plain(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(type(obj).__name__)
