"""Richness trends per woodland polygon: zonal means, Theil–Sen slopes, Mann–Kendall tests.

Chapter 08 asks whether ancient woodland is losing ECM richness faster than
other woodland. It works on two inputs, the same for simulated and real data:

``maps``
    a yearly stack of richness maps, an :class:`xarray.DataArray` with dims
    ``(year, y, x)``, integer years, one map per year with no gap, and a CRS
    (rioxarray: ``maps.rio.crs``), as :func:`stack_years` builds it from one
    map per year. Non-finite pixels (no embedding, cloud) are missing.
``polygons``
    woodland polygons, a :class:`geopandas.GeoDataFrame` with a CRS, a unique
    ``polygon_id`` and, for the contrasts, ``park`` and ``woodland``
    (``"ancient"`` or ``"other"``), as
    :meth:`fungi_ssl.simulate.SimulatedStudy.park_woodland` returns them.

One stack covers one map window (one park); for several parks, call the
functions per park and concatenate the tables.

The estimand
------------
For polygon *p* and year *t*, ``mean`` is the mean richness of the polygon's
valid pixels (:func:`zonal_means`). The polygon's trend is the Theil–Sen
slope (median of pairwise slopes, :func:`theil_sen_slope`) of
``log(mean)`` against the year, in **log richness per year**; as a percentage,
``100 · (exp(slope) − 1)`` % per year (:func:`percent_per_year`). Its
significance is a Mann–Kendall test (:func:`mann_kendall`) of the same
series. Ancient and other woodland are summarised by the **area-weighted mean
slope** of their polygons (weight: the polygon's pixels in the map, all
10 m), and compared by their difference (ancient − other) with an interval
whose units of replication are parks and park-years and which carries the
spread of the map's response to each polygon's change, its slope gain
(:func:`park_year_contrast`, :func:`calibrate_slope_gain`; the interval that
resamples polygons as if independent, :func:`woodland_contrast`, is kept for
comparison). The truth is the same computation on the true-richness layer.

Zonal statistics
----------------
Polygons are rasterised once to a label map with
:func:`rasterio.features.rasterize` (``all_touched=False``: a pixel belongs to
the polygon that contains its centre), then summed per label and year with
:func:`numpy.bincount`, never a Python loop over pixels. Woodland polygons
traced from the 10 m grid (as the simulated ones are) are reproduced exactly
by this; fractional pixel coverage (``exactextract``) would change means only
at the edges of polygons not aligned with the grid, and would add a compiled
dependency. Overlapping polygons are refused (a pixel would count for only one).

What is here
------------
* :func:`stack_years`, :func:`check_year_stack`: the yearly stack and its checks;
* :func:`label_map`, :func:`zonal_means`: the label raster and zonal means;
* :func:`theil_sen_slope`, :func:`mann_kendall`, :func:`percent_per_year`,
  :func:`polygon_trends`: one trend per polygon;
* :func:`area_weighted_slope`, :func:`park_year_contrast`, :func:`calibrate_slope_gain`,
  :func:`woodland_contrast`: ancient against other;
* :func:`difference_map`, :func:`yearly_summary`, :func:`plot_difference_map`,
  :func:`plot_yearly_summary`, :func:`plot_slope_recovery`: the study's two
  figures and recovered against true slopes;
* :func:`trend_results`: chapter 08's results dict (:data:`RESULT_KEYS`).
* :func:`polygon_trend_table`: per-polygon trends and the ancient-vs-other
  contrast from yearly map files and a polygon file (``fungi-ssl trend``,
  chapter 10), with the estimand :data:`TREND_ESTIMAND`.

References
----------
Sen (1968) Estimates of the regression coefficient based on Kendall's tau.
*JASA* 63:1379–1389. Mann (1945) Nonparametric tests against trend.
*Econometrica* 13:245–259. Kendall (1975) *Rank Correlation Methods*.
Hussain & Mahmud (2019) pyMannKendall. *JOSS* 4(39):1556 (the tests check
:func:`mann_kendall` against it).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from scipy import stats

if TYPE_CHECKING:  # pragma: no cover
    import geopandas as gpd
    import matplotlib.axes

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_CONFIDENCE",
    "MIN_YEARS",
    "RESULT_KEYS",
    "SLOPE_GAIN_SD",
    "TREND_ESTIMAND",
    "WOODLAND_TYPES",
    "MannKendall",
    "TrendTable",
    "WoodlandContrast",
    "area_weighted_slope",
    "calibrate_slope_gain",
    "check_year_stack",
    "difference_map",
    "label_map",
    "mann_kendall",
    "park_year_contrast",
    "percent_per_year",
    "plot_difference_map",
    "plot_slope_recovery",
    "plot_yearly_summary",
    "polygon_trend_table",
    "polygon_trends",
    "stack_years",
    "theil_sen_slope",
    "trend_results",
    "woodland_contrast",
    "yearly_summary",
    "zonal_means",
]

#: Fewest years a trend is fitted on (a Mann–Kendall test on 3 values cannot reach p < 0.05).
MIN_YEARS = 4
#: Nominal level of the book's intervals (as :data:`fungi_ssl.bias.DEFAULT_CONFIDENCE`).
DEFAULT_CONFIDENCE = 0.9
#: Significance level of the per-polygon Mann–Kendall tests.
DEFAULT_ALPHA = 0.05
#: Relative SD of a polygon's map slope about its true slope (:func:`park_year_contrast`'s
#: ``slope_gain_sd``), the default of ``fungi-ssl trend``: chapter 08 measures it over its
#: replicate worlds (:func:`calibrate_slope_gain`) and reports the value it finds; this is
#: the full profile's measurement over 40 changing worlds (0.37), rounded up to one decimal.
SLOPE_GAIN_SD = 0.4
#: Woodland types, in the order of the contrast (ancient − other).
WOODLAND_TYPES: tuple[str, str] = ("ancient", "other")
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


def _year_values(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name}: expected a non-empty list of years, got {values!r}")
    as_float = arr.astype(float)
    if not np.all(np.isfinite(as_float)) or np.any(as_float != np.round(as_float)):
        raise ValueError(f"{name}: years must be whole numbers, got {arr.tolist()}")
    out = as_float.astype(np.int64)
    if len(np.unique(out)) != len(out):
        dup = sorted({int(y) for y in out if (out == y).sum() > 1})
        raise ValueError(f"{name}: year(s) {dup} appear more than once")
    return out


def _check_years(present: Any, name: str, years: Iterable[int] | None,
                 min_years: int) -> np.ndarray:
    """The years to use, sorted; one clear error for too few or missing years."""
    have = np.sort(_year_values(present, name))
    if years is not None:
        want = np.sort(_year_values(list(years), "years"))
        missing = sorted(set(want.tolist()) - set(have.tolist()))
        if missing:
            raise ValueError(
                f"{name}: year(s) {missing} missing (expected every year of "
                f"{want.tolist()}, found {have.tolist()})"
            )
        have = want
    else:
        full = np.arange(have[0], have[-1] + 1)
        missing = sorted(set(full.tolist()) - set(have.tolist()))
        if missing:
            raise ValueError(
                f"{name}: year(s) {missing} missing from {int(have[0])}–{int(have[-1])} "
                f"(found {have.tolist()}); a trend needs every year, or pass the years "
                f"to use as `years`"
            )
    if len(have) < min_years:
        raise ValueError(
            f"{name}: {len(have)} year(s) {have.tolist()}; a Mann–Kendall trend test needs "
            f"at least {min_years}"
        )
    return have


def check_year_stack(maps: xr.DataArray, years: Iterable[int] | None = None,
                     min_years: int = 1) -> xr.DataArray:
    """Check a yearly map stack and return it as ``(year, y, x)`` with only ``years``.

    Parameters
    ----------
    maps : xarray.DataArray
        Dims ``year``, ``y``, ``x`` (any order), integer years, a CRS.
    years : iterable of int, optional
        The years expected (others in the stack are dropped). By default
        every year from the stack's first to its last must be there.
    min_years : int
        Fewest years accepted (:data:`MIN_YEARS` for a trend).

    Returns
    -------
    xarray.DataArray
        The stack, transposed to ``(year, y, x)``, sorted by year.

    Raises
    ------
    ValueError
        Wrong dims, no CRS, duplicate or non-integer years, a year missing,
        fewer than ``min_years`` years.

    Examples
    --------
    >>> da = xr.DataArray(np.ones((3, 2, 2)), dims=("year", "y", "x"),
    ...                   coords={"year": [2017, 2018, 2020], "y": [15.0, 5.0], "x": [5.0, 15.0]})
    >>> check_year_stack(da.rio.write_crs("EPSG:32630"))
    Traceback (most recent call last):
    ...
    ValueError: maps: year(s) [2019] missing from 2017–2020 (found [2017, 2018, 2020]); a trend needs every year, or pass the years to use as `years`
    """
    if not isinstance(maps, xr.DataArray):
        raise ValueError(  # noqa: TRY004 (project rule: bad input is a ValueError)
            f"maps: expected an xarray.DataArray (year, y, x), got {type(maps).__name__}")
    if set(maps.dims) != {"year", "y", "x"}:
        raise ValueError(f"maps: expected dims ('year', 'y', 'x'), got {maps.dims}")
    if maps.rio.crs is None:
        raise ValueError("maps: no CRS; write one with maps.rio.write_crs(...)")
    if maps.sizes["y"] < 2 or maps.sizes["x"] < 2:
        raise ValueError(f"maps: need at least 2 × 2 pixels, got {maps.sizes['y']} × {maps.sizes['x']}")
    use = _check_years(maps["year"].values, "maps", years, min_years)
    out = maps.transpose("year", "y", "x")
    if not np.array_equal(np.asarray(out["year"].values, dtype=np.int64), use):
        out = out.sel(year=use.astype(out["year"].dtype))
    return out


def stack_years(maps_by_year: Mapping[int, xr.DataArray]) -> xr.DataArray:
    """One map per year → a ``(year, y, x)`` stack, checked to share grid and CRS.

    Examples
    --------
    >>> one = xr.DataArray(np.ones((2, 2)), dims=("y", "x"),
    ...                    coords={"y": [15.0, 5.0], "x": [5.0, 15.0]}).rio.write_crs(32630)
    >>> s = stack_years({2018: one + 1, 2017: one})
    >>> s.dims, s["year"].values.tolist(), s.rio.crs.to_epsg()
    (('year', 'y', 'x'), [2017, 2018], 32630)
    """
    if not maps_by_year:
        raise ValueError("maps_by_year: empty; expected one map per year")
    years = sorted(int(y) for y in maps_by_year)
    first = maps_by_year[years[0]]
    crs = first.rio.crs
    if crs is None:
        raise ValueError(f"maps_by_year[{years[0]}]: no CRS; write one with .rio.write_crs(...)")
    layers = []
    for y in years:
        da = maps_by_year[y]
        if da.dims != ("y", "x"):
            raise ValueError(f"maps_by_year[{y}]: expected dims ('y', 'x'), got {da.dims}")
        if da.rio.crs != crs:
            raise ValueError(f"maps_by_year[{y}]: CRS {da.rio.crs} differs from {years[0]}'s {crs}")
        if not (np.array_equal(da["x"].values, first["x"].values)
                and np.array_equal(da["y"].values, first["y"].values)):
            raise ValueError(f"maps_by_year[{y}]: its grid differs from {years[0]}'s")
        layers.append(da.drop_vars("spatial_ref", errors="ignore"))
    out = xr.concat(layers, dim=pd.Index(years, name="year"))
    return out.rio.write_crs(crs)


# --------------------------------------------------------------------------
# label map and zonal means
# --------------------------------------------------------------------------


def _polygons_in_crs(polygons: gpd.GeoDataFrame, crs: Any, id_column: str) -> gpd.GeoDataFrame:
    import geopandas as gpd

    if not isinstance(polygons, gpd.GeoDataFrame):
        raise ValueError(  # noqa: TRY004 (project rule: bad input is a ValueError)
            f"polygons: expected a geopandas.GeoDataFrame, got {type(polygons).__name__}")
    if id_column not in polygons.columns:
        raise ValueError(f"polygons: no column {id_column!r} (the polygon id); columns are "
                         f"{list(polygons.columns)}")
    ids = polygons[id_column]
    if ids.isna().any() or ids.duplicated().any():
        dup = ids[ids.duplicated(keep=False)].astype(str).unique().tolist()[:5]
        raise ValueError(f"polygons: {id_column!r} must be unique and not missing (repeated: {dup})")
    if polygons.crs is None:
        raise ValueError(
            f"polygons: no CRS; set the one the coordinates are in with "
            f"polygons.set_crs(...) (the maps are in {crs})"
        )
    if polygons.crs != crs:
        warnings.warn(
            f"polygons: reprojected from {polygons.crs.to_string()} to the maps' CRS "
            f"{crs.to_string() if hasattr(crs, 'to_string') else crs}",
            UserWarning,
            stacklevel=3,
        )
        polygons = polygons.to_crs(crs)
    return polygons


def _grid(maps: xr.DataArray) -> tuple[Any, tuple[float, float, float, float]]:
    """Affine transform and (left, bottom, right, top) of a regular x/y grid of pixel centres."""
    from affine import Affine

    out = []
    for dim in ("x", "y"):
        c = np.asarray(maps[dim].values, dtype=float)
        if c.size < 2:
            raise ValueError(f"maps: need at least 2 pixels along {dim!r}, got {c.size}")
        step = np.diff(c)
        if not np.allclose(step, step[0], rtol=1e-6, atol=0) or step[0] == 0:
            raise ValueError(f"maps: the {dim!r} coordinates are not a regular grid")
        out.append((c[0], float(step[0]), c))
    (x0, dx, xs), (y0, dy, ys) = out
    transform = Affine(dx, 0.0, x0 - dx / 2, 0.0, dy, y0 - dy / 2)
    xe = (x0 - dx / 2, xs[-1] + dx / 2)
    ye = (y0 - dy / 2, ys[-1] + dy / 2)
    return transform, (min(xe), min(ye), max(xe), max(ye))


def label_map(maps: xr.DataArray, polygons: gpd.GeoDataFrame, *,
              id_column: str = "polygon_id") -> tuple[np.ndarray, gpd.GeoDataFrame]:
    """Rasterise polygons onto the maps' grid: pixel → 1-based polygon row (0 outside).

    A pixel belongs to a polygon when its centre lies inside
    (``all_touched=False``). Polygons in another CRS than the maps are
    reprojected, with a warning.

    Parameters
    ----------
    maps : xarray.DataArray
        A map or a stack with ``y``, ``x`` dims and a CRS.
    polygons : geopandas.GeoDataFrame
        With a CRS and a unique ``id_column``.
    id_column : str
        The polygon id column.

    Returns
    -------
    labels : numpy.ndarray
        ``(ny, nx)`` int32; ``k`` marks the ``k``-th polygon (``k − 1`` its row).
    polygons : geopandas.GeoDataFrame
        The polygons in the maps' CRS.

    Raises
    ------
    ValueError
        Polygons without a CRS, none overlapping the maps, or overlapping each other.

    Examples
    --------
    >>> import geopandas as gpd
    >>> from shapely.geometry import box
    >>> m = xr.DataArray(np.zeros((2, 3)), dims=("y", "x"),
    ...                  coords={"y": [15.0, 5.0], "x": [5.0, 15.0, 25.0]}).rio.write_crs(32630)
    >>> p = gpd.GeoDataFrame({"polygon_id": ["a", "b"]},
    ...                      geometry=[box(0, 0, 10, 20), box(10, 0, 22, 10)], crs=32630)
    >>> label_map(m, p)[0]
    array([[1, 0, 0],
           [1, 2, 0]], dtype=int32)
    """
    import rasterio.features
    from rasterio.enums import MergeAlg

    crs = maps.rio.crs
    if crs is None:
        raise ValueError("maps: no CRS; write one with maps.rio.write_crs(...)")
    polygons = _polygons_in_crs(polygons, crs, id_column)
    transform, (left, bottom, right, top) = _grid(maps)
    shape = (maps.sizes["y"], maps.sizes["x"])
    geoms = polygons.geometry.to_numpy()
    keep = [i for i, g in enumerate(geoms) if g is not None and not g.is_empty]
    if not keep:
        raise ValueError("polygons: every geometry is empty")
    pb = polygons.geometry.iloc[keep].total_bounds
    if pb[0] >= right or pb[2] <= left or pb[1] >= top or pb[3] <= bottom:
        raise ValueError(
            f"polygons: none of the {len(polygons)} polygons overlaps the maps (polygons span "
            f"{np.round(pb, 1).tolist()}, the maps {[round(v, 1) for v in (left, bottom, right, top)]} "
            f"in {crs.to_string()}); are they of another park, or in a wrongly declared CRS?"
        )
    pairs = [(geoms[i], i + 1) for i in keep]
    labels = rasterio.features.rasterize(pairs, out_shape=shape, transform=transform, fill=0,
                                         all_touched=False, dtype="int32")
    if not labels.any():
        raise ValueError(
            f"polygons: none of the {len(polygons)} polygons covers a pixel centre of the maps "
            f"({shape[0]} × {shape[1]} pixels in {crs.to_string()})"
        )
    count = rasterio.features.rasterize(((g, 1) for g, _ in pairs), out_shape=shape,
                                        transform=transform, fill=0, all_touched=False,
                                        dtype="uint16", merge_alg=MergeAlg.add)
    shared = count > 1
    if shared.any():
        ids = polygons[id_column].to_numpy()[np.unique(labels[shared]) - 1][:5].tolist()
        raise ValueError(
            f"polygons: overlap on {int(shared.sum())} pixel(s) (e.g. polygons {ids}); a pixel "
            f"must belong to one polygon only (dissolve or split them first)"
        )
    return labels, polygons


def zonal_means(maps: xr.DataArray, polygons: gpd.GeoDataFrame, *,
                years: Iterable[int] | None = None,
                id_column: str = "polygon_id") -> pd.DataFrame:
    """Mean of each polygon's valid pixels in each year: a tidy table.

    Polygons are rasterised once (:func:`label_map`); each year's sums and
    counts per polygon are one :func:`numpy.bincount`. Non-finite pixels are
    left out of the mean and counted.

    Parameters
    ----------
    maps : xarray.DataArray
        ``(year, y, x)`` stack with a CRS (see :func:`check_year_stack`).
    polygons : geopandas.GeoDataFrame
        With a CRS and a unique ``id_column``; reprojected (with a warning)
        when not in the maps' CRS.
    years : iterable of int, optional
        Years expected in the stack (default: every year between its first and last).
    id_column : str
        The polygon id column.

    Returns
    -------
    pandas.DataFrame
        One row per polygon and year: ``id_column`` (``polygon_id`` by
        default), ``year``, ``mean``
        (NaN when no pixel is valid), ``n_pixels`` (pixel centres in the
        polygon and the map), ``n_valid`` (of those, finite that year).
        Polygons wholly outside the maps keep ``n_pixels = 0`` (with a warning).

    Raises
    ------
    ValueError
        See :func:`check_year_stack` and :func:`label_map`.

    Examples
    --------
    >>> import geopandas as gpd
    >>> from shapely.geometry import box
    >>> v = np.arange(16.0).reshape(4, 2, 2)        # 4 years of a 2 × 2 map
    >>> v[1, 0, 0] = np.nan
    >>> m = xr.DataArray(v, dims=("year", "y", "x"), coords={"year": [2017, 2018, 2019, 2020],
    ...                  "y": [15.0, 5.0], "x": [5.0, 15.0]}).rio.write_crs(32630)
    >>> p = gpd.GeoDataFrame({"polygon_id": ["west"]}, geometry=[box(0, 0, 10, 20)], crs=32630)
    >>> zonal_means(m, p)
      polygon_id  year  mean  n_pixels  n_valid
    0       west  2017   1.0         2        2
    1       west  2018   6.0         2        1
    2       west  2019   9.0         2        2
    3       west  2020  13.0         2        2
    """
    stack = check_year_stack(maps, years)
    labels, polygons = label_map(stack, polygons, id_column=id_column)
    n_poly = len(polygons)
    flat = labels.ravel()
    inside = np.flatnonzero(flat)
    lab = flat[inside]
    n_pixels = np.bincount(lab, minlength=n_poly + 1)[1:]
    values = np.asarray(stack.values)
    n_years = values.shape[0]
    values = values.reshape(n_years, -1)
    sums = np.empty((n_years, n_poly))
    valid = np.empty((n_years, n_poly), dtype=np.int64)
    for t in range(n_years):
        v = values[t, inside]
        ok = np.isfinite(v)
        sums[t] = np.bincount(lab[ok], weights=v[ok], minlength=n_poly + 1)[1:]
        valid[t] = np.bincount(lab[ok], minlength=n_poly + 1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(valid > 0, sums / np.maximum(valid, 1), np.nan)
    empty = n_pixels == 0
    if empty.any():
        ids = polygons[id_column].to_numpy()[empty][:5].tolist()
        warnings.warn(
            f"polygons: {int(empty.sum())} of {n_poly} cover no pixel centre of the maps "
            f"(e.g. {ids}); their means are NaN",
            UserWarning,
            stacklevel=2,
        )
    ids = polygons[id_column].to_numpy()
    year_values = np.asarray(stack["year"].values, dtype=np.int64)
    out = pd.DataFrame({
        id_column: np.tile(ids, n_years),
        "year": np.repeat(year_values, n_poly),
        "mean": means.ravel(),
        "n_pixels": np.tile(n_pixels, n_years).astype(np.int64),
        "n_valid": valid.ravel(),
    })
    return out.sort_values([id_column, "year"], kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------
# one trend per polygon
# --------------------------------------------------------------------------


def theil_sen_slope(years: Any, values: Any,
                    confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float, float, float]:
    """Theil–Sen slope of ``values`` against ``years`` (:func:`scipy.stats.theilslopes`).

    Returns
    -------
    slope, intercept, low, high : float
        The median pairwise slope, the intercept (``median(y) − slope ·
        median(x)``) and the slope's ``confidence`` interval.

    Examples
    --------
    >>> round(theil_sen_slope(range(2017, 2022), [1.0, 1.1, 1.2, 1.3, 9.0])[0], 6)  # robust to 9.0
    0.1
    """
    x = np.asarray(years, dtype=float)
    y = np.asarray(values, dtype=float)
    res = stats.theilslopes(y, x, alpha=confidence, method="separate")
    return (float(res.slope), float(res.intercept), float(res.low_slope),
            float(res.high_slope))


def _tie_term(x: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Per row, the sum over groups of tied finite values of g (g − 1)(2g + 5)."""
    eq = (x[:, :, None] == x[:, None, :]) & ok[:, :, None] & ok[:, None, :]
    g = eq.sum(axis=2).astype(float)
    # each member of a group of g contributes (g − 1)(2g + 5), so a group g (g − 1)(2g + 5)
    return np.where(ok, (g - 1) * (2 * g + 5), 0.0).sum(axis=1)


