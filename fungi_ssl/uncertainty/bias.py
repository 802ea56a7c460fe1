"""Bias checks of held-out predictions: error, calibration, residual structure, intervals, AOA.

Chapter 07 asks of every prediction more than a mean error: how well
calibrated it is, whether its errors follow a covariate, a land-cover class or
space, how wide its uncertainty is, and whether it is made in a place unlike
any the model was trained on. This module answers on **plain arrays and
DataFrames**, so it does not care which driver made the predictions:

==================  =========================================================
column              meaning
==================  =========================================================
``sample_id``       the sample (optional)
``y_true``          observed target (``log_richness = log1p(rarefied)``)
``y_pred``          held-out prediction on the same scale
``scheme``          ``"random"`` (the study's random splits) or ``"spatial"``
                    (spatial blocks); kept apart, never pooled
``split``           seed (random) or fold (spatial)
``longitude``,      WGS84 degrees of the sample (Moran's I only)
``latitude``
==================  =========================================================

:func:`heldout_table` builds that table from the ``predictions`` that
:func:`fungi_ssl.validation.models.evaluate_cv` returns.

Sign convention: an **error** is ``predicted − observed`` everywhere here, as
in :func:`fungi_ssl.validation.models.regression_metrics`: a positive mean error means
the model over-predicts.

What is here
------------
* :func:`mean_error`, :func:`error_table`: mean error and mean error as a
  percentage of the observed mean, on log richness and on richness
  (``expm1`` of the log prediction, optionally with Duan's smearing factor
  from :func:`crossfit_smearing`, since ``expm1`` of a mean log is a median,
  not a mean);
* :func:`calibration`, :func:`calibration_bins`, :func:`plot_calibration`:
  slope and intercept of observed on predicted, and the binned
  predicted-against-observed plot;
* :func:`error_covariate_correlation`, :func:`error_covariate_bins`,
  :func:`error_by_class`, :func:`dominant_landcover`: errors against each
  1 km covariate and by land-cover class;
* :func:`morans_i_bands`: Moran's I of the errors in geodesic distance bands,
  with PySAL (``esda`` on ``libpysal`` weights) and a permutation p-value;
* :class:`ConformalRegressor`, :func:`conformal_holdout`,
  :func:`interval_coverage`, :func:`coverage_table`: split-conformal and CV+
  prediction intervals and their empirical coverage under random splits and
  under spatial blocks;
* :class:`AreaOfApplicability`, :func:`importance_weights`,
  :func:`aoa_errors`: the dissimilarity index and area of applicability of
  Meyer & Pebesma (2021);
* :func:`bias_results`: chapter 07's results dict.

References
----------
Barber, Candès, Ramdas & Tibshirani (2021) Predictive inference with the
jackknife+. *Annals of Statistics* 49:486–507 (CV+).
Duan (1983) Smearing estimate: a nonparametric retransformation method.
*JASA* 78:605–610.
Meyer & Pebesma (2021) Predicting into unknown space? Estimating the area of
applicability of spatial prediction models. *Methods in Ecology and
Evolution* 12:1620–1633.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from scipy import stats
from tqdm import tqdm

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

__all__ = [
    "DEFAULT_BANDS_KM",
    "DEFAULT_CONFIDENCE",
    "RESULT_KEYS",
    "AdaptiveConformal",
    "AreaOfApplicability",
    "Calibration",
    "ConformalRegressor",
    "MeanError",
    "aoa_errors",
    "bias_results",
    "calibration",
    "calibrated_richness",
    "calibration_bins",
    "conformal_holdout",
    "conformal_quantile",
    "coverage_table",
    "crossfit_smearing",
    "dominant_landcover",
    "error_by_class",
    "error_covariate_bins",
    "error_covariate_correlation",
    "error_table",
    "geodesic_pairs",
    "heldout_table",
    "importance_weights",
    "interval_coverage",
    "mean_error",
    "morans_i_bands",
    "plot_calibration",
]

#: Distance bands (km) of :func:`morans_i_bands`: ``lo < d ≤ hi``.
DEFAULT_BANDS_KM: tuple[tuple[float, float], ...] = ((0, 1), (1, 10), (10, 50), (50, 200))
#: Nominal level of the book's prediction intervals.
DEFAULT_CONFIDENCE = 0.9
#: Prefix of the 1 km land-cover class-fraction columns.
LANDCOVER_PREFIX = "ConsensusLandCoverClass_"

Scheme = Literal["random", "spatial"]


# --------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------
def _as_vector(values: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: expected numbers, got {type(values).__name__}") from err
    if arr.ndim != 1:
        arr = arr.ravel() if arr.ndim == 2 and 1 in arr.shape else arr
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    return arr


def _finite(arr: np.ndarray, name: str, hint: str = "drop those samples first") -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name}: {int(bad.sum())} NaN or infinite value(s), first at position {first}; {hint}"
        )


def _check_pair(y_true: Any, y_pred: Any, min_n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Observed and predicted as float arrays of one length, finite, at least ``min_n``."""
    t = _as_vector(y_true, "y_true")
    p = _as_vector(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(
            f"y_true and y_pred differ in length: {t.size} observations and {p.size} predictions"
        )
    _finite(t, "y_true", "observations must be known (drop samples without a value)")
    _finite(p, "y_pred")
    if t.size < min_n:
        raise ValueError(f"y_true: need at least {min_n} samples, got {t.size}")
    return t, p


def _check_confidence(confidence: float) -> float:
    try:
        c = float(confidence)
    except (TypeError, ValueError) as err:
        raise ValueError(f"confidence must be a number in (0, 1), got {confidence!r}") from err
    if not 0.0 < c < 1.0:
        raise ValueError(
            f"confidence must lie strictly between 0 and 1 (e.g. 0.9 for a 90% interval), "
            f"got {confidence!r}"
        )
    return c


def _clean(v: Any) -> float | None:
    """A JSON-safe float (None for NaN/inf/None), rounded to 12 significant digits."""
    if v is None:
        return None
    v = float(v)
    return float(f"{v:.12g}") if math.isfinite(v) else None


# --------------------------------------------------------------------------
# held-out table
# --------------------------------------------------------------------------
def heldout_table(
    predictions: pd.DataFrame,
    frame: pd.DataFrame,
    scheme: Scheme,
    split_column: str = "fold",
) -> pd.DataFrame:
    """The module's held-out table from :func:`fungi_ssl.validation.models.evaluate_cv` predictions.

    Parameters
    ----------
    predictions : pandas.DataFrame
        ``row`` (position in ``frame``), ``observed``, ``predicted`` and
        ``split_column``, as ``evaluate_cv(..., return_predictions=True)``
        returns them.
    frame : pandas.DataFrame
        The table the model was evaluated on (its rows in the same order), with
        ``sample_id``, ``longitude``, ``latitude`` where present.
    scheme : {"random", "spatial"}
        Label of the CV scheme.
    split_column : str
        Column of ``predictions`` naming the split (fold or seed).

    Returns
    -------
    pandas.DataFrame
        ``sample_id, scheme, split, y_true, y_pred`` and ``longitude,
        latitude`` when ``frame`` has them.

    Examples
    --------
    >>> frame = pd.DataFrame({"sample_id": ["a", "b", "c"], "longitude": [1.0, 2, 3],
    ...                       "latitude": [50.0, 50, 50]})
    >>> preds = pd.DataFrame({"row": [2, 0], "fold": [0, 1], "observed": [3.0, 1.0],
    ...                       "predicted": [2.5, 1.5]})
    >>> heldout_table(preds, frame, "spatial")[["sample_id", "split", "y_pred"]].values.tolist()
    [['c', 0, 2.5], ['a', 1, 1.5]]
    """
    if scheme not in ("random", "spatial"):
        raise ValueError(f"scheme must be 'random' or 'spatial', got {scheme!r}")
    need = ["row", "observed", "predicted", split_column]
    missing = [c for c in need if c not in predictions.columns]
    if missing:
        raise ValueError(f"predictions: missing columns {missing}; expected {need}")
    rows = predictions["row"].to_numpy()
    if rows.min() < 0 or rows.max() >= len(frame):
        raise ValueError(f"predictions: row numbers outside the frame's {len(frame)} rows")
    out = pd.DataFrame(
        {
            "sample_id": (
                frame["sample_id"].to_numpy()[rows] if "sample_id" in frame else rows.astype(str)
            ),
            "scheme": scheme,
            "split": predictions[split_column].to_numpy(),
            "y_true": predictions["observed"].to_numpy(dtype=float),
            "y_pred": predictions["predicted"].to_numpy(dtype=float),
        }
    )
    for c in ("longitude", "latitude"):
        if c in frame.columns:
            out[c] = frame[c].to_numpy(dtype=float)[rows]
    return out


# --------------------------------------------------------------------------
# mean error
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class MeanError:
    """Mean error ``predicted − observed`` and its size relative to the observed mean.

    Attributes
    ----------
    mean_error : float
        Mean of ``predicted − observed``.
    mean_observed : float
        Mean of the observations.
    mean_error_pct_of_mean : float
        ``100 · mean_error / mean_observed`` (NaN when the mean is 0).
    se : float
        Standard error of the mean error (SD / √n; treats samples as
        independent, so it is too small when cores of a site share an error).
    n : int
        Number of samples.
    """

    mean_error: float
    mean_observed: float
    mean_error_pct_of_mean: float
    se: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        """The fields as a plain dict."""
        return asdict(self)


def mean_error(y_true: Any, y_pred: Any) -> MeanError:
    """Mean error (``predicted − observed``) and mean error as a % of the observed mean.

    Parameters
    ----------
    y_true, y_pred : array_like
        Observations and held-out predictions on one scale, same length,
        finite.

    Returns
    -------
    MeanError

    Raises
    ------
    ValueError
        If the lengths differ or a value is NaN.

    Examples
    --------
    >>> m = mean_error([10.0, 20.0, 30.0], [11.0, 19.0, 33.0])
    >>> m.mean_error, m.mean_error_pct_of_mean
    (1.0, 5.0)
    >>> mean_error([1.0, 2.0], [1.0])
    Traceback (most recent call last):
    ...
    ValueError: y_true and y_pred differ in length: 2 observations and 1 predictions
    """
    t, p = _check_pair(y_true, y_pred)
    err = p - t
    me = float(err.mean())
    mo = float(t.mean())
    return MeanError(
        mean_error=me,
        mean_observed=mo,
        mean_error_pct_of_mean=100.0 * me / mo if mo != 0 else math.nan,
        se=float(err.std(ddof=1) / math.sqrt(err.size)),
        n=int(err.size),
    )


def crossfit_smearing(y_true: Any, y_pred: Any, split: Any, sample_id: Any = None) -> np.ndarray:
    """Duan's smearing factor for each held-out prediction, from the other splits only.

    A model of ``log1p(richness)`` predicts a conditional mean on the log
    scale; ``expm1`` of it estimates the median richness, which lies below
    the mean when errors are spread (Jensen). Duan's smearing estimate of the
    mean is ``exp(pred) · mean(exp(y − pred)) − 1``. The factor must not be
    learnt from the very predictions it corrects, so the factor of a row in
    split ``k`` is the mean of ``exp(y − pred)`` over the rows of the other
    splits (and, with ``sample_id``, over other samples only, because random
    seeds test a sample more than once).

    The factor assumes the log-scale errors have one distribution everywhere.
    Where their spread changes with the prediction (wide where richness is
    low, as zeros and near-zeros make it), a few large positive errors set the
    factor for every prediction and the corrected mean overshoots: on the
    simulated study's 1 km covariates (LightGBM, random splits), ``expm1``
    gave −26% of the mean and smearing +20%. Read both beside the log-scale
    mean error.

    Parameters
    ----------
    y_true, y_pred : array_like
        Log-scale observations and held-out predictions.
    split : array_like
        Split (fold or seed) of each row; at least two distinct values.
    sample_id : array_like, optional
        Sample of each row; rows of a sample tested in split ``k`` are left
        out of split ``k``'s factor.

    Returns
    -------
    numpy.ndarray
        The factor for each row (≥ 0, about ``exp(σ²/2)`` for normal errors).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = rng.normal(3.0, 0.5, 4000); pred = np.full(4000, 3.0)
    >>> f = crossfit_smearing(y, pred, np.arange(4000) % 4)
    >>> bool(abs(f.mean() - np.exp(0.5**2 / 2)) < 0.02)     # exp(σ²/2) = 1.13
    True
    """
    t, p = _check_pair(y_true, y_pred)
    s = np.asarray(split)
    if s.shape != t.shape:
        raise ValueError(f"split: expected {t.size} labels, got shape {s.shape}")
    ids = None if sample_id is None else np.asarray(sample_id)
    if ids is not None and ids.shape != t.shape:
        raise ValueError(f"sample_id: expected {t.size} values, got shape {ids.shape}")
    labels = pd.unique(s)
    if len(labels) < 2:
        raise ValueError("split: need at least two splits to cross-fit the smearing factor")
    ratio = np.exp(t - p)
    out = np.empty_like(t)
    for k in labels:
        here = s == k
        other = ~here
        if ids is not None:
            other &= ~np.isin(ids, ids[here])
        if not other.any():
            raise ValueError(f"split {k!r}: no rows of other samples to learn its factor from")
        out[here] = ratio[other].mean()
    return out


def error_table(
    y_true: Any,
    y_pred: Any,
    *,
    log1p_target: bool = True,
    smearing: Any = None,
) -> pd.DataFrame:
    """Mean error, its % of the mean and RMSE on log richness and on richness.

    Parameters
    ----------
    y_true, y_pred : array_like
        Observations and held-out predictions of ``log1p(richness)`` (or of
        any target with ``log1p_target=False``).
    log1p_target : bool
        The values are ``log1p(richness)``: add rows on the richness scale.
    smearing : float or array_like, optional
        Duan's factor (see :func:`crossfit_smearing`); adds a row
        ``richness (smearing)`` with ``exp(pred) · factor − 1``.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``scale`` (``log1p``, ``richness``, ``richness (smearing)``;
        ``target`` without log1p): ``n, mean_observed, mean_predicted,
        mean_error, mean_error_pct_of_mean, rmse``.

    Examples
    --------
    >>> tab = error_table(np.log1p([9.0, 19.0, 39.0]), np.log1p([9.0, 19.0, 39.0]) + 0.1)
    >>> tab["mean_error_pct_of_mean"].round(1).to_dict()
    {'log1p': 3.3, 'richness': 11.0}
    """
    t, p = _check_pair(y_true, y_pred)
    rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if not log1p_target:
        rows["target"] = (t, p)
    else:
        rows["log1p"] = (t, p)
        rows["richness"] = (np.expm1(t), np.expm1(p))
        if smearing is not None:
            f = np.broadcast_to(np.asarray(smearing, dtype=float), p.shape)
            _finite(np.asarray(f), "smearing")
            rows["richness (smearing)"] = (np.expm1(t), np.exp(p) * f - 1.0)
    out = []
    for name, (a, b) in rows.items():
        m = mean_error(a, b)
        out.append(
            {
                "scale": name,
                "n": m.n,
                "mean_observed": m.mean_observed,
                "mean_predicted": float(b.mean()),
                "mean_error": m.mean_error,
                "mean_error_pct_of_mean": m.mean_error_pct_of_mean,
                "rmse": float(np.sqrt(np.mean((b - a) ** 2))),
            }
        )
    return pd.DataFrame(out).set_index("scale")


# --------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Calibration:
    """Least-squares line of observed on predicted.

    A slope of 1 and an intercept of 0 mean calibrated predictions. A slope
    above 1 means predictions are shrunk towards the mean (high values
    under-predicted, low values over-predicted), as averaging models such as
    random forests do; below 1, predictions spread more than the truth.

    Attributes
    ----------
    slope, intercept : float
    slope_se, intercept_se : float
        Ordinary least-squares standard errors (treating samples as
        independent, so too small under site clustering).
    r2 : float
        Squared correlation of observed and predicted.
    n : int
    """

    slope: float
    intercept: float
    slope_se: float
    intercept_se: float
    r2: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        """The fields as a plain dict."""
        return asdict(self)


def calibration(y_true: Any, y_pred: Any) -> Calibration:
    """Slope and intercept of the regression of observed on predicted.

    Parameters
    ----------
    y_true, y_pred : array_like
        Observations and held-out predictions (≥ 3, predictions not all equal).

    Returns
    -------
    Calibration

    Examples
    --------
    >>> c = calibration([1.0, 2.0, 3.0, 4.0], [1.5, 2.0, 2.5, 3.0])   # shrunk by half
    >>> round(c.slope, 6), round(c.intercept, 6)
    (2.0, -2.0)
    """
    t, p = _check_pair(y_true, y_pred, min_n=3)
    pc = p - p.mean()
    sxx = float(pc @ pc)
    if sxx == 0:
        raise ValueError("y_pred: all predictions are equal; a calibration slope is undefined")
    slope = float(pc @ (t - t.mean()) / sxx)
    intercept = float(t.mean() - slope * p.mean())
    resid = t - (intercept + slope * p)
    n = t.size
    s2 = float(resid @ resid) / (n - 2)
    slope_se = math.sqrt(s2 / sxx)
    intercept_se = math.sqrt(s2 * (1.0 / n + p.mean() ** 2 / sxx))
    r = np.corrcoef(t, p)[0, 1] if t.std() > 0 else math.nan
    return Calibration(slope, intercept, slope_se, intercept_se, float(r**2), int(n))


def calibration_bins(
    y_true: Any,
    y_pred: Any,
    n_bins: int = 10,
    strategy: Literal["quantile", "uniform"] = "quantile",
) -> pd.DataFrame:
    """Observed against predicted in bins of the prediction.

    Parameters
    ----------
    y_true, y_pred : array_like
        Observations and held-out predictions.
    n_bins : int
        Number of bins (fewer when quantiles coincide).
    strategy : {"quantile", "uniform"}
        Bins of equal count, or of equal width over the predicted range.

    Returns
    -------
    pandas.DataFrame
        One row per non-empty bin: ``bin, pred_lo, pred_hi, n,
        predicted_mean, observed_mean, observed_se, observed_q25,
        observed_q75, mean_error``. A calibrated model has
        ``observed_mean ≈ predicted_mean`` in every bin.

    Examples
    --------
    >>> b = calibration_bins(np.arange(10.0), np.arange(10.0) + 1, n_bins=2)
    >>> b[["n", "predicted_mean", "observed_mean"]].values.tolist()
    [[5.0, 3.0, 2.0], [5.0, 8.0, 7.0]]
    """
    t, p = _check_pair(y_true, y_pred)
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    if strategy == "quantile":
        edges = np.unique(np.quantile(p, np.linspace(0, 1, int(n_bins) + 1)))
    elif strategy == "uniform":
        edges = np.linspace(p.min(), p.max(), int(n_bins) + 1)
    else:
        raise ValueError(f"strategy must be 'quantile' or 'uniform', got {strategy!r}")
    if edges.size < 2:
        edges = np.array([p.min(), p.max()])
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, edges.size - 2)
    rows = []
    for b in range(edges.size - 1):
        m = idx == b
        if not m.any():
            continue
        tb, pb = t[m], p[m]
        rows.append(
            {
                "bin": b,
                "pred_lo": float(edges[b]),
                "pred_hi": float(edges[b + 1]),
                "n": float(m.sum()),
                "predicted_mean": float(pb.mean()),
                "observed_mean": float(tb.mean()),
                "observed_se": float(tb.std(ddof=1) / math.sqrt(tb.size))
                if tb.size > 1
                else math.nan,
                "observed_q25": float(np.quantile(tb, 0.25)),
                "observed_q75": float(np.quantile(tb, 0.75)),
                "mean_error": float((pb - tb).mean()),
            }
        )
    return pd.DataFrame(rows)


