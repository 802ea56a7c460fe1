"""Tests for fungi_ssl.validation.cv_schemes: chapter 09's CV schemes, site leakage and prediction grid."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fungi_ssl.core.results import read_results, write_results
from fungi_ssl.data.coordinates import nearest_distance_m
from fungi_ssl.validation import cv_schemes as cs
from fungi_ssl.validation import cv_schemes_results as csr


def _plots(n_sites: int, cores: int, seed: int = 0) -> pd.DataFrame:
    """``cores`` samples at each of ``n_sites`` plot coordinates, 30-300 km apart, in Europe."""
    rng = np.random.default_rng(seed)
    centres = np.column_stack([rng.uniform(0, 20, n_sites), rng.uniform(45, 60, n_sites)])
    t = pd.DataFrame(np.repeat(centres, cores, axis=0), columns=["longitude", "latitude"])
    t["site_id"] = np.repeat([f"s{i:03d}" for i in range(n_sites)], cores)
    return t


# --------------------------------------------------------------------------
# leakage, by hand
# --------------------------------------------------------------------------
def test_same_site_share_by_hand():
    # site a split over folds 0 and 1 (both its samples leak); b in one fold; c alone
    assert cs.same_site_share(["a", "a", "b", "b", "c"], [0, 1, 0, 0, 1]) == pytest.approx(2 / 5)
    # every site in one fold: nothing leaks
    assert cs.same_site_share(["a", "a", "b", "b"], [1, 1, 0, 0]) == 0.0
    # a site over three folds: all three samples have a site-mate in training
    assert cs.same_site_share(["a", "a", "a", "b"], [0, 1, 2, 0]) == pytest.approx(3 / 4)
    # labels of any kind
    assert cs.same_site_share(np.array([7, 7, 9]), np.array(["x", "y", "y"])) == pytest.approx(
        2 / 3
    )


def test_same_site_share_under_random_kfold_on_a_hand_made_table():
    """Six samples at three sites (2 each), 3 random folds: the share is the share of samples
    whose site-mate landed in another fold, counted by hand from the folds drawn."""
    t = pd.DataFrame({"longitude": [5.0, 5.0, 6.0, 6.0, 7.0, 7.0], "latitude": [50.0] * 6})
    t["site_id"] = ["a", "a", "b", "b", "c", "c"]
    folds, _ = cs.scheme_folds(t, "random", n_splits=3, seed=1)
    by_hand = (
        sum(folds[i] != folds[j] for i, j in ((0, 1), (1, 0), (2, 3), (3, 2), (4, 5), (5, 4))) / 6
    )
    assert cs.same_site_share(t["site_id"], folds) == pytest.approx(by_hand)
    # site-grouped folds keep each pair together
    site_folds, _ = cs.scheme_folds(t, "site_grouped", n_splits=3, seed=1)
    assert cs.same_site_share(t["site_id"], site_folds) == 0.0


def test_same_site_share_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="3 sites for 2 fold labels"):
        cs.same_site_share(["a", "a", "b"], [0, 1])


def test_site_lookup_r2_by_hand():
    # y = 1, 3, 5, 7, 10 at sites a a b b c in folds 0 1 0 1 0: each of a and b is
    # predicted by its site-mate (3, 1, 7, 5); c has none and gets the mean of fold 1
    # (its training folds): (3 + 7) / 2 = 5.
    y = [1.0, 3.0, 5.0, 7.0, 10.0]
    pred = np.array([3.0, 1.0, 7.0, 5.0, 5.0])
    expected = 1 - np.sum((np.array(y) - pred) ** 2) / np.sum((np.array(y) - np.mean(y)) ** 2)
    got = cs.site_lookup_r2(y, ["a", "a", "b", "b", "c"], [0, 1, 0, 1, 0])
    assert got == pytest.approx(expected)
    assert got == pytest.approx(1 - 41 / 48.8)


def test_site_lookup_r2_without_site_mates_is_the_training_mean():
    # sites kept whole: every prediction is its training folds' mean, so R² < 0
    y = [1.0, 2.0, 3.0, 4.0]
    r2 = cs.site_lookup_r2(y, ["a", "a", "b", "b"], [0, 0, 1, 1])
    pred = np.array([3.5, 3.5, 1.5, 1.5])
    assert r2 == pytest.approx(1 - np.sum((np.array(y) - pred) ** 2) / 5.0)
    assert r2 < 0


def test_site_lookup_r2_rejects_bad_input():
    with pytest.raises(ValueError, match="2 values for 3 samples"):
        cs.site_lookup_r2([1.0, 2.0], ["a", "b", "c"], [0, 1, 0])
    with pytest.raises(ValueError, match="at least two folds"):
        cs.site_lookup_r2([1.0, 2.0], ["a", "b"], [0, 0])
    with pytest.raises(ValueError, match="finite"):
        cs.site_lookup_r2([1.0, np.nan], ["a", "b"], [0, 1])


# --------------------------------------------------------------------------
# folds
# --------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["site_grouped", "spatial_block", "knndm"])
def test_spatial_schemes_keep_sites_whole(scheme):
    t = _plots(40, 3)
    grid = cs.prediction_grid(t["longitude"], t["latitude"], spacing_km=200, land_only=False)
    folds, res = cs.scheme_folds(t, scheme, n_splits=4, seed=0, prediction_points=grid)
    assert cs.same_site_share(t["site_id"], folds) == 0.0
    assert len(np.unique(folds)) >= 2
    assert (res is not None) == (scheme == "knndm")


def test_random_scheme_splits_sites_and_is_seeded():
    t = _plots(40, 5)
    a, _ = cs.scheme_folds(t, "random", n_splits=5, seed=3)
    b, _ = cs.scheme_folds(t, "random", n_splits=5, seed=3)
    c, _ = cs.scheme_folds(t, "random", n_splits=5, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.bincount(a).tolist() == [40] * 5
    # 5 cores over 5 folds: a site stays in one fold with probability 5**-4
    assert cs.same_site_share(t["site_id"], a) > 0.95


def test_scheme_folds_rejects_bad_input():
    t = _plots(10, 2)
    with pytest.raises(ValueError, match="scheme must be one of"):
        cs.scheme_folds(t, "leave-one-out", 2)
    with pytest.raises(ValueError, match="needs prediction_points"):
        cs.scheme_folds(t, "knndm", 2)
    with pytest.raises(ValueError, match="missing \\['latitude'\\]"):
        cs.scheme_folds(t.drop(columns="latitude"), "random", 2)


# --------------------------------------------------------------------------
# prediction grid
# --------------------------------------------------------------------------
def test_prediction_grid_spacing_on_the_ground():
    """Neighbouring points are spacing_km apart on the ground at every latitude (within 2%)."""
    g = cs.prediction_grid([-10.0, 30.0], [0.0, 70.0], spacing_km=150, land_only=False)
    xy = g[["longitude", "latitude"]].to_numpy()
    for lat in (5.0, 40.0, 65.0):
        row = xy[np.isclose(xy[:, 1], xy[np.argmin(np.abs(xy[:, 1] - lat)), 1])]
        d = nearest_distance_m(row[1:, 0], row[1:, 1], row[:1, 0], row[:1, 1])[0]
        assert d / 1000 == pytest.approx(150, rel=0.02)
    lats = np.unique(xy[:, 1])
    d = nearest_distance_m([0.0], [lats[1]], [0.0], [lats[0]])[0]
    assert d / 1000 == pytest.approx(150, rel=0.02)
    # every point inside the samples' extent
    assert g["longitude"].between(-10, 30).all() and g["latitude"].between(0, 70).all()
    assert g.attrs["extent"] == [-10.0, 30.0, 0.0, 70.0]


def test_prediction_grid_keeps_land_only():
    # a box from the Bay of Biscay to central France: the sea part is dropped
    box = ([-8.0, 4.0], [44.0, 46.0])
    every = cs.prediction_grid(*box, spacing_km=50, land_only=False)
    land = cs.prediction_grid(*box, spacing_km=50)
    assert 0 < len(land) < len(every)
    # the coast of Aquitaine runs near 1.2-1.5° W at these latitudes
    assert -2.0 < land["longitude"].min() < 0.0
    with pytest.raises(ValueError, match="no grid point .* is on land"):
        cs.prediction_grid([-30.0, -20.0], [40.0, 45.0], spacing_km=100)  # mid-Atlantic
    with pytest.raises(ValueError, match="spacing_km must be a positive"):
        cs.prediction_grid([0.0, 1.0], [45.0, 46.0], spacing_km=0)


# --------------------------------------------------------------------------
# the comparison
# --------------------------------------------------------------------------
def test_random_cv_flatters_a_model_that_can_only_recognise_sites():
    """Richness is a site effect no covariate explains; the only covariate is a random value
    shared by the cores of a site (as every 1 km covariate is). Random K-fold rewards
    learning the lookup; site-grouped CV shows there is no skill (R² ≤ 0.1)."""
    rng = np.random.default_rng(0)
    n_sites, cores = 60, 8
    t = _plots(n_sites, cores, seed=1)
    site_effect = rng.normal(0, 1, n_sites)
    t["y"] = np.repeat(site_effect, cores) + rng.normal(0, 0.3, n_sites * cores)
    cov = pd.DataFrame({"CGIAR_PET": np.repeat(rng.uniform(0, 1, n_sites), cores)})
    res = cs.compare_cv_schemes(
        t,
        cov,
        "y",
        runs=[("lightgbm", "climate")],
        schemes=["random", "site_grouped"],
        n_splits=5,
        model_params={"lightgbm": {"n_estimators": 100, "min_child_samples": 3}},
        progress=False,
    )
    r2 = res.r2("lightgbm", "climate")
    # true share of variance between sites: 1 / (1 + 0.09) ≈ 0.92
    assert r2["random"] > 0.7
    assert r2["site_grouped"] < 0.1
    leak = res.leakage()
    assert leak.loc["random", "same_site_share"] == 1.0
    assert leak.loc["site_grouped", "same_site_share"] == 0.0
    assert leak.loc["random", "site_lookup_r2"] > 0.8
    assert leak.loc["site_grouped", "site_lookup_r2"] < 0.0
    assert leak.loc["random", "median_test_train_km"] == 0.0
    assert leak.loc["site_grouped", "median_test_train_km"] > 10.0
    # the same folds for every run, one pooled row per run and scheme
    pooled = res.scores[res.scores["scope"] == "pooled"]
    assert len(pooled) == 2 and (pooled["n_test"] == len(t)).all()


def test_compare_all_four_schemes_and_the_chapter_json(tmp_path):
    rng = np.random.default_rng(2)
    t = _plots(50, 3, seed=3)
    cov = pd.DataFrame(
        {
            "CHELSA_BIO_Annual_Mean_Temperature": 150
            - 3 * t["latitude"]
            + rng.normal(0, 1, len(t)),
            "SG_Soil_pH_H2O_005cm": rng.normal(60, 5, len(t)),
            "Resolve_Biome": pd.Categorical(rng.integers(1, 4, len(t))),
        }
    )
    t["log_richness"] = 0.02 * cov["CHELSA_BIO_Annual_Mean_Temperature"] + rng.normal(
        0, 0.2, len(t)
    )
    grid = cs.prediction_grid(t["longitude"], t["latitude"], spacing_km=150, land_only=False)
    res = cs.compare_cv_schemes(
        t,
        cov,
        runs=[("ridge", "climate"), ("ridge", "all")],
        n_splits=3,
        prediction_points=grid,
        progress=False,
    )
    assert res.schemes == list(cs.SCHEMES)
    assert list(res.r2_table().columns) == list(cs.SCHEMES)
    assert res.knndm is not None and np.array_equal(res.test_train_m["knndm"], res.knndm.gjstar)
    out = csr.chapter_results(res, "ridge", "all", n_splits=3)
    for key in csr.HEADLINE_KEYS:
        assert key in out
    assert out["n_samples"] == 150 and out["n_sites"] == 50 and out["skipped"] is None
    assert out["r2_knndm"] == pytest.approx(res.r2("ridge", "all")["knndm"])
    assert out["spun_published"]["r2_random"] == cs.SPUN_PUBLISHED["r2_random"]
    write_results("09_real", out, tmp_path)
    back = read_results("09_real", tmp_path)
    assert back["r2_random"] == pytest.approx(out["r2_random"])
    assert set(back["leakage"]) == set(cs.SCHEMES)


def test_compare_rejects_bad_input():
    t = _plots(10, 2)
    t["y"] = 1.0
    cov = pd.DataFrame({"CGIAR_PET": np.arange(20.0)})
    with pytest.raises(ValueError, match="no target column 'z'"):
        cs.compare_cv_schemes(t, cov, "z", progress=False)
    with pytest.raises(ValueError, match="19 rows for 20 samples"):
        cs.compare_cv_schemes(t, cov.iloc[:19], "y", progress=False)
    with pytest.raises(ValueError, match="unknown model 'svm'"):
        cs.compare_cv_schemes(t, cov, "y", runs=[("svm", "climate")], progress=False)
    with pytest.raises(ValueError, match="schemes: unknown"):
        cs.compare_cv_schemes(t, cov, "y", schemes=["loo"], progress=False)
    t["sample_id"] = [f"x{i}" for i in range(20)]
    shuffled = cov.set_axis(pd.Index(t["sample_id"][::-1].to_numpy(), name="sample_id"))
    with pytest.raises(ValueError, match="not in the order of samples"):
        cs.compare_cv_schemes(t, shuffled, "y", progress=False)


def test_design_matrix_one_hot_keeps_group_prefix_and_missing_values():
    cov = pd.DataFrame(
        {"CGIAR_PET": [1.0, 2.0, 3.0], "Resolve_Biome": pd.Categorical([4, None, 12])}
    )
    X = cs.design_matrix(cov, "all")
    assert list(X.columns) == ["CGIAR_PET", "Resolve_Biome_4", "Resolve_Biome_12"]
    assert X.loc[0, "Resolve_Biome_4"] == 1.0 and X.loc[2, "Resolve_Biome_12"] == 1.0
    assert X.loc[1, ["Resolve_Biome_4", "Resolve_Biome_12"]].isna().all()
    with pytest.raises(ValueError, match="soil"):
        cs.design_matrix(cov, "soil")


# --------------------------------------------------------------------------
# inputs and results when skipped
# --------------------------------------------------------------------------
def test_chapter_inputs_and_skipped_results(tmp_path):
    none = cs.chapter_inputs("")
    assert not none.has_any and "needs a real data directory" in none.skip_reason
    (tmp_path / "samples.csv").write_text("sample_id,longitude,latitude,raw_obs_div,rarefied\n")
    only_samples = cs.chapter_inputs(tmp_path)
    assert only_samples.has_any and only_samples.covariates is None
    assert "holds no table of 1 km covariates" in only_samples.skip_reason
    assert "ECM" not in only_samples.guild_skip_reason("AM")
    with pytest.raises(FileNotFoundError, match="not found"):
        cs.chapter_inputs(tmp_path / "missing")
    out = csr.skipped_results(none.skip_reason, tables={})
    assert out["skipped"] == none.skip_reason
    assert all(out[k] is None for k in csr.HEADLINE_KEYS)
    json.dumps(out)  # plain JSON


def test_cv_sizes_follow_the_profile():
    quick, full = cs.cv_sizes("quick"), cs.cv_sizes("full")
    assert quick.n_splits < full.n_splits
    assert quick.model_params()["rf"]["n_estimators"] <= full.model_params()["rf"]["n_estimators"]


def test_pixel_and_plot_sites_by_hand():
    pix = pd.DataFrame(
        {
            "sample_id": ["a", "b", "c", "e"],
            "longitude": [6.004] * 3 + [8.0],
            "latitude": [52.004] * 3 + [50.0],
        }
    )
    plot = pd.DataFrame(
        {
            "sample_id": ["a", "b", "c", "d"],
            "longitude": [6.0, 6.0001, 6.0044, 9.0],
            "latitude": [52.0] * 4,
        }
    )
    # a and b are 7 m apart (one site), c is 300 m away; e and d are in one table only
    assert cs.pixel_and_plot_sites(pix, plot) == {
        "n_shared": 3,
        "n_pixel_sites": 1,
        "n_plot_sites": 2,
    }
    assert cs.pixel_and_plot_sites(pix.iloc[3:], plot)["n_shared"] == 0


# --------------------------------------------------------------------------
# the real SPUN table
# --------------------------------------------------------------------------
def test_real_spun_table_random_kfold_leaks_sites(real_data_dir):
    """On the real SPUN table most samples share a 1 km pixel site, so random K-fold puts a
    site-mate in training for most test samples; the spatial schemes for none."""
    from fungi_ssl.simulate.field_data import open_field_data

    fd = open_field_data(real_data_dir, table="covariates")
    t = fd.samples
    random_folds, _ = cs.scheme_folds(t, "random", n_splits=5)
    assert cs.same_site_share(t["site_id"], random_folds) > 0.8
    grid = cs.prediction_grid(t["longitude"], t["latitude"], spacing_km=200)
    assert 2_000 < len(grid) < 5_000
    folds, res = cs.scheme_folds(t, "knndm", n_splits=5, prediction_points=grid)
    assert cs.same_site_share(t["site_id"], folds) == 0.0
    assert not res.random_cv and np.median(res.gjstar) > 100_000
