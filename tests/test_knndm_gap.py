"""The kNNDM experiment of chapter 09 (issue 21): domains, variants and their keys."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fungi_ssl.data.coordinates import nearest_distance_m
from fungi_ssl.validation import knndm_gap as kg
from fungi_ssl.validation.knndm import KNNDMKFold


@pytest.fixture(scope="module")
def world():
    """Clustered samples in two regions; a prediction grid that reaches far beyond them."""
    rng = np.random.default_rng(0)
    sites = np.vstack([rng.uniform([0, 45], [8, 52], (40, 2)), rng.uniform([20, 40], [26, 46], (20, 2))])
    xy = np.repeat(sites, 3, axis=0) + rng.normal(0, 0.01, (180, 2))
    X = pd.DataFrame({"CHELSA_BIO_Annual_Mean_Temperature": 150 - 3 * xy[:, 1] + rng.normal(0, 2, 180),
                      "SG_Soil_pH_H2O_005cm": rng.normal(60, 5, 180)})
    y = 0.02 * X.iloc[:, 0].to_numpy() + rng.normal(0, 0.2, 180)
    lon, lat = np.meshgrid(np.arange(-10, 40, 1.0), np.arange(35, 65, 1.0))
    grid = pd.DataFrame({"longitude": lon.ravel(), "latitude": lat.ravel()})
    return xy, X, y, grid


def test_near_sample_domain_keeps_exactly_the_points_within_reach(world):
    xy, _, _, grid = world
    near = kg.near_sample_domain(grid, xy[:, 0], xy[:, 1], 300)
    d_all = nearest_distance_m(grid["longitude"], grid["latitude"], xy[:, 0], xy[:, 1])
    assert len(near) == int((d_all <= 300_000).sum()) and 0 < len(near) < len(grid)
    d = nearest_distance_m(near["longitude"], near["latitude"], xy[:, 0], xy[:, 1])
    assert d.max() <= 300_000 and near.attrs["max_km"] == 300
    with pytest.raises(ValueError, match="no prediction point within"):
        kg.near_sample_domain(grid.iloc[:1], [100.0], [0.0], 10)


def test_spun_forest_settings_lie_in_the_published_grid():
    assert 8 <= kg.SPUN_FOREST_PARAMS["max_features"] <= 10
    assert 2 <= kg.SPUN_FOREST_PARAMS["min_samples_leaf"] <= 4
    variants = kg.default_variants({"lightgbm": 50, "rf": 20})
    assert {v.domain for v in variants} == {"global", "near"}
    spun = [v for v in variants if v.name.startswith("rf_spun")]
    assert len(spun) == 2 and all(v.params["max_features"] == 9 for v in spun)


def test_experiments_give_one_entry_per_variant_with_the_chapter_keys(world):
    xy, X, y, grid = world
    near = kg.near_sample_domain(grid, xy[:, 0], xy[:, 1], 300)
    known = KNNDMKFold(grid.to_numpy(), n_splits=3, coords=xy).fit().result_
    variants = [kg.KNNDMVariant(v.name, v.label, v.model, v.params, v.domain)
                for v in kg.default_variants({"lightgbm": 30, "rf": 20})]
    ex = kg.knndm_experiments(X, y, xy, {"global": grid, "near": near}, variants, n_splits=3,
                              known_folds={"global": known}, progress=False)
    records = ex.records()
    assert [r["variant"] for r in records] == [v.name for v in variants]
    for r in records:
        assert set(kg.EXPERIMENT_KEYS) <= set(r)
        assert {"r2", "w_km", "median_cv_distance_km"} <= set(r)
        assert np.isfinite([r["r2"], r["w_km"], r["median_cv_distance_km"]]).all()
    json.dumps(records)  # JSON-ready
    t = ex.table.set_index("variant")
    # the global domain reused the folds it was given
    assert t.loc["lightgbm_global", "w_km"] == pytest.approx(known.w / 1000)
    assert ex.results["global"] is known
    # the near domain asks for shorter distances, and kNNDM follows
    assert (t.loc["lightgbm_near", "median_prediction_distance_km"]
            < t.loc["lightgbm_global", "median_prediction_distance_km"])
    assert (t.loc["lightgbm_near", "median_cv_distance_km"]
            <= t.loc["lightgbm_global", "median_cv_distance_km"])
    # same folds, same model -> same score; a known score is taken as given, not refitted
    same = kg.knndm_experiments(X, y, xy, {"global": grid}, variants[:1], n_splits=3,
                                known_folds={"global": known}, progress=False)
    assert same.r2("lightgbm_global") == pytest.approx(ex.r2("lightgbm_global"))
    given = kg.knndm_experiments(X, y, xy, {"global": grid}, variants[:2], n_splits=3,
                                 known_folds={"global": known},
                                 known_scores={"lightgbm_global": (0.5, 0.25)}, progress=False)
    assert given.table.loc[0, ["r2", "r2_fold_mean"]].tolist() == [0.5, 0.25]
    assert given.r2("rf_book_global") == pytest.approx(ex.r2("rf_book_global"))


def test_experiments_reject_unknown_domains_and_duplicate_names(world):
    xy, X, y, grid = world
    v = kg.KNNDMVariant("a", "a", "ridge", domain="elsewhere")
    with pytest.raises(ValueError, match="domains \\['elsewhere'\\]"):
        kg.knndm_experiments(X, y, xy, {"global": grid}, [v], progress=False)
    w = kg.KNNDMVariant("a", "a", "ridge")
    with pytest.raises(ValueError, match="distinct"):
        kg.knndm_experiments(X, y, xy, {"global": grid}, [w, w], progress=False)