def plot_calibration(
    ax: Axes,
    y_true: Any,
    y_pred: Any,
    n_bins: int = 10,
    label: str | None = None,
    color: str | None = None,
    points: bool = True,
) -> Axes:
    """Draw binned observed against predicted, the fitted line and the 1:1 line.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Where to draw.
    y_true, y_pred : array_like
        Observations and held-out predictions.
    n_bins : int
        Quantile bins of the prediction (see :func:`calibration_bins`).
    label : str, optional
        Legend label of this series (the slope is appended).
    color : str, optional
        Colour of the bins and the fitted line.
    points : bool
        Also draw every sample, faintly.

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> fig, ax = plt.subplots()
    >>> ax = plot_calibration(ax, [1.0, 2, 3, 4, 5], [1.2, 2.1, 2.8, 4.2, 4.9], n_bins=2)
    >>> len(ax.lines) >= 2
    True
    >>> plt.close(fig)
    """
    t, p = _check_pair(y_true, y_pred, min_n=3)
    bins = calibration_bins(t, p, n_bins=n_bins)
    cal = calibration(t, p)
    if points:
        ax.scatter(p, t, s=3, alpha=0.15, color=color or "0.5", linewidths=0, rasterized=True)
    text = f"slope {cal.slope:.2f}, intercept {cal.intercept:.2f}"
    ax.errorbar(
        bins["predicted_mean"],
        bins["observed_mean"],
        yerr=1.96 * bins["observed_se"].fillna(0.0),
        fmt="o",
        color=color,
        ms=4,
        capsize=2,
        label=f"{label}: {text}" if label else text,
    )
    lo = float(min(p.min(), t.min()))
    hi = float(max(p.max(), t.max()))
    grid = np.array([lo, hi])
    ax.plot(grid, grid, color="k", lw=0.8, ls="--", label="1:1" if not ax.get_legend() else None)
    ax.plot(grid, cal.intercept + cal.slope * grid, color=color, lw=1.0)
    ax.set_xlabel("predicted")
    ax.set_ylabel("observed")
    ax.legend(fontsize="small", frameon=False)
    return ax


