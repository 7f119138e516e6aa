"""TensorFlow's start-up chatter, kept out of the user's terminal; its real errors are not.

Importing TensorFlow 2.21 on a CPU machine prints, before any of our code runs:

* ``WARNING: All log messages before absl::InitializeLog() is called are written
  to STDERR`` and the oneDNN notice (``oneDNN custom operations are on...``),
  twice: absl's pre-initialisation logging, which ``TF_CPP_MIN_LOG_LEVEL`` does
  not reach;
* the CPU-feature notice (``This TensorFlow binary is optimized...``);
* on a machine without an NVIDIA GPU, ``failed call to cuInit: ... (303)`` at
  the first device query: an error-level line about a GPU that is not there.

:func:`import_tensorflow_quietly` imports TensorFlow and runs the device query
with file descriptor 2 redirected to a temporary file, then writes back every
captured line except those exact notices (the cuInit line only when the
machine has no NVIDIA device node). Anything else TensorFlow prints, and any
exception, still reaches stderr. It also drops the Keras warning "Model's
``__init__()`` arguments contain non-serializable objects", printed at every
export: it is about reloading a subclassed Keras model with ``get_config``,
and versions are reloaded as SavedModel signatures, never that way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from common.tf_env import set_tensorflow_environment

BENIGN = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called"),
    re.compile(r"^I\d{4} [\d:.]+\s+\d+ port\.cc:\d+\] oneDNN custom operations are on\."),
    re.compile(r"^I\d{4} [\d:.]+\s+\d+ cpu_feature_guard\.cc:\d+\] This TensorFlow binary"),
    re.compile(r"^To enable the following instructions: .* rebuild TensorFlow"),
)
NO_GPU = re.compile(r"^E\d{4} [\d:.]+\s+\d+ cuda_\w+\.cc:\d+\] failed call to cuInit")
NON_SERIALIZABLE = "Model's `__init__()` arguments contain non-serializable objects"


def has_nvidia_device() -> bool:
    """Whether the NVIDIA driver exposes a device here (then a cuInit failure is real)."""
    return Path("/proc/driver/nvidia/version").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


def keep_line(line: str, gpu_present: bool) -> bool:
    """False for the start-up notices listed in the module docstring."""
    if any(p.search(line) for p in BENIGN):
        return False
    return gpu_present or not NO_GPU.search(line)


@contextlib.contextmanager
def filtered_stderr(gpu_present: bool) -> Iterator[None]:
    """Capture fd 2 (C++ and Python writes alike) and write back what :func:`keep_line` keeps."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")
            kept = [ln for ln in text.splitlines(keepends=True) if keep_line(ln, gpu_present)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _DropNonSerializableWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return NON_SERIALIZABLE not in record.getMessage()


def import_tensorflow_quietly() -> None:
    """Import TensorFlow (once) without its start-up notices; see the module docstring."""
    set_tensorflow_environment()
    tf_logger = logging.getLogger("tensorflow")
    if not any(isinstance(f, _DropNonSerializableWarning) for f in tf_logger.filters):
        tf_logger.addFilter(_DropNonSerializableWarning())
    if "tensorflow" in sys.modules:
        return
    with filtered_stderr(has_nvidia_device()):
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # where cuInit runs
