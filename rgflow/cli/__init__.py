"""The ``rgflow`` command line, one module per command group: :mod:`~rgflow.cli.main` (``train``, ``eval``,
``sample``, ``mcmc``, ``demo``), :mod:`~rgflow.cli.diffuse`, :mod:`~rgflow.cli.images`,
:mod:`~rgflow.cli.probe`; :mod:`~rgflow.cli.common` holds what they share. Each builds a config and
calls a library function."""
from rgflow.cli.main import build_parser, config_from_args, main

__all__ = ["main", "build_parser", "config_from_args"]
