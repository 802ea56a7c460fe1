"""Tests for fungi_ssl.validation.models: models, metrics, the evaluation protocols, paired tests."""

from __future__ import annotations

import math

import lightgbm
import numpy as np
import pandas as pd
import pytest
import xgboost
from scipy import stats
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.ensemble import RandomForestRegressor
from sklearn.model_selection import KFold

from fungi_ssl.validation.cv import RandomTrainValTest, SiteGroupKFold
from fungi_ssl.validation.models import (
    MODEL_NAMES,
    corrected_resampled_ttest,
    evaluate_cv,
    evaluate_random_splits,
    fit_model,
    make_model,
    paired_comparison,
    regression_metrics,
    summarise,
)


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def linear_truth() -> tuple[pd.DataFrame, np.ndarray, float]:
    """y = X b + e with var(X b) = 3, var(e) = 1: the true R² is 0.75."""
    rng = np.random.default_rng(1)
    n, p = 3000, 10
    X = rng.normal(size=(n, p))
    b = np.zeros(p)
    b[:3] = 1.0  # var(Xb) = 3
    y = X @ b + rng.normal(0, 1, n)
    return pd.DataFrame(X, columns=[f"x{i}" for i in range(p)]), y, 0.75


@pytest.fixture(scope="module")
def sites() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """200 sites × 4 cores: cores share the site's features, richness differs by core.

    y = site effect (sd 1) + core noise (sd 0.5); X is random per site and
    unrelated to the site effect, so only memorising sites can "predict" y.
    """
    rng = np.random.default_rng(3)
    n_sites, cores = 200, 4
    site_xy = rng.uniform(0, 50_000, size=(n_sites, 2))
    xy = np.repeat(site_xy, cores, axis=0) + rng.normal(0, 3, size=(n_sites * cores, 2))
    X = np.repeat(rng.normal(size=(n_sites, 5)), cores, axis=0)
    y = np.repeat(rng.normal(0, 1, n_sites), cores) + rng.normal(0, 0.5, n_sites * cores)
    return X, y, xy


class RecordingScaler(TransformerMixin, BaseEstimator):
    """Drops the ``row_id`` column and remembers which rows it was fitted on."""

    def fit(self, X, y=None):
        self.fitted_ids_ = np.sort(X["row_id"].to_numpy())
        self.mean_ = X.drop(columns="row_id").mean()
        return self

    def transform(self, X):
        return X.drop(columns="row_id") - self.mean_


# ------------------------------------------------------------------ models
def test_make_model_families_and_seed():
    rf = make_model("rf", seed=4)
    assert isinstance(rf, RandomForestRegressor)
    assert rf.random_state == 4 and rf.n_jobs == 2
    gbm = make_model("lightgbm", seed=5, num_leaves=7)
    assert isinstance(gbm, lightgbm.LGBMRegressor)
    assert gbm.random_state == 5 and gbm.n_jobs == 2 and gbm.num_leaves == 7
    assert gbm.verbose == -1
    ridge = make_model("ridge")
    assert [s for s, _ in ridge.steps] == ["standardscaler", "ridgecv"]
    xgb = make_model("xgboost", seed=6, max_depth=3)
    assert isinstance(xgb, xgboost.XGBRegressor)
    assert xgb.random_state == 6 and xgb.n_jobs == 2 and xgb.max_depth == 3
    # the same schedule as LightGBM
    for key in ("n_estimators", "learning_rate", "subsample", "reg_lambda"):
        assert xgb.get_params()[key] == gbm.get_params()[key], key
    assert xgb.get_params()["colsample_bynode"] == gbm.get_params()["colsample_bytree"]
    assert MODEL_NAMES == ("rf", "lightgbm", "xgboost", "ridge")
    with pytest.raises(ValueError, match="model name must be one of"):
        make_model("svm")


