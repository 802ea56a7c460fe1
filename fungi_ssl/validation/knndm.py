"""k-fold nearest-neighbour distance matching (kNNDM) cross-validation.

kNNDM (Linnenbrink, Milà, Ludwig and Meyer 2024, *kNNDM: k-fold nearest
neighbour distance matching cross-validation for map accuracy estimation*,
Geosci. Model Dev. 17:5897) chooses spatial folds so that cross-validation
sees test samples as far from their training samples as the map's prediction
locations are from the samples. The SPUN 1 km richness maps (Van Nuland et
al. 2025) were validated with it (R² about 0.29, against about 0.63 under
random CV). This is a Python implementation of the algorithm of the R
package CAST's ``knndm`` (geographical space), as a scikit-learn splitter.

Three distributions of nearest-neighbour distances
--------------------------------------------------
``Gij``
    prediction → sample: from every prediction location to its nearest sample.
``Gj``
    sample → sample, leave-one-out: from every sample to its nearest other
    sample (0 for cores that share a coordinate). Random K-fold CV sees about this.
``Gjstar``
    CV test → train: from every sample to its nearest sample in another fold,
    under the chosen folds.

The algorithm
-------------
1. If ``Gj`` is not stochastically smaller than ``Gij`` (a one-sided
   two-sample Kolmogorov–Smirnov test, p ≥ 0.05), the samples are already as
   close to each other as the prediction locations are to them: a random
   K-fold assignment is returned.
2. Otherwise the samples are clustered hierarchically (Ward linkage) or by
   k-means, for numbers of clusters ``q`` from ``n_splits`` to the number of
   sites, about ``n_candidates`` values spaced evenly in log(q).
3. For each ``q``, the clusters are ordered along the first principal
   component of the sample coordinates; clusters holding at least ``N /
   n_splits`` samples each become a fold, the others are dealt in that order
   to the remaining folds in turn. A configuration whose largest fold holds
   more than ``max_fold_fraction`` of the samples is discarded.
4. The configuration whose ``Gjstar`` is closest to ``Gij`` wins: the one with
   the smallest Wasserstein statistic ``W = ∫ |F_Gjstar(d) − F_Gij(d)| dd``,
   the area between the two empirical CDFs, in metres (CAST uses
   ``twosamples::wass_stat``, the same integral).

Differences from CAST, each on purpose
--------------------------------------
* **Sites stay whole.** The units that are clustered and assigned to folds
  are sites (:func:`fungi_ssl.data.sites.site_groups`: samples within
  ``site_distance_m``, 25 m by default, of each other), so cores of one site
  never straddle folds; ``site_distance_m=0`` groups only samples at equal
  coordinates. CAST clusters individual points. ``Gj`` stays per sample, as
  in CAST. The random fallback deals sites, not samples, to folds.
* **Distances.** For lon/lat, ``Gij``, ``Gj`` and the chosen folds'
  ``Gjstar`` and ``W`` are geodesic distances to the nearest point on the
  WGS84 ellipsoid (:func:`fungi_ssl.data.coordinates.nearest_distance_m`); CAST
  uses great-circle distances on a sphere. While searching over candidate
  folds, a faster nearest neighbour (the sphere's, measured on the
  ellipsoid, at most 0.6% longer) scores each candidate. Ward linkage runs on the sites'
  3-D positions on the unit sphere (chord distances, which order pairs as
  great-circle distances do), where CAST runs ``hclust(ward.D2)`` on the
  great-circle distance matrix; Ward's criterion is only defined for
  Euclidean distances, and this keeps it so.
* **Candidates** run up to the number of sites, not the number of points
  minus 2.
* **Empty folds.** When fewer than ``n_splits`` folds come out non-empty
  (CAST then lowers k too), :meth:`KNNDMKFold.get_n_splits` and ``split``
  give only the non-empty ones.

Scoring
-------
kNNDM folds can be of very different sizes, and the distance matching is over
all folds at once. Score the pooled out-of-fold predictions
(``sklearn.model_selection.cross_val_predict`` then one R² over all samples),
as CAST's ``global_validation`` does, rather than averaging per-fold scores.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial import cKDTree
from scipy.stats import ks_2samp
from tqdm import tqdm

from fungi_ssl.data.coordinates import WGS84_GEOD, nearest_distance_m
from fungi_ssl.data.sites import SITE_DISTANCE_M, check_coords, site_groups
from fungi_ssl.validation.cv import SpatialKFold

if TYPE_CHECKING:  # pragma: no cover
    import matplotlib.axes

__all__ = [
    "KNNDMKFold",
    "KNNDMResult",
    "fold_nearest_distances",
    "knndm",
    "plot_knndm_distances",
    "wasserstein_w",
]

CoordinateKind = Literal["lonlat", "metres"]
Clustering = Literal["hierarchical", "kmeans"]

#: Significance level of the Kolmogorov–Smirnov check that decides for random CV (CAST's).
KS_ALPHA = 0.05
#: Nearest neighbours kept per point; farther ones are searched only when these
#: do not settle a point's nearest neighbour in another fold.
_N_NEIGHBOURS = 16
#: The sphere's distance is within 0.6% of the ellipsoid's: points up to 1% farther
#: on the sphere than the sphere's nearest are measured on the ellipsoid (as
#: fungi_ssl.data.coordinates.nearest_distance_m does).
_SPHERE_MARGIN = 1.01


# --------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class KNNDMResult:
    """The folds kNNDM chose and the distance distributions behind them.

    All distances are in metres (geodesic for lon/lat).

    Attributes
    ----------
    folds : numpy.ndarray
        ``(n_samples,)`` test-fold number of every sample, ``0 … n_splits - 1``
        (a fold number may be unused, see ``n_folds``).
    gij : numpy.ndarray
        ``(n_prediction,)`` prediction → nearest sample.
    gj : numpy.ndarray
        ``(n_samples,)`` sample → nearest other sample (leave-one-out).
    gjstar : numpy.ndarray
        ``(n_samples,)`` sample → nearest sample in another fold, for ``folds``.
    w : float
        Wasserstein statistic between ``gjstar`` and ``gij`` (metres).
    n_clusters : int or None
        Number of clusters ``q`` of the chosen configuration; None for random CV.
    random_cv : bool
        True when the Kolmogorov–Smirnov check found no reason for spatial
        folds and the sites were dealt to folds at random.
    ks_pvalue : float
        p-value of the one-sided test that ``gj`` is stochastically smaller
        than ``gij``.
    candidates : pandas.DataFrame
        One row per number of clusters tried: ``q`` (asked for),
        ``n_clusters`` (obtained: a Ward tree with tied merge heights cannot
        always be cut into exactly ``q``), ``max_fold_fraction`` (share of
        the samples in the largest fold) and ``w`` (NaN where the
        configuration was discarded for a too large fold). Empty for random
        CV. Its ``w`` come from the search's fast distances (see
        :class:`_Points`), within 0.6% of the exact ones; the result's ``w``
        and ``gjstar`` are exact.
    n_sites : int
        Number of sites (the units assigned to folds).
    """

    folds: np.ndarray
    gij: np.ndarray
    gj: np.ndarray
    gjstar: np.ndarray
    w: float
    n_clusters: int | None
    random_cv: bool
    ks_pvalue: float
    candidates: pd.DataFrame
    n_sites: int

    @property
    def n_folds(self) -> int:
        """Number of non-empty folds."""
        return len(np.unique(self.folds))


# --------------------------------------------------------------------------
# distances
# --------------------------------------------------------------------------
def wasserstein_w(a: Any, b: Any, a_weights: Any = None, b_weights: Any = None) -> float:
    """Wasserstein statistic: the area between the empirical CDFs of ``a`` and ``b``.

    ``W = ∫ |F_a(x) − F_b(x)| dx``, in the units of the values; kNNDM's
    criterion (CAST's ``twosamples::wass_stat`` with its default power 1).
    Weights count repeated values (e.g. samples sharing a coordinate).

    Examples
    --------
    >>> wasserstein_w([0.0, 1.0], [0.0, 3.0])   # |1 - 1/2| over [1, 3)
    1.0
    >>> wasserstein_w([5.0], [1.0, 2.0, 3.0])   # all of b below a: mean(a) - mean(b)
    3.0
    """
    a = np.asarray(a, dtype=float).ravel()
    b = np.asarray(b, dtype=float).ravel()
    if a.size == 0 or b.size == 0:
        raise ValueError("wasserstein_w: both samples need at least one value")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("wasserstein_w: values must be finite")
    return _SortedSample(b, b_weights).w(a, a_weights)


class _SortedSample:
    """One sample's ECDF, sorted once, to measure W against many others."""

    def __init__(self, values: np.ndarray, weights: Any = None) -> None:
        order = np.argsort(values, kind="stable")
        self.values = values[order]
        w = np.ones(len(values)) if weights is None else np.asarray(weights, float)[order]
        if w.shape != self.values.shape or (w < 0).any() or w.sum() <= 0:
            raise ValueError("wasserstein_w: weights must be ≥ 0, one per value, not all 0")
        self.cdf = np.r_[0.0, np.cumsum(w) / w.sum()]

    def at(self, x: np.ndarray) -> np.ndarray:
        return self.cdf[np.searchsorted(self.values, x, side="right")]

    def w(self, values: np.ndarray, weights: Any = None) -> float:
        other = _SortedSample(values, weights)
        grid = np.concatenate([self.values, other.values])
        grid.sort()
        steps = np.diff(grid)
        return float(np.sum(np.abs(self.at(grid[:-1]) - other.at(grid[:-1])) * steps))


def _unit_sphere(lonlat: np.ndarray) -> np.ndarray:
    """``(n, 3)`` positions on the unit sphere; chord order = great-circle order."""
    lon = np.radians(lonlat[:, 0])
    lat = np.radians(lonlat[:, 1])
    return np.column_stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])


