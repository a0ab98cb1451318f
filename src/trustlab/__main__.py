"""``python -m trustlab`` (and ``torchrun -m trustlab``): the command line."""

import sys

from trustlab.cli.main import main

sys.exit(main())
