"""Tests for fungi_ssl.data.coordinates: the lon/lat check, geodesic distances, UTM grid cells.

Distances are checked against pyproj's ellipsoidal geodesic (Karney's
algorithm) on three continents, where one Europe-centred projection was off by
up to x2.4.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pyproj import Geod

from fungi_ssl.data.coordinates import (
    EARTH_RADIUS_M,
    check_lonlat,
    crs_to_lonlat,
    geodesic_distance_m,
    geodesic_pairs_within,
    lonlat_to_crs,
    nearest_distance_m,
    utm_epsg,
    utm_grid_cells,
    utm_zone,
)

GEOD = Geod(ellps="WGS84")
#: (longitude, latitude) of a point on each continent: central Europe, Japan, New South Wales.
CONTINENTS = {"europe": (10.0, 50.0), "east_asia": (135.0, 35.0), "australia": (150.0, -33.0)}


def scatter(centre: tuple[float, float], n: int, spread_m: float, seed: int) -> np.ndarray:
    """``n`` lon/lat points within ``spread_m`` of ``centre`` (random bearings, pyproj)."""
    rng = np.random.default_rng(seed)
    lon, lat, _ = GEOD.fwd(
        np.full(n, centre[0]),
        np.full(n, centre[1]),
        rng.uniform(0, 360, n),
        spread_m * np.sqrt(rng.uniform(0, 1, n)),
    )
    return np.column_stack([lon, lat])


def pairwise_geodesic(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    i, j = np.meshgrid(np.arange(len(a)), np.arange(len(b)), indexing="ij")
    _, _, d = GEOD.inv(a[i.ravel(), 0], a[i.ravel(), 1], b[j.ravel(), 0], b[j.ravel(), 1])
    return np.asarray(d).reshape(len(a), len(b))


# ------------------------------------------------------------------ check_lonlat
def test_check_lonlat_accepts_valid_coordinates_and_edges():
    check_lonlat([-180.0, 180.0, 0.0], [-90.0, 90.0, 0.0])
    check_lonlat(151.2, -33.9)
    check_lonlat(pd.Series([1.0]), pd.Series([2.0]))


@pytest.mark.parametrize(
    "lon, lat, expected",
    [
        ([6.0, 200.0, -181.0], [50.0, 50.0, 50.0], "longitude is outside -180..180 degrees"),
        ([6.0, 7.0], [50.0, -90.5], "latitude is outside -90..90 degrees"),
        ([6.0, np.nan], [50.0, 50.0], "longitude is missing (NaN) or infinite"),
        ([6.0, 7.0], [np.inf, 50.0], "latitude is missing (NaN) or infinite"),
    ],
)
def test_check_lonlat_names_source_count_and_example(lon, lat, expected):
    with pytest.raises(ValueError) as err:
        check_lonlat(lon, lat, "my_table.csv")
    message = str(err.value)
    assert message.startswith("my_table.csv: ")
    assert expected in message
    bad = [
        i
        for i, (a, b) in enumerate(zip(lon, lat, strict=True))
        if not (np.isfinite(a) and np.isfinite(b) and abs(a) <= 180 and abs(b) <= 90)
    ]
    assert f"in {len(bad)} of {len(lon)} row(s)" in message
    assert f"row {bad[0]}: " in message


def test_check_lonlat_reports_series_by_column_and_file_line():
    lines = pd.Index([2, 3, 4], name="line")
    lon = pd.Series([6.0, 181.5, 7.0], index=lines, name="Pixel_Long")
    lat = pd.Series([50.0, 50.0, 50.0], index=lines, name="Pixel_Lat")
    with pytest.raises(
        ValueError, match=r"spun\.csv: column 'Pixel_Long' is outside .* line 3: 181\.5"
    ):
        check_lonlat(lon, lat, "spun.csv")


def test_check_lonlat_shows_at_most_five_examples():
    with pytest.raises(ValueError) as err:
        check_lonlat(np.arange(300.0, 310.0), np.zeros(10))
    message = str(err.value)
    assert "in 10 of 10 row(s)" in message and message.endswith(", ...")
    assert "row 4: 304.0" in message and "row 5:" not in message


def test_check_lonlat_allow_nan_checks_only_finite_values():
    check_lonlat([np.nan, 6.0], [50.0, np.nan], allow_nan=True)
    with pytest.raises(ValueError, match="1 of 2"):
        check_lonlat([np.nan, 200.0], [50.0, 50.0], allow_nan=True)


def test_check_lonlat_rejects_mismatched_lengths_and_text():
    with pytest.raises(ValueError, match="longitude has 2 values but latitude has 1"):
        check_lonlat([1.0, 2.0], [3.0], "f")
    with pytest.raises(ValueError, match="f: longitude must be numbers"):
        check_lonlat(["east"], [3.0], "f")


def test_utm_epsg_uses_the_shared_check():
    with pytest.raises(ValueError, match="utm_epsg: latitude is outside -90..90"):
        utm_epsg(10.0, 91.0)
    assert utm_epsg(135.0, 35.0) == 32653 and utm_epsg(150.0, -33.0) == 32756


# ------------------------------------------------------------------ distances
@pytest.mark.parametrize("name", list(CONTINENTS))
def test_geodesic_distance_matches_pyproj(name):
    pts = scatter(CONTINENTS[name], 50, 200_000, seed=1)
    d = geodesic_distance_m(pts[:-1, 0], pts[:-1, 1], pts[1:, 0], pts[1:, 1])
    _, _, expected = GEOD.inv(pts[:-1, 0], pts[:-1, 1], pts[1:, 0], pts[1:, 1])
    np.testing.assert_allclose(d, expected, rtol=1e-12)


@pytest.mark.parametrize("name", list(CONTINENTS))
def test_nearest_distance_matches_brute_force_geodesic(name):
    query = scatter(CONTINENTS[name], 300, 50_000, seed=2)
    ref = scatter(CONTINENTS[name], 400, 50_000, seed=3)
    expected = pairwise_geodesic(query, ref).min(axis=1)
    got = nearest_distance_m(query[:, 0], query[:, 1], ref[:, 0], ref[:, 1])
    assert got.shape == (300,)
    # the brief asked for 0.5%; the ellipsoidal re-measurement makes it exact
    np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_nearest_distance_finds_the_ellipsoid_neighbour_where_the_sphere_picks_another():
    """At the equator a meridian metre is 0.6% longer on the sphere than on the ellipsoid,
    a parallel metre 0.1% shorter: the sphere calls the east point nearer, the ellipsoid
    the north one."""
    q = (30.0, 0.0)
    north_lon, north_lat, _ = GEOD.fwd(*q, 0.0, 1000.0)
    east_lon, east_lat, _ = GEOD.fwd(*q, 90.0, 1003.0)
    ref_lon, ref_lat = [east_lon, north_lon], [east_lat, north_lat]
    sphere = EARTH_RADIUS_M * np.radians(
        [abs(east_lon - q[0]), abs(north_lat - q[1])]
    )  # haversine for these axis-aligned steps
    assert sphere[0] < sphere[1]  # the sphere prefers the east point
    d = nearest_distance_m([q[0]], [q[1]], ref_lon, ref_lat)
    assert d[0] == pytest.approx(1000.0, abs=1e-6)


def test_nearest_distance_edge_cases():
    assert nearest_distance_m([], [], [1.0], [2.0]).shape == (0,)
    with pytest.raises(ValueError, match="no reference points"):
        nearest_distance_m([1.0], [2.0], [], [])
    with pytest.raises(ValueError, match="nearest_distance_m: query points: latitude"):
        nearest_distance_m([1.0], [95.0], [1.0], [2.0])
    # across the antimeridian: 0.0002° of longitude at the equator, ~22 m
    d = nearest_distance_m([179.9999], [0.0], [-179.9999, 170.0], [0.0, 0.0])
    assert d[0] == pytest.approx(22.26, abs=0.01)


def test_sphere_error_is_within_the_search_margin():
    """The sphere/ellipsoid ratio stays within 0.6%, inside the 2% the searches allow."""
    rng = np.random.default_rng(4)
    n = 5000
    lon1, lat1 = rng.uniform(-180, 180, n), rng.uniform(-89, 89, n)
    lon2, lat2, _ = GEOD.fwd(lon1, lat1, rng.uniform(0, 360, n), rng.uniform(1, 1e6, n))
    lat1r, lat2r = np.radians(lat1), np.radians(lat2)
    h = (
        np.sin((lat2r - lat1r) / 2) ** 2
        + np.cos(lat1r) * np.cos(lat2r) * np.sin(np.radians(lon2 - lon1) / 2) ** 2
    )
    sphere = 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(h))
    ratio = sphere / geodesic_distance_m(lon1, lat1, lon2, lat2)
    assert 0.994 < ratio.min() and ratio.max() < 1.006


@pytest.mark.parametrize("name", list(CONTINENTS))
def test_geodesic_pairs_within_matches_brute_force(name):
    # clusters of 30 m so that many pairs are close to 25 m
    centres = scatter(CONTINENTS[name], 40, 5_000, seed=5)
    pts = np.vstack([scatter(tuple(c), 8, 30.0, seed=6 + k) for k, c in enumerate(centres)])
    pts = np.vstack([pts, pts[:5]])  # equal coordinates are pairs
    d = pairwise_geodesic(pts, pts)
    i, j = np.nonzero(np.triu(d <= 25.0, k=1))
    got = geodesic_pairs_within(pts[:, 0], pts[:, 1], 25.0)
    assert got.tolist() == np.column_stack([i, j]).tolist()
    same, dist = geodesic_pairs_within(pts[:, 0], pts[:, 1], 25.0, return_distances=True)
    assert same.tolist() == got.tolist()  # each pair with its own distance, in its order
    np.testing.assert_allclose(dist, d[i, j], rtol=0, atol=1e-6)
    assert geodesic_pairs_within(pts[:, 0], pts[:, 1], 0.0).tolist() == [
        [k, len(pts) - 5 + k] for k in range(5)
    ]


def test_geodesic_pairs_within_rejects_a_bad_distance():
    with pytest.raises(ValueError, match="distance_m"):
        geodesic_pairs_within([1.0, 1.0], [2.0, 2.0], -1.0)
    assert geodesic_pairs_within([1.0], [2.0], 25.0).shape == (0, 2)
    pairs, dist = geodesic_pairs_within([1.0], [2.0], 25.0, return_distances=True)
    assert pairs.shape == (0, 2) and dist.shape == (0,)


# ------------------------------------------------------------------ UTM grid cells
def _edge_spacing_m(lon: np.ndarray, lat: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Ground distance between successive changes of ``index`` along a densely sampled line."""
    step = geodesic_distance_m(lon[:-1], lat[:-1], lon[1:], lat[1:])
    along = np.concatenate([[0.0], np.cumsum(step)])
    change = np.flatnonzero(np.diff(index) != 0) + 1
    edges = (along[change - 1] + along[change]) / 2
    return np.diff(edges)


