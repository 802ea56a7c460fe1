"""The area of applicability (Meyer & Pebesma 2021): the dissimilarity index of new points to the training data.

Part of the bias checks of chapter 07 (:mod:`fungi_ssl.uncertainty.bias` describes
the held-out table and the sign convention): :class:`AreaOfApplicability`,
:func:`importance_weights` (the predictor weights of the index) and
:func:`aoa_errors` (errors inside and outside the area).
"""


from __future__ import annotations

import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import pandas as pd
from tqdm import tqdm

from fungi_ssl.uncertainty.errors import _as_vector, _check_pair, _finite

__all__ = [
    "AreaOfApplicability",
    "aoa_errors",
    "importance_weights",
]


# --------------------------------------------------------------------------
# area of applicability
# --------------------------------------------------------------------------
class _NearestTraining:
    """Exact nearest-neighbour distances to a fixed point set, by blocked float32 GEMM.

    Identical rows are stored once (cores of a site share their predictors).
    Each block of queries is matched against blocks of training points with
    one matrix product ``[x, 1] · [−2t; |t|²]`` (so ``|x − t|² − |x|²``), the
    arg-min is taken per block, and the distance to the chosen point is then
    recomputed in float64. The choice is exact except between points whose
    squared distances differ by less than float32 rounding (~1e-7 relative),
    where either is as near to that precision. Blocks run on ``n_jobs``
    threads, each with one BLAS thread.

    Why not scikit-learn's ``KDTree`` or ``NearestNeighbors``: in ~32
    weighted dimensions a KD- or ball tree prunes little. Measured by
    ``benchmarks/bench_aoa.py`` (10,000 distinct training rows, 32
    predictors): ``KDTree`` about 18,000 points per CPU-second, brute-force
    ``NearestNeighbors`` about 27,000, this about 75,000 (130,000 when the
    rows are the simulated study's ~2.2 cores per site), with DI equal to
    scikit-learn's to 1e-13.
    """

    def __init__(
        self,
        points: np.ndarray,
        n_jobs: int = 2,
        query_block: int = 512,
        train_block: int = 2048,
        algorithm: str = "gemm",
    ) -> None:
        if algorithm not in ("gemm", "brute", "kd_tree", "ball_tree"):
            raise ValueError(
                f"algorithm must be 'gemm' or a scikit-learn NearestNeighbors algorithm "
                f"('brute', 'kd_tree', 'ball_tree'), got {algorithm!r}"
            )
        self.algorithm = algorithm
        pts = np.ascontiguousarray(points, dtype=np.float64)
        self.unique, self.inverse, self.counts = np.unique(
            pts, axis=0, return_inverse=True, return_counts=True
        )
        self.inverse = self.inverse.ravel()
        u, d = self.unique.shape
        aug = np.empty((d + 1, u), dtype=np.float32)
        aug[:d] = -2.0 * self.unique.T
        aug[d] = (self.unique**2).sum(axis=1)
        self.aug = aug
        self.n_jobs = max(1, int(n_jobs))
        self.query_block = int(query_block)
        self.train_block = int(train_block)
        self._sk = None
        if algorithm != "gemm" and u:
            from sklearn.neighbors import NearestNeighbors

            self._sk = NearestNeighbors(algorithm=algorithm, n_jobs=self.n_jobs).fit(self.unique)

    def _block_sklearn(self, Q: np.ndarray, exclude: np.ndarray | None) -> np.ndarray:
        if exclude is None:
            return self._sk.kneighbors(Q, n_neighbors=1)[0][:, 0]
        dist, idx = self._sk.kneighbors(Q, n_neighbors=2)
        first_is_self = idx[:, 0] == exclude
        return np.where(first_is_self, dist[:, 1], dist[:, 0])

    def _block(self, Q: np.ndarray, exclude: np.ndarray | None) -> np.ndarray:
        if self._sk is not None:
            return self._block_sklearn(Q, exclude)
        k, d = Q.shape
        xb = np.empty((k, d + 1), dtype=np.float32)
        xb[:, :d] = Q
        xb[:, d] = 1.0
        u = self.aug.shape[1]
        best = np.full(k, np.inf, dtype=np.float32)
        arg = np.zeros(k, dtype=np.int64)
        rows = np.arange(k)
        for j in range(0, u, self.train_block):
            g = xb @ self.aug[:, j : j + self.train_block]
            if exclude is not None:
                hit = (exclude >= j) & (exclude < j + g.shape[1])
                g[rows[hit], exclude[hit] - j] = np.inf
            a = g.argmin(axis=1)
            v = g[rows, a]
            better = v < best
            best[better] = v[better]
            arg[better] = a[better] + j
        diff = Q - self.unique[arg]
        return np.sqrt(np.einsum("ij,ij->i", diff, diff))

    def query(
        self, Q: np.ndarray, exclude: np.ndarray | None = None, progress: bool = False
    ) -> np.ndarray:
        """Distance from each row of ``Q`` (float64, finite) to the nearest stored point.

        ``exclude[i]`` (a unique-point index, or −1) is never chosen for row ``i``.
        """
        from threadpoolctl import threadpool_limits

        m = Q.shape[0]
        out = np.empty(m, dtype=np.float64)
        if m == 0:
            return out
        if self.aug.shape[1] == 0:
            raise ValueError("no training points to measure distances to")
        starts = list(range(0, m, self.query_block))

        def work(s: int) -> None:
            e = None if exclude is None else exclude[s : s + self.query_block]
            out[s : s + self.query_block] = self._block(Q[s : s + self.query_block], e)

        bar = tqdm(total=m, desc="dissimilarity index", disable=not progress, unit="px")
        with threadpool_limits(limits=1):
            if self.n_jobs == 1 or len(starts) == 1:
                for s in starts:
                    work(s)
                    bar.update(min(self.query_block, m - s))
            else:
                with ThreadPoolExecutor(self.n_jobs) as ex:
                    for s, _ in zip(starts, ex.map(work, starts), strict=True):
                        bar.update(min(self.query_block, m - s))
        bar.close()
        return out


