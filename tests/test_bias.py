"""Tests of fungi_ssl.uncertainty.bias: error, calibration, residual structure, intervals, AOA."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import pdist
from sklearn.neighbors import NearestNeighbors

from fungi_ssl.uncertainty import aoa, autocorrelation, bias, errors, intervals
from fungi_ssl.uncertainty.aoa import AreaOfApplicability, aoa_errors, importance_weights
from fungi_ssl.uncertainty.autocorrelation import geodesic_pairs, morans_i_bands
from fungi_ssl.uncertainty.bias import RESULT_KEYS, bias_results
from fungi_ssl.uncertainty.errors import (
    calibration,
    calibration_bins,
    crossfit_smearing,
    dominant_landcover,
    error_by_class,
    error_covariate_bins,
    error_covariate_correlation,
    error_table,
    heldout_table,
    mean_error,
    plot_calibration,
)
from fungi_ssl.uncertainty.intervals import (
    ConformalRegressor,
    conformal_holdout,
    conformal_quantile,
    coverage_table,
    interval_coverage,
)


# --------------------------------------------------------------------------
# synthetic data
# --------------------------------------------------------------------------
def clustered_sites(n_sites: int = 400, cores: int = 3, seed: int = 0):
    """Sites with a spatially smooth effect that no predictor carries.

    ``x1`` is an observed predictor; ``f1, f2`` are a fingerprint of the site
    (identical for its cores, as one SSL patch is), so a flexible model can
    learn a site's effect from its other cores, but not a site it never saw.
    """
    rng = np.random.default_rng(seed)
    lon_s = rng.uniform(5, 9, n_sites)
    lat_s = rng.uniform(46, 49, n_sites)
    field = np.sin(lon_s * 2 * np.pi / 1.3) + np.cos(lat_s * 2 * np.pi / 0.9)  # ~100 km waves
    u = field + rng.normal(0, 0.3, n_sites)
    x1 = rng.normal(size=n_sites)
    fp = rng.normal(size=(n_sites, 2))
    site = np.repeat(np.arange(n_sites), cores)
    X = pd.DataFrame({"x1": x1[site], "f1": fp[site, 0], "f2": fp[site, 1]})
    y = X["x1"].to_numpy() + u[site] + rng.normal(0, 0.3, site.size)
    return X, y, np.column_stack([lon_s[site], lat_s[site]]), site


# --------------------------------------------------------------------------
# bad input: one clear error each
# --------------------------------------------------------------------------
def test_lengths_differ_is_one_clear_error():
    with pytest.raises(ValueError, match="differ in length: 3 observations and 2 predictions"):
        mean_error([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="differ in length"):
        calibration([1.0, 2.0, 3.0], [1.0, 2.0])


def test_nan_in_observations_is_one_clear_error():
    with pytest.raises(
        ValueError, match=r"y_true: 1 NaN or infinite value\(s\), first at position 1"
    ):
        mean_error([1.0, np.nan, 3.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="y_true"):
        error_by_class([1.0, np.nan], [1.0, 2.0], ["a", "b"])
    with pytest.raises(ValueError, match="y_true"):
        interval_coverage([np.nan, 1.0], [0.0, 0.0], [2.0, 2.0])


@pytest.mark.parametrize("level", [0.0, 1.0, -0.1, 1.5, 90])
def test_confidence_outside_unit_interval(level):
    with pytest.raises(ValueError, match="confidence must lie strictly between 0 and 1"):
        conformal_quantile([1.0, 2.0, 3.0], level)
    with pytest.raises(ValueError, match="confidence must lie strictly between 0 and 1"):
        ConformalRegressor("ridge", confidence=level)
    X, y, ll, _ = clustered_sites(40, 2)
    with pytest.raises(ValueError, match="confidence must lie strictly between 0 and 1"):
        conformal_holdout(X, y, ll, confidence=level, model="ridge", progress=False)


def test_aoa_asked_about_other_predictors():
    train = pd.DataFrame({"a": [0.0, 1.0, 2.0, 4.0], "b": [1.0, 0.0, 3.0, 2.0]})
    aoa = AreaOfApplicability().fit(train)
    with pytest.raises(
        ValueError,
        match=r"trained on other predictors; missing \['b'\], "
        r"not trained on \['c'\]",
    ):
        aoa.dissimilarity(pd.DataFrame({"a": [1.0], "c": [2.0]}))
    with pytest.raises(
        ValueError, match="3 columns, but the area of applicability was trained on 2"
    ):
        aoa.dissimilarity(np.zeros((1, 3)))
    # the same columns in another order are fine
    same = aoa.dissimilarity(pd.DataFrame({"b": [0.5], "a": [1.5]}))
    assert np.allclose(same, aoa.dissimilarity(pd.DataFrame({"a": [1.5], "b": [0.5]})))


def test_moran_without_coordinates():
    r = np.arange(5.0)
    with pytest.raises(ValueError, match="longitude and latitude are required for Moran's I"):
        morans_i_bands(r, None, None)
    with pytest.raises(ValueError, match="Moran's I coordinates: longitude is missing"):
        morans_i_bands(r, [1.0, np.nan, 1, 1, 1], [50.0] * 5)
    with pytest.raises(ValueError, match="5 residuals"):
        morans_i_bands(r, [1.0] * 4, [50.0] * 4)
    h = pd.DataFrame({"scheme": "spatial", "y_true": r, "y_pred": r + 1})
    # without longitude/latitude the chapter's dict leaves Moran's I out instead of guessing
    assert bias_results(h)["morans_i_residuals"] is None


def test_other_bad_input():
    with pytest.raises(ValueError, match="all predictions are equal"):
        calibration([1.0, 2.0, 3.0], [2.0, 2.0, 2.0])
    with pytest.raises(ValueError, match="0 ≤ lo < hi"):
        morans_i_bands(np.arange(4.0), [1.0, 1.1, 1.2, 1.3], [50.0] * 4, [(5, 1)])
    with pytest.raises(ValueError, match="not fitted"):
        ConformalRegressor("ridge").predict(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="method must be"):
        ConformalRegressor("ridge", method="jackknife")
    with pytest.raises(ValueError, match="without variance"):
        AreaOfApplicability().fit(pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 3.0]}))
    with pytest.raises(ValueError, match="all weights are ≤ 0"):
        AreaOfApplicability().fit(pd.DataFrame({"a": [1.0, 2.0]}), weights=[0.0])
    with pytest.raises(ValueError, match="tested in more than one fold"):
        AreaOfApplicability().fit(
            pd.DataFrame({"a": [1.0, 2.0, 3.0]}), folds=[([2], [0, 1]), ([1], [0, 2])]
        )
    with pytest.raises(ValueError, match="inside: expected booleans"):
        aoa_errors([1.0, 2.0], [1.0, 2.0], [1, 0])


# --------------------------------------------------------------------------
# mean error and smearing
# --------------------------------------------------------------------------
def test_mean_error_percent_and_sign():
    m = mean_error([10.0, 20.0, 30.0], [12.0, 22.0, 32.0])
    assert m.mean_error == pytest.approx(2.0)  # predicted − observed: over-prediction > 0
    assert m.mean_error_pct_of_mean == pytest.approx(10.0)
    assert m.n == 3


def test_expm1_back_transform_is_biased_and_crossfit_smearing_removes_it():
    # a perfect model of the conditional mean of log1p(richness) with residual SD 0.8:
    # expm1 of it is the conditional *median*, E[richness] is exp(mu + s²/2) − 1
    rng = np.random.default_rng(3)
    n = 8000
    mu = rng.normal(3.5, 0.7, n)
    y = mu + rng.normal(0, 0.8, n)
    split = np.arange(n) % 5
    tab = error_table(y, mu, smearing=crossfit_smearing(y, mu, split))
    assert abs(tab.loc["log1p", "mean_error_pct_of_mean"]) < 1.0
    assert tab.loc["richness", "mean_error_pct_of_mean"] < -20  # exp(-0.32) − 1 ≈ −27%
    assert abs(tab.loc["richness (smearing)", "mean_error_pct_of_mean"]) < 3.0


def test_crossfit_smearing_leaves_out_the_same_sample_tested_by_another_seed():
    y = np.array([1.0, 1.0, 3.0, 3.0])
    pred = np.zeros(4)
    # rows 0 and 2 are one sample tested twice; its own residual must not enter its factor
    f = crossfit_smearing(y, pred, split=[0, 0, 1, 1], sample_id=["s", "t", "s", "u"])
    assert f[0] == pytest.approx(np.exp(3.0))  # only sample u of split 1
    assert f[2] == pytest.approx(np.exp(1.0))  # only sample t of split 0


# --------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------
def test_calibration_recovers_known_line():
    rng = np.random.default_rng(0)
    pred = rng.normal(3, 1, 5000)
    obs = 0.5 + 0.8 * pred + rng.normal(0, 0.5, 5000)
    c = calibration(obs, pred)
    assert c.slope == pytest.approx(0.8, abs=3 * c.slope_se + 1e-3)
    assert c.intercept == pytest.approx(0.5, abs=3 * c.intercept_se + 1e-3)
    assert abs(c.slope - 0.8) < 0.03


def test_calibration_bins_show_shrinkage():
    rng = np.random.default_rng(1)
    truth = rng.normal(0, 1, 4000)
    pred = 0.5 * truth  # shrunk to the mean, as forests do
    b = calibration_bins(truth, pred, n_bins=8)
    assert len(b) == 8 and b["n"].sum() == 4000
    # observed spreads twice as far as predicted: top bin under-predicted, bottom over
    assert b["observed_mean"].iloc[-1] > b["predicted_mean"].iloc[-1] + 0.5
    assert b["observed_mean"].iloc[0] < b["predicted_mean"].iloc[0] - 0.5
    assert np.allclose(b["observed_mean"], 2 * b["predicted_mean"], atol=1e-9)


def test_plot_calibration_draws_bins_fit_and_identity():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(2)
    t = rng.normal(size=300)
    fig, ax = plt.subplots()
    out = plot_calibration(ax, t, t + rng.normal(0, 0.3, 300), n_bins=5, label="random")
    assert out is ax
    assert len(ax.lines) >= 2  # 1:1 and the fitted line
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("random: slope") for t in texts) and "1:1" in texts
    plt.close(fig)


# --------------------------------------------------------------------------
# errors against covariates and classes
# --------------------------------------------------------------------------
def test_errors_against_covariates_find_the_one_that_matters():
    rng = np.random.default_rng(4)
    n = 2000
    cov = pd.DataFrame({"temp": rng.normal(size=n), "ph": rng.normal(size=n)})
    y = rng.normal(size=n)
    pred = y + 0.5 * cov["temp"].to_numpy() + rng.normal(0, 0.3, n)  # bias grows with temp
    r = error_covariate_correlation(y, pred, cov)
    assert r.index[0] == "temp"
    assert r.loc["temp", "spearman_rho"] > 0.6
    assert abs(r.loc["ph", "spearman_rho"]) < 0.06
    b = error_covariate_bins(y, pred, cov, n_bins=5)
    temp = b[b["covariate"] == "temp"]
    assert temp["mean_error"].is_monotonic_increasing
    assert temp["n"].sum() == n


def test_landcover_class_bias():
    cov = pd.DataFrame(
        {
            "ConsensusLandCoverClass_Mixed_Other_Trees": [80.0, 70, 10, 0, np.nan],
            "ConsensusLandCoverClass_Herbaceous_Vegetation": [20.0, 30, 90, 100, np.nan],
        }
    )
    cls = dominant_landcover(cov)
    assert cls.iloc[:4].tolist() == ["Mixed_Other_Trees"] * 2 + ["Herbaceous_Vegetation"] * 2
    assert pd.isna(cls.iloc[4])
    y = np.array([4.0, 4.0, 2.0, 2.0, 3.0])
    pred = np.array([3.0, 3.0, 2.5, 2.5, 3.0])  # woodland under-predicted by 1
    t = error_by_class(y, pred, cls)
    assert t.loc["Mixed_Other_Trees", "mean_error"] == pytest.approx(-1.0)
    assert t.loc["Herbaceous_Vegetation", "mean_error_pct_of_mean"] == pytest.approx(25.0)
    assert t["n"].sum() == 4  # the sample without a class is left out


# --------------------------------------------------------------------------
# Moran's I
# --------------------------------------------------------------------------
def test_geodesic_pairs_are_wgs84_geodesics_within_the_radius():
    from pyproj import Geod

    rng = np.random.default_rng(5)
    lon, lat = rng.uniform(5, 6, 200), rng.uniform(50, 51, 200)
    i, j, d = geodesic_pairs(lon, lat, 20.0)
    assert (d <= 20.0).all() and (i != j).all()
    _, _, ref = Geod(ellps="WGS84").inv(lon[i], lat[i], lon[j], lat[j])
    assert np.allclose(d, ref / 1000.0)
    # every pair within 20 km found (brute force on the ellipsoid)
    a, b = np.triu_indices(200, 1)
    _, _, all_d = Geod(ellps="WGS84").inv(lon[a], lat[a], lon[b], lat[b])
    assert int((all_d <= 20_000).sum()) * 2 == i.size


def test_moran_smooth_field_against_noise():
    rng = np.random.default_rng(6)
    lon, lat = rng.uniform(5, 8, 600), rng.uniform(48, 50, 600)
    smooth = np.sin(lon * 3) + np.cos(lat * 4)
    bands = [(0, 10), (10, 50)]
    rs = morans_i_bands(smooth, lon, lat, bands, permutations=199, colocated="exclude")
    assert (rs["I"] > 0.5).all() and (rs["p_sim"] <= 0.01).all()
    rn = morans_i_bands(
        rng.normal(size=600), lon, lat, bands, permutations=199, colocated="exclude"
    )
    assert (rn["I"].abs() < 0.1).all() and (rn["p_sim"] > 0.01).all()


def test_moran_colocated_cores_reported_apart_from_distance_bands():
    # 150 sites of 4 cores each, far apart; residuals = site effect only (no spatial field)
    rng = np.random.default_rng(7)
    lon_s, lat_s = rng.uniform(0, 20, 150), rng.uniform(40, 55, 150)
    site = np.repeat(np.arange(150), 4)
    resid = rng.normal(0, 1, 150)[site] + rng.normal(0, 0.3, site.size)
    lon, lat = lon_s[site], lat_s[site]
    sep = morans_i_bands(resid, lon, lat, [(0, 1), (1, 200)], permutations=99)
    assert sep["band"].tolist() == ["0 km (same site)", "0–1 km", "1–200 km"]
    assert sep.loc[0, "I"] > 0.8 and sep.loc[0, "n_pairs"] == 150 * 6
    assert sep.loc[1, "n_pairs"] == 0 and math.isnan(sep.loc[1, "I"])  # no other site within 1 km
    assert abs(sep.loc[2, "I"]) < 0.15  # sites do not correlate with each other
    inc = morans_i_bands(resid, lon, lat, [(0, 1)], permutations=99, colocated="include")
    assert inc["band"].tolist() == ["0–1 km"] and inc.loc[0, "I"] > 0.8


def test_moran_permutations_are_seeded_and_leave_numpy_state_alone():
    rng = np.random.default_rng(8)
    lon, lat = rng.uniform(5, 6, 200), rng.uniform(50, 51, 200)
    r = rng.normal(size=200) + np.sin(lon * 20)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    a = morans_i_bands(r, lon, lat, [(0, 20)], permutations=99, seed=1)
    assert (np.random.get_state()[1] == before).all()
    b = morans_i_bands(r, lon, lat, [(0, 20)], permutations=99, seed=1)
    pd.testing.assert_frame_equal(a, b)


# --------------------------------------------------------------------------
# prediction intervals
# --------------------------------------------------------------------------
def test_conformal_quantile_by_hand():
    s = np.arange(1.0, 10.0)  # 9 scores: k = ceil(10 * 0.8) = 8
    assert conformal_quantile(s, 0.8) == 8.0
    assert conformal_quantile(s, 0.5) == 5.0  # ceil(10 * 0.5) = 5
    assert conformal_quantile(s, 0.95) == math.inf  # ceil(9.5) = 10 > 9


def test_split_conformal_coverage_on_exchangeable_data():
    # iid samples: random test parts are exchangeable with random calibration rows,
    # so coverage is 0.90 up to sampling error (SD ≈ 0.008 here); tolerance ±0.03
    rng = np.random.default_rng(9)
    n = 3000
    X = rng.normal(size=(n, 4))
    y = X @ [1.0, -0.5, 0.0, 0.3] + rng.normal(0, 0.7, n)
    ll = np.column_stack([rng.uniform(0, 10, n), rng.uniform(40, 50, n)])
    out = conformal_holdout(X, y, ll, schemes=("random",), model="ridge", n_seeds=5, progress=False)
    cov = coverage_table(out).set_index("scheme")
    assert cov.loc["random", "n"] == 5 * 600
    assert abs(cov.loc["random", "coverage"] - 0.90) <= 0.03


def test_cv_plus_coverage_on_exchangeable_data():
    rng = np.random.default_rng(10)
    n = 1500
    X = rng.normal(size=(n, 3))
    y = X[:, 0] + rng.normal(0, 0.5, n)
    cr = ConformalRegressor("ridge", method="cv+", n_splits=5, seed=0).fit(X[:600], y[:600])
    pred, lo, hi = cr.predict_interval(X[600:], batch_size=100)
    assert cr.residuals_.size == 600 and len(cr.models_) == 5
    assert (lo < pred).all() and (pred < hi).all()
    assert abs(interval_coverage(y[600:], lo, hi) - 0.90) <= 0.03


def test_spatial_coverage_falls_short_when_calibrated_at_random():
    # Sites carry a spatially smooth effect no predictor has. Under random splits a
    # test core's site-mates are in training, and a forest learns the site from
    # its fingerprint; under 50 km blocks the site and its neighbours are unseen.
    # Random calibration rows then have small errors that spatial test rows lack.
    X, y, ll, _ = clustered_sites()
    rf = {"n_estimators": 40, "min_samples_leaf": 1, "max_features": 1.0}
    kw = {
        "model": "rf",
        "model_params": rf,
        "n_seeds": 3,
        "block_size_m": 50_000,
        "progress": False,
    }
    naive = coverage_table(conformal_holdout(X, y, ll, calibration="random", **kw))
    naive = naive.set_index("scheme")["coverage"]
    matched = coverage_table(conformal_holdout(X, y, ll, schemes=("spatial",), **kw))
    assert abs(naive["random"] - 0.90) <= 0.04
    assert naive["spatial"] < 0.80  # the shortfall (0.59 at this seed)
    assert matched.loc[0, "calibration"] == "block"
    assert matched.loc[0, "coverage"] > naive["spatial"] + 0.15  # calibrating on blocks helps


def test_book_chain_auto_reduces_ssl_patch_and_early_stops():
    rng = np.random.default_rng(11)
    n = 300
    ssl = pd.DataFrame(
        rng.normal(size=(n, 1152)).astype(np.float32), columns=[f"ssl_{i:04d}" for i in range(1152)]
    )
    X = ssl.assign(CGIAR_PET=rng.normal(size=n))
    y = ssl.iloc[:, :128].mean(axis=1).to_numpy() * 5 + X["CGIAR_PET"].to_numpy()
    cr = ConformalRegressor("lightgbm", seed=0, model_params={"n_estimators": 200}).fit(
        X, y, groups=np.arange(n) // 3
    )
    chain = cr.models_[0]
    assert type(chain.transform).__name__ == "PatchReducer"
    assert chain.model.best_iteration_ <= 200
    _pred, lo, hi = cr.predict_interval(X.iloc[:10])
    assert np.allclose(hi - lo, 2 * cr.quantile_)


def test_coverage_table_keeps_schemes_apart():
    iv = pd.DataFrame(
        {
            "scheme": ["random"] * 4 + ["spatial"] * 2,
            "y_true": [1.0, 2.0, 3.0, 4.0, 1.0, 5.0],
            "lower": [0.0, 1.0, 2.0, 3.0, 0.0, 0.0],
            "upper": [2.0, 3.0, 4.0, 5.0, 2.0, 2.0],
        }
    )
    cov = coverage_table(iv).set_index("scheme")
    assert cov.loc["random", "coverage"] == 1.0
    assert cov.loc["spatial", "coverage"] == 0.5
    assert cov.loc["spatial", "width_median_richness"] == pytest.approx(np.expm1(2.0))


# --------------------------------------------------------------------------
# area of applicability
# --------------------------------------------------------------------------
def test_aoa_by_hand_four_points_on_a_line():
    # Training x = 0, 1, 2, 4; folds {0, 1} and {2, 4}. Standardising and a weight
    # scale every distance by the same w / sd, which cancels in DI, so work in x:
    #   mean pairwise distance = (1 + 2 + 4 + 1 + 3 + 2) / 6 = 13/6
    #   fold 0 (x=0, 1) trained on {2, 4}: nearest distances 2 and 1
    #   fold 1 (x=2, 4) trained on {0, 1}: nearest distances 1 and 3
    #   training DI = [2, 1, 1, 3] / (13/6) = [12, 6, 6, 18] / 13
    #   type-7 quartiles of [6, 6, 12, 18]/13: Q1 = 6/13, Q3 = 12/13 + 0.25·6/13 = 13.5/13
    #   Q3 + 1.5·IQR = (13.5 + 1.5·7.5)/13 = 24.75/13 > max 18/13, so threshold = 18/13
    #   new x = 5: nearest 4, DI = 1/(13/6) = 6/13, inside;
    #   new x = 8: nearest 4, DI = 4/(13/6) = 24/13 > 18/13, outside
    train = pd.DataFrame({"x": [0.0, 1.0, 2.0, 4.0]})
    aoa = AreaOfApplicability().fit(train, folds=[0, 0, 1, 1], weights={"x": 2.5})
    sd = np.std([0.0, 1, 2, 4], ddof=1)
    assert aoa.mean_distance_ == pytest.approx(13 / 6 * 2.5 / sd)
    assert np.allclose(aoa.train_di_, np.array([12, 6, 6, 18]) / 13)
    assert aoa.threshold_ == pytest.approx(18 / 13)
    new = pd.DataFrame({"x": [5.0, 8.0, np.nan]})
    di = aoa.dissimilarity(new)
    assert np.allclose(di[:2], [6 / 13, 24 / 13]) and np.isnan(di[2])
    assert aoa.predict(new).tolist() == [True, False, False]


def test_aoa_by_hand_outlier_removed_threshold_and_weights():
    # x = 0, 1, 2, 3, 4, 20, leave-one-out folds. Nearest other sample: 1 for the
    # first five, 16 for x = 20. Pairwise distances: 20 within 0…4, plus
    # 20+19+18+17+16 = 90 to x = 20: mean 110/15 = 22/3. Training DI = [1]*5 + [16],
    # times 3/22. Q1 = Q3 = 3/22, IQR 0: threshold = 3/22, the outlier (48/22) is removed.
    # A second predictor with weight 0 must not change anything.
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"x": [0.0, 1, 2, 3, 4, 20], "junk": rng.normal(size=6)})
    aoa = AreaOfApplicability().fit(train, folds=np.arange(6), weights={"x": 1.0, "junk": 0.0})
    assert aoa.threshold_ == pytest.approx(3 / 22)
    assert np.allclose(aoa.train_di_, np.array([1, 1, 1, 1, 1, 16]) * 3 / 22)
    new = pd.DataFrame({"x": [4.5, 10.0, 20.5], "junk": [100.0, -5.0, 0.0]})
    assert np.allclose(aoa.dissimilarity(new), np.array([0.5, 6.0, 0.5]) * 3 / 22)
    assert aoa.predict(new).tolist() == [True, False, True]  # 20.5 is near a training sample
    # DI does not depend on the scale of the weights
    aoa10 = AreaOfApplicability().fit(train, folds=np.arange(6), weights={"x": 10.0, "junk": 0.0})
    assert np.allclose(aoa10.dissimilarity(new), aoa.dissimilarity(new))


def test_aoa_folds_as_pairs_equal_labels_and_none_means_nearest_other():
    rng = np.random.default_rng(12)
    X = pd.DataFrame(rng.normal(size=(60, 3)), columns=list("abc"))
    labels = np.arange(60) % 4
    pairs = [(np.flatnonzero(labels != k), np.flatnonzero(labels == k)) for k in range(4)]
    a = AreaOfApplicability().fit(X, folds=labels)
    b = AreaOfApplicability().fit(X, folds=pairs)
    assert np.allclose(a.train_di_, b.train_di_) and a.threshold_ == b.threshold_
    # no folds: nearest other sample; a duplicated row (one site's cores) is 0 away
    Xd = pd.concat([X, X.iloc[[0]]], ignore_index=True)
    c = AreaOfApplicability().fit(Xd)
    assert c.train_di_[0] == 0.0 and c.train_di_[60] == 0.0
    Z = ((Xd - Xd.mean()) / Xd.std(ddof=1)).to_numpy()
    nn = NearestNeighbors(n_neighbors=2).fit(Z).kneighbors(Z[1:60])[0][:, 1]  # [0] is itself
    assert np.allclose(c.train_di_[1:60], nn / c.mean_distance_)
    # a negative fold label means never tested: DI NaN, left out of the threshold
    d = AreaOfApplicability().fit(X, folds=np.where(np.arange(60) < 5, -1, labels))
    assert np.isnan(d.train_di_[:5]).all() and np.isfinite(d.train_di_[5:]).all()


def test_aoa_nearest_neighbours_and_mean_distance_are_exact():
    rng = np.random.default_rng(13)
    train = rng.normal(size=(700, 8)) * np.arange(1, 9)
    train = np.vstack([train, train[:50]])  # duplicates, as cores of a site
    w = rng.uniform(0.1, 2.0, 8)
    aoa = AreaOfApplicability(n_jobs=2).fit(train, weights=w)
    Z = (train - train.mean(0)) / train.std(0, ddof=1) * w
    n = len(Z)
    assert aoa.mean_distance_ == pytest.approx(2 * pdist(Z).sum() / (n * (n - 1)), rel=1e-10)
    new = rng.normal(size=(3000, 8)) * np.arange(1, 9) * 1.5
    Zn = (new - train.mean(0)) / train.std(0, ddof=1) * w
    ref = NearestNeighbors(n_neighbors=1).fit(Z).kneighbors(Zn)[0][:, 0]
    assert np.allclose(aoa.dissimilarity(new), ref / aoa.mean_distance_, rtol=1e-6)


@pytest.mark.parametrize("algorithm", ["brute", "kd_tree"])
def test_aoa_sklearn_index_gives_the_same_di(algorithm):
    rng = np.random.default_rng(16)
    train = rng.normal(size=(300, 5))
    train = np.vstack([train, train[:20]])
    new = rng.normal(size=(500, 5)) * 1.5
    folds = np.arange(len(train)) % 4
    ref = AreaOfApplicability().fit(train, folds=folds)
    sk = AreaOfApplicability(algorithm=algorithm).fit(train, folds=folds)
    assert np.allclose(sk.train_di_, ref.train_di_) and sk.threshold_ == pytest.approx(
        ref.threshold_
    )
    assert np.allclose(sk.dissimilarity(new), ref.dissimilarity(new))
    none_ref = AreaOfApplicability().fit(train)
    none_sk = AreaOfApplicability(algorithm=algorithm).fit(train)
    assert np.allclose(none_sk.train_di_, none_ref.train_di_)
    with pytest.raises(ValueError, match="algorithm must be"):
        AreaOfApplicability(algorithm="annoy").fit(train)


def test_aoa_negative_weights_warn_and_count_as_zero():
    X = pd.DataFrame({"a": [0.0, 1.0, 3.0], "b": [5.0, 1.0, 2.0]})
    with pytest.warns(UserWarning, match="negative weight"):
        neg = AreaOfApplicability().fit(X, weights={"a": 1.0, "b": -3.0})
    zero = AreaOfApplicability().fit(X, weights={"a": 1.0, "b": 0.0})
    assert np.allclose(neg.train_di_, zero.train_di_)


def test_importance_weights_of_book_chain():
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from fungi_ssl.validation.models import make_model

    rng = np.random.default_rng(14)
    X = pd.DataFrame({"a": rng.normal(size=400), "b": rng.normal(size=400)})
    y = 3 * X["a"] + rng.normal(0, 0.1, 400)
    pipe = make_pipeline(
        StandardScaler().set_output(transform="pandas"),
        make_model("lightgbm", n_estimators=50, n_jobs=1),
    ).fit(X, y)
    w = importance_weights(pipe)
    assert list(w.index) == ["a", "b"] and w["a"] > 20 * w["b"]
    with pytest.raises(ValueError, match="no feature importances"):
        importance_weights(make_model("ridge").fit(X, y))


def test_aoa_errors_and_outside_is_worse_on_a_shift():
    # truth depends on x nonlinearly; the model saw x in [0, 1] only
    rng = np.random.default_rng(15)
    from sklearn.ensemble import RandomForestRegressor

    xtr = rng.uniform(0, 1, (400, 2))
    f = lambda x: np.sin(3 * x[:, 0]) + x[:, 1] ** 2
    model = RandomForestRegressor(50, random_state=0).fit(xtr, f(xtr))
    aoa = AreaOfApplicability().fit(xtr, folds=np.arange(400) % 5)
    xnew = rng.uniform(-0.5, 2.5, (3000, 2))
    inside = aoa.predict(xnew)
    res = aoa_errors(f(xnew), model.predict(xnew), inside)
    assert 0.1 < res["aoa_fraction_inside"] < 0.6
    assert res["rmse_outside_aoa"] > 3 * res["rmse_inside_aoa"]


# --------------------------------------------------------------------------
# chapter 07 results
# --------------------------------------------------------------------------
def test_bias_results_end_to_end_from_evaluate_cv():
    from fungi_ssl.validation.cv import BlockKFold, RandomTrainValTest
    from fungi_ssl.validation.models import evaluate_cv

    X, y, ll, _site = clustered_sites(200, 3, seed=2)
    frame = pd.DataFrame(
        {"sample_id": [f"s{i}" for i in range(len(y))], "longitude": ll[:, 0], "latitude": ll[:, 1]}
    )
    parts = []
    for scheme, cv in (
        ("random", RandomTrainValTest(2, 0, val_size=0.0)),
        ("spatial", BlockKFold(50_000, n_splits=5, coords=ll)),
    ):
        _, pred = evaluate_cv(X, y, "ridge", cv, progress=False, return_predictions=True)
        parts.append(heldout_table(pred, frame, scheme))
    held = pd.concat(parts, ignore_index=True)
    assert set(held.columns) >= {
        "sample_id",
        "scheme",
        "split",
        "y_true",
        "y_pred",
        "longitude",
        "latitude",
    }
    intervals = conformal_holdout(X, y, ll, model="ridge", n_seeds=2, progress=False)
    rng = np.random.default_rng(0)
    aoa_map = pd.DataFrame(
        {"y_true": rng.normal(size=50), "y_pred": rng.normal(size=50), "inside": np.arange(50) < 40}
    )
    r = bias_results(held, intervals, aoa_map, permutations=99)
    assert list(r)[: len(RESULT_KEYS)] == list(RESULT_KEYS)
    assert all(r[k] is not None for k in RESULT_KEYS)
    json.dumps(r)  # plain floats
    assert r["aoa_fraction_inside"] == pytest.approx(0.8)
    assert 0.0 <= r["conformal_coverage_90_spatial"] <= 1.0
    # Moran's I is of the shortest distance band of the spatial errors, one per sample;
    # here no two sites lie within 1 km, so that band is empty and 1–10 km is reported
    spatial = held[held["scheme"] == "spatial"]
    ref = morans_i_bands(
        spatial["y_pred"] - spatial["y_true"],
        spatial["longitude"],
        spatial["latitude"],
        permutations=99,
    )
    assert ref.loc[1, "band"] == "0–1 km" and ref.loc[1, "n_pairs"] == 0
    assert r["morans_i_residuals"] == pytest.approx(ref.loc[2, "I"])
    assert (r["morans_i_band_lo_km"], r["morans_i_band_hi_km"]) == (1.0, 10.0)
    assert r["morans_i_residuals"] > 0.3 and r["morans_i_p"] <= 0.05  # the unmodelled field
    # the mean error is that of the random rows, predicted − observed
    rnd = held[held["scheme"] == "random"]
    assert r["mean_error"] == pytest.approx((rnd["y_pred"] - rnd["y_true"]).mean())


def test_bias_results_refuses_intervals_of_another_level():
    X, y, ll, _ = clustered_sites(60, 2)
    iv = conformal_holdout(
        X, y, ll, schemes=("random",), model="ridge", confidence=0.8, n_seeds=1, progress=False
    )
    held = iv[["scheme", "y_true", "y_pred"]]
    with pytest.raises(ValueError, match=r"90% intervals, got confidence \[0.8\]"):
        bias_results(held, iv)


def test_bias_module_import_does_not_load_pysal():
    import subprocess
    import sys

    code = "import sys, fungi_ssl.uncertainty.bias; print('esda' in sys.modules, 'libpysal' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_public_names_exist():
    for module in (errors, autocorrelation, intervals, aoa, bias):
        for name in module.__all__:
            assert hasattr(module, name), name
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(RESULT_KEYS, tuple)


def test_conformal_holdout_splits_on_worker_threads_give_the_sequential_result():
    """Splits run as single-threaded tasks on threads: same intervals, same order, as one thread."""
    rng = np.random.default_rng(4)
    lonlat = np.column_stack([rng.uniform(0, 4, 500), rng.uniform(45, 48, 500)])
    X = pd.DataFrame({"a": rng.normal(size=500), "b": rng.normal(size=500)})
    y = X["a"] + np.sin(2 * X["b"]) + rng.normal(0, 0.3, 500)
    kw = {"model": "lightgbm", "n_seeds": 2, "model_params": {"n_estimators": 60},
          "progress": False}
    one = intervals.conformal_holdout(X, y, lonlat, n_jobs=1, **kw)
    two = intervals.conformal_holdout(X, y, lonlat, n_jobs=2, **kw)
    pd.testing.assert_frame_equal(one, two)
    assert one.groupby("scheme").size().to_dict() == {"random": 200, "spatial": 500}
    assert list(one.drop_duplicates(["scheme", "split"])["split"]) == [0, 1, 0, 1, 2, 3, 4]


def test_adaptive_conformal_covers_and_adapts():
    """Heteroscedastic errors: the interval covers 90% overall, and within each half of the
    feature too, where one fixed width over-covers the calm half and under-covers the other."""
    from fungi_ssl.uncertainty.intervals import AdaptiveConformal, conformal_quantile

    rng = np.random.default_rng(4)
    n = 6000
    f = rng.uniform(0, 1, (n, 2))
    sd = 0.1 + f[:, 0]
    e = rng.normal(0, sd)
    ac = AdaptiveConformal(0.9).fit(f[:4000], e[:4000], folds=np.arange(4000) % 5)
    lo, hi = ac.interval(np.zeros(2000), f[4000:], lower_bound=None)
    inside = (e[4000:] >= lo) & (e[4000:] <= hi)
    assert abs(inside.mean() - 0.9) < 0.025
    calm, wild = f[4000:, 0] < 0.5, f[4000:, 0] >= 0.5
    assert abs(inside[calm].mean() - 0.9) < 0.05 and abs(inside[wild].mean() - 0.9) < 0.05
    q = conformal_quantile(np.abs(e[:4000]), 0.9)
    fixed = np.abs(e[4000:]) <= q
    assert fixed[calm].mean() > 0.97 and fixed[wild].mean() < 0.86
    # the lower end is clipped at 0 (log1p of no species)
    lo0, _ = ac.interval(np.full(3, 0.05), f[:3])
    assert (lo0 >= 0).all()
    with pytest.raises(ValueError, match="two folds"):
        AdaptiveConformal().fit(f[:100], e[:100], folds=np.zeros(100))
    with pytest.raises(ValueError, match="not fitted"):
        AdaptiveConformal().sigma(f[:3])


def test_calibrated_richness_removes_the_back_transform_bias():
    from fungi_ssl.uncertainty.errors import mean_error
    from fungi_ssl.uncertainty.intervals import calibrated_richness

    rng = np.random.default_rng(5)
    n = 5000
    mu = rng.normal(3, 0.6, n)
    y = mu + rng.normal(0, 0.5, n)                    # log1p observed; model predicts mu
    split = np.arange(n) % 5
    plain = mean_error(np.expm1(y), np.expm1(mu)).mean_error_pct_of_mean
    r, c = calibrated_richness(y, mu, split)
    calib = mean_error(np.expm1(y), r).mean_error_pct_of_mean
    assert plain < -8 and abs(calib) < 1.5            # expm1 of a mean log is a median
    assert np.all(c > 1) and len(np.unique(c)) == 5   # one factor per split, from the others
    with pytest.raises(ValueError, match="two splits"):
        calibrated_richness(y, mu, np.zeros(n))
