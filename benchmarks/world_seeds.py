"""How much of the simulated semivariogram's fit to the real one is the seed's luck?

Issue 15 bounds the full-profile world of seed 0: in every distance band
with 50 pairs or more, ``|γ/σ² simulated − real| ≤ 0.08``. A few large
campaigns hold most pairs of a band, so one seed's curve can sit inside the
bounds while the world, over seeds, does not (or the reverse). This script
draws the full-profile study's samples for seeds ``0 … n − 1`` (sampling only:
no satellite series, no embeddings), computes each seed's European
semivariogram exactly as chapter 00 does
(:func:`fungi_ssl.simulate.seed_spread.variogram_over_seeds`, which chapter 00
also shows for the book's seed and the next five), and reports per band
the real value, seed 0's, and the mean, minimum and maximum over seeds, with
how many seeds meet the bound. A calibration should move the mean onto the
real curve; the spread says how far seed 0 may then still fall.

Measured on 2026-12-07 (simulator version 6, seeds 0–5, shipped real
summary, 36 s): the largest band error per seed was 0.13, 0.81, 0.12, 0.12,
0.34 and 0.28. Seed 0 misses one band (10–30 km, 0.80 against 0.67) and is
one of the closer draws. Over seeds the 30–100 km band is too high in every
seed (mean 0.91, 0.66–1.43, against 0.62; 1 of 6 seeds within the bound),
and so is the 100–300 km band on average (0.92 against 0.82), while the
bands below 1 km sit on the real curve in most seeds (0–100 m in all six):
pairs of different campaigns, one studying forest and the other open land,
differ more than real pairs at those distances (seed 4, 30–100 km: 1.12 for
forest–open pairs and 1.55 for mixed–open against 0.73 for forest–forest).
So the next calibration lever is between campaigns, not below 1 km.

Usage::

    .venv/bin/python benchmarks/world_seeds.py [--seeds 6] [--data ../shared/data/real]

Writes ``benchmarks/results/world_seeds.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    from fungi_ssl.simulate.seed_spread import variogram_over_seeds

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--data", default="", help="directory of the real table (default: shipped summary)")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "world_seeds.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    out = variogram_over_seeds("full", range(args.seeds), args.data or None,
                               workers=args.workers, progress=True)
    bound = out["bound"]
    print(f"{'band (m)':<18}{'real':>7}{'seed 0':>8}{'mean':>7}{'min':>7}{'max':>7}  seeds within {bound}")
    for b in out["bands"]:
        lo, hi = b["band_m"]
        print(f"{f'{lo:g}–{hi:g}':<18}{b['gamma_real']:>7.2f}{b['gamma_by_seed'][0]:>8.2f}"
              f"{b['gamma_mean']:>7.2f}{b['gamma_min']:>7.2f}{b['gamma_max']:>7.2f}"
              f"  {b['seeds_within_bound']} of {args.seeds}")
    print("largest band error per seed:",
          ", ".join(f"{w:.2f}" for w in out["largest_error_per_seed"]))
    out["seconds"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
