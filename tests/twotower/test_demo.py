"""The quickstart as a new user runs it: `twotower demo`, then the curl lines it prints."""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _installed_twotower() -> str:
    """The console script ``pip install`` put beside this interpreter (what a user runs)."""
    script = Path(sys.executable).parent / "twotower"
    assert script.exists(), (
        f"no installed `twotower` script beside {sys.executable}: pip install -e ."
    )
    return str(script)


def _run_curl(line: str) -> dict:
    """Run one printed ``curl`` line as a user would paste it; its JSON answer."""
    assert shutil.which("curl"), "curl is needed to run the demo's printed lines"
    done = subprocess.run(shlex.split(line), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, (line, done.stderr)
    return json.loads(done.stdout)


@pytest.mark.slow
def test_demo_serves_and_the_printed_dislike_removes_the_item(tmp_path):
    port = _free_port()
    out = (tmp_path / "stdout").open("w+")
    err = (tmp_path / "stderr").open("w+")
    proc = subprocess.Popen(
        [_installed_twotower(), "demo", "--dir", str(tmp_path / "demo"), "--port", str(port)],
        stdout=out,
        stderr=err,
        cwd=tmp_path,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 400
        lines: list[str] = []
        while len(lines) < 3:
            assert proc.poll() is None, Path(err.name).read_text()[-3000:]
            assert time.monotonic() < deadline, "demo printed no curl lines"
            text = Path(out.name).read_text()
            lines = [ln for ln in text.splitlines() if ln.startswith("curl ")]
            time.sleep(0.2)  # another process's output: polled
        # The lines appear once the API answers, not before: the first curl works at once,
        # and the demo says it is ready only after uvicorn said it is listening.
        assert httpx.get(f"{base}/readyz", timeout=5).status_code == 200
        assert len(lines) == 3
        assert all(f"{base}/v1/" in ln for ln in lines), lines  # the port it was given
        startup = Path(err.name).read_text()
        assert "Uvicorn running on" in startup and "ready in" in startup, startup[-3000:]
        assert startup.index("Uvicorn running on") < startup.index("ready in")
        for noise in (
            "oneDNN custom operations",
            "absl::InitializeLog",
            "non-serializable objects",
            "cpu_feature_guard",
        ):
            assert noise not in startup, noise
        if not Path("/proc/driver/nvidia/version").exists():
            assert "cuInit" not in startup
        k = json.loads(shlex.split(lines[0])[-1])["k"]
        disliked = json.loads(shlex.split(lines[1])[-1])["events"][0]["item_id"]
        first = _run_curl(lines[0])
        assert len(first["items"]) == k
        assert disliked == first["items"][0]["item_id"]  # the demo dislikes the visible top item
        assert _run_curl(lines[1]) == {"accepted": 1, "duplicates": 0}
        second = _run_curl(lines[2])
        assert len(second["items"]) == k  # k still honoured after the filter
        assert disliked not in [x["item_id"] for x in second["items"]]
        assert second["model_version"] == first["model_version"]
        proc.send_signal(signal.SIGINT)  # a user's Ctrl-C: a clean stop
        assert proc.wait(timeout=60) == 0, Path(err.name).read_text()[-3000:]
        assert "Traceback" not in Path(err.name).read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
