from .errors import ConfigError, Problem
from .load import Loaded, load

__all__ = ["ConfigError", "Loaded", "Problem", "load"]
