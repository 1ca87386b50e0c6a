"""``python -m dpp`` (and ``torchrun -m dpp train ...``): the dpp command line."""

import sys

from dpp.experiments.cli import main

if __name__ == "__main__":
    sys.exit(main())
