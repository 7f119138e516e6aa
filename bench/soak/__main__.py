"""``python -m bench.soak``."""

import sys

from bench.soak.report import main

sys.exit(main())
