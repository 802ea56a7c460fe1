"""The simulated study: determinism, chunking, plausibility and the designed truth."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from fungi_ssl import simulate as sim
from fungi_ssl.simulate import (
    LANDCOVER_CLASSES,
    SimulatedStudy,
    StudyConfig,
    Window,
    variance_below_1km,
)

SCHEMA = ["sample_id", "longitude", "latitude", "continent", "raw_obs_div", "rarefied", "year",
          "site_id"]


@pytest.fixture(scope="module")
def small() -> SimulatedStudy:
    return SimulatedStudy(n_samples=1500, n_campaigns=30, seed=3)


@pytest.fixture(scope="module")
def default() -> SimulatedStudy:
    return SimulatedStudy()


@pytest.fixture(scope="module")
def pixels(small):
    arrays, _ = small.random_pixels(12_000, seed=0)
    return arrays


# ---- determinism and chunking ------------------------------------------------

def test_same_seed_gives_identical_arrays(small):
    again = SimulatedStudy(n_samples=1500, n_campaigns=30, seed=3)
    pd.testing.assert_frame_equal(small.samples, again.samples)
    pd.testing.assert_frame_equal(small.covariates, again.covariates)
    assert (small.otu_table != again.otu_table).nnz == 0
    w = small.map_window(0, 24)
    a = small.cube(w, 2019).compute()
    b = again.cube(w, 2019).compute()
    for v in ("s2", "s2_valid", "s1", "s1_valid"):
        np.testing.assert_array_equal(a[v].values, b[v].values)


def test_another_seed_gives_another_study(small):
    other = SimulatedStudy(n_samples=1500, n_campaigns=30, seed=4)
    assert not np.allclose(small.samples["latitude"].to_numpy()[:50],
                           other.samples["latitude"].to_numpy()[:50])


def test_chunks_equal_the_whole_tile(small):
    w = small.map_window(1, 40)
    whole = small.cube(w, 2021, chunks=40).compute()
    chunked = small.cube(w, 2021, chunks=16).compute()   # 16 does not divide 40: ragged edges
    for v in ("s2", "s2_valid", "s1", "s1_valid"):
        np.testing.assert_array_equal(whole[v].values, chunked[v].values)
    lay = small.layers(w, 2021)
    sub = small.layers(w.sub(7, 11, 13, 5), 2021)
    for v in ("landcover", "canopy", "true_richness", "soil_ph", "ancient"):
        np.testing.assert_array_equal(lay[v].values[11:16, 7:20], sub[v].values)


def test_site_patch_series_matches_the_cube(small):
    arrays, index = small.site_patch_series(k=3)
    site = small.sites.iloc[5]
    w = Window(int(site["epsg"]), int(site["col"]) - 1, int(site["row"]) - 1, 3, 3)
    cube = small.cube(w, int(site["year"])).compute()
    rows = np.flatnonzero(index["site_id"] == site["site_id"])
    assert len(rows) == 9
    s2 = cube["s2"].transpose("y", "x", "time_s2", "band_s2").values.reshape(9, 73, 10)
    np.testing.assert_array_equal(arrays["s2"][rows], s2)
    np.testing.assert_array_equal(arrays["s2_doy"][rows[0]], cube["doy_s2"].values)


def test_cube_has_the_contract_format(small):
    cube = small.cube(small.map_window(0, 16), 2017)
    assert list(cube["band_s2"].values) == list(sim.S2_BANDS)
    assert list(cube["band_s1"].values) == ["VV", "VH"]
    assert cube.rio.crs.to_epsg() == small.map_window(0, 16).epsg
    assert set(cube["orbit"].values) == {"ascending", "descending"}
    assert cube["doy_s2"].values.min() >= 1 and cube["doy_s2"].values.max() <= 366


# ---- plausibility of the observations ----------------------------------------

def _ndvi_amplitude(arrays):
    """Seasonal NDVI amplitude after a 5-date running median over the dates
    flagged clear, as phenology tools filter the cloud the mask missed."""
    s2, valid = arrays["s2"], arrays["s2_valid"]
    ndvi = (s2[..., 3] - s2[..., 0]) / (s2[..., 3] + s2[..., 0])
    amp = np.full(len(ndvi), np.nan)
    med = np.full(len(ndvi), np.nan)
    for i in range(len(ndvi)):
        v = ndvi[i, valid[i]]
        if len(v) < 5:
            continue
        smooth = np.median(np.lib.stride_tricks.sliding_window_view(v, 5), axis=1)
        amp[i] = np.percentile(smooth, 90) - np.percentile(smooth, 10)
        med[i] = np.median(v)
    ok = np.isfinite(amp)
    return np.where(ok, amp, np.nan), med


def test_cloud_mask_misses_thin_cloud_and_shadow(pixels):
    """About 14% of the dates flagged clear carry thin cloud and 7% shadow (chapter 00)."""
    s2, valid = pixels["s2"], pixels["s2_valid"]
    med = np.nanmedian(np.where(valid[..., None], s2, np.nan), axis=1)
    blue = s2[..., 1] / med[:, None, 1]
    nir = s2[..., 3] / med[:, None, 3]
    bright = ((blue > 2) & valid).sum() / valid.sum()
    dark = ((nir < 0.6) & (blue < 0.8) & valid).sum() / valid.sum()
    assert 0.08 <= bright <= 0.20, bright
    assert 0.03 <= dark <= 0.12, dark


# Documented plausible bounds (chapter 00): median over pixels of a class of the
# seasonal NDVI amplitude (90th - 10th percentile of the filtered clear dates).
NDVI_AMPLITUDE_BOUNDS = {
    "broadleaf": (0.30, 0.70), "conifer": (0.0, 0.25), "mixed": (0.12, 0.45),
    "grassland": (0.15, 0.50), "heath": (0.05, 0.35), "cropland": (0.40, 0.85),
    "urban": (0.0, 0.25), "water": (0.0, 0.20),
}


def test_ndvi_seasonal_amplitude_per_class_is_plausible(pixels):
    amp, median = _ndvi_amplitude(pixels)
    lc = pixels["landcover"]
    for code, name in enumerate(LANDCOVER_CLASSES):
        m = lc == code
        if m.sum() < 30:
            continue
        lo, hi = NDVI_AMPLITUDE_BOUNDS[name]
        assert lo <= np.nanmedian(amp[m]) <= hi, (name, np.nanmedian(amp[m]))
    assert np.nanmedian(median[lc == sim.WATER]) < 0          # water: NDVI below zero
    assert np.nanmedian(median[lc == sim.CONIFER]) > 0.6      # evergreen canopy stays green


def test_cloud_fraction_is_plausible_and_follows_precipitation(small):
    arrays, index = small.site_patch_series(k=1)
    cloudy = 1.0 - arrays["s2_valid"].mean(axis=1)
    assert 0.25 <= cloudy.mean() <= 0.65
    assert np.percentile(cloudy, 1) >= 0.03 and np.percentile(cloudy, 99) <= 0.9
    precip = small.truth.groupby("site_id")["precipitation"].first().loc[index["site_id"]]
    assert spearmanr(precip.to_numpy(), cloudy).statistic > 0.2


def test_s1_backscatter_ranges(pixels):
    vv, vh = pixels["s1"][..., 0], pixels["s1"][..., 1]
    assert -30 < np.percentile(vv, 0.5) and np.percentile(vv, 99.5) < 3
    assert -35 < np.percentile(vh, 0.5) and np.percentile(vh, 99.5) < -3
    assert (vh.mean(axis=1) < vv.mean(axis=1)).mean() > 0.99   # cross-pol is weaker
    lc = pixels["landcover"]
    wood = np.isin(lc, sim.WOODLAND_CODES)
    assert vh[wood].mean() > vh[lc == sim.GRASSLAND].mean() + 2   # volume scattering
    assert vv[lc == sim.WATER].mean() < -17                       # specular water


# ---- the designed truth ------------------------------------------------------

def test_share_of_true_richness_variance_below_1km(default):
    # Simulator v5 (issue 15) moved the land-use mosaic from 450 m to 2 km to match the
    # real semivariogram: about 0.38 of the variance of true log richness in sampled
    # landscapes now lies within 1 km cells (0.58 before); accept 0.25-0.50.
    share = variance_below_1km(default, n_cells=600, seed=0)["share_below_1km"]
    assert 0.25 <= share <= 0.50


#: Bands of the real semivariogram that the book's draw (seed 0) of the calibrated world
#: misses by more than 0.08, shown in chapter 00: since v7, 3-10 km (0.78 against 0.66; one
#: forest campaign holds 37% of its pairs) and 30-100 km (0.71 against 0.62). The mean over
#: six draws meets every band (test_mean_over_draws_matches_the_real_semivariogram).
CALIBRATION_MISSES = {(3_000.0, 10_000.0), (30_000.0, 100_000.0)}


def test_calibrated_world_matches_the_real_semivariogram(default):
    from fungi_ssl.data.variogram import (
        load_variogram_reference,
        semivariogram,
        share_at_busy_coordinates,
    )

    europe = default.samples.query("continent == 'Europe'")
    sim = semivariogram(europe)
    real = load_variogram_reference()["bands"]
    for row, ref in zip(sim.itertuples(), real):
        band = (row.lo_m, row.hi_m)
        if min(row.pairs, ref["pairs"]) < 50:
            continue
        gap = abs(row.gamma_over_var - ref["gamma_over_var"])
        assert gap <= (0.14 if band in CALIBRATION_MISSES else 0.08), (band, gap)
        if 1.0 <= row.lo_m < 3_000.0:
            assert ref["pairs"] / 3 <= row.pairs <= 3 * ref["pairs"], (band, row.pairs)
    assert 0.10 <= share_at_busy_coordinates(europe) <= 0.20


def test_mean_over_draws_matches_the_real_semivariogram(monkeypatch, tmp_path):
    """Simulator version 7 is calibrated on the mean over chapter 00's six draws: every judged
    band's mean lies within issue 15's 0.08 of the real curve, and one draw's spread is
    about as wide as the bound (so a single draw meeting every band is luck, not the test)."""
    from fungi_ssl.core import config as core_config
    from fungi_ssl.simulate import seed_spread

    monkeypatch.setattr(core_config, "CACHE_DIR", tmp_path)
    spread = seed_spread.variogram_over_seeds("full", range(seed_spread.N_SEEDS), workers=2)
    judged = [b for b in spread["bands"] if b["judged"]]
    assert len(judged) == 9
    errors = {tuple(b["band_m"]): abs(b["gamma_mean"] - b["gamma_real"]) for b in judged}
    assert max(errors.values()) <= seed_spread.BOUND, errors
    assert 0.03 < np.mean([b["gamma_sd"] for b in judged]) < 0.12


def test_true_trend_of_declining_ancient_woodland(small):
    rm = small.config.richness
    w = small.park_window("Lake District", 96)
    a, b = small.layers(w, 2017), small.layers(w, 2021)     # neither is a drought year
    declining = a["declining"].values & b["declining"].values
    assert declining.sum() > 50
    # canopy falls too, so richness falls at least at the documented rate
    wood = np.isin(a["landcover"].values, sim.WOODLAND_CODES)
    slope = np.where(wood, np.log(np.maximum(b["true_richness"].values, 1e-9) / np.maximum(a["true_richness"].values, 1e-9)) / 4, 0.0)
    assert np.all(slope[declining] <= -rm.decline_rate + 1e-6)
    stable = a["ancient"].values & ~a["declining"].values
    np.testing.assert_allclose(slope[stable], 0.0, atol=1e-3)   # only ageing: negligible


def test_clear_cuts_open_the_canopy_and_regrow(small):
    w = small.map_window(2, 128)
    canopy = np.stack([small.layers(w, y)["canopy"].values for y in (2017, 2020, 2024)])
    age = np.stack([small.layers(w, y)["stand_age"].values for y in (2017, 2020, 2024)])
    reset = age[2] < age[0]                       # cut between 2017 and 2024
    if reset.sum() == 0:
        pytest.skip("no clear-cut in this window")
    assert canopy[2][reset].mean() < canopy[0][reset].mean()


def test_rarefied_tracks_true_richness(default):
    s, t = default.samples, default.truth
    ok = s["rarefied"].notna()
    assert spearmanr(s.loc[ok, "rarefied"], t.loc[ok, "true_richness"]).statistic > 0.8
    # rarefied is an expectation at a fixed depth: never above what the full reads show
    assert (s.loc[ok, "rarefied"] <= s.loc[ok, "raw_obs_div"] + 1e-9).all()


def test_rarefaction_behaves_as_depth_varies(small):
    from fungi_ssl.data.richness import rarefied_richness

    otu, reads = small.otu_table, small.total_reads
    deep = np.flatnonzero(reads >= 8000)[:200]
    shallow = rarefied_richness(otu[deep], 1000, total_reads=reads[deep])
    mid = rarefied_richness(otu[deep], 4000, total_reads=reads[deep])
    full = rarefied_richness(otu[deep], 8000, total_reads=reads[deep])
    assert np.all(shallow <= mid + 1e-9) and np.all(mid <= full + 1e-9)
    # samples too shallow for the study depth have no rarefied value, as in GlobalFungi
    s = small.samples
    too_shallow = reads < small.config.rarefaction_depth
    assert s.loc[too_shallow, "rarefied"].isna().all()
    assert s.loc[~too_shallow, "rarefied"].notna().all()


def test_default_size_and_structure(default):
    s = default.samples
    usable = s.dropna(subset=["rarefied"])
    assert len(usable) >= 12_000
    assert usable["site_id"].nunique() >= 1_000
    assert set(s["continent"]) == {"Europe", "Asia"}
    per_site = usable.groupby(["longitude", "latitude"]).size()
    assert 1.8 <= per_site.mean() <= 2.8          # real European table: 2.3
    assert (usable["rarefied"] == 0).mean() <= 0.05          # real: 0.02


def test_samples_follow_the_real_schema_and_hide_the_truth(small):
    s = small.samples
    assert list(s.columns) == SCHEMA
    assert not set(s.columns) & {"true_richness", "landcover", "host_fraction", "campaign"}
    assert s["sample_id"].is_unique
    assert s["longitude"].between(-180, 180).all() and s["latitude"].between(-90, 90).all()
    s.loc[0, "rarefied"] = -1.0                    # a copy: the study is untouched
    assert small.samples.loc[0, "rarefied"] != -1.0


def test_covariates_use_spun_names_and_are_shared_within_a_cell(small):
    cov = small.covariates
    assert "CHELSA_BIO_Annual_Mean_Temperature" in cov and "SG_Soil_pH_H2O_005cm" in cov
    lc = cov.filter(like="ConsensusLandCoverClass_")
    np.testing.assert_allclose(lc.sum(axis=1), 100.0, atol=1e-3)
    site = small.samples.set_index("sample_id")["site_id"]
    spread = cov.groupby(site.loc[cov.index].to_numpy()).std().fillna(0).to_numpy()
    assert np.all(spread < 1e-6)                   # cores of one site share their 1 km cell
    temp_c = cov["CHELSA_BIO_Annual_Mean_Temperature"] / 10
    assert temp_c.between(-10, 28).all()


def test_climate_and_soil_sets_have_the_spun_tables_columns(small):
    """Five climate and five soil columns, as SPUN's (issue 15, simulator v6), each its own map."""
    from dataclasses import replace

    from fungi_ssl.predictors.features import select_predictors
    from fungi_ssl.simulate import covariates_1km
    from fungi_ssl.simulate.sensors import EXTRA_COVARIATES

    cov = small.covariates
    assert set(EXTRA_COVARIATES) <= set(cov.columns)
    for group in ("climate", "soil"):
        columns, _ = select_predictors(cov, group)
        assert len(columns) == 5, (group, columns)
    pet = cov["CGIAR_PET"].to_numpy()
    warm = cov["CHELSA_BIO_Max_Temperature_of_Warmest_Month"].to_numpy()
    mean_t = cov["CHELSA_BIO_Annual_Mean_Temperature"].to_numpy()
    assert (warm > mean_t).all()                     # the warmest month lies above the mean
    assert np.corrcoef(pet, mean_t)[0, 1] > 0.5       # PET follows temperature ...
    # ... but each map has its own error: no column is a function of another
    per_cell = cov.drop_duplicates()
    assert np.corrcoef(per_cell["CGIAR_PET"], per_cell["CHELSA_BIO_Annual_Mean_Temperature"])[0, 1] < 0.999
    v5 = covariates_1km(small.landscape, small.sites, small.samples,
                        replace(small.config.sensors, spun_columns=False))
    assert not set(EXTRA_COVARIATES) & set(v5.columns)
    pd.testing.assert_frame_equal(v5, cov[v5.columns])   # the other columns are unchanged


