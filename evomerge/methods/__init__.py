"""Merge methods: pure tensor functions registered by name with a parameter spec."""

from evomerge.methods import interpolate, sce, sphere, task_arithmetic  # noqa: F401  (registers)
from evomerge.methods.spec import METHODS, MergeMethod, ParamSpec, get_method, register

__all__ = ["METHODS", "MergeMethod", "ParamSpec", "get_method", "register"]
