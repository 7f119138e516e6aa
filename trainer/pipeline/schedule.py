"""``twotower pipeline --every``: run the pipeline on a schedule, in one long-lived process.

Two forms of ``--every``:

* an interval in seconds (``3600``): the first run starts at once, the next one
  that many seconds after a run ends (a fixed pause, so runs never overlap);
* a cron expression (``0 */6 * * *``, UTC): runs start at the fire times, and the
  first one waits for the first fire time, like a crontab entry. ``--run-now``
  also runs once at start.

A run that raises does not stop the scheduler: the error is logged (the run
wrote its ``failed`` report), and the next attempt waits for the next scheduled
time, or longer after repeated failures (exponential back-off, 30 s doubling,
capped at 1 h), so a persistent fault (store down) cannot spin the loop. A run
that finds the lock taken (another pipeline run) is logged and skipped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from common.config import ConfigError

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 30.0
BACKOFF_CAP_S = 3600.0


def is_cron(every: str) -> bool:
    """True when ``every`` is a cron expression rather than a number of seconds."""
    try:
        float(every)
    except ValueError:
        return True
    return False


def next_run_delay(every: str, now: float | None = None) -> float:
    """Seconds from ``now`` until the next run: ``every`` is seconds (``3600``) or a cron expression.

    Raises:
      ConfigError: neither a positive number nor a valid cron expression.
    """
    now = time.time() if now is None else now
    if is_cron(every):
        from croniter import croniter

        if not croniter.is_valid(every):
            raise ConfigError(
                f"--every {every!r}: not a number of seconds nor a valid cron expression "
                "(e.g. 3600 or '0 */6 * * *')"
            )
        return max(0.0, croniter(every, now).get_next(float) - now)
    seconds = float(every)
    if seconds <= 0:
        raise ConfigError(f"--every {every!r}: the interval must be positive")
    return seconds


def backoff_delay(failures: int) -> float:
    """The minimum pause after ``failures`` consecutive failed runs (0 = no back-off)."""
    if failures <= 0:
        return 0.0
    return min(BACKOFF_BASE_S * 2.0 ** (failures - 1), BACKOFF_CAP_S)


def run_forever(
    every: str,
    run: Callable[[], int],
    *,
    run_now: bool = False,
    skip_errors: tuple[type[BaseException], ...] = (),
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    max_runs: int | None = None,
) -> int:
    """Call ``run`` on the schedule ``every`` until interrupted (or ``max_runs`` calls).

    Args:
      every: seconds or a cron expression (validated first: a ConfigError stops it).
      run: one pipeline run; returns its exit code. Exceptions are logged and
        backed off; those in ``skip_errors`` (another run holds the lock) are only logged.
      run_now: with a cron expression, also run once at start (intervals always do).
      clock, sleep, max_runs: injectable for tests.
    Returns:
      the exit code of the last run (only reached with ``max_runs``).
    """
    next_run_delay(every, clock())  # refuse a bad schedule before anything runs
    code = 0
    failures = 0
    runs = 0
    if is_cron(every) and not run_now:
        _wait(next_run_delay(every, clock()), every, sleep, clock)
    while max_runs is None or runs < max_runs:
        runs += 1
        try:
            code = run()
            failures = 0
        except skip_errors as exc:
            log.warning("pipeline run skipped: %s", exc)
            code = 1
        except Exception:
            failures += 1
            code = 1
            log.exception("pipeline run failed (%d in a row); the schedule continues", failures)
        if max_runs is not None and runs >= max_runs:
            break
        delay = max(next_run_delay(every, clock()), backoff_delay(failures))
        _wait(delay, every, sleep, clock)
    return code


def _wait(delay: float, every: str, sleep: Callable[[float], None], clock: Callable[[], float]):
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(clock() + delay))
    log.info("next pipeline run at %s (in %.0f s; schedule %s)", at, delay, every)
    sleep(delay)
