"""Wall time of chapter 04's Table 1 (:func:`fungi_ssl.validation.comparison.table1`) on this machine.

Times Table 1 (5 predictor sets × 4 models: random forest, LightGBM,
XGBoost, ridge; random 70/10/20 seeds plus 5-fold 50 km spatial blocks) at
three sizes:

1. the ``quick`` profile's number of seeds (3);
2. the ``full`` profile's (10);
3. the study's 50 seeds. By default this one is **estimated**, not run: the
   spatial folds and everything else cost the same at any number of seeds,
   so the time is linear in the seeds, and the quick and full runs give the
   line: ``T(50) = T(full) + (50 − n_full) × (T(full) − T(quick)) / (n_full − n_quick)``.
   ``--run-50`` measures it instead.

All runs use the predictor table of one profile (``--table-profile``, default
``quick``), built or read from its cache before the clock starts; the table
has the same shape in both profiles (the same samples, 1,152 SSL columns).
These three fit the book's models
(:data:`~fungi_ssl.validation.pipelines.BOOK_MODEL_PARAMS`), so they differ in
seeds only and the line above holds. A fourth run, ``quick_profile``, times
the quick profile's Table 1 as chapter 04 fits it: 3 seeds with the quick
profile's lighter models (:func:`~fungi_ssl.validation.pipelines.profile_model_params`:
a 50-tree random forest, boosting at a step of 0.1), with the R² of every
cell beside the book models' so the cost of the lighter settings can be read.
Wall time counts from the call to ``table1`` to its return. CPU time (all threads) and the 1-minute load
average before each run are reported too: the book machine has two cores,
and any other process on them stretches wall time but not CPU time.

Usage::

    .venv/bin/python benchmarks/bench_table1.py [--run-50] [--data DIR] [--seed 0] \
        [--models rf lightgbm ridge] [--out FILE]

``--models`` times a subset of the models (e.g. without XGBoost, to measure
what the study's third model costs).

Writes ``benchmarks/results/table1.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

STUDY_SEEDS = 50


def timed_table1(frame, target, sets, models, n_seeds: int, seed: int,
                 model_params: dict | None = None) -> dict:
    """Run Table 1 once; wall and CPU seconds, load before, and the slowest tasks."""
    from fungi_ssl.validation.comparison import table1

    load = os.getloadavg()[0]
    wall0, cpu0 = time.perf_counter(), time.process_time()
    res = table1(
        frame, target, sets=sets, models=models, n_seeds=n_seeds, seed=seed, progress=False,
        model_params=model_params,
    )
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    tasks = res.attrs["task_seconds"]
    by_model: dict[str, float] = {}
    for key, sec in tasks.items():
        model = key.rsplit("/", 1)[1]
        by_model[model] = by_model.get(model, 0.0) + sec
    n_folds = int(((res["scheme"] == "spatial") & (res["scope"] == "fold")).sum())
    r2 = (
        res[res["scope"] != "pooled"]
        .groupby(["scheme", "set", "model"])["r2"]
        .mean()
        .round(4)
        .unstack("model")
    )
    return {
        "n_seeds": n_seeds,
        "models": list(models),
        "model_params": res.attrs["model_params"],
        "r2_mean": {f"{k[0]}/{k[1]}": v for k, v in r2.to_dict(orient="index").items()},
        "n_fits": int((res["scope"] != "pooled").sum()),
        "n_spatial_fits": n_folds,
        "wall_s": wall,
        "cpu_s": cpu,
        "load_1min_before": load,
        "pca_fits_reused": res.attrs["memo_hits"],
        "task_seconds_by_model": by_model,
        "slowest_tasks": dict(sorted(tasks.items(), key=lambda kv: -kv[1])[:5]),
        "measured": True,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--run-50", action="store_true", help="run the 50 seeds instead of estimating")
    ap.add_argument("--data", default="", help="real data directory (default: simulated study)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--table-profile", default="quick", help="profile of the predictor table")
    ap.add_argument(
        "--models",
        nargs="+",
        default=None,
        help="models to fit (default: all of fungi_ssl.validation.models.MODEL_NAMES)",
    )
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "table1.json")
    args = ap.parse_args()

    from fungi_ssl.core.config import get_profile
    from fungi_ssl.predictors.tables import predictor_table
    from fungi_ssl.validation.models import MODEL_NAMES
    from fungi_ssl.validation.pipelines import available_sets, profile_model_params

    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    pt = predictor_table(args.data, profile=args.table_profile, seed=args.seed)
    table_s = time.perf_counter() - t0
    frame, target = pt.frame, pt.target
    sets = available_sets(frame)
    models = list(args.models or MODEL_NAMES)
    n_quick, n_full = get_profile("quick").n_seeds, get_profile("full").n_seeds

    runs = {
        "quick": timed_table1(frame, target, sets, models, n_quick, args.seed),
        "full": timed_table1(frame, target, sets, models, n_full, args.seed),
        "quick_profile": timed_table1(frame, target, sets, models, n_quick, args.seed,
                                      model_params=profile_model_params("quick")),
    }
    per_seed = (runs["full"]["wall_s"] - runs["quick"]["wall_s"]) / (n_full - n_quick)
    per_seed_cpu = (runs["full"]["cpu_s"] - runs["quick"]["cpu_s"]) / (n_full - n_quick)
    if args.run_50:
        runs["study_50"] = timed_table1(frame, target, sets, models, STUDY_SEEDS, args.seed)
    else:
        runs["study_50"] = {
            "n_seeds": STUDY_SEEDS,
            "wall_s": runs["full"]["wall_s"] + (STUDY_SEEDS - n_full) * per_seed,
            "cpu_s": runs["full"]["cpu_s"] + (STUDY_SEEDS - n_full) * per_seed_cpu,
            "measured": False,
            "extrapolation": (
                f"T(50) = T(full, {n_full} seeds) + {STUDY_SEEDS - n_full} × "
                f"{per_seed:.2f} s per seed, the slope between the quick ({n_quick} seeds) "
                f"and full ({n_full} seeds) runs"
            ),
        }

    result = {
        "machine": {
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "processor": platform.processor(),
        },
        "table": {
            "source": pt.source,
            "profile": args.table_profile,
            "n_samples": len(frame),
            "n_columns": frame.shape[1],
            "sets": sets,
            "models": models,
            "build_or_cache_read_s": table_s,
        },
        "per_seed_wall_s": per_seed,
        "runs": runs,
    }

    print(
        f"Table 1 on {len(frame):,} samples ({pt.source}), sets {', '.join(sets)}, "
        f"models {', '.join(models)}; "
        f"predictor table ready in {table_s:.1f} s (not counted)"
    )
    print(f"\n{'run':<14}{'seeds':>6}{'fits':>7}{'wall s':>9}{'cpu s':>9}{'load':>7}  how")
    for name, r in runs.items():
        how = "measured" if r["measured"] else "extrapolated"
        fits = r.get("n_fits", "")
        load = f"{r['load_1min_before']:.1f}" if "load_1min_before" in r else ""
        print(
            f"{name:<14}{r['n_seeds']:>6}{fits:>7}{r['wall_s']:>9.1f}{r['cpu_s']:>9.1f}"
            f"{load:>7}  {how}"
        )
    if not runs["study_50"]["measured"]:
        print(f"\n50 seeds: {runs['study_50']['extrapolation']}.")
    book, light = runs["quick"], runs["quick_profile"]
    shift = max(abs(r2 - light["r2_mean"][cell][m])
                for cell, row in book["r2_mean"].items() for m, r2 in row.items())
    result["quick_profile_vs_book_models"] = {"wall_ratio": light["wall_s"] / book["wall_s"],
                                              "largest_r2_shift": shift}
    print(f"quick profile's models: {light['wall_s'] / book['wall_s']:.2f} of the book models' "
          f"wall time at 3 seeds; the largest change of a cell's mean R² is {shift:.3f}.")
    busy = [n for n, r in runs.items() if r.get("load_1min_before", 0) > 0.5]
    if busy:
        print(
            f"note: the 1-minute load average was above 0.5 before {', '.join(busy)}; if "
            "other work was still running, wall times are longer than on an idle machine "
            "(CPU times are not)."
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