def _mean_pairwise_distance(unique: np.ndarray, counts: np.ndarray, block: int = 1024) -> float:
    """Mean Euclidean distance over all ordered pairs i ≠ j of the (multi)set of rows."""
    n = int(counts.sum())
    if n < 2:
        raise ValueError("need at least 2 training samples for a mean distance")
    sq = (unique**2).sum(axis=1)
    c = counts.astype(np.float64)
    total = 0.0
    for s in range(0, unique.shape[0], block):
        a = unique[s : s + block]
        d2 = sq[s : s + block, None] + sq[None, :] - 2.0 * (a @ unique.T)
        np.maximum(d2, 0.0, out=d2)
        # identical rows are 0 apart: zero the diagonal exactly (rounding)
        idx = np.arange(a.shape[0])
        d2[idx, s + idx] = 0.0
        total += float(c[s : s + block] @ np.sqrt(d2) @ c)
    return total / (n * (n - 1))


def _aoa_threshold(train_di: np.ndarray) -> float:
    """CAST's threshold: Q3 + 1.5·IQR of the training DI (R's type-7 quantiles), at most its max."""
    di = train_di[np.isfinite(train_di)]
    if di.size == 0:
        raise ValueError("no finite training DI: every sample lacks a cross-validation fold")
    q1, q3 = np.percentile(di, [25, 75])
    return float(min(q3 + 1.5 * (q3 - q1), di.max()))