@pytest.mark.parametrize("name", list(CONTINENTS))
def test_grid_cells_have_the_same_ground_size_on_every_continent(name):
    lon0, lat0 = CONTINENTS[name]
    size = 50_000.0
    centre_lon = (utm_zone(lon0)[0] - 1) * 6 - 180 + 3  # the zone's central meridian
    # east-west along a parallel across the central meridian
    lon = np.arange(centre_lon - 2.5, centre_lon + 2.5, 0.0005)
    lat = np.full_like(lon, lat0)
    cells = utm_grid_cells(lon, lat, size)
    assert np.unique(cells[:, 0]).size == 1
    ew = _edge_spacing_m(lon, lat, cells[:, 1])
    # north-south along a meridian just east of the central meridian
    lat = np.arange(lat0 - 1.5, lat0 + 1.5, 0.0005)
    lon = np.full_like(lat, centre_lon + 0.1)
    ns = _edge_spacing_m(lon, lat, utm_grid_cells(lon, lat, size)[:, 2])
    assert len(ew) >= 3 and len(ns) >= 3
    # the zone's scale is 0.9996-1.0004 here; 0.5% also covers the 50 m sampling
    np.testing.assert_allclose(ew, size, rtol=0.005)
    np.testing.assert_allclose(ns, size, rtol=0.005)


def test_grid_cells_are_continuous_across_the_equator_and_split_at_zone_edges():
    cells = utm_grid_cells([9.0, 9.0, 5.999, 6.001], [0.1, -0.1, 10.0, 10.0], 50_000)
    assert cells[0].tolist() == [32, 10, 0] and cells[1].tolist() == [32, 10, -1]
    assert cells[2, 0] == 31 and cells[3, 0] == 32
    x, y = lonlat_to_crs([9.0], [-33.0], 32632)  # northern false northing, south of the equator
    lon, lat = crs_to_lonlat(x, y, 32632)
    assert (round(float(lon[0]), 9), round(float(lat[0]), 9)) == (9.0, -33.0)


def test_grid_cells_reject_bad_input():
    with pytest.raises(ValueError, match="size_m"):
        utm_grid_cells([1.0], [2.0], 0.0)
    with pytest.raises(ValueError, match="utm_grid_cells: longitude"):
        utm_grid_cells([181.0], [2.0], 1000.0)