# --------------------------------------------------------------------------
# errors against covariates and classes
# --------------------------------------------------------------------------
def _covariate_frame(covariates: Any, n: int) -> pd.DataFrame:
    if isinstance(covariates, pd.Series):
        covariates = covariates.to_frame()
    if not isinstance(covariates, pd.DataFrame):
        raise TypeError(
            f"covariates: expected a DataFrame (one column per covariate), got "
            f"{type(covariates).__name__}"
        )
    if len(covariates) != n:
        raise ValueError(f"covariates: {len(covariates)} rows for {n} predictions")
    nonnum = [c for c in covariates.columns if not pd.api.types.is_numeric_dtype(covariates[c])]
    if nonnum:
        raise ValueError(f"covariates: columns must be numeric; not numeric: {nonnum[:5]}")
    return covariates


def error_covariate_correlation(y_true: Any, y_pred: Any, covariates: Any) -> pd.DataFrame:
    """Spearman correlation of the error (``predicted − observed``) with each covariate.

    A model that has used a covariate fully leaves errors uncorrelated with
    it; a clear ρ says the model's response to it is too weak or too strong.
    The p-values treat samples as independent: cores of a site share their
    1 km covariates and often their error, so read them as too small.

    Parameters
    ----------
    y_true, y_pred : array_like
        Observations and held-out predictions.
    covariates : pandas.DataFrame
        One numeric column per covariate, one row per prediction (rows with a
        NaN covariate are left out for that covariate).

    Returns
    -------
    pandas.DataFrame
        Indexed by ``covariate``: ``spearman_rho, p_value, n``, sorted by
        ``|ρ|``, largest first.

    Examples
    --------
    >>> x = np.arange(20.0)
    >>> cov = pd.DataFrame({"temp": x, "noise": np.sin(x * 7)})
    >>> r = error_covariate_correlation(np.zeros(20), 0.1 * x, cov)
    >>> r.index[0], float(r.loc["temp", "spearman_rho"])
    ('temp', 1.0)
    """
    t, p = _check_pair(y_true, y_pred, min_n=3)
    cov = _covariate_frame(covariates, t.size)
    err = p - t
    rows = []
    for c in cov.columns:
        x = cov[c].to_numpy(dtype=float)
        ok = np.isfinite(x)
        if ok.sum() < 3 or np.ptp(x[ok]) == 0:
            rho, pval = math.nan, math.nan
        else:
            res = stats.spearmanr(x[ok], err[ok])
            rho, pval = float(res.statistic), float(res.pvalue)
        rows.append({"covariate": str(c), "spearman_rho": rho, "p_value": pval, "n": int(ok.sum())})
    out = pd.DataFrame(rows).set_index("covariate")
    order = out["spearman_rho"].abs().sort_values(ascending=False, na_position="last").index
    return out.loc[order]


