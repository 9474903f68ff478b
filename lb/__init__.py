"""lb: a Layer-7 load balancer and traffic controller for containers."""

from .compiled import install_source_first

__version__ = "0.1.0"

install_source_first()
