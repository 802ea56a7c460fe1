"""Coordinate reference systems, projections and distances shared by every stage.

Samples arrive in WGS84 longitude/latitude; rasters (simulated tiles, TESSERA
tiles) live in the UTM zone of their centre, at 10 m. Spatial cross-validation
needs distances in metres. The functions here are the one place where those
conversions happen, so that every module agrees on them.

Distances
---------
Distances between samples are geodesic, on the WGS84 ellipsoid, wherever the
samples are: :func:`nearest_distance_m` and :func:`geodesic_pairs_within`
search a haversine :class:`sklearn.neighbors.BallTree` (a sphere of the WGS84
mean radius, :data:`EARTH_RADIUS_M`) and then measure each pair found with
:class:`pyproj.Geod`. A single projection cannot do this: one centred on
Europe stretches East Asia by about x1.3 in one direction and Australia by
about x2.4.

Spatial blocks are squares in each point's UTM zone (:func:`utm_grid_cells`),
whose scale stays within 0.1% of true, so a 50 km block is 50 km on the
ground on every continent.

:func:`check_lonlat` is the one range check of WGS84 longitude/latitude.
"""

from __future__ import annotations

from typing import Any, Literal, overload

import numpy as np
import pandas as pd
from pyproj import CRS, Geod, Transformer

WGS84 = CRS.from_epsg(4326)
#: Mean radius of the WGS84 ellipsoid, (2a + b) / 3, in metres: the sphere the
#: haversine search uses.
EARTH_RADIUS_M = 6_371_008.8
#: The WGS84 ellipsoid, for exact geodesic distances.
WGS84_GEOD = Geod(ellps="WGS84")
# The spherical (haversine) distance differs from the ellipsoidal one by less
# than 0.6% anywhere (radii of curvature 6335-6400 km against 6371 km), so two
# distances' order can flip within about 1%: searches on the sphere are widened
# by this factor, then every candidate is measured on the ellipsoid.
_SPHERE_MARGIN = 1.02
_MAX_SHOWN = 5


def _as_float(values: Any, name: str, source: str) -> tuple[np.ndarray, str, str, Any]:
    """Values as a flat float array, with how to name them in a message.

    Returns ``(array, what, label, keys)``: ``what`` is ``column '<name>'``
    for a named Series and ``name`` otherwise; ``label`` and ``keys`` name the
    rows (the index for a Series, ``line`` when the index is so named, as for
    tables read from a file; the position otherwise).
    """
    what, label, keys = name, "row", None
    if isinstance(values, pd.Series):
        if values.name is not None:
            what = f"column '{values.name}'"
        label = "line" if values.index.name == "line" else "row"
        keys = values.index
        values = values.to_numpy(dtype=float, na_value=np.nan)
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: {what} must be numbers (degrees), got {values!r:.80}") from err
    if arr.ndim == 0:
        return arr.reshape(1), what, "", None
    arr = arr.ravel()
    if keys is None:
        keys = pd.RangeIndex(len(arr))
    return arr, what, label, keys


def _shown(arr: np.ndarray, bad: np.ndarray, label: str, keys: Any) -> str:
    idx = np.flatnonzero(bad)
    if keys is None:  # a scalar
        return repr(float(arr[0]))
    parts = [f"{label} {keys[i]}: {float(arr[i])!r}" for i in idx[:_MAX_SHOWN]]
    return ", ".join(parts) + (", ..." if len(idx) > _MAX_SHOWN else "")


