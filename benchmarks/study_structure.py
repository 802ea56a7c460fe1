"""Within and between studies: how the real curve climbs, and how the simulated one does.

Issue 15 fits the simulated semivariogram to the real one band by band. The
curve alone does not say which pairs make a band: two samples of one study
(one protocol, one habitat focus, one lab's bias) or of two studies that
happen to lie that far apart. This script splits every band into the two.

* **Real table:** GlobalFungi numbers its samples study by study, so a study
  is taken as a run of consecutive sample ids (same letter prefix, ids at
  most ``--id-gap`` apart, consecutive samples at most ``--jump-km`` apart;
  :func:`fungi_ssl.data.variogram.inferred_studies`, which chapter 00 uses too).
  That is an inference, not the database's study field, which the table does
  not carry; the numbers below move little with either threshold.
* **Simulated study:** the full profile's European samples of ``--seed``,
  with their true campaigns.

Per band it prints the pairs, the share of pairs between studies, and the
semivariance over the variance of log1p(rarefied) within and between studies.

Measured on 2026-12-07 (simulator version 6, seed 0): the real curve climbs
between 1 and 10 km because different studies overlap there (54% and 62% of
the pairs at 1–3 and 3–10 km join two of the 902 inferred studies, which
differ by 0.74 and 0.87), while within a study samples differ little at any
distance (0.28, 0.32, 0.47 and 0.30 from 1 km to 100 km). The simulated campaigns almost
never overlap (under 2% of the pairs below 10 km join two campaigns), and
the curve climbs inside them instead (0.48, 0.60 and 0.82 from 1 to 30 km):
a 2 km land-use mosaic, forest campaigns that keep some open plots and mixed
campaigns. So the world meets the real curve below 30 km by another route
than the real samples take. See the closing note of that day for the levers
tried on it.

Usage::

    .venv/bin/python benchmarks/study_structure.py --data ../shared/data/real [--seed 0]

Writes ``benchmarks/results/study_structure.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    from fungi_ssl.data.reference import REFERENCE_TABLE
    from fungi_ssl.data.variogram import (
        STUDY_ID_GAP,
        STUDY_JUMP_KM,
        inferred_studies,
        study_split,
    )
    from fungi_ssl.simulate import SimulatedStudy
    from fungi_ssl.simulate.field_data import study_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="directory holding the real European table")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--id-gap", type=int, default=STUDY_ID_GAP)
    ap.add_argument("--jump-km", type=float, default=STUDY_JUMP_KM)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "study_structure.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    real = pd.read_csv(Path(args.data) / REFERENCE_TABLE)
    real_study = inferred_studies(real, args.id_gap, args.jump_km)
    study = SimulatedStudy(study_config("full", args.seed))
    sim = study.samples
    sim = sim[sim["rarefied"].notna() & (sim["continent"] == "Europe")].reset_index(drop=True)
    campaign = study.truth.set_index("sample_id").loc[sim["sample_id"], "campaign"].to_numpy()
    out = {"real": study_split(real, real_study), "simulated": study_split(sim, campaign),
           "n_real_studies": int(real_study.max() + 1), "seed": args.seed,
           "id_gap": args.id_gap, "jump_km": args.jump_km}

    def f(v: float | None) -> str:
        return "   –" if v is None else f"{v:4.2f}"

    print(f"{'band (m)':<16}| real: pairs between within between | simulated: pairs between "
          "within between")
    for r, s in zip(out["real"], out["simulated"]):
        lo, hi = r["band_m"]
        print(f"{f'{lo:g}–{hi:g}':<16}| {r['pairs']:>10,} {f(r['share_between'])}    "
              f"{f(r['gamma_within'])}    {f(r['gamma_between'])} | {s['pairs']:>10,}    "
              f"{f(s['share_between'])}   {f(s['gamma_within'])}    {f(s['gamma_between'])}")
    print(f"{out['n_real_studies']} inferred real studies")
    out["seconds"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
