"""Prediction intervals: split-conformal and CV+ intervals, and their coverage.

Part of the bias checks of chapter 07 (:mod:`fungi_ssl.uncertainty.bias` describes
the held-out table and the sign convention): :class:`ConformalRegressor`,
:class:`AdaptiveConformal` (a locally adaptive interval for a deployed model),
:func:`conformal_holdout`, :func:`interval_coverage` and :func:`coverage_table`,
under random splits and under spatial blocks.
"""


from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from tqdm import tqdm

from fungi_ssl.uncertainty.errors import Scheme, _as_vector, _check_confidence, _check_pair, _finite

__all__ = [
    "DEFAULT_CONFIDENCE",
    "AdaptiveConformal",
    "ConformalRegressor",
    "calibrated_richness",
    "conformal_holdout",
    "conformal_quantile",
    "coverage_table",
    "interval_coverage",
]


#: Nominal level of the book's prediction intervals.
DEFAULT_CONFIDENCE = 0.9
# --------------------------------------------------------------------------
# prediction intervals
# --------------------------------------------------------------------------
def conformal_quantile(scores: Any, confidence: float = DEFAULT_CONFIDENCE) -> float:
    """The split-conformal quantile: the ⌈(n + 1)·confidence⌉-th smallest score.

    With ``n`` calibration scores exchangeable with a new one, the new score
    is at most this value with probability at least ``confidence`` (and less
    than ``confidence + 1/(n + 1)``). When ``⌈(n + 1)·confidence⌉ > n`` the
    quantile is infinite: too few scores for that level.

    Parameters
    ----------
    scores : array_like
        Non-conformity scores, e.g. absolute errors of a calibration set.
    confidence : float
        Level in (0, 1).

    Returns
    -------
    float

    Examples
    --------
    >>> conformal_quantile(np.arange(1.0, 20.0), 0.9)   # k = ceil(20 * 0.9) = 18
    18.0
    >>> conformal_quantile([1.0, 2.0], 0.9)
    inf
    >>> conformal_quantile([1.0, 2.0], 1.5)
    Traceback (most recent call last):
    ...
    ValueError: confidence must lie strictly between 0 and 1 (e.g. 0.9 for a 90% interval), got 1.5
    """
    c = _check_confidence(confidence)
    s = _as_vector(scores, "scores")
    _finite(s, "scores")
    if s.size == 0:
        raise ValueError("scores: no calibration scores")
    k = math.ceil((s.size + 1) * c - 1e-12)
    if k > s.size:
        return math.inf
    return float(np.partition(s, k - 1)[k - 1])


def _take(X: Any, idx: np.ndarray) -> Any:
    return X.iloc[idx] if isinstance(X, (pd.DataFrame, pd.Series)) else np.asarray(X)[idx]


