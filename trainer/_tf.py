"""Import TensorFlow with the Keras 2 API that TFRS needs.

TFRS 0.7 is written against Keras 2 (``tf_keras``); ``TF_USE_LEGACY_KERAS``
must be set before TensorFlow is first imported. Every trainer module imports
``tf`` from here.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

__all__ = ["tf", "keras"]
