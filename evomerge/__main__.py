"""``python -m evomerge`` = the ``evomerge`` command."""

import sys

from evomerge.cli import main

sys.exit(main())
