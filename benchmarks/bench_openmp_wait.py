"""What OpenMP's waiting costs the book's two-thread LightGBM fits beside busy cores.

The book runner starts every kernel with ``GOMP_SPINCOUNT`` set
(:data:`fungi_ssl.book.runner.KERNEL_OPENMP_ENV`): a GNU OpenMP thread that
reaches the end of a parallel region before its partner spins that many
times, then sleeps. LightGBM grows each tree in many small parallel regions;
with libgomp's default (300,000 spins) the waiting thread keeps its core while
the thread it waits for has none, whenever other processes (the book's other
lane, a chapter's worker processes) keep the machine's cores busy.

This script fits the book's LightGBM (``BOOK_MODEL_PARAMS``, two threads) on
a table shaped like chapter 08's map model (12,350 samples, 32 components,
269 trees) in a fresh process per setting, on an idle machine and beside
``--busy`` processes that each keep a core busy, and reports the fit's
seconds and CPU-seconds, and a checksum of the predictions, which must be
the same in every run: the waiting changes the speed, not the model.

Measured on 2026-12-07 (2-core VM, 2 fits per run, identical predictions in
every run): beside two busy processes 8.50 s and 8.47 CPU-seconds a fit with
the default against 2.35 s and 2.10 with the setting (3.6 times as fast);
idle 0.68 s against 0.63 s. Chapter 08's map model itself (``MapModel``: the
PCA, early stopping and the refit) took 32.4 s and 28.9 CPU-seconds beside
two busy processes with the default, 14.4 s and 10.1 with the setting.

Usage::

    .venv/bin/python benchmarks/bench_openmp_wait.py [--busy 2] [--rounds 2]
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

#: Rows, columns and trees of chapter 08's map model (quick profile, seed 0).
SHAPE = (12_350, 32)
TREES = 269


def child(rounds: int) -> dict:
    """Fit the book's LightGBM ``rounds`` times on two threads; time the fits."""
    import lightgbm

    from fungi_ssl.validation.pipelines import BOOK_MODEL_PARAMS

    rng = np.random.default_rng(0)
    x = rng.normal(size=SHAPE)
    y = np.sin(x[:, 0]) + 0.5 * x[:, 1] * x[:, 2] + rng.normal(scale=0.5, size=SHAPE[0])
    params = {**BOOK_MODEL_PARAMS.get("lightgbm", {}), "n_estimators": TREES}
    digests = set()
    before = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    for _ in range(rounds):
        model = lightgbm.LGBMRegressor(random_state=0, n_jobs=2, verbose=-1, **params).fit(x, y)
        digests.add(hashlib.sha256(model.predict(x).tobytes()).hexdigest())
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
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "openmp_wait.json")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.rounds)))
        return 0

    from fungi_ssl.book.runner import KERNEL_OPENMP_ENV

    base = {k: v for k, v in os.environ.items() if not k.startswith(("GOMP_", "OMP_WAIT"))}
    settings = {"libgomp default": base, "book runner": {**base, **KERNEL_OPENMP_ENV}}
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
    print(f"LightGBM, {SHAPE[0]:,} × {SHAPE[1]}, {TREES} trees, two threads, "
          f"{args.rounds} fits per run")
    print(f"{'setting, machine':<28} {'s per fit':>10} {'CPU-s per fit':>14} {'ratio':>6}")
    for load in ("idle", f"{args.busy} busy"):
        ref = runs[f"libgomp default, {load}"]["seconds_per_fit"]
        for name in settings:
            r = runs[f"{name}, {load}"]
            print(f"{name + ', ' + load:<28} {r['seconds_per_fit']:>10.2f} "
                  f"{r['cpu_seconds_per_fit']:>14.2f} {ref / r['seconds_per_fit']:>6.2f}")
    same = len({r["checksum"] for r in runs.values()}) == 1
    print("predictions identical in every run:", same)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"busy": args.busy, "rounds": args.rounds,
                                    "setting": KERNEL_OPENMP_ENV, "runs": runs,
                                    "identical": same}, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
