"""Names that become paths or command-line words: study names, recipe stage names.

A study name is a directory under ``--results`` (``results/<study>/``), a word of a Slurm
job script (``#SBATCH --job-name=evomerge-<study>``) and an argument of the commands that
resume it; a stage name is a directory under the stages directory. So they are limited to a
safe alphabet: ASCII letters, digits, ``_``, ``.`` and ``-``, starting with a letter or digit
(never ``.``, ``..``, an absolute path, an option such as ``--output=...``, a space or a
``%``), at most 100 characters.

>>> check_name("zoo_mixed-2.b", "study name")
'zoo_mixed-2.b'
"""

from __future__ import annotations

import re
from typing import Any

from evomerge.errors import ConfigError

__all__ = ["SAFE_NAME", "check_name", "is_safe_name"]

# anchored for pydantic's ``pattern=`` (which searches); checked with fullmatch here, since
# ``$`` alone also matches before a final newline
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_RULE = ("letters, digits, '_', '.' and '-' only, starting with a letter or digit, at most "
         "100 characters")


def is_safe_name(value: Any) -> bool:
    """Whether ``value`` is a string in the safe alphabet."""
    return isinstance(value, str) and SAFE_NAME.fullmatch(value) is not None


def check_name(value: Any, what: str) -> str:
    """``value`` if it is a safe name, else a ConfigError naming ``what`` and the value.

    Raises:
        ConfigError: not a string, or outside the safe alphabet.
    """
    if not isinstance(value, str):
        raise ConfigError(f"The {what} {value!r} must be text ({_RULE}); quote it in YAML.")
    if not is_safe_name(value):
        raise ConfigError(f"The {what} {value[:120]!r} is not allowed: use {_RULE}.")
    return value