def test_parks_have_ancient_and_other_woodland(small):
    for name in sim.UK_PARKS:
        gdf = small.park_woodland(name, 96)
        assert set(gdf["woodland"]) == {"ancient", "other"}, name
        assert gdf.crs.to_epsg() == 32630
        assert (gdf["area_ha"] >= 0.25).all()


def test_bad_parameters_get_clear_errors(small):
    with pytest.raises(ValueError, match="n_samples"):
        SimulatedStudy(n_samples=0)
    with pytest.raises(ValueError, match="park"):
        small.park_window("Snowdonia", 64)
    with pytest.raises(ValueError, match="odd"):
        small.site_patch_series(k=2)
    with pytest.raises(ValueError, match="chunks"):
        small.cube(small.map_window(0, 8), 2017, chunks=0)
    assert StudyConfig().n_samples >= 12_000


# ---- the harder world (issue 8) ------------------------------------------------

def test_recorded_coordinates_have_the_real_tables_precision(default):
    from fungi_ssl.data.realism import coordinate_decimals

    s = default.samples.dropna(subset=["rarefied"])
    t = default.truth.set_index("sample_id").loc[s["sample_id"]]
    d = np.minimum(coordinate_decimals(s["longitude"]), coordinate_decimals(s["latitude"]))
    assert 0.15 <= np.mean(d <= 2) <= 0.30          # real European table: 0.22
    assert 0.01 <= np.mean(d <= 1) <= 0.07          # real: 0.03
    # the record is the true location rounded to the campaign's decimals
    half = 0.5 * 10.0 ** -t["coordinate_decimals"].to_numpy() + 1e-9
    assert (np.abs(s["longitude"].to_numpy() - t["true_longitude"].to_numpy()) <= half).all()
    assert (np.abs(s["latitude"].to_numpy() - t["true_latitude"].to_numpy()) <= half).all()
    # two decimals or fewer move most records by over 100 m; five or more by under 10 m
    offset = t["coordinate_offset_m"].to_numpy()
    assert (offset[t["coordinate_decimals"] <= 2] > 100).mean() > 0.8
    assert (offset[t["coordinate_decimals"] >= 5] < 10).all()


