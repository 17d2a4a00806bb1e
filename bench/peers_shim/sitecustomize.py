"""Loads the mergekit-evolve CPU shim in every process of the benchmarked run (Ray workers
inherit PYTHONPATH from `ray start`); see mkevo_shim.py."""

import mkevo_shim  # noqa: F401
