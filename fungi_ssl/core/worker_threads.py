"""Many single-threaded fits on worker threads, and the warnings they raise.

Chapters 04 and 05 fit hundreds of small models: Table 1 every predictor set
× model × split, the commonality analysis every subset of groups × fold. On
the book's two cores they run fastest as single-threaded tasks on two worker
threads rather than as one multi-threaded model after another: LightGBM's
OpenMP threads spin-wait for each other at every tree, and when another
process holds one of the cores a multi-threaded LightGBM slows down many
times over (about 50× measured on the book machine). So every model is
built with ``n_jobs=1``, :func:`single_threaded_workers` keeps the BLAS
under the PCA on one thread too, and joblib runs the tasks on threads (the
libraries release the GIL while they compute).

Worker threads also scramble warnings: :func:`worker_warnings` collects them
and re-issues each once from the calling thread, dropping one spurious
scikit-learn warning that comes from a race between threads and says nothing
about the analysis.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from threadpoolctl import threadpool_limits

__all__ = ["in_lanes", "made_ahead", "single_threaded_workers", "worker_warnings"]


#: scikit-learn's complaint when two threads race on ``warnings.filters``.
_SKLEARN_RACE = "`sklearn.utils.parallel.delayed` should be used with"


@contextmanager
def worker_warnings() -> Iterator[None]:
    """Collect the warnings of worker threads and re-issue them once each, afterwards.

    scikit-learn's forests run their trees through ``sklearn.utils.parallel``,
    whose task wrapper clears ``warnings.filters`` and rebuilds it for every
    task. With two forests on two threads, one thread can find the filter list
    empty in the middle of the other's rebuild, and scikit-learn then warns
    that its ``delayed`` was used without its ``Parallel`` (it was not). That
    race says nothing about the analysis, so its warning is dropped; every
    other warning is re-issued, once per message, from the calling thread.
    """
    with warnings.catch_warnings(record=True) as caught:
        yield
    seen = set()
    for w in caught:
        key = (w.category, str(w.message))
        if _SKLEARN_RACE in str(w.message) or key in seen:
            continue
        seen.add(key)
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


@contextmanager
def single_threaded_workers() -> Iterator[None]:
    """Run joblib tasks on threads, BLAS on one thread, worker warnings collected.

    Inside the block every ``joblib.Parallel`` without an explicit backend
    (scikit-learn's, :func:`fungi_ssl.attribution.partition.commonality_partition`'s)
    uses threads, the BLAS pools (OpenBLAS under scikit-learn's PCA and
    ridge) use one thread, and warnings are collected by
    :func:`worker_warnings`. OpenMP keeps its thread count per thread, so the
    limit set here does not reach the worker threads: build every model with
    ``n_jobs=1`` (LightGBM, XGBoost and the forest take it from there).

    Examples
    --------
    >>> from joblib import Parallel, delayed
    >>> from threadpoolctl import threadpool_info
    >>> def blas_threads():
    ...     return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    >>> with single_threaded_workers():
    ...     counts = Parallel(n_jobs=2)(delayed(blas_threads)() for _ in range(2))
    >>> all(n == 1 for c in counts for n in c)
    True
    """
    from joblib import parallel_config

    with threadpool_limits(limits=1), parallel_config(backend="threading"), worker_warnings():
        yield


def in_lanes(jobs: Sequence[tuple], work: Callable[..., Any], lanes: int) -> Iterator[Any]:
    """``work(*job)`` of each job, yielded in order, ``lanes`` jobs at a time on as many threads.

    For jobs that each keep one core busy and release the GIL while they
    compute (simulating with NumPy and numba, embedding with one torch
    thread, mapping with numba): ``lanes`` of them run side by side, at most
    one result waits per lane, and ``work`` must not depend on the order.

    Examples
    --------
    >>> list(in_lanes([(1,), (2,), (3,)], lambda x: 10 * x, lanes=2))
    [10, 20, 30]
    """
    from concurrent.futures import ThreadPoolExecutor

    lanes = max(1, min(int(lanes), len(jobs)))
    if not jobs:
        return
    with ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="fungi-ssl-lane") as pool:
        queue = [pool.submit(work, *job) for job in jobs[:lanes]]
        for k in range(len(jobs)):
            result = queue.pop(0).result()
            if k + lanes < len(jobs):
                queue.append(pool.submit(work, *jobs[k + lanes]))
            yield result


def made_ahead(jobs: Sequence[tuple], make: Callable[..., Any]) -> Iterator[Any]:
    """``make(*job)`` of each job in order, the next one made in a background thread meanwhile.

    For a caller that spends each result on the calling thread's cores (one
    encoder on every core, say): the next job's input (a simulated cube, a
    window read from disk) is made while this one's is used. ``make`` must
    not depend on the order.

    Examples
    --------
    >>> list(made_ahead([(1,), (2,)], lambda x: x + 1))
    [2, 3]
    """
    from concurrent.futures import ThreadPoolExecutor

    if not jobs:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fungi-ssl-ahead") as pool:
        pending = pool.submit(make, *jobs[0])
        for k in range(len(jobs)):
            result = pending.result()
            if k + 1 < len(jobs):
                pending = pool.submit(make, *jobs[k + 1])
            yield result
