"""bench.common: the command a result records."""

from __future__ import annotations

import sys
from pathlib import Path

from bench.common import REPO, command_line


def test_a_module_run_with_dash_m_is_recorded_as_the_module() -> None:
    # Under -m, sys.argv[0] is the module's file path.
    argv = [str(REPO / "bench" / "serving.py"), "--items", "100000", "--append"]
    python = Path(sys.executable).name
    assert command_line(argv) == f"{python} -m bench.serving --items 100000 --append"


def test_a_script_outside_the_repo_keeps_its_path() -> None:
    python = Path(sys.executable).name
    assert command_line(["/opt/tool.py", "-x"]) == f"{python} /opt/tool.py -x"
    assert command_line(["-c", "pass"]) == f"{python} -c pass"
