"""Stage 12, the ``fungi-ssl`` command: options, help and messages over the package.

Holds :mod:`~fungi_ssl.cli.app` (the command group, its one-line errors and the
helpers the commands share; its docstring describes the command) and one
module per subcommand: :mod:`~fungi_ssl.cli.download`, :mod:`~fungi_ssl.cli.fit`,
:mod:`~fungi_ssl.cli.predict_map`, :mod:`~fungi_ssl.cli.trend` and
:mod:`~fungi_ssl.cli.book`. Importing this package registers them all on
:data:`app`, the ``[project.scripts]`` entry point.

May import: every stage. No other module of ``fungi_ssl`` imports it.
"""

# isort: off
from fungi_ssl.cli import download, fit, predict_map, trend, book  # noqa: F401  (registers the commands, in the order help lists them)
# isort: on
from fungi_ssl.cli.app import CommandError, app

__all__ = ["CommandError", "app"]
