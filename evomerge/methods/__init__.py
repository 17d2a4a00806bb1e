"""Merge methods: pure tensor functions registered by name with a parameter spec."""

from evomerge.methods import (  # noqa: F401  (registers)
    interpolate,
    lorahub,
    sce,
    sphere,
    task_arithmetic,
)
from evomerge.methods.spec import METHODS, MergeMethod, ParamSpec, get_method, register

__all__ = ["METHODS", "MergeMethod", "ParamSpec", "get_method", "register"]
