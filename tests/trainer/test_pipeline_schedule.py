"""``twotower pipeline --every``: when runs start, and that a failing run does not stop the schedule."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.config import ConfigError
from trainer.pipeline.schedule import backoff_delay, is_cron, next_run_delay, run_forever
from trainer.pipeline.state import PipelineLocked

REPO = Path(__file__).resolve().parents[2]
MINUTE = 1_800_000_000.0  # a whole minute (and hour: 1_800_000_000 = 16:00:00 UTC)


class FakeTime:
    """A clock that only moves when the scheduler sleeps; records every start."""

    def __init__(self, now: float):
        self.now = now
        self.starts: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds

    def run(self, outcomes: list):
        def one() -> int:
            self.starts.append(self.now)
            self.now += 5.0  # a run takes five seconds
            outcome = outcomes.pop(0)
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

        return one


def test_schedule_parsing():
    assert next_run_delay("3600") == 3600
    assert 0 < next_run_delay("*/5 * * * *", now=MINUTE + 1) <= 300
    assert not is_cron("3600") and is_cron("0 */6 * * *")
    with pytest.raises(ConfigError, match="cron"):
        next_run_delay("every tuesday")
    with pytest.raises(ConfigError, match="positive"):
        next_run_delay("-5")


def test_cron_waits_for_the_first_fire_time():
    t = FakeTime(MINUTE + 60)  # 16:01
    run_forever("0 * * * *", t.run([0, 0]), clock=t.clock, sleep=t.sleep, max_runs=2)
    assert t.starts == [MINUTE + 3600, MINUTE + 7200]  # 17:00, 18:00; nothing at 16:01


def test_run_now_also_runs_at_start():
    t = FakeTime(MINUTE + 60)
    run_forever("0 * * * *", t.run([0, 0]), run_now=True, clock=t.clock, sleep=t.sleep, max_runs=2)
    assert t.starts == [MINUTE + 60, MINUTE + 3600]


def test_an_interval_runs_at_start_then_pauses_between_runs():
    t = FakeTime(MINUTE)
    run_forever("600", t.run([0, 0, 0]), clock=t.clock, sleep=t.sleep, max_runs=3)
    assert t.starts == [MINUTE, MINUTE + 605, MINUTE + 1210]


def test_failures_are_logged_backed_off_and_the_schedule_goes_on(caplog):
    t = FakeTime(MINUTE)
    outcomes = [RuntimeError("store down"), RuntimeError("store down"), OSError("disk"), 0, 0]
    code = run_forever("10", t.run(outcomes), clock=t.clock, sleep=t.sleep, max_runs=5)
    assert code == 0 and not outcomes
    gaps = [b - a - 5.0 for a, b in zip(t.starts, t.starts[1:], strict=False)]
    # 30 s, 60 s, 120 s of back-off after 1, 2, 3 failures in a row; then the interval again.
    assert gaps == [backoff_delay(1), backoff_delay(2), backoff_delay(3), 10.0]
    assert backoff_delay(1) == 30.0 and backoff_delay(20) == 3600.0
    assert caplog.text.count("pipeline run failed") == 3 and "store down" in caplog.text


def test_a_locked_run_is_skipped_without_back_off():
    t = FakeTime(MINUTE)
    outcomes = [PipelineLocked("another run"), 0]
    run_forever(
        "10",
        t.run(outcomes),
        skip_errors=(PipelineLocked,),
        clock=t.clock,
        sleep=t.sleep,
        max_runs=2,
    )
    assert t.starts == [MINUTE, MINUTE + 15]


def test_interrupts_are_not_swallowed():
    t = FakeTime(MINUTE)
    with pytest.raises(KeyboardInterrupt):
        run_forever("10", t.run([KeyboardInterrupt()]), clock=t.clock, sleep=t.sleep)


def test_a_bad_schedule_is_refused_before_any_run():
    t = FakeTime(MINUTE)
    with pytest.raises(ConfigError):
        run_forever("*/99 * * *", t.run([0]), clock=t.clock, sleep=t.sleep)
    assert t.starts == []


def test_the_command_waits_for_the_cron_fire_time(tmp_path):
    """A real process with a yearly cron: it must wait, not archive or train at start."""
    art = tmp_path / "art"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "twotower.cli",
            "pipeline",
            "--store",
            f"sqlite:///{tmp_path / 's.sqlite'}",
            "--artifacts",
            str(art),
            "--every",
            "0 0 1 1 *",
        ],
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 120
        line = ""
        while "next pipeline run at" not in line:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "the scheduler exited"
            assert time.monotonic() < deadline
        assert proc.poll() is None  # still waiting
        assert not art.exists(), "a run started before the first fire time"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
