"""Ctrl-C in long-running commands: the first one stops the run, a second one at once.

Python's default SIGINT handler raises ``KeyboardInterrupt`` in whatever bytecode
the main thread runs next, and nothing remembers that the user asked to stop.
In a training run that bytecode is often TensorFlow's or Keras's, and some of it
catches everything: tf_keras' ``Sequential`` wraps its first symbolic build in a
bare ``except:`` (our towers are built that way, a fraction of a second after
the data is read), and so do a few TF helpers (``dtypes``, ``ops``,
``concrete_function``); an exception raised in a finaliser (``__del__``) is
printed and dropped. A Ctrl-C that landed there vanished and the run trained on
to its last epoch.

:func:`handled` installs a handler that *records* the request before raising
``KeyboardInterrupt``, so a swallowed exception is no longer a lost request:
long-running code calls :func:`check` at safe points (every training step,
between the phases of a run, before publishing) and it raises again.
:func:`deferred` holds the exception back over short sections that should not
be cut in half (writing a checkpoint); the request is still recorded and raised
when the section ends. Any other error that ends the block once Ctrl-C was
pressed leaves it as ``KeyboardInterrupt`` (native code may have turned the
interrupt into that error).

A second Ctrl-C exits at once with status 1, also while the main thread is
inside native code (a long TF op, a FAISS build), where no Python signal
handler can run: a watcher thread reads the signal numbers that CPython's
C-level handler writes to the wakeup fd (:func:`signal.set_wakeup_fd`) the
moment a signal arrives. Checkpoints and versions are written atomically, so
exiting there leaves a run as resumable as a killed one. Once the command has
returned, Python resets signal handlers to the default while it shuts down
(TensorFlow's teardown takes a second): a Ctrl-C then ends the process by
SIGINT, at once too (status 130 in a shell).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

#: The exit codes (docs/CONTRACT.md) are 0, 2 and 1 ("anything else"): an interrupted run is 1.
EXIT_STATUS = 1
#: What an interrupted ``train`` or ``pipeline`` tells the user (their runs checkpoint).
RESUME_HINT = "run the same command again to resume from the last checkpoint"

_requests = 0  # SIGINTs the Python-level handler has seen since :func:`handled` began
_deferring = 0  # depth of :func:`deferred` sections
_hint = ""


def requested() -> bool:
    """Whether Ctrl-C was pressed since :func:`handled` began (even if the exception was lost)."""
    return _requests > 0


def check() -> None:
    """Raise ``KeyboardInterrupt`` if Ctrl-C was pressed (outside a :func:`deferred` section).

    Call it at points where stopping is safe; it costs a global read.
    """
    if _requests and not _deferring:
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A section Ctrl-C does not cut: the request is recorded and raised when it ends.

    A second Ctrl-C still exits at once (see the module docstring).
    """
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    check()


def _exit_now() -> None:
    message = "twotower: interrupted again; exiting now"
    if _hint:
        message += f"; {_hint}"
    with contextlib.suppress(OSError):
        os.write(2, f"\n{message}\n".encode())
    os._exit(EXIT_STATUS)


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    global _requests
    _requests += 1
    if _requests >= 2:
        _exit_now()
    if not _deferring:
        raise KeyboardInterrupt


def _watch(fd: int) -> None:
    """Count SIGINTs from the wakeup fd; exit on the second. Ends at EOF (write end closed)."""
    seen = 0
    try:
        while True:
            try:
                data = os.read(fd, 512)
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
            if not data:
                return
            seen += data.count(int(signal.SIGINT))
            if seen >= 2:
                _exit_now()
    except OSError:
        return
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


@contextlib.contextmanager
def handled(hint: str = "") -> Iterator[None]:
    """Handle Ctrl-C as the module docstring says while the block runs.

    ``hint`` ends the message of a second Ctrl-C (e.g. how to resume). Outside
    the main thread, or when already active, the block runs unchanged. The
    previous handler comes back when the block ends normally or with an error;
    after an interrupt the handler stays, so that another Ctrl-C while the
    process winds down exits cleanly rather than with a traceback.
    """
    global _requests, _hint
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is _on_sigint
    ):
        yield
        return
    _requests, _hint = 0, hint
    previous = signal.signal(signal.SIGINT, _on_sigint)
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    try:
        old_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except ValueError:  # pragma: no cover - main thread checked above
        old_wakeup = -1
    if old_wakeup != -1:  # someone else (an event loop) reads signals there: leave it theirs
        signal.set_wakeup_fd(old_wakeup)
        os.close(read_fd)
        os.close(write_fd)
        write_fd = -1
    else:
        threading.Thread(
            target=_watch, args=(read_fd,), name="twotower-ctrl-c", daemon=True
        ).start()
    interrupted = False
    try:
        yield
    except KeyboardInterrupt:
        interrupted = True
        raise
    except Exception as exc:
        if not _requests:
            raise
        # Native code can turn the KeyboardInterrupt this handler raised into another
        # error (TensorFlow's C++ nest.flatten reports a SystemError, then a bare
        # TypeError): the user asked to stop, so it is an interrupt, not a failure.
        interrupted = True
        raise KeyboardInterrupt from exc
    finally:
        if not interrupted:
            if write_fd != -1:
                signal.set_wakeup_fd(-1)
                os.close(write_fd)  # the watcher sees EOF and ends
            signal.signal(signal.SIGINT, previous)
            _requests, _hint = 0, ""
