"""What glibc's allocator costs the book's embedding: its default against the book runner's setting.

The book runner starts every kernel with ``MALLOC_TOP_PAD_`` set
(:data:`fungi_ssl.book.runner.KERNEL_ALLOCATOR_ENV`): glibc then keeps that
much memory beyond the top of its heap instead of handing freed memory back
to the system at once. Embedding a simulated cube allocates and frees
hundreds of megabytes per window, and with the default each new allocation
faults its pages in again, one by one, in the kernel.

This script simulates and embeds chapter 08's park-years (one park window,
every year, one torch thread, as a replicate world is made) in a fresh
process per setting, so each starts with glibc's own state, and reports
pixel-years per second (wall and per CPU-second), the system share of the
CPU time, the page faults, the peak memory, and a checksum of the
embeddings, which must be the same in every setting: the allocator changes
the speed, not the numbers.

Measured on 2026-12-07 (2-core VM, idle, 8 years, identical embeddings in
both settings): on chapter 08's book window (72 px, 2 rounds) 16,656 against
14,144 pixel-years/s (1.18 times), page faults 18,395 against 266,891 and the
system share of CPU time 1% against 9%; on a replicate world's window (32 px,
3 rounds) 1.05 times. In the whole book the setting cut the system time from
215 to 131 CPU-seconds and the page faults from 61 to 17 million (cold full
book, 1,008 s against 957 s, the same results files).

Usage::

    .venv/bin/python benchmarks/bench_allocator.py [--px 72] [--rounds 2]
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
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

#: A point in the Lake District, as bench_embedding_path's park cube.
PARK_POINT = (-3.08, 54.48)


def child(px: int, rounds: int) -> dict:
    """Simulate and embed one park window's eight years ``rounds`` times; time the last rounds."""
    import torch
    from bench_encoder import default_model

    from fungi_ssl.embeddings.embed import embed_cube_in_memory
    from fungi_ssl.simulate import SimulatedStudy, Window

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    model = default_model()
    study = SimulatedStudy()
    window = Window.around(*PARK_POINT, px)
    chunk = int(np.ceil(px / 16) * 16)  # chapter 08's chunk rule
    years = list(study.config.years)

    def one_round() -> str:
        digest = hashlib.sha256()
        for y in years:
            emb = embed_cube_in_memory(study.cube_in_memory(window, y), model, chunk=chunk,
                                       n_threads=1)
            for name in sorted(emb.data_vars):
                digest.update(np.ascontiguousarray(emb[name].values).tobytes())
        return digest.hexdigest()

    one_round()  # warm: imports, cloud fields, compiled kernels
    before = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    digests = {one_round() for _ in range(rounds)}
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_SELF)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    n = rounds * len(years) * px * px
    return {"pixel_years": n, "seconds": wall, "per_s": n / wall,
            "per_cpu_s": n / (user + system), "system_share": system / (user + system),
            "minor_faults": after.ru_minflt - before.ru_minflt,
            "peak_rss_mb": after.ru_maxrss / 1024, "checksum": digests.pop(),
            "same_every_round": not digests}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--px", type=int, default=72, help="side of the park window (pixels)")
    ap.add_argument("--rounds", type=int, default=2, help="timed rounds of the eight years")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "allocator.json")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.px, args.rounds)))
        return 0

    from fungi_ssl.book.runner import KERNEL_ALLOCATOR_ENV

    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    settings = {"glibc default": base, "book runner": {**base, **KERNEL_ALLOCATOR_ENV}}
    runs = {}
    for name, env in settings.items():
        cmd = [sys.executable, __file__, "--child", "--px", str(args.px), "--rounds",
               str(args.rounds)]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
        runs[name] = json.loads(out.stdout.strip().splitlines()[-1])
    ref = runs["glibc default"]
    print(f"{args.px} × {args.px} px park window, {args.rounds} rounds of 8 years, one thread")
    print(f"{'setting':<15} {'px-years/s':>11} {'per CPU-s':>10} {'system':>7} "
          f"{'page faults':>12} {'peak MB':>8} {'ratio':>6}")
    for name, r in runs.items():
        print(f"{name:<15} {r['per_s']:>11,.0f} {r['per_cpu_s']:>10,.0f} "
              f"{r['system_share']:>7.0%} {r['minor_faults']:>12,} {r['peak_rss_mb']:>8,.0f} "
              f"{r['per_s'] / ref['per_s']:>6.2f}")
    same = len({r["checksum"] for r in runs.values()}) == 1
    print("embeddings identical in every setting:", same)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"px": args.px, "rounds": args.rounds,
                                    "settings": {k: {kk: v for kk, v in settings[k].items()
                                                     if kk.startswith("MALLOC_")}
                                                 for k in settings},
                                    "runs": runs, "identical": same}, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
