"""Tests for fungi_ssl.comparison: chapter 04's Table 1 driver."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import json
from functools import partial

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from fungi_ssl.comparison import (
    COMPARED_SETS,
    MemoPatchReducer,
    ReductionMemo,
    available_sets,
    best_model,
    comparison_json,
    paired_tests,
    partition_groups,
    plot_table1,
    predictor_matrix,
    reduced_model,
    shap_attribution,
    spatial_splitter,
    table1,
    table1_wide,
)
from fungi_ssl.cv import SiteGroupKFold
from fungi_ssl.features import PatchReducer, select_predictors
from fungi_ssl.models import MODEL_NAMES, evaluate_random_splits
from fungi_ssl.partition import commonality_partition, subsumed_share

#: Small models so that a whole Table 1 runs in seconds.
FAST = {"rf": {"n_estimators": 15}, "lightgbm": {"n_estimators": 60, "learning_rate": 0.2}}
STATS = {"r2_mean", "r2_sd", "rmse_mean", "me_mean"}


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
    assert set(out) == {"random", "spatial", "wilcoxon_p"}
    for scheme in ("random", "spatial"):
        assert set(out[scheme]) == set(COMPARED_SETS)
        for set_name in COMPARED_SETS:
            assert set(out[scheme][set_name]) == set(MODEL_NAMES)
            for stats in out[scheme][set_name].values():
                assert set(stats) == STATS
                assert all(isinstance(v, float) and np.isfinite(v) for v in stats.values())
    assert set(out["wilcoxon_p"]) == {"ssl_vs_climate", "ssl_vs_soil", "ssl_vs_landcover"}
    assert all(0 < p <= 1 for p in out["wilcoxon_p"].values())
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
    for name, p in out["wilcoxon_p"].items():
        assert p == pytest.approx(tests.loc[name, "wilcoxon_p"])
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
    with pytest.raises(ValueError, match="models: unknown \\['xgboost'\\]"):
        table1(frame, "log_richness", models=["rf", "xgboost"], progress=False)
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
    assert set(out) == {"random", "spatial", "wilcoxon_p"}
    assert set(out["random"]) == set(out["spatial"]) == set(sets)
    assert out["wilcoxon_p"] == {
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
        paired_tests(results, model="xgboost")
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
    from fungi_ssl.explain import shap_by_group, tree_shap

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


# --------------------------------------------------------------------------
# chapter 05: commonality analysis and SHAP through the book's pipelines
# --------------------------------------------------------------------------
def latent_frame(n: int = 3000, seed: int = 0) -> tuple[pd.DataFrame, dict[str, float]]:
    """y = s + a + c + noise; the SSL patch sees (s, a), climate sees (s, c).

    True commonalities (share of var y): unique ssl = var(a)/V, unique
    climate = var(c)/V, shared ssl+climate = var(s)/V.
    """
    rng = np.random.default_rng(seed)
    s, a, c, e = rng.normal(size=(4, n))
    beta = {"s": 1.0, "a": 0.8, "c": 0.6}
    y = beta["s"] * s + beta["a"] * a + beta["c"] * c + e
    patch = np.column_stack([s, a]) @ rng.normal(size=(2, 1152)) + 0.05 * rng.normal(size=(n, 1152))
    frame = pd.DataFrame(patch, columns=[f"ssl_{i:04d}" for i in range(1152)])
    frame["CHELSA_BIO_Annual_Mean_Temperature"] = s
    frame["CHELSA_BIO_Annual_Precipitation"] = c
    frame["longitude"] = rng.uniform(0, 10, n)
    frame["latitude"] = rng.uniform(44, 52, n)
    frame["y"] = y
    var_y = sum(b**2 for b in beta.values()) + 1.0
    truth = {
        "unique:ssl": beta["a"] ** 2 / var_y,
        "unique:climate": beta["c"] ** 2 / var_y,
        "shared:ssl+climate": beta["s"] ** 2 / var_y,
    }
    return frame, truth


def test_partition_groups_recovers_a_known_partition():
    frame, truth = latent_frame()
    res = partition_groups(
        frame, "y", ["ssl", "climate", "soil"], model="ridge", n_components=4, progress=False
    )
    assert res.groups == ["ssl", "climate"]  # no soil columns: left out
    assert abs(sum(res.fractions.values()) - res.full_r2) < 1e-9
    for name, value in truth.items():
        assert res.fractions[name] == pytest.approx(value, abs=0.02), name
    assert subsumed_share(res, "ssl", "climate") == pytest.approx(
        truth["shared:ssl+climate"] / (truth["shared:ssl+climate"] + truth["unique:climate"]),
        abs=0.03,
    )


def test_partition_groups_threads_and_memo_change_no_number(frame):
    res = partition_groups(
        frame,
        "log_richness",
        cv="block",
        n_components=4,
        model_params={"n_estimators": 40},
        progress=False,
    )
    assert res.groups == ["ssl", "climate", "soil", "landcover"]
    assert abs(sum(res.fractions.values()) - res.full_r2) < 1e-9
    # the same analysis, serial, with a plain PatchReducer pipeline per fit
    from sklearn.pipeline import make_pipeline

    from fungi_ssl.comparison import PARTITION_LIGHTGBM
    from fungi_ssl.models import make_model

    def plain():
        params = {**PARTITION_LIGHTGBM, "n_estimators": 40}
        return make_pipeline(PatchReducer(4), make_model("lightgbm", seed=0, n_jobs=1, **params))

    X_groups = {g: predictor_matrix(frame, g) for g in res.groups}
    with threadpool_limits(limits=1):
        serial = commonality_partition(
            X_groups,
            frame["log_richness"].to_numpy(),
            plain,
            spatial_splitter(frame, n_splits=5, seed=0),
            n_jobs=1,
            progress=False,
        )
    assert serial.subset_r2 == pytest.approx(res.subset_r2, abs=1e-12)
    with pytest.raises(ValueError, match="scheme"):
        partition_groups(frame, "log_richness", cv="kfold", progress=False)
    with pytest.raises(ValueError, match="groups"):
        partition_groups(frame, "log_richness", ["topography"], progress=False)


def test_shap_attribution_is_additive_and_ranks_ssl_first(frame):
    model, sv, table = shap_attribution(
        frame, "log_richness", n_components=4, max_samples=120, progress=False
    )
    assert len(sv.values) == 120
    np.testing.assert_allclose(
        sv.predictions.to_numpy(), model[-1].predict(sv.data), rtol=1e-6, atol=1e-6
    )
    assert table.index[0] == "ssl"
    assert table["share"].sum() == pytest.approx(1.0)
    assert set(table.index) == {"ssl", "climate", "soil", "landcover"}


def test_thread_warnings_drop_the_sklearn_filter_race_and_reissue_the_rest():
    import warnings

    from fungi_ssl.comparison import _thread_warnings

    def warn_from_workers() -> None:
        with _thread_warnings():
            warnings.warn("`sklearn.utils.parallel.delayed` should be used with x", UserWarning)
            for _ in range(3):
                warnings.warn("a real problem", UserWarning)

    with pytest.warns(UserWarning) as record:
        warn_from_workers()
    assert [str(w.message) for w in record] == ["a real problem"]