def error_covariate_bins(
    y_true: Any, y_pred: Any, covariates: Any, n_bins: int = 5
) -> pd.DataFrame:
    """Mean error in quantile bins of each covariate (for a small-multiples plot).

    Parameters
    ----------
    y_true, y_pred : array_like
        Observations and held-out predictions.
    covariates : pandas.DataFrame
        One numeric column per covariate.
    n_bins : int
        Quantile bins per covariate (fewer when values repeat, e.g. land-cover
        fractions that are mostly 0).

    Returns
    -------
    pandas.DataFrame
        Long: ``covariate, bin, lo, hi, covariate_mean, n, mean_error, se``.

    Examples
    --------
    >>> x = np.arange(10.0)
    >>> b = error_covariate_bins(np.zeros(10), x, pd.DataFrame({"t": x}), n_bins=2)
    >>> b[["bin", "n", "mean_error"]].values.tolist()
    [[0.0, 5.0, 2.0], [1.0, 5.0, 7.0]]
    """
    t, p = _check_pair(y_true, y_pred)
    cov = _covariate_frame(covariates, t.size)
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    err = p - t
    rows = []
    for c in cov.columns:
        x = cov[c].to_numpy(dtype=float)
        ok = np.isfinite(x)
        if not ok.any():
            continue
        xs, es = x[ok], err[ok]
        edges = np.unique(np.quantile(xs, np.linspace(0, 1, int(n_bins) + 1)))
        if edges.size < 2:
            edges = np.array([xs.min(), xs.max()])
        idx = np.clip(np.searchsorted(edges, xs, side="right") - 1, 0, edges.size - 2)
        for b in range(edges.size - 1):
            m = idx == b
            if not m.any():
                continue
            e = es[m]
            rows.append(
                {
                    "covariate": str(c),
                    "bin": b,
                    "lo": float(edges[b]),
                    "hi": float(edges[b + 1]),
                    "covariate_mean": float(xs[m].mean()),
                    "n": float(m.sum()),
                    "mean_error": float(e.mean()),
                    "se": float(e.std(ddof=1) / math.sqrt(e.size)) if e.size > 1 else math.nan,
                }
            )
    return pd.DataFrame(rows)


