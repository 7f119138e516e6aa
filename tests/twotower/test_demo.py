"""The quickstart as a new user runs it: `twotower demo`, then the curl lines it prints."""

from __future__ import annotations

import json
import shlex
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


@pytest.mark.slow
def test_demo_serves_and_the_printed_dislike_removes_the_item(tmp_path):
    port = _free_port()
    out = (tmp_path / "stdout").open("w+")
    err = (tmp_path / "stderr").open("w+")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "twotower.cli",
            "demo",
            "--dir",
            str(tmp_path / "demo"),
            "--port",
            str(port),
        ],
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
        calls = []
        for line in lines:
            argv = shlex.split(line)
            url = argv[argv.index("-X") + 2].replace("8000", str(port))
            body = json.loads(argv[argv.index("-d") + 1])
            calls.append((url.replace("http://127.0.0.1:8000", base), body))
        first = httpx.post(calls[0][0], json=calls[0][1], timeout=10).json()
        disliked = calls[1][1]["events"][0]["item_id"]
        assert disliked in [x["item_id"] for x in first["items"]]  # the demo picked a visible item
        ack = httpx.post(calls[1][0], json=calls[1][1], timeout=10).json()
        assert ack == {"accepted": 1, "duplicates": 0}
        second = httpx.post(calls[2][0], json=calls[2][1], timeout=10).json()
        assert len(second["items"]) == 5
        assert disliked not in [x["item_id"] for x in second["items"]]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
