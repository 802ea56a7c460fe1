"""Buffered spatial leave-one-out (issue 21): the splitter's guarantees and the curve."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import cross_validate

from fungi_ssl.data.coordinates import geodesic_distance_m, nearest_distance_m
from fungi_ssl.validation import buffered_loo as bl


def _clustered_lonlat(seed: int = 0, n_clusters: int = 40, per: int = 12) -> np.ndarray:
    """Sites clustered in regions over Europe and North America, several cores per site."""
    rng = np.random.default_rng(seed)
    centres = np.vstack([rng.uniform([-10, 38], [30, 62], (n_clusters // 2, 2)),
                         rng.uniform([-120, 30], [-70, 55], (n_clusters // 2, 2))])
    sites = np.repeat(centres, per // 3, axis=0) + rng.normal(0, 0.5, (n_clusters * (per // 3), 2))
    return np.repeat(sites, 3, axis=0)  # three cores at each site coordinate


@pytest.mark.parametrize("buffer_km", [0.0, 1.0, 50.0, 500.0, 2000.0])
def test_no_training_sample_within_the_buffer_of_a_test_sample(buffer_km):
    xy = _clustered_lonlat()
    cv = bl.BufferedLeaveOneOut(buffer_km * 1000, n_test=60, seed=3, coords=xy)
    tested = []
    for train, test in cv.split():
        assert len(train) and len(test)
        assert not np.intersect1d(train, test).size
        d = nearest_distance_m(xy[train, 0], xy[train, 1], xy[test, 0], xy[test, 1])
        assert d.min() > buffer_km * 1000
        tested.extend(test)
    # every drawn test sample is tested exactly once
    assert sorted(tested) == sorted(cv.draw(len(xy)).tolist())
    assert cv.get_n_splits() == len(list(cv.split()))


@pytest.mark.parametrize("cap", [0.0, 0.05, 0.2])
def test_batching_costs_each_test_sample_at_most_the_cap(cap):
    """Each member's training set is its own leave-one-out set less at most cap × n samples."""
    xy = _clustered_lonlat(1)
    n, buffer_m = len(xy), 300_000.0
    cv = bl.BufferedLeaveOneOut(buffer_m, n_test=80, max_extra_share=cap, seed=0, coords=xy)
    for train, test in cv.split():
        for t in test:
            alone = geodesic_distance_m(np.full(n, xy[t, 0]), np.full(n, xy[t, 1]),
                                        xy[:, 0], xy[:, 1]) > buffer_m
            assert set(train) <= set(np.flatnonzero(alone))  # never more than alone
            assert alone.sum() - len(train) <= cap * n + 1e-9


def test_batching_puts_far_apart_small_zones_together_and_close_ones_too():
    """Two tight clusters 1,000 km apart: a 10 km buffer needs one fit for all tests."""
    rng = np.random.default_rng(0)
    a = np.column_stack([rng.uniform(0, 5_000, 50), rng.uniform(0, 5_000, 50)])
    xy = np.vstack([a, a + [1_000_000, 0], rng.uniform(0, 2_000_000, (400, 2))])
    d = bl.distances_to_samples(xy, np.array([0, 1, 50, 51]), "metres")
    assert len(bl.batch_test_samples(d, 10_000, max_extra_share=0.3)) == 1
    # with no allowance, samples of one cluster whose zones differ must split up
    assert len(bl.batch_test_samples(d, 10_000, max_extra_share=0.0)) > 1


def test_the_splitter_plugs_into_scikit_learn():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100_000, (300, 2))
    X = xy / 1e5
    y = X[:, 0] + rng.normal(0, 0.1, 300)
    cv = bl.BufferedLeaveOneOut(5_000, n_test=30, coordinates="metres")
    out = cross_validate(LinearRegression(), X, y, cv=cv, groups=xy, scoring="neg_mean_squared_error")
    assert len(out["test_score"]) == cv.get_n_splits(groups=xy)


def test_sloo_curve_falls_with_the_buffer_and_keeps_its_distances():
    """A target that is a random value per 50 km cell, and position as the predictor:
    samples of the same cell predict it well, samples 150 km away cannot."""
    rng = np.random.default_rng(2)
    xy = rng.uniform(0, 400_000, (800, 2))
    cell = rng.normal(size=(8, 8))
    ix = (xy // 50_000).astype(int)
    y = cell[ix[:, 0], ix[:, 1]] + rng.normal(0, 0.2, 800)
    X = pd.DataFrame(xy / 1000, columns=["x", "y"])
    curve = bl.sloo_curve(X, y, xy, [0.5, 150.0], "lightgbm", {"n_estimators": 100},
                          n_test=60, n_reps=2, coordinates="metres", progress=False)
    t = curve.table
    assert t.loc[0, "r2_mean"] > 0.5 and t.loc[1, "r2_mean"] < 0.1
    assert (t["median_test_train_km"] > t["buffer_km"]).all()
    assert (t["train_share"] >= 1 - bl.DEFAULT_MAX_EXTRA_SHARE * 800 / 700).all()
    records = curve.records()
    assert {"buffer_km", "r2_mean", "r2_sd", "n_test", "n_reps"} <= set(records[0])
    assert records[0]["n_test"] == 60 and records[0]["n_reps"] == 2
    assert len(curve.reps) == 4
    # same seed, same numbers
    again = bl.sloo_curve(X, y, xy, [0.5, 150.0], "lightgbm", {"n_estimators": 100},
                          n_test=60, n_reps=2, coordinates="metres", progress=False)
    pd.testing.assert_frame_equal(again.table, t)


def test_bad_input_is_named():
    xy = np.zeros((5, 2))
    with pytest.raises(ValueError, match="buffer_m must be a distance"):
        bl.BufferedLeaveOneOut(-1.0)
    with pytest.raises(ValueError, match="n_test must be an integer"):
        bl.BufferedLeaveOneOut(10.0, n_test=0)
    with pytest.raises(ValueError, match="max_extra_share must lie"):
        bl.batch_test_samples(np.zeros((1, 5)), 1.0, max_extra_share=2)
    with pytest.raises(ValueError, match="test_indices must be distinct"):
        bl.BufferedLeaveOneOut(1.0, test_indices=[0, 0], coords=xy, coordinates="metres").batches()
    with pytest.raises(ValueError, match="leaves no training sample"):
        list(bl.BufferedLeaveOneOut(1.0, n_test=1, coords=xy, coordinates="metres").split())
    with pytest.raises(ValueError, match="one row per sample"):
        bl.sloo_curve(np.zeros((4, 1)), np.zeros(5), xy, [1.0], "ridge", progress=False)