def _theil_sen_rows(years: np.ndarray, y: np.ndarray,
                    confidence: float) -> dict[str, np.ndarray]:
    """:func:`scipy.stats.theilslopes` (``method="separate"``) on each row, NaN skipped.

    ``years`` are distinct and ascending. The same numbers as scipy, row by row
    (the tests check it), vectorised over rows: pairwise slopes, their median,
    and Sen's (1968) interval from the sorted slopes.
    """
    x = np.asarray(years, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(y)
    n = ok.sum(axis=1)
    iu, ju = np.triu_indices(len(x), k=1)
    both = ok[:, iu] & ok[:, ju]
    with np.errstate(invalid="ignore"):
        pair = np.where(both, (y[:, ju] - y[:, iu]) / (x[ju] - x[iu]), np.nan)
    pair.sort(axis=1)                                   # NaN last
    nt = both.sum(axis=1)
    rows = np.arange(len(y))
    lo_mid = np.clip((nt - 1) // 2, 0, None)
    hi_mid = np.clip(nt // 2, 0, None)
    if pair.shape[1]:
        slope = 0.5 * (pair[rows, lo_mid] + pair[rows, hi_mid])
    else:
        slope = np.full(len(y), np.nan)
    slope = np.where(nt > 0, slope, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rows without values
        xmed = np.nanmedian(np.where(ok, x, np.nan), axis=1)
        ymed = np.nanmedian(np.where(ok, y, np.nan), axis=1)
    intercept = ymed - slope * xmed
    a = 1.0 - confidence if confidence > 0.5 else confidence
    z = stats.norm.ppf(a / 2.0)
    sigsq = (n * (n - 1) * (2 * n + 5) - _tie_term(y, ok)) / 18.0
    low = np.full(len(y), np.nan)
    high = low.copy()
    good = (nt > 0) & (sigsq >= 0)
    sigma = np.sqrt(np.where(good, sigsq, 0.0))
    ru = np.minimum(np.round((nt - z * sigma) / 2.0).astype(np.int64), nt - 1)
    rl = np.maximum(np.round((nt + z * sigma) / 2.0).astype(np.int64) - 1, 0)
    if pair.shape[1]:
        low[good] = pair[rows[good], rl[good]]
        high[good] = pair[rows[good], ru[good]]
    return {"slope": slope, "intercept": intercept, "low": low, "high": high}


@dataclass(frozen=True)
class MannKendall:
    """The Mann–Kendall test of one series (as ``pymannkendall.original_test``).

    Attributes
    ----------
    n : int
        Finite values used.
    s : float
        Kendall's S: the sum of ``sign(x_j − x_i)`` over pairs ``i < j``.
    var_s : float
        Variance of S under no trend, corrected for ties.
    z : float
        ``(S − sign S) / sqrt(var_s)`` (continuity-corrected).
    p : float
        Two-sided p-value of the normal approximation.
    tau : float
        Kendall's tau ``S / (n (n − 1) / 2)``.
    """

    n: int
    s: float
    var_s: float
    z: float
    p: float
    tau: float


def _mann_kendall_rows(x: np.ndarray) -> dict[str, np.ndarray]:
    """Mann–Kendall on each row of a 2-D array (NaN skipped), vectorised over rows."""
    x = np.asarray(x, dtype=float)
    ok = np.isfinite(x)
    n = ok.sum(axis=1).astype(float)
    t = x.shape[1]
    iu, ju = np.triu_indices(t, k=1)
    both = ok[:, iu] & ok[:, ju]
    diff = np.where(both, x[:, ju] - x[:, iu], 0.0)
    s = np.sign(diff).sum(axis=1)
    var_s = (n * (n - 1) * (2 * n + 5) - _tie_term(x, ok)) / 18.0
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(var_s > 0, (s - np.sign(s)) / np.sqrt(var_s), 0.0)
        tau = np.where(n > 1, s / (0.5 * n * (n - 1)), np.nan)
    p = 2.0 * stats.norm.sf(np.abs(z))
    few = n < 2
    z = np.where(few, np.nan, z)
    p = np.where(few, np.nan, p)
    return {"n": n.astype(int), "s": s, "var_s": var_s, "z": z, "p": p, "tau": tau}


def mann_kendall(values: Any) -> MannKendall:
    """Mann–Kendall trend test of a series in time order (NaN values skipped).

    The normal approximation with continuity correction and the tie-corrected
    variance, as ``pymannkendall.original_test`` (the tests check that they
    agree). With 8 years it is conservative: its true size at the 5% level is
    about 3% (S must reach 18 of 28 pairs).

    Examples
    --------
    >>> r = mann_kendall([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    >>> r.s, round(r.var_s, 2), round(r.p, 4)
    (28.0, 65.33, 0.0008)
    """
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"values: expected a 1-D series, got shape {x.shape}")
    r = _mann_kendall_rows(x[None, :])
    return MannKendall(n=int(r["n"][0]), s=float(r["s"][0]), var_s=float(r["var_s"][0]),
                       z=float(r["z"][0]), p=float(r["p"][0]), tau=float(r["tau"][0]))


def percent_per_year(slope: Any) -> Any:
    """A slope in log richness per year → % change per year, ``100 · (exp(slope) − 1)``.

    Examples
    --------
    >>> round(float(percent_per_year(np.log(0.98))), 6)
    -2.0
    """
    return 100.0 * np.expm1(slope)


def _series_matrix(zonal: pd.DataFrame, use: np.ndarray, *, log: bool,
                   min_valid_fraction: float,
                   id_column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each polygon's yearly values (``(polygon, year)``), NaN where too little is valid.

    Returns the polygon ids, the value matrix (``log(mean)`` with ``log``) and
    each polygon's pixels.
    """
    z = zonal[zonal["year"].isin(use)]
    if z.duplicated([id_column, "year"]).any():
        raise ValueError(f"zonal: more than one row for a ({id_column}, year); one stack per park")
    mean = z.pivot(index=id_column, columns="year", values="mean").reindex(columns=use)
    n_valid = z.pivot(index=id_column, columns="year", values="n_valid").reindex(columns=use)
    n_pix = z.groupby(id_column)["n_pixels"].max().reindex(mean.index)
    vals = mean.to_numpy(dtype=float)
    frac = n_valid.to_numpy(dtype=float) / np.maximum(n_pix.to_numpy(dtype=float), 1)[:, None]
    vals = np.where(frac >= min_valid_fraction, vals, np.nan)
    if log:
        bad = np.isfinite(vals) & (vals <= 0)
        if bad.any():
            ids = mean.index[bad.any(axis=1)][:5].tolist()
            raise ValueError(
                f"zonal: mean ≤ 0 for polygon(s) {ids}, so log richness is undefined; pass "
                f"log=False if the maps already hold log richness"
            )
        vals = np.log(vals)
    return mean.index.to_numpy(), vals, n_pix.to_numpy(dtype=np.int64)


def polygon_trends(zonal: pd.DataFrame, polygons: pd.DataFrame | None = None, *,
                   log: bool = True, min_valid_fraction: float = 0.5,
                   years: Iterable[int] | None = None, min_years: int = MIN_YEARS,
                   confidence: float = DEFAULT_CONFIDENCE,
                   id_column: str = "polygon_id") -> pd.DataFrame:
    """Theil–Sen slope and Mann–Kendall test of each polygon's yearly mean.

    Both are vectorised over polygons and give, polygon by polygon, the
    numbers of :func:`scipy.stats.theilslopes` (``method="separate"``) and
    ``pymannkendall.original_test`` on the polygon's valid years (the tests
    check both).

    Parameters
    ----------
    zonal : pandas.DataFrame
        :func:`zonal_means`'s table (``polygon_id, year, mean, n_pixels, n_valid``).
    polygons : pandas.DataFrame, optional
        Polygon attributes joined to the result by ``id_column``: ``park``,
        ``woodland`` and ``area_ha`` where present.
    log : bool
        Fit ``log(mean)`` (slopes in log richness per year). False when the
        maps already hold log richness (then the means are means of logs).
    min_valid_fraction : float
        A polygon-year counts only when at least this share of the polygon's
        pixels is valid (a mostly clouded year says little about the polygon).
    years : iterable of int, optional
        Years expected (default: every year from the table's first to its last).
    min_years : int
        Fewest years of the table, and fewest valid years of a polygon for a
        trend (fewer: NaN slope and p).
    confidence : float
        Level of the Theil–Sen slope interval.
    id_column : str
        The polygon id column.

    Returns
    -------
    pandas.DataFrame
        One row per polygon: ``polygon_id`` (+ the joined attributes),
        ``n_pixels``, ``n_years`` (valid years used), ``slope``,
        ``slope_low``, ``slope_high``, ``intercept``, ``percent_per_year``,
        ``mk_s``, ``mk_z``, ``mk_p``, ``mk_tau``.

    Raises
    ------
    ValueError
        Missing columns, fewer than ``min_years`` years or a year missing,
        non-positive means with ``log=True``.

    Examples
    --------
    >>> z = pd.DataFrame({"polygon_id": "a", "year": range(2017, 2025),
    ...                   "mean": 50 * 0.97 ** np.arange(8), "n_pixels": 100, "n_valid": 100})
    >>> t = polygon_trends(z)
    >>> round(t["percent_per_year"].iloc[0], 3), t["mk_p"].iloc[0] < 0.05
    (np.float64(-3.0), np.True_)
    """
    need = [id_column, "year", "mean", "n_pixels", "n_valid"]
    missing = [c for c in need if c not in zonal.columns]
    if missing:
        raise ValueError(f"zonal: missing column(s) {missing}; expected {need} (zonal_means' table)")
    if not 0.0 <= min_valid_fraction <= 1.0:
        raise ValueError(f"min_valid_fraction must lie in [0, 1], got {min_valid_fraction!r}")
    use = _check_years(pd.unique(zonal["year"]), "zonal", years, min_years)
    index, vals, n_pix = _series_matrix(zonal, use, log=log,
                                        min_valid_fraction=min_valid_fraction,
                                        id_column=id_column)
    mk = _mann_kendall_rows(vals)
    ts = _theil_sen_rows(use, vals, confidence)
    n_years = np.isfinite(vals).sum(axis=1)
    few = n_years < min_years
    slope, low, high, icept = (np.where(few, np.nan, ts[k])
                               for k in ("slope", "low", "high", "intercept"))
    out = pd.DataFrame({
        id_column: index,
        "n_pixels": n_pix,
        "n_years": n_years.astype(np.int64),
        "slope": slope,
        "slope_low": low,
        "slope_high": high,
        "intercept": icept,
        "percent_per_year": percent_per_year(slope),
        "mk_s": np.where(few, np.nan, mk["s"]),
        "mk_z": np.where(few, np.nan, mk["z"]),
        "mk_p": np.where(few, np.nan, mk["p"]),
        "mk_tau": np.where(few, np.nan, mk["tau"]),
    })
    if polygons is not None:
        if id_column not in polygons.columns:
            raise ValueError(f"polygons: no column {id_column!r}")
        attrs = [c for c in ("park", "woodland", "area_ha") if c in polygons.columns]
        out = pd.DataFrame(polygons[[id_column, *attrs]]).merge(out, on=id_column, how="right")
    out.attrs.update(log=bool(log), years=use.tolist(), confidence=float(confidence))
    return out


# --------------------------------------------------------------------------
# ancient against other woodland
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# per-polygon trends of yearly map files (fungi-ssl trend, chapter 10)
# --------------------------------------------------------------------------
def _map_year(arr: Any, path: Path) -> int:
    """The year of one map file: its ``years`` tag (predict-map) or the one 4-digit year in its name."""
    years = arr.attrs.get("years")
    if years is not None and re.fullmatch(r"\s*\d{4}\s*", str(years)):
        return int(years)
    found = re.findall(r"(?<!\d)(\d{4})(?!\d)", path.stem)
    if len(found) == 1:
        return int(found[0])
    raise ValueError(
        f"map {path}: cannot tell its year (no 'years' tag as fungi-ssl predict-map writes, "
        "and not exactly one 4-digit year in the file name)"
    )


def _open_stack(maps: Sequence[Path]) -> Any:
    """One ``(year, y, x)`` stack from one map per year or one Zarr stack."""
    from fungi_ssl.maps.outputs import open_map

    for p in maps:
        if not p.exists():
            raise FileNotFoundError(f"map {p} does not exist")
    zarrs = [p for p in maps if p.suffix.lower() == ".zarr"]
    if zarrs:
        if len(maps) != 1:
            raise ValueError(
                f"give either one Zarr stack or one GeoTIFF per year, not {len(maps)} maps "
                f"including {zarrs[0]}"
            )
        stack = open_map(maps[0])
        if stack.rio.crs is None or "quantity" not in stack.attrs:
            # maps.open_map leaves the CRS behind when the store keeps spatial_ref as a data
            # variable (as predict_map writes it), and the quantity in the store's attributes
            ds = xr.open_zarr(maps[0], consolidated=False)
            if stack.rio.crs is None and "spatial_ref" in ds.variables:
                stack = stack.rio.write_crs(ds["spatial_ref"].attrs.get("crs_wkt"))
            stack.attrs.setdefault("quantity", ds.attrs.get("quantity", "richness"))
        return stack
    by_year: dict[int, Any] = {}
    for p in maps:
        arr = open_map(p)
        y = _map_year(arr, p)
        if y in by_year:
            raise ValueError(f"two maps for year {y}: {by_year[y].encoding.get('source')} and {p}")
        arr.encoding["source"] = str(p)
        by_year[y] = arr
    stack = stack_years(by_year)
    stack.attrs["quantity"] = next(iter(by_year.values())).attrs.get("quantity", "richness")
    return stack


def _read_polygons(path: Path) -> gpd.GeoDataFrame:
    """A vector file as a GeoDataFrame; one line when GDAL cannot read it."""
    import geopandas as gpd
    from pyogrio.errors import DataSourceError

    if not path.exists():
        raise FileNotFoundError(f"--polygons {path} does not exist")
    try:
        return gpd.read_file(path)
    except DataSourceError as err:  # a RuntimeError
        raise ValueError(f"--polygons {path}: not a vector file GDAL can read ({err})") from None


@dataclass
class TrendTable:
    """What :func:`polygon_trend_table` computed.

    Attributes
    ----------
    trends : pandas.DataFrame
        One row per polygon (:func:`fungi_ssl.trends.polygon_trends`).
    years : list of int
    contrast : fungi_ssl.trends.WoodlandContrast or None
        Ancient against other woodland, when the polygons say which is which.
    notes : list of str
        Why the contrast was left out, if it was.
    """

    trends: pd.DataFrame
    years: list[int]
    contrast: Any = None
    notes: list[str] = field(default_factory=list)


def polygon_trend_table(
    maps: Sequence[str | os.PathLike],
    polygons: str | os.PathLike,
    *,
    id_column: str = "polygon_id",
    type_column: str = "woodland",
    park_column: str = "park",
    min_valid_fraction: float = 0.5,
    n_boot: int = 2000,
    confidence: float | None = None,
    seed: int = 0,
    slope_gain_sd: float = SLOPE_GAIN_SD,
) -> TrendTable:
    """Per-polygon Theil–Sen trends of yearly maps, and the ancient-vs-other contrast.

    Chapter 08's estimand (:data:`TREND_ESTIMAND`): richness maps are taken
    to ``log1p`` pixel by pixel before the polygon means, so a polygon's
    value is the mean of ``log1p(richness)``, whatever scale the maps hold.
    The contrast's interval is :func:`fungi_ssl.trends.park_year_contrast`'s.

    Parameters
    ----------
    maps : sequence of path
        One map per year (GeoTIFFs from ``fungi-ssl predict-map``, whose
        ``years`` tag or file name gives the year) or one Zarr ``(year, y, x)`` stack.
    polygons : path
        A vector file (GeoPackage, GeoJSON, shapefile …) with a CRS and a
        unique ``id_column``.
    id_column, type_column, park_column : str
        Polygon id; woodland type (``ancient`` or ``other``; without it, no
        contrast); park (strata of the bootstrap, when present).
    min_valid_fraction, n_boot, confidence, seed
        As :func:`fungi_ssl.trends.polygon_trends` and
        :func:`fungi_ssl.trends.woodland_contrast`.
    slope_gain_sd : float
        As :func:`park_year_contrast`; by default :data:`SLOPE_GAIN_SD`,
        chapter 08's measurement on simulated worlds.

    Raises
    ------
    FileNotFoundError, ValueError
        Missing files; maps of different grids, unknown years or too few of
        them; polygons without CRS, id or overlap with the maps; woodland
        types other than ancient/other.
    """
    confidence = DEFAULT_CONFIDENCE if confidence is None else confidence
    stack = _open_stack([Path(m) for m in maps])
    poly = _read_polygons(Path(polygons))
    if id_column not in poly.columns:
        raise ValueError(
            f"--polygons {polygons}: no id column {id_column!r} (columns: "
            f"{[c for c in poly.columns if c != 'geometry']}); name it with --id-column"
        )
    notes: list[str] = []
    rename = {}
    if type_column in poly.columns:
        rename[type_column] = "woodland"
    else:
        notes.append(
            f"no woodland type column {type_column!r} in {polygons}: no ancient-vs-other "
            "contrast (name it with --type-column)"
        )
    if park_column in poly.columns:
        rename[park_column] = "park"
    poly = poly.drop(
        columns=[c for c in ("woodland", "park") if c in poly.columns and c not in rename],
        errors="ignore",
    ).rename(columns=rename)
    if "woodland" in poly.columns:
        kinds = set(poly["woodland"].dropna().astype(str))
        unknown = sorted(kinds - set(WOODLAND_TYPES))
        if unknown:
            raise ValueError(
                f"--polygons {polygons}: column {type_column!r} must hold "
                f"{' or '.join(WOODLAND_TYPES)}, found {unknown}"
            )
    if stack.attrs.get("quantity", "richness") != "log_richness":
        # the book's estimand everywhere: the polygon mean of log1p(richness) per pixel
        # (for predict-map's richness maps, expm1 of the model's log1p scale, exactly
        # the model's own log1p prediction), not the log of the mean richness
        attrs_ = dict(stack.attrs)
        stack = np.log1p(stack.where(stack > -1))
        stack.attrs.update(attrs_, quantity="log_richness")
    log = False
    # trends.zonal_means names its id column "polygon_id" whatever id_column is, so the
    # polygons carry their ids under that name here and get theirs back in the table
    key = "polygon_id"
    if id_column != key:
        poly = poly.drop(columns=[key], errors="ignore").rename(columns={id_column: key})
    zonal = zonal_means(stack, poly, id_column=key)
    attrs = pd.DataFrame(poly.drop(columns="geometry"))
    table = polygon_trends(
        zonal,
        attrs,
        log=log,
        min_valid_fraction=min_valid_fraction,
        confidence=confidence,
        id_column=key,
    )
    table = table.rename(columns={key: id_column})
    years = list(table.attrs.get("years", []))
    contrast = None
    if "woodland" in table.columns:
        ok = table[table["slope"].notna()]
        missing = [k for k in WOODLAND_TYPES if not (ok["woodland"] == k).any()]
        if missing:
            notes.append(f"no {' or '.join(missing)} woodland polygon with a trend: no contrast")
        else:
            z = zonal.merge(
                attrs[[key, "woodland", *(["park"] if "park" in attrs.columns else [])]], on=key
            )
            if "park" not in z.columns:
                notes.append(
                    f"no park column {park_column!r}: all polygons are taken as one park, so "
                    "errors shared by a park-year cancel from the contrast and only type and "
                    "polygon errors enter its interval"
                )
                z = z.assign(park="all")
            contrast = park_year_contrast(
                z.dropna(subset=["woodland"]),
                log=log,
                min_valid_fraction=min_valid_fraction,
                years=years,
                n_boot=n_boot,
                confidence=confidence,
                seed=seed,
                slope_gain_sd=slope_gain_sd,
            )
    return TrendTable(table, years, contrast, notes)


#: What ``fungi-ssl trend`` and chapter 08 estimate, in one sentence.
TREND_ESTIMAND = (
    "per polygon, the Theil-Sen slope over the years of the mean over its pixels of "
    "log1p(richness) (log richness per year); per woodland type, the pixel-weighted mean of "
    "those slopes; the interval treats parks and park-years as the units of replication and "
    "adds the spread of the map's response to each polygon's change (slope gain)"
)