def test_patches_and_covariates_are_read_at_the_recorded_coordinate(small):
    plots, sites = small.plots, small.sites.set_index("site_id")
    coarse = plots[plots["decimals"] <= 2]
    assert len(coarse) > 20
    assert (coarse["rec_col"] != coarse["col"]).mean() > 0.9   # not the plot's own pixel
    at = sites.loc[coarse["site_id"]]
    np.testing.assert_array_equal(at["col"].to_numpy(), coarse["rec_col"].to_numpy())
    np.testing.assert_array_equal(at["row"].to_numpy(), coarse["rec_row"].to_numpy())
    # plots recorded at one coordinate in one year are one site
    assert sites["n_plots"].max() >= 2
    assert sites.index.is_unique and sites["n_cores"].sum() == len(small.samples)


def test_covariate_errors_are_spatially_correlated_with_the_documented_sds():
    """Errors = covariates minus those of an error-free map, along a 400 km transect."""
    from dataclasses import replace

    from fungi_ssl.simulate import Landscape, SensorModel, covariates_1km

    n = 300
    sites = pd.DataFrame({"site_id": [f"S{i}" for i in range(n)], "epsg": 32632,
                          "col": 30_000 + 200 * np.arange(n), "row": 540_000})
    samples = pd.DataFrame({"sample_id": sites["site_id"], "site_id": sites["site_id"]})
    land = Landscape(0)
    m = SensorModel()
    exact = replace(m, temperature_error_sd=0.0, soil_ph_error_sd=0.0, landcover_accuracy=1.0)
    a, b = covariates_1km(land, sites, samples, m), covariates_1km(land, sites, samples, exact)
    for column, scale, sd in (("CHELSA_BIO_Annual_Mean_Temperature", 10, m.temperature_error_sd),
                              ("SG_Soil_pH_H2O_005cm", 10, m.soil_ph_error_sd)):
        err = (a[column] - b[column]).to_numpy() / scale
        assert 0.7 * sd <= err.std() <= 1.3 * sd, column
        # semivariance of cells 2 km apart against cells 100-300 km apart: the
        # correlated share of the error is shared by neighbours, not by far cells
        near = np.mean((err[1:] - err[:-1]) ** 2) / 2
        far = np.mean([np.mean((err[k:] - err[:-k]) ** 2) / 2 for k in range(50, 150, 10)])
        assert near / far < 0.7, (column, near, far)