def _hold_out_groups(
    rows: np.ndarray, labels: np.ndarray, share: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``rows`` into (held, rest): whole groups, in seeded random order, until ≥ ``share``."""
    uniq, inverse = np.unique(labels, return_inverse=True)
    if len(uniq) < 2:
        raise ValueError(
            f"only {len(uniq)} group(s) among {len(rows)} rows: cannot hold whole groups out"
        )
    order = np.random.default_rng(seed).permutation(len(uniq))
    sizes = np.bincount(inverse.ravel(), minlength=len(uniq))[order]
    n_groups = int(np.searchsorted(np.cumsum(sizes), share * len(rows)) + 1)
    n_groups = min(max(n_groups, 1), len(uniq) - 1)
    held = np.zeros(len(uniq), bool)
    held[order[:n_groups]] = True
    mask = held[inverse.ravel()]
    return np.sort(rows[mask]), np.sort(rows[~mask])


class _FittedChain:
    """A fitted (transform, model) pair with ``predict``."""

    def __init__(self, transform: Any, model: Any) -> None:
        self.transform = transform
        self.model = model

    def predict(self, X: Any) -> np.ndarray:
        Z = X if self.transform is None else self.transform.transform(X)
        return np.asarray(self.model.predict(Z), dtype=float)


class ConformalRegressor:
    """Prediction intervals by split-conformal or CV+ around the book's model chain.

    The chain is chapter 04's: an in-fold reduction of the SSL patch (PCA,
    :class:`fungi_ssl.predictors.features.PatchReducer`, when ``X`` has ``ssl_``
    columns), then a model of :func:`fungi_ssl.validation.models.make_model` fitted with
    :func:`fungi_ssl.validation.models.fit_model`, LightGBM stopping early on a
    validation part carved, as whole groups, out of its own training rows.
    Scores are absolute errors on the target's scale (log richness), so the
    interval is ``prediction ± q`` in log space: a fixed *ratio* on richness.

    ``method="split"``
        Whole groups (``groups``: site, block or row labels) covering
        ``calibration_size`` of the rows are held out; the model is fitted on
        the rest and ``q`` is :func:`conformal_quantile` of the held-out
        absolute errors. One model; the same ``q`` everywhere, so it also
        serves a map (a width map is then ``expm1(pred + q) − expm1(pred − q)``).
    ``method="cv+"``
        Barber et al.'s CV+: groups are dealt into ``n_splits`` folds, one
        model per fold gives out-of-fold errors ``R_i``, and the interval at
        ``x`` runs from the ⌊α(n+1)⌋-th smallest of ``μ₋ₖ₍ᵢ₎(x) − R_i`` to
        the ⌈(1−α)(n+1)⌉-th smallest of ``μ₋ₖ₍ᵢ₎(x) + R_i``. It uses every row
        for both fitting and calibration and its width varies where the fold
        models disagree, but it needs all ``n_splits`` models and an
        ``(m, n)`` quantile per batch of ``m`` points: for held-out samples,
        not for maps. The point prediction is the mean of the fold models.

    Why not MAPIE: its ``CrossConformalRegressor`` and ``SplitConformalRegressor``
    fit the estimator with one ``fit(X, y, **fit_params)`` per fold. The book's
    LightGBM stops early on a validation part carved out of *each* training
    fold by whole sites; parameters fixed before MAPIE chooses its folds
    cannot name that part, so MAPIE would have to drop early stopping or fit a
    different chain from the one chapters 04 and 06 use. The method itself is
    short, and the tests check it against its guarantee (coverage within
    ±0.03 of nominal on exchangeable data), so an own implementation costs
    less than a dependency whose API changed wholesale at 1.0.

    Exchangeability is what the coverage guarantee rests on. Calibrate the
    way you will be tested: with random calibration rows, a test sample far
    from every training site (spatial blocks, a map away from the samples) is
    not exchangeable with them, and coverage falls short (see
    :func:`conformal_holdout`).

    Parameters
    ----------
    model : {"lightgbm", "xgboost", "rf", "ridge"}
        See :func:`fungi_ssl.validation.models.make_model`.
    method : {"split", "cv+"}
    confidence : float
        Nominal coverage in (0, 1).
    calibration_size : float
        Share of rows held out for calibration (``split``).
    n_splits : int
        Folds of CV+.
    val_size : float
        Share of each fitting part held out (as whole groups) for the early
        stopping of LightGBM and XGBoost (0 for none); other models use every
        fitting row.
    feature_transform : "auto", transformer, factory or None
        In-fold reduction; ``"auto"`` is ``PatchReducer(seed=seed)`` when
        ``X`` has SSL patch columns and nothing otherwise.
    model_params : mapping, optional
        Overrides for :func:`fungi_ssl.validation.models.make_model`.
    seed : int
        Seeds the hold-outs, the folds, the reduction and the models.
    n_jobs : int
        Model threads.

    Attributes
    ----------
    quantile_ : float
        ``q`` of ``split``.
    residuals_ : numpy.ndarray
        Calibration (split) or out-of-fold (CV+) absolute errors.
    n_calibration_ : int

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(3000, 3)); y = X[:, 0] + rng.normal(0, 0.5, 3000)
    >>> cr = ConformalRegressor("ridge", confidence=0.9, seed=0).fit(X[:1000], y[:1000])
    >>> pred, lo, hi = cr.predict_interval(X[1000:])
    >>> cr.n_calibration_, round(interval_coverage(y[1000:], lo, hi), 2)   # nominal 0.9
    (200, 0.89)
    """

    def __init__(
        self,
        model: str = "lightgbm",
        method: Literal["split", "cv+"] = "split",
        confidence: float = DEFAULT_CONFIDENCE,
        calibration_size: float = 0.2,
        n_splits: int = 5,
        val_size: float = 0.1,
        feature_transform: Any = "auto",
        model_params: Mapping[str, Any] | None = None,
        seed: int = 0,
        n_jobs: int = 1,
    ) -> None:
        from fungi_ssl.validation.models import MODEL_NAMES

        if model not in MODEL_NAMES:
            raise ValueError(f"model must be one of {list(MODEL_NAMES)}, got {model!r}")
        if method not in ("split", "cv+"):
            raise ValueError(f"method must be 'split' or 'cv+', got {method!r}")
        self.confidence = _check_confidence(confidence)
        if not 0 < calibration_size < 1:
            raise ValueError(f"calibration_size must lie in (0, 1), got {calibration_size}")
        if int(n_splits) != n_splits or n_splits < 2:
            raise ValueError(f"n_splits must be an integer ≥ 2, got {n_splits!r}")
        if not 0 <= val_size < 1:
            raise ValueError(f"val_size must lie in [0, 1), got {val_size}")
        self.model = model
        self.method = method
        self.calibration_size = float(calibration_size)
        self.n_splits = int(n_splits)
        self.val_size = float(val_size)
        self.feature_transform = feature_transform
        self.model_params = dict(model_params or {})
        self.seed = int(seed)
        self.n_jobs = int(n_jobs)

    # -- fitting -------------------------------------------------------
    def _transform(self, X: Any) -> Any:
        ft = self.feature_transform
        if isinstance(ft, str):
            if ft != "auto":
                raise ValueError(f"feature_transform: unknown {ft!r}; use 'auto' or a transformer")
            cols = X.columns if isinstance(X, pd.DataFrame) else []
            if any(str(c).startswith("ssl_") for c in cols):
                from fungi_ssl.predictors.features import PatchReducer

                return PatchReducer(seed=self.seed)
            return None
        from fungi_ssl.validation.models import _new_transform

        return _new_transform(ft)

    def _fit_chain(
        self, X: Any, y: np.ndarray, rows: np.ndarray, groups: np.ndarray, seed: int
    ) -> _FittedChain:
        from fungi_ssl.validation.models import fit_model, make_model

        val = None
        if self.val_size > 0 and self.model in ("lightgbm", "xgboost"):
            val, rows = _hold_out_groups(rows, groups[rows], self.val_size, seed + 7919)
        tf = self._transform(X)
        X_tr = _take(X, rows)
        if tf is not None:
            X_tr = tf.fit_transform(X_tr, y[rows])
        model = make_model(self.model, seed=seed, n_jobs=self.n_jobs, **self.model_params)
        if val is not None:
            X_va = _take(X, val)
            X_va = X_va if tf is None else tf.transform(X_va)
            fit_model(model, X_tr, y[rows], X_va, y[val])
        else:
            fit_model(model, X_tr, y[rows])
        return _FittedChain(tf, model)

    def fit(self, X: Any, y: Any, groups: Any = None) -> ConformalRegressor:
        """Fit the model(s) and calibrate.

        Parameters
        ----------
        X : array_like or DataFrame
            Predictors (SSL patch columns are reduced in-fold).
        y : array_like
            Target (log richness), finite.
        groups : array_like, optional
            A label per row; calibration rows and CV+ folds take whole groups
            (e.g. ``site_id`` so that no site is on both sides, or spatial
            block labels). Default: every row its own group.

        Returns
        -------
        ConformalRegressor
        """
        yv = _as_vector(y, "y")
        _finite(yv, "y")
        n = yv.size
        if len(X) != n:
            raise ValueError(f"X has {len(X)} rows but y has {n} values")
        g = np.arange(n) if groups is None else np.asarray(groups)
        if g.shape != (n,):
            raise ValueError(f"groups: expected {n} labels, got shape {g.shape}")
        rows = np.arange(n)
        if self.method == "split":
            cal, fit_rows = _hold_out_groups(rows, g, self.calibration_size, self.seed)
            self.models_ = [self._fit_chain(X, yv, fit_rows, g, self.seed)]
            self.residuals_ = np.abs(yv[cal] - self.models_[0].predict(_take(X, cal)))
            self.quantile_ = conformal_quantile(self.residuals_, self.confidence)
            self.n_calibration_ = int(cal.size)
        else:
            uniq, inverse = np.unique(g, return_inverse=True)
            if len(uniq) < self.n_splits:
                raise ValueError(
                    f"groups: {len(uniq)} groups are fewer than n_splits={self.n_splits}"
                )
            perm = np.random.default_rng(self.seed).permutation(len(uniq))
            group_fold = np.empty(len(uniq), dtype=np.int64)
            group_fold[perm] = np.arange(len(uniq)) % self.n_splits
            self.fold_ = group_fold[inverse.ravel()]
            self.models_ = []
            self.residuals_ = np.empty(n)
            for k in range(self.n_splits):
                test = np.flatnonzero(self.fold_ == k)
                train = np.flatnonzero(self.fold_ != k)
                m = self._fit_chain(X, yv, train, g, self.seed + k)
                self.models_.append(m)
                self.residuals_[test] = np.abs(yv[test] - m.predict(_take(X, test)))
            self.n_calibration_ = n
            self.quantile_ = conformal_quantile(self.residuals_, self.confidence)
        return self

    # -- prediction ----------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "models_"):
            raise ValueError("ConformalRegressor is not fitted; call fit(X, y) first")

    def predict(self, X: Any) -> np.ndarray:
        """Point predictions (CV+: mean of the fold models)."""
        self._check_fitted()
        preds = [m.predict(X) for m in self.models_]
        return preds[0] if len(preds) == 1 else np.mean(preds, axis=0)

    def predict_interval(
        self, X: Any, batch_size: int = 512
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Point prediction, lower and upper bound of the interval at each row of ``X``.

        Parameters
        ----------
        X : array_like or DataFrame
            Rows to predict, with the training columns.
        batch_size : int
            Rows per CV+ quantile batch (memory ``batch_size × n`` floats).

        Returns
        -------
        pred, lower, upper : numpy.ndarray
        """
        self._check_fitted()
        if self.method == "split":
            pred = self.models_[0].predict(X)
            return pred, pred - self.quantile_, pred + self.quantile_
        fold_preds = np.column_stack([m.predict(X) for m in self.models_])  # (m, K)
        n = self.residuals_.size
        alpha = 1.0 - self.confidence
        k_lo = math.floor(alpha * (n + 1) + 1e-12)
        k_hi = math.ceil((1 - alpha) * (n + 1) - 1e-12)
        m = fold_preds.shape[0]
        lower = np.full(m, -np.inf)
        upper = np.full(m, np.inf)
        R = self.residuals_
        for s in range(0, m, batch_size):
            mu = fold_preds[s : s + batch_size][:, self.fold_]  # (b, n)
            if k_lo >= 1:
                lower[s : s + batch_size] = np.partition(mu - R, k_lo - 1, axis=1)[:, k_lo - 1]
            if k_hi <= n:
                upper[s : s + batch_size] = np.partition(mu + R, k_hi - 1, axis=1)[:, k_hi - 1]
        return fold_preds.mean(axis=1), lower, upper


