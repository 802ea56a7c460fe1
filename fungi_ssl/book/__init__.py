"""Stage 11, the book: running the chapter notebooks.

Holds the runner behind ``make book`` and ``python -m fungi_ssl.book.runner``
(notebook discovery, parameters, execution, the run summary).

May import: stages 0 to 10. Only :mod:`fungi_ssl.cli` imports it.
"""