def test_landcover_map_has_the_documented_accuracy(small):
    from fungi_ssl.simulate import classified_landcover

    acc = small.config.sensors.landcover_accuracy
    true, mapped = [], []
    for i in range(4):
        w = small.map_window(i, 192)
        L = small.landscape.layers(np.array([w.epsg]), w.x[None], w.y[None], 2017)
        m = classified_landcover(small.config.seed, L["landcover"], L["stand"], acc)
        _, first = np.unique(L["stand"].ravel(), return_index=True)   # one pixel per stand
        true.append(L["landcover"].ravel()[first])
        mapped.append(m.ravel()[first])
    true, mapped = np.concatenate(true), np.concatenate(mapped)
    assert len(true) > 400
    assert abs((mapped == true).mean() - acc) < 0.05      # whole stands are mapped right or wrong
    assert set(np.unique(mapped)) <= set(range(len(LANDCOVER_CLASSES)))


def test_stand_areas_spread_over_two_orders_of_magnitude(small):
    areas = []
    for i in range(4):
        w = small.map_window(i, 256)
        stand = small.landscape.layers(np.array([w.epsg]), w.x[None], w.y[None], 2017)["stand"]
        inner = stand[0, 1:-1, 1:-1]
        edge = set(stand[0, 0]) | set(stand[0, -1]) | set(stand[0, :, 0]) | set(stand[0, :, -1])
        ids, counts = np.unique(inner, return_counts=True)
        areas.append(0.01 * counts[~np.isin(ids, list(edge))])     # ha, stands inside
    ha = np.concatenate(areas)
    med = small.config.landscape.stand_area_median_ha
    assert med / 3 <= np.median(ha) <= med * 2
    p10, p90 = np.percentile(ha, [10, 90])
    assert p90 / p10 > 8 and ha.max() > 10 and ha.min() < 0.5, (p10, p90, ha.max())