# --------------------------------------------------------------------------
# a locally adaptive interval for a deployed model
# --------------------------------------------------------------------------
#: The model of absolute residuals behind :class:`AdaptiveConformal` (small and smooth).
SCALE_MODEL_PARAMS: dict[str, Any] = {"n_estimators": 150, "learning_rate": 0.05,
                                      "num_leaves": 8, "min_child_samples": 200,
                                      "verbose": -1}


class AdaptiveConformal:
    """A locally adaptive conformal interval, ``ŷ(x) ± q · σ̂(x)``, for a deployed model.

    Calibration takes held-out residuals ``e_i = y_i − ŷ_{−k(i)}(x_i)`` of the
    deployed model's chain (its fold models' predictions, e.g. chapter 04's
    spatial folds) and features ``f(x_i)`` known at every map pixel (here:
    the prediction and the dissimilarity index). ``σ̂`` is a small LightGBM
    model of ``|e|`` on the features. Its scores are cross-fitted: the
    normalised score of a calibration point, ``|e_i| / σ̂_{−k(i)}(x_i)``,
    uses a scale model fitted without the point's fold, so the scores are
    those a new point would get. ``q`` is their split-conformal quantile
    (:func:`conformal_quantile`); the deployed interval uses ``σ̂`` refitted
    on every calibration point. ``σ̂`` is floored at ``floor_quantile`` of
    the absolute residuals, so no interval collapses.

    This is the CV method with a normalised score (Papadopoulos et al. 2008;
    Lei et al. 2018, "locally weighted"): exchangeability of a map pixel with
    the held-out samples is what its coverage rests on, so calibrate with the
    folds that match how the map is used (spatial blocks for places without
    samples). MAPIE's ``ResidualNormalisedScore`` does the same with a split;
    it would refit the chain, whereas the book's fold predictions are cached.

    Parameters
    ----------
    confidence : float
    floor_quantile : float
        Lower bound of ``σ̂`` as a quantile of ``|e|``.
    seed : int

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> f = rng.uniform(0, 1, (4000, 1))
    >>> e = rng.normal(0, 0.1 + f[:, 0])             # errors grow with the feature
    >>> ac = AdaptiveConformal(0.9).fit(f, e, folds=np.arange(4000) % 5)
    >>> lo, hi = ac.interval(np.zeros(4), np.array([[0.05], [0.35], [0.65], [0.95]]))
    >>> bool(np.all(np.diff(hi - lo) > 0)), round(float(ac.coverage_), 2)
    (True, 0.9)
    """

    def __init__(self, confidence: float = DEFAULT_CONFIDENCE, floor_quantile: float = 0.1,
                 seed: int = 0) -> None:
        self.confidence = _check_confidence(confidence)
        if not 0 <= floor_quantile < 1:
            raise ValueError(f"floor_quantile must lie in [0, 1), got {floor_quantile}")
        self.floor_quantile = float(floor_quantile)
        self.seed = int(seed)

    def _scale_model(self, F: np.ndarray, a: np.ndarray) -> Any:
        import lightgbm

        return lightgbm.LGBMRegressor(random_state=self.seed, n_jobs=1,
                                      **SCALE_MODEL_PARAMS).fit(F, a)

    def fit(self, features: Any, residuals: Any, folds: Any) -> AdaptiveConformal:
        """Calibrate on held-out residuals, their features and their folds."""
        F = np.asarray(features, dtype=float)
        if F.ndim == 1:
            F = F[:, None]
        e = _as_vector(residuals, "residuals")
        k = np.asarray(folds)
        if F.shape[0] != e.size or k.shape != (e.size,):
            raise ValueError(f"features ({F.shape[0]} rows), residuals ({e.size}) and folds "
                             f"({k.size}) must have one entry per calibration point")
        ok = np.isfinite(F).all(axis=1) & np.isfinite(e)
        F, e, k = F[ok], e[ok], k[ok]
        labels = np.unique(k)
        if labels.size < 2:
            raise ValueError("folds: need at least two folds to cross-fit the scale model")
        a = np.abs(e)
        self.floor_ = float(np.quantile(a, self.floor_quantile))
        sig = np.empty(e.size)
        for lab in labels:
            te = k == lab
            sig[te] = np.maximum(self._scale_model(F[~te], a[~te]).predict(F[te]), self.floor_)
        self.scores_ = a / sig
        self.quantile_ = conformal_quantile(self.scores_, self.confidence)
        self.coverage_ = float(np.mean(self.scores_ <= self.quantile_))
        self.model_ = self._scale_model(F, a)
        self.n_features_in_ = F.shape[1]
        return self

    def sigma(self, features: Any) -> np.ndarray:
        """``σ̂`` (log units) at rows of features; NaN where a feature is missing."""
        if not hasattr(self, "model_"):
            raise ValueError("AdaptiveConformal is not fitted: call fit(...) first")
        F = np.asarray(features, dtype=float)
        if F.ndim == 1:
            F = F[:, None]
        if F.shape[1] != self.n_features_in_:
            raise ValueError(f"features: {F.shape[1]} columns, fitted on {self.n_features_in_}")
        out = np.full(F.shape[0], np.nan)
        ok = np.isfinite(F).all(axis=1)
        if ok.any():
            out[ok] = np.maximum(self.model_.predict(F[ok]), self.floor_)
        return out

    def interval(self, prediction: Any, features: Any, lower_bound: float | None = 0.0
                 ) -> tuple[np.ndarray, np.ndarray]:
        """``(lower, upper)`` = ``ŷ ∓ q σ̂``; the lower end clipped at ``lower_bound``
        (``log1p(0) = 0``; None: no clip)."""
        p = np.asarray(prediction, dtype=float)
        half = self.quantile_ * self.sigma(features)
        lo = p - half
        if lower_bound is not None:
            lo = np.maximum(lo, lower_bound)
        return lo, p + half


