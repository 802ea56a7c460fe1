"""Stage 0, infrastructure: settings, caches, hashing, threads, dask cluster, figure style.

Holds :mod:`~fungi_ssl.core.config` (paths, profiles), :mod:`~fungi_ssl.core.cache`
(cache folders), :mod:`~fungi_ssl.core.hashing` (counter-based random numbers),
:mod:`~fungi_ssl.core.worker_threads`, :mod:`~fungi_ssl.core.cluster` (a local dask
cluster), :mod:`~fungi_ssl.core.plotting` (the book's figure style and offline
maps) and :mod:`~fungi_ssl.core.results` (the chapters' results JSON files).

May import: nothing else in ``fungi_ssl``. Every later stage may import it.
"""