def check_lonlat(
    longitude: Any, latitude: Any, source: str = "coordinates", *, allow_nan: bool = False
) -> None:
    """Check that values are WGS84 longitudes and latitudes, in degrees.

    This is the package's one range check of coordinates: readers, splitters
    and projections all call it, so a bad coordinate reads the same wherever
    it is caught.

    Parameters
    ----------
    longitude, latitude : float, array_like or pandas.Series
        Degrees. A named Series is reported as ``column '<name>'`` and its
        rows by their index (``line`` when the index is named so, as in
        tables read from a file).
    source : str
        What holds the values (a file, a parameter, a function), first in the
        message.
    allow_nan : bool, default False
        Accept NaN (a missing coordinate) and check only the finite values;
        otherwise NaN and infinite values are an error.

    Raises
    ------
    ValueError
        If a value is missing or infinite (unless ``allow_nan``), a longitude
        lies outside [-180, 180] or a latitude outside [-90, 90], or the two
        have different lengths. The message names ``source``, the coordinate,
        how many values are bad, and the first few with their rows.

    Examples
    --------
    >>> check_lonlat([6.0, 151.2], [52.0, -33.9])          # fine: returns None
    >>> check_lonlat([6.0, 200.0, 190.0], [52.0, 52.0, 52.0], "coords")
    Traceback (most recent call last):
    ...
    ValueError: coords: longitude is outside -180..180 degrees (not a WGS84 longitude/latitude) in 2 of 3 row(s): row 1: 200.0, row 2: 190.0
    >>> lines = pd.Index([2, 3], name="line")      # a table read from a file
    >>> check_lonlat(pd.Series([6.0, 7.0], index=lines),
    ...              pd.Series([52.0, -95.0], name="lat", index=lines), "samples.csv")
    Traceback (most recent call last):
    ...
    ValueError: samples.csv: column 'lat' is outside -90..90 degrees (not a WGS84 longitude/latitude) in 1 of 2 row(s): line 3: -95.0
    """
    lon, lon_what, lon_label, lon_keys = _as_float(longitude, "longitude", source)
    lat, lat_what, lat_label, lat_keys = _as_float(latitude, "latitude", source)
    if lon.shape != lat.shape:
        raise ValueError(f"{source}: longitude has {lon.size} values but latitude has {lat.size}")
    for arr, what, label, keys, limit in (
        (lon, lon_what, lon_label, lon_keys, 180.0),
        (lat, lat_what, lat_label, lat_keys, 90.0),
    ):
        finite = np.isfinite(arr)
        if not allow_nan and not finite.all():
            raise ValueError(
                f"{source}: {what} is missing (NaN) or infinite in {int((~finite).sum())} of "
                f"{arr.size} row(s): {_shown(arr, ~finite, label, keys)}"
            )
        outside = finite & (np.abs(np.where(finite, arr, 0.0)) > limit)
        if outside.any():
            raise ValueError(
                f"{source}: {what} is outside -{limit:g}..{limit:g} degrees (not a WGS84 "
                f"longitude/latitude) in {int(outside.sum())} of {arr.size} row(s): "
                f"{_shown(arr, outside, label, keys)}"
            )


def utm_epsg(longitude: float, latitude: float) -> int:
    """EPSG code of the WGS84 UTM zone that contains a point.

    Parameters
    ----------
    longitude, latitude : float
        Degrees, WGS84.

    Returns
    -------
    int
        326xx in the northern hemisphere, 327xx in the southern.

    Examples
    --------
    >>> utm_epsg(-3.2, 57.1)   # Cairngorms
    32630
    >>> utm_epsg(151.2, -33.9)
    32756
    """
    check_lonlat(longitude, latitude, "utm_epsg")
    zone = int(np.floor((longitude + 180.0) / 6.0)) % 60 + 1
    return (32600 if latitude >= 0 else 32700) + zone


def utm_zone_edges(west: float, east: float) -> list[float]:
    """Longitudes of the UTM zone edges (multiples of 6° from −180°) strictly inside a range.

    Examples
    --------
    >>> utm_zone_edges(-0.5, 0.5), utm_zone_edges(0.1, 0.9), utm_zone_edges(-7.0, 7.0)
    ([0.0], [], [-6.0, 0.0, 6.0])
    """
    first = int(np.floor((west + 180.0) / 6.0)) + 1
    last = int(np.ceil((east + 180.0) / 6.0)) - 1
    return [float(-180.0 + 6.0 * k) for k in range(first, last + 1)
            if west < -180.0 + 6.0 * k < east]


