"""The study dashboard: ``evomerge dashboard`` (see :mod:`evomerge.dashboard.server`)."""
