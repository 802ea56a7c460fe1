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
(:func:`~fungi_ssl.trends.contrasts.park_year_contrast`,
:func:`~fungi_ssl.trends.contrasts.calibrate_slope_gain`; the interval that
resamples polygons as if independent,
:func:`~fungi_ssl.trends.contrasts.woodland_contrast`, is kept for
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
  :func:`polygon_trends`: one trend per polygon.

Its neighbours build on these:

* :mod:`fungi_ssl.trends.contrasts`: ``area_weighted_slope``,
  ``park_year_contrast``, ``calibrate_slope_gain``, ``woodland_contrast``:
  ancient against other;
* :mod:`fungi_ssl.trends.summaries`: ``difference_map``, ``yearly_summary``,
  ``plot_difference_map``, ``plot_yearly_summary``, ``plot_slope_recovery``:
  the study's two figures and recovered against true slopes;
  ``trend_results``: chapter 08's results dict (``RESULT_KEYS``);
* :mod:`fungi_ssl.trends.trend_table`: ``polygon_trend_table``: per-polygon
  trends and the ancient-vs-other contrast from yearly map files and a
  polygon file (``fungi-ssl trend``, chapter 10), with the estimand
  ``TREND_ESTIMAND``.

References
----------
Sen (1968) Estimates of the regression coefficient based on Kendall's tau.
*JASA* 63:1379–1389. Mann (1945) Nonparametric tests against trend.
*Econometrica* 13:245–259. Kendall (1975) *Rank Correlation Methods*.
Hussain & Mahmud (2019) pyMannKendall. *JOSS* 4(39):1556 (the tests check
:func:`mann_kendall` against it).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from scipy import stats

if TYPE_CHECKING:  # pragma: no cover
    import geopandas as gpd

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_CONFIDENCE",
    "MIN_YEARS",
    "WOODLAND_TYPES",
    "MannKendall",
    "check_year_stack",
    "label_map",
    "mann_kendall",
    "percent_per_year",
    "polygon_trends",
    "stack_years",
    "theil_sen_slope",
    "zonal_means",
]

#: Fewest years a trend is fitted on (a Mann–Kendall test on 3 values cannot reach p < 0.05).
MIN_YEARS = 4
#: Nominal level of the book's intervals (as :data:`fungi_ssl.bias.DEFAULT_CONFIDENCE`).
DEFAULT_CONFIDENCE = 0.9
#: Significance level of the per-polygon Mann–Kendall tests.
DEFAULT_ALPHA = 0.05
#: Woodland types, in the order of the contrast (ancient − other).
WOODLAND_TYPES: tuple[str, str] = ("ancient", "other")
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
