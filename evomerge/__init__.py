"""evomerge: evolutionary merge-recipe optimizer for language models."""

from evomerge.errors import ConfigError, EvomergeError, ModelError
from evomerge.methods import METHODS, get_method

__version__ = "0.1.0"
__all__ = ["EvomergeError", "ConfigError", "ModelError", "METHODS", "get_method"]