def dominant_landcover(covariates: pd.DataFrame, prefix: str = LANDCOVER_PREFIX) -> pd.Series:
    """The land-cover class with the largest 1 km cover fraction, per sample.

    Parameters
    ----------
    covariates : pandas.DataFrame
        With class-fraction columns ``<prefix><Class_Name>`` (% cover).
    prefix : str
        Column prefix of the classes (the SPUN table's).

    Returns
    -------
    pandas.Series
        Class names (prefix removed), same index as ``covariates``; NaN where
        every fraction is missing.

    Examples
    --------
    >>> cov = pd.DataFrame({"ConsensusLandCoverClass_Shrubs": [10.0, 80.0],
    ...                     "ConsensusLandCoverClass_Mixed_Other_Trees": [70.0, 5.0]})
    >>> dominant_landcover(cov).tolist()
    ['Mixed_Other_Trees', 'Shrubs']
    """
    cols = [c for c in covariates.columns if str(c).startswith(prefix)]
    if not cols:
        raise ValueError(
            f"covariates: no land-cover class columns starting with {prefix!r}; "
            f"got {list(covariates.columns)[:8]}"
        )
    values = covariates[cols].to_numpy(dtype=float)
    allnan = np.isnan(values).all(axis=1)
    arg = np.argmax(np.where(np.isnan(values), -np.inf, values), axis=1)
    names = np.array([str(c)[len(prefix) :] for c in cols], dtype=object)[arg]
    names[allnan] = np.nan
    return pd.Series(names, index=covariates.index, name="landcover_class")


def error_by_class(y_true: Any, y_pred: Any, classes: Any) -> pd.DataFrame:
    """Mean error, its % of the class mean and RMSE per class (e.g. land cover).

    Parameters
    ----------
    y_true, y_pred : array_like
        Observations and held-out predictions.
    classes : array_like
        A class label per prediction (NaN labels are left out).

    Returns
    -------
    pandas.DataFrame
        Indexed by ``class``: ``n, mean_observed, mean_predicted, mean_error,
        mean_error_pct_of_mean, rmse``, largest class first.

    Examples
    --------
    >>> r = error_by_class([1.0, 2.0, 3.0, 5.0], [1.0, 2.0, 4.0, 6.0], ["a", "a", "b", "b"])
    >>> r["mean_error"].to_dict()
    {'a': 0.0, 'b': 1.0}
    """
    t, p = _check_pair(y_true, y_pred, min_n=1)
    labels = pd.Series(np.asarray(classes, dtype=object))
    if len(labels) != t.size:
        raise ValueError(f"classes: {len(labels)} labels for {t.size} predictions")
    df = pd.DataFrame({"class": labels, "t": t, "p": p}).dropna(subset=["class"])
    df["e"] = df["p"] - df["t"]
    g = df.groupby("class", sort=False)
    out = pd.DataFrame(
        {
            "n": g.size(),
            "mean_observed": g["t"].mean(),
            "mean_predicted": g["p"].mean(),
            "mean_error": g["e"].mean(),
            "rmse": np.sqrt(g["e"].apply(lambda e: float(np.mean(e**2)))),
        }
    )
    out["mean_error_pct_of_mean"] = (
        100 * out["mean_error"] / out["mean_observed"].replace(0, np.nan)
    )
    out.index.name = "class"
    out = out[
        ["n", "mean_observed", "mean_predicted", "mean_error", "mean_error_pct_of_mean", "rmse"]
    ]
    return out.sort_values("n", ascending=False, kind="stable")


