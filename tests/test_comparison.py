"""Tests for fungi_ssl.validation.comparison (chapter 04's Table 1 driver) and the pipelines and
worker threads it runs on (fungi_ssl.validation.pipelines, fungi_ssl.core.worker_threads)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import json
from functools import partial

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from fungi_ssl.predictors.features import PatchReducer, select_predictors
from fungi_ssl.validation.comparison import (
    COMPARED_SETS,
    best_model,
    comparison_json,
    nearest_training_distances,
    paired_tests,
    plot_table1,
    spatial_splitter,
    table1,
    table1_wide,
)
from fungi_ssl.validation.cv import SiteGroupKFold
from fungi_ssl.validation.models import (
    MODEL_NAMES,
    corrected_resampled_ttest,
    evaluate_random_splits,
)
from fungi_ssl.validation.pipelines import (
    MemoPatchReducer,
    ReductionMemo,
    available_sets,
    predictor_matrix,
    reduced_model,
)

#: Small models so that a whole Table 1 runs in seconds.
FAST = {
    "rf": {"n_estimators": 15},
    "lightgbm": {"n_estimators": 60, "learning_rate": 0.2},
    "xgboost": {"n_estimators": 60, "learning_rate": 0.2},
}
STATS = {"r2_mean", "r2_sd", "rmse_mean", "me_mean"}
TESTS = ("wilcoxon_p", "wilcoxon_p_spatial", "corrected_t_p")
COMPARISONS = {"ssl_vs_climate", "ssl_vs_soil", "ssl_vs_landcover"}


def predictor_frame(n_sites: int = 90, cores: int = 3, seed: int = 0, ssl: bool = True):
    """A predictor table in the shape of ``predictor_table(...).frame``.

    Sites lie on a 1,000 km wide area; cores of a site share the coordinate,
    the 1 km covariates and the SSL patch. Richness depends on a fine-scale
    site property (``host``) that only the SSL patch sees, plus a weak
    climate effect; soil and land cover carry nothing but noise.
    """
    rng = np.random.default_rng(seed)
    lon = rng.uniform(0.0, 12.0, n_sites)
    lat = rng.uniform(44.0, 52.0, n_sites)
    host = rng.normal(size=n_sites)
    temp = rng.normal(size=n_sites)
    site = np.repeat(np.arange(n_sites), cores)
    n = len(site)
    log_rich = 3.0 + 1.0 * host[site] + 0.3 * temp[site] + rng.normal(0, 0.4, n)
    frame = pd.DataFrame(
        {
            "sample_id": [f"S{i:05d}" for i in range(n)],
            "site_id": [f"site{s:04d}" for s in site],
            "longitude": lon[site],
            "latitude": lat[site],
            "year": pd.array(np.full(n, 2020), dtype="Int64"),
            "rarefied": np.expm1(np.clip(log_rich, 0, None)),
            "CHELSA_BIO_Annual_Mean_Temperature": 100 + 30 * temp[site],
            "CHELSA_BIO_Annual_Precipitation": rng.normal(800, 100, n_sites)[site],
            "SG_Soil_pH_H2O_005cm": rng.normal(55, 5, n_sites)[site],
            "SG_SOC_Content_005cm": rng.normal(40, 5, n_sites)[site],
            "ConsensusLandCoverClass_Mixed_Other_Trees": rng.uniform(0, 100, n_sites)[site],
            "ConsensusLandCoverClass_Shrubs": rng.uniform(0, 100, n_sites)[site],
        }
    )
    frame["log_richness"] = np.log1p(frame["rarefied"])
    if ssl:
        loading = rng.normal(size=(2, 1152))
        latent = np.column_stack([host, rng.normal(size=n_sites)])
        patch = latent @ loading + 0.3 * rng.normal(size=(n_sites, 1152))
        cols = pd.DataFrame(patch[site], columns=[f"ssl_{i:04d}" for i in range(1152)])
        frame = pd.concat([frame, cols], axis=1)
    return frame


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return predictor_frame()


@pytest.fixture(scope="module")
def results(frame) -> pd.DataFrame:
    return table1(
        frame,
        "log_richness",
        n_seeds=6,
        seed=0,
        spatial_splitter=spatial_splitter(frame, block_size_m=100_000, n_splits=4),
        n_components=4,
        model_params=FAST,
        progress=False,
    )


def test_json_has_exactly_the_book_shape(results):
    out = comparison_json(results)
    assert set(out) == {"random", "spatial", *TESTS}
    for scheme in ("random", "spatial"):
        assert set(out[scheme]) == set(COMPARED_SETS)
        for set_name in COMPARED_SETS:
            assert set(out[scheme][set_name]) == set(MODEL_NAMES)
            for stats in out[scheme][set_name].values():
                assert set(stats) == STATS
                assert all(isinstance(v, float) and np.isfinite(v) for v in stats.values())
    for key in TESTS:
        assert set(out[key]) == COMPARISONS, key
        assert all(isinstance(p, float) and 0 < p <= 1 for p in out[key].values()), key
    json.dumps(out, allow_nan=False)  # plain JSON, no NaN


def test_summary_matches_the_rows(results):
    out = comparison_json(results)
    rnd = results[(results["scheme"] == "random") & (results["set"] == "soil")]
    r2 = rnd.loc[rnd["model"] == "ridge", "r2"]
    assert len(r2) == 6
    assert out["random"]["soil"]["ridge"]["r2_mean"] == pytest.approx(r2.mean())
    assert out["random"]["soil"]["ridge"]["r2_sd"] == pytest.approx(r2.std(ddof=1))
    folds = results[(results["scheme"] == "spatial") & (results["scope"] == "fold")]
    assert folds.groupby(["set", "model"]).size().eq(4).all()
    pooled = results[results["scope"] == "pooled"]
    assert len(pooled) == len(COMPARED_SETS) * len(MODEL_NAMES)
    assert (pooled["n_test"] == results.attrs["n_rows"]).all()  # every sample tested once


def test_ssl_wins_and_wilcoxon_uses_the_best_model(results):
    out = comparison_json(results)
    model = best_model(results)
    tests = paired_tests(results, "ssl", model=model, others=["climate", "soil", "landcover"])
    spatial = paired_tests(
        results, "ssl", model=model, scheme="spatial", others=["climate", "soil", "landcover"]
    )
    for name in COMPARISONS:
        assert out["wilcoxon_p"][name] == pytest.approx(tests.loc[name, "wilcoxon_p"])
        assert out["corrected_t_p"][name] == pytest.approx(tests.loc[name, "corrected_t_p"])
        assert out["wilcoxon_p_spatial"][name] == pytest.approx(spatial.loc[name, "wilcoxon_p"])
    # 4 folds all in favour of ssl: the exact two-sided Wilcoxon p is 2 / 2**4
    assert (spatial["n"] == 4).all()
    assert spatial["wilcoxon_p"].max() == pytest.approx(2 / 2**4)
    # the corrected t-test by hand from the per-seed R² (n_test / n_train about 0.2 / 0.7)
    rnd = results[(results["scheme"] == "random") & (results["model"] == model)]
    r2 = {k: g.set_index("seed")["r2"] for k, g in rnd.groupby("set")}
    ratio = rnd["n_test"].mean() / rnd["n_train"].mean()
    assert ratio == pytest.approx(0.2 / 0.7, abs=0.01)
    _, p_soil = corrected_resampled_ttest(r2["ssl"] - r2["soil"], ratio)
    assert out["corrected_t_p"]["ssl_vs_soil"] == pytest.approx(p_soil)
    # host (seen only by SSL) carries most of the variance: ssl beats every 1 km set
    assert (tests["mean_diff"] > 0.3).all()
    assert (tests["ci_low"] > 0).all()
    # 6 seeds all in favour: the exact two-sided Wilcoxon p is 2 / 2**6
    assert tests["wilcoxon_p"].max() == pytest.approx(2 / 2**6)
    for set_name in ("ssl", "all"):
        assert out["random"][set_name][model]["r2_mean"] > 0.6
        assert out["spatial"][set_name][model]["r2_mean"] > 0.5


def test_same_seed_same_numbers_other_seed_other_splits(frame, results):
    again = table1(
        frame,
        "log_richness",
        n_seeds=6,
        seed=0,
        spatial_splitter=spatial_splitter(frame, block_size_m=100_000, n_splits=4),
        n_components=4,
        model_params=FAST,
        progress=False,
    )
    pd.testing.assert_frame_equal(results, again)
    other = table1(
        frame,
        "log_richness",
        sets=["climate"],
        models=["ridge"],
        n_seeds=2,
        seed=1,
        spatial_splitter=False,
        progress=False,
    )
    first = results[(results["scheme"] == "random") & (results["set"] == "climate")]
    first = first[first["model"] == "ridge"].set_index("seed")["r2"]
    # seed 1 is the second split of the seed-0 run: the same split, the same score
    assert other.set_index("seed").loc[1, "r2"] == pytest.approx(first.loc[1], abs=1e-12)
    assert other.set_index("seed").loc[2, "r2"] != pytest.approx(first.loc[1])


def test_memo_reuses_pca_without_changing_a_number(frame, results):
    assert results.attrs["memo_hits"] > 0
    X = predictor_matrix(frame, "ssl")
    # table1 runs BLAS on one thread; the PCA's last bits depend on the thread count
    with threadpool_limits(limits=1):
        plain = evaluate_random_splits(
            X,
            frame["log_richness"],
            "lightgbm",
            n_seeds=6,
            seed=0,
            feature_transform=partial(PatchReducer, n_components=4, seed=0),
            predictor_set="ssl",
            model_params=FAST["lightgbm"],
            n_jobs=1,
            progress=False,
        )
    memo_rows = results[
        (results["scheme"] == "random")
        & (results["set"] == "ssl")
        & (results["model"] == "lightgbm")
    ]
    np.testing.assert_allclose(memo_rows["r2"].to_numpy(), plain["r2"].to_numpy(), atol=1e-9)


def test_memo_patch_reducer_matches_patch_reducer_and_keys_on_rows(frame):
    X = predictor_matrix(frame, "all")
    memo = ReductionMemo()
    a = MemoPatchReducer(3, memo=memo).fit(X.iloc[:150])
    b = MemoPatchReducer(3, memo=memo).fit(X.iloc[:150][select_predictors(X, "ssl").columns])
    ref = PatchReducer(3).fit(X.iloc[:150])
    assert (memo.misses, memo.hits) == (1, 1)
    pd.testing.assert_frame_equal(a.transform(X), ref.transform(X))
    np.testing.assert_allclose(b.transform(X).to_numpy(), ref.transform(X)[b.ssl_names_out_])
    MemoPatchReducer(3, memo=memo).fit(X.iloc[1:151])  # other rows: a new fit
    assert memo.misses == 2
    from sklearn.base import clone

    assert clone(a).memo is memo  # cloning keeps the shared store


def test_unknown_set_or_model_names_the_parameter(frame):
    with pytest.raises(ValueError, match="sets: .*'sat'"):
        table1(frame, "log_richness", sets=["ssl", "sat"], progress=False)
    with pytest.raises(ValueError, match="models: unknown \\['svm'\\]"):
        table1(frame, "log_richness", models=["rf", "svm"], progress=False)
    with pytest.raises(ValueError, match="target"):
        table1(frame, "richness", sets=["soil"], progress=False)
    with pytest.raises(ValueError, match="n_seeds"):
        table1(frame, "log_richness", sets=["soil"], n_seeds=0, progress=False)
    with pytest.raises(ValueError, match="sets is empty"):
        table1(frame, "log_richness", sets=[], progress=False)
    with pytest.raises(ValueError, match="model_params"):
        table1(frame, "log_richness", sets=["soil"], model_params={"svm": {}}, progress=False)


def test_real_mode_without_ssl():
    # the real SPUN table: no embeddings, and a categorical biome code
    frame = predictor_frame(ssl=False, seed=3)
    frame["Resolve_Biome"] = pd.Categorical(np.resize([4, 5, 12], len(frame)))
    sets = available_sets(frame)
    assert sets == ["climate", "soil", "landcover", "all"]
    with pytest.raises(ValueError, match="sets: predictor set 'ssl'"):
        table1(frame, "log_richness", sets=COMPARED_SETS, progress=False)
    res = table1(
        frame,
        "log_richness",
        sets=sets,
        models=["ridge", "lightgbm"],
        n_seeds=3,
        model_params=FAST,
        progress=False,
    )
    out = comparison_json(res)
    assert set(out) == {"random", "spatial", *TESTS}
    assert set(out["random"]) == set(out["spatial"]) == set(sets)
    for key in TESTS:
        assert out[key] == {
            "ssl_vs_climate": None,
            "ssl_vs_soil": None,
            "ssl_vs_landcover": None,
        }
    # the biome code became 0/1 columns that stay in the "other" group (so in "all")
    X = predictor_matrix(frame, "all")
    assert {"Resolve_Biome_4", "Resolve_Biome_5", "Resolve_Biome_12"} <= set(X.columns)
    assert X.dtypes.eq("float64").all()


def test_incomplete_rows_are_dropped_for_every_set_alike():
    frame = predictor_frame(n_sites=60, seed=4)
    frame.loc[[0, 5], "ssl_0003"] = np.nan  # missing embeddings
    frame.loc[7, "SG_Soil_pH_H2O_005cm"] = np.nan
    with pytest.warns(UserWarning, match="dropped 3 of 180 rows"):
        res = table1(
            frame,
            "log_richness",
            sets=["ssl", "soil"],
            models=["ridge"],
            n_seeds=2,
            n_components=3,
            progress=False,
        )
    assert res.attrs["n_dropped"] == 3 and res.attrs["n_rows"] == 177
    assert (res[res["scope"] == "pooled"]["n_test"] == 177).all()


def test_splitter_without_coordinates_gets_the_frame_coordinates(frame):
    res = table1(
        frame,
        "log_richness",
        sets=["climate"],
        models=["ridge"],
        n_seeds=2,
        spatial_splitter=SiteGroupKFold(n_splits=3),
        progress=False,
    )
    spatial = res[res["scheme"] == "spatial"]
    assert set(spatial["cv"]) == {"SiteGroupKFold"}
    assert (spatial["scope"] == "fold").sum() == 3
    with pytest.raises(ValueError, match="spatial_splitter"):
        table1(frame, "log_richness", sets=["climate"], spatial_splitter="blocks", progress=False)


def test_paired_tests_errors(results):
    with pytest.raises(ValueError, match="reference"):
        paired_tests(results, reference="coords")
    with pytest.raises(ValueError, match="model"):
        paired_tests(results, model="svm")
    with pytest.raises(ValueError, match="scheme"):
        paired_tests(results, scheme="blocks")
    spatial = paired_tests(results, scheme="spatial", model="ridge")
    assert (spatial["n"] == 4).all()  # paired by fold


def test_wide_table_and_figure(results):
    import matplotlib.pyplot as plt

    wide = table1_wide(results)
    assert list(wide.index) == list(COMPARED_SETS)
    assert list(wide.columns.get_level_values(0).unique()) == ["random", "spatial"]
    assert "±" in wide.iloc[0, 0]
    ax = plot_table1(results)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(reversed(COMPARED_SETS))
    plt.close("all")


def test_reduced_model_pipeline_is_shap_additive(frame):
    from fungi_ssl.attribution.explain import shap_by_group, tree_shap

    X = predictor_matrix(frame, "all")
    memo = ReductionMemo()
    model = reduced_model("lightgbm", n_components=4, memo=memo, n_jobs=1, n_estimators=80)()
    model.fit(X, frame["log_richness"])
    sv = tree_shap(model, X, max_samples=100, progress=False)
    np.testing.assert_allclose(
        sv.predictions.to_numpy(), model.predict(X.loc[sv.values.index]), atol=1e-6
    )
    assert shap_by_group(sv).index[0] == "ssl"
    with pytest.raises(ValueError, match="model_name"):
        reduced_model("svm")


def test_thread_warnings_drop_the_sklearn_filter_race_and_reissue_the_rest():
    import warnings

    from fungi_ssl.core.worker_threads import worker_warnings

    def warn_from_workers() -> None:
        with worker_warnings():
            warnings.warn("`sklearn.utils.parallel.delayed` should be used with x", UserWarning)
            for _ in range(3):
                warnings.warn("a real problem", UserWarning)

    with pytest.warns(UserWarning) as record:
        warn_from_workers()
    assert [str(w.message) for w in record] == ["a real problem"]


def test_xgboost_is_in_table1_and_stops_early(frame, results):
    rows = results[(results["model"] == "xgboost") & (results["scope"] != "pooled")]
    assert len(rows) == len(COMPARED_SETS) * (6 + 4)  # every set: 6 seeds + 4 folds
    # xgboost learns the host signal through the SSL patch as LightGBM does
    ssl = rows[(rows["set"] == "ssl") & (rows["scheme"] == "random")]["r2"].mean()
    gbm = results[
        (results["model"] == "lightgbm")
        & (results["set"] == "ssl")
        & (results["scheme"] == "random")
    ]["r2"].mean()
    assert ssl > 0.6 and abs(ssl - gbm) < 0.1
    assert "random/ssl/xgboost" in results.attrs["task_seconds"]


def _line_of_sites(lon0: float, lat0: float, n_sites: int = 40, spacing_m: float = 2_000.0):
    """Sites on a meridian ``spacing_m`` apart (geodesic), 3 cores per site."""
    from pyproj import Geod

    geod = Geod(ellps="WGS84")
    lon, lat = [lon0], [lat0]
    for _ in range(n_sites - 1):
        x, y, _ = geod.fwd(lon[-1], lat[-1], 0.0, spacing_m)
        lon.append(x)
        lat.append(y)
    site = np.repeat(np.arange(n_sites), 3)
    return pd.DataFrame({"longitude": np.array(lon)[site], "latitude": np.array(lat)[site]}), site


@pytest.mark.parametrize(
    "where", [(10.0, 50.0), (135.0, 35.0), (147.0, -38.0)], ids=["Europe", "Japan", "Australia"]
)
def test_nearest_training_distances_are_geodesic_on_every_continent(where):
    from sklearn.model_selection import PredefinedSplit

    frame, site = _line_of_sites(*where)
    # train on even sites, test on odd ones: every test core's nearest training
    # core is a neighbouring site, 2 km away on the ground
    alternate = PredefinedSplit(np.where(site % 2 == 1, 0, -1))
    d = nearest_training_distances(frame, n_seeds=2, splitter=alternate)
    spatial = d.loc[d["scheme"] == "spatial", "distance_m"]
    assert len(spatial) == (site % 2 == 1).sum()
    np.testing.assert_allclose(spatial, 2_000.0, rtol=1e-3)
    # random splits: most test cores share their site with a training core (0 m)
    rnd = d.loc[d["scheme"] == "random", "distance_m"]
    assert set(d.loc[d["scheme"] == "random", "split"]) == {0, 1}
    assert (rnd == 0).mean() > 0.7
    assert rnd.max() <= 2_000.0 * (1 + 1e-3) * 3  # never farther than a few sites
