"""The ``twotower`` command line: one entry point, one subcommand per job.

Exit codes (the same for every subcommand):

* 0 -- success; also ``--help``/``--version``, a ``pipeline`` run skipped
  for too few new events, and ``serve``/``demo`` shut down with Ctrl-C (SIGINT:
  a clean shutdown).
* 2 -- bad usage or bad input, the message says what and where: a flag
  argparse refuses, a config key or value (file, ``TWOTOWER_<SECTION>__<KEY>``,
  ``--set``), a data source that does not exist or a malformed line, a store
  URL, an artifact directory with nothing published or without the version,
  a port in use (``serve``, ``demo``). Checked before TensorFlow is imported
  or data is read wherever possible (:mod:`twotower.precheck`).
* 1 -- anything else: a failure while working (store unreachable, the API
  did not start, an unexpected error: logged with its traceback), the
  ``pipeline`` quality gate refusing a candidate, another ``pipeline`` run
  holding the lock, any other command interrupted with Ctrl-C.
* 128+N -- the process ended by signal N, as any program does (the shell
  shows 143 for SIGTERM, 137 for SIGKILL or the OOM killer; Python's
  ``subprocess`` shows -N). ``serve`` and ``demo`` first shut down gracefully
  on SIGTERM (what ``docker stop`` and a Kubernetes pod deletion send), then
  end with it: 143; ``serve --workers N`` (N > 1) ends a SIGTERM shutdown with 0.

uvicorn's own start-up status 3 is never returned: a port in use is 2, any
other start-up failure 1.

Heavy imports (TensorFlow, FAISS) happen inside the subcommand so ``--help``
is instant.

The environment is read here, once, at the start (:func:`read_environment`),
in the scheme of :mod:`common.config` (docs/CONTRACT.md, "Configuration"):
deprecated names are renamed first (a warning each; an old and a new name
with different values are exit 2), so the config layers after it
(``TWOTOWER_<SECTION>__<KEY>`` for ``train``/``pipeline``,
``TWOTOWER_SERVE__<FIELD>`` for ``serve``) and every process a command starts
see the new names only. ``TF_CONFIG`` (a multi-worker ``pipeline --snapshot``)
is parsed here too and handed down as ``args.task_role``.

The online store (``serve``, ``ingest``, ``pipeline``, ``forget``) is, in this
order: ``--store``, else ``$TWOTOWER_STORE__URL``, else the embedded
``sqlite:///twotower-store.sqlite`` in the working directory, so ``ingest``,
``pipeline`` and ``serve`` run from one directory share one store without a
flag. ``forget`` and a one-off ``pipeline`` refuse a SQLite store file that
does not exist (exit 2) rather than create an empty one (``pipeline --every``
may start before the store does); ``pipeline --snapshot`` reads no store. The
maintenance commands ``archive rebind`` and ``migrate-redis`` act on the one
store they are given.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Mapping, MutableMapping, Sequence

from common import interrupts
from common.tf_env import set_tensorflow_environment
from common.urls import DEFAULT_STORE_URL, OLD_STORE_URL_ENV, STORE_URL_ENV
from twotower.parser import build_parser

log = logging.getLogger("twotower")

#: Subcommands that use the online store, all with one default (module docstring).
STORE_COMMANDS = ("serve", "ingest", "pipeline", "forget")
#: Subcommands that always load TensorFlow (``pipeline`` loads it only when it trains).
TF_COMMANDS = ("demo", "train", "evaluate", "serve")


def _input_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean "bad usage or bad input" (exit 2)."""
    from common.artifacts import ArtifactError
    from common.config import ConfigError
    from feature_store.events import EventError

    types: list[type[BaseException]] = [ConfigError, EventError, ArtifactError]
    try:
        from trainer.data.errors import DataError

        types.append(DataError)
    except ImportError:  # pragma: no cover - partial installs
        pass
    # A version that cannot initialise the requested model (architecture changed).
    # Looked up, not imported: it lives beside TensorFlow, and if its module was
    # never loaded the exception cannot be one.
    warmstart = sys.modules.get("trainer.warmstart")
    if warmstart is not None:
        types.append(warmstart.WarmStartError)
    try:
        from feature_store.options import StoreURLError

        types.append(StoreURLError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


def store_from_environment(args: argparse.Namespace, environ: Mapping[str, str]) -> None:
    """Fill a missing ``args.store``: ``$TWOTOWER_STORE__URL``, else :data:`DEFAULT_STORE_URL`.

    One rule for every command with ``--store``, ``serve`` included (module
    docstring); ``pipeline --snapshot`` reads no store and keeps None.
    """
    if args.command not in STORE_COMMANDS or getattr(args, "store", None) is not None:
        return
    if args.command == "pipeline" and getattr(args, "snapshot", None):
        return
    args.store = environ.get(STORE_URL_ENV) or DEFAULT_STORE_URL


def deprecated_names(environ: Mapping[str, str]) -> dict[str, str]:
    """Old name -> new name of every variable ``twotower`` renames: the store's, and the
    serve settings' while any ``TWOTOWER_SERVE_*`` variable is set (their list is
    :mod:`serving.settings`', imported only then)."""
    renames = {old: STORE_URL_ENV for old in OLD_STORE_URL_ENV}
    if any(name.upper().startswith("TWOTOWER_SERVE_") for name in environ):
        from serving.settings import deprecated_env

        renames.update(deprecated_env())
    return renames


def read_environment(args: argparse.Namespace, environ: MutableMapping[str, str]) -> list[str]:
    """Everything ``twotower`` takes from its environment, read once (module docstring).

    Renames the deprecated names in ``environ`` (``os.environ``: the config layers
    and the processes a command starts read it after this), checks the ``store``
    section, fills ``args.store``, and for ``pipeline`` sets ``args.task_role``
    (``TF_CONFIG`` of a ``--snapshot`` run; a single process otherwise).

    Returns:
      The warnings to show (one per deprecated name found).

    Raises:
      ConfigError: an old and a new name with different values, an unknown
        ``TWOTOWER_STORE__*`` name, a ``TF_CONFIG`` that does not parse.
    """
    from common.config import check_section_env, rename_deprecated

    warnings = rename_deprecated(environ, deprecated_names(environ))
    check_section_env(environ, "store", ["url"])
    store_from_environment(args, environ)
    if args.command == "pipeline":
        from trainer.chief import TF_CONFIG_ENV, TaskRole, parse_tf_config

        snapshot = getattr(args, "snapshot", None)
        args.task_role = parse_tf_config(environ.get(TF_CONFIG_ENV)) if snapshot else TaskRole()
    return warnings


#: Commands whose Ctrl-C is recorded from the start (TensorFlow start-up included), so
#: one that library code swallows still stops them; serve and demo stop through uvicorn.
INTERRUPTIBLE = {
    "train": interrupts.RESUME_HINT,
    "pipeline": interrupts.RESUME_HINT,
    "evaluate": "",
}


def _ctrl_c_handled(command: str) -> contextlib.AbstractContextManager[None]:
    if command in INTERRUPTIBLE:
        return interrupts.handled(hint=INTERRUPTIBLE[command])
    return contextlib.nullcontext()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Library chatter (FAISS's loader probing CPU variants, TF's absl INFO) is not the user's business.
    for noisy in ("faiss.loader", "absl", "tensorflow", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    set_tensorflow_environment()
    try:
        for warning in read_environment(args, os.environ):
            log.warning("%s", warning)
        from twotower.precheck import check_args

        check_args(args)  # milliseconds, before TensorFlow and before any data is read
        with _ctrl_c_handled(args.command):
            if args.command in TF_COMMANDS:  # before anything imports it: its notices are noise
                from common.tf_logging import import_tensorflow_quietly

                import_tensorflow_quietly()
                # TensorFlow's import runs bare ``except:`` blocks: a Ctrl-C they swallowed
                # is still recorded (common.interrupts) and stops the command here.
                interrupts.check()
            return args.func(args)
    except KeyboardInterrupt:
        # The exit codes (docs/CONTRACT.md) are 0, 2 and 1 ("anything else"): an interrupted run is 1.
        # Training checkpoints as it goes: the same command picks up where this one stopped.
        from common.interrupts import EXIT_STATUS, RESUME_HINT

        resumable = args.command in ("train", "pipeline")
        print(
            "twotower: interrupted" + (f"; {RESUME_HINT}" if resumable else ""),
            file=sys.stderr,
            flush=True,
        )
        return EXIT_STATUS
    except Exception as exc:
        if isinstance(exc, _input_error_types()):
            print(f"twotower {args.command}: error: {exc}", file=sys.stderr)
            return 2
        log.exception("twotower %s failed", args.command)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
