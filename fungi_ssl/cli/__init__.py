"""The ``fungi-ssl`` command (moved from cli.py; split by subcommand in the next commit)."""

from fungi_ssl.cli.app import CommandError, app

__all__ = ["CommandError", "app"]