# --------------------------------------------------------------------------
# Moran's I in distance bands
# --------------------------------------------------------------------------
def _check_lonlat(longitude: Any, latitude: Any, n: int | None = None) -> tuple[np.ndarray, ...]:
    from fungi_ssl.data.coordinates import check_lonlat

    if longitude is None or latitude is None:
        raise ValueError(
            "longitude and latitude are required for Moran's I (WGS84 degrees of every "
            "sample); got None"
        )
    lon = _as_vector(longitude, "longitude")
    lat = _as_vector(latitude, "latitude")
    check_lonlat(lon, lat, "Moran's I coordinates")
    if n is not None and lon.size != n:
        raise ValueError(f"longitude/latitude: {lon.size} coordinates for {n} residuals")
    return lon, lat


def geodesic_pairs(
    longitude: Any, latitude: Any, max_km: float, max_pairs: int = 50_000_000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All ordered pairs of samples at most ``max_km`` apart, with their WGS84 geodesic distance.

    Candidates come from a haversine ball tree with a 2% margin (the sphere
    and the ellipsoid differ by < 0.6%), as in
    :func:`fungi_ssl.data.coordinates.geodesic_pairs_within`; their distance is
    then the geodesic on the WGS84 ellipsoid
    (:data:`fungi_ssl.data.coordinates.WGS84_GEOD`), and pairs beyond ``max_km``
    are dropped. Samples at identical coordinates are pairs at
    exactly 0 km.

    Parameters
    ----------
    longitude, latitude : array_like
        WGS84 degrees.
    max_km : float
        Largest distance kept.
    max_pairs : int
        Refuse (ValueError) when more candidate pairs than this would be held
        in memory.

    Returns
    -------
    i, j : numpy.ndarray
        Indices of each ordered pair (both ``(i, j)`` and ``(j, i)``; no self pairs).
    distance_km : numpy.ndarray

    Examples
    --------
    >>> i, j, d = geodesic_pairs([0.0, 0.0, 0.0], [50.0, 50.0, 50.01], max_km=5)
    >>> sorted(zip(i.tolist(), j.tolist(), np.round(d, 3).tolist()))[:3]
    [(0, 1, 0.0), (0, 2, 1.112), (1, 0, 0.0)]
    """
    from sklearn.neighbors import BallTree

    from fungi_ssl.data.coordinates import EARTH_RADIUS_M, WGS84_GEOD

    lon, lat = _check_lonlat(longitude, latitude)
    if not (np.isfinite(max_km) and max_km >= 0):
        raise ValueError(f"max_km must be a distance ≥ 0 in km, got {max_km}")
    rad = np.radians(np.column_stack([lat, lon]))
    tree = BallTree(rad, metric="haversine")
    radius = max_km * 1000.0 * 1.02 / EARTH_RADIUS_M + 1e-12
    counts = tree.query_radius(rad, radius, count_only=True)
    total = int(counts.sum()) - lon.size
    if total > max_pairs:
        raise ValueError(
            f"max_km={max_km}: {total:,} pairs of samples lie within it, more than max_pairs="
            f"{max_pairs:,}; use a smaller band or raise max_pairs"
        )
    ind = tree.query_radius(rad, radius)
    i = np.repeat(np.arange(lon.size), [len(x) for x in ind])
    j = np.concatenate(ind) if len(ind) else np.zeros(0, dtype=np.int64)
    upper = i < j  # each unordered pair once
    i, j = i[upper], j[upper]
    _, _, dist_m = WGS84_GEOD.inv(lon[i], lat[i], lon[j], lat[j])
    d = np.asarray(dist_m, dtype=float) / 1000.0
    same = (lon[i] == lon[j]) & (lat[i] == lat[j])
    d[same] = 0.0
    keep = d <= max_km
    i, j, d = i[keep], j[keep], d[keep]
    return np.concatenate([i, j]), np.concatenate([j, i]), np.concatenate([d, d])


def _moran(z: np.ndarray, rows: np.ndarray, cols: np.ndarray, permutations: int, seed: int):
    """esda's Moran on binary, row-standardised band weights; islands dropped."""
    import esda
    from libpysal.weights import WSP
    from scipy import sparse

    n = z.size
    has = np.zeros(n, bool)
    has[rows] = True
    keep = np.flatnonzero(has)
    if keep.size < 3:
        return None, int(keep.size)
    pos = np.full(n, -1)
    pos[keep] = np.arange(keep.size)
    A = sparse.csr_matrix(
        (np.ones(rows.size), (pos[rows], pos[cols])), shape=(keep.size, keep.size)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = WSP(A).to_W(silence_warnings=True)
        state = np.random.get_state()  # esda permutes with NumPy's global generator
        np.random.seed(seed)
        try:
            mi = esda.Moran(z[keep], w, transformation="r", permutations=permutations)
        finally:
            np.random.set_state(state)
    return mi, int(keep.size)


def morans_i_bands(
    residuals: Any,
    longitude: Any,
    latitude: Any,
    bands_km: Sequence[tuple[float, float]] = DEFAULT_BANDS_KM,
    *,
    permutations: int = 999,
    seed: int = 0,
    colocated: Literal["separate", "include", "exclude"] = "separate",
    max_pairs: int = 50_000_000,
    progress: bool = False,
) -> pd.DataFrame:
    """Moran's I of residuals in geodesic distance bands, with a permutation p-value.

    For each band ``lo < d ≤ hi`` (km, WGS84 geodesic), every pair of samples
    in the band gets weight 1; weights are row-standardised and samples with
    no neighbour in the band (islands) are left out of that band's statistic.
    Moran's I and its permutation pseudo p-value come from PySAL
    (:class:`esda.Moran` on :class:`libpysal.weights.W`).

    **Samples that share a site.** Cores of one plot share its coordinate, so
    many pairs lie at exactly 0 km (in the simulated study about 60,000 of the
    80,000 pairs within 1 km). Their residuals are correlated because the
    cores share one set of predictors (one SSL patch, one 1 km cell) while
    their richness differs: that is the site effect of a clustered design,
    not spatial autocorrelation between places. With the default
    ``colocated="separate"`` those 0 km pairs are reported in their own first
    row (``band="0 km (same site)"``) and kept out of every distance band, so
    the ``0–1 km`` band measures correlation between *different* sites within
    1 km. ``"include"`` puts them into the band whose ``lo`` is 0 (then that
    band mostly measures the site effect); ``"exclude"`` drops them.

    Parameters
    ----------
    residuals : array_like
        One value per sample (the sign convention does not change I).
    longitude, latitude : array_like
        WGS84 degrees of every sample.
    bands_km : sequence of (lo, hi)
        Distance bands in km, ``0 ≤ lo < hi``.
    permutations : int
        Conditional permutations for ``p_sim`` (0 for none).
    seed : int
        Seed of the permutations (esda draws from NumPy's global generator;
        its state is restored afterwards).
    colocated : {"separate", "include", "exclude"}
        What to do with pairs at the same coordinate (see above).
    max_pairs : int
        Refuse bands that would hold more pairs than this in memory.
    progress : bool
        A tqdm bar over the bands.

    Returns
    -------
    pandas.DataFrame
        One row per band: ``band, lo_km, hi_km, n`` (samples with a
        neighbour in the band), ``n_pairs`` (unordered), ``islands``,
        ``I, expected_I, z_rand`` (randomisation z), ``p_sim`` (esda's
        one-sided pseudo p-value, ``(k + 1) / (permutations + 1)``, in the
        direction of the observed I), ``p_rand`` (two-sided, normal
        approximation under randomisation). ``I`` is NaN for a band with
        fewer than 3 connected samples.

    Raises
    ------
    ValueError
        If the coordinates are missing, NaN or of another length, the
        residuals hold NaN, or a band is malformed.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> lon = np.repeat(rng.uniform(5, 6, 60), 2); lat = np.repeat(rng.uniform(50, 51, 60), 2)
    >>> r = morans_i_bands(np.sin(lon * 9), lon, lat, [(0, 20), (20, 60)], permutations=99)
    >>> r["band"].tolist()
    ['0 km (same site)', '0–20 km', '20–60 km']
    >>> bool(r["I"].iloc[1] > 0.3)        # a smooth field: strong short-range I
    True
    """
    z = _as_vector(residuals, "residuals")
    _finite(z, "residuals")
    lon, lat = _check_lonlat(longitude, latitude, z.size)
    if colocated not in ("separate", "include", "exclude"):
        raise ValueError(f"colocated must be 'separate', 'include' or 'exclude', got {colocated!r}")
    bands = [(float(lo), float(hi)) for lo, hi in bands_km]
    if not bands:
        raise ValueError("bands_km is empty; give (lo, hi) pairs in km")
    for lo, hi in bands:
        if not (0 <= lo < hi and np.isfinite(hi)):
            raise ValueError(f"bands_km: each band needs 0 ≤ lo < hi (km), got ({lo}, {hi})")
    if int(permutations) != permutations or permutations < 0:
        raise ValueError(f"permutations must be an integer ≥ 0, got {permutations!r}")
    if z.size < 3:
        raise ValueError(f"residuals: need at least 3 samples, got {z.size}")
    i, j, d = geodesic_pairs(lon, lat, max(hi for _, hi in bands), max_pairs=max_pairs)
    zero = d == 0.0
    todo: list[tuple[str, float, float, np.ndarray]] = []
    if colocated == "separate":
        todo.append(("0 km (same site)", 0.0, 0.0, zero))
    for lo, hi in bands:
        sel = (d > lo) & (d <= hi)
        if lo == 0 and colocated == "include":
            sel |= zero
        todo.append((f"{lo:g}–{hi:g} km", lo, hi, sel))
    rows = []
    for name, lo, hi, sel in tqdm(todo, desc="Moran's I", disable=not progress):
        mi, n_conn = _moran(z, i[sel], j[sel], int(permutations), seed)
        row = {
            "band": name,
            "lo_km": lo,
            "hi_km": hi,
            "n": n_conn,
            "n_pairs": int(sel.sum()) // 2,
            "islands": int(z.size - n_conn),
            "I": math.nan,
            "expected_I": math.nan,
            "z_rand": math.nan,
            "p_sim": math.nan,
            "p_rand": math.nan,
        }
        if mi is not None:
            row.update(
                I=float(mi.I),
                expected_I=float(mi.EI),
                z_rand=float(mi.z_rand),
                p_sim=float(mi.p_sim) if permutations else math.nan,
                p_rand=float(mi.p_rand),
            )
        rows.append(row)
    return pd.DataFrame(rows)


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


# --------------------------------------------------------------------------
# chapter 07's results
# --------------------------------------------------------------------------
#: Keys of ``book/results/07_bias.json`` (issue 10), in order.
RESULT_KEYS = (
    "mean_error",
    "mean_error_pct_of_mean",
    "calibration_slope",
    "calibration_intercept",
    "conformal_coverage_90_random",
    "conformal_coverage_90_spatial",
    "interval_width_median",
    "morans_i_residuals",
    "morans_i_p",
    "aoa_fraction_inside",
    "rmse_inside_aoa",
    "rmse_outside_aoa",
)


def bias_results(
    heldout: pd.DataFrame,
    intervals: pd.DataFrame | None = None,
    aoa_map: pd.DataFrame | None = None,
    *,
    moran: pd.DataFrame | None = None,
    moran_scheme: Scheme = "spatial",
    width_scheme: Scheme = "random",
    log1p_target: bool = True,
    permutations: int = 999,
    seed: int = 0,
) -> dict[str, float | None]:
    """Chapter 07's results dict from held-out predictions, intervals and the AOA map.

    Parameters
    ----------
    heldout : pandas.DataFrame
        ``scheme, y_true, y_pred`` (see the module docstring); ``longitude,
        latitude`` for Moran's I. Mean error and calibration use the
        ``random`` rows (the study's protocol and the issue's criteria).
    intervals : pandas.DataFrame, optional
        ``scheme, y_true, lower, upper`` of 90% intervals (e.g.
        :func:`conformal_holdout`; its ``confidence`` column, when present,
        must be 0.9); coverage per scheme, median width of ``width_scheme``
        on the target's scale.
    aoa_map : pandas.DataFrame, optional
        ``y_true, y_pred, inside`` per map pixel (truth-scored), for the
        ``aoa_*`` and ``rmse_*_aoa`` keys.
    moran : pandas.DataFrame, optional
        A :func:`morans_i_bands` table; computed from the ``moran_scheme``
        rows of ``heldout`` (one row per sample: the first split's, if a
        sample is tested more than once) when not given.
    moran_scheme : {"spatial", "random"}
        Rows whose errors Moran's I describes. Spatial-block errors are the
        ones a map makes away from its samples, and every sample has one.
    width_scheme : {"random", "spatial"}
    log1p_target : bool
        The target is ``log1p(richness)``; adds ``mean_error_richness``,
        ``mean_error_pct_of_mean_richness`` (``expm1`` back-transform) and
        ``interval_width_median_richness``.
    permutations, seed : int
        Moran's I permutations and their seed.

    Returns
    -------
    dict
        The keys of :data:`RESULT_KEYS` (None where an input is missing),
        plus ``n_random``, ``n_spatial`` and the richness-scale keys.
        ``morans_i_residuals``/``morans_i_p`` are for the shortest *distance*
        band that has pairs (co-located cores excluded, see
        :func:`morans_i_bands`); ``morans_i_band_lo_km``/``_hi_km`` name it.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = rng.normal(3, 1, 200)
    >>> h = pd.DataFrame({"scheme": ["random"] * 200, "y_true": y,
    ...                   "y_pred": y + rng.normal(0, 0.5, 200)})
    >>> r = bias_results(h)
    >>> sorted(k for k, v in r.items() if v is None)[:3]
    ['aoa_fraction_inside', 'conformal_coverage_90_random', 'conformal_coverage_90_spatial']
    >>> abs(r["mean_error_pct_of_mean"]) < 2
    True
    """
    need = ["scheme", "y_true", "y_pred"]
    missing = [c for c in need if c not in heldout.columns]
    if missing:
        raise ValueError(f"heldout: missing columns {missing}; expected {need}")
    out: dict[str, float | None] = {k: None for k in RESULT_KEYS}
    rnd = heldout[heldout["scheme"] == "random"]
    spa = heldout[heldout["scheme"] == "spatial"]
    out["n_random"] = float(len(rnd))
    out["n_spatial"] = float(len(spa))
    if len(rnd):
        me = mean_error(rnd["y_true"], rnd["y_pred"])
        cal = calibration(rnd["y_true"], rnd["y_pred"])
        out.update(
            mean_error=me.mean_error,
            mean_error_pct_of_mean=me.mean_error_pct_of_mean,
            calibration_slope=cal.slope,
            calibration_intercept=cal.intercept,
        )
        if log1p_target:
            mr = mean_error(np.expm1(rnd["y_true"]), np.expm1(rnd["y_pred"]))
            out["mean_error_richness"] = mr.mean_error
            out["mean_error_pct_of_mean_richness"] = mr.mean_error_pct_of_mean
    if intervals is not None:
        if "confidence" in intervals.columns and not np.allclose(intervals["confidence"], 0.9):
            raise ValueError(
                "intervals: the results keys are for 90% intervals, got confidence "
                f"{sorted(intervals['confidence'].unique().tolist())}"
            )
        cov = coverage_table(intervals, log1p_target=log1p_target)
        if "calibration" in cov.columns and cov["scheme"].duplicated().any():
            raise ValueError(
                "intervals: several calibrations per scheme; pass the rows of one calibration"
            )
        cov = cov.set_index("scheme")
        for s in ("random", "spatial"):
            if s in cov.index:
                out[f"conformal_coverage_90_{s}"] = float(cov.loc[s, "coverage"])
        if width_scheme in cov.index:
            out["interval_width_median"] = float(cov.loc[width_scheme, "width_median"])
            if log1p_target:
                out["interval_width_median_richness"] = float(
                    cov.loc[width_scheme, "width_median_richness"]
                )
    if moran is None:
        rows = heldout[heldout["scheme"] == moran_scheme]
        if len(rows) >= 3 and {"longitude", "latitude"} <= set(rows.columns):
            if "sample_id" in rows.columns:
                rows = rows.drop_duplicates("sample_id")
            moran = morans_i_bands(
                rows["y_pred"] - rows["y_true"],
                rows["longitude"],
                rows["latitude"],
                permutations=permutations,
                seed=seed,
            )
    if moran is not None and len(moran):
        bands = moran[(moran["hi_km"] > 0) & np.isfinite(moran["I"])]
        if len(bands):
            first = bands.sort_values("hi_km").iloc[0]
            out["morans_i_residuals"] = float(first["I"])
            out["morans_i_p"] = float(first["p_sim"])
            out["morans_i_band_lo_km"] = float(first["lo_km"])
            out["morans_i_band_hi_km"] = float(first["hi_km"])
    if aoa_map is not None:
        need = ["y_true", "y_pred", "inside"]
        missing = [c for c in need if c not in aoa_map.columns]
        if missing:
            raise ValueError(f"aoa_map: missing columns {missing}; expected {need}")
        a = aoa_errors(aoa_map["y_true"], aoa_map["y_pred"], aoa_map["inside"].to_numpy(bool))
        for k in ("aoa_fraction_inside", "rmse_inside_aoa", "rmse_outside_aoa"):
            out[k] = a[k]
    return {k: _clean(v) for k, v in out.items()}