def test_hidden_drivers_change_richness_but_not_what_satellites_see(small):
    from dataclasses import replace

    rm = replace(small.config.richness, hidden_host_sd=0.0, fine_nitrogen_sd=0.0)
    other = SimulatedStudy(replace(small.config, richness=rm))
    w = small.map_window(0, 24)
    a, b = small.cube(w, 2019).compute(), other.cube(w, 2019).compute()
    for v in ("s2", "s2_valid", "s1", "s1_valid"):
        np.testing.assert_array_equal(a[v].values, b[v].values)
    ta, tb = small.layers(w, 2019)["true_richness"], other.layers(w, 2019)["true_richness"]
    assert not np.allclose(ta.values, tb.values)


def test_invisible_share_of_true_richness_is_documented(default):
    from fungi_ssl.simulate import richness_variance

    v = richness_variance(default, n_cells=300, seed=0)
    # chapter 00 reports it; simulator v5 (issue 15) weakened the fine, hidden-host and
    # regional terms to match the real semivariogram below 1 km, so the default world now
    # hides about 7% of the variance (about a quarter before)
    assert 0.03 <= v["invisible_share"] <= 0.15, v["invisible_share"]
    assert abs(v["share_below_1km"]
               - variance_below_1km(default, n_cells=300, seed=0)["share_below_1km"]) < 0.02


