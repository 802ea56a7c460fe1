"""Tests of fungi_ssl.trends.trendmaps: the null world, stand polygons, yearly park maps, chapter 08's analysis."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from fungi_ssl.simulate import SimulatedStudy
from fungi_ssl.simulate.landscape import WATER, WOODLAND_CODES, Window
from fungi_ssl.simulate.sensors import sentinel_observations
from fungi_ssl.trends import contrasts, replicates, summaries, trendmaps
from fungi_ssl.trends import polygons as trends


@pytest.fixture(scope="module")
def study():
    return SimulatedStudy(n_samples=300, n_campaigns=8)


def _layers(landscape, w: Window, year: int) -> dict:
    return landscape.layers(np.array([w.epsg]), w.x[None], w.y[None], year)


def test_null_world_keeps_2017_and_only_the_weather_changes(study):
    null = trendmaps.null_world(study)
    w = trendmaps.park_window(study, "Lake District", 24)
    base = _layers(study.landscape, w, 2017)
    later = _layers(study.landscape, w, 2024)
    wood = np.isin(base["landcover"], WOODLAND_CODES)
    assert wood.any()
    # the changing world changes: stands age (and some decline or are cut)
    assert not np.array_equal(later["stand_age"][wood], base["stand_age"][wood])
    for year in (2019, 2024):
        n = _layers(null.landscape, w, year)
        for k in ("landcover", "canopy", "stand_age", "ancient", "declining", "host_fraction"):
            np.testing.assert_array_equal(n[k], base[k], err_msg=k)
        np.testing.assert_array_equal(n["log_richness"], base["log_richness"])
    # a drought year lowers richness by the drought effect, as in the changing world
    dry = _layers(null.landscape, w, 2018)
    land = base["landcover"] != WATER
    np.testing.assert_allclose(dry["log_richness"][land] - base["log_richness"][land],
                               study.config.richness.drought_effect)


def test_null_world_sees_the_same_clouds_and_the_same_2017(study):
    null = trendmaps.null_world(study)
    w = trendmaps.park_window(study, "Lake District", 24)  # holds woodland that ages and changes
    args = (np.array([w.epsg]), w.x[None], w.y[None])
    a = sentinel_observations(study.landscape, *args, 2021, model=study.config.sensors)
    b = sentinel_observations(null.landscape, *args, 2021, model=study.config.sensors)
    np.testing.assert_array_equal(a["s2_valid"], b["s2_valid"])     # same clouds
    np.testing.assert_array_equal(a["s1_valid"], b["s1_valid"])
    assert not np.array_equal(a["s2"], b["s2"])                     # another landscape
    c = sentinel_observations(study.landscape, *args, 2017, model=study.config.sensors)
    d = sentinel_observations(null.landscape, *args, 2017, model=study.config.sensors)
    for k in ("s2", "s2_valid", "s1", "s1_valid"):
        np.testing.assert_array_equal(c[k], d[k])
    with pytest.raises(ValueError, match="drought year"):
        trendmaps.StaticLandscape(0, base_year=2018)


def test_woodland_stands_are_single_stands_of_one_kind_traced_from_the_grid(study):
    size = 40
    p = trendmaps.woodland_stands(study, "Lake District", size)
    w = trendmaps.park_window(study, "Lake District", size)
    L = _layers(study.landscape, w, 2017)
    stack = xr.DataArray(np.zeros((1, size, size)), dims=("year", "y", "x"),
                         coords={"year": [2017], "y": w.y, "x": w.x}).rio.write_crs(w.epsg)
    labels, _ = trends.label_map(stack, p)            # refuses overlapping polygons
    assert len(p) > 3 and p["polygon_id"].is_unique
    for k, row in enumerate(p.itertuples(), start=1):
        pix = labels == k
        assert pix.sum() == round(row.area_ha * 100)              # traced exactly
        assert np.isin(L["landcover"][0][pix], WOODLAND_CODES).all()
        assert len(np.unique(L["stand"][0][pix])) == 1            # one stand
        assert (L["ancient"][0][pix] == (row.woodland == "ancient")).all()
        assert (L["declining"][0][pix] == row.declining).all()
    assert (p["area_ha"] >= 0.25).all()
    with pytest.raises(ValueError, match="park must be one of"):
        trendmaps.woodland_stands(study, "Snowdonia", size)


def test_reference_offsets_remove_a_shift_common_to_a_year():
    rng = np.random.default_rng(0)
    years = np.arange(2017, 2025)
    shift = rng.normal(0, 0.1, len(years))
    base = rng.normal(3, 0.5, (20, 20))
    trend = np.zeros((20, 20))
    trend[:10] = -0.03                                   # the top half declines
    v = base[None] + trend[None] * (years - 2017)[:, None, None] + shift[:, None, None]
    v[2, 15, 15] = np.nan                                # an invalid pixel is skipped
    m = xr.DataArray(v, dims=("year", "y", "x"), coords={"year": years})
    ref = np.zeros((20, 20), bool)
    ref[10:] = True                                      # the stable half
    off = trendmaps.reference_offsets(m, ref)
    np.testing.assert_allclose(off.to_numpy(), shift - shift.mean(), atol=1e-12)
    corrected = m - off.to_numpy()[:, None, None]
    np.testing.assert_allclose(np.diff(corrected.values[:, :10, :5], axis=0), -0.03, atol=1e-12)
    with pytest.raises(ValueError, match="does not match"):
        trendmaps.reference_offsets(m, ref[:5])
    with pytest.raises(ValueError, match="no pixel of the reference area"):
        trendmaps.reference_offsets(m, np.zeros((20, 20), bool))


def test_park_maps_refuses_bad_input_before_any_work(study):
    for kw, msg in (({"world": "static"}, "world must be one of"),
                    ({"parks": ["Snowdonia"]}, r"unknown park\(s\) \['Snowdonia'\]"),
                    ({"years": [2017, 2018, 2019]}, "fewer than 4 years"),
                    ({"size": 8}, "size must be at least 16")):
        with pytest.raises(ValueError, match=msg):
            trendmaps.park_maps(study, None, None, **kw)


@pytest.fixture(scope="module")
def tiny_chain():
    from fungi_ssl.embeddings.encoder import EncoderConfig, TesseraEncoder, TrainedEncoder
    from fungi_ssl.maps.mapmodel import MapModel

    enc = TesseraEncoder(EncoderConfig()).eval()
    trained = TrainedEncoder(enc, enc.config, enc.normaliser)
    rng = np.random.default_rng(0)
    X = rng.normal(0, 0.05, size=(200, 9 * 128)).astype(np.float32)
    model = MapModel("ridge", n_components=4).fit(X, np.expm1(3 + np.abs(20 * X[:, 4 * 128])),
                                                  encoder=trained)
    return trained, model


def test_trend_analysis_end_to_end_and_cached(study, tiny_chain, tmp_path):
    # two parks, more than two polygons: the contrast's interval rests on park-years
    trained, model = tiny_chain
    years = [2017, 2018, 2019, 2020]
    parks = ["Lake District", "Yorkshire Dales"]
    kw = {"size": 40, "years": years, "parks": parks, "n_boot": 200,
          "progress": False, "root": tmp_path}
    a = trendmaps.trend_analysis(study, trained, model, **kw)
    assert len(a.polygons) > 2 and set(a.polygons["park"]) == set(parks)
    pm = a.maps["null"]
    assert pm.n_cached == len(parks)             # the null world's 2017 is the changing world's
    assert a.maps["changing"].n_cached == 0
    pred = pm.predicted["Lake District"]
    assert pred.dims == ("year", "y", "x") and pred.sizes["y"] == 40
    assert pred.rio.crs.to_epsg() == 32630
    np.testing.assert_array_equal(pred.sel(year=2017).values,
                                  a.maps["changing"].predicted["Lake District"].sel(year=2017).values)
    assert np.isnan(pred.values[:, 0]).all()     # no full 3 x 3 patch on the edge
    # the null world's truth has no trend: every polygon's true slope is zero
    nt = a.trends["null_true"]
    np.testing.assert_array_equal(nt["slope"].dropna(), 0.0)
    r = a.results
    assert set(summaries.RESULT_KEYS) <= set(r)
    assert r["null_true_slope_difference"] == 0.0
    assert r["window_px"] == 40 and r["years"] == years
    assert r["interval"] == "park_years" and r["n_parks"] == 2
    assert r["n_park_years"] == 2 * len(years)
    assert r["normalisation"] == "none" and not a.normalised
    # the interval is park_year_contrast's on the zonal tables the analysis kept
    c = contrasts.park_year_contrast(a.zonal["changing"], n_boot=200, years=years)
    assert r["slope_difference_ci"] == list(c.ci)
    assert r["slope_difference"] == pytest.approx(c.difference)
    # the truth of the changing world: declining stands have a negative true slope
    t = a.trends["changing_true"].merge(a.polygons[["polygon_id", "declining"]], on="polygon_id")
    if t["declining"].any():
        assert (t.loc[t["declining"], "slope"] < -0.01).all()
    b = trendmaps.trend_analysis(study, trained, model, **kw)
    assert b.maps["changing"].n_cached == len(parks) * len(years)
    assert b.results["slope_difference_ci"] == r["slope_difference_ci"]


def test_replicate_worlds_see_the_same_landscape_through_other_sensors(study):
    w = trendmaps.park_window(study, "Lake District", 24)  # holds woodland that ages and changes
    args = (np.array([w.epsg]), w.x[None], w.y[None])
    assert len({replicates.replicate_seed(0, wd, k) for wd in trendmaps.WORLDS
                for k in range(20)}) == 40
    rep = replicates.replicate_study(study, "changing", 3)
    np.testing.assert_array_equal(_layers(rep.landscape, w, 2021)["log_richness"],
                                  _layers(study.landscape, w, 2021)["log_richness"])
    a = sentinel_observations(study.landscape, *args, 2021, model=study.config.sensors)
    b = sentinel_observations(rep.landscape, *args, 2021, model=study.config.sensors)
    assert not np.array_equal(a["s2"], b["s2"])                     # other weather and noise
    null = replicates.replicate_study(study, "null", 3)
    np.testing.assert_array_equal(_layers(null.landscape, w, 2024)["canopy"],
                                  _layers(study.landscape, w, 2017)["canopy"])
    with pytest.raises(ValueError, match="world must be one of"):
        replicates.replicate_seed(0, "static", 0)


def test_replicate_worlds_score_the_interval_and_are_cached(study, tiny_chain, tmp_path,
                                                            monkeypatch):
    trained, model = tiny_chain
    kw = {"n_worlds": 2, "size": 40, "years": [2017, 2018, 2019, 2020],
          "parks": ["Lake District", "Yorkshire Dales"], "n_boot": 100, "progress": False,
          "root": tmp_path}
    r = replicates.replicate_worlds(study, trained, model, **kw)
    t = r.table
    assert len(t) == 4 and sorted(t["world"].value_counts().to_dict().items()) == [
        ("changing", 2), ("null", 2)]
    assert t["sensor_seed"].nunique() == 4
    assert (t["ci_low"] <= t["difference"]).all() and (t["difference"] <= t["ci_high"]).all()
    # the null worlds' truth is no change at all
    np.testing.assert_allclose(t.loc[t["world"] == "null", "true_difference"], 0.0, atol=1e-12)
    s = r.summary
    assert s["n_worlds"] == 4 and s["n_park_years"] == 8 and s["n_cached"] == 0
    assert s["ci_coverage_90"] == t.loc[t["world"] == "changing", "covers"].mean()
    # two changing worlds are too few to measure a slope gain (each would rest on one other):
    # the interval is the residual one, and says so
    assert s["slope_gain_sd"] == 0.0 and (t["slope_gain_sd"] == 0.0).all()
    np.testing.assert_array_equal(t["ci_low"], t["residual_ci_low"])
    assert s["df"] == (2 - 1) * (4 - 2)
    assert set(s["changing"]) >= {"mean_error", "mean_z", "sd_over_mean_se",
                                  "sd_over_mean_se_residual"}
    again = replicates.replicate_worlds(study, trained, model, **kw)
    assert again.summary["n_cached"] == 4
    np.testing.assert_array_equal(again.table["ci_low"], t["ci_low"])
    # made one after another in this process, the worlds are those two workers made
    assert replicates.REPLICATE_WORKERS == 2 and os.cpu_count() >= 2  # t was made in parallel
    monkeypatch.setattr(replicates, "REPLICATE_WORKERS", 1)
    serial = replicates.replicate_worlds(study, trained, model,
                                         **{**kw, "root": tmp_path / "serial"})
    assert serial.summary["n_cached"] == 0
    pd.testing.assert_frame_equal(serial.table.drop(columns="cached"), t.drop(columns="cached"))
    with pytest.raises(ValueError, match="n_worlds must be at least 1"):
        replicates.replicate_worlds(study, trained, model, **{**kw, "n_worlds": 0})


def test_park_maps_in_lanes_equal_maps_made_one_by_one(study, tiny_chain, tmp_path,
                                                       monkeypatch):
    """Lanes (one torch thread each) change no value: the maps equal those made in turn."""
    monkeypatch.setenv("FUNGI_SSL_TORCH_THREADS", "2")  # two lanes, whatever the load
    trained, model = tiny_chain
    years, parks = [2017, 2019, 2021, 2023], ["Lake District", "Yorkshire Dales"]
    pm = trendmaps.park_maps(study, trained, model, world="changing", size=24, years=years,
                             parks=parks, progress=False, root=tmp_path / "lanes")
    for p in parks:
        for y in years:
            one, info = trendmaps._map_one(study, "changing", p, 24, y, trained, model, 0,
                                           tmp_path / "one", n_threads=2)
            assert info["cached"] == 0.0
            np.testing.assert_array_equal(pm.predicted[p].sel(year=y).values, one)
