"""Tollgate: an intercepting HTTPS egress proxy with data-loss prevention."""

__version__ = "0.1.0"
