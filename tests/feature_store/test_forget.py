"""``twotower forget``: erasure from the command line, with the exit codes of docs/CONTRACT.md (0 / 2 / 1)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from feature_store import archive as fslog
from feature_store import make_event, open_store
from feature_store.base import user_hash
from tests.feature_store.conftest import Backend
from tests.feature_store.servers import free_port
from twotower import cli

T0 = 1_700_000_000.0


def _seed(url: str) -> None:
    events = [
        make_event({"event_id": f"f{i}", "user_id": ["ann", "bob", "cy"][i % 3], "item_id": f"i{i}",
                    "type": ["like", "dislike"][i % 2], "ts": T0 + i})
        for i in range(9)
    ]  # fmt: skip

    async def go() -> None:
        async with open_store(url) as store:
            await store.append_events(events)

    asyncio.run(go())


def test_forget_erases_users_and_purges_an_export(
    backend: Backend, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed(backend.url)
    out = tmp_path / "events"
    fslog.compact(backend.url, out)
    argv = [
        "forget",
        "--store",
        backend.url,
        "--user",
        "ann",
        "--user",
        "bob",
        "--export",
        str(out),
    ]
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary == {"users": 2, "log_events_removed": 6, "export_rows_removed": 6}
    assert {e.user_id for e in fslog.read_compacted(out)} == {"cy"}

    async def check() -> None:
        async with open_store(backend.url) as store:
            states = await store.get_users(["ann", "bob", "cy"])
            assert not states["ann"].known and not states["bob"].known and states["cy"].known
            assert {user_hash("ann"), user_hash("bob")} <= set(await store.forgotten_users())

    asyncio.run(check())
    assert cli.main(argv) == 0  # erasure is idempotent
    assert json.loads(capsys.readouterr().out.strip())["log_events_removed"] == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--store", "mysql://db/x", "--user", "u"], "unknown scheme 'mysql'"),
        (["--store", "sqlite:///{tmp}/s.sqlite", "--user", ""], "--user: must be 1..256"),
        (
            ["--store", "sqlite:///{tmp}/s.sqlite", "--user", "u", "--export", "{tmp}"],
            "not an export",
        ),
    ],
)
def test_bad_input_exits_2_and_erases_nothing(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert cli.main(["forget", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s.sqlite").exists()


def test_an_unreachable_store_exits_1(caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0?retries=0&socket_timeout=0.2"
    assert cli.main(["forget", "--store", url, "--user", "u"]) == 1
    assert "StoreUnavailable" in caplog.text and "PING failed" in caplog.text


def test_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["forget", "--store", "sqlite:///x.sqlite"])  # no --user
    assert info.value.code == 2
