"""The ``embench`` command line: a thin shell over the Python API, with rich output."""

from embench.cli.root import app, main

__all__ = ["app", "main"]