def lonlat_to_crs(
    longitude: np.ndarray, latitude: np.ndarray, crs: CRS | int | str
) -> tuple[np.ndarray, np.ndarray]:
    """Project WGS84 longitude/latitude to ``crs``.

    Parameters
    ----------
    longitude, latitude : array_like
        Degrees, WGS84.
    crs : pyproj.CRS, int or str
        Target CRS (an EPSG integer is accepted).

    Returns
    -------
    x, y : numpy.ndarray
        Coordinates in the units of ``crs``.

    Examples
    --------
    >>> x, y = lonlat_to_crs([-3.0], [57.0], 32630)
    >>> round(float(x[0])), round(float(y[0]))
    (500000, 6317386)
    """
    t = Transformer.from_crs(WGS84, CRS.from_user_input(crs), always_xy=True)
    x, y = t.transform(np.asarray(longitude, dtype=float), np.asarray(latitude, dtype=float))
    return np.asarray(x), np.asarray(y)


def crs_to_lonlat(
    x: np.ndarray, y: np.ndarray, crs: CRS | int | str
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`lonlat_to_crs`: coordinates in ``crs`` to WGS84 degrees.

    Examples
    --------
    >>> lon, lat = crs_to_lonlat([500000.0], [6317386.0], 32630)
    >>> round(float(lon[0]), 3), round(float(lat[0]), 3)
    (-3.0, 57.0)
    """
    t = Transformer.from_crs(CRS.from_user_input(crs), WGS84, always_xy=True)
    lon, lat = t.transform(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    return np.asarray(lon), np.asarray(lat)


def _lonlat_arrays(longitude: Any, latitude: Any, source: str) -> tuple[np.ndarray, np.ndarray]:
    check_lonlat(longitude, latitude, source)
    return (
        np.atleast_1d(np.asarray(longitude, dtype=float)).ravel(),
        np.atleast_1d(np.asarray(latitude, dtype=float)).ravel(),
    )


def _radians(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """``(n, 2)`` [latitude, longitude] in radians, the order BallTree's haversine expects."""
    return np.radians(np.column_stack([lat, lon]))


def geodesic_distance_m(lon1: Any, lat1: Any, lon2: Any, lat2: Any) -> np.ndarray:
    """Geodesic distance on the WGS84 ellipsoid between paired points, in metres.

    Parameters
    ----------
    lon1, lat1, lon2, lat2 : array_like
        Degrees, WGS84; the i-th first point is paired with the i-th second.

    Returns
    -------
    numpy.ndarray
        Distances in metres (pyproj's :meth:`pyproj.Geod.inv`, Karney's
        algorithm, accurate to nanometres).

    Examples
    --------
    >>> round(float(geodesic_distance_m([10.0], [52.0], [10.0], [52.001])[0]), 2)
    111.27
    """
    lon1, lat1 = _lonlat_arrays(lon1, lat1, "geodesic_distance_m: first points")
    lon2, lat2 = _lonlat_arrays(lon2, lat2, "geodesic_distance_m: second points")
    if lon1.shape != lon2.shape:
        raise ValueError(
            f"geodesic_distance_m: {lon1.size} first points but {lon2.size} second points"
        )
    _, _, dist = WGS84_GEOD.inv(lon1, lat1, lon2, lat2)
    return np.asarray(dist, dtype=float)


def nearest_distance_m(query_lon: Any, query_lat: Any, ref_lon: Any, ref_lat: Any) -> np.ndarray:
    """Geodesic distance from each query point to its nearest reference point, in metres.

    Exact on the WGS84 ellipsoid: a haversine :class:`sklearn.neighbors.BallTree`
    (a sphere of radius :data:`EARTH_RADIUS_M`) finds the nearest reference
    on the sphere, every reference up to 2% farther than it is measured on the
    ellipsoid (:func:`geodesic_distance_m`), and the smallest distance is
    returned. The sphere's error is below 0.6%, so the true nearest reference
    is always among those measured.

    Parameters
    ----------
    query_lon, query_lat : array_like
        Degrees, WGS84: the points to measure from (e.g. test samples).
    ref_lon, ref_lat : array_like
        Degrees, WGS84: the points to measure to (e.g. training samples); at
        least one.

    Returns
    -------
    numpy.ndarray
        ``(n_query,)`` distances in metres; 0 where a query coincides with a
        reference.

    Raises
    ------
    ValueError
        If a coordinate is missing or out of range, or there are no references.

    Examples
    --------
    >>> d = nearest_distance_m([10.0, 151.2], [52.0, -33.9],      # Europe, Sydney
    ...                        [10.0, 10.0, 151.2], [52.001, 53.0, -33.9])
    >>> [round(float(v), 2) for v in d]
    [111.27, 0.0]
    """
    qlon, qlat = _lonlat_arrays(query_lon, query_lat, "nearest_distance_m: query points")
    rlon, rlat = _lonlat_arrays(ref_lon, ref_lat, "nearest_distance_m: reference points")
    if rlon.size == 0:
        raise ValueError("nearest_distance_m: no reference points (need at least one)")
    if qlon.size == 0:
        return np.zeros(0, dtype=float)
    from sklearn.neighbors import BallTree

    tree = BallTree(_radians(rlon, rlat), metric="haversine")
    q = _radians(qlon, qlat)
    sphere, _ = tree.query(q, k=1)
    candidates = tree.query_radius(q, r=sphere[:, 0] * _SPHERE_MARGIN + 1e-12)
    qi, rj = _flatten_neighbours(candidates)
    dist = geodesic_distance_m(qlon[qi], qlat[qi], rlon[rj], rlat[rj])
    out = np.full(qlon.size, np.inf)
    np.minimum.at(out, qi, dist)
    return out


def _flatten_neighbours(neighbours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """BallTree.query_radius's array of index arrays as two flat index arrays."""
    counts = np.fromiter((len(n) for n in neighbours), dtype=np.int64, count=len(neighbours))
    i = np.repeat(np.arange(len(neighbours), dtype=np.int64), counts)
    j = np.concatenate(neighbours).astype(np.int64) if counts.sum() else np.zeros(0, np.int64)
    return i, j


@overload
def geodesic_pairs_within(longitude: Any, latitude: Any, distance_m: float,
                          return_distances: Literal[False] = ...) -> np.ndarray: ...


@overload
def geodesic_pairs_within(longitude: Any, latitude: Any, distance_m: float,
                          return_distances: Literal[True]) -> tuple[np.ndarray, np.ndarray]: ...


def geodesic_pairs_within(longitude: Any, latitude: Any, distance_m: float,
                          return_distances: bool = False,
                          ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Pairs of points whose geodesic distance is at most ``distance_m``.

    Candidates come from a haversine :class:`sklearn.neighbors.BallTree`
    radius query (widened by 2% to cover the sphere's error); each candidate
    is then measured on the WGS84 ellipsoid and kept when within
    ``distance_m`` (inclusive, to a micrometre of rounding). Points at equal
    coordinates are always a pair.

    Parameters
    ----------
    longitude, latitude : array_like
        Degrees, WGS84.
    distance_m : float
        Largest distance of a pair, in metres (≥ 0).
    return_distances : bool
        Also return each pair's geodesic distance (the one it was kept by, so a
        caller need not measure the pairs again).

    Returns
    -------
    numpy.ndarray
        ``(n_pairs, 2)`` integer array of indices ``i < j``, sorted.
    numpy.ndarray
        ``(n_pairs,)`` distances in metres, in the same order; only with
        ``return_distances``.

    Examples
    --------
    >>> geodesic_pairs_within([10.0, 10.0, 10.0, 11.0], [52.0, 52.0002, 52.0004, 52.0], 25.0)
    array([[0, 1],
           [1, 2]])
    """
    if not (np.isfinite(distance_m) and distance_m >= 0):
        raise ValueError(
            f"geodesic_pairs_within: distance_m must be a finite distance ≥ 0 in metres, "
            f"got {distance_m}"
        )
    lon, lat = _lonlat_arrays(longitude, latitude, "geodesic_pairs_within")
    if lon.size < 2:
        none = np.zeros((0, 2), dtype=np.int64)
        return (none, np.zeros(0)) if return_distances else none
    from sklearn.neighbors import BallTree

    pts = _radians(lon, lat)
    tree = BallTree(pts, metric="haversine")
    radius = distance_m * _SPHERE_MARGIN / EARTH_RADIUS_M + 1e-12
    i, j = _flatten_neighbours(tree.query_radius(pts, r=radius))
    keep = i < j
    i, j = i[keep], j[keep]
    d = np.zeros(0)
    if i.size:
        # inclusive, to a micrometre: a pair laid out exactly distance_m apart is a pair
        d = geodesic_distance_m(lon[i], lat[i], lon[j], lat[j])
        close = d <= distance_m + 1e-6
        i, j, d = i[close], j[close], d[close]
    order = np.lexsort((j, i))
    pairs = np.column_stack([i, j])[order]
    return (pairs, d[order]) if return_distances else pairs


def utm_zone(longitude: Any) -> np.ndarray:
    """UTM zone number (1-60) of each longitude (standard 6° zones, no exceptions).

    Examples
    --------
    >>> utm_zone([-3.2, 10.0, 151.2, 180.0]).tolist()
    [30, 32, 56, 1]
    """
    lon = np.atleast_1d(np.asarray(longitude, dtype=float))
    return (np.floor((lon + 180.0) / 6.0).astype(np.int64) % 60) + 1


def utm_grid_cells(longitude: Any, latitude: Any, size_m: float) -> np.ndarray:
    """Square grid cell of ``size_m`` metres holding each point, per UTM zone.

    Each point is projected to the transverse Mercator of its own UTM zone
    (always with the northern false northing, EPSG:326zz, so that the grid
    runs on across the equator) and falls in cell ``(zone, floor(x / size_m),
    floor(y / size_m))``. Within a zone the projection's scale stays within
    0.9996-1.001, so a cell's ground size and area are the same to 0.2% on
    every continent; cell edges are aligned on the zone's central meridian
    (x = 500 km) and the equator. Cells end at zone boundaries (every 6° of
    longitude), so a cell that a boundary crosses is two smaller cells.

    Parameters
    ----------
    longitude, latitude : array_like
        Degrees, WGS84.
    size_m : float
        Side of the cells in metres (> 0).

    Returns
    -------
    numpy.ndarray
        ``(n, 3)`` int64 array: UTM zone, column and row of each point's cell.

    Examples
    --------
    >>> utm_grid_cells([9.0, 9.0, 9.9, 151.2], [52.0, 52.3, 52.0, -33.9], 50_000).tolist()
    [[32, 10, 115], [32, 10, 115], [32, 11, 115], [56, 6, -76]]
    """
    if not (np.isfinite(size_m) and size_m > 0):
        raise ValueError(
            f"utm_grid_cells: size_m must be a positive distance in metres, got {size_m}"
        )
    lon, lat = _lonlat_arrays(longitude, latitude, "utm_grid_cells")
    zone = utm_zone(lon)
    x = np.empty_like(lon)
    y = np.empty_like(lat)
    for z in np.unique(zone):
        m = zone == z
        x[m], y[m] = lonlat_to_crs(lon[m], lat[m], 32600 + int(z))
    return np.column_stack(
        [zone, np.floor(x / size_m).astype(np.int64), np.floor(y / size_m).astype(np.int64)]
    )
