"""Throughput of the dissimilarity index (area of applicability) over map pixels.

The issue's bar: at least the map's own prediction speed, 100,000 pixels/s on
the 2-core machine, for ~32 predictors and ~10,000 training samples.

Data: synthetic predictors shaped like the map chain's (32 PCA components of
the SSL patch, whose variances fall off as 1/k, weighted by a heavy-tailed
importance), ``--n-train`` training samples (all distinct: the hard case; the
book's samples share sites, so fewer distinct rows), ``--n-pixels`` pixels
drawn around the training cloud and beyond it.

Measured:

1. ``AreaOfApplicability.fit`` (mean pairwise distance, training DI over 5
   folds, threshold);
2. ``dissimilarity`` over the pixels: wall time and CPU time. Because this
   machine is shared, the CPU time is also reported as pixels per CPU-second;
   on an idle machine the wall rate approaches ``n_jobs`` times that;
3. for reference, on a subset: scikit-learn ``NearestNeighbors`` (brute
   force, exact) and ``KDTree``, and the largest relative difference of DI
   against the brute force.

4. with ``--map PROFILE``: the book's own map path on the first region of
   chapter 06 (the cached map model of that profile, all its pixels, warm
   numba), in one run: the projection shared by both, the regressor's trees,
   the dissimilarity index, and the ratio issue 10 asks about, the speed of
   the index's path (projection + index) over the richness map's
   (projection + trees).

Why the index is not faster (measured on the quick profile's first region,
5,354 distinct training rows × 32 weighted components, 40,000 pixels, 96%
inside the AOA): the blocked float32 product runs at OpenBLAS's speed, and
its time is linear in the inner dimension (33 = 32 components + the norm),
so only less work helps, and in this space nothing exact removes enough of
it: the component weights are flat (0.08 … 1 of the largest), a k-means
bound over 64–256 clusters leaves 70–99% of the training rows to compare per
block of 64–256 pixels, neighbouring pixels are not alike enough for a shared
bound (2 × 2 blocks already span more than the median nearest distance),
SciPy's ``cKDTree`` is 3× slower, and a lower bound from the 8–16 heaviest
components plus the norm of the rest (3–36 candidates per pixel at the true
distance) costs more in masking and gathering than the product it saves.
(OpenBLAS uses its Haswell kernels on this AMD EPYC; AVX-512 is not used.)

The approximate index (``--prototypes``, :class:`fungi_ssl.uncertainty.aoa_index.PrototypeIndex`):
k-means clusters of the distinct training rows, each pixel searched exactly
in the 8 clusters nearest its own, the triangle inequality deciding where
that settles the verdict. Measured 2026-12-05 under a load average of about
17 on the 2 cores (10,000 distinct training rows × 32, 100,000 pixels, 91%
inside): with 256 clusters, refined (undecided pixels searched exactly, so
the AOA verdict equals the exact one for every pixel) 110,562 pixels per
CPU-second, 1.8× the exact search; unrefined 155,441 (2.5×), 12.8% of
pixels undecided, the verdict changed for 4.0% (the bound is the undecided
share, reported by every query); DI at most 13% above the exact one for
95% of pixels (refined). A first version that compared pixels only with
one prototype per cluster left 40–90% undecided and was no faster.

On an idle machine (2026-12-06, load about 1.2; ``--map full --prototypes
256``, one run): the exact index ran at 96,964 pixels per CPU-second on the
synthetic set (185,338 pixels/s on two threads), the refined prototypes at
the same speed and the unrefined ones 1.5× faster (12.4% undecided, verdict
changed for 3.86%). On chapter 06's first full-profile region (90,000
pixels, 4,798 distinct training rows × 32 components) the projection ran at
636,849 pixels/s, the trees at 418,088 and the exact index at 301,496: the
index's path at **0.81** of the map path's speed, 0.90 with 256 refined
prototypes (verdict unchanged for every pixel).

Usage::

    .venv/bin/python benchmarks/bench_aoa.py [--n-train 10000] [--n-pixels 200000]
        [--dims 32] [--n-jobs 2] [--reference 20000] [--map quick]
        [--prototypes 256,64,1024]

Writes ``benchmarks/results/aoa.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from fungi_ssl.uncertainty.aoa import AreaOfApplicability

HERE = Path(__file__).resolve().parent


def synthetic(n_train: int, n_pixels: int, dims: int, cores_per_site: float = 1.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    sd = 1.0 / np.sqrt(np.arange(1, dims + 1))  # PCA-like: variance ∝ 1/k
    centres = rng.normal(size=(200, dims)) * sd * 2.0  # landscapes / classes
    n_sites = max(2, round(n_train / cores_per_site))
    sites = centres[rng.integers(0, 200, n_sites)] + rng.normal(size=(n_sites, dims)) * sd
    # cores of a site share its predictors (one SSL patch, one 1 km cell)
    site = np.r_[np.arange(n_sites), rng.integers(0, n_sites, n_train - n_sites)]
    train = sites[site]
    pixels = centres[rng.integers(0, 200, n_pixels)] + rng.normal(size=(n_pixels, dims)) * sd * 1.3
    weights = rng.permutation(1.0 / np.arange(1, dims + 1))  # gain importance, heavy-tailed
    return train, site, pixels, weights


def timed(fn):
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def map_path(profile: str, seed: int = 0, n_jobs: int = 2, n_prototypes: int = 0) -> dict:
    """Projection, trees and DI of the book's map model over chapter 06's first region."""
    from fungi_ssl.maps import resolution, resolution_regions
    from fungi_ssl.predictors.tables import predictor_table, pretrained_encoder
    from fungi_ssl.uncertainty import bias_maps
    from fungi_ssl.validation.comparison import spatial_splitter
    from fungi_ssl.validation.pipelines import available_sets, complete_rows

    pt = predictor_table("", profile=profile, seed=seed, progress=False)
    data = complete_rows(pt.frame, pt.target, available_sets(pt.frame))
    trained, _ = pretrained_encoder(pt.field, profile, seed, progress=False)
    model = resolution.fitted_map_model(pt, trained, "lightgbm", seed, profile)
    aoa = bias_maps.map_aoa(model, data, spatial_splitter(data, seed=seed).fold_labels(),
                            n_jobs=n_jobs)
    region = resolution_regions.regions(profile, seed)[0]
    store = resolution_regions.region_store(region, trained, profile, seed, progress=False)

    def run(index=aoa):
        return bias_maps.uncertainty_maps(model, {region.year: store}, region.year,
                                          region.bbox, aoa=index, quantile=0.5,
                                          num_threads=n_jobs, progress=False)

    run()  # compiles the tree kernel, reads the store once
    r = run()
    s = r.seconds
    approx = {}
    if n_prototypes:
        from fungi_ssl.uncertainty.aoa_index import PrototypeIndex

        index = PrototypeIndex(aoa, n_prototypes)
        ra = run(index)
        sa = ra.seconds
        exact_in, approx_in = r.maps["aoa"].values, ra.maps["aoa"].values
        ok = np.isfinite(exact_in)
        approx = {
            "approx_n_prototypes": index.n_prototypes,
            "approx_di_px_per_s": r.n_pixels / sa["dissimilarity"],
            "approx_di_path_speed_ratio": (sa["project"] + sa["predict"])
            / (sa["project"] + sa["dissimilarity"]),
            "approx_verdict_changed_share": float(np.mean(exact_in[ok] != approx_in[ok])),
            "approx_undecided_share": index.last_undecided_share,
        }
    out = {
        "profile": profile,
        "region": region.name,
        "n_pixels": r.n_pixels,
        "n_train_distinct": int(aoa._index.unique.shape[0]),
        "dims": len(aoa.feature_names_in_),
        "project_px_per_s": r.n_pixels / s["project"],
        "trees_px_per_s": r.n_pixels / s["predict"],
        "di_px_per_s": r.n_pixels / s["dissimilarity"],
        "di_path_speed_ratio": (s["project"] + s["predict"]) / (s["project"] + s["dissimilarity"]),
        **approx,
    }
    print(f"map path ({profile}, {out['region']}, {r.n_pixels:,} pixels, "
          f"{out['n_train_distinct']:,} distinct training rows × {out['dims']}): projection "
          f"{out['project_px_per_s']:,.0f} px/s, trees {out['trees_px_per_s']:,.0f} px/s, "
          f"DI {out['di_px_per_s']:,.0f} px/s; DI path / map path speed "
          f"{out['di_path_speed_ratio']:.2f}")
    if approx:
        print(f"  with {approx['approx_n_prototypes']} prototypes (refined): DI "
              f"{approx['approx_di_px_per_s']:,.0f} px/s, DI path / map path speed "
              f"{approx['approx_di_path_speed_ratio']:.2f}, AOA verdict changed for "
              f"{100 * approx['approx_verdict_changed_share']:.2f}% of pixels")
    return out


def approximate(aoa, pixels: np.ndarray, di: np.ndarray, di_cpu: float, counts: str) -> dict:
    """The prototype index (fungi_ssl.uncertainty.aoa_index) beside the exact DI: speed, verdicts, DI error."""
    from fungi_ssl.uncertainty.aoa_index import PrototypeIndex

    exact_in = di <= aoa.threshold_
    out = {}
    print("  approximate index (k-means prototypes; per CPU-second, beside the exact search):")
    for k in (int(v) for v in counts.split(",") if v):
        idx, build_s, build_cpu = timed(lambda k=k: PrototypeIndex(aoa, k))
        row = {"build_s": build_s, "build_cpu_s": build_cpu, "n_prototypes": idx.n_prototypes}
        for refine in (True, False):
            idx.refine = refine
            (d, inside), s, c = timed(lambda idx=idx: idx._query(pixels))
            ok = np.isfinite(di)
            rel = (d[ok] - di[ok]) / np.maximum(di[ok], 1e-12)
            tag = "refined" if refine else "unrefined"
            row[tag] = {
                "pixels_per_s": len(pixels) / s,
                "pixels_per_cpu_s": len(pixels) / c,
                "speedup_per_cpu_s": di_cpu / c,
                "undecided_share": idx.last_undecided_share,
                "verdict_changed_share": float(np.mean(inside != exact_in)),
                "verdict_bound": 0.0 if refine else idx.last_undecided_share,
                "di_relative_error_median": float(np.median(rel)),
                "di_relative_error_p95": float(np.quantile(rel, 0.95)),
            }
            r = row[tag]
            print(f"    {k:>5} prototypes, {tag:>9}: {r['pixels_per_cpu_s']:>9,.0f} px per CPU-s "
                  f"({r['speedup_per_cpu_s']:.1f}× exact), undecided {100 * r['undecided_share']:.1f}%,"
                  f" verdict changed {100 * r['verdict_changed_share']:.2f}% (bound "
                  f"{100 * r['verdict_bound']:.1f}%), DI +{100 * r['di_relative_error_median']:.0f}%"
                  f" median, +{100 * r['di_relative_error_p95']:.0f}% p95; built in {build_s:.1f} s")
        out[str(k)] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n-train", type=int, default=10_000)
    ap.add_argument("--n-pixels", type=int, default=200_000)
    ap.add_argument("--dims", type=int, default=32)
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument(
        "--cores-per-site",
        type=float,
        default=1.0,
        help="training rows per distinct predictor row (the simulated study: ~2.2)",
    )
    ap.add_argument("--reference", type=int, default=20_000, help="pixels for sklearn (0: skip)")
    ap.add_argument("--map", default="", help="also time the book's map path of this profile")
    ap.add_argument("--prototypes", default="256,64,1024",
                    help="prototype counts of the approximate index (first: the map path's); "
                         "empty: skip")
    a = ap.parse_args()

    train, site, pixels, weights = synthetic(a.n_train, a.n_pixels, a.dims, a.cores_per_site)
    # folds take whole sites, as the book's CV does (random rows would put a site's
    # cores on both sides: training DI 0 and a threshold far too tight)
    folds = np.random.default_rng(1).integers(0, 5, site.max() + 1)[site]
    load_before = os.getloadavg()[0]
    aoa = AreaOfApplicability(n_jobs=a.n_jobs)
    _, fit_s, fit_cpu = timed(lambda: aoa.fit(train, folds=folds, weights=weights))
    di, di_s, di_cpu = timed(lambda: aoa.dissimilarity(pixels))
    result = {
        "n_train": a.n_train,
        "n_train_distinct": int(aoa._index.unique.shape[0]),
        "n_pixels": a.n_pixels,
        "dims": a.dims,
        "n_jobs": a.n_jobs,
        "cpu_count": os.cpu_count(),
        "load_average_1min_before": load_before,
        "fit_s": fit_s,
        "fit_cpu_s": fit_cpu,
        "di_s": di_s,
        "di_cpu_s": di_cpu,
        "pixels_per_s": a.n_pixels / di_s,
        "pixels_per_cpu_s": a.n_pixels / di_cpu,
        "fraction_inside": float(np.mean(di <= aoa.threshold_)),
        "threshold": aoa.threshold_,
    }
    print(
        f"DI: {a.n_train:,} training samples ({result['n_train_distinct']:,} distinct) × "
        f"{a.dims} predictors, {a.n_pixels:,} pixels, "
        f"{a.n_jobs} threads (1-min load average {load_before:.1f} on {os.cpu_count()} CPUs)"
    )
    print(f"  fit (mean distance, 5-fold training DI): {fit_s:.1f} s wall, {fit_cpu:.1f} s CPU")
    print(
        f"  dissimilarity: {di_s:.2f} s wall = {result['pixels_per_s']:,.0f} pixels/s; "
        f"{di_cpu:.2f} s CPU = {result['pixels_per_cpu_s']:,.0f} pixels per CPU-second"
    )
    print(f"  {100 * result['fraction_inside']:.0f}% of pixels inside the AOA")

    if a.reference:
        from sklearn.neighbors import KDTree, NearestNeighbors

        sub = pixels[: a.reference]
        Z = aoa._scaled(train)
        Zs = aoa._scaled(sub)
        ref = {}
        nn = NearestNeighbors(n_neighbors=1, algorithm="brute").fit(Z)
        (dist, _), s, c = timed(lambda: nn.kneighbors(Zs))
        ref["sklearn_brute"] = {"pixels_per_s": len(sub) / s, "pixels_per_cpu_s": len(sub) / c}
        rel = np.max(
            np.abs(di[: len(sub)] - dist[:, 0] / aoa.mean_distance_)
            / dist[:, 0].clip(1e-12)
            * aoa.mean_distance_
        )
        tree = KDTree(Z)
        n_kd = min(len(sub), 5_000)
        _, s, c = timed(lambda: tree.query(Zs[:n_kd], k=1))
        ref["sklearn_kdtree"] = {"pixels_per_s": n_kd / s, "pixels_per_cpu_s": n_kd / c}
        result["reference"] = ref
        result["max_relative_di_difference_vs_brute"] = float(rel)
        for name, r in ref.items():
            print(
                f"  {name}: {r['pixels_per_s']:,.0f} pixels/s, "
                f"{r['pixels_per_cpu_s']:,.0f} per CPU-second"
            )
        print(f"  largest relative DI difference against sklearn brute force: {rel:.1e}")

    if a.prototypes:
        result["approximate"] = approximate(aoa, pixels, di, di_cpu, a.prototypes)

    if a.map:
        result["map_path"] = map_path(a.map, n_jobs=a.n_jobs,
                                      n_prototypes=int(a.prototypes.split(",")[0] or 0)
                                      if a.prototypes else 0)

    out = HERE / "results" / "aoa.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