def calibrated_richness(y_true: Any, y_pred: Any, split: Any) -> tuple[np.ndarray, np.ndarray]:
    """Richness from log predictions with a back-transform calibrated on held-out predictions.

    ``richness = c · expm1(ŷ)``, where ``c = Σ richness / Σ expm1(ŷ)`` is
    learnt from the held-out predictions of the *other* splits (cross-fitted,
    as :func:`crossfit_smearing`), so the mean error on richness is zero on
    average over splits without using a point's own observation. ``c`` makes
    the mean of the back-transformed predictions match the mean richness:
    ``expm1`` of a log-scale mean estimates a median, below the mean.

    Parameters
    ----------
    y_true, y_pred : array_like
        ``log1p`` observed and predicted (held out).
    split : array_like
        Split (seed or fold) of each prediction; at least two.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        Calibrated richness per prediction, and the factor ``c`` used for each.

    Examples
    --------
    >>> yt = np.log1p(np.array([10.0, 30, 10, 30]))
    >>> yp = np.log1p(np.array([8.0, 24, 8, 24]))
    >>> r, c = calibrated_richness(yt, yp, [0, 0, 1, 1])
    >>> r.round(2).tolist(), c.round(3).tolist()
    ([10.0, 30.0, 10.0, 30.0], [1.25, 1.25, 1.25, 1.25])
    """
    yt, yp = _check_pair(y_true, y_pred)
    s = np.asarray(split)
    if s.shape != yt.shape:
        raise ValueError(f"split: expected one label per prediction ({yt.size}), got {s.size}")
    labels = np.unique(s)
    if labels.size < 2:
        raise ValueError("split: need at least two splits to cross-fit the back-transform")
    r, b = np.expm1(yt), np.expm1(yp)
    c = np.empty(yt.size)
    for lab in labels:
        mine = s == lab
        c[mine] = r[~mine].sum() / b[~mine].sum()
    return c * b, c


