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

Where it is
-----------
* :mod:`fungi_ssl.uncertainty.errors`: :func:`heldout_table`;
  :func:`mean_error`, :func:`error_table`: mean error and mean error as a
  percentage of the observed mean, on log richness and on richness
  (``expm1`` of the log prediction, optionally with Duan's smearing factor
  from :func:`crossfit_smearing`, since ``expm1`` of a mean log is a median,
  not a mean);
* :mod:`fungi_ssl.uncertainty.errors`: :func:`calibration`, :func:`calibration_bins`, :func:`plot_calibration`:
  slope and intercept of observed on predicted, and the binned
  predicted-against-observed plot;
* :mod:`fungi_ssl.uncertainty.errors`: :func:`error_covariate_correlation`, :func:`error_covariate_bins`,
  :func:`error_by_class`, :func:`dominant_landcover`: errors against each
  1 km covariate and by land-cover class;
* :mod:`fungi_ssl.uncertainty.autocorrelation`: :func:`morans_i_bands`: Moran's I of the errors in geodesic distance bands,
  with PySAL (``esda`` on ``libpysal`` weights) and a permutation p-value;
* :mod:`fungi_ssl.uncertainty.intervals`: :class:`ConformalRegressor`, :func:`conformal_holdout`,
  :func:`interval_coverage`, :func:`coverage_table`: split-conformal and CV+
  prediction intervals and their empirical coverage under random splits and
  under spatial blocks;
* :mod:`fungi_ssl.uncertainty.aoa`: :class:`AreaOfApplicability`, :func:`importance_weights`,
  :func:`aoa_errors`: the dissimilarity index and area of applicability of
  Meyer & Pebesma (2021);
* here: :func:`bias_results`, chapter 07's results dict.

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

import numpy as np
import pandas as pd

from fungi_ssl.uncertainty.aoa import aoa_errors
from fungi_ssl.uncertainty.autocorrelation import morans_i_bands
from fungi_ssl.uncertainty.errors import Scheme, _clean, calibration, mean_error
from fungi_ssl.uncertainty.intervals import coverage_table

__all__ = [
    "RESULT_KEYS",
    "bias_results",
]

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
