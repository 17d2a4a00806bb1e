"""Error types. Every error evomerge raises on purpose derives from :class:`EvomergeError`.

Messages are sentences a user can act on: they name the field and the value at fault.
The CLI turns any ``EvomergeError`` into one line on stderr and exit code 2.
"""

from __future__ import annotations

__all__ = ["EvomergeError", "ConfigError", "ModelError", "OutputError", "UnknownNameError"]


class EvomergeError(Exception):
    """Root of all errors raised by evomerge for user-facing conditions."""


class ConfigError(EvomergeError):
    """A recipe, search space or option is invalid (raised before any weights are read)."""


class ModelError(EvomergeError):
    """A source model is missing, unreadable or incompatible with the others."""


class OutputError(EvomergeError):
    """An output cannot be written (a full disk, an existing file); nothing was written."""


class UnknownNameError(ConfigError, KeyError):
    """A lookup in a registry failed; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])
