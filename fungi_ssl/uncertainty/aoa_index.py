"""A faster dissimilarity index for the area of applicability, with a bound on its verdict.

:class:`fungi_ssl.uncertainty.aoa.AreaOfApplicability` finds each pixel's nearest
training sample exactly, by one matrix product against every distinct
training row; its cost grows with the training set. :class:`PrototypeIndex`
is an inverted-file index: it searches only the training rows of a few
clusters near each pixel, and uses the triangle inequality to know when that
settles the pixel's inside/outside verdict.

How it works, in the AOA's weighted, standardised space:

1. The distinct training rows are clustered by k-means (``n_prototypes``
   clusters, centroids ``c_k``, radius ``R_k``: the largest distance from a
   centroid to its members). Each cluster's *probe list* is the
   ``n_probe`` clusters whose centroids lie nearest its own (itself first).
2. A pixel ``x`` goes to its nearest centroid's cluster; it is compared
   exactly with every training row of that cluster's probe list (one matrix
   product per cluster, for all its pixels at once). The nearest of those
   rows gives ``best``, a true training distance, so an upper bound of the
   nearest distance ``d``. Every row of the other clusters is at least
   ``lower = min_k (|x − c_k| − R_k)`` away (triangle inequality).
3. The verdict is *certain* where ``best`` is within the threshold (inside)
   or ``min(best, lower)`` beyond it (outside); everywhere else it is
   *undecided*. Where ``best ≤ lower`` the DI itself is exact.
4. ``refine=True`` (default) measures the undecided pixels exactly with the
   AOA's own index, so every inside/outside verdict equals the exact one, and
   only DI *values* elsewhere may be approximate (never below the exact
   DI). ``refine=False`` keeps ``best`` for them, and the share of pixels
   whose verdict may differ from the exact one is at most the share
   undecided, which every query reports
   (:attr:`PrototypeIndex.last_undecided_share`). The verdict is always
   ``DI ≤ threshold_`` of the DI returned.

The error bound is therefore stated per map, not assumed: with ``refine``
the verdict differs for no pixel; without, for at most
``last_undecided_share`` of them. The lower bound is computed in float32
and must clear the threshold by a relative margin (:data:`MARGIN`), so
rounding can only make a pixel undecided, never wrongly certain; ``best``
is recomputed in float64.

It has the AOA's ``dissimilarity``, ``predict``, ``threshold_`` and
``feature_names_in_``, so it can stand in for it, e.g. as
``fungi_ssl.uncertainty.bias_maps.uncertainty_maps(..., aoa=PrototypeIndex(aoa))``.
``benchmarks/bench_aoa.py`` measures its speed, its undecided share and the
DI error against the exact index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MARGIN", "PrototypeIndex", "VerdictStats"]

#: Relative margin on both bounds before a verdict counts as certain (float32 rounding).
MARGIN = 1e-3


@dataclass
class VerdictStats:
    """What the last query decided: pixels queried, certain inside/outside, undecided, refined."""

    n: int
    certain_inside: int
    certain_outside: int
    undecided: int
    refined: int

    @property
    def undecided_share(self) -> float:
        return self.undecided / self.n if self.n else 0.0


class PrototypeIndex:
    """Approximate dissimilarity index over a fitted :class:`~fungi_ssl.uncertainty.aoa.AreaOfApplicability`.

    Parameters
    ----------
    aoa : AreaOfApplicability
        Fitted; its scaling, weights, mean distance, threshold and distinct
        training rows are used as they are.
    n_prototypes : int
        k-means clusters (at most the number of distinct training rows).
    n_probe : int
        Clusters searched exactly for each pixel (its own and the nearest
        others to it).
    refine : bool
        Measure undecided pixels exactly (verdict exact) or keep the probed
        distance (verdict differs for at most the undecided share).
    block : int
        Pixels per distance block.
    seed : int
        k-means seed.

    Examples
    --------
    >>> from fungi_ssl.uncertainty.aoa import AreaOfApplicability
    >>> rng = np.random.default_rng(0)
    >>> train = rng.normal(size=(2000, 6))
    >>> aoa = AreaOfApplicability(n_jobs=1).fit(train)
    >>> idx = PrototypeIndex(aoa, n_prototypes=64)
    >>> pixels = rng.normal(size=(3000, 6)) * 1.5
    >>> bool((idx.predict(pixels) == aoa.predict(pixels)).all())     # refine: exact verdict
    True
    >>> bool((idx.dissimilarity(pixels) >= aoa.dissimilarity(pixels) - 1e-9).all())
    True
    """

    def __init__(self, aoa: Any, n_prototypes: int = 256, *, n_probe: int = 8,
                 refine: bool = True, block: int = 4096, seed: int = 0) -> None:
        if not hasattr(aoa, "threshold_"):
            raise ValueError("PrototypeIndex: the AreaOfApplicability is not fitted")
        if int(n_prototypes) < 1 or int(n_probe) < 1:
            raise ValueError(f"n_prototypes and n_probe must be ≥ 1, got {n_prototypes}, {n_probe}")
        from sklearn.cluster import KMeans

        self.aoa, self.refine, self.block = aoa, bool(refine), int(block)
        unique = np.asarray(aoa._index.unique, np.float64)
        k = min(int(n_prototypes), unique.shape[0])
        km = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(unique)
        labels = km.labels_
        used = np.unique(labels)  # k-means may leave a cluster empty
        centres = km.cluster_centers_[used]
        labels = np.searchsorted(used, labels)
        k = len(used)
        self.centres = centres
        self.radius = np.array([np.linalg.norm(unique[labels == c] - centres[c], axis=1).max()
                                for c in range(k)])
        self.n_prototypes = k
        self.n_probe = min(int(n_probe), k)
        cc = ((centres[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
        self.probes = np.argsort(cc, axis=1, kind="stable")[:, : self.n_probe]
        self.unique = unique
        self._members = []
        self._aug = []
        for c in range(k):
            rows = np.flatnonzero(np.isin(labels, self.probes[c]))
            u = unique[rows]
            aug = np.empty((u.shape[1] + 1, len(rows)), np.float32)
            aug[:-1] = -2.0 * u.T
            aug[-1] = (u**2).sum(axis=1)
            self._members.append(rows)
            self._aug.append(aug)
        self._c32 = np.ascontiguousarray(centres.T, np.float32)
        self._c_sq = (centres**2).sum(axis=1).astype(np.float32)
        # the threshold as a distance in the weighted space
        self.threshold_distance = float(aoa.threshold_) * float(aoa.mean_distance_)
        self.last = VerdictStats(0, 0, 0, 0, 0)

    @property
    def threshold_(self) -> float:
        """The AOA's threshold on the DI (so the index stands in for the AOA in maps)."""
        return float(self.aoa.threshold_)

    @property
    def feature_names_in_(self) -> np.ndarray:
        return self.aoa.feature_names_in_

    @property
    def last_undecided_share(self) -> float:
        """Share of the last query's pixels whose verdict the prototypes could not decide."""
        return self.last.undecided_share

    def _bounds(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``lower`` (rows outside the probed clusters) and ``best`` (nearest probed row)."""
        m = Z.shape[0]
        lower = np.empty(m)
        best = np.empty(m)
        r = self.radius.astype(np.float32)
        for s in range(0, m, self.block):
            z = Z[s : s + self.block]
            q = np.ascontiguousarray(z, np.float32)
            d2 = (q * q).sum(axis=1)[:, None] + self._c_sq[None, :] - 2.0 * (q @ self._c32)
            np.maximum(d2, 0.0, out=d2)
            lo = np.sqrt(d2) - r
            home = d2.argmin(axis=1)
            lo[np.arange(len(z))[:, None], self.probes[home]] = np.inf
            lower[s : s + self.block] = np.maximum(lo.min(axis=1), 0.0)
            qb = np.empty((len(z), q.shape[1] + 1), np.float32)
            qb[:, :-1] = q
            qb[:, -1] = 1.0
            order = np.argsort(home, kind="stable")
            bounds = np.searchsorted(home[order], np.arange(self.n_prototypes + 1))
            out = np.empty(len(z))
            for c in np.unique(home):
                idx = order[bounds[c] : bounds[c + 1]]
                g = qb[idx] @ self._aug[c]
                near = self._members[c][g.argmin(axis=1)]
                diff = z[idx] - self.unique[near]  # again in float64: a true training distance
                out[idx] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
            best[s : s + self.block] = out
        return lower, best

    def _query(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """(DI, verdict) of each row; NaN DI and False where a predictor is missing."""
        aoa = self.aoa
        values = aoa._check_columns(X)
        ok = np.isfinite(values).all(axis=1)
        di = np.full(values.shape[0], np.nan)
        inside = np.zeros(values.shape[0], bool)
        if not ok.any():
            self.last = VerdictStats(0, 0, 0, 0, 0)
            return di, inside
        Z = aoa._scaled(values[ok])
        lower, best = self._bounds(Z)
        tau = self.threshold_distance
        sure_in = best / aoa.mean_distance_ <= aoa.threshold_
        sure_out = ~sure_in & (lower > tau * (1 + MARGIN))
        undecided = ~(sure_in | sure_out)
        dist = best.copy()
        refined = 0
        if self.refine and undecided.any():
            dist[undecided] = aoa._index.query(Z[undecided])
            refined = int(undecided.sum())
        with np.errstate(invalid="ignore"):
            v = dist / aoa.mean_distance_ <= aoa.threshold_  # as the exact index decides
        v[sure_in] = True
        v[sure_out] = False
        di[ok] = dist / aoa.mean_distance_
        inside[ok] = v
        self.last = VerdictStats(int(ok.sum()), int(sure_in.sum()), int(sure_out.sum()),
                                 int(undecided.sum()), refined)
        return di, inside

    def dissimilarity(self, X: Any) -> np.ndarray:
        """DI of each row: exact where refined, else the nearest probed row's (≥ exact)."""
        return self._query(X)[0]

    def predict(self, X: Any) -> np.ndarray:
        """The AOA mask (True inside); equal to the exact one with ``refine``."""
        return self._query(X)[1]
