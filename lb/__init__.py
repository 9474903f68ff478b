"""lb: a Layer-7 load balancer and traffic controller for containers."""

__version__ = "0.1.0"