class _Points:
    """Distinct sample locations, with nearest-neighbour searches in their metric.

    For metres everything is Euclidean and exact. For lon/lat there are two
    searches:

    * exact (:meth:`nearest_other`, :func:`_exact_nearest_in_other_fold`):
      the nearest point on the WGS84 ellipsoid, found as
      :func:`fungi_ssl.data.coordinates.nearest_distance_m` finds it (a search on
      the sphere, then every point within ``_SPHERE_MARGIN`` of the sphere's
      nearest measured with :class:`pyproj.Geod`);
    * fast (:meth:`nearest_in_other_fold`, kNNDM's search over candidate
      folds): the sphere's nearest point (by chord length on the unit sphere,
      which orders pairs as great-circle distance does), measured on the
      ellipsoid. Where two points lie within 0.6% of the same distance it may
      return the farther one, so a distance can exceed the exact one by at
      most 0.6%.
    """

    def __init__(self, points: np.ndarray, coordinates: CoordinateKind) -> None:
        self.points = points
        self.lonlat = coordinates == "lonlat"
        self.pos = _unit_sphere(points) if self.lonlat else points
        self.tree = cKDTree(self.pos)
        n = len(points)
        k = min(_N_NEIGHBOURS, n - 1)
        self.complete = k == n - 1  # the lists hold every other point
        chord, idx = self.tree.query(self.pos, k=k + 1)
        chord, idx = np.asarray(chord).reshape(n, k + 1), np.asarray(idx).reshape(n, k + 1)
        # drop each point itself (usually, not always, the first column)
        not_self = idx != np.arange(n)[:, None]
        keep = not_self & (np.cumsum(not_self, axis=1) <= k)
        #: (n, k) nearest other points, nearest first (on the sphere for lon/lat)
        self.neighbours = idx[keep].reshape(n, k)
        self.neighbour_chord = chord[keep].reshape(n, k)
        rows = np.repeat(np.arange(n), k)
        self.neighbour_m = self.measure(rows, self.neighbours.ravel()).reshape(n, k)

    def measure(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Distance in metres between points ``i`` and ``j`` (paired index arrays)."""
        a, b = self.points[i], self.points[j]
        if self.lonlat:  # validated already: pyproj directly, as geodesic_distance_m does
            return np.asarray(WGS84_GEOD.inv(a[:, 0], a[:, 1], b[:, 0], b[:, 1])[2], dtype=float)
        return np.hypot(a[:, 0] - b[:, 0], a[:, 1] - b[:, 1])

    def nearest_other(self) -> np.ndarray:
        """Exact distance from each point to its nearest other point."""
        if not self.lonlat:
            return self.neighbour_m[:, 0].copy()
        # every candidate within the margin of the sphere's nearest is in the list
        arc = 2.0 * np.arcsin(np.minimum(self.neighbour_chord / 2.0, 1.0))
        settled = self.complete | (arc[:, -1] > arc[:, 0] * _SPHERE_MARGIN + 1e-12)
        dist = self.neighbour_m.min(axis=1)
        for i in np.flatnonzero(~settled):  # rare: a crowd at nearly one distance
            others = np.delete(np.arange(len(self.points)), i)
            dist[i] = nearest_distance_m(
                self.points[i : i + 1, 0],
                self.points[i : i + 1, 1],
                self.points[others, 0],
                self.points[others, 1],
            )[0]
        return dist

    def nearest_in_other_fold(self, fold: np.ndarray) -> np.ndarray:
        """Fast distance from each point to its nearest point of another fold (NaN if none)."""
        n = len(fold)
        mask = fold[self.neighbours] != fold[:, None]
        found = mask.any(axis=1)
        dist = np.where(found, self.neighbour_m[np.arange(n), mask.argmax(axis=1)], np.nan)
        missing = np.flatnonzero(~found)  # all listed neighbours share the point's fold
        if len(missing) == 0:
            return dist
        # one tree per fold (cheaper than one per fold over all the other folds)
        best = np.full(len(missing), np.inf)
        best_j = np.zeros(len(missing), dtype=np.int64)
        for f in np.unique(fold):
            members = np.flatnonzero(fold == f)
            ask = fold[missing] != f
            if not ask.any():
                continue
            chord, j = cKDTree(self.pos[members]).query(self.pos[missing[ask]])
            closer = np.asarray(chord) < best[ask]
            rows = np.flatnonzero(ask)[closer]
            best[rows] = np.asarray(chord)[closer]
            best_j[rows] = members[np.asarray(j)[closer]]
        ok = np.isfinite(best)
        dist[missing[ok]] = self.measure(missing[ok], best_j[ok])
        return dist


def _exact_nearest_in_other_fold(
    points: np.ndarray, fold: np.ndarray, coordinates: CoordinateKind
) -> np.ndarray:
    """Exact distance from each point to its nearest point of another fold."""
    dist = np.full(len(points), np.nan)
    for f in np.unique(fold):
        query, ref = fold == f, fold != f
        if not ref.any():
            continue
        if coordinates == "lonlat":
            dist[query] = nearest_distance_m(
                points[query, 0], points[query, 1], points[ref, 0], points[ref, 1]
            )
        else:
            dist[query] = cKDTree(points[ref]).query(points[query])[0]
    return dist


def fold_nearest_distances(
    coords: np.ndarray | pd.DataFrame,
    folds: Any,
    coordinates: CoordinateKind = "lonlat",
) -> np.ndarray:
    """``Gjstar`` of any fold assignment: each sample to its nearest sample in another fold.

    Use it to set random, site-grouped or block folds beside kNNDM's on one
    plot (:func:`plot_knndm_distances`).

    Parameters
    ----------
    coords : array_like of shape (n, 2) or DataFrame
        Sample coordinates (see :func:`fungi_ssl.data.sites.check_coords`).
    folds : array_like of shape (n,)
        Test-fold label of every sample (any hashable labels).
    coordinates : {"lonlat", "metres"}
        What ``coords`` holds.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` distances in metres (geodesic for lon/lat).

    Examples
    --------
    >>> xy = [[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [11.0, 0.0]]
    >>> fold_nearest_distances(xy, [0, 0, 1, 1], coordinates="metres")
    array([10.,  9.,  9., 10.])
    """
    xy = check_coords(coords, coordinates, "coords")
    labels = pd.factorize(pd.Series(np.asarray(folds).ravel()))[0]
    if len(labels) != len(xy):
        raise ValueError(f"folds: {len(labels)} labels for {len(xy)} samples")
    if labels.max() < 1:
        raise ValueError("folds: need at least two folds to measure test → train distances")
    # one point per (location, fold): cores of one location in two folds are 0 m apart
    _, inverse = np.unique(xy, axis=0, return_inverse=True)
    key = inverse.ravel() * (labels.max() + 1) + labels
    _, first, pair = np.unique(key, return_index=True, return_inverse=True)
    return _exact_nearest_in_other_fold(xy[first], labels[first], coordinates)[pair.ravel()]


# --------------------------------------------------------------------------
# the algorithm
# --------------------------------------------------------------------------
def _deal_clusters(sizes: np.ndarray, order_key: np.ndarray, n_splits: int) -> np.ndarray:
    """Fold of each cluster: big ones alone, the rest dealt in turn (CAST's merge)."""
    order = np.argsort(order_key, kind="stable")
    fold = np.full(len(sizes), -1, dtype=np.int64)
    big = order[sizes[order] >= sizes.sum() / n_splits]
    fold[big] = np.arange(len(big))
    rest = order[fold[order] < 0]
    free = np.arange(len(big), n_splits)
    if len(rest):
        fold[rest] = free[np.arange(len(rest)) % len(free)]
    return fold


def _random_site_folds(site_sizes: np.ndarray, n_splits: int, seed: int) -> np.ndarray:
    """Sites in random order, each to the fold with the fewest samples so far."""
    order = np.random.default_rng(seed).permutation(len(site_sizes))
    load = np.zeros(n_splits)
    fold = np.empty(len(site_sizes), dtype=np.int64)
    for s in order:
        k = int(np.argmin(load))
        fold[s] = k
        load[k] += site_sizes[s]
    return fold


def _first_component(pos: np.ndarray, weights: np.ndarray) -> np.ndarray:
    centre = np.average(pos, axis=0, weights=weights)
    centred = pos - centre
    cov = (centred * weights[:, None]).T @ centred
    _, vecs = np.linalg.eigh(cov)
    return vecs[:, -1]


def _candidate_counts(n_splits: int, n_sites: int, n_candidates: int) -> np.ndarray:
    grid = np.exp(np.linspace(np.log(n_splits), np.log(n_sites), n_candidates))
    return np.unique(np.clip(np.round(grid).astype(np.int64), n_splits, n_sites))


def knndm(
    coords: np.ndarray | pd.DataFrame,
    prediction_points: np.ndarray | pd.DataFrame,
    n_splits: int = 10,
    coordinates: CoordinateKind = "lonlat",
    clustering: Clustering = "hierarchical",
    max_fold_fraction: float = 0.5,
    n_candidates: int = 100,
    site_distance_m: float = SITE_DISTANCE_M,
    seed: int = 0,
    progress: bool = False,
) -> KNNDMResult:
    """Choose kNNDM folds for samples and the locations a map will predict.

    See the module docstring for the algorithm and where it differs from CAST.

    Parameters
    ----------
    coords : array_like of shape (n, 2) or DataFrame
        Sample coordinates: lon/lat degrees (a DataFrame with ``longitude``,
        ``latitude``) or, with ``coordinates="metres"``, planar x/y.
    prediction_points : array_like of shape (m, 2) or DataFrame
        Where the map predicts (e.g. pixel centres of the map, or a regular
        sample of them), in the same units.
    n_splits : int
        Number of folds ``k`` (CAST's default, 10).
    coordinates : {"lonlat", "metres"}
        What ``coords`` and ``prediction_points`` hold.
    clustering : {"hierarchical", "kmeans"}
        Ward linkage (one tree, cut at every candidate ``q``: fast) or
        k-means per ``q`` (seeded by ``seed``; slower for large ``q``).
    max_fold_fraction : float
        Largest share of the samples one fold may hold (CAST's ``maxp``),
        strictly between ``1 / n_splits`` and 1.
    n_candidates : int
        Numbers of clusters to try (CAST's ``nk_len``), log-spaced.
    site_distance_m : float
        Samples within this distance (metres, single linkage) form one site,
        and a site is never split between folds. 0 keeps only samples at
        equal coordinates together.
    seed : int
        Seed of the random fallback and of k-means.
    progress : bool
        Show a progress bar over the candidates.

    Returns
    -------
    KNNDMResult

    Raises
    ------
    ValueError
        Bad coordinates (naming ``coords`` or ``prediction_points``), fewer
        sites than ``n_splits``, or a parameter out of range.

    Examples
    --------
    Four samples in two pairs, 10 m apart; the map predicts 9–14 m from the
    nearest sample, so kNNDM keeps each pair in one fold:

    >>> xy = [[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [11.0, 0.0]]
    >>> res = knndm(xy, [[20.0, 0.0], [21.0, 0.0], [25.0, 0.0]], n_splits=2,
    ...             coordinates="metres", max_fold_fraction=0.6, site_distance_m=0)
    >>> res.folds.tolist(), res.gjstar.tolist(), round(res.w, 3)
    ([0, 0, 1, 1], [10.0, 9.0, 9.0, 10.0], 1.5)
    """
    if not isinstance(n_splits, (int, np.integer)) or n_splits < 2:
        raise ValueError(f"n_splits must be an integer ≥ 2, got {n_splits!r}")
    if clustering not in ("hierarchical", "kmeans"):
        raise ValueError(f"clustering must be 'hierarchical' or 'kmeans', got {clustering!r}")
    if not (1.0 / n_splits < max_fold_fraction < 1.0):
        raise ValueError(
            f"max_fold_fraction must lie strictly between 1/n_splits = {1 / n_splits:.3g} "
            f"and 1, got {max_fold_fraction!r}"
        )
    if not isinstance(n_candidates, (int, np.integer)) or n_candidates < 1:
        raise ValueError(f"n_candidates must be an integer ≥ 1, got {n_candidates!r}")
    if not (np.isfinite(site_distance_m) and site_distance_m >= 0):
        raise ValueError(f"site_distance_m must be a distance ≥ 0 in metres, got {site_distance_m}")
    xy = check_coords(coords, coordinates, "coords")
    pred = check_coords(prediction_points, coordinates, "prediction_points")
    n = len(xy)

    # distinct locations (a site holds one or more) and sites (the fold units)
    points, inverse = np.unique(xy, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    counts = np.bincount(inverse).astype(float)
    sites = site_groups(xy, site_distance_m, coordinates)
    point_site = np.empty(len(points), dtype=np.int64)
    point_site[inverse] = sites
    n_sites = int(sites.max()) + 1
    if n_sites < n_splits:
        raise ValueError(
            f"n_splits={n_splits} is more than the {n_sites} sites (samples within "
            f"{site_distance_m:g} m joined) in coords; lower n_splits"
        )
    site_size = np.bincount(sites, minlength=n_sites).astype(float)

    geo = _Points(points, coordinates)
    if coordinates == "lonlat":
        gij = nearest_distance_m(pred[:, 0], pred[:, 1], points[:, 0], points[:, 1])
    else:
        gij = np.asarray(geo.tree.query(pred)[0], dtype=float)
    gj_point = np.where(counts > 1, 0.0, geo.nearest_other())
    gj = gj_point[inverse]
    method = "exact" if len(gj) * len(gij) <= 10_000 else "asymp"
    ks_p = float(ks_2samp(gj, gij, alternative="greater", method=method).pvalue)

    gij_ecdf = _SortedSample(gij)

    def score(point_fold: np.ndarray) -> float:  # the search: fast distances
        return gij_ecdf.w(geo.nearest_in_other_fold(point_fold), counts)

    def exact(point_fold: np.ndarray) -> tuple[np.ndarray, float]:  # the result: exact
        gjstar_point = _exact_nearest_in_other_fold(points, point_fold, coordinates)
        return gjstar_point, gij_ecdf.w(gjstar_point, counts)

    if ks_p >= KS_ALPHA:
        site_fold = _random_site_folds(site_size, n_splits, seed)
        gjstar_point, w = exact(site_fold[point_site])
        return KNNDMResult(
            folds=site_fold[sites],
            gij=gij,
            gj=gj,
            gjstar=gjstar_point[inverse],
            w=w,
            n_clusters=None,
            random_cv=True,
            ks_pvalue=ks_p,
            candidates=pd.DataFrame(columns=["q", "n_clusters", "max_fold_fraction", "w"]),
            n_sites=n_sites,
        )

    # site positions: sample-weighted centres (3-D on the unit sphere for lon/lat)
    site_pos = (
        np.column_stack(
            [
                np.bincount(point_site, weights=geo.pos[:, d] * counts)
                for d in range(geo.pos.shape[1])
            ]
        )
        / site_size[:, None]
    )
    axis = _first_component(geo.pos, counts)
    tree = linkage(site_pos, method="ward") if clustering == "hierarchical" else None

    rows = []
    seen: dict[bytes, float] = {}
    best: tuple[float, int, np.ndarray, np.ndarray] | None = None
    counts_grid = _candidate_counts(n_splits, n_sites, n_candidates)
    for q in tqdm(counts_grid, desc="kNNDM candidates", disable=not progress):
        if tree is not None:
            cluster = fcluster(tree, t=int(q), criterion="maxclust") - 1
        else:
            from sklearn.cluster import KMeans

            cluster = (
                KMeans(n_clusters=int(q), n_init=1, random_state=seed)
                .fit(site_pos, sample_weight=site_size)
                .labels_
            )
        n_clusters = int(cluster.max()) + 1
        size = np.bincount(cluster, weights=site_size, minlength=n_clusters)
        centre = (
            np.column_stack(
                [
                    np.bincount(cluster, weights=site_pos[:, d] * site_size, minlength=n_clusters)
                    for d in range(site_pos.shape[1])
                ]
            )
            / np.maximum(size, 1.0)[:, None]
        )
        site_fold = _deal_clusters(size, centre @ axis, n_splits)[cluster]
        largest = float(np.bincount(site_fold, weights=site_size).max() / n)
        if largest > max_fold_fraction:
            rows.append((int(q), n_clusters, largest, np.nan))
            continue
        point_fold = site_fold[point_site]
        seen_key = hashlib.sha1(site_fold.tobytes()).digest()
        if seen_key not in seen:  # neighbouring q often give the same folds
            seen[seen_key] = score(point_fold)
        w = seen[seen_key]
        rows.append((int(q), n_clusters, largest, w))
        if best is None or w < best[0]:
            best = (w, n_clusters, site_fold, point_fold)
    candidates = pd.DataFrame(rows, columns=["q", "n_clusters", "max_fold_fraction", "w"])
    if best is None:
        raise ValueError(
            f"kNNDM: every configuration put more than max_fold_fraction="
            f"{max_fold_fraction:g} of the samples in one fold; raise max_fold_fraction "
            "or lower n_splits"
        )
    _, n_clusters, site_fold, point_fold = best
    gjstar_point, w = exact(point_fold)
    return KNNDMResult(
        folds=site_fold[sites],
        gij=gij,
        gj=gj,
        gjstar=gjstar_point[inverse],
        w=float(w),
        n_clusters=n_clusters,
        random_cv=False,
        ks_pvalue=ks_p,
        candidates=candidates,
        n_sites=n_sites,
    )


# --------------------------------------------------------------------------
# the splitter
# --------------------------------------------------------------------------
class KNNDMKFold(SpatialKFold):
    """kNNDM cross-validation as a scikit-learn splitter.

    Folds are chosen by :func:`knndm` the first time ``split`` (or
    :meth:`fit`) sees the sample coordinates, and reused while they stay the
    same. Afterwards ``result_`` holds the folds and the three distance
    distributions (``gij_``, ``gj_``, ``gjstar_``, in metres) and ``w_``;
    :func:`plot_knndm_distances` draws them.

    Sample coordinates come at construction (``coords=``) or as ``groups`` to
    ``split``, as for every :class:`fungi_ssl.validation.cv.SpatialKFold`.

    Parameters
    ----------
    prediction_points : array_like of shape (m, 2) or DataFrame
        Where the map predicts, in the units of ``coordinates``.
    n_splits, clustering, max_fold_fraction, n_candidates, site_distance_m, seed
        As in :func:`knndm`.
    coords : array_like of shape (n, 2) or DataFrame, optional
        Sample coordinates.
    coordinates : {"lonlat", "metres"}
        What the coordinates hold.

    Examples
    --------
    Two groups of sites 700 km apart, and a map that predicts 700–800 km away
    from the nearest sample: kNNDM makes each group one fold.

    >>> rng = np.random.default_rng(0)
    >>> west = np.column_stack([rng.uniform(0, 0.5, 40), rng.uniform(50, 50.5, 40)])
    >>> east = west + [10.0, 0.0]
    >>> pred = np.column_stack([rng.uniform(3, 7, 200), rng.uniform(56.3, 57, 200)])
    >>> cv = KNNDMKFold(pred, n_splits=2, max_fold_fraction=0.6,
    ...                 coords=np.vstack([west, east]))
    >>> [len(test) for _, test in cv.split()]
    [40, 40]
    >>> cv.n_clusters_, bool(cv.gjstar_.min() > 600_000)
    (2, True)
    """

    def __init__(
        self,
        prediction_points: np.ndarray | pd.DataFrame,
        n_splits: int = 10,
        clustering: Clustering = "hierarchical",
        max_fold_fraction: float = 0.5,
        n_candidates: int = 100,
        site_distance_m: float = SITE_DISTANCE_M,
        seed: int = 0,
        coords: np.ndarray | pd.DataFrame | None = None,
        coordinates: CoordinateKind = "lonlat",
    ) -> None:
        if not isinstance(n_splits, (int, np.integer)) or n_splits < 2:
            raise ValueError(f"n_splits must be an integer ≥ 2, got {n_splits!r}")
        if clustering not in ("hierarchical", "kmeans"):
            raise ValueError(f"clustering must be 'hierarchical' or 'kmeans', got {clustering!r}")
        if not (1.0 / n_splits < max_fold_fraction < 1.0):
            raise ValueError(
                f"max_fold_fraction must lie strictly between 1/n_splits = {1 / n_splits:.3g} "
                f"and 1, got {max_fold_fraction!r}"
            )
        if coordinates not in ("lonlat", "metres"):
            raise ValueError(f"coordinates must be 'lonlat' or 'metres', got {coordinates!r}")
        self.prediction_points = prediction_points
        self._pred = check_coords(prediction_points, coordinates, "prediction_points")
        self.n_splits = int(n_splits)
        self.clustering = clustering
        self.max_fold_fraction = float(max_fold_fraction)
        self.n_candidates = int(n_candidates)
        self.site_distance_m = float(site_distance_m)
        self.seed = int(seed)
        self._fitted: tuple[str, KNNDMResult] | None = None
        self._set_coords(coords, coordinates)

    # -- fitting ---------------------------------------------------------
    def _result(self, coords: np.ndarray) -> KNNDMResult:
        key = hashlib.sha1(np.ascontiguousarray(coords).tobytes()).hexdigest()
        if self._fitted is None or self._fitted[0] != key:
            result = knndm(
                coords,
                self._pred,
                n_splits=self.n_splits,
                coordinates=self.coordinates,
                clustering=self.clustering,
                max_fold_fraction=self.max_fold_fraction,
                n_candidates=self.n_candidates,
                site_distance_m=self.site_distance_m,
                seed=self.seed,
            )
            self._fitted = (key, result)
        return self._fitted[1]

    def fit(self, X=None, y=None, groups=None) -> KNNDMKFold:
        """Choose the folds now (``split`` would on first use); returns self."""
        self._result(self.sample_coords(X, groups))
        return self

    @property
    def result_(self) -> KNNDMResult:
        """The last :class:`KNNDMResult` (after :meth:`fit` or ``split``)."""
        if self._fitted is None:
            raise AttributeError(
                "KNNDMKFold has not chosen its folds yet: call fit() or split() first"
            )
        return self._fitted[1]

    @property
    def gij_(self) -> np.ndarray:
        """Prediction → nearest sample distances (metres)."""
        return self.result_.gij

    @property
    def gj_(self) -> np.ndarray:
        """Sample → nearest other sample distances, leave-one-out (metres)."""
        return self.result_.gj

    @property
    def gjstar_(self) -> np.ndarray:
        """Sample → nearest sample of another fold, under the chosen folds (metres)."""
        return self.result_.gjstar

    @property
    def w_(self) -> float:
        """Wasserstein statistic between ``gjstar_`` and ``gij_`` (metres)."""
        return self.result_.w

    @property
    def n_clusters_(self) -> int | None:
        """Number of clusters of the chosen configuration (None: random CV)."""
        return self.result_.n_clusters

    # -- SpatialKFold hooks ---------------------------------------------------
    def _folds(self, xy: np.ndarray) -> np.ndarray:
        folds = self._result(xy).folds
        # renumber to 0 … n_folds - 1 so every fold number has test samples
        return np.unique(folds, return_inverse=True)[1].ravel()

    def _split_coords(self, xy: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        folds = self._folds(xy)
        idx = np.arange(len(xy))
        for k in range(int(folds.max()) + 1):
            yield idx[folds != k], idx[folds == k]

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        """Number of non-empty folds once the coordinates are known, else ``n_splits``."""
        if self._xy is None and groups is None:
            return self.n_splits
        return self._result(self.sample_coords(X, groups)).n_folds

    def __repr__(self) -> str:
        coords = "None" if self._xy is None else f"<{len(self._xy)} points>"
        return (
            f"KNNDMKFold(prediction_points=<{len(self._pred)} points>, n_splits={self.n_splits}, "
            f"clustering={self.clustering!r}, max_fold_fraction={self.max_fold_fraction}, "
            f"n_candidates={self.n_candidates}, site_distance_m={self.site_distance_m}, "
            f"seed={self.seed}, coords={coords}, coordinates={self.coordinates!r})"
        )


# --------------------------------------------------------------------------
# figure
# --------------------------------------------------------------------------
def plot_knndm_distances(
    result: KNNDMResult | KNNDMKFold,
    ax: matplotlib.axes.Axes | None = None,
    others: Mapping[str, Any] | None = None,
    log: bool = False,
) -> matplotlib.axes.Axes:
    """ECDFs of the nearest-neighbour distances, kNNDM's diagnostic, on one Axes.

    Draws ``Gij`` (prediction → sample), ``Gj`` (sample → sample,
    leave-one-out) and ``Gjstar`` (CV test → train under kNNDM's folds), in
    km, and any further CV schemes' test → train distances
    (:func:`fold_nearest_distances`). kNNDM is working when its ``Gjstar``
    follows ``Gij``.

    Parameters
    ----------
    result : KNNDMResult or fitted KNNDMKFold
    ax : matplotlib Axes, optional
        Where to draw; a new figure otherwise.
    others : mapping of str to array_like, optional
        Label to test → train distances (metres) of other CV schemes.
    log : bool
        Symmetric-log distance axis (linear below 1 km), for distances that
        span metres to thousands of kilometres.

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> xy = [[0.0, 0.0], [1000.0, 0.0], [10_000.0, 0.0], [11_000.0, 0.0]]
    >>> res = knndm(xy, [[20_000.0, 0.0], [21_000.0, 0.0], [25_000.0, 0.0]], n_splits=2,
    ...             coordinates="metres", max_fold_fraction=0.6, site_distance_m=0)
    >>> ax = plot_knndm_distances(res)
    >>> [line.get_label() for line in ax.get_lines()][:3]
    ['prediction → sample (Gij)', 'sample → sample, leave-one-out (Gj)', 'kNNDM CV test → train (Gj*)']
    """
    import matplotlib.pyplot as plt

    res = result.result_ if isinstance(result, KNNDMKFold) else result
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4.0), layout="constrained")
    kind = "random CV (kNNDM fallback)" if res.random_cv else "kNNDM CV"
    curves: list[tuple[str, np.ndarray, dict[str, Any]]] = [
        ("prediction → sample (Gij)", res.gij, {"color": "black", "linewidth": 2.0}),
        ("sample → sample, leave-one-out (Gj)", res.gj, {"linestyle": "--"}),
        (f"{kind} test → train (Gj*)", res.gjstar, {}),
    ]
    for label, values in (others or {}).items():
        curves.append((f"{label} test → train", np.asarray(values, dtype=float), {}))
    for label, values, style in curves:
        x = np.sort(np.asarray(values, dtype=float).ravel()) / 1000.0
        y = np.arange(1, len(x) + 1) / len(x)
        ax.step(np.r_[0.0, x], np.r_[0.0, y], where="post", label=label, **style)
    if log:
        ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("distance to the nearest sample (km)")
    ax.set_ylabel("cumulative share")
    ax.set_ylim(0, 1.02)
    q = "random" if res.random_cv else f"{res.n_clusters} clusters"
    ax.set_title(f"Nearest-neighbour distances: W = {res.w / 1000:.3g} km ({q})")
    ax.legend(loc="lower right", fontsize="small")
    return ax
