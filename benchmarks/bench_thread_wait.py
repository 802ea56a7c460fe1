"""What idle threads' waiting costs the book's two-thread model fits beside busy cores.

The book runner starts every kernel with ``GOMP_SPINCOUNT`` and
``OPENBLAS_THREAD_TIMEOUT`` set (:data:`fungi_ssl.book.runner.KERNEL_THREAD_WAIT_ENV`):
a GNU OpenMP thread (LightGBM's) that reaches the end of a parallel region
before its partner spins 1,000 times, not 300,000, before it sleeps, and an
OpenBLAS thread (numpy's and scipy's) with no work waits 2^4 cycles, not
2^28, before it sleeps. LightGBM grows each tree in many small parallel
regions and a PCA calls BLAS many times; with the libraries' defaults the
waiting thread keeps its core while the thread it waits for has none,
whenever other processes (the book's other lane, a chapter's worker
processes) keep the machine's cores busy.

This script fits a chain shaped like chapter 08's map model (a randomized
PCA of 12,350 × 1,152 patch values to 32 components, then the book's
LightGBM, ``BOOK_MODEL_PARAMS``, 269 trees, two threads each) in a fresh
process per setting, on an idle machine and beside ``--busy`` processes
that each keep a core busy, and reports the fit's seconds and CPU-seconds,
and a checksum of the predictions, which must be the same in every run: the
waiting changes the speed, not the model.

Measured on 2026-12-07 (2-core VM, 2 fits per run, identical predictions in
every run): beside two busy processes 11.02 s and 11.23 CPU-seconds a fit
with the defaults against 3.03 s and 2.42 with the setting (3.64 times as
fast); idle 1.77 s and 3.46 CPU-seconds against 1.27 s and 2.28 (1.39
times: even on an idle machine, OpenBLAS's spinning thread took the core
that LightGBM's second thread wanted). Chapter 08's map model itself
(``MapModel``: the PCA, early stopping and the refit), beside two busy
processes: 32.4 s and 28.9 CPU-seconds with the defaults, 11.1 s and 5.8
with the setting.

Usage::

    .venv/bin/python benchmarks/bench_thread_wait.py [--busy 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

#: Rows, patch values (3 × 3 × 128), components and trees of chapter 08's map model
#: (quick profile, seed 0).
SHAPE = (12_350, 1_152)
COMPONENTS = 32
TREES = 269


def child(rounds: int) -> dict:
    """Fit the PCA and the book's LightGBM ``rounds`` times on two threads; time the fits."""
    import lightgbm
    from sklearn.decomposition import PCA
    from threadpoolctl import threadpool_limits

    from fungi_ssl.validation.pipelines import BOOK_MODEL_PARAMS

    rng = np.random.default_rng(0)
    x = rng.normal(size=SHAPE) @ rng.normal(size=(SHAPE[1], SHAPE[1])) / SHAPE[1] ** 0.5
    y = np.sin(x[:, 0]) + 0.5 * x[:, 1] * x[:, 2] + rng.normal(scale=0.5, size=SHAPE[0])
    params = {**BOOK_MODEL_PARAMS.get("lightgbm", {}), "n_estimators": TREES}
    digests = set()
    before = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    for _ in range(rounds):
        with threadpool_limits(2):
            z = PCA(COMPONENTS, svd_solver="randomized", random_state=0).fit_transform(x)
            model = lightgbm.LGBMRegressor(random_state=0, n_jobs=2, verbose=-1,
                                           **params).fit(z, y)
        digests.add(hashlib.sha256(model.predict(z).tobytes()).hexdigest())
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"seconds_per_fit": wall / rounds, "cpu_seconds_per_fit": cpu / rounds,
            "checksum": digests.pop(), "same_every_round": not digests}


def _busy(stop: float) -> None:
    x = 0
    while time.time() < stop:
        x += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--busy", type=int, default=2, help="processes that keep a core busy")
    ap.add_argument("--rounds", type=int, default=2, help="timed fits per run")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "thread_wait.json")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.rounds)))
        return 0

    from fungi_ssl.book.runner import KERNEL_THREAD_WAIT_ENV

    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("GOMP_", "OMP_WAIT", "OPENBLAS_THREAD", "GOTO_THREAD"))}
    settings = {"library defaults": base, "book runner": {**base, **KERNEL_THREAD_WAIT_ENV}}
    runs = {}
    for load in ("idle", f"{args.busy} busy"):
        for name, env in settings.items():
            burners = []
            if load != "idle":
                stop = time.time() + 600
                burners = [mp.Process(target=_busy, args=(stop,), daemon=True)
                           for _ in range(args.busy)]
                for b in burners:
                    b.start()
            try:
                out = subprocess.run([sys.executable, __file__, "--child", "--rounds",
                                      str(args.rounds)], env=env, check=True,
                                     capture_output=True, text=True)
            finally:
                for b in burners:
                    b.terminate()
                    b.join()
            runs[f"{name}, {load}"] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"PCA of {SHAPE[0]:,} × {SHAPE[1]:,} to {COMPONENTS}, LightGBM of {TREES} trees, "
          f"two threads, {args.rounds} fits per run")
    print(f"{'setting, machine':<28} {'s per fit':>10} {'CPU-s per fit':>14} {'ratio':>6}")
    for load in ("idle", f"{args.busy} busy"):
        ref = runs[f"library defaults, {load}"]["seconds_per_fit"]
        for name in settings:
            r = runs[f"{name}, {load}"]
            print(f"{name + ', ' + load:<28} {r['seconds_per_fit']:>10.2f} "
                  f"{r['cpu_seconds_per_fit']:>14.2f} {ref / r['seconds_per_fit']:>6.2f}")
    same = len({r["checksum"] for r in runs.values()}) == 1
    print("predictions identical in every run:", same)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"busy": args.busy, "rounds": args.rounds,
                                    "setting": KERNEL_THREAD_WAIT_ENV, "runs": runs,
                                    "identical": same}, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