def test_lightgbm_stops_early_on_noise():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(800, 10))
    y = rng.normal(size=800)  # no signal at all
    model = fit_model(make_model("lightgbm", seed=0), X[:600], y[:600], X[600:], y[600:])
    n_max = model.get_params()["n_estimators"]
    assert model.best_iteration_ < 50, "on pure noise the best round comes early"
    assert model.booster_.current_iteration() <= model.best_iteration_ + 50 < n_max
    # without a validation part it uses all rounds
    full = fit_model(make_model("lightgbm", seed=0, n_estimators=120), X[:600], y[:600])
    assert full.booster_.current_iteration() == 120
    with pytest.raises(ValueError, match="X_val and y_val"):
        fit_model(make_model("lightgbm"), X, y, X_val=X)


def test_xgboost_stops_early_like_lightgbm():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(800, 10))
    y = rng.normal(size=800)  # no signal
    model = fit_model(make_model("xgboost", seed=0, n_jobs=1), X[:600], y[:600], X[600:], y[600:])
    n_rounds = model.get_booster().num_boosted_rounds()
    assert model.best_iteration < 50, "on pure noise the best round comes early"
    assert n_rounds == model.best_iteration + 1 + 50  # stopped after 50 rounds of patience
    # predictions use the best round, not the last
    best = model.predict(X[600:], iteration_range=(0, model.best_iteration + 1))
    np.testing.assert_allclose(model.predict(X[600:]), best)
    # on signal it keeps learning
    y2 = np.sin(2 * X[:, 0]) + X[:, 1] ** 2 + rng.normal(0, 0.1, 800)
    long = fit_model(make_model("xgboost", seed=0, n_jobs=1), X[:600], y2[:600], X[600:], y2[600:])
    assert long.best_iteration > 100  # far past the < 50 rounds of pure noise
    # without a validation part: all rounds, even on a model that early-stopped before
    full = fit_model(long, X[:600], y2[:600])
    assert full.get_params()["early_stopping_rounds"] is None
    assert full.get_booster().num_boosted_rounds() == full.get_params()["n_estimators"]


def test_boosters_model_an_interaction_of_two_columns():
    """y = x1 * x2: no additive model fits it, every tree must use both columns.

    With per-tree column sampling of 0.8, XGBoost would give each tree one of
    the two columns (R² 0.01); per-split sampling keeps both within a tree.
    """
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 2))
    y = X[:, 0] * X[:, 1] + rng.normal(0, 0.3, 3000)
    for name in ("lightgbm", "xgboost"):
        m = make_model(name, n_jobs=1)
        fit_model(m, X[:2000], y[:2000], X[2000:2500], y[2000:2500])
        assert regression_metrics(y[2500:], m.predict(X[2500:]))["r2"] > 0.75, name


