"""A user's Python callable as an evaluator: ``module:function`` or ``path/to/file.py:function``.

The function is called as ``fn(model, tokenizer, **kwargs)`` and returns ``{name: score}``;
the config declares each score's direction.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evomerge.errors import ConfigError
from evomerge.evaluators.base import Direction, Evaluator, Metric, register_evaluator

__all__ = ["CallableEvaluator", "load_callable"]


def load_callable(spec: str) -> Callable[..., Any]:
    """Import ``module:function`` (or ``file.py:function``)."""
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise ConfigError(f"Callable {spec!r} must look like 'module:function'.")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise ConfigError(f"Callable file {module_name!r} does not exist.")
            mod_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"Cannot import {module_name!r} for callable {spec!r}: {exc}.") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"{module_name!r} has no callable {attr!r}.")
    return fn


@register_evaluator("callable")
class CallableEvaluator(Evaluator):
    """Args:
        function: ``module:function`` or ``file.py:function``.
        metrics: score name -> "maximize" | "minimize" (every name the function returns).
        kwargs: extra keyword arguments for the function.
    """

    def __init__(self, function: str, metrics: dict[str, Direction],
                 kwargs: dict[str, Any] | None = None) -> None:
        if not metrics:
            raise ConfigError(f"Callable evaluator {function!r} needs 'metrics' with a "
                              "direction per score.")
        self._fn = load_callable(function)
        self._name = function
        self._metrics = tuple(Metric(n, d) for n, d in metrics.items())
        self._kwargs = kwargs or {}

    @property
    def metrics(self) -> tuple[Metric, ...]:
        return self._metrics

    def __call__(self, model: Any, tokenizer: Any) -> dict[str, float]:
        scores = self._fn(model, tokenizer, **self._kwargs)
        if not isinstance(scores, dict):
            raise TypeError(f"{self._name} returned {type(scores).__name__}, not a dict of scores")
        missing = [m.name for m in self._metrics if m.name not in scores]
        if missing:
            raise KeyError(f"{self._name} did not return {missing}")
        return {m.name: float(scores[m.name]) if scores[m.name] is not None else math.nan
                for m in self._metrics}
