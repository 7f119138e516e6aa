"""The TensorFlow environment switch, set in one place before TensorFlow is first imported.

TFRS 0.7 is written against Keras 2 (``tf_keras``): ``TF_USE_LEGACY_KERAS=1``
makes ``tf.keras`` that Keras, and it only works if it is set before the first
``import tensorflow``. ``TF_CPP_MIN_LOG_LEVEL=2`` keeps TensorFlow's own INFO
and WARNING lines out of the output. Both are defaults: a value already in the
environment wins.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

TF_DEFAULTS = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


def set_tensorflow_environment(environ: MutableMapping[str, str] | None = None) -> None:
    """Set :data:`TF_DEFAULTS` in ``environ`` (``os.environ``) where not already set."""
    env = os.environ if environ is None else environ
    for name, value in TF_DEFAULTS.items():
        env.setdefault(name, value)
