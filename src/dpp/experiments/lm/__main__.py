"""``python -m dpp.experiments.lm ARGS``: the same as ``dpp lm ARGS``."""

import sys

from ..cli import main

sys.exit(main(["lm", *sys.argv[1:]]))
