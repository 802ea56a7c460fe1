"""Count the bytes every dask process writes to its TCP connections (a ``--preload`` module).

``benchmarks/bench_cluster.py`` loads it into the scheduler and every worker
(``dask scheduler/worker --preload``) and imports it in the client, so the sum
of :func:`written` over all processes is every byte the cluster shipped:
graphs and the model from the client, tasks from the scheduler, blocks and
halos between workers, results back to the client, and heartbeats.
"""

from __future__ import annotations

import distributed.comm.tcp as _tcp


def install() -> None:
    """Wrap ``TCP.write`` once per process so that it adds what it wrote to a counter."""
    if hasattr(_tcp, "_BENCH_BYTES_WRITTEN"):
        return
    _tcp._BENCH_BYTES_WRITTEN = [0]
    original = _tcp.TCP.write

    async def write(self, msg, serializers=None, on_error="message"):
        n = await original(self, msg, serializers=serializers, on_error=on_error)
        _tcp._BENCH_BYTES_WRITTEN[0] += int(n or 0)
        return n

    _tcp.TCP.write = write


def written(*_args, **_kwargs) -> int:
    """Bytes this process has written to TCP connections since :func:`install`."""
    return int(getattr(_tcp, "_BENCH_BYTES_WRITTEN", [0])[0])


install()
