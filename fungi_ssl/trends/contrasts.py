"""Ancient against other woodland: area-weighted slopes, their difference and its interval.

Chapter 08 and ``fungi-ssl trend`` summarise each woodland type by the
area-weighted mean slope of its polygons (:func:`area_weighted_slope`; the
weight is the polygon's pixels in the map, all 10 m), from the per-polygon
trends of :func:`fungi_ssl.trends.polygons.polygon_trends`, and compare the
two by their difference (ancient − other) with an interval:

* :func:`park_year_contrast`: the book's interval, whose units of
  replication are parks and park-years and which carries the spread of the
  map's response to each polygon's change, its slope gain (relative SD
  :data:`SLOPE_GAIN_SD`);
* :func:`calibrate_slope_gain`: the slope-gain SD that the spread of a
  contrast over replicate worlds asks for;
* :func:`woodland_contrast` (:class:`WoodlandContrast`): the interval that
  resamples polygons as if independent, kept for comparison.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from fungi_ssl.trends.polygons import (
    DEFAULT_CONFIDENCE,
    MIN_YEARS,
    WOODLAND_TYPES,
    _check_years,
    _series_matrix,
    _theil_sen_rows,
)

__all__ = [
    "SLOPE_GAIN_SD",
    "WoodlandContrast",
    "area_weighted_slope",
    "calibrate_slope_gain",
    "park_year_contrast",
    "woodland_contrast",
]


#: Relative SD of a polygon's map slope about its true slope (:func:`park_year_contrast`'s
#: ``slope_gain_sd``), the default of ``fungi-ssl trend``: chapter 08 measures it over its
#: replicate worlds (:func:`calibrate_slope_gain`) and reports the value it finds; this is
#: the full profile's measurement over 40 changing worlds (0.37), rounded up to one decimal.
SLOPE_GAIN_SD = 0.4
def _contrast_frame(trends: pd.DataFrame, weight: str, strata: Sequence[str]) -> pd.DataFrame:
    need = ["slope", weight, *strata]
    if "woodland" not in strata:
        raise ValueError(f"strata must include 'woodland', got {list(strata)}")
    missing = [c for c in need if c not in trends.columns]
    if missing:
        raise ValueError(f"trends: missing column(s) {missing}; join the polygons' attributes "
                         f"with polygon_trends(zonal, polygons)")
    t = trends[np.isfinite(trends["slope"].to_numpy(dtype=float))
               & (trends[weight].to_numpy(dtype=float) > 0)]
    unknown = sorted(set(t["woodland"].astype(str)) - set(WOODLAND_TYPES))
    if unknown:
        raise ValueError(f"trends: woodland must be one of {list(WOODLAND_TYPES)}, got {unknown}")
    for kind in WOODLAND_TYPES:
        if not (t["woodland"] == kind).any():
            raise ValueError(f"trends: no {kind!r} woodland polygon with a finite slope")
    return t


def area_weighted_slope(trends: pd.DataFrame, weight: str = "n_pixels") -> pd.Series:
    """Area-weighted mean slope of each woodland type (polygons with a finite slope).

    Examples
    --------
    >>> t = pd.DataFrame({"woodland": ["ancient", "ancient", "other"],
    ...                   "slope": [-0.02, -0.04, 0.01], "n_pixels": [300, 100, 50]})
    >>> area_weighted_slope(t).round(4).to_dict()
    {'ancient': -0.025, 'other': 0.01}
    """
    t = _contrast_frame(trends, weight, ("woodland",))
    w = t[weight].to_numpy(dtype=float)
    ws = w * t["slope"].to_numpy(dtype=float)
    g = t["woodland"].to_numpy()
    return pd.Series({k: ws[g == k].sum() / w[g == k].sum() for k in WOODLAND_TYPES},
                     name="slope")


@dataclass(frozen=True)
class WoodlandContrast:
    """Ancient against other woodland: area-weighted mean slopes and their difference.

    ``method`` names the interval: ``"park_years"`` (:func:`park_year_contrast`,
    the book's) or ``"polygons"`` (:func:`woodland_contrast`, polygons as
    independent units).

    Attributes
    ----------
    slope_ancient, slope_other : float
        Area-weighted mean slope (log richness per year) of each type.
    difference : float
        ``slope_ancient − slope_other``.
    ci : tuple of float
        Interval of the difference at ``confidence`` (percentile bootstrap
        for ``"polygons"``; ``difference ± t × se`` for ``"park_years"``).
    confidence : float
    n_boot, seed : int
    n_ancient, n_other : int
        Polygons with a finite slope.
    boot : numpy.ndarray
        The bootstrap differences.
    method : str
        ``"park_years"`` or ``"polygons"``.
    n_parks, n_park_years : int or None
        Parks and park-years the ``"park_years"`` interval rests on.
    se_residual : float or None
        ``"park_years"``: SD of the bootstrap draws (the error seen in the
        yearly residuals).
    gain_load : float or None
        ``"park_years"``: ``Σ (w_p / W_type)² ŝ_p²`` over polygons, what a
        slope-gain SD of 1 adds to the variance of the difference.
    slope_gain_sd : float
        The relative SD of a polygon's map slope about its true slope
        (:func:`park_year_contrast`) the interval carries.
    df : int or None
        Degrees of freedom of the t quantile (``"park_years"``).
    """

    slope_ancient: float
    slope_other: float
    difference: float
    ci: tuple[float, float]
    confidence: float
    n_boot: int
    seed: int
    n_ancient: int
    n_other: int
    boot: np.ndarray
    method: str = "polygons"
    n_parks: int | None = None
    n_park_years: int | None = None
    se_residual: float | None = None
    gain_load: float | None = None
    slope_gain_sd: float = 0.0
    df: int | None = None

    @property
    def se(self) -> float | None:
        """Standard error of the difference: residual and slope-gain parts together (``"park_years"``)."""
        if self.se_residual is None or self.gain_load is None:
            return None
        return float(np.sqrt(self.se_residual**2 + self.slope_gain_sd**2 * self.gain_load))

    def with_slope_gain(self, slope_gain_sd: float) -> WoodlandContrast:
        """The same contrast with another slope-gain SD (:func:`park_year_contrast`); no redraw."""
        if self.se_residual is None or self.gain_load is None or self.df is None:
            raise ValueError("with_slope_gain needs a park_year_contrast (method 'park_years')")
        g = _check_gain_sd(slope_gain_sd)
        se = np.sqrt(self.se_residual**2 + g**2 * self.gain_load)
        half = float(stats.t.ppf(0.5 + self.confidence / 2.0, self.df)) * float(se)
        return replace(self, ci=(self.difference - half, self.difference + half), slope_gain_sd=g)

    def to_dict(self) -> dict[str, Any]:
        """The plain numbers (no bootstrap draws), for a results JSON."""
        return {"slope_ancient": self.slope_ancient, "slope_other": self.slope_other,
                "slope_difference": self.difference, "slope_difference_ci": list(self.ci),
                "confidence": self.confidence, "n_boot": self.n_boot, "seed": self.seed,
                "n_ancient": self.n_ancient, "n_other": self.n_other,
                "interval": self.method, "n_parks": self.n_parks,
                "n_park_years": self.n_park_years, "se": self.se,
                "se_residual": self.se_residual, "gain_load": self.gain_load,
                "slope_gain_sd": self.slope_gain_sd, "df": self.df}


def woodland_contrast(trends: pd.DataFrame, *, n_boot: int = 2000,
                      confidence: float = DEFAULT_CONFIDENCE, seed: int = 0,
                      weight: str = "n_pixels",
                      strata: Sequence[str] = ("park", "woodland")) -> WoodlandContrast:
    """Area-weighted mean slope of ancient and of other woodland, their difference and its CI.

    The bootstrap resamples polygons with replacement within each stratum
    (park × woodland type, keeping each stratum's count), recomputes both
    area-weighted means and their difference, and takes the percentile
    interval. Polygons, not pixels, are the units: pixels of a polygon share
    its errors.

    Parameters
    ----------
    trends : pandas.DataFrame
        :func:`polygon_trends`'s table with ``woodland``, ``weight`` and the
        ``strata`` columns; rows with a NaN slope are left out.
    n_boot : int
        Bootstrap draws.
    confidence : float
        Level of the interval.
    seed : int
        Seed of the bootstrap.
    weight : str
        Area weight column (``n_pixels``: the polygon's 10 m pixels in the map).
    strata : sequence of str
        Columns whose combinations are resampled separately.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> t = pd.DataFrame({"park": np.repeat(["A", "B"], 40),
    ...                   "woodland": np.tile(np.repeat(["ancient", "other"], 20), 2),
    ...                   "n_pixels": rng.integers(25, 400, 80)})
    >>> t["slope"] = np.where(t["woodland"] == "ancient", -0.03, -0.01) + rng.normal(0, 0.01, 80)
    >>> c = woodland_contrast(t, n_boot=500, seed=1)
    >>> round(c.difference, 3), c.ci[0] < -0.02 < c.ci[1]
    (-0.02, True)
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    t = _contrast_frame(trends, weight, tuple(strata))
    point = area_weighted_slope(t, weight)
    w_all = t[weight].to_numpy(dtype=float)
    s_all = t["slope"].to_numpy(dtype=float)
    kind = t["woodland"].to_numpy()
    rng = np.random.default_rng(seed)
    sums = {k: np.zeros(n_boot) for k in WOODLAND_TYPES}
    wsum = {k: np.zeros(n_boot) for k in WOODLAND_TYPES}
    keys = t.groupby(list(strata), sort=True, dropna=False).ngroup().to_numpy()
    for key in range(int(keys.max()) + 1):
        rows = np.flatnonzero(keys == key)
        pick = rows[rng.integers(0, len(rows), size=(n_boot, len(rows)))]
        k = kind[rows[0]]
        sums[k] += (w_all[pick] * s_all[pick]).sum(axis=1)
        wsum[k] += w_all[pick].sum(axis=1)
    boot = sums["ancient"] / wsum["ancient"] - sums["other"] / wsum["other"]
    a = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(boot, [a, 1.0 - a])
    return WoodlandContrast(
        slope_ancient=float(point["ancient"]), slope_other=float(point["other"]),
        difference=float(point["ancient"] - point["other"]), ci=(float(lo), float(hi)),
        confidence=float(confidence), n_boot=int(n_boot), seed=int(seed),
        n_ancient=int((kind == "ancient").sum()), n_other=int((kind == "other").sum()),
        boot=boot,
    )


#: Bootstrap draws per block of :func:`park_year_contrast` (bounds its memory).
_DRAW_BLOCK = 100


def _weighted_group_mean(r: np.ndarray, w: np.ndarray, group: np.ndarray,
                         n_group: int) -> np.ndarray:
    """Per group and column, the ``w``-weighted mean of the finite entries of ``r`` (0 if none)."""
    ok = np.isfinite(r)
    rw = np.where(ok, r, 0.0) * w[:, None]
    ww = ok * w[:, None]
    num = np.zeros((n_group, r.shape[1]))
    den = np.zeros((n_group, r.shape[1]))
    np.add.at(num, group, rw)
    np.add.at(den, group, ww)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def park_year_contrast(zonal: pd.DataFrame, *, log: bool = False, min_valid_fraction: float = 0.5,
                       years: Iterable[int] | None = None, n_boot: int = 2000,
                       confidence: float = DEFAULT_CONFIDENCE, seed: int = 0,
                       weight: str = "n_pixels", id_column: str = "polygon_id",
                       min_years: int = MIN_YEARS,
                       slope_gain_sd: float = 0.0) -> WoodlandContrast:
    """Ancient minus other woodland slope, with parks and park-years as units of replication.

    The point estimate is :func:`woodland_contrast`'s: area-weighted mean
    Theil–Sen slopes of each type and their difference. The interval does not
    treat polygons as independent. Every polygon of a park window shares that
    year's map error (clouds kilometres across, green-up weather per degree
    cell, soil moisture of each radar date), and parks hold different shares
    of ancient woodland, so a park's drift becomes an ancient-minus-other
    difference. The interval is a **wild bootstrap of the yearly residuals,
    by park-year**:

    1. each polygon's yearly series (as :func:`polygon_trends`) is split into
       its Theil–Sen line and residuals (centred per polygon);
    2. the residuals are split into a park × year part (the area-weighted mean
       residual of the park's polygons that year, less the mean over parks
       that year: a year effect shared by every park moves ancient and other
       woodland alike and cancels from the difference), a park × year × type
       part and a polygon × year part;
    3. each draw multiplies every park-year's, park-year-type's and
       polygon-year's part by its own random sign (Rademacher), adds them back
       to the lines, refits every polygon's Theil–Sen slope and recomputes the
       difference. Parts are rescaled for the degrees of freedom the lines and
       the year means took (each year's residuals divided by
       ``sqrt(1 − h_t)``, ``h_t`` its leverage in a straight line over the
       ``T`` years, as HC2 does; the park-year part times ``sqrt(K / (K − 1))``
       for ``K`` parks);
    4. a map does not respond to every stand's change alike: how strongly a
       stand's map follows its loss of canopy depends on the stand (its
       spectral make-up), so a polygon's map slope is its true slope times a
       gain that differs from polygon to polygon. That error is the same in
       every year of the polygon, a slope error and not a yearly residual, so
       no draw of residuals can see it. With ``slope_gain_sd`` (``σ_g``, the
       relative SD of a polygon's map slope about its true slope, measured on
       replicate worlds by :func:`calibrate_slope_gain`) each polygon adds
       ``(w_p / W_type)² σ_g² ŝ_p²`` to the variance of the difference
       (``gain_load`` is the sum of ``(w_p / W_type)² ŝ_p²``);
    5. the interval is ``difference ± t × se``, ``se² = SD(draws)² + σ_g² ×
       gain_load``, with ``t`` the quantile of Student's t on
       ``(K − 1)(T − 2)`` degrees of freedom, the park-years left to estimate
       the shared error (one park: the polygon-years'), because a standard
       error from few units is itself uncertain.

    The truth it aims at is the difference of the same polygons' true slopes
    (a fixed set of polygons, as an inventory is): spread of true slopes
    between polygons is not error and is not resampled. With ``K`` parks and
    ``T`` years the shared error is estimated from ``K × T`` park-years, of
    which ``(K − 1)(T − 2)`` degrees of freedom remain; with one park, the
    shared park-year error cancels from the difference and only the
    type and polygon parts are drawn.

    Parameters
    ----------
    zonal : pandas.DataFrame
        :func:`zonal_means`'s table (``polygon_id, year, mean, n_pixels,
        n_valid``) joined with each polygon's ``park`` and ``woodland``, all
        parks in one table.
    log : bool
        Fit ``log(mean)`` (as :func:`polygon_trends`); False when the maps hold
        log richness already.
    min_valid_fraction, years, min_years, id_column :
        As :func:`polygon_trends`.
    n_boot : int
        Bootstrap draws.
    confidence : float
        Level of the interval.
    seed : int
        Seed of the signs.
    weight : str
        Area weight column (``n_pixels``).
    slope_gain_sd : float
        Relative SD of a polygon's map slope about its true slope (0: only
        the error the yearly residuals show; :data:`SLOPE_GAIN_SD` is chapter
        08's measurement).

    Returns
    -------
    WoodlandContrast
        With ``method="park_years"``, ``n_parks``, ``n_park_years``,
        ``se_residual``, ``gain_load``, ``slope_gain_sd`` and ``df``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> ids = [f"p{i}" for i in range(60)]
    >>> park = np.repeat(["A", "B", "C"], 20)
    >>> kind = np.tile(np.repeat(["ancient", "other"], 10), 3)
    >>> slope = np.where(kind == "ancient", -0.03, -0.01)
    >>> shared = rng.normal(0, 0.02, (3, 8))                 # park × year map error
    >>> t = np.arange(8)
    >>> y = 3 + slope[:, None] * t + shared[np.repeat([0, 1, 2], 20)] + rng.normal(0, 0.01, (60, 8))
    >>> z = pd.DataFrame({"polygon_id": np.repeat(ids, 8), "year": np.tile(2017 + t, 60),
    ...                   "mean": y.ravel(), "n_pixels": 100, "n_valid": 100,
    ...                   "park": np.repeat(park, 8), "woodland": np.repeat(kind, 8)})
    >>> c = park_year_contrast(z, n_boot=500)
    >>> c.method, c.n_parks, c.n_park_years, c.ci[0] < -0.02 < c.ci[1]
    ('park_years', 3, 24, True)
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    if int(n_boot) < 2:
        raise ValueError(f"n_boot must be a positive integer of at least 2, got {n_boot!r}")
    gain_sd = _check_gain_sd(slope_gain_sd)
    need = [id_column, "year", "mean", "n_pixels", "n_valid", "park", "woodland"]
    missing = [c for c in need if c not in zonal.columns]
    if missing:
        raise ValueError(f"zonal: missing column(s) {missing}; expected zonal_means' table joined "
                         f"with the polygons' park and woodland")
    use = _check_years(pd.unique(zonal["year"]), "zonal", years, min_years)
    ids, vals, n_pix = _series_matrix(zonal, use, log=log, min_valid_fraction=min_valid_fraction,
                                      id_column=id_column)
    attrs = (zonal.drop_duplicates(id_column).set_index(id_column)
             .reindex(ids)[["park", "woodland", *([weight] if weight != "n_pixels" else [])]])
    w = (n_pix if weight == "n_pixels" else attrs[weight].to_numpy()).astype(float)
    ts = _theil_sen_rows(use, vals, confidence)
    slope = np.where(np.isfinite(vals).sum(axis=1) >= min_years, ts["slope"], np.nan)
    frame = pd.DataFrame({"slope": slope, "n_pixels": w, "woodland": attrs["woodland"].to_numpy(),
                          "park": attrs["park"].to_numpy()})
    keep = frame.index.isin(_contrast_frame(frame, "n_pixels", ("park", "woodland")).index)
    vals, slope, w = vals[keep], slope[keep], w[keep]
    kind = frame["woodland"].to_numpy()[keep]
    park_codes, park_names = pd.factorize(frame["park"].to_numpy()[keep])
    K, T = len(park_names), len(use)
    anc = kind == "ancient"
    point = {k: float((w[kind == k] * slope[kind == k]).sum() / w[kind == k].sum())
             for k in WOODLAND_TYPES}
    # lines and centred residuals
    x = use.astype(float)
    ok = np.isfinite(vals)
    fitted = ts["intercept"][keep][:, None] + slope[:, None] * x[None, :]
    r = vals - fitted
    r = r - np.nanmean(np.where(ok, r, np.nan), axis=1, keepdims=True)
    # park-year, park-year-type and polygon-year parts
    u_raw = _weighted_group_mean(r, w, park_codes, K)                       # (K, T)
    kg = park_codes * 2 + (~anc).astype(np.int64)
    v = _weighted_group_mean(r - u_raw[park_codes], w, kg, 2 * K)           # (2K, T)
    e = r - u_raw[park_codes] - v[kg]
    if K > 1:
        u = (u_raw - u_raw.mean(axis=0, keepdims=True)) * np.sqrt(K / (K - 1))
    else:
        u = np.zeros_like(u_raw)
    # HC2: a residual of year t of a fitted line has variance σ²(1 − h_t)
    lev = 1.0 / T + (x - x.mean()) ** 2 / ((x - x.mean()) ** 2).sum()
    c_t = 1.0 / np.sqrt(np.clip(1.0 - lev, 1e-6, None))
    u, v, e = (np.where(np.isfinite(a), a, 0.0) * c_t[None, :] for a in (u, v, e))
    rng = np.random.default_rng(seed)
    boot = np.empty(int(n_boot))
    wa, wo = w * anc, w * ~anc
    for b0 in range(0, int(n_boot), _DRAW_BLOCK):
        nb = min(_DRAW_BLOCK, int(n_boot) - b0)
        s_u = rng.choice([-1.0, 1.0], size=(nb, K, T))
        s_v = rng.choice([-1.0, 1.0], size=(nb, 2 * K, T))
        s_e = rng.choice([-1.0, 1.0], size=(nb, *e.shape))
        ystar = (fitted[None] + s_u[:, park_codes] * u[park_codes][None]
                 + s_v[:, kg] * v[kg][None] + s_e * e[None])
        ystar = np.where(ok[None], ystar, np.nan)
        sl = _theil_sen_rows(use, ystar.reshape(-1, T), confidence)["slope"].reshape(nb, -1)
        sl = np.where(np.isfinite(sl), sl, 0.0)
        boot[b0:b0 + nb] = (sl @ wa) / wa.sum() - (sl @ wo) / wo.sum()
    diff = point["ancient"] - point["other"]
    df = (K - 1) * (T - 2) if K > 1 else len(w) * (T - 2)
    se_res = float(boot.std(ddof=1))
    share = np.where(anc, w / wa.sum(), w / wo.sum())
    load = float(((share * slope) ** 2).sum())
    se = np.sqrt(se_res**2 + gain_sd**2 * load)
    half = float(stats.t.ppf(0.5 + confidence / 2.0, df)) * float(se)
    return WoodlandContrast(
        slope_ancient=point["ancient"], slope_other=point["other"],
        difference=diff, ci=(diff - half, diff + half),
        confidence=float(confidence), n_boot=int(n_boot), seed=int(seed),
        n_ancient=int(anc.sum()), n_other=int((~anc).sum()), boot=boot,
        method="park_years", n_parks=int(K), n_park_years=int(K * T),
        se_residual=se_res, gain_load=load, slope_gain_sd=gain_sd, df=int(df),
    )


def _check_gain_sd(value: float) -> float:
    g = float(value)
    if not np.isfinite(g) or g < 0:
        raise ValueError(f"slope_gain_sd must be a finite number ≥ 0, got {value!r}")
    return g


def calibrate_slope_gain(differences: Sequence[float], se_residual: Sequence[float],
                         gain_load: Sequence[float]) -> float:
    """The slope-gain SD that the spread of a contrast over replicate worlds asks for.

    Over worlds that share a landscape and its truth but each see it through
    their own weather, clouds and sensor noise, the ancient-minus-other
    difference scatters by more than its residual standard errors say when
    the map's response to each stand's change varies (see
    :func:`park_year_contrast`, step 4). With ``V`` the variance of the
    differences over the worlds, ``s_r`` their residual standard errors and
    ``L`` their gain loads,

    ``σ_g² = max(0, (V − mean(s_r²)) / mean(L))``.

    Only the worlds' estimates enter, never their truth. To score a world's
    interval, calibrate on the other worlds.

    Parameters
    ----------
    differences, se_residual, gain_load : sequence of float
        One entry per changing world (:class:`WoodlandContrast`'s
        ``difference``, ``se_residual`` and ``gain_load``), at least 3.

    Returns
    -------
    float
        ``σ_g``, relative SD of a polygon's map slope about its true slope.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> load = np.full(400, 2e-4)                    # (w/W)² ŝ² summed over polygons
    >>> d = -0.01 + rng.normal(0, np.sqrt(0.003**2 + 0.5**2 * load))
    >>> round(calibrate_slope_gain(d, np.full(400, 0.003), load), 1)
    0.5
    """
    d = np.asarray(differences, dtype=float)
    s = np.asarray(se_residual, dtype=float)
    g = np.asarray(gain_load, dtype=float)
    if not (d.shape == s.shape == g.shape) or d.ndim != 1:
        raise ValueError(f"differences, se_residual and gain_load must be 1-d and of one length, "
                         f"got shapes {d.shape}, {s.shape}, {g.shape}")
    if len(d) < 3 or not (np.isfinite(d).all() and np.isfinite(s).all() and np.isfinite(g).all()):
        raise ValueError(f"calibrate_slope_gain needs at least 3 worlds with finite values, got "
                         f"{len(d)}")
    if g.mean() <= 0:
        return 0.0
    return float(np.sqrt(max(0.0, (d.var(ddof=1) - (s**2).mean()) / g.mean())))


# --------------------------------------------------------------------------
# the study's two figures
# --------------------------------------------------------------------------