def interval_coverage(y_true: Any, lower: Any, upper: Any) -> float:
    """Share of observations inside their interval ``[lower, upper]``.

    Examples
    --------
    >>> interval_coverage([1.0, 2.0, 3.0, 4.0], [0.0, 2.5, 2.0, 3.0], [2.0, 3.0, 4.0, 4.0])
    0.75
    """
    t = _as_vector(y_true, "y_true")
    lo = _as_vector(lower, "lower")
    hi = _as_vector(upper, "upper")
    if not (t.shape == lo.shape == hi.shape):
        raise ValueError(
            f"y_true, lower and upper differ in length: {t.size}, {lo.size}, {hi.size}"
        )
    _finite(t, "y_true", "observations must be known (drop samples without a value)")
    if np.isnan(lo).any() or np.isnan(hi).any():
        raise ValueError("lower/upper: NaN bounds (±inf is allowed for an unbounded side)")
    if (lo > hi).any():
        raise ValueError("lower/upper: some lower bounds lie above their upper bounds")
    if t.size == 0:
        raise ValueError("y_true: no observations")
    return float(np.mean((lo <= t) & (t <= hi)))


def _scheme_splits(
    scheme: str,
    n: int,
    lonlat: np.ndarray,
    n_seeds: int,
    test_size: float,
    block_size_m: float,
    n_splits: int,
    seed: int,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    from fungi_ssl.validation.cv import BlockKFold, RandomTrainValTest

    if scheme == "random":
        cv = RandomTrainValTest(n_seeds=n_seeds, seed=seed, val_size=0.0, test_size=test_size)
        for s, (train, test) in zip(cv.seeds, cv.split(np.zeros(n)), strict=True):
            yield s, train, test
    else:
        cv = BlockKFold(block_size_m, n_splits=n_splits, seed=seed, coords=lonlat)
        for k, (train, test) in enumerate(cv.split(lonlat)):
            yield k, train, test


def conformal_holdout(
    X: Any,
    y: Any,
    coords: Any,
    *,
    schemes: Sequence[Scheme] = ("random", "spatial"),
    calibration: Literal["matched", "random", "site", "block"] = "matched",
    method: Literal["split", "cv+"] = "split",
    confidence: float = DEFAULT_CONFIDENCE,
    n_seeds: int = 3,
    test_size: float = 0.2,
    block_size_m: float = 50_000.0,
    n_splits: int = 5,
    sample_id: Any = None,
    model: str = "lightgbm",
    feature_transform: Any = "auto",
    model_params: Mapping[str, Any] | None = None,
    calibration_size: float = 0.2,
    val_size: float = 0.1,
    seed: int = 0,
    n_jobs: int = 1,
    progress: bool = True,
) -> pd.DataFrame:
    """Held-out prediction intervals under random splits and under spatial blocks.

    For each outer split of each scheme, a :class:`ConformalRegressor` is
    fitted and calibrated on the training part only and predicts intervals
    for the test part:

    * ``random``: the study's random test parts (``test_size`` of the rows,
      seeds ``seed … seed + n_seeds − 1``, the same test rows as
      :class:`fungi_ssl.validation.cv.RandomTrainValTest` gives chapter 04);
    * ``spatial``: K-fold over square blocks of ``block_size_m``
      (:class:`fungi_ssl.validation.cv.BlockKFold`, sites kept whole).

    ``calibration`` says how calibration rows (and CV+ folds, and the early
    stopping part) are drawn from the training part:

    * ``"matched"`` (default): as the test part is drawn, i.e. random rows for
      ``random`` and whole blocks of ``block_size_m`` for ``spatial``;
    * ``"random"``: random rows for both, the naive practice; under spatial
      blocks coverage then falls short, because calibration rows have
      site-mates and neighbours in the fitting rows that test rows lack;
    * ``"site"``: whole sites (samples within 25 m);
    * ``"block"``: whole blocks for both schemes.

    Parameters
    ----------
    X : DataFrame or array_like
        Predictors.
    y : array_like
        Target (log richness).
    coords : DataFrame with longitude/latitude, or (n, 2) lon/lat array
        Sample coordinates (WGS84 degrees).
    schemes : sequence of {"random", "spatial"}
    calibration : {"matched", "random", "site", "block"}
    method, confidence, model, feature_transform, model_params, calibration_size, val_size
        As in :class:`ConformalRegressor`.
    n_seeds, test_size : int, float
        Random splits.
    block_size_m, n_splits : float, int
        Spatial blocks and folds (chapter 04: 50 km, 5 folds).
    sample_id : array_like, optional
        Ids for the output (default: row numbers as strings).
    seed : int
    n_jobs : int
        Worker threads: each split is one task with a single-threaded model
        (the result does not depend on it).
    progress : bool
        A tqdm bar over the splits.

    Returns
    -------
    pandas.DataFrame
        One row per test prediction: ``sample_id, scheme, split,
        calibration, confidence, y_true, y_pred, lower, upper, longitude,
        latitude``.
        Feed it to :func:`coverage_table`; ``y_pred`` are ordinary held-out
        predictions for the other checks.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> lonlat = np.column_stack([rng.uniform(0, 4, 600), rng.uniform(45, 48, 600)])
    >>> X = rng.normal(size=(600, 2)); y = X[:, 0] + rng.normal(0, 0.3, 600)
    >>> out = conformal_holdout(X, y, lonlat, model="ridge", n_seeds=2, progress=False)
    >>> out.groupby("scheme").size().to_dict()
    {'random': 240, 'spatial': 600}
    """
    from joblib import Parallel, delayed

    from fungi_ssl.core.worker_threads import single_threaded_workers
    from fungi_ssl.data.sites import check_coords, site_groups
    from fungi_ssl.validation.cv import BlockKFold

    yv = _as_vector(y, "y")
    _finite(yv, "y", "observations must be known (drop samples without a value)")
    n = yv.size
    if len(X) != n:
        raise ValueError(f"X has {len(X)} rows but y has {n} values")
    if coords is None:
        raise ValueError("coords: sample longitude/latitude are required for spatial blocks")
    lonlat = check_coords(coords, "lonlat", "coords")
    if lonlat.shape != (n, 2):
        raise ValueError(f"coords: expected shape ({n}, 2) lon/lat, got {lonlat.shape}")
    schemes = list(schemes)
    bad = [s for s in schemes if s not in ("random", "spatial")]
    if bad or not schemes:
        raise ValueError(f"schemes: expected 'random' and/or 'spatial', got {schemes}")
    if calibration not in ("matched", "random", "site", "block"):
        raise ValueError(
            f"calibration must be 'matched', 'random', 'site' or 'block', got {calibration!r}"
        )
    _check_confidence(confidence)
    ids = np.arange(n).astype(str) if sample_id is None else np.asarray(sample_id)
    if ids.shape != (n,):
        raise ValueError(f"sample_id: expected {n} ids, got shape {ids.shape}")
    labels = {
        "random": np.arange(n),
        "site": site_groups(lonlat),
        "block": BlockKFold(block_size_m).block_labels(lonlat),
    }
    splits = [
        (scheme, s, train, test)
        for scheme in schemes
        for s, train, test in _scheme_splits(
            scheme, n, lonlat, n_seeds, test_size, block_size_m, n_splits, seed
        )
    ]

    def one(scheme: str, s: int, train: np.ndarray, test: np.ndarray) -> pd.DataFrame:
        kind = calibration
        if kind == "matched":
            kind = "random" if scheme == "random" else "block"
        reg = ConformalRegressor(
            model=model,
            method=method,
            confidence=confidence,
            calibration_size=calibration_size,
            n_splits=n_splits,
            val_size=val_size,
            feature_transform=feature_transform,
            model_params=model_params,
            seed=seed + int(s),
            n_jobs=1,
        )
        reg.fit(_take(X, train), yv[train], groups=labels[kind][train])
        pred, lo, hi = reg.predict_interval(_take(X, test))
        return (
            pd.DataFrame(
                {
                    "sample_id": ids[test],
                    "scheme": scheme,
                    "split": int(s),
                    "calibration": kind,
                    "confidence": float(confidence),
                    "y_true": yv[test],
                    "y_pred": pred,
                    "lower": lo,
                    "upper": hi,
                    "longitude": lonlat[test, 0],
                    "latitude": lonlat[test, 1],
                }
            )
        )

    # one single-threaded task per split on n_jobs worker threads, as Table 1 runs
    # (fungi_ssl.core.worker_threads: a multi-threaded LightGBM after another stalls when
    # another process holds a core); Parallel keeps the splits' order
    with single_threaded_workers():
        runner = Parallel(n_jobs=max(1, int(n_jobs)), backend="threading", return_as="generator")
        parts = list(tqdm(runner(delayed(one)(*sp) for sp in splits), total=len(splits),
                          desc="conformal", disable=not progress))
    return pd.concat(parts, ignore_index=True)


def coverage_table(intervals: pd.DataFrame, log1p_target: bool = True) -> pd.DataFrame:
    """Empirical coverage and width of held-out intervals, per scheme (never pooled).

    Parameters
    ----------
    intervals : pandas.DataFrame
        ``scheme, y_true, lower, upper`` (and ``calibration``, if present, is
        kept apart too), e.g. from :func:`conformal_holdout`.
    log1p_target : bool
        Also give the median width on the richness scale,
        ``expm1(upper) − expm1(lower)``.

    Returns
    -------
    pandas.DataFrame
        One row per scheme (× calibration): ``n, coverage, coverage_se``
        (binomial, samples treated as independent), ``width_median,
        width_mean`` (target scale) and ``width_median_richness``.

    Examples
    --------
    >>> iv = pd.DataFrame({"scheme": ["random"] * 4, "y_true": [1.0, 2, 3, 4],
    ...                    "lower": [0.0, 1, 2, 4.5], "upper": [2.0, 3, 4, 5.5]})
    >>> coverage_table(iv)[["n", "coverage", "width_median"]].values.tolist()
    [[4.0, 0.75, 2.0]]
    """
    need = ["scheme", "y_true", "lower", "upper"]
    missing = [c for c in need if c not in intervals.columns]
    if missing:
        raise ValueError(f"intervals: missing columns {missing}; expected {need}")
    keys = ["scheme"] + (["calibration"] if "calibration" in intervals.columns else [])
    rows = []
    for key, g in intervals.groupby(keys, sort=True):
        cov = interval_coverage(g["y_true"], g["lower"], g["upper"])
        width = (g["upper"] - g["lower"]).to_numpy(dtype=float)
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        row.update(
            n=float(len(g)),
            coverage=cov,
            coverage_se=math.sqrt(cov * (1 - cov) / len(g)),
            width_median=float(np.median(width)),
            width_mean=float(np.mean(width)),
        )
        if log1p_target:
            wr = np.expm1(g["upper"].to_numpy(float)) - np.expm1(g["lower"].to_numpy(float))
            row["width_median_richness"] = float(np.median(wr))
        rows.append(row)
    return pd.DataFrame(rows)
