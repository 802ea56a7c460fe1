"""Stage 11, the book: running the chapter notebooks.

Holds :mod:`~fungi_ssl.book.runner`, behind ``make book`` and ``python -m
fungi_ssl.book.runner`` (execution, the run summary, the command line), and
:mod:`~fungi_ssl.book.notebooks` (notebook discovery, parameters, machine paths
scrubbed, skipped chapters).

May import: stages 0 to 10. Only :mod:`fungi_ssl.cli` imports it. A chapter's
results files are :mod:`fungi_ssl.core.results`.
"""
