"""Tests for fungi_ssl.attribution.explain: Tree SHAP and group attribution."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import make_pipeline

from fungi_ssl.attribution.explain import (
    ShapValues,
    plot_dependence,
    plot_shap_groups,
    shap_by_group,
    tree_shap,
)
from fungi_ssl.predictors.features import PatchReducer, select_predictors


def study(n: int = 400, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "ssl_pca_00": rng.normal(size=n),
            "ssl_pca_01": rng.normal(size=n),
            "CHELSA_BIO_Annual_Mean_Temperature": rng.normal(size=n),
            "SG_Soil_pH_H2O_005cm": rng.normal(size=n),  # no effect on y
        },
        index=[f"S{i}" for i in range(n)],
    )
    y = (
        2.0 * X["ssl_pca_00"]
        + np.sin(2 * X["ssl_pca_01"])
        + 1.0 * X["CHELSA_BIO_Annual_Mean_Temperature"]
        + 0.2 * rng.normal(size=n)
    ).to_numpy()
    return X, y


MODELS = {
    "lightgbm": lambda: lgb.LGBMRegressor(
        n_estimators=60, num_leaves=15, learning_rate=0.1, random_state=0, n_jobs=1, verbose=-1
    ),
    "random_forest": lambda: RandomForestRegressor(
        n_estimators=30, max_depth=8, random_state=0, n_jobs=1
    ),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def fitted(request):
    X, y = study()
    model = MODELS[request.param]().fit(X, y)
    return request.param, model, X


def test_additivity_matches_predictions(fitted):
    _, model, X = fitted
    sv = tree_shap(model, X, progress=False, chunk_size=150)  # several chunks
    assert list(sv.values.columns) == list(X.columns)
    assert list(sv.values.index) == list(X.index)
    pred = model.predict(X)
    np.testing.assert_allclose(
        sv.predictions.to_numpy(), pred, rtol=1e-6, atol=1e-6 * np.abs(pred).max()
    )


def test_group_shares_sum_to_one_and_null_feature_gets_nothing(fitted):
    name, model, X = fitted
    sv = tree_shap(model, X, progress=False)
    table = shap_by_group(sv)
    assert table["share"].sum() == pytest.approx(1.0, abs=1e-12)
    assert set(table.index) == {"ssl", "climate", "soil"}
    assert table.index[0] == "ssl"  # 2*x0 + sin(2*x1) dominates
    assert table.loc["soil", "share"] < 0.03, (name, table)  # pH has no effect on y
    assert table.loc["ssl", "n_features"] == 2
    assert table.attrs["how"] == "abs_sum"  # the default
    # the other aggregation also sums to one and keeps the null feature small
    alt = shap_by_group(sv, how="sum_abs")
    assert alt["share"].sum() == pytest.approx(1.0, abs=1e-12)
    assert alt.loc["soil", "share"] < 0.03


def test_pipeline_with_patch_reducer_is_explained_after_reduction():
    rng = np.random.default_rng(1)
    n = 200
    latent = rng.normal(size=(n, 2))
    ssl = pd.DataFrame(
        latent @ rng.normal(size=(2, 1152)) + 0.05 * rng.normal(size=(n, 1152)),
        columns=[f"ssl_{i:04d}" for i in range(1152)],
    )
    ssl["CGIAR_PET"] = rng.normal(size=n)
    y = latent[:, 0] + 0.1 * ssl["CGIAR_PET"].to_numpy()
    pipe = make_pipeline(
        PatchReducer(n_components=3),
        lgb.LGBMRegressor(n_estimators=40, random_state=0, n_jobs=1, verbose=-1),
    ).fit(ssl, y)
    sv = tree_shap(pipe, ssl, max_samples=80, seed=0, progress=False)
    assert list(sv.values.columns) == ["CGIAR_PET", "ssl_pca_00", "ssl_pca_01", "ssl_pca_02"]
    assert len(sv.values) == 80
    np.testing.assert_allclose(
        sv.predictions.to_numpy(), pipe.predict(ssl.loc[sv.values.index]), rtol=1e-6, atol=1e-9
    )
    assert shap_by_group(sv).index[0] == "ssl"


def test_explicit_column_groups_and_errors():
    sv = pd.DataFrame({"elev": [1.0, -1.0], "ssl_pca_00": [3.0, 3.0]})
    with pytest.raises(ValueError, match="no predictor group for columns \\['elev'\\]"):
        shap_by_group(sv)
    table = shap_by_group(sv, {"elev": "topography"})
    assert table.loc["topography", "share"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="tree model"):
        X, y = study(50)
        tree_shap(LinearRegression().fit(X, y), X, progress=False)
    with pytest.raises(TypeError, match="DataFrame"):
        tree_shap(None, np.zeros((3, 2)))


def test_plots(fitted):
    import matplotlib.pyplot as plt

    _, model, X = fitted
    sv = tree_shap(model, X, progress=False)
    ax = plot_shap_groups(shap_by_group(sv))
    assert [t.get_text() for t in ax.get_yticklabels()][-1] == "ssl"
    fig = plot_dependence(sv, n_features=3)
    visible = [a for a in fig.axes if a.get_visible()]
    assert len(visible) == 3
    assert visible[0].get_xlabel() == sv.mean_abs().index[0]
    with pytest.raises(ValueError, match="not columns"):
        plot_dependence(sv, features=["nope"])
    plt.close("all")


def test_select_predictors_mapping_feeds_shap_by_group():
    X, _ = study(10)
    _, mapping = select_predictors(X, "all")
    sv = ShapValues(X * 0 + 1.0, 0.0, X)
    table = shap_by_group(sv, mapping)
    assert table.loc["ssl", "share"] == pytest.approx(0.5)


def test_additivity_holds_for_early_stopped_lightgbm():
    # Table 1's LightGBM stops early: SHAP must explain the trees predict() uses
    from fungi_ssl.validation.models import fit_model, make_model

    X, y = study(600, seed=3)
    model = make_model("lightgbm", n_jobs=1, n_estimators=1000, learning_rate=0.1)
    fit_model(model, X.iloc[:400], y[:400], X.iloc[400:], y[400:])
    assert model.best_iteration_ < 1000
    sv = tree_shap(model, X, progress=False)
    np.testing.assert_allclose(sv.predictions.to_numpy(), model.predict(X), atol=1e-9)


def test_group_sum_and_per_column_sum_differ_where_columns_cancel():
    """A 32-column group whose SHAP values cancel in every sample.

    By hand: per sample the ssl columns hold +0.25 and -0.25 sixteen times
    each (sum 0, sum of |.| 8); the two climate columns hold 0.5 each (sum 1).
    abs_sum: ssl 0, climate 1 -> shares 0 and 1.
    sum_abs: ssl 8, climate 1 -> shares 8/9 and 1/9.
    """
    n = 10
    ssl = np.tile(np.r_[np.full(16, 0.25), np.full(16, -0.25)], (n, 1))
    rng = np.random.default_rng(0)
    ssl = ssl * rng.choice([-1.0, 1.0], size=(n, 1))  # flip whole rows: still cancels
    values = pd.DataFrame(ssl, columns=[f"ssl_pca_{i:02d}" for i in range(32)])
    values["CHELSA_BIO_Annual_Mean_Temperature"] = 0.5
    values["CHELSA_BIO_Annual_Precipitation"] = 0.5
    by_sum = shap_by_group(values)
    per_column = shap_by_group(values, how="sum_abs")
    assert by_sum.loc["climate", "mean_abs_shap"] == pytest.approx(1.0)
    assert by_sum.loc["ssl", "mean_abs_shap"] == pytest.approx(0.0)
    assert by_sum.loc["climate", "share"] == pytest.approx(1.0)
    assert per_column.loc["ssl", "mean_abs_shap"] == pytest.approx(8.0)
    assert per_column.loc["ssl", "share"] == pytest.approx(8 / 9)
    assert per_column.loc["climate", "share"] == pytest.approx(1 / 9)
    assert list(by_sum["n_features"].sort_index()) == [2, 32]


def test_per_column_sum_favours_a_group_of_many_noise_columns():
    """A fitted model: y depends on two climate columns; 32 SSL columns are noise.

    Trees still split on the noise columns a little. Their |SHAP| add up over
    32 columns under sum_abs, while their signed values largely cancel under
    abs_sum, so the noise group's share is predictably smaller by group sum.
    """
    rng = np.random.default_rng(1)
    n = 1500
    X = pd.DataFrame(rng.normal(size=(n, 32)), columns=[f"ssl_pca_{i:02d}" for i in range(32)])
    X["CHELSA_BIO_Annual_Mean_Temperature"] = rng.normal(size=n)
    X["CHELSA_BIO_Annual_Precipitation"] = rng.normal(size=n)
    y = X["CHELSA_BIO_Annual_Mean_Temperature"] + X["CHELSA_BIO_Annual_Precipitation"]
    y = y + rng.normal(0, 1.0, n)
    model = lgb.LGBMRegressor(n_estimators=150, num_leaves=15, random_state=0, verbose=-1)
    model.fit(X, y)
    sv = tree_shap(model, X, max_samples=500, progress=False)
    by_sum = shap_by_group(sv)
    per_column = shap_by_group(sv, how="sum_abs")
    assert by_sum.index[0] == per_column.index[0] == "climate"
    # per column, the 32 noise columns take a sizeable share; by group sum their
    # contributions largely cancel (measured: 0.41 against 1.00 log units)
    assert per_column.loc["ssl", "share"] > 0.3
    assert by_sum.loc["ssl", "mean_abs_shap"] < 0.5 * per_column.loc["ssl", "mean_abs_shap"]
    assert by_sum.loc["ssl", "share"] < per_column.loc["ssl", "share"] - 0.1
    assert by_sum.loc["climate", "share"] > per_column.loc["climate", "share"]
