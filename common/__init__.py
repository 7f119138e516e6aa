"""The ground layer: what every other package shares and nothing of ours is imported by.

The artifact format and publishing (:mod:`common.artifacts`, :mod:`common.artifact_format`),
configuration loading (:mod:`common.config`), durable file writes (:mod:`common.files`),
store-URL redaction and the default store (:mod:`common.urls`), the TensorFlow
environment switch (:mod:`common.tf_env`, :mod:`common.tf_logging`) and Ctrl-C
handling (:mod:`common.interrupts`). See ``docs/ARCHITECTURE.md``.
"""

#: The product's version (``twotower --version``, ``GET /v1/health``); the same as pyproject's.
__version__ = "0.1.0"
