"""Two lanes of chapter-shaped work side by side: left to the scheduler, or one core each.

The book runner runs the chapters after 03 in two lanes side by side, and
pins each lane to a core of its own until one lane is done
(:data:`fungi_ssl.book.runner.PIN_LANES`, :func:`fungi_ssl.book.runner.lane_cores`).
Each lane's chapters still start two threads or two worker processes (Table 1's
fits on two threads, chapter 08's replicate worlds in two processes), sized for
an idle machine; left to the scheduler, four busy threads on two cores move
between the cores and wait for partners the other lane has displaced.

This script runs two lanes of work shaped like the book's, each in a fresh
process, once with the lanes on any core and once with lane *i* on core *i*
(the affinity the runner sets, inherited by a lane's threads and worker
processes) until one lane is done, when the other is let onto both cores
(:func:`fungi_ssl.book.runner.widen_to_all_cores`), as in the book:

* **fits** (like chapter 04's Table 1): a randomized PCA of patch values,
  then LightGBM and a random forest fitted one after another on two worker
  threads, one thread each;
* **workers** (like chapter 08's replicate worlds): two worker processes,
  each simulating arrays in numpy and passing them through a small torch
  transformer (one torch thread), one batch after another.

It reports each lane's seconds and CPU-seconds (the lane's process and its
workers), the wall time of the pair, and a checksum of each lane's outputs,
which must be the same either way: the affinity changes the speed, not the
numbers.

Measured on 2026-12-07 (2-core VM, outputs identical in every run): pinned
against any core, wall time and CPU-seconds 0.96 and 0.96 (``--rounds 3``),
0.99 and 0.99, then 0.94 and 0.94 (``--rounds 6``, twice). A small gain on
this synthetic pair, within the VM's run-to-run noise; in the book, chapter
08 took 125 CPU-seconds pinned to one core beside chapter 04 on the other
and 153 in a lane left to the scheduler (single runs).

Usage::

    .venv/bin/python benchmarks/bench_lanes.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

#: Rows and patch values of the fits (a third of chapter 04's table, so that a run is short).
SHAPE = (4_000, 1_152)
#: Fits and worker tasks per round: about as long, so that the lanes end about together,
#: as the book's lanes do.
FIT_TASKS, WORKER_TASKS = 4, 6


def _fits(rounds: int) -> str:
    """Table 1-shaped work: PCA then LightGBM and a random forest, on two worker threads."""
    from concurrent.futures import ThreadPoolExecutor

    import lightgbm
    from sklearn.decomposition import PCA
    from sklearn.ensemble import RandomForestRegressor
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    x = rng.normal(size=SHAPE) @ rng.normal(size=(SHAPE[1], 64)) @ rng.normal(size=(64, SHAPE[1]))
    y = np.sin(x[:, 0] / 8) + 0.1 * x[:, 1] + rng.normal(scale=0.5, size=SHAPE[0])

    def task(k: int) -> bytes:
        z = PCA(32, svd_solver="randomized", random_state=k).fit_transform(x)
        if k % 2:
            model = lightgbm.LGBMRegressor(n_estimators=300, random_state=k, n_jobs=1,
                                           deterministic=True, force_col_wise=True, verbose=-1)
        else:
            model = RandomForestRegressor(n_estimators=60, max_features=1 / 3,
                                          min_samples_leaf=5, random_state=k, n_jobs=1)
        return model.fit(z, y).predict(z).tobytes()

    with threadpool_limits(1), ThreadPoolExecutor(2) as pool:
        out = list(pool.map(task, range(FIT_TASKS * rounds)))
    return hashlib.sha256(b"".join(out)).hexdigest()


def _worker(k: int) -> bytes:
    """One replicate-shaped task: arrays simulated in numpy through a small torch encoder."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(32, 2, 64, dropout=0.0, batch_first=True), 1).eval()
    rng = np.random.default_rng(k)
    outs = []
    with torch.inference_mode():
        for _ in range(12):
            series = np.cumsum(rng.normal(size=(2_048, 16, 32)), axis=1).astype(np.float32)
            outs.append(layer(torch.from_numpy(series)).mean(dim=1).numpy().tobytes())
    return b"".join(outs)


