"""Errors and calibration of held-out predictions: mean error, calibration, errors against covariates.

Part of the bias checks of chapter 07 (:mod:`fungi_ssl.uncertainty.bias` describes
the held-out table and the sign convention): :func:`heldout_table`,
:func:`mean_error`, :func:`error_table`, :func:`crossfit_smearing`,
:func:`calibration`, :func:`calibration_bins`, :func:`plot_calibration`,
:func:`error_covariate_correlation`, :func:`error_covariate_bins`,
:func:`error_by_class` and :func:`dominant_landcover`; and the input checks the
other bias modules share.
"""


from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

__all__ = [
    "Calibration",
    "MeanError",
    "calibration",
    "calibration_bins",
    "crossfit_smearing",
    "dominant_landcover",
    "error_by_class",
    "error_covariate_bins",
    "error_covariate_correlation",
    "error_table",
    "heldout_table",
    "mean_error",
    "plot_calibration",
]


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
