"""Reading a config document and reporting why it is invalid: a YAML path, YAML text or a dict
as a mapping (through the bounded loader of :mod:`evomerge.engine.safe_yaml`), and a pydantic
``ValidationError`` as one sentence naming the field and the value. Recipes, search spaces,
mergekit-evolve configs and the CLI's option blocks all go through here."""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from evomerge.engine.safe_yaml import load_yaml, read_yaml_text
from evomerge.errors import ConfigError

__all__ = ["RECIPE_PARAM_HINT", "brief", "format_validation_error", "read_mapping", "yaml_mapping"]


RECIPE_PARAM_HINT = ("must be a number, true/false, a list of numbers (a gradient over layers) "
                     "or a list of {filter, value} entries")


def format_validation_error(err: ValidationError, source: str,
                            param_hint: str = RECIPE_PARAM_HINT) -> str:
    """One sentence naming the field and the value of the first validation error;
    ``param_hint`` says what a value under ``parameters`` may be."""
    errors = err.errors()
    # A non-finite number fails every member of a union; that is the error to report.
    first = next((e for e in errors if e["type"] == "finite_number"), errors[0])
    parts = [str(p) for p in first["loc"] if not str(p).startswith("function-")]
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "finite_number":
        if "parameters" in parts:
            parts = parts[: parts.index("parameters") + 2]
        return (f"{source}: field {'.'.join(parts)!r} must be a finite number "
                f"(got {brief(first.get('input'))}).")
    if "parameters" in parts and len(parts) > parts.index("parameters") + 1:
        # A parameter value failed every member of the union: say what is allowed instead.
        parts = parts[: parts.index("parameters") + 2]
        msg = param_hint
    loc = ".".join(parts)
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown field {loc!r}."
    if first["type"] in ("value_error", "assertion_error") or not loc:
        return f"{source}: {msg}."
    return f"{source}: field {loc!r} {msg[:1].lower() + msg[1:]} (got {brief(first.get('input'))})."


def brief(value: Any, limit: int = 120) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error message quotes the value, never
    a whole (possibly huge) tree."""
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxdict = 3, 6, 6
    short.maxstring = short.maxother = limit
    text = short.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_mapping(source: str | Path | dict[str, Any], what: str,
                 expected: str = "a YAML mapping") -> tuple[dict[str, Any], str]:
    """``(data, name)`` from a YAML path, YAML text or a dict; ``name`` is the file path, or
    ``what`` for text and dicts. A missing file, bad YAML, YAML over the limits of
    :mod:`evomerge.engine.safe_yaml` or a non-mapping is a ConfigError naming the file (and
    the line and column of a YAML error)."""
    if isinstance(source, dict):
        return source, what
    name, text = what, str(source)
    if isinstance(source, Path) or ("\n" not in text and text.endswith((".yaml", ".yml"))):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"{what[:1].upper() + what[1:]} file {str(path)!r} does not exist.")
        name, text = str(path), read_yaml_text(path)
    return yaml_mapping(text, name, expected), name


def yaml_mapping(text: str, what: str, expected: str = "a YAML mapping") -> dict[str, Any]:
    """The mapping YAML ``text`` holds (never read as a file name), under the limits of
    :mod:`evomerge.engine.safe_yaml`; ``what`` names it in messages.

    Raises:
        ConfigError: bad YAML, over a limit, or not a mapping.
    """
    data = load_yaml(text, what)
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be {expected}.")
    return data
