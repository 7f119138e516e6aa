"""Two worker processes on loopback (MultiWorkerMirroredStrategy, TF_CONFIG): killed after the
chief's first checkpoint, restarted, both resume from the chief's checkpoint at the same step."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common import artifacts
from tests.trainer.tiny import TINY, TINY_SETS

REPO = Path(__file__).resolve().parents[2]
SETS = [*TINY_SETS, "train.epochs=2", "train.checkpoint_every=3", "loss.mixed_negatives=8"]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _start(art: Path, ckpt: Path, tmp: Path, tag: str) -> list[subprocess.Popen]:
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    cmd = [sys.executable, "-m", "twotower.cli", "train", "--data", TINY, "--out", str(art)]
    cmd += ["--checkpoint-dir", str(ckpt), "--strategy", "multiworker"]
    for s in SETS:
        cmd += ["--set", s]
    procs = []
    for index in range(2):
        env = {
            **os.environ,
            "TF_CONFIG": json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": index}}
            ),
        }
        procs.append(
            subprocess.Popen(
                cmd,
                env=env,
                cwd=REPO,
                stdout=open(tmp / f"{tag}-out{index}.json", "w"),  # noqa: SIM115
                stderr=open(tmp / f"{tag}-err{index}.txt", "w"),  # noqa: SIM115
            )
        )
    return procs


def _kill(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait()


@pytest.mark.slow
def test_killed_workers_resume_from_the_chiefs_checkpoint(tmp_path):
    art, ckpt = tmp_path / "art", tmp_path / "ckpt"
    first = _start(art, ckpt, tmp_path, "first")
    marker = ckpt / "latest" / "checkpoint"
    deadline = time.monotonic() + 240
    try:
        while not marker.exists():
            for n, p in enumerate(first):
                assert p.poll() is None, (tmp_path / f"first-err{n}.txt").read_text()[-3000:]
            assert time.monotonic() < deadline, "no chief checkpoint within 240 s"
            time.sleep(0.05)
    finally:
        _kill(first)
    assert artifacts.latest_version(art) is None

    second = _start(art, ckpt, tmp_path, "second")
    try:
        for n, p in enumerate(second):
            # A worker resuming elsewhere than the chief hangs in a collective: bounded here.
            p.wait(timeout=300)
            assert p.returncode == 0, (tmp_path / f"second-err{n}.txt").read_text()[-3000:]
    finally:
        _kill(second)
    chief, other = (json.loads((tmp_path / f"second-out{n}.json").read_text()) for n in (0, 1))
    for result in (chief, other):
        assert result["training"]["resumed_from"] is not None, result["training"]
    assert (
        chief["training"]["resumed_from"]["global_step"]
        == other["training"]["resumed_from"]["global_step"]
        >= 3
    )
    assert chief["training"]["steps"] == other["training"]["steps"]
    assert chief["metrics"] == other["metrics"]  # identical weights on both workers
    assert chief["version"] and other["version"] == ""  # only the chief exports
    assert artifacts.latest_version(art) == chief["version"]
    assert not ckpt.exists()  # the completed run cleans up, worker scratch included
