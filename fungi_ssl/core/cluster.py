"""A real dask cluster on this machine: ``dask scheduler`` and ``dask worker`` processes on loopback.

:func:`loopback_cluster` starts what the README tells a user to start on a
cluster, here on 127.0.0.1 only: one ``dask scheduler`` and ``n_workers``
``dask worker`` processes with one thread each, as subprocesses of this
process. Unlike ``distributed.LocalCluster(processes=False)``, every task, the
map model and every block then cross a process boundary, pickled and sent
over TCP, as they do between machines. The test of
:func:`fungi_ssl.maps.predict.predict_map` on a cluster and
``benchmarks/bench_cluster.py`` use it.

The scheduler listens on a free port chosen by the operating system (it
writes its address to a scheduler file, so no port is guessed); the workers
get that address, exactly as ``dask worker tcp://host:port`` would. Every
process is started in its own session and torn down on leaving the context,
also when the body raises: SIGTERM to its process group, SIGKILL after
``grace`` seconds. As a further guard, workers give up when the scheduler
has gone for ``death_timeout`` seconds and the scheduler stops when no
client has used it for ``idle_timeout`` seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fungi_ssl.core.config import REPO_ROOT

__all__ = ["LoopbackCluster", "loopback_cluster"]

HOST = "127.0.0.1"


@dataclass
class LoopbackCluster:
    """What :func:`loopback_cluster` started.

    Attributes
    ----------
    address : str
        The scheduler's address, ``tcp://127.0.0.1:<port>``.
    n_workers : int
    commands : list of list of str
        The command lines started, scheduler first.
    pids : list of int
        Their process ids (each the leader of its own process group).
    """

    address: str
    n_workers: int
    commands: list[list[str]] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)


def _dask(*args: str) -> list[str]:
    """``dask <args>`` run by this interpreter (the ``dask`` command of its environment)."""
    return [sys.executable, "-m", "dask", *args]


def _stop(procs: list[subprocess.Popen], grace: float) -> None:
    """SIGTERM to each process group (workers first), SIGKILL to what is left after ``grace``."""
    for p in reversed(procs):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    for p in reversed(procs):
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:  # the nanny's worker child shares the group; kill it even if the leader is gone
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if p.poll() is None:
            p.wait(timeout=5)


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


@contextmanager
def loopback_cluster(
    n_workers: int = 2,
    *,
    threads_per_worker: int = 1,
    timeout: float = 90.0,
    grace: float = 10.0,
    death_timeout: float = 60.0,
    idle_timeout: float = 900.0,
    env: Mapping[str, str] | None = None,
    preload: Sequence[str] = (),
) -> Iterator[LoopbackCluster]:
    """Start ``dask scheduler`` and ``n_workers`` ``dask worker`` processes on 127.0.0.1.

    Parameters
    ----------
    n_workers : int
        Worker processes, each started by its own ``dask worker`` command
        (with its nanny, as by default).
    threads_per_worker : int
        ``--nthreads`` of each worker; the map's blocks are single-threaded,
        so one.
    timeout : float
        Seconds to wait for the scheduler's address and for every worker to
        join; a ``TimeoutError`` (with the processes' last log lines) after.
    grace : float
        Seconds between SIGTERM and SIGKILL on teardown.
    death_timeout, idle_timeout : float
        Workers stop after the scheduler has been gone this long; the
        scheduler stops after this long without a client.
    env : mapping, optional
        Extra environment variables of the processes. ``PYTHONPATH`` starts
        with this checkout's root, so the workers import the same
        ``fungi_ssl`` as this process (the README's "workers can import
        fungi_ssl"), and BLAS/OpenMP pools have one thread.

    Yields
    ------
    LoopbackCluster
        Its ``address`` goes to :func:`fungi_ssl.maps.predict.predict_map`'s
        ``scheduler``.

    Examples
    --------
    >>> with loopback_cluster(2) as cluster:          # doctest: +SKIP
    ...     run = predict_map(model, stores, 2024, scheduler=cluster.address)
    """
    if int(n_workers) < 1:
        raise ValueError(f"n_workers must be ≥ 1, got {n_workers}")
    from distributed import Client

    pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    penv = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    pre = [arg for p in preload for arg in ("--preload", str(p))]
    procs: list[subprocess.Popen] = []
    logs: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="fungi_ssl_cluster_") as tmp:
        work = Path(tmp)
        sched_file = work / "scheduler.json"

        def start(cmd: list[str], name: str) -> None:
            log = work / f"{name}.log"
            logs.append(log)
            with open(log, "wb") as fh:
                procs.append(subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=penv,
                                              cwd=tmp, start_new_session=True))

        def failure(what: str) -> TimeoutError:
            detail = "\n".join(f"--- {p.name}\n{_tail(p)}" for p in logs)
            return TimeoutError(f"loopback_cluster: {what}\n{detail}")

        commands = [_dask("scheduler", "--host", HOST, "--port", "0", "--no-dashboard",
                          "--scheduler-file", str(sched_file), "--idle-timeout",
                          f"{idle_timeout:g}s", *pre)]
        try:
            start(commands[0], "scheduler")
            deadline = time.monotonic() + timeout
            address = None
            while address is None:
                if procs[0].poll() is not None:
                    raise failure(f"the scheduler exited with status {procs[0].returncode}")
                if time.monotonic() > deadline:
                    raise failure(f"no scheduler address after {timeout:g} s")
                try:
                    address = json.loads(sched_file.read_text())["address"]
                except (OSError, ValueError, KeyError):
                    time.sleep(0.2)
            for i in range(int(n_workers)):
                cmd = _dask("worker", address, "--nthreads", str(int(threads_per_worker)),
                            "--nworkers", "1", "--host", HOST, "--no-dashboard",
                            "--name", f"loopback-{i}", "--local-directory", str(work / f"w{i}"),
                            "--death-timeout", f"{death_timeout:g}s", *pre)
                commands.append(cmd)
                start(cmd, f"worker-{i}")
            with Client(address, timeout=f"{timeout:g}s", set_as_default=False) as client:
                try:
                    client.wait_for_workers(int(n_workers), timeout=max(1.0, deadline - time.monotonic()))
                except (TimeoutError, OSError) as err:
                    dead = [lg.stem for lg, p in zip(logs, procs) if p.poll() is not None]
                    raise failure(f"{len(client.nthreads())} of {n_workers} workers joined in "
                                  f"{timeout:g} s (exited: {dead or 'none'})") from err
            yield LoopbackCluster(address, int(n_workers), commands, [p.pid for p in procs])
        finally:
            _stop(procs, grace)
