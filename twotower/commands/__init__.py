"""One module per ``twotower`` subcommand: flags in, a typed library call, an exit status out.

``argparse`` is used here and in :mod:`twotower.cli` only; the libraries take typed
arguments (see ``docs/ARCHITECTURE.md``).
"""