def test_ecm_read_share_does_not_follow_host_cover(default):
    t = default.truth
    share = t["ecm_reads"] / t["total_reads"]
    basal = t["host_fraction"] * t["canopy"]
    assert abs(spearmanr(share, basal).statistic) < 0.05
    assert abs(share.mean() - default.config.ecm_read_share) < 0.02


def test_with_richness_equals_a_fresh_study(small):
    from dataclasses import replace

    rm = replace(small.config.richness, fine_sd=0.1, temp_curvature=0.6, hidden_host_sd=1.0)
    fast = small.with_richness(rm)
    fresh = SimulatedStudy(replace(small.config, richness=rm))
    pd.testing.assert_frame_equal(fast.samples, fresh.samples)
    pd.testing.assert_frame_equal(fast.truth, fresh.truth)
    # depths, and so the samples too shallow to rarefy, do not depend on richness
    np.testing.assert_array_equal(fast.truth["total_reads"], small.truth["total_reads"])
    np.testing.assert_array_equal(fast.samples["rarefied"].isna(),
                                  small.samples["rarefied"].isna())


def test_cached_study_tables_bring_back_the_drawn_state(tmp_path, monkeypatch):
    """A study read from the cache has its campaigns, plots and cores, so chapter 11's
    redraws (with_richness) need not place the plots again."""
    from dataclasses import replace

    from fungi_ssl.core import config
    from fungi_ssl.simulate.field_data import _cached_tables

    monkeypatch.setattr(config, "CACHE_DIR", tmp_path)
    cfg = StudyConfig(seed=5, n_samples=150, n_campaigns=5)
    first = SimulatedStudy(cfg)
    _cached_tables(first)
    again = SimulatedStudy(cfg)
    tables = _cached_tables(again)
    assert {"campaigns", "plots", "sites", "_cores"} <= set(again.__dict__)
    pd.testing.assert_frame_equal(again.plots, first.plots)
    pd.testing.assert_frame_equal(tables["samples"], first.samples)
    rm = replace(cfg.richness, fine_sd=0.9)
    pd.testing.assert_frame_equal(again.with_richness(rm).samples,
                                  SimulatedStudy(replace(cfg, richness=rm)).samples)


