"""Ctrl-C handling (common.interrupts): a swallowed KeyboardInterrupt is not a lost
request, deferred sections finish first, a second Ctrl-C always exits.

Every signal is sent to a child process: the test process's own handlers stay as they are.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from common import interrupts

REPO = Path(__file__).resolve().parents[2]

# Runs the script's body under interrupts.handled(); prints what happened.
PRELUDE = """
import os, signal, sys, time
from common import interrupts

def ctrl_c():
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(2)  # the handler runs here (a signal interrupts the sleep)
"""


def _script(body: str, timeout: float = 60) -> subprocess.CompletedProcess:
    code = PRELUDE + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def test_a_swallowed_keyboard_interrupt_is_raised_again_at_the_next_check():
    proc = _script(
        """
        try:
            with interrupts.handled():
                try:
                    ctrl_c()
                except:  # noqa: E722 - what a library with a bare except does
                    print("swallowed", flush=True)
                print("requested", interrupts.requested(), flush=True)
                interrupts.check()
                print("not stopped", flush=True)
        except KeyboardInterrupt:
            print("stopped", flush=True)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:3] == ["swallowed", "requested True", "stopped"]


def test_an_error_after_a_ctrl_c_leaves_the_block_as_an_interrupt():
    # TensorFlow's C++ nest.flatten turns a KeyboardInterrupt raised inside it into a
    # SystemError, then a bare TypeError: the run must still end as interrupted.
    proc = _script(
        """
        for ask in (True, False):
            try:
                with interrupts.handled():
                    try:
                        if ask:
                            ctrl_c()
                        raise TypeError("not an interrupt")
                    except KeyboardInterrupt:
                        raise TypeError("mangled") from None
            except KeyboardInterrupt as exc:
                print("interrupted", repr(exc.__cause__), flush=True)
            except TypeError as exc:
                print("failed", repr(exc), flush=True)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == [
        "interrupted TypeError('mangled')",
        "failed TypeError('not an interrupt')",
    ]


def test_without_a_ctrl_c_check_does_nothing_and_the_previous_handler_comes_back():
    proc = _script(
        """
        before = signal.getsignal(signal.SIGINT)
        with interrupts.handled():
            assert signal.getsignal(signal.SIGINT) is not before
            interrupts.check()
            with interrupts.deferred():
                pass
        assert signal.getsignal(signal.SIGINT) is before
        assert signal.set_wakeup_fd(-1) == -1  # the wakeup fd is released too
        print("ok", interrupts.requested(), flush=True)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok False"


def test_a_deferred_section_runs_to_its_end_then_the_interrupt_is_raised():
    proc = _script(
        """
        try:
            with interrupts.handled():
                with interrupts.deferred():
                    ctrl_c()
                    print("section finished", interrupts.requested(), flush=True)
                print("not stopped", flush=True)
        except KeyboardInterrupt:
            print("stopped", flush=True)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["section finished True", "stopped"]


def test_check_does_nothing_when_not_handled():
    """Library callers (tests, the demo) that never install the handler are unaffected."""
    assert not interrupts.requested()
    interrupts.check()
    with interrupts.deferred():
        pass


@pytest.mark.slow
def test_tf_keras_swallows_a_ctrl_c_during_a_first_build_and_check_still_stops():
    """The root cause of the lost Ctrl-C: tf_keras' Sequential builds its graph network
    inside a bare ``except:``, so a KeyboardInterrupt raised while a layer is called is
    dropped (the towers are built that way right after the data is read)."""
    proc = _script(
        """
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        from trainer._tf import keras, tf

        class PressesCtrlC(keras.layers.Layer):
            pressed = False

            def call(self, x):
                if not self.pressed:  # once: Keras calls it again on the real input
                    self.pressed = True
                    ctrl_c()
                return x

        try:
            with interrupts.handled():
                model = keras.Sequential([PressesCtrlC(), keras.layers.Dense(2)])
                model(tf.zeros([1, 3]))
                print("build returned", interrupts.requested(), flush=True)
                interrupts.check()
                print("not stopped", flush=True)
        except KeyboardInterrupt:
            print("stopped", flush=True)
        """,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:2] == ["build returned True", "stopped"]


def _await_line(proc: subprocess.Popen, text: str) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if text in line:
            return
    raise AssertionError(f"{text!r} never printed: {proc.stderr.read() if proc.stderr else ''}")


def test_a_second_ctrl_c_exits_a_program_that_swallows_the_first():
    code = PRELUDE + textwrap.dedent(
        """
        with interrupts.handled(hint="do it again"):
            ready = False
            while True:
                try:  # "ready" is printed inside the try, so the first Ctrl-C lands in it
                    if not ready:
                        ready = True
                        print("ready", flush=True)
                    time.sleep(0.01)
                except BaseException:  # swallows every KeyboardInterrupt
                    print("swallowed", flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    _await_line(proc, "ready")
    proc.send_signal(signal.SIGINT)
    _await_line(proc, "swallowed")
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == interrupts.EXIT_STATUS == 1
    assert "twotower: interrupted again; exiting now; do it again" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_a_second_ctrl_c_exits_while_the_main_thread_is_inside_native_code():
    """A long TensorFlow op holds the main thread in C++: no Python handler can run until
    it returns, so the first Ctrl-C waits; the second one exits at once regardless."""
    code = PRELUDE + textwrap.dedent(
        """
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        from trainer._tf import tf

        @tf.function
        def forever():
            return tf.while_loop(
                lambda i: i < 10**15, lambda i: i + 1, [tf.constant(0, tf.int64)]
            )

        forever.get_concrete_function()  # traced before "ready": the 1 s wait is all op
        with interrupts.handled(hint="resume"):
            print("ready", flush=True)
            forever()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    _await_line(proc, "ready")
    time.sleep(1.0)  # inside the op
    proc.send_signal(signal.SIGINT)
    time.sleep(1.0)
    assert proc.poll() is None  # the first Ctrl-C waits for the op
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err[-2000:]
    assert time.monotonic() - started < 10
    assert "twotower: interrupted again; exiting now; resume" in err
    assert "Traceback" not in err


def _loading_tensorflow(pid: int) -> bool:
    """Whether the process has mapped TensorFlow's shared library (its import has begun)."""
    try:
        return "libtensorflow" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.slow
def test_ctrl_c_while_train_imports_tensorflow_stops_the_command(tmp_path):
    cmd = [sys.executable, "-m", "twotower.cli", "train", "--data", "synthetic:users=50,items=40"]
    proc = subprocess.Popen(
        [*cmd, "--out", str(tmp_path / "art"), "--epochs", "50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    deadline = time.monotonic() + 120
    while not _loading_tensorflow(proc.pid):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "TensorFlow never started loading"
        time.sleep(0.005)  # another process's state: polled
    proc.send_signal(signal.SIGINT)  # lands inside TensorFlow's import
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-2000:]
    assert f"twotower: interrupted; {interrupts.RESUME_HINT}" in err
    assert "Traceback" not in err and "reading synthetic" not in err
    assert not (tmp_path / "art" / "LATEST").exists()
