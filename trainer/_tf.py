"""Import TensorFlow with the Keras 2 API that TFRS needs.

TFRS 0.7 is written against Keras 2 (``tf_keras``), selected by the environment
switch of :mod:`common.tf_env` before TensorFlow is first imported. Every trainer
module imports ``tf`` from here.
"""

from __future__ import annotations

from common.tf_env import set_tensorflow_environment

set_tensorflow_environment()

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

__all__ = ["tf", "keras"]