def test_lightgbm_runs_long_on_signal():
    """Early stopping must not stop a model that is still learning."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1000, 5))
    y = np.sin(2 * X[:, 0]) + X[:, 1] ** 2 + rng.normal(0, 0.1, 1000)
    model = fit_model(make_model("lightgbm", seed=0, n_jobs=1), X[:800], y[:800], X[800:], y[800:])
    assert model.best_iteration_ > 150


# ------------------------------------------------------------------ metrics
def test_regression_metrics_hand_values():
    m = regression_metrics([1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 3.0, 5.0])
    # errors (pred - obs) = [1, 0, 0, 1]; SS_res = 2, SS_tot = 5
    assert m["r2"] == pytest.approx(1 - 2 / 5)
    assert m["rmse"] == pytest.approx(math.sqrt(0.5))
    assert m["mae"] == pytest.approx(0.5)
    assert m["medae"] == pytest.approx(0.5)
    assert m["me"] == pytest.approx(0.5)
    under = regression_metrics([10.0, 20.0, 30.0], [7.0, 20.0, 24.0])
    # errors = [-3, 0, -6]: under-prediction gives a negative mean error
    assert under["me"] == pytest.approx(-3.0)
    assert under["medae"] == pytest.approx(3.0)
    assert under["rmse"] == pytest.approx(math.sqrt(45 / 3))
    assert under["r2"] == pytest.approx(1 - 45 / 200)
    assert regression_metrics([1, 2, 3], [1, 2, 3])["r2"] == 1.0
    assert math.isnan(regression_metrics([2, 2, 2], [1, 2, 3])["r2"])


def test_regression_metrics_bad_input():
    with pytest.raises(ValueError, match="differ in length"):
        regression_metrics([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="finite"):
        regression_metrics([1, np.nan, 3], [1, 2, 3])


# ------------------------------------------------------------------ random protocol
def test_ridge_recovers_linear_truth(linear_truth):
    X, y, r2_true = linear_truth
    res = evaluate_random_splits(X, y, "ridge", n_seeds=3, seed=0, progress=False)
    # test parts of 600: SD of R² per seed ≈ 0.015, so the mean is within 0.03
    assert res["r2"].mean() == pytest.approx(r2_true, abs=0.03)
    assert res["rmse"].mean() == pytest.approx(1.0, abs=0.05)  # noise SD
    assert abs(res["me"].mean()) < 0.1
    assert res[["n_train", "n_val", "n_test"]].iloc[0].tolist() == [2100, 300, 600]
    assert res["seed"].tolist() == [0, 1, 2]
    assert set(res.columns) >= {"set", "model", "cv", "r2", "rmse", "mae", "medae", "me"}


def test_evaluate_random_splits_deterministic(linear_truth):
    X, y, _ = linear_truth
    X, y = X.iloc[:600], y[:600]
    kw = {"n_seeds": 2, "model_params": {"n_estimators": 60}, "progress": False}
    a = evaluate_random_splits(X, y, "lightgbm", seed=11, **kw)
    b = evaluate_random_splits(X, y, "lightgbm", seed=11, **kw)
    c = evaluate_random_splits(X, y, "lightgbm", seed=12, **kw)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["r2"], c["r2"])
    # seed 12 is the second split of the run starting at 11: pairing by seed
    assert a["r2"].iloc[1] == pytest.approx(c["r2"].iloc[0])


def test_in_fold_transform_fitted_on_training_part_only(linear_truth):
    X, y, _ = linear_truth
    X = X.iloc[:500].assign(row_id=np.arange(500))
    y = y[:500]
    made: list[RecordingScaler] = []

    def factory():
        made.append(RecordingScaler())
        return made[-1]

    evaluate_random_splits(
        X, y, "ridge", n_seeds=3, seed=7, feature_transform=factory, progress=False
    )
    assert len(made) == 3
    for tf, (train, _, _) in zip(
        made, RandomTrainValTest(3, seed=7).split_train_val_test(X), strict=True
    ):
        np.testing.assert_array_equal(tf.fitted_ids_, train)

    # and with a spatial splitter: never fitted on the test fold or the validation part
    xy = np.random.default_rng(0).uniform(0, 20_000, size=(500, 2))
    made.clear()
    cv = SiteGroupKFold(4, coords=xy, coordinates="metres")
    evaluate_cv(X, y, "ridge", cv, feature_transform=factory, val_size=0.1, progress=False)
    tests = [t for _, t in cv.split(X)]
    assert len(made) == 4
    for tf, test in zip(made, tests, strict=True):
        assert np.intersect1d(tf.fitted_ids_, test).size == 0
        n_train_fold = 500 - len(test)
        assert len(tf.fitted_ids_) == n_train_fold - round(0.1 * n_train_fold)


def test_transform_instance_is_cloned_per_split(linear_truth):
    X, y, _ = linear_truth
    X = X.iloc[:300].assign(row_id=np.arange(300))
    tf = RecordingScaler()
    res = evaluate_random_splits(
        X, y[:300], "ridge", n_seeds=2, feature_transform=tf, progress=False
    )
    assert len(res) == 2
    assert not hasattr(tf, "fitted_ids_"), "the caller's transformer is left unfitted"


# ------------------------------------------------------------------ spatial CV
def test_evaluate_cv_folds_pooled_and_predictions(sites):
    X, y, xy = sites
    cv = SiteGroupKFold(5, coords=xy, coordinates="metres")
    res, pred = evaluate_cv(X, y, "ridge", cv, progress=False, return_predictions=True)
    folds = res[res["scope"] == "fold"]
    pooled = res[res["scope"] == "pooled"].iloc[0]
    assert folds["fold"].tolist() == [0, 1, 2, 3, 4]
    assert folds["n_test"].sum() == len(y) == pooled["n_test"]
    assert sorted(pred["row"]) == list(range(len(y)))  # every row tested once
    np.testing.assert_allclose(pred["observed"], y[pred["row"]])
    m = regression_metrics(pred["observed"], pred["predicted"])
    assert pooled["r2"] == pytest.approx(m["r2"])
    assert pooled["me"] == pytest.approx(m["me"])


def test_site_cv_removes_site_leakage(sites):
    """Features that only identify sites look skilful under random CV, not under site CV."""
    X, y, xy = sites
    params = {"n_estimators": 60, "min_samples_leaf": 1, "max_samples": None, "max_features": 1.0}
    rand = evaluate_cv(
        X, y, "rf", KFold(5, shuffle=True, random_state=0), model_params=params, progress=False
    )
    site = evaluate_cv(
        X,
        y,
        "rf",
        SiteGroupKFold(5, coords=xy, coordinates="metres"),
        model_params=params,
        progress=False,
    )
    r2_random = rand.loc[rand["scope"] == "pooled", "r2"].item()
    r2_site = site.loc[site["scope"] == "pooled", "r2"].item()
    # site means carry 0.8 of the variance; 3 of 4 cores of a site are in training
    assert r2_random > 0.5
    assert r2_site < 0.05


# ------------------------------------------------------------------ NaN handling
def test_nan_rows_raise_or_drop(sites):
    X, y, xy = sites
    X = X.copy()
    y = y.copy()
    X[3, 1] = np.nan
    y[10] = np.nan
    y[11] = np.inf
    with pytest.raises(ValueError, match=r"3 of 800 rows.*1 in X, 2 in y.*nan_policy='drop'"):
        evaluate_random_splits(X, y, "ridge", n_seeds=1, progress=False)
    with pytest.warns(UserWarning, match="dropped 3 of 800"):
        res = evaluate_random_splits(X, y, "ridge", n_seeds=1, nan_policy="drop", progress=False)
    assert res["n_dropped"].item() == 3
    assert res[["n_train", "n_val", "n_test"]].sum(axis=1).item() == 797
    # coordinates held by the splitter are subset with the rows
    cv = SiteGroupKFold(4, coords=xy, coordinates="metres")
    with pytest.warns(UserWarning, match="dropped 3"):
        out = evaluate_cv(X, y, "ridge", cv, nan_policy="drop", progress=False)
    assert out.loc[out["scope"] == "pooled", "n_test"].item() == 797
    with pytest.raises(ValueError, match="nan_policy"):
        evaluate_cv(X, y, "ridge", cv, nan_policy="ignore", progress=False)
    # "allow" passes NaN in X on to a model that handles it, but not NaN in y
    with pytest.raises(ValueError, match=r"2 of 800 rows.*0 in X, 2 in y"):
        evaluate_random_splits(X, y, "lightgbm", n_seeds=1, nan_policy="allow", progress=False)
    y_ok = np.nan_to_num(y, nan=0.0, posinf=0.0)
    res = evaluate_random_splits(
        X,
        y_ok,
        "lightgbm",
        n_seeds=1,
        nan_policy="allow",
        progress=False,
        model_params={"n_estimators": 20},
    )
    assert (
        res["n_dropped"].item() == 0
        and res[["n_train", "n_val", "n_test"]].sum(axis=1).item() == 800
    )


# ------------------------------------------------------------------ paired comparison
def test_paired_comparison_detects_real_difference():
    rng = np.random.default_rng(5)
    base = rng.normal(0.5, 0.03, 10)  # split-to-split variation shared by both
    a = base + 0.04 + rng.normal(0, 0.01, 10)
    b = base + rng.normal(0, 0.01, 10)
    r = paired_comparison(a, b)
    assert r.n == 10
    assert r.wilcoxon_p < 0.01
    assert r.ci_low > 0 and r.ci_low < 0.04 < r.ci_high
    lo, hi = stats.t.interval(0.95, 9, loc=np.mean(a - b), scale=stats.sem(a - b))
    assert (r.ci_low, r.ci_high) == pytest.approx((lo, hi))
    assert r.to_dict()["n"] == 10


def test_paired_comparison_null_not_detected():
    rng = np.random.default_rng(6)
    base = rng.normal(0.5, 0.03, 12)
    a = base + rng.normal(0, 0.01, 12)
    b = base + rng.normal(0, 0.01, 12)
    r = paired_comparison(a, b)
    assert r.wilcoxon_p > 0.05
    assert r.ci_low < 0 < r.ci_high
    assert paired_comparison(a, a).wilcoxon_p == 1.0


def test_paired_comparison_small_n_and_pairing():
    # 3 seeds, all in one direction: the smallest p the test can give is 2 / 2**3
    assert paired_comparison([3.0, 2.0, 5.0], [1.0, 1.0, 1.0]).wilcoxon_p == pytest.approx(0.25)
    a = pd.Series([0.5, 0.6, 0.7, 0.4], index=[0, 1, 2, 3])
    b = pd.Series([0.3, 0.6, 0.5, 0.45], index=[0, 1, 2, 3])
    r1 = paired_comparison(a, b)
    r2 = paired_comparison(a, b.iloc[::-1])  # paired by seed, not position
    assert r1 == r2
    with pytest.raises(ValueError, match="paired"):
        paired_comparison([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="same unique index"):
        paired_comparison(a, b.set_axis([0, 1, 2, 9]))


def test_corrected_resampled_ttest_worked_example():
    # differences 0.02, 0.04, 0.06: mean 0.04, sample variance 0.0004, J = 3,
    # n_test / n_train = 0.2 / 0.7 = 2/7. Corrected variance of the mean:
    # (1/3 + 2/7) * 0.0004 = (13/21) * 0.0004, so t^2 = 0.0016 / that = 84/13.
    # With J - 1 = 2 degrees of freedom, P(|T| > t) = 1 - t / sqrt(t^2 + 2).
    t, p = corrected_resampled_ttest([0.02, 0.04, 0.06], 0.2 / 0.7)
    assert t == pytest.approx(math.sqrt(84 / 13))
    assert p == pytest.approx(1 - math.sqrt((84 / 13) / (84 / 13 + 2)))  # 0.12614
    assert p == pytest.approx(0.12614, abs=1e-5)
    # the plain paired t-test (variance / J only): t^2 = 12, p = 1 - sqrt(12 / 14)
    plain = stats.ttest_1samp([0.02, 0.04, 0.06], 0.0).pvalue
    assert plain == pytest.approx(1 - math.sqrt(12 / 14))
    assert p > plain  # the correction widens the test
    # sign follows the mean; no spread
    assert corrected_resampled_ttest([-0.02, -0.04, -0.06], 2 / 7)[0] == pytest.approx(-t)
    assert corrected_resampled_ttest([0.0, 0.0, 0.0], 2 / 7) == (0.0, 1.0)
    assert corrected_resampled_ttest([0.1, 0.1], 2 / 7) == (math.inf, 0.0)
    with pytest.raises(ValueError, match="test_train_ratio"):
        corrected_resampled_ttest([0.1, 0.2], 0.0)
    with pytest.raises(ValueError, match="at least 2"):
        corrected_resampled_ttest([0.1], 0.25)
    r = paired_comparison([0.62, 0.64, 0.66], [0.60, 0.60, 0.60], test_train_ratio=0.2 / 0.7)
    assert r.corrected_t_p == pytest.approx(p)
    assert paired_comparison([0.62, 0.64, 0.66], [0.6, 0.6, 0.6]).corrected_t_p is None


def test_corrected_ttest_keeps_its_level_where_overlapping_splits_fool_the_others():
    """Two equally informative predictors, compared over 10 overlapping random splits.

    The null hypothesis (no difference between the predictors) is true in every
    replicate data set. Because the 70% training parts overlap, the per-split
    differences are correlated, and the plain t-test and the Wilcoxon test
    reject far more often than 5% (Nadeau & Bengio 2003). The corrected test
    should stay near 5%. Measured: plain 0.26, Wilcoxon 0.24, corrected 0.04
    over 300 replicates.
    """
    n, n_splits, reps = 200, 10, 300
    rejected = {"plain": 0, "wilcoxon": 0, "corrected": 0}
    for rep in range(reps):
        rng = np.random.default_rng(rep)
        x = rng.normal(size=n)
        y = x + rng.normal(size=n)
        a, b = x + rng.normal(size=n), x + rng.normal(size=n)
        d = []
        for train, _, test in RandomTrainValTest(n_splits, 0).split_train_val_test(y):
            scores = []
            for f in (a, b):
                slope, intercept = np.polyfit(f[train], y[train], 1)
                scores.append(regression_metrics(y[test], intercept + slope * f[test])["r2"])
            d.append(scores[0] - scores[1])
        rejected["plain"] += stats.ttest_1samp(d, 0.0).pvalue < 0.05
        rejected["wilcoxon"] += stats.wilcoxon(d).pvalue < 0.05
        rejected["corrected"] += corrected_resampled_ttest(d, 0.2 / 0.7)[1] < 0.05
    rate = {k: v / reps for k, v in rejected.items()}
    assert rate["plain"] > 0.15 and rate["wilcoxon"] > 0.15, rate
    assert rate["corrected"] < 0.08, rate


# ------------------------------------------------------------------ summary
def test_summarise_shape_and_values():
    df = pd.DataFrame(
        {
            "set": ["ssl", "ssl", "climate", "climate", "ssl"],
            "model": ["rf", "rf", "rf", "rf", "ridge"],
            "cv": "random",
            "r2": [0.6, 0.7, 0.2, 0.4, 0.5],
            "rmse": [1.0, 2.0, 3.0, 3.0, 1.0],
            "me": [0.1, -0.3, 0.0, 0.2, 0.0],
        }
    )
    s = summarise(df)
    assert set(s) == {"ssl", "climate"} and set(s["ssl"]) == {"rf", "ridge"}
    assert s["ssl"]["rf"] == pytest.approx(
        {"r2_mean": 0.65, "r2_sd": np.std([0.6, 0.7], ddof=1), "rmse_mean": 1.5, "me_mean": -0.1}
    )
    assert s["ssl"]["ridge"]["r2_sd"] is None  # one row: no SD
    assert s["climate"]["rf"]["r2_mean"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="mixes CV schemes"):
        summarise(df.assign(cv=["random", "BlockKFold"] * 2 + ["random"]))
    with pytest.raises(ValueError, match="missing columns"):
        summarise(df.drop(columns="me"))


def test_summarise_skips_pooled_rows(sites):
    X, y, xy = sites
    res = evaluate_cv(
        X,
        y,
        "ridge",
        SiteGroupKFold(4, coords=xy, coordinates="metres"),
        predictor_set="ssl",
        progress=False,
    )
    s = summarise(res)
    folds = res[res["scope"] == "fold"]
    assert s["ssl"]["ridge"]["r2_mean"] == pytest.approx(folds["r2"].mean())


def test_spatial_cv_early_stopping_holds_out_whole_sites():
    from fungi_ssl.validation.models import _group_holdout

    rng = np.random.default_rng(1)
    sites = rng.integers(0, 60, 500)
    train = np.arange(500)
    val, rest = _group_holdout(train, sites, 50, seed=3)
    assert len(val) >= 50 and len(val) + len(rest) == 500
    assert not set(sites[val]) & set(sites[rest])
    # evaluate_cv accepts site labels and checks their length
    from sklearn.model_selection import KFold

    X = rng.normal(size=(500, 3))
    y = X[:, 0] + rng.normal(size=500)
    res = evaluate_cv(X, y, "ridge", KFold(5), val_groups=sites, progress=False)
    assert (res.loc[res["scope"] == "fold", "n_val"] > 0).all()
    with pytest.raises(ValueError, match="val_groups"):
        evaluate_cv(X, y, "ridge", KFold(5), val_groups=sites[:10], progress=False)
