"""How much of the simulated semivariogram's fit to the real one is the seed's luck?

Issue 15 bounds the full-profile world of seed 0: in every distance band
with 50 pairs or more, ``|γ/σ² simulated − real| ≤ 0.08``. A few large
campaigns hold most pairs of a band, so one seed's curve can sit inside the
bounds while the world, over seeds, does not (or the reverse). This script
draws the full-profile study's samples for seeds ``0 … n − 1`` (sampling only:
no satellite series, no embeddings), computes each seed's European
semivariogram exactly as chapter 00 does
(:func:`fungi_ssl.data.realism.variogram_comparison`), and reports per band
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
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

#: Issue 15's bound on each band's difference from the real curve.
BOUND = 0.08


def one_seed(seed: int, data_dir: str | None) -> dict:
    """Seed ``seed``'s European variogram bands beside the real ones."""
    from fungi_ssl.data import realism
    from fungi_ssl.simulate import SimulatedStudy
    from fungi_ssl.simulate.field_data import study_config

    study = SimulatedStudy(study_config("full", seed))
    s = study.samples
    s = s[s["rarefied"].notna() & (s["continent"] == "Europe")]
    v = realism.variogram_comparison(s, data_dir or None)
    return {"seed": seed, "bands": v["variogram"],
            "share_at_busy_coordinates": v["simulated"]["share_at_busy_coordinates"],
            "sub_km_index": v["simulated"]["sub_km_index"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--data", default="", help="directory of the real table (default: shipped summary)")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "world_seeds.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        runs = list(pool.map(one_seed, range(args.seeds), [args.data] * args.seeds))
    bands = []
    print(f"{'band (m)':<18}{'real':>7}{'seed 0':>8}{'mean':>7}{'min':>7}{'max':>7}  seeds within {BOUND}")
    for b, first in enumerate(runs[0]["bands"]):
        real = first["gamma_real"]
        sims = np.array([r["bands"][b]["gamma_simulated"] for r in runs])
        pairs = np.array([r["bands"][b]["pairs_simulated"] for r in runs])
        judged = (pairs >= 50) & (first["pairs_real"] >= 50)
        within = int(np.sum(~judged | (np.abs(sims - real) <= BOUND)))
        lo, hi = first["band_m"]
        bands.append({"band_m": [lo, hi], "gamma_real": real, "gamma_seed0": float(sims[0]),
                      "gamma_mean": float(sims.mean()), "gamma_min": float(sims.min()),
                      "gamma_max": float(sims.max()), "seeds_within_bound": within})
        print(f"{f'{lo:g}–{hi:g}':<18}{real:>7.2f}{sims[0]:>8.2f}{sims.mean():>7.2f}"
              f"{sims.min():>7.2f}{sims.max():>7.2f}  {within} of {len(runs)}")
    worst = [max(abs(x["gamma_simulated"] - x["gamma_real"]) for x in r["bands"]
                 if x["pairs_simulated"] >= 50 and x["pairs_real"] >= 50) for r in runs]
    print("largest band error per seed:", ", ".join(f"{w:.2f}" for w in worst))
    out = {"seeds": args.seeds, "bound": BOUND, "bands": bands, "largest_error_per_seed": worst,
           "share_at_busy_coordinates": [r["share_at_busy_coordinates"] for r in runs],
           "sub_km_index": [r["sub_km_index"] for r in runs],
           "real_origin": "table" if args.data else "shipped",
           "seconds": time.perf_counter() - t0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