def _workers(rounds: int) -> str:
    """Chapter 08-shaped work: two worker processes, one thread each."""
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(2) as pool:
        out = pool.map(_worker, range(WORKER_TASKS * rounds))
    return hashlib.sha256(b"".join(out)).hexdigest()


def child(kind: str, rounds: int) -> dict:
    """Run one lane's work here; its seconds, CPU-seconds (with its workers) and checksum."""
    def cpu() -> float:
        a = resource.getrusage(resource.RUSAGE_SELF)
        b = resource.getrusage(resource.RUSAGE_CHILDREN)
        return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime

    c, t = cpu(), time.perf_counter()
    checksum = (_fits if kind == "fits" else _workers)(rounds)
    return {"seconds": time.perf_counter() - t, "cpu_seconds": cpu() - c, "checksum": checksum}


def pair(rounds: int, pinned: bool) -> dict:
    """Both lanes at once, each in a fresh process, pinned to a core each or not."""
    from fungi_ssl.book.runner import lane_cores, widen_to_all_cores

    t = time.perf_counter()
    procs = {}
    for i, kind in enumerate(("fits", "workers")):
        cores = lane_cores(i, 2) if pinned else None
        pin = ["--cores", ",".join(map(str, sorted(cores)))] if cores else []
        procs[kind] = subprocess.Popen([sys.executable, __file__, "--child", kind, "--rounds",
                                        str(rounds), *pin], stdout=subprocess.PIPE, text=True)
    waiting, widened = dict(procs), not pinned
    while waiting:  # as the runner does: once a lane is done, the other may use every core
        done = [k for k, proc in waiting.items() if proc.poll() is not None]
        for k in done:
            del waiting[k]
        if done and waiting and not widened:
            widen_to_all_cores()
            widened = True
        time.sleep(0.05)
    lanes = {k: json.loads(p.communicate()[0].strip().splitlines()[-1]) for k, p in procs.items()}
    return {"wall_seconds": time.perf_counter() - t, "lanes": lanes}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="work per lane")
    ap.add_argument("--child", choices=("fits", "workers"), help=argparse.SUPPRESS)
    ap.add_argument("--cores", help=argparse.SUPPRESS)  # the child's lane cores, as the runner sets
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "lanes.json")
    args = ap.parse_args()
    if args.child:
        if args.cores:  # before any library starts a thread; its threads and workers inherit it
            os.sched_setaffinity(0, {int(c) for c in args.cores.split(",")})
        print(json.dumps(child(args.child, args.rounds)))
        return 0
    if len(os.sched_getaffinity(0)) < 2:
        print("needs two cores")
        return 1
    runs = {"any core": pair(args.rounds, False), "one core each": pair(args.rounds, True)}
    print(f"two lanes, {args.rounds} rounds each: Table 1-shaped fits (two threads) beside "
          "chapter 08-shaped workers (two processes)")
    print(f"{'lanes':<15} {'fits s':>8} {'CPU-s':>7} {'workers s':>10} {'CPU-s':>7} "
          f"{'pair s':>7} {'CPU-s':>7}")
    for name, r in runs.items():
        f, w = r["lanes"]["fits"], r["lanes"]["workers"]
        print(f"{name:<15} {f['seconds']:>8.1f} {f['cpu_seconds']:>7.1f} {w['seconds']:>10.1f} "
              f"{w['cpu_seconds']:>7.1f} {r['wall_seconds']:>7.1f} "
              f"{f['cpu_seconds'] + w['cpu_seconds']:>7.1f}")
    a, b = runs["any core"], runs["one core each"]
    print(f"pinned / any core: wall {b['wall_seconds'] / a['wall_seconds']:.2f}, CPU-seconds "
          f"{sum(v['cpu_seconds'] for v in b['lanes'].values()) / sum(v['cpu_seconds'] for v in a['lanes'].values()):.2f}")
    same = all(a["lanes"][k]["checksum"] == b["lanes"][k]["checksum"] for k in a["lanes"])
    print("outputs identical either way:", same)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rounds": args.rounds, "runs": runs, "identical": same},
                                   indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
