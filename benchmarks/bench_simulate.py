"""Wall time and peak memory of generating the default simulated study.

Measures, each in a fresh subprocess so peak memory is its own:

1. the field samples (campaigns, sites, cores, OTU tables, rarefaction);
2. the same plus every site's 3 x 3-pixel patch of Sentinel-2/Sentinel-1
   time series (73 + 60 dates) in its sampling year;
3. the 1 km covariates;
4. the samples redrawn under another richness model
   (``SimulatedStudy.with_richness``: what chapter 11 does at every setting).

Usage::

    .venv/bin/python benchmarks/bench_simulate.py [--n-samples 14000] [--seed 0]

Writes ``benchmarks/results/simulate.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

STAGE = r"""
import json, resource, sys, threading, time
import psutil
from fungi_ssl.simulate import SimulatedStudy
n, seed, stage = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
proc = psutil.Process()
base = proc.memory_info().rss
peak = [base]
stop = threading.Event()
def watch():
    while not stop.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        time.sleep(0.005)
threading.Thread(target=watch, daemon=True).start()
study = SimulatedStudy(n_samples=n, seed=seed)
t0 = time.perf_counter()
samples = study.samples
t1 = time.perf_counter()
out = {"samples_s": t1 - t0, "n_samples": len(samples), "n_sites": len(study.sites)}
if stage in ("series", "all"):
    arrays, index = study.site_patch_series(k=3)
    t2 = time.perf_counter()
    out.update(series_s=t2 - t1, n_pixels=len(index),
               series_mb=sum(a.nbytes for a in arrays.values()) / 1e6)
if stage == "all":
    t2 = time.perf_counter()
    study.covariates
    out["covariates_s"] = time.perf_counter() - t2
    from dataclasses import replace
    t2 = time.perf_counter()
    rm = replace(study.config.richness, fine_sd=2 * study.config.richness.fine_sd)
    study.with_richness(rm).samples
    out["redraw_s"] = time.perf_counter() - t2
stop.set()
out["peak_rss_increase_mb"] = (peak[0] - base) / 1e6
print(json.dumps(out))
"""


def run_stage(n: int, seed: int, stage: str) -> dict:
    res = subprocess.run([sys.executable, "-c", STAGE, str(n), str(seed), stage],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-samples", type=int, default=14_000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    samples_only = run_stage(a.n_samples, a.seed, "samples")
    with_series = run_stage(a.n_samples, a.seed, "all")
    result = {"samples_only": samples_only, "samples_series_covariates": with_series}
    total = with_series["samples_s"] + with_series["series_s"]
    print(f"samples: {samples_only['n_samples']:,} cores at {samples_only['n_sites']:,} sites "
          f"in {samples_only['samples_s']:.1f} s, peak +{samples_only['peak_rss_increase_mb']:.0f} MB")
    print(f"+ 3x3 patch time series ({with_series['n_pixels']:,} pixels, "
          f"{with_series['series_mb']:.0f} MB of arrays) in {with_series['series_s']:.1f} s: "
          f"{with_series['n_pixels'] / with_series['series_s']:,.0f} pixel-years/s")
    print(f"samples + patches: {total:.1f} s, peak +{with_series['peak_rss_increase_mb']:.0f} MB; "
          f"1 km covariates {with_series['covariates_s']:.1f} s; samples redrawn under another "
          f"richness model {with_series['redraw_s']:.1f} s")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "simulate.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
