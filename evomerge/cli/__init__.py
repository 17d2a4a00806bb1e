"""The ``evomerge`` command: argument parsing (:mod:`~evomerge.cli.app`), the Slurm
commands, terminal tables and progress bars, and the zoo quickstart. It parses and calls the
library (:mod:`evomerge.commands`, :mod:`evomerge.search`, :mod:`evomerge.engine`); nothing
below imports it."""

from evomerge.cli.app import main

__all__ = ["main"]
