"""Coordinate reference systems and projections shared by every stage.

Samples arrive in WGS84 longitude/latitude; rasters (simulated tiles, TESSERA
tiles) live in the UTM zone of their centre, at 10 m. Spatial cross-validation
needs distances in metres. The functions here are the one place where those
conversions happen, so that every module agrees on them.
"""

from __future__ import annotations

import numpy as np
from pyproj import CRS, Transformer

WGS84 = CRS.from_epsg(4326)
#: Equal-area CRS used to measure distances between samples anywhere in
#: Europe/Asia: Lambert azimuthal equal-area centred on Europe (ETRS89-LAEA
#: uses 52N 10E). Distances up to a few hundred kilometres are within ~1%.
EQUAL_AREA = CRS.from_proj4(
    "+proj=laea +lat_0=52 +lon_0=10 +x_0=4321000 +y_0=3210000 +datum=WGS84 +units=m +no_defs"
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
    if not (-180.0 <= longitude <= 180.0 and -90.0 <= latitude <= 90.0):
        raise ValueError(
            f"utm_epsg: ({longitude}, {latitude}) is not a WGS84 longitude/latitude pair"
        )
    zone = int(np.floor((longitude + 180.0) / 6.0)) % 60 + 1
    return (32600 if latitude >= 0 else 32700) + zone


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


def project_metres(longitude: np.ndarray, latitude: np.ndarray) -> np.ndarray:
    """Project lon/lat to metres in :data:`EQUAL_AREA`, as an ``(n, 2)`` array.

    This is what spatial cross-validation and distance buffers use, so that a
    "25 m site radius" or a "100 km block" means the same thing everywhere.

    Examples
    --------
    >>> xy = project_metres([10.0, 10.0], [52.0, 52.001])
    >>> round(float(np.hypot(*(xy[1] - xy[0]))))
    111
    """
    x, y = lonlat_to_crs(longitude, latitude, EQUAL_AREA)
    return np.column_stack([np.atleast_1d(x), np.atleast_1d(y)])