class AreaOfApplicability:
    """Dissimilarity index and area of applicability (Meyer & Pebesma 2021, CAST's ``aoa``).

    Fitting on the training predictors:

    1. every predictor is standardised with the training mean and SD (ddof 1,
       as R's ``scale``) and multiplied by its weight (the model's importance;
       negative weights become 0, all-zero weights are an error);
    2. ``mean_distance_`` is the mean distance between training samples, over
       all ordered pairs ``i ≠ j`` (samples that share a site, hence their
       predictors, count as pairs at distance 0, as in CAST);
    3. each training sample's DI is its distance to the nearest sample of the
       training part of the cross-validation fold that tests it, divided by
       ``mean_distance_`` (without folds: to the nearest *other* sample);
    4. ``threshold_`` is the outlier-removed maximum of that training DI:
       ``Q3 + 1.5·IQR`` (type-7 quantiles), capped at the largest training DI.

    A new point's DI is its distance to the nearest training sample (all of
    them) divided by ``mean_distance_``; it is inside the area of
    applicability when ``DI ≤ threshold_``.

    **Folds matter.** With random folds, cores of one site sit on both sides
    of a fold, their DI is 0, and the threshold becomes as tight as the
    within-site spread allows; pass the folds the model was validated with
    (spatial blocks or site groups), as CAST takes them from the model.

    Nearest neighbours come from a blocked-GEMM search (exact, see
    :class:`_NearestTraining` for why not a KD-tree), not from a loop over
    training samples: ``benchmarks/bench_aoa.py`` measures its throughput.

    Parameters
    ----------
    n_jobs : int
        Threads of the nearest-neighbour search.
    algorithm : {"gemm", "brute", "kd_tree", "ball_tree"}
        ``"gemm"`` (default): the blocked float32 matrix-product search, the
        fastest measured here; the others use scikit-learn's
        ``NearestNeighbors`` with that algorithm (same DI, slower in ~32
        dimensions; for checks and low-dimensional predictors).

    Attributes
    ----------
    feature_names_in_ : numpy.ndarray
    center_, scale_, weights_ : numpy.ndarray
    mean_distance_ : float
    train_di_ : numpy.ndarray
        DI of each training sample (NaN if no fold tests it).
    threshold_ : float

    Examples
    --------
    >>> train = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0, 4.0, 20.0]})
    >>> aoa = AreaOfApplicability().fit(train, folds=np.arange(6))   # leave-one-out
    >>> round(aoa.threshold_, 4)                                      # 1 / (22/3)
    0.1364
    >>> aoa.predict(pd.DataFrame({"a": [4.5, 10.0]})).tolist()
    [True, False]
    """

    def __init__(self, n_jobs: int = 2, algorithm: str = "gemm") -> None:
        self.n_jobs = int(n_jobs)
        self.algorithm = algorithm

    # -- helpers ---------------------------------------------------------
    @staticmethod
    def _names_and_values(X: Any, what: str) -> tuple[np.ndarray | None, np.ndarray]:
        if isinstance(X, pd.DataFrame):
            nonnum = [c for c in X.columns if not pd.api.types.is_numeric_dtype(X[c])]
            if nonnum:
                raise ValueError(f"{what}: predictor columns must be numeric; not: {nonnum[:5]}")
            return np.asarray([str(c) for c in X.columns], dtype=object), X.to_numpy(float)
        arr = np.asarray(X, dtype=float)
        if arr.ndim != 2:
            raise ValueError(
                f"{what}: expected a 2-D table (samples × predictors), got {arr.shape}"
            )
        return None, arr

    def _weights(self, weights: Any, names: np.ndarray) -> np.ndarray:
        d = names.size
        if weights is None:
            return np.ones(d)
        if isinstance(weights, (Mapping, pd.Series)):
            w = pd.Series(weights, dtype=float) if isinstance(weights, Mapping) else weights
            w.index = [str(i) for i in w.index]
            missing = [c for c in names if c not in w.index]
            if missing:
                raise ValueError(f"weights: no weight for predictors {missing[:8]}")
            arr = w.loc[list(names)].to_numpy(dtype=float)
        else:
            arr = _as_vector(weights, "weights")
            if arr.size != d:
                raise ValueError(f"weights: {arr.size} weights for {d} predictors")
        _finite(arr, "weights")
        if (arr < 0).any():
            warnings.warn(
                f"weights: {int((arr < 0).sum())} negative weight(s) set to 0 (as CAST does)",
                stacklevel=3,
            )
            arr = np.where(arr < 0, 0.0, arr)
        if not (arr > 0).any():
            raise ValueError("weights: all weights are ≤ 0, so no predictor would count")
        return arr

    def _scaled(self, values: np.ndarray) -> np.ndarray:
        return (values - self.center_) * (self.weights_ / self.scale_)

    def _check_columns(self, X: Any) -> np.ndarray:
        if not hasattr(self, "threshold_"):
            raise ValueError("AreaOfApplicability is not fitted; call fit(X_train) first")
        names, values = self._names_and_values(X, "X")
        trained = list(self.feature_names_in_)
        if names is not None:
            if list(names) != trained:
                missing = [c for c in trained if c not in set(names)]
                extra = [c for c in names if c not in set(trained)]
                if missing or extra:
                    raise ValueError(
                        "X: the area of applicability was trained on other predictors; "
                        f"missing {missing[:8]}, not trained on {extra[:8]}"
                    )
                values = X[trained].to_numpy(dtype=float)
        elif values.shape[1] != len(trained):
            raise ValueError(
                f"X: {values.shape[1]} columns, but the area of applicability was trained on "
                f"{len(trained)} predictors ({trained[:4]}…); pass a DataFrame with those names"
            )
        return values

    # -- public ------------------------------------------------------------
    def fit(self, X: Any, folds: Any = None, weights: Any = None) -> AreaOfApplicability:
        """Learn scaling, weights, the mean training distance, training DI and threshold.

        Parameters
        ----------
        X : DataFrame or array_like (n, d)
            Training predictors as the model sees them (e.g. the PCA
            components and covariates after the in-fold reduction), finite.
        folds : array_like of n labels, or sequence of (train, test), optional
            Cross-validation folds: a fold label per sample (a negative label
            means never tested), or ``(train_idx, test_idx)`` pairs as a
            splitter's ``split`` yields them (a sample may be tested once).
            None: each sample's DI is the distance to the nearest other sample.
        weights : mapping/Series by name, array_like, or None
            Predictor weights (e.g. :func:`importance_weights`); None: all 1.

        Returns
        -------
        AreaOfApplicability
        """
        names, values = self._names_and_values(X, "X")
        n, d = values.shape
        if n < 2:
            raise ValueError(f"X: need at least 2 training samples, got {n}")
        bad = ~np.isfinite(values).all(axis=1)
        if bad.any():
            raise ValueError(
                f"X: {int(bad.sum())} training row(s) with NaN or inf, first at row "
                f"{int(np.flatnonzero(bad)[0])}"
            )
        if names is None:
            names = np.asarray([f"x{i}" for i in range(d)], dtype=object)
        self.feature_names_in_ = names
        self.center_ = values.mean(axis=0)
        self.scale_ = values.std(axis=0, ddof=1)
        flat = self.scale_ == 0
        if flat.any():
            raise ValueError(
                f"X: predictors without variance in the training data: {list(names[flat])[:8]}"
            )
        self.weights_ = self._weights(weights, names)
        Z = self._scaled(values)
        index = _NearestTraining(Z, n_jobs=self.n_jobs, algorithm=self.algorithm)
        self.mean_distance_ = _mean_pairwise_distance(index.unique, index.counts)
        if self.mean_distance_ == 0:
            raise ValueError("X: all training samples are identical in the weighted space")
        self.train_di_ = self._train_di(Z, index, folds) / self.mean_distance_
        self.threshold_ = _aoa_threshold(self.train_di_)
        self._index = index
        return self

    def _train_di(self, Z: np.ndarray, index: _NearestTraining, folds: Any) -> np.ndarray:
        n = Z.shape[0]
        out = np.full(n, np.nan)
        if folds is None:
            # nearest *other* sample: a duplicate row is 0 away; otherwise skip itself
            u = index.inverse
            dup = index.counts[u] > 1
            out[dup] = 0.0
            rest = np.flatnonzero(~dup)
            if rest.size:
                if index.unique.shape[0] < 2:
                    raise ValueError("X: need two distinct training samples")
                out[rest] = index.query(Z[rest], exclude=u[rest])
            return out
        pairs = self._fold_pairs(folds, n)
        tested = np.zeros(n, dtype=np.int64)
        for train, test in pairs:
            tested[test] += 1
        if (tested > 1).any():
            raise ValueError(
                "folds: some samples are tested in more than one fold "
                f"({int((tested > 1).sum())}); give one test fold per sample"
            )
        for train, test in pairs:
            if test.size == 0:
                continue
            if train.size == 0:
                raise ValueError("folds: a fold has no training samples")
            fold_index = _NearestTraining(Z[train], n_jobs=self.n_jobs, algorithm=self.algorithm)
            out[test] = fold_index.query(Z[test])
        return out

    @staticmethod
    def _fold_pairs(folds: Any, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        if isinstance(folds, (list, tuple)) and folds and isinstance(folds[0], (list, tuple)):
            out = []
            for train, test in folds:
                tr, te = np.asarray(train, dtype=np.int64), np.asarray(test, dtype=np.int64)
                for arr in (tr, te):
                    if arr.size and (arr.min() < 0 or arr.max() >= n):
                        raise ValueError(f"folds: indices outside 0 … {n - 1}")
                out.append((tr, te))
            return out
        labels = np.asarray(folds)
        if labels.shape != (n,):
            raise ValueError(
                f"folds: expected a fold label per training sample ({n}) or (train, test) "
                f"pairs, got shape {labels.shape}"
            )
        lab = pd.Series(labels)
        valid = np.array(lab.notna(), dtype=bool)
        if pd.api.types.is_numeric_dtype(lab):
            valid &= lab.fillna(-1).to_numpy(dtype=float) >= 0
        out = []
        for k in pd.unique(labels[valid]):
            test = np.flatnonzero(valid & (labels == k))
            train = np.flatnonzero(~(valid & (labels == k)))
            out.append((train, test))
        return out

    def dissimilarity(self, X: Any, progress: bool = False) -> np.ndarray:
        """The DI of each row of ``X`` (NaN where a predictor is missing).

        Parameters
        ----------
        X : DataFrame with the training columns, or array_like (m, d) in their order
        progress : bool
            A tqdm bar (for maps).

        Returns
        -------
        numpy.ndarray
        """
        values = self._check_columns(X)
        ok = np.isfinite(values).all(axis=1)
        out = np.full(values.shape[0], np.nan)
        if ok.any():
            Z = self._scaled(values[ok] if not ok.all() else values)
            out[ok] = self._index.query(Z, progress=progress) / self.mean_distance_
        return out

    def predict(self, X: Any, progress: bool = False) -> np.ndarray:
        """The mask: True where ``DI ≤ threshold_`` (False where DI is NaN)."""
        di = self.dissimilarity(X, progress=progress)
        with np.errstate(invalid="ignore"):
            return di <= self.threshold_


def importance_weights(model: Any, importance: Literal["gain", "split"] = "gain") -> pd.Series:
    """Predictor weights for :class:`AreaOfApplicability` from a fitted model's importance.

    Parameters
    ----------
    model : fitted estimator
        A LightGBM model (``importance`` type from its booster), any
        estimator with ``feature_importances_``, or a scikit-learn Pipeline
        ending in one (its last step's input names are used).
    importance : {"gain", "split"}
        LightGBM importance type. Gain follows how much each predictor
        reduced the loss, which is what CAST's default (caret's ``varImp``)
        measures for tree models.

    Returns
    -------
    pandas.Series
        Weight per predictor name (non-negative).

    Examples
    --------
    >>> from sklearn.ensemble import RandomForestRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = pd.DataFrame({"a": rng.normal(size=200), "b": rng.normal(size=200)})
    >>> rf = RandomForestRegressor(20, random_state=0).fit(X, X["a"] * 3)
    >>> w = importance_weights(rf)
    >>> bool(w["a"] > 10 * w["b"])
    True
    """
    est = model
    if hasattr(est, "steps"):
        est = est.steps[-1][1]
    booster = getattr(est, "booster_", None)
    if booster is not None:
        if importance not in ("gain", "split"):
            raise ValueError(f"importance must be 'gain' or 'split', got {importance!r}")
        vals = np.asarray(booster.feature_importance(importance_type=importance), dtype=float)
        names = list(booster.feature_name())
        if hasattr(est, "feature_names_in_"):
            names = [str(c) for c in est.feature_names_in_]
    elif hasattr(est, "feature_importances_"):
        vals = np.asarray(est.feature_importances_, dtype=float)
        names = (
            [str(c) for c in est.feature_names_in_]
            if hasattr(est, "feature_names_in_")
            else [f"x{i}" for i in range(vals.size)]
        )
    else:
        raise ValueError(
            f"model: {type(est).__name__} has no feature importances; pass weights yourself"
        )
    return pd.Series(vals, index=names, name="weight")


def aoa_errors(y_true: Any, y_pred: Any, inside: Any) -> dict[str, float | None]:
    """Share inside the area of applicability and RMSE inside and outside it.

    Parameters
    ----------
    y_true, y_pred : array_like
        Truth (e.g. the simulated map's truth layer) and predictions.
    inside : array_like of bool
        The AOA mask for the same pixels or samples.

    Returns
    -------
    dict
        ``aoa_fraction_inside, rmse_inside_aoa, rmse_outside_aoa, n_inside,
        n_outside`` (an RMSE is None where no point falls on that side).

    Examples
    --------
    >>> aoa_errors([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 5.0, 6.0], [True, True, False, False])
    {'aoa_fraction_inside': 0.5, 'rmse_inside_aoa': 0.0, 'rmse_outside_aoa': 2.0, 'n_inside': 2, 'n_outside': 2}
    """
    t, p = _check_pair(y_true, y_pred, min_n=1)
    m = np.asarray(inside)
    if m.shape != t.shape:
        raise ValueError(f"inside: expected {t.size} flags, got shape {m.shape}")
    if m.dtype != bool:
        raise ValueError(f"inside: expected booleans (the AOA mask), got dtype {m.dtype}")
    err2 = (p - t) ** 2

    def rmse(sel: np.ndarray) -> float | None:
        return float(np.sqrt(err2[sel].mean())) if sel.any() else None

    return {
        "aoa_fraction_inside": float(m.mean()),
        "rmse_inside_aoa": rmse(m),
        "rmse_outside_aoa": rmse(~m),
        "n_inside": int(m.sum()),
        "n_outside": int((~m).sum()),
    }
