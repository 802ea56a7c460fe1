"""Which change of the simulated world moved Table 1? One change undone at a time.

Simulator version 4 made the world harder in several ways at once (issue 8):
recorded coordinates as coarse as the real table's, 1 km covariate errors
that are spatially correlated, land-cover fractions from a classifier as
accurate as ESA WorldCover, and drivers of richness that no predictor sees.
This script undoes each change on its own, keeps everything else (sites,
samples, the chapter-02 encoder), and scores LightGBM on ``ssl`` and the
three 1 km sets under the book's two protocols (random 70/10/20 splits and
5 folds of 50 km blocks), so the difference from the default world is what
that change costs or gives each set.

Variants
--------
``default``
    The book's world.
``exact_coordinates``
    Every campaign records coordinates with six or more decimals, so every
    patch is read at its plot's own pixel (re-embeds the site patches).
``independent_covariate_errors``
    1 km covariate errors independent between cells (no correlated share).
``exact_landcover``
    Land-cover fractions from the true class map (accuracy 1).
``no_invisible_drivers``
    The richness terms no predictor sees switched off (same samples, sites,
    patches and covariates; only richness and what sequencing shows of it
    are redrawn, as in chapter 11).

Simulator version 5 calibrated the world to the real table's semivariogram
(issue 15); each of its changes is undone on its own too:

``v4_fine_mosaic``
    The land-use mosaic back at 450 m (patches 150 m) instead of 2 km (500 m).
``v4_strong_fine_terms``
    The fine noise, fine-scale nitrogen, hidden-host, regional and floor
    terms at their version-4 values (richness only, as in chapter 11).
``no_plot_clusters``
    Plots placed independently over the campaign's region (no clusters).
``v4_site_sizes``
    The lighter tail of site sizes (log-SD 1.2 instead of 1.6).
``independent_campaign_bias``
    Each campaign's detection bias its own (log-SD 0.55, nothing shared regionally).

Simulator version 6 finished that calibration (issue 15 item 1); each of its changes is
undone on its own:

``v5_covariate_columns``
    The 1 km climate and soil sets with two and three columns (mean temperature and
    precipitation; pH, SOC and sand) instead of the SPUN table's five each.
``no_geology_mosaic``
    No soil-pH mosaic of parent materials (``geology_ph_sd`` 0).

Simulator version 7 changed how the studies are laid out (issue 15, judged on the
mean semivariogram over six draws); each of its changes is undone on its own:

``v6_campaigns``
    320 campaigns of median radius 12 km instead of 960 of 8 km.
``independent_focus``
    Each campaign's habitat focus its own (nothing shared by a country's studies).
``plot_groups_any_class``
    Plots of a group take any class their campaign takes, not mostly their first
    plot's.

Variants that move sites or the landscape re-embed the site patches.

Run ``.venv/bin/python benchmarks/world_changes.py [--profile full] [--seeds 3]``;
it prints a table and writes ``benchmarks/results/world_changes.json``. The
encoder and default patches come from the book's cache (``make book`` first).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from campaign_structure import V6_CAMPAIGNS, V6_FOCUS, V6_PLOT_GROUPS

from fungi_ssl.data.io import validate_samples
from fungi_ssl.predictors.tables import TARGET, pretrained_encoder, ssl_patch_features
from fungi_ssl.simulate import SimulatedStudy
from fungi_ssl.simulate.field_data import FieldData, open_field_data, simulated_study
from fungi_ssl.validation import comparison
from fungi_ssl.validation.sensitivity import richness_with_gains

HERE = Path(__file__).resolve().parent
#: Each version-7 lever at its version-6 value, as campaign_structure.py undoes them.
V7_UNDONE = {"v6_campaigns": V6_CAMPAIGNS, "independent_focus": V6_FOCUS,
             "plot_groups_any_class": V6_PLOT_GROUPS}
SETS = ("ssl", "climate", "soil", "landcover")
VARIANTS = ("default", "exact_coordinates", "independent_covariate_errors", "exact_landcover",
            "no_invisible_drivers", "v4_fine_mosaic", "v4_strong_fine_terms", "no_plot_clusters",
            "v4_site_sizes", "independent_campaign_bias", "v5_covariate_columns",
            "no_geology_mosaic", "v6_campaigns", "independent_focus", "plot_groups_any_class")
#: Variants whose sites or landscape differ from the default's, so their patches are re-embedded.
RE_EMBED = ("exact_coordinates", "v4_fine_mosaic", "no_plot_clusters", "v4_site_sizes",
            "no_geology_mosaic", "v6_campaigns", "independent_focus", "plot_groups_any_class")


def variant_study(base: SimulatedStudy, name: str) -> SimulatedStudy:
    """The base study with one change of simulator version 4, 5, 6 or 7 undone."""
    c = base.config
    if name == "default":
        return base
    if name == "exact_coordinates":
        return SimulatedStudy(replace(c, coordinate_decimals=(0.0, 0.0, 0.0, 0.0, 0.0, 1.0)))
    if name == "independent_covariate_errors":
        return SimulatedStudy(replace(c, sensors=replace(
            c.sensors, covariate_error_correlated_share=0.0)))
    if name == "exact_landcover":
        return SimulatedStudy(replace(c, sensors=replace(c.sensors, landcover_accuracy=1.0)))
    if name == "no_invisible_drivers":
        return base.with_richness(richness_with_gains(c.richness, 1.0, 0.0))
    if name == "v4_fine_mosaic":
        return SimulatedStudy(replace(c, landscape=replace(c.landscape, mosaic_length_m=450.0,
                                                           patch_length_m=150.0)))
    if name == "v4_strong_fine_terms":
        return base.with_richness(replace(c.richness, fine_sd=0.35, fine_nitrogen_sd=0.45,
                                          hidden_host_sd=0.6, regional_sd=0.25, floor=0.03))
    if name == "no_plot_clusters":
        return SimulatedStudy(replace(c, plot_cluster_share=0.0))
    if name == "v4_site_sizes":
        return SimulatedStudy(replace(c, site_size_sdlog=1.2))
    if name == "independent_campaign_bias":
        return SimulatedStudy(replace(c, campaign_bias_sd=0.55, campaign_bias_regional_share=0.0))
    if name == "v5_covariate_columns":
        return SimulatedStudy(replace(c, sensors=replace(c.sensors, spun_columns=False)))
    if name == "no_geology_mosaic":
        return SimulatedStudy(replace(c, landscape=replace(c.landscape, geology_ph_sd=0.0)))
    if name in V7_UNDONE:
        return SimulatedStudy(replace(c, **V7_UNDONE[name]))
    raise ValueError(f"unknown variant {name!r}; expected one of {VARIANTS}")


def field_of(study: SimulatedStudy) -> FieldData:
    """The study as chapters 03-05 see it (rows without ``rarefied`` dropped)."""
    samples = validate_samples(study.samples, source="simulated study")
    keep = samples["sample_id"].to_numpy()
    return FieldData(samples=samples.reset_index(drop=True),
                     covariates=study.covariates.loc[keep],
                     truth=study.truth.set_index("sample_id").loc[keep].reset_index(),
                     source="simulated", n_dropped_na=int(samples.attrs.get("n_dropped_na", 0)),
                     study=study)


def frame_of(field: FieldData, ssl: pd.DataFrame) -> pd.DataFrame:
    """Predictor table: identifiers, target, 1 km covariates and SSL patch features."""
    s = field.samples
    base = s[["sample_id", "site_id", "longitude", "latitude"]].reset_index(drop=True)
    base[TARGET] = np.log1p(s["rarefied"].to_numpy(dtype=float))
    cov = field.covariates.reset_index(drop=True)
    cov = cov.drop(columns=[c for c in cov.columns if c in base.columns])
    ssl = ssl.reindex(s["sample_id"].to_numpy()).reset_index(drop=True)
    return pd.concat([base, cov, ssl], axis=1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="full")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=3, help="random splits per set")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    args = ap.parse_args()

    base_field = open_field_data(None, profile=args.profile, seed=args.seed)
    base = simulated_study(args.profile, args.seed)
    trained, _ = pretrained_encoder(base_field, args.profile, args.seed)
    base_ssl = ssl_patch_features(base_field, trained, args.profile, args.seed)
    rows = []
    for name in args.variants:
        t0 = time.perf_counter()
        study = variant_study(base, name)
        field = base_field if name == "default" else field_of(study)
        # only variants that move sites or change the landscape change the patches
        ssl = (ssl_patch_features(field, trained, args.profile, args.seed)
               if name in RE_EMBED else base_ssl)
        frame = frame_of(field, ssl)
        res = comparison.table1(frame, TARGET, sets=SETS, models=("lightgbm",),
                                n_seeds=args.seeds, seed=args.seed, progress=False)
        summary = comparison.comparison_json(res, model="lightgbm")
        for scheme in ("random", "spatial"):
            for s in SETS:
                rows.append({"variant": name, "scheme": scheme, "set": s,
                             "r2": summary[scheme][s]["lightgbm"]["r2_mean"]})
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    table = pd.DataFrame(rows).pivot_table(index=["scheme", "variant"], columns="set",
                                           values="r2").reindex(columns=list(SETS))
    print(table.round(3).to_string())
    out = HERE / "results" / "world_changes.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"profile": args.profile, "seed": args.seed,
                               "seeds": args.seeds, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
