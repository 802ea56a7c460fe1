"""Tests for fungi_ssl.validation.knndm: kNNDM cross-validation on cases worked out by hand."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wasserstein_distance
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import cross_val_predict, cross_val_score

from fungi_ssl.data.coordinates import geodesic_distance_m, nearest_distance_m
from fungi_ssl.validation.cv import SpatialKFold
from fungi_ssl.validation.knndm import (
    KNNDMKFold,
    _deal_clusters,
    fold_nearest_distances,
    knndm,
    plot_knndm_distances,
    wasserstein_w,
)

# Four samples on a line: two pairs 1 m apart, the pairs 10 m apart (metres).
LINE = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [11.0, 0.0]])
LINE_KW = {"n_splits": 2, "coordinates": "metres", "max_fold_fraction": 0.6, "site_distance_m": 0}


def _same_partition(a, b) -> bool:
    """True when two labelings split the samples into the same groups."""
    a, b = np.asarray(a), np.asarray(b)
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def _four_clusters(rng, per_cluster=30):
    """Four groups of sites about 700-900 km apart in Europe, and their labels."""
    centres = np.array([[0.0, 50.0], [10.0, 50.0], [0.0, 58.0], [10.0, 58.0]])
    label = np.repeat(np.arange(4), per_cluster)
    return centres[label] + rng.uniform(-0.3, 0.3, (len(label), 2)), label


# --------------------------------------------------------------------------
# W, by hand
# --------------------------------------------------------------------------
def test_wasserstein_w_by_hand():
    # ECDFs differ by 1/2 over [1, 3): area 1
    assert wasserstein_w([0.0, 1.0], [0.0, 3.0]) == pytest.approx(1.0)
    # all of one sample beyond the other: difference of the means
    assert wasserstein_w([10.0, 9.0, 9.0, 10.0], [9.0, 10.0, 14.0]) == pytest.approx(1.5)
    # weights count repeated values: a = {0, 0, 0, 2}, b = {0, 2}: |3/4 - 1/2| over [0, 2)
    assert wasserstein_w([0.0, 2.0], [0.0, 2.0], a_weights=[3, 1]) == pytest.approx(0.5)
    assert wasserstein_w([0.0, 0.0, 0.0, 2.0], [0.0, 2.0]) == pytest.approx(0.5)


def test_wasserstein_w_matches_scipy():
    rng = np.random.default_rng(3)
    a, b = rng.gamma(2.0, 3.0, 300), rng.gamma(3.0, 2.0, 500)
    wa = rng.integers(1, 5, 300)
    assert wasserstein_w(a, b, a_weights=wa) == pytest.approx(
        wasserstein_distance(a, b, u_weights=wa), rel=1e-12
    )


def test_wasserstein_w_rejects_empty_and_nan():
    with pytest.raises(ValueError, match="at least one"):
        wasserstein_w([], [1.0])
    with pytest.raises(ValueError, match="finite"):
        wasserstein_w([np.nan], [1.0])


# --------------------------------------------------------------------------
# the merge of clusters into folds (CAST's rule), by hand
# --------------------------------------------------------------------------
def test_deal_clusters_by_hand():
    # N = 10, k = 3: the cluster of 6 (≥ N/k) is a fold alone; the four singles are
    # dealt in turn, in order along the first principal component, to folds 1 and 2.
    sizes = np.array([6.0, 1.0, 1.0, 1.0, 1.0])
    assert _deal_clusters(sizes, np.arange(5.0), 3).tolist() == [0, 1, 2, 1, 2]
    assert _deal_clusters(sizes, -np.arange(5.0), 3).tolist() == [0, 2, 1, 2, 1]
    # no big cluster: all dealt in turn
    assert _deal_clusters(np.ones(5), np.arange(5.0), 2).tolist() == [0, 1, 0, 1, 0]


# --------------------------------------------------------------------------
# a tiny configuration computed by hand
# --------------------------------------------------------------------------
def test_tiny_configuration_far_predictions_keeps_pairs_together():
    """Predictions 9-14 m from the nearest sample.

    Gj = [1, 1, 1, 1]; Gij = [9, 10, 14]. Candidates q = 2, 3 keep each pair in
    one fold: Gj* = [10, 9, 9, 10], W = |1/2 - 1/3|·1 + |1 - 2/3|·4 = 1.5.
    q = 4 interleaves the pairs: Gj* = [1, 1, 1, 1], W = 11 - 1 = 10.
    """
    res = knndm(LINE, [[20.0, 0.0], [21.0, 0.0], [25.0, 0.0]], **LINE_KW)
    assert not res.random_cv and res.ks_pvalue < 0.05  # exact one-sided KS: 1/35
    assert res.ks_pvalue == pytest.approx(1 / 35)
    assert res.gj.tolist() == [1.0, 1.0, 1.0, 1.0]
    assert res.gij.tolist() == [9.0, 10.0, 14.0]
    assert _same_partition(res.folds, [0, 0, 1, 1])
    assert res.gjstar.tolist() == [10.0, 9.0, 9.0, 10.0]
    assert res.w == pytest.approx(1.5)
    assert res.n_clusters == 2
    cand = res.candidates
    assert cand["q"].tolist() == [2, 3, 4]
    assert cand["n_clusters"].tolist() == [2, 2, 4]  # equal merge heights: no cut into 3
    assert cand["w"].tolist() == pytest.approx([1.5, 1.5, 10.0])
    assert cand["max_fold_fraction"].tolist() == [0.5, 0.5, 0.5]


def test_tiny_configuration_near_predictions_interleaves_pairs():
    """Predictions 3-4 m from the nearest sample: Gij = [3, 4, 4].

    q = 2: W = mean(Gj*) - mean(Gij) = 9.5 - 11/3; q = 4: W = 11/3 - 1 = 8/3, chosen.
    """
    res = knndm(LINE, [[4.0, 0.0], [5.0, 0.0], [6.0, 0.0]], **LINE_KW)
    assert res.gij.tolist() == [3.0, 4.0, 4.0]
    assert res.n_clusters == 4
    assert _same_partition(res.folds, [0, 1, 0, 1])
    assert res.gjstar.tolist() == [1.0, 1.0, 1.0, 1.0]
    assert res.w == pytest.approx(8 / 3)
    assert res.candidates["w"].tolist() == pytest.approx([9.5 - 11 / 3, 9.5 - 11 / 3, 8 / 3])


# --------------------------------------------------------------------------
# cases whose answer is known
# --------------------------------------------------------------------------
def test_far_predictions_give_cluster_folds():
    rng = np.random.default_rng(0)
    xy, label = _four_clusters(rng)
    pred = np.column_stack([rng.uniform(4, 6, 500), rng.uniform(53, 55, 500)])  # ~450 km away
    res = knndm(xy, pred, n_splits=4)
    assert not res.random_cv
    assert _same_partition(res.folds, label)  # each fold is one whole cluster
    # CV now sees test samples as far from training as the map's pixels are from samples
    assert np.median(res.gjstar) > 500_000 and np.median(res.gj) < 50_000
    assert res.w < 0.5 * np.median(res.gij)
    # the winner has the lowest W of all candidates tried
    assert res.w == pytest.approx(res.candidates["w"].min(), rel=0.01)


def test_coincident_predictions_give_random_folds():
    rng = np.random.default_rng(1)
    xy = np.column_stack([rng.uniform(5, 15, 400), rng.uniform(45, 52, 400)])
    res = knndm(xy, xy, n_splits=5, seed=3)
    assert res.random_cv and res.n_clusters is None
    assert (res.gij == 0).all()
    assert np.bincount(res.folds).tolist() == [80] * 5
    assert res.candidates.empty
    # random folds: test samples about as close to training as to their nearest sample
    assert np.median(res.gjstar) < 1.5 * np.median(res.gj)
    # a different seed deals the sites differently; the same seed the same way
    assert not np.array_equal(res.folds, knndm(xy, xy, n_splits=5, seed=4).folds)
    assert np.array_equal(res.folds, knndm(xy, xy, n_splits=5, seed=3).folds)


def test_predictions_spread_like_samples_give_random_like_folds():
    """Samples and map pixels spread alike over one region: Gj* should follow Gij."""
    rng = np.random.default_rng(0)
    xy = np.column_stack([rng.uniform(5, 15, 400), rng.uniform(45, 52, 400)])
    pred = np.column_stack([rng.uniform(5, 15, 2000), rng.uniform(45, 52, 2000)])
    res = knndm(xy, pred, n_splits=5)
    assert np.median(res.gjstar) == pytest.approx(np.median(res.gij), rel=0.2)
    assert res.w < 0.2 * np.median(res.gij)
    # no cluster-wise folds: the chosen configuration has many small clusters
    assert res.random_cv or res.n_clusters >= 100


# --------------------------------------------------------------------------
# distances: geodesic, on every continent, against brute force
# --------------------------------------------------------------------------
def test_distances_match_brute_force_on_three_continents():
    rng = np.random.default_rng(5)
    centres = np.array([[10.0, 50.0], [135.0, 35.0], [147.0, -35.0]])  # Europe, Japan, Australia
    xy = np.vstack([c + rng.normal(0, 0.5, (20, 2)) for c in centres])
    xy = np.vstack([xy, xy[:6]])  # six locations with two cores each
    pred = np.vstack([c + rng.normal(0, 2.0, (25, 2)) for c in centres])
    res = knndm(xy, pred, n_splits=3, site_distance_m=0)
    n = len(xy)
    # pairwise geodesic distances, brute force
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    d = geodesic_distance_m(xy[i.ravel(), 0], xy[i.ravel(), 1], xy[j.ravel(), 0], xy[j.ravel(), 1])
    d = d.reshape(n, n)
    np.fill_diagonal(d, np.inf)
    np.testing.assert_allclose(res.gj, d.min(axis=1), rtol=1e-9, atol=1e-6)
    assert (res.gj[:6] == 0).all()
    np.testing.assert_allclose(
        res.gij, nearest_distance_m(pred[:, 0], pred[:, 1], xy[:, 0], xy[:, 1]), rtol=1e-12
    )
    other = res.folds[:, None] != res.folds[None, :]
    np.testing.assert_allclose(
        res.gjstar, np.where(other, d, np.inf).min(axis=1), rtol=1e-9, atol=1e-6
    )
    assert res.w == pytest.approx(wasserstein_distance(res.gjstar, res.gij), rel=1e-9)


def test_fold_nearest_distances_by_hand_and_split_locations():
    xy = [[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [11.0, 0.0]]
    assert fold_nearest_distances(xy, [0, 0, 1, 1], "metres").tolist() == [10.0, 9.0, 9.0, 10.0]
    assert fold_nearest_distances(xy, ["a", "b", "a", "b"], "metres").tolist() == [1.0] * 4
    # two cores at one location in different folds are 0 m apart
    xy2 = [[0.0, 0.0], [0.0, 0.0], [5.0, 0.0]]
    assert fold_nearest_distances(xy2, [0, 1, 1], "metres").tolist() == [0.0, 0.0, 5.0]
    with pytest.raises(ValueError, match="two folds"):
        fold_nearest_distances(xy, [0, 0, 0, 0], "metres")
    with pytest.raises(ValueError, match="3 labels for 4"):
        fold_nearest_distances(xy, [0, 1, 1], "metres")


# --------------------------------------------------------------------------
# sites
# --------------------------------------------------------------------------
def test_sites_are_never_split():
    rng = np.random.default_rng(2)
    plots = np.column_stack([rng.uniform(5, 15, 60), rng.uniform(45, 52, 60)])
    cores = np.repeat(plots, 3, axis=0)
    cores[1::3, 1] += 0.0001  # a second coordinate of the site, 11 m away
    site = np.repeat(np.arange(60), 3)
    pred = np.column_stack([rng.uniform(20, 25, 300), rng.uniform(45, 52, 300)])
    res = knndm(cores, pred, n_splits=5)
    assert res.n_sites == 60
    for s in range(60):
        assert len(set(res.folds[site == s])) == 1
    # site_distance_m=0 links only equal coordinates: 120 sites
    assert knndm(cores, pred, n_splits=5, site_distance_m=0).n_sites == 120


# --------------------------------------------------------------------------
# the splitter
# --------------------------------------------------------------------------
def test_splitter_plugs_into_scikit_learn():
    rng = np.random.default_rng(0)
    xy, label = _four_clusters(rng, per_cluster=25)
    pred = np.column_stack([rng.uniform(4, 6, 300), rng.uniform(53, 55, 300)])
    X = np.column_stack([xy, rng.normal(size=len(xy))])
    y = X @ [1.0, -2.0, 0.5] + rng.normal(0, 0.1, len(xy))
    cv = KNNDMKFold(pred, n_splits=4, coords=xy)
    assert isinstance(cv, SpatialKFold)
    with pytest.raises(AttributeError, match="fit"):
        _ = cv.result_
    assert cv.get_n_splits() == 4
    tests = [test for _, test in cv.split(X)]
    assert sorted(np.concatenate(tests).tolist()) == list(range(len(xy)))
    assert _same_partition(cv.fold_labels(), label)
    assert cv.n_clusters_ == 4 and cv.w_ == cv.result_.w
    assert len(cv.gij_) == 300 and len(cv.gj_) == len(cv.gjstar_) == len(xy)
    pooled = cross_val_predict(LinearRegression(), X, y, cv=cv)
    assert np.corrcoef(pooled, y)[0, 1] > 0.99
    # coordinates as groups, the way cross_val_score passes them
    scores = cross_val_score(LinearRegression(), X, y, groups=xy, cv=KNNDMKFold(pred, 4))
    assert len(scores) == 4
    # the folds are chosen once per set of coordinates
    first = cv.result_
    list(cv.split(X))
    assert cv.result_ is first
    assert cv.fit() is cv and cv.result_ is first
    moved = cv.with_coords(xy[:60])
    assert moved.get_n_splits() >= 2 and len(moved.result_.folds) == 60
    assert "prediction_points=<300 points>" in repr(cv)


def test_splitter_rejects_bad_input():
    pred = [[5.0, 50.0], [6.0, 51.0]]
    with pytest.raises(ValueError, match="prediction_points"):
        KNNDMKFold([[5.0, 95.0]])
    with pytest.raises(ValueError, match="prediction_points"):
        KNNDMKFold([5.0, 50.0, 1.0])
    with pytest.raises(ValueError, match="max_fold_fraction"):
        KNNDMKFold(pred, n_splits=2, max_fold_fraction=0.5)  # must exceed 1/k
    with pytest.raises(ValueError, match="max_fold_fraction"):
        KNNDMKFold(pred, n_splits=5, max_fold_fraction=1.0)
    with pytest.raises(ValueError, match="clustering"):
        KNNDMKFold(pred, clustering="dbscan")
    with pytest.raises(ValueError, match="n_splits"):
        KNNDMKFold(pred, n_splits=1)
    with pytest.raises(ValueError, match="coords"):
        KNNDMKFold(pred, coords=[[200.0, 50.0], [5.0, 50.0]])
    cv = KNNDMKFold(pred, n_splits=5, coords=[[5.0, 50.0], [5.1, 50.0], [5.2, 50.0]])
    with pytest.raises(ValueError, match="3 sites"):
        list(cv.split())
    with pytest.raises(ValueError, match="coordinates"):
        list(KNNDMKFold(pred, 2, max_fold_fraction=0.6).split(np.zeros((3, 1))))


def test_every_configuration_too_unbalanced_raises():
    # one location holds 60% of the samples, so some fold always holds ≥ 60%
    rng = np.random.default_rng(0)
    xy = np.vstack([np.repeat([[10.0, 50.0]], 60, axis=0), rng.uniform(11, 13, (40, 2)) + [0, 39]])
    pred = rng.uniform(20, 22, (50, 2)) + [0, 30]
    with pytest.raises(ValueError, match="max_fold_fraction=0.55"):
        knndm(xy, pred, n_splits=2, max_fold_fraction=0.55)
    res = knndm(xy, pred, n_splits=2, max_fold_fraction=0.65)
    assert (res.candidates["max_fold_fraction"] >= 0.6).all()
    assert res.candidates.loc[res.candidates["max_fold_fraction"] > 0.65, "w"].isna().all()


def test_kmeans_clustering_finds_the_clusters_too():
    rng = np.random.default_rng(0)
    xy, label = _four_clusters(rng, per_cluster=15)
    pred = np.column_stack([rng.uniform(4, 6, 200), rng.uniform(53, 55, 200)])
    res = knndm(xy, pred, n_splits=4, clustering="kmeans", n_candidates=10, seed=1)
    assert _same_partition(res.folds, label)


def test_plot_draws_three_ecdfs_and_others():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = knndm(LINE * 1000, [[20_000.0, 0.0], [21_000.0, 0.0], [25_000.0, 0.0]], **LINE_KW)
    random_folds = fold_nearest_distances(LINE * 1000, [0, 1, 0, 1], "metres")
    ax = plot_knndm_distances(res, others={"random 2-fold": random_folds}, log=True)
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == [
        "prediction → sample (Gij)",
        "sample → sample, leave-one-out (Gj)",
        "kNNDM CV test → train (Gj*)",
        "random 2-fold test → train",
    ]
    # each ECDF ends at 1 at its largest distance (km)
    gij_line = ax.get_lines()[0]
    assert gij_line.get_xdata()[-1] == pytest.approx(14.0) and gij_line.get_ydata()[-1] == 1.0
    assert "W = 1.5 km" in ax.get_title()
    plt.close(ax.figure)


# --------------------------------------------------------------------------
# speed, and the real table
# --------------------------------------------------------------------------
@pytest.mark.slow
def test_nine_thousand_samples_and_ten_thousand_predictions_in_seconds():
    """About the European table's size: 9,000 cores at 3,600 sites; 10,000 map pixels."""
    rng = np.random.default_rng(0)
    centres = np.column_stack([rng.uniform(-10, 30, 120), rng.uniform(36, 70, 120)])
    sites = centres[rng.integers(0, 120, 3600)] + rng.normal(0, 0.3, (3600, 2))
    cores = sites[np.sort(rng.integers(0, 3600, 9000))]
    pred = np.column_stack([rng.uniform(-10, 30, 10_000), rng.uniform(36, 70, 10_000)])
    start = time.process_time()
    res = knndm(cores, pred, n_splits=10)
    cpu = time.process_time() - start
    assert len(res.folds) == 9000 and res.n_folds == 10
    assert cpu < 20.0, f"kNNDM took {cpu:.1f} s of CPU (about 3 s expected)"


def test_real_european_table(real_data_dir):
    path = real_data_dir / "globalfungi_ecm_richness_europe.csv"
    if not path.exists():
        pytest.skip(f"{path} not in --real-data")
    table = pd.read_csv(path).dropna(subset=["longitude", "latitude", "rarefied"])
    xy = table[["longitude", "latitude"]].to_numpy()
    # map pixels: a regular 0.5° grid over the samples' extent, kept within 100 km of a sample
    lon = np.arange(xy[:, 0].min(), xy[:, 0].max(), 0.5)
    lat = np.arange(xy[:, 1].min(), xy[:, 1].max(), 0.5)
    grid = np.array(np.meshgrid(lon, lat)).reshape(2, -1).T
    near = nearest_distance_m(grid[:, 0], grid[:, 1], xy[:, 0], xy[:, 1]) < 100_000
    res = knndm(xy, grid[near], n_splits=10)
    assert not res.random_cv  # cores share sites: Gj far below Gij
    assert np.median(res.gj) == 0.0
    # kNNDM's folds match the map better than leave-one-out (random CV) does
    assert res.w < wasserstein_w(res.gj, res.gij)
    assert res.n_sites < len(xy) / 2