# ---- the truth layer maps are scored against ---------------------------------

def test_truth_layer_is_the_estimand_of_a_log1p_map(default):
    """The truth layer predicts the samples' log1p(rarefied) without bias.

    At the cores, the expected log1p(rarefied) from the true log richness is
    the estimand of a core without detection bias: regressed on the log of
    its campaign's bias, the observed-minus-expected error is below 0.05 at a
    bias of 1 (a draw's campaigns can share a net bias, since part of it is
    regional over 4 degrees: -0.08 in log units over the default study's
    samples since version 7), and rises with the bias. The expectation explains
    most of their variance (the rest, about a fifth here, is core-to-core noise
    no map can predict); the lookup is monotone, and far below the true
    species count where cores are rich.
    """
    from fungi_ssl.simulate.truth import expected_log1p_rarefied, rarefied_curve

    rarefied = default.samples["rarefied"].to_numpy()
    ok = np.isfinite(rarefied)
    expected = expected_log1p_rarefied(default, default.core_log_richness())[ok]
    observed = np.log1p(rarefied[ok])
    truth = default.truth.set_index("sample_id").loc[default.samples["sample_id"]]
    log_bias = np.log(truth["campaign_bias"].to_numpy(dtype=float))[ok]
    slope, at_no_bias = np.polyfit(log_bias, observed - expected, 1)
    assert abs(at_no_bias) < 0.05 and 0.4 < slope < 1.1, (at_no_bias, slope)
    assert 0.6 < 1 - ((observed - expected) ** 2).mean() / observed.var() < 0.95
    curve = rarefied_curve(default)
    assert np.all(np.diff(curve["log1p_mean"]) >= 0)
    rich = np.searchsorted(curve["log_richness"], np.log(500.0))
    assert np.expm1(curve["log1p_mean"][rich]) < 0.6 * 500


def test_truth_layer_on_a_window(small):
    from fungi_ssl.simulate.truth import truth_layer

    w = small.map_window(0, 24)
    truth = truth_layer(small, w, 2019)
    lay = small.layers(w, 2019)
    assert truth.shape == (24, 24) and truth.rio.crs.to_epsg() == w.epsg
    water = lay["landcover"].values == list(sim.LANDCOVER_CLASSES).index("water")
    assert np.isnan(truth.values[water]).all() and np.isfinite(truth.values[~water]).all()
    assert np.array_equal(truth.values, truth_layer(small, w, 2019).values)


def test_truth_module_is_not_part_of_the_cache_key():
    """Editing the truth layer must not invalidate cached tables and patches."""
    from fungi_ssl.simulate import field_data as study_mod

    assert "truth.py" in study_mod._NOT_DRAWING
    assert (study_mod.Path(study_mod.__file__).parent.parent / "simulate" / "truth.py").exists()
