"""Sites: samples within 25 m of each other, and the coordinate checks every spatial step shares.

Moved from the cross-validation splitters (:mod:`fungi_ssl.validation.cv`, which
uses them) because reading a sample table already needs them: a table's sites
are a fact of the data, not of how it is validated.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from fungi_ssl.data.coordinates import (
    check_lonlat,
    geodesic_pairs_within,
)

CoordinateKind = Literal["lonlat", "metres"]

#: Site radius of the study's supplement: samples within 25 m (geodesic) are one site.
SITE_DISTANCE_M = 25.0

__all__ = ["SITE_DISTANCE_M", "CoordinateKind", "check_coords", "site_groups"]


# --------------------------------------------------------------------------
# coordinates
# --------------------------------------------------------------------------
def check_coords(
    coords: np.ndarray | pd.DataFrame,
    coordinates: CoordinateKind = "lonlat",
    name: str = "coords",
) -> np.ndarray:
    """Validate sample coordinates and return them as a float ``(n, 2)`` array.

    Parameters
    ----------
    coords : array_like of shape (n, 2) or DataFrame
        Longitude/latitude in WGS84 degrees (``coordinates="lonlat"``) or
        projected x/y in metres (``coordinates="metres"``). A DataFrame must
        have ``longitude`` and ``latitude`` columns (lonlat) or ``x`` and ``y``
        columns (metres).
    coordinates : {"lonlat", "metres"}
        What ``coords`` holds.
    name : str
        Parameter name used in error messages.

    Returns
    -------
    numpy.ndarray
        ``(n, 2)`` float array, a copy of ``coords`` in the same units (the
        input is not modified).

    Raises
    ------
    ValueError
        If the shape is not ``(n, 2)``, a value is NaN or infinite, or a
        longitude/latitude is out of range
        (:func:`fungi_ssl.data.coordinates.check_lonlat`).

    Examples
    --------
    >>> check_coords([[10.0, 52.0], [151.2, -33.9]]).shape
    (2, 2)
    >>> check_coords([[200.0, 52.0]])
    Traceback (most recent call last):
    ...
    ValueError: coords: longitude is outside -180..180 degrees (not a WGS84 longitude/latitude) in 1 of 1 row(s): row 0: 200.0 (pass coordinates='metres' for projected coordinates)
    """
    if coordinates not in ("lonlat", "metres"):
        raise ValueError(f"coordinates must be 'lonlat' or 'metres', got {coordinates!r}")
    if isinstance(coords, pd.DataFrame):
        cols = ("longitude", "latitude") if coordinates == "lonlat" else ("x", "y")
        missing = [c for c in cols if c not in coords.columns]
        if missing:
            raise ValueError(
                f"{name}: DataFrame needs columns {list(cols)} for coordinates="
                f"{coordinates!r}; missing {missing}"
            )
        arr = coords[list(cols)].to_numpy(dtype=float)
    else:
        try:
            arr = np.array(coords, dtype=float)  # a copy: never touch the caller's array
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"{name}: expected a numeric (n, 2) array, got {type(coords)}"
            ) from err
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(
            f"{name}: expected shape (n, 2) ({'lon, lat' if coordinates == 'lonlat' else 'x, y'}),"
            f" got {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{name}: no coordinates (0 rows)")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name}: {int(bad.sum())} row(s) with NaN or infinite coordinates, first at row {first}"
        )
    if coordinates == "lonlat":
        try:
            check_lonlat(arr[:, 0], arr[:, 1], name)
        except ValueError as err:
            raise ValueError(
                f"{err} (pass coordinates='metres' for projected coordinates)"
            ) from None
    return arr


def site_groups(
    coords: np.ndarray | pd.DataFrame,
    distance_m: float = SITE_DISTANCE_M,
    coordinates: CoordinateKind = "lonlat",
) -> np.ndarray:
    """Label sites: samples within ``distance_m`` of each other share a label.

    This is the package's one definition of a site (the ``site_id`` of
    ``CONTRIBUTING.md``; :func:`fungi_ssl.data.io.derive_site_ids` names these
    groups). Single linkage: two samples are in one site when a chain of
    samples, each within ``distance_m`` (inclusive) of the next, joins them.
    These are the connected components of the radius graph, so samples at
    equal coordinates are always one site. For lon/lat the distance is the
    geodesic on the WGS84 ellipsoid
    (:func:`fungi_ssl.data.coordinates.geodesic_pairs_within`), the same on every
    continent; for metres it is Euclidean.

    Parameters
    ----------
    coords : array_like of shape (n, 2) or DataFrame
        Sample coordinates (see :func:`check_coords`).
    distance_m : float
        Linkage distance in metres (default 25 m, the study's supplement).
        0 groups only samples at identical coordinates.
    coordinates : {"lonlat", "metres"}
        What ``coords`` holds.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` integer labels ``0 … n_sites - 1``, numbered in order of
        each site's first sample.

    Examples
    --------
    >>> xy = [[0.0, 0.0], [20.0, 0.0], [40.0, 0.0], [500.0, 0.0]]
    >>> site_groups(xy, distance_m=25, coordinates="metres")
    array([0, 0, 0, 1])
    >>> site_groups([[151.2, -33.9], [151.2, -33.9002], [151.2, -33.9004]])  # ~22 m steps
    array([0, 0, 0])
    """
    if not np.isfinite(distance_m) or distance_m < 0:
        raise ValueError(f"distance_m must be a finite distance ≥ 0 in metres, got {distance_m}")
    arr = check_coords(coords, coordinates)
    # Many cores share one plot coordinate: link unique points only.
    unique, inverse = np.unique(arr, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    m = len(unique)
    if coordinates == "lonlat":
        pairs = geodesic_pairs_within(unique[:, 0], unique[:, 1], float(distance_m))
    else:
        pairs = cKDTree(unique).query_pairs(r=float(distance_m), output_type="ndarray")
    graph = coo_matrix(
        (np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(m, m)
    )
    _, comp = connected_components(graph, directed=False)
    labels = comp[inverse]
    # Renumber in order of first appearance so labels do not depend on np.unique's sort.
    _, first, relabel = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[relabel.ravel()].astype(np.int64)


def _site_centres(coords: np.ndarray, sites: np.ndarray, coordinates: CoordinateKind) -> np.ndarray:
    """Centre of each site (``(n_sites, 2)``), in the units of ``coords``.

    The mean position; for lon/lat, a site that spans the antimeridian is
    averaged across it, and a site whose samples share one coordinate keeps
    that coordinate exactly (so a sample on a block or zone edge stays put).
    """
    counts = np.bincount(sites)
    x = coords[:, 0].copy()
    if coordinates == "lonlat":
        lo = np.full(len(counts), np.inf)
        hi = np.full(len(counts), -np.inf)
        np.minimum.at(lo, sites, x)
        np.maximum.at(hi, sites, x)
        wraps = (hi - lo > 180.0)[sites]
        x[wraps & (x < 0)] += 360.0
    centre = np.column_stack(
        [np.bincount(sites, weights=x) / counts, np.bincount(sites, weights=coords[:, 1]) / counts]
    )
    if coordinates == "lonlat":
        centre[:, 0] = (centre[:, 0] + 180.0) % 360.0 - 180.0
    first = np.zeros(len(counts), dtype=np.int64)
    first[sites[::-1]] = np.arange(len(sites))[::-1]
    same = np.ones(len(counts), dtype=bool)
    np.logical_and.at(same, sites, (coords == coords[first[sites]]).all(axis=1))
    centre[same] = coords[first[same]]
    return centre

