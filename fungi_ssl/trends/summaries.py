"""Chapter 08's figures and results: the change map, yearly summaries, recovered against true slopes.

* :func:`difference_map`, :func:`plot_difference_map`: the last year's map
  minus the first's, on a diverging scale centred on zero;
* :func:`yearly_summary`, :func:`plot_yearly_summary`: yearly means per
  woodland type with the interquartile range as a band;
* :func:`plot_slope_recovery`: recovered against true slope per polygon;
* :func:`trend_results`: chapter 08's results dict (:data:`RESULT_KEYS`)
  from the recovered, true and null-world trends.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr

from fungi_ssl.trends.contrasts import area_weighted_slope, park_year_contrast, woodland_contrast
from fungi_ssl.trends.polygons import (
    DEFAULT_ALPHA,
    DEFAULT_CONFIDENCE,
    _grid,
    _year_values,
    check_year_stack,
    label_map,
)

if TYPE_CHECKING:  # pragma: no cover
    import geopandas as gpd
    import matplotlib.axes

__all__ = [
    "RESULT_KEYS",
    "difference_map",
    "plot_difference_map",
    "plot_slope_recovery",
    "plot_yearly_summary",
    "trend_results",
    "yearly_summary",
]


#: Chapter 08's results keys (all slopes in log richness per year).
RESULT_KEYS: tuple[str, ...] = (
    "slope_ancient",
    "slope_other",
    "slope_difference",
    "slope_difference_ci",
    "true_slope_ancient",
    "true_slope_other",
    "true_slope_difference",
    "null_slope_difference_ci",
    "false_positive_rate",
    "detection_power",
    "polygon_slope_correlation",
)


# --------------------------------------------------------------------------
# the yearly stack
# --------------------------------------------------------------------------

def difference_map(maps: xr.DataArray, first: int | None = None, last: int | None = None, *,
                   log: bool = False, polygons: gpd.GeoDataFrame | None = None,
                   id_column: str = "polygon_id") -> xr.DataArray:
    """The last year's map minus the first's (e.g. 2024 − 2017), with the maps' CRS.

    Parameters
    ----------
    maps : xarray.DataArray
        ``(year, y, x)`` stack with a CRS.
    first, last : int, optional
        Years to compare (default: the stack's first and last).
    log : bool
        ``log(last) − log(first)`` instead of the plain difference.
    polygons : geopandas.GeoDataFrame, optional
        When given, pixels outside every polygon are NaN (e.g. woodland only).
    id_column : str
        The polygon id column.

    Examples
    --------
    >>> m = xr.DataArray(np.arange(8.0).reshape(2, 2, 2), dims=("year", "y", "x"),
    ...                  coords={"year": [2017, 2024], "y": [15.0, 5.0], "x": [5.0, 15.0]})
    >>> difference_map(m.rio.write_crs(32630)).values.tolist()
    [[4.0, 4.0], [4.0, 4.0]]
    """
    if not isinstance(maps, xr.DataArray) or "year" not in maps.dims:
        raise ValueError("maps: expected an xarray.DataArray with dims ('year', 'y', 'x')")
    yrs = _year_values(maps["year"].values, "maps")
    first = int(yrs.min()) if first is None else int(first)
    last = int(yrs.max()) if last is None else int(last)
    stack = check_year_stack(maps, years=[first, last])
    a = stack.sel(year=first, drop=True)
    b = stack.sel(year=last, drop=True)
    out = (np.log(b) - np.log(a)) if log else (b - a)
    if polygons is not None:
        labels, _ = label_map(stack, polygons, id_column=id_column)
        out = out.where(labels > 0)
    out.name = "log_difference" if log else "difference"
    out.attrs.update(first_year=first, last_year=last, log=bool(log))
    return out.rio.write_crs(maps.rio.crs)


def yearly_summary(maps: xr.DataArray, polygons: gpd.GeoDataFrame, *,
                   by: Sequence[str] = ("park", "woodland"),
                   years: Iterable[int] | None = None,
                   id_column: str = "polygon_id") -> pd.DataFrame:
    """Yearly mean and interquartile range of the pixels in each group of polygons.

    Parameters
    ----------
    maps : xarray.DataArray
        ``(year, y, x)`` stack with a CRS.
    polygons : geopandas.GeoDataFrame
        With a CRS, ``id_column`` and the ``by`` columns.
    by : sequence of str
        Polygon columns that define the groups (the study: park and woodland type).
    years : iterable of int, optional
        Years expected in the stack.
    id_column : str
        The polygon id column.

    Returns
    -------
    pandas.DataFrame
        ``*by, year, mean, q25, median, q75, n_valid``: over the group's
        valid pixels (not polygon means), so the band is the spread of the
        map within the group.

    Examples
    --------
    >>> import geopandas as gpd
    >>> from shapely.geometry import box
    >>> m = xr.DataArray(np.arange(16.0).reshape(4, 2, 2), dims=("year", "y", "x"),
    ...                  coords={"year": range(2017, 2021), "y": [15.0, 5.0], "x": [5.0, 15.0]})
    >>> p = gpd.GeoDataFrame({"polygon_id": ["a"], "woodland": ["other"]},
    ...                      geometry=[box(0, 0, 20, 20)], crs=32630)
    >>> yearly_summary(m.rio.write_crs(32630), p, by=["woodland"]).iloc[0].to_dict()
    {'woodland': 'other', 'year': 2017, 'mean': 1.5, 'q25': 0.75, 'median': 1.5, 'q75': 2.25, 'n_valid': 4}
    """
    stack = check_year_stack(maps, years)
    missing = [c for c in by if c not in polygons.columns]
    if missing:
        raise ValueError(f"polygons: no column(s) {missing} to group by")
    labels, polygons = label_map(stack, polygons, id_column=id_column)
    if by:
        codes = polygons.groupby(list(by), sort=True, dropna=False).ngroup().to_numpy()
        first = pd.Series(np.arange(len(codes))).groupby(codes).first()
        names = [tuple(polygons[list(by)].iloc[i]) for i in first.to_numpy()]
    else:
        codes, names = np.zeros(len(polygons), dtype=np.int64), [()]
    code_map = np.concatenate([[-1], codes])[labels].ravel()
    values = np.asarray(stack.values).reshape(stack.sizes["year"], -1)
    yrs = np.asarray(stack["year"].values, dtype=np.int64)
    rows = []
    for g, name in enumerate(names):
        pix = np.flatnonzero(code_map == g)
        if pix.size == 0:
            continue
        v = values[:, pix].astype(float)
        v[~np.isfinite(v)] = np.nan
        n_valid = np.isfinite(v).sum(axis=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN years give NaN
            mean = np.nanmean(v, axis=1)
            q = np.nanquantile(v, [0.25, 0.5, 0.75], axis=1)
        for t, year in enumerate(yrs):
            rows.append([*name, int(year), mean[t], q[0, t], q[1, t], q[2, t], int(n_valid[t])])
    return pd.DataFrame(rows, columns=[*by, "year", "mean", "q25", "median", "q75", "n_valid"])


def plot_difference_map(diff: xr.DataArray, ax: matplotlib.axes.Axes | None = None, *,
                        polygons: gpd.GeoDataFrame | None = None, vmax: float | None = None,
                        colorbar: bool = True, title: str | None = None) -> matplotlib.axes.Axes:
    """Draw a :func:`difference_map` on a diverging scale centred on zero.

    Parameters
    ----------
    diff : xarray.DataArray
        ``(y, x)`` with a CRS.
    ax : matplotlib.axes.Axes, optional
        Where to draw (default: a new figure).
    polygons : geopandas.GeoDataFrame, optional
        Outlines drawn on top (reprojected to the map's CRS when needed).
    vmax : float, optional
        Colour limit ``±vmax`` (default: the 98th percentile of ``|diff|``).
    colorbar : bool
        Add a colour bar.
    title : str, optional
        Default: ``"<last> − <first>"``.

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> d = xr.DataArray(np.array([[1.0, -1.0], [0.5, np.nan]]), dims=("y", "x"),
    ...                  coords={"y": [15.0, 5.0], "x": [5.0, 15.0]}).rio.write_crs(32630)
    >>> plot_difference_map(d).get_xlabel()
    'easting (m)'
    """
    import matplotlib.pyplot as plt

    from fungi_ssl.core.plotting import DIVERGING_CMAP

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4.5))
    vals = np.asarray(diff.values, dtype=float)
    if vmax is None:
        fin = np.abs(vals[np.isfinite(vals)])
        vmax = float(np.quantile(fin, 0.98)) if fin.size else 1.0
        vmax = vmax if vmax > 0 else 1.0
    _, (left, bottom, right, top) = _grid(diff)
    origin = "upper" if diff["y"].values[0] > diff["y"].values[-1] else "lower"
    im = ax.imshow(vals, extent=(left, right, bottom, top), origin=origin, cmap=DIVERGING_CMAP,
                   vmin=-vmax, vmax=vmax, interpolation="nearest")
    if polygons is not None:
        p = polygons if polygons.crs == diff.rio.crs else polygons.to_crs(diff.rio.crs)
        p.boundary.plot(ax=ax, color="0.2", linewidth=0.4)
    if colorbar:
        unit = "log richness" if diff.attrs.get("log") else "richness"
        ax.figure.colorbar(im, ax=ax, shrink=0.8, label=f"change in {unit}")
    fy, ly = diff.attrs.get("first_year"), diff.attrs.get("last_year")
    ax.set_title(title if title is not None else (f"{ly} − {fy}" if fy is not None else ""))
    ax.set_xlabel("easting (m)")
    ax.set_ylabel("northing (m)")
    ax.set_aspect("equal")
    return ax


def plot_yearly_summary(summary: pd.DataFrame, ax: matplotlib.axes.Axes | None = None, *,
                        colour_by: str = "woodland",
                        style_by: str | None = "park") -> matplotlib.axes.Axes:
    """Yearly mean lines with the interquartile range as a band (:func:`yearly_summary`).

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> s = pd.DataFrame({"park": "A", "woodland": ["ancient"] * 4, "year": range(2017, 2021),
    ...                   "mean": [30.0, 29, 28, 27], "q25": 25.0, "q75": 35.0})
    >>> len(plot_yearly_summary(s).lines)
    1
    """
    import matplotlib.pyplot as plt

    from fungi_ssl.core.plotting import OKABE_ITO

    need = [colour_by, "year", "mean", "q25", "q75"] + ([style_by] if style_by else [])
    missing = [c for c in need if c not in summary.columns]
    if missing:
        raise ValueError(f"summary: missing column(s) {missing} (yearly_summary's table)")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    colours = {k: OKABE_ITO[i % len(OKABE_ITO)]
               for i, k in enumerate(sorted(summary[colour_by].astype(str).unique()))}
    styles = ["-", "--", ":", "-."]
    style_keys = sorted(summary[style_by].astype(str).unique()) if style_by else [None]
    group_cols = [colour_by] + ([style_by] if style_by else [])
    for key, g in summary.groupby(group_cols, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        g = g.sort_values("year")
        c = colours[str(key[0])]
        ls = styles[style_keys.index(str(key[1])) % len(styles)] if style_by else "-"
        ax.fill_between(g["year"], g["q25"], g["q75"], color=c, alpha=0.15, linewidth=0)
        ax.plot(g["year"], g["mean"], color=c, linestyle=ls, marker="o", markersize=3,
                label=" · ".join(str(k) for k in key[::-1]))
    ax.set_xlabel("year")
    ax.set_ylabel("richness (mean, IQR band)")
    ax.legend(fontsize="small", frameon=False)
    return ax


def plot_slope_recovery(recovered: pd.DataFrame, true: pd.DataFrame,
                        ax: matplotlib.axes.Axes | None = None, *,
                        id_column: str = "polygon_id") -> matplotlib.axes.Axes:
    """Recovered against true slope per polygon, coloured by woodland type, with the 1:1 line.

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> r = pd.DataFrame({"polygon_id": ["a", "b"], "woodland": ["ancient", "other"],
    ...                   "slope": [-0.02, 0.0]})
    >>> plot_slope_recovery(r, r.drop(columns="woodland")).get_xlabel()
    'true slope (log richness / year)'
    """
    import matplotlib.pyplot as plt

    from fungi_ssl.core.plotting import OKABE_ITO

    m = _matched_slopes(recovered, true, id_column)
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4.5))
    kinds = m["woodland"].astype(str) if "woodland" in m.columns else pd.Series("", index=m.index)
    for i, k in enumerate(sorted(kinds.unique())):
        sel = kinds == k
        ax.scatter(m.loc[sel, "true_slope"], m.loc[sel, "slope"], s=8, alpha=0.6,
                   color=OKABE_ITO[i % len(OKABE_ITO)], label=k or None)
    both = np.concatenate([m["true_slope"], m["slope"]])
    lo, hi = (float(np.nanmin(both)), float(np.nanmax(both))) if len(both) else (-1.0, 1.0)
    ax.plot([lo, hi], [lo, hi], color="0.4", linewidth=0.8, linestyle="--")
    ax.set_xlabel("true slope (log richness / year)")
    ax.set_ylabel("recovered slope (log richness / year)")
    if kinds.ne("").any():
        ax.legend(fontsize="small", frameon=False)
    return ax


# --------------------------------------------------------------------------
# chapter 08's results
# --------------------------------------------------------------------------

def _matched_slopes(recovered: pd.DataFrame, true: pd.DataFrame, id_column: str) -> pd.DataFrame:
    for name, t in (("recovered", recovered), ("true", true)):
        missing = [c for c in (id_column, "slope") if c not in t.columns]
        if missing:
            raise ValueError(f"{name}: missing column(s) {missing} (polygon_trends' table)")
    m = recovered.merge(true[[id_column, "slope"]].rename(columns={"slope": "true_slope"}),
                        on=id_column, how="inner")
    if m.empty:
        raise ValueError(f"recovered and true share no {id_column}; they must be the same polygons")
    return m


def trend_results(recovered: pd.DataFrame, true: pd.DataFrame, null: pd.DataFrame, *,
                  alpha: float = DEFAULT_ALPHA, min_decline: float = 0.0,
                  n_boot: int = 2000, confidence: float = DEFAULT_CONFIDENCE, seed: int = 0,
                  weight: str = "n_pixels", id_column: str = "polygon_id",
                  recovered_zonal: pd.DataFrame | None = None,
                  null_zonal: pd.DataFrame | None = None,
                  log: bool = False, slope_gain_sd: float = 0.0) -> dict[str, Any]:
    """Chapter 08's results dict from three per-polygon trend tables.

    Parameters
    ----------
    recovered : pandas.DataFrame
        :func:`polygon_trends` of the mapped (predicted) stacks, all parks,
        with ``park``, ``woodland`` and ``weight``.
    true : pandas.DataFrame
        The same from the true-richness stacks (same polygons).
    null : pandas.DataFrame
        The same from the predicted stacks of the no-change world.
    alpha : float
        Significance level of the Mann–Kendall tests.
    min_decline : float
        A polygon is truly declining when its true slope is below
        ``−min_decline`` (log richness per year).
    n_boot, confidence, seed, weight :
        As :func:`woodland_contrast` (the same seed for both worlds).
    id_column : str
        The polygon id column.
    recovered_zonal, null_zonal : pandas.DataFrame, optional
        The zonal tables (with ``park`` and ``woodland``) behind ``recovered``
        and ``null``. Given, the intervals are :func:`park_year_contrast`'s
        (parks and park-years as units, the book's); without them,
        :func:`woodland_contrast`'s (polygons as units).
    log : bool
        As :func:`park_year_contrast` (False: the maps hold log richness).
    slope_gain_sd : float
        As :func:`park_year_contrast` (with the zonal tables only).

    Returns
    -------
    dict
        The :data:`RESULT_KEYS` (slopes in log richness per year, intervals as
        ``[low, high]``), plus ``confidence``, ``significance_level``,
        ``min_decline``, ``n_polygons``, ``n_null_polygons``,
        ``n_truly_declining``, ``polygon_slope_bias`` (mean recovered − true),
        ``polygon_slope_rmse``, and the interval's ``interval``, ``n_parks``,
        ``n_park_years`` and ``slope_gain_sd``.

        * ``false_positive_rate``: share of the null world's polygons whose
          Mann–Kendall p is below ``alpha`` (either direction);
        * ``detection_power``: share of truly declining polygons whose
          recovered slope is negative with p below ``alpha``;
        * ``polygon_slope_correlation``: Pearson r of recovered and true slopes.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> t = pd.DataFrame({"polygon_id": [f"p{i}" for i in range(40)], "park": "A",
    ...                   "woodland": np.repeat(["ancient", "other"], 20), "n_pixels": 100,
    ...                   "slope": np.repeat([-0.03, -0.01], 20)})
    >>> rec = t.assign(slope=t["slope"] + rng.normal(0, 0.005, 40), mk_p=0.01)
    >>> null = t.assign(slope=rng.normal(0, 0.005, 40), mk_p=rng.uniform(size=40))
    >>> r = trend_results(rec, t, null, n_boot=200)
    >>> round(r["true_slope_difference"], 3), r["detection_power"]
    (-0.02, 1.0)
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")
    for name, t in (("recovered", recovered), ("null", null)):
        if "mk_p" not in t.columns:
            raise ValueError(f"{name}: no column 'mk_p' (polygon_trends' table)")
    if (recovered_zonal is None) != (null_zonal is None):
        raise ValueError("give both recovered_zonal and null_zonal, or neither")
    if recovered_zonal is not None:
        years = recovered.attrs.get("years")
        kw = {"n_boot": n_boot, "confidence": confidence, "seed": seed, "log": log,
              "years": years, "id_column": id_column, "weight": weight,
              "slope_gain_sd": slope_gain_sd}
        rec = park_year_contrast(recovered_zonal, **kw)
        nul = park_year_contrast(null_zonal, **kw)
    else:
        rec = woodland_contrast(recovered, n_boot=n_boot, confidence=confidence, seed=seed,
                                weight=weight)
        nul = woodland_contrast(null, n_boot=n_boot, confidence=confidence, seed=seed,
                                weight=weight)
    tru = area_weighted_slope(true, weight)

    m = _matched_slopes(recovered, true, id_column)
    both = m[np.isfinite(m["slope"]) & np.isfinite(m["true_slope"])]
    corr = (float(np.corrcoef(both["slope"], both["true_slope"])[0, 1])
            if len(both) > 2 and both["slope"].std() > 0 and both["true_slope"].std() > 0
            else None)
    err = both["slope"] - both["true_slope"]
    declining = m[m["true_slope"] < -float(min_decline)]
    detected = (declining["slope"] < 0) & (declining["mk_p"] < alpha)
    tested = null[np.isfinite(null["mk_p"].to_numpy(dtype=float))]

    return {
        "slope_ancient": rec.slope_ancient,
        "slope_other": rec.slope_other,
        "slope_difference": rec.difference,
        "slope_difference_ci": list(rec.ci),
        "true_slope_ancient": float(tru["ancient"]),
        "true_slope_other": float(tru["other"]),
        "true_slope_difference": float(tru["ancient"] - tru["other"]),
        "null_slope_difference_ci": list(nul.ci),
        "null_slope_difference": nul.difference,
        "interval": rec.method,
        "slope_gain_sd": rec.slope_gain_sd,
        "n_parks": rec.n_parks,
        "n_park_years": rec.n_park_years,
        "false_positive_rate": (float((tested["mk_p"] < alpha).mean()) if len(tested) else None),
        "detection_power": float(detected.mean()) if len(declining) else None,
        "polygon_slope_correlation": corr,
        "confidence": float(confidence),
        "significance_level": float(alpha),
        "min_decline": float(min_decline),
        "n_polygons": len(both),
        "n_null_polygons": len(tested),
        "n_truly_declining": len(declining),
        "polygon_slope_bias": float(err.mean()) if len(err) else None,
        "polygon_slope_rmse": float(np.sqrt((err**2).mean())) if len(err) else None,
    }
