"""The soak's own world: a redis-server, a fillable artifact volume, memory, versions."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from common import artifact_format, artifacts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _twotower() -> list[str]:
    exe = Path(sys.executable).with_name("twotower")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "twotower.cli"]


# --- owned processes and the artifact volume ---------------------------------------------


class RedisServer:
    """A ``redis-server`` the run owns: AOF with fsync on every write, in ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.workdir), "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 1),
            ):
                out = subprocess.run(
                    ["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True
                )
                if out.stdout.strip() == "PONG":
                    return
            time.sleep(0.05)  # polling a process we started: no event to await
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


class ArtifactVolume:
    """The artifact directory, on a small tmpfs when one can be mounted (so it can fill)."""

    def __init__(self, path: Path, size_mb: int) -> None:
        self.path = path
        self.filler = path / ".filler"
        path.mkdir(parents=True)
        out = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
            capture_output=True, text=True,
        )  # fmt: skip
        self.mounted = out.returncode == 0
        self.why_not = "" if self.mounted else (out.stderr.strip() or "mount failed")

    def fill(self, leave_bytes: int = 16 * 1024) -> int:
        """Write a filler file until only ``leave_bytes`` are free; return the free bytes."""
        free = shutil.disk_usage(self.path).free
        with open(self.filler, "wb") as f:
            chunk = b"\0" * (1 << 20)
            todo = max(0, free - leave_bytes)
            with contextlib.suppress(OSError):
                while todo > 0:
                    todo -= f.write(chunk[: min(len(chunk), todo)])
        return shutil.disk_usage(self.path).free

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its children (uvicorn workers), from /proc."""
    total = 0
    pids = [pid]
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


# --- versions ------------------------------------------------------------------------------


def catalog(art: Path, version: str) -> set[str]:
    items = artifacts.version_dir(art, version) / artifacts.ITEMS
    return set(artifact_format.read_item_ids(items).astype(str).tolist())


def copy_version(art: Path, source: str) -> str:
    """A complete copy of ``source`` under a new id (not published)."""
    new = artifacts.new_version_id()
    staging = art / "versions" / f".soak-{new}"
    shutil.copytree(art / "versions" / source, staging)
    manifest = json.loads((staging / "manifest.json").read_text())
    manifest["version"] = new
    (staging / "manifest.json").write_text(json.dumps(manifest))
    staging.rename(art / "versions" / new)
    return new


def corrupt_versions(art: Path, good: str) -> list[tuple[str, str]]:
    """Two broken copies of ``good``: a truncated index, a manifest that disagrees with its items."""
    truncated = copy_version(art, good)
    index = art / "versions" / truncated / "index.faiss"
    with open(index, "r+b") as f:
        f.truncate(max(1, index.stat().st_size // 3))
    disagrees = copy_version(art, good)
    mpath = art / "versions" / disagrees / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["embedding_dim"] = int(manifest["embedding_dim"]) + 3
    mpath.write_text(json.dumps(manifest))
    return [(truncated, "truncated index"), (disagrees, "manifest disagrees with items")]
