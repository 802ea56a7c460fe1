"""Tests for fungi_ssl.embeddings.tessera: reading geotessera tiles and sampling patches.

The tiles here are written by this file's own writer (np.save + rioxarray),
in the layout geotessera 0.10.1 downloads, not by ``tessera_write.write_tile``, so
that the reader is checked against an independent copy of the format.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import rioxarray  # noqa: F401
import xarray as xr
from affine import Affine

from fungi_ssl.data.coordinates import crs_to_lonlat, lonlat_to_crs
from fungi_ssl.embeddings import tessera, tessera_patches, tessera_write

YEAR = 2024
H = W = 20
LAT = 52.05  # all test tiles sit in the row of cells centred on 52.05 N


def _write_geotessera_tile(
    root: Path,
    year: int,
    c_lon: float,
    c_lat: float,
    epsg: int,
    x0: float,
    y0: float,
    emb: np.ndarray,
    scale: np.ndarray,
    land: np.ndarray | None = None,
) -> None:
    """Write one tile exactly as geotessera lays it out, from first principles."""
    name = f"grid_{c_lon:.2f}_{c_lat:.2f}"
    folder = root / "global_0.1_degree_representation" / str(year) / name
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{name}.npy", emb)
    np.save(folder / f"{name}_scales.npy", scale)
    lm_dir = root / "global_0.1_degree_tiff_all"
    lm_dir.mkdir(parents=True, exist_ok=True)
    h, w = emb.shape[:2]
    lm = np.ones((h, w), np.uint8) if land is None else land.astype(np.uint8)
    da = xr.DataArray(
        lm,
        dims=("y", "x"),
        coords={"y": y0 - 5.0 - 10.0 * np.arange(h), "x": x0 + 5.0 + 10.0 * np.arange(w)},
    )
    da.rio.write_crs(f"EPSG:{epsg}").rio.to_raster(lm_dir / f"{name}.tiff")


def _snap(v: float) -> float:
    return float(np.round(v / 10.0) * 10.0)


class Tile:
    """What a test tile holds, to check the reader against."""

    def __init__(self, c_lon, epsg, x0, y0, seed):
        rng = np.random.default_rng(seed)
        self.c_lon, self.epsg, self.x0, self.y0 = c_lon, epsg, x0, y0
        self.emb = rng.integers(-127, 128, size=(H, W, 128)).astype(np.int8)
        self.scale = rng.uniform(0.001, 0.02, size=(H, W)).astype(np.float32)
        self.deq = self.emb.astype(np.float32) * self.scale[..., None]

    def centre_lonlat(self, row, col, dx=0.0, dy=0.0):
        x = self.x0 + 10.0 * col + 5.0 + dx
        y = self.y0 - 10.0 * row - 5.0 + dy
        lon, lat = crs_to_lonlat([x], [y], self.epsg)
        return float(lon[0]), float(lat[0])

    def find_pixel(self, vector):
        """(row, col) of the pixel whose dequantised vector equals ``vector``."""
        hit = np.argwhere(np.all(self.deq == vector, axis=-1))
        assert len(hit) == 1, f"vector found {len(hit)} times in tile {self.c_lon}"
        return tuple(hit[0])


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    """Four 20×20×128 tiles: A|B abutting in UTM 31, D|C abutting across the 31/32 seam."""
    root = tmp_path_factory.mktemp("tessera")
    # A and B share zone 31 and one pixel grid; their rasters meet at lon 0.1.
    e, n = lonlat_to_crs([0.1], [LAT], 32631)
    edge, top = _snap(float(e[0])), _snap(float(n[0])) + 100.0
    a = Tile(0.05, 32631, edge - 10.0 * W, top, seed=1)
    b = Tile(0.15, 32631, edge, top, seed=2)
    # D (zone 31) ends at lon 6.0; C (zone 32) starts 30 m west of lon 6.0,
    # overlapping D as real neighbouring tiles do.
    e31, n31 = lonlat_to_crs([6.0], [LAT], 32631)
    e32, n32 = lonlat_to_crs([6.0], [LAT], 32632)
    d = Tile(5.95, 32631, _snap(float(e31[0])) - 10.0 * W, _snap(float(n31[0])) + 100.0, seed=3)
    c = Tile(6.05, 32632, _snap(float(e32[0])) - 30.0, _snap(float(n32[0])) + 100.0, seed=4)
    for t in (a, b, c, d):
        _write_geotessera_tile(root, YEAR, t.c_lon, LAT, t.epsg, t.x0, t.y0, t.emb, t.scale)
    # One tile of another year, and a stray file that is not a tile.
    _write_geotessera_tile(root, 2023, a.c_lon, LAT, a.epsg, a.x0, a.y0, a.emb, a.scale)
    np.save(root / "global_0.1_degree_representation" / str(YEAR) / "notes.npy", np.zeros(3))
    return {"root": root, "A": a, "B": b, "C": c, "D": d}


def _copy(tiles, tmp_path) -> Path:
    root = tmp_path / "copy"
    shutil.copytree(tiles["root"], root)
    return root


def _quiet_sample(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean sample must not warn
        return tessera_patches.sample_patches(*args, progress=False, **kwargs)


# ---------------------------------------------------------------- names


def test_tile_names_follow_geotessera_grid():
    # The two examples of geotessera's tile_from_world docstring.
    assert tessera.tile_for_point(0.17, 52.23) == (0.15, 52.25)
    assert tessera.tile_for_point(-0.12, -0.03) == (-0.15, -0.05)
    assert tessera.tile_name(0.17, 52.23) == "grid_0.15_52.25"
    assert tessera.tile_name(-0.12, -0.03) == "grid_-0.15_-0.05"
    # Edges belong to the cell east/north; no negative zero in names.
    assert tessera.tile_name(0.1, 52.0) == "grid_0.15_52.05"
    assert tessera.tile_name(-0.0, -0.0) == "grid_0.05_0.05"
    assert tessera.tile_name(-0.01, 0.0) == "grid_-0.05_0.05"
    assert tessera.tile_name(180.0, 90.0) == "grid_179.95_89.95"
    # Every point lies in the cell it is given; centres map to themselves.
    rng = np.random.default_rng(0)
    for lon, lat in zip(rng.uniform(-180, 180, 500), rng.uniform(-90, 90, 500)):
        c_lon, c_lat = tessera.tile_for_point(lon, lat)
        assert c_lon - 0.05 - 1e-9 <= lon < c_lon + 0.05 + 1e-9
        assert c_lat - 0.05 - 1e-9 <= lat < c_lat + 0.05 + 1e-9
        assert tessera.tile_for_point(c_lon, c_lat) == (c_lon, c_lat)
        assert tessera.parse_tile_name(tessera.tile_name(lon, lat)) == (c_lon, c_lat)
    with pytest.raises(ValueError, match="longitude"):
        tessera.tile_name(200.0, 10.0)
    with pytest.raises(ValueError, match="not a tile centre"):
        tessera.parse_tile_name("grid_0.10_52.05")


def test_tile_paths_match_geotessera_layout():
    p = tessera.tile_paths("/data/t", 2024, -3.21, 57.08)
    assert p.embedding.as_posix() == (
        "/data/t/global_0.1_degree_representation/2024/grid_-3.25_57.05/grid_-3.25_57.05.npy"
    )
    assert p.scales.as_posix() == (
        "/data/t/global_0.1_degree_representation/2024/grid_-3.25_57.05/grid_-3.25_57.05_scales.npy"
    )
    assert p.landmask.as_posix() == "/data/t/global_0.1_degree_tiff_all/grid_-3.25_57.05.tiff"


# ------------------------------------------------------------ discovery


def test_find_tiles_discovers_tiles_with_their_georeferencing(tiles):
    found = tessera.find_tiles(tiles["root"], YEAR)
    assert [t.name for t in found] == [
        "grid_0.05_52.05",
        "grid_0.15_52.05",
        "grid_5.95_52.05",
        "grid_6.05_52.05",
    ]
    by_lon = {t.lon: t for t in found}
    for key in "ABCD":
        ref = tiles[key]
        t = by_lon[ref.c_lon]
        assert (t.year, t.lat, t.shape) == (YEAR, LAT, (H, W, 128))
        assert t.crs.to_epsg() == ref.epsg
        assert t.transform == Affine(10.0, 0.0, ref.x0, 0.0, -10.0, ref.y0)
        assert t.bounds == pytest.approx(
            (ref.c_lon - 0.05, LAT - 0.05, ref.c_lon + 0.05, LAT + 0.05)
        )
    assert [t.name for t in tessera.find_tiles(tiles["root"], 2023)] == ["grid_0.05_52.05"]
    assert [t.year for t in tessera.find_tiles(tiles["root"])] == [2023] + [YEAR] * 4


def test_open_tile_is_memory_mapped_and_georeferenced(tiles):
    a = tiles["A"]
    ds = tessera.open_tile(tiles["root"], YEAR, 0.07, 52.01)  # any point of the cell
    assert ds.embedding.dims == ("y", "x", "dim") and ds.embedding.dtype == np.int8
    assert ds.scale.dims == ("y", "x") and ds.scale.dtype == np.float32
    assert isinstance(ds.embedding.data, np.memmap)  # lazily read, not copied
    assert ds.rio.crs.to_epsg() == 32631
    assert tuple(ds.rio.transform())[:6] == (10.0, 0.0, a.x0, 0.0, -10.0, a.y0)
    assert float(ds.x[0]) == a.x0 + 5.0 and float(ds.y[-1]) == a.y0 - 10.0 * H + 5.0
    np.testing.assert_array_equal(ds.embedding.values, a.emb)
    np.testing.assert_array_equal(ds.scale.values, a.scale)
    assert bool(ds.land.all())
    assert ds.attrs["tile"] == "grid_0.05_52.05" and ds.attrs["year"] == YEAR


# -------------------------------------------------------- dequantisation


def test_dequantise_is_embedding_times_scale(tiles):
    a = tiles["A"]
    emb_before, scale_before = a.emb.copy(), a.scale.copy()
    out = tessera.dequantise(a.emb, a.scale)
    assert out.dtype == np.float32 and out.shape == (H, W, 128)
    np.testing.assert_array_equal(out, a.deq)
    np.testing.assert_array_equal(tessera.dequantise(a.emb, a.scale[..., None]), a.deq)
    np.testing.assert_array_equal(a.emb, emb_before)  # inputs untouched
    np.testing.assert_array_equal(a.scale, scale_before)
    # From an open tile (a window of it) the same values come back.
    ds = tessera.open_tile(tiles["root"], YEAR, a.c_lon, LAT).isel(y=slice(2, 5), x=slice(3, 9))
    da = tessera.dequantise(ds)
    assert da.dims == ("y", "x", "dim")
    np.testing.assert_array_equal(da.values, a.deq[2:5, 3:9])
    # A non-finite scale means no data.
    s = a.scale.copy()
    s[0, 0], s[0, 1] = np.nan, np.inf
    bad = tessera.dequantise(a.emb, s)
    assert np.isnan(bad[0, :2]).all() and np.isfinite(bad[1:]).all()
    with pytest.raises(ValueError, match="does not match"):
        tessera.dequantise(a.emb, a.scale[:-1])


# ------------------------------------------------------------- patches


def test_patch_values_at_known_pixels(tiles):
    a = tiles["A"]
    # Pixel centres and off-centre points inside pixel (5, 7).
    pts = [a.centre_lonlat(5, 7), a.centre_lonlat(5, 7, dx=3.9, dy=-4.2), a.centre_lonlat(12, 3)]
    lon, lat = np.array(pts).T
    p = _quiet_sample(tiles["root"], YEAR, lon, lat, k=3)
    assert p.dims == ("sample", "row", "col", "dim") and p.shape == (3, 3, 3, 128)
    assert p.dtype == np.float32
    np.testing.assert_array_equal(p[0].values, a.deq[4:7, 6:9])
    np.testing.assert_array_equal(p[1].values, a.deq[4:7, 6:9])
    np.testing.assert_array_equal(p[2].values, a.deq[11:14, 2:5])
    assert (p.attrs["n_outside"], p.attrs["n_incomplete"]) == (0, 0)
    # (row, col, dim) flattening of CONTRIBUTING's ssl_0000..ssl_1151.
    flat = p.values.reshape(3, -1)
    assert flat.shape == (3, 1152)
    np.testing.assert_array_equal(flat[0, 128:256], a.deq[4, 7])  # row -1, col 0
    # k = 5 and k = 1 take the same centre.
    p5 = _quiet_sample(tiles["root"], YEAR, lon[:1], lat[:1], k=5)
    np.testing.assert_array_equal(p5[0].values, a.deq[3:8, 5:10])
    p1 = _quiet_sample(tiles["root"], YEAR, lon[:1], lat[:1], k=1)
    np.testing.assert_array_equal(p1[0, 0, 0].values, a.deq[5, 7])


def test_patch_across_edge_of_two_tiles_in_one_zone(tiles):
    a, b = tiles["A"], tiles["B"]
    lon, lat = np.array([a.centre_lonlat(10, W - 1), b.centre_lonlat(10, 0)]).T
    p = _quiet_sample(tiles["root"], YEAR, lon, lat, k=3)
    # Last column of A, then the first column of B, in one patch.
    np.testing.assert_array_equal(p[0, :, :2].values, a.deq[9:12, W - 2 :])
    np.testing.assert_array_equal(p[0, :, 2].values, b.deq[9:12, 0])
    np.testing.assert_array_equal(p[1, :, 0].values, a.deq[9:12, W - 1])
    np.testing.assert_array_equal(p[1, :, 1:].values, b.deq[9:12, :2])
    assert p.attrs["n_pixels_from_other_tiles"] == 6


def test_patch_across_utm_zone_seam(tiles):
    d, c = tiles["D"], tiles["C"]  # D in UTM 31 west of lon 6; C in UTM 32 east of it
    lon, lat = d.centre_lonlat(10, W - 1)
    p = _quiet_sample(tiles["root"], YEAR, [lon], [lat], k=3)
    np.testing.assert_array_equal(p[0, :, :2].values, d.deq[9:12, W - 2 :])
    # The east column comes from C: for each row, the C pixel containing the
    # centre of D's (missing) pixel in column W, so within half a pixel (5 m)
    # of it along both axes of C's grid.
    for i, row in enumerate((9, 10, 11)):
        r, col = c.find_pixel(p[0, i, 2].values)
        s_lon, s_lat = d.centre_lonlat(row, W)
        sx, sy = lonlat_to_crs([s_lon], [s_lat], 32632)
        cx, cy = c.x0 + 10.0 * col + 5.0, c.y0 - 10.0 * r - 5.0
        assert abs(float(sx[0]) - cx) <= 5.0 + 1e-6 and abs(float(sy[0]) - cy) <= 5.0 + 1e-6
    assert p.attrs["n_pixels_from_other_tiles"] == 3


def test_points_outside_every_tile_are_nan_and_counted(tiles):
    a = tiles["A"]
    inside = a.centre_lonlat(5, 5)
    far = (10.0, 45.0)  # no tile in this cell
    off_raster = (0.02, 52.02)  # cell of A, but off A's small raster
    lon = [inside[0], far[0], off_raster[0], np.nan]
    lat = [inside[1], far[1], off_raster[1], 52.0]
    with pytest.warns(UserWarning, match="3 fall outside every TESSERA tile"):
        p = tessera_patches.sample_patches(tiles["root"], YEAR, lon, lat, progress=False)
    assert p.attrs["n_outside"] == 3 and p.attrs["n_incomplete"] == 0
    assert np.isnan(p[1:].values).all()
    np.testing.assert_array_equal(p[0].values, a.deq[4:7, 4:7])


def test_patch_at_corner_without_neighbours_is_partial(tiles):
    a = tiles["A"]
    lon, lat = a.centre_lonlat(0, 0)  # north-west corner: nothing north or west
    with pytest.warns(UserWarning, match="1 have a 3×3 patch with NaN"):
        p = tessera_patches.sample_patches(tiles["root"], YEAR, [lon], [lat], progress=False)
    missing = np.isnan(p[0].values).all(axis=-1)
    assert missing.tolist() == [[True, True, True], [True, False, False], [True, False, False]]
    np.testing.assert_array_equal(p[0, 1:, 1:].values, a.deq[:2, :2])
    assert (p.attrs["n_outside"], p.attrs["n_incomplete"]) == (0, 1)


def test_point_in_overlap_is_read_from_the_neighbouring_tile(tiles, tmp_path):
    # Tiles overlap their neighbours by the UTM envelope. With the tile of a
    # point's own cell absent, the neighbour whose raster covers it is used.
    b = tiles["B"]
    root = tmp_path / "overlap"
    e, _ = lonlat_to_crs([0.1], [LAT], 32631)
    x0 = _snap(float(e[0])) - 50.0  # B's raster starts 50 m inside cell 0.05
    _write_geotessera_tile(root, YEAR, b.c_lon, LAT, b.epsg, x0, b.y0, b.emb, b.scale)
    shifted = Tile(b.c_lon, b.epsg, x0, b.y0, seed=2)  # same pixels, moved west
    lon, lat = shifted.centre_lonlat(10, 1)
    assert tessera.tile_name(lon, lat) == "grid_0.05_52.05"  # a cell with no tile
    p = _quiet_sample(root, YEAR, [lon], [lat])
    np.testing.assert_array_equal(p[0].values, b.deq[9:12, 0:3])
    assert p.attrs["n_pixels_from_other_tiles"] == 0


def test_mask_water_uses_the_landmask(tiles, tmp_path):
    a = tiles["A"]
    root = tmp_path / "water"
    land = np.ones((H, W), bool)
    land[5, 5] = False
    _write_geotessera_tile(root, YEAR, a.c_lon, LAT, a.epsg, a.x0, a.y0, a.emb, a.scale, land=land)
    lon, lat = a.centre_lonlat(5, 5)
    kept = _quiet_sample(root, YEAR, [lon], [lat])
    np.testing.assert_array_equal(kept[0, 1, 1].values, a.deq[5, 5])
    with pytest.warns(UserWarning, match="1 have"):
        masked = tessera_patches.sample_patches(root, YEAR, [lon], [lat], mask_water=True, progress=False)
    assert np.isnan(masked[0, 1, 1].values).all()
    assert np.isfinite(masked[0, 0].values).all()


def test_scales_stored_as_h_w_1_are_read(tiles, tmp_path):
    a = tiles["A"]
    root = tmp_path / "hw1"
    _write_geotessera_tile(root, YEAR, a.c_lon, LAT, a.epsg, a.x0, a.y0, a.emb, a.scale[..., None])
    ds = tessera.open_tile(root, YEAR, a.c_lon, LAT)
    assert ds.scale.dims == ("y", "x")
    lon, lat = a.centre_lonlat(3, 3)
    np.testing.assert_array_equal(
        _quiet_sample(root, YEAR, [lon], [lat])[0].values, a.deq[2:5, 2:5]
    )


# --------------------------------------------------------------- errors


def test_missing_scales_file_is_a_clear_error(tiles, tmp_path):
    root = _copy(tiles, tmp_path)
    scales = tessera.tile_paths(root, YEAR, 0.15, LAT).scales
    scales.unlink()
    for call in (
        lambda: tessera.open_tile(root, YEAR, 0.15, LAT),
        lambda: tessera.find_tiles(root, YEAR),
        lambda: tessera_patches.sample_patches(root, YEAR, [0.15], [LAT], progress=False),
    ):
        with pytest.raises(FileNotFoundError, match="scales") as err:
            call()
        assert str(scales) in str(err.value)
    with pytest.warns(UserWarning, match="skipping"):
        assert len(tessera.find_tiles(root, YEAR, strict=False)) == 3


def test_scales_of_wrong_shape_is_a_clear_error(tiles, tmp_path):
    root = _copy(tiles, tmp_path)
    scales = tessera.tile_paths(root, YEAR, 0.05, LAT).scales
    np.save(scales, np.ones((H - 1, W), np.float32))
    with pytest.raises(ValueError, match=r"shape \(19, 20\); expected \(20, 20\)"):
        tessera.open_tile(root, YEAR, 0.05, LAT)


def test_missing_landmask_is_a_clear_error(tiles, tmp_path):
    root = _copy(tiles, tmp_path)
    landmask = tessera.tile_paths(root, YEAR, 0.05, LAT).landmask
    landmask.unlink()
    with pytest.raises(FileNotFoundError, match="landmask") as err:
        tessera.open_tile(root, YEAR, 0.05, LAT)
    assert str(landmask) in str(err.value)


def test_bad_roots_and_arguments_are_clear_errors(tiles, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tessera.find_tiles(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no geotessera download"):
        tessera.find_tiles(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"years present: \[2023, 2024\]"):
        tessera_patches.sample_patches(tiles["root"], 2019, [0.05], [LAT])
    with pytest.raises(ValueError, match="pass its parent"):
        tessera.find_tiles(tiles["root"] / "global_0.1_degree_representation")
    with pytest.raises(FileNotFoundError, match="embedding file"):
        tessera.open_tile(tiles["root"], YEAR, 10.0, 45.0)
    with pytest.raises(ValueError, match="odd"):
        tessera_patches.sample_patches(tiles["root"], YEAR, [0.05], [LAT], k=2)
    with pytest.raises(ValueError, match="longitude has 2 values but latitude has 1"):
        tessera_patches.sample_patches(tiles["root"], YEAR, [0.05, 0.1], [LAT])
    with pytest.raises(ValueError, match="not a WGS84"):
        tessera_patches.sample_patches(tiles["root"], YEAR, [200.0], [LAT])


# -------------------------------------------------------------- writing


def test_write_tile_round_trips_and_tile_grid_covers_the_cell(tmp_path, tiles):
    a = tiles["A"]
    t = Affine(10.0, 0.0, a.x0, 0.0, -10.0, a.y0)
    paths = tessera_write.write_tile(tmp_path, YEAR, a.c_lon, LAT, a.emb, a.scale, transform=t)
    assert paths == tessera.tile_paths(tmp_path, YEAR, a.c_lon, LAT)
    ds = tessera.open_tile(tmp_path, YEAR, a.c_lon, LAT)
    assert ds.rio.crs.to_epsg() == 32631 and tuple(ds.rio.transform())[:6] == tuple(t)[:6]
    np.testing.assert_array_equal(tessera.dequantise(ds).values, a.deq)
    with pytest.raises(FileExistsError):
        tessera_write.write_tile(tmp_path, YEAR, a.c_lon, LAT, a.emb, a.scale, transform=t)
    with pytest.raises(ValueError, match="tile grid"):
        tessera_write.write_tile(tmp_path / "x", YEAR, a.c_lon, LAT, a.emb, a.scale)
    # The computed grid holds the whole 0.1° cell (corners and edge midpoints)
    # with at most one pixel of slack at the envelope.
    g = tessera_write.tile_grid(6.05, -33.95)
    assert g.epsg == 32732
    lon = 6.05 + np.array([-0.05, 0.05, -0.05, 0.05, 0.0, 0.0, -0.05, 0.05])
    lat = -33.95 + np.array([0.05, 0.05, -0.05, -0.05, 0.05, -0.05, 0.0, 0.0])
    x, y = lonlat_to_crs(lon, lat, g.epsg)
    col = (x - g.transform.c) / 10.0
    row = (g.transform.f - y) / 10.0
    assert col.min() >= -1e-6 and col.max() <= g.width + 1
    assert row.min() >= -1e-6 and row.max() <= g.height + 1


def _one_tile(root: Path) -> None:
    g = tessera_write.tile_grid(0.15, 52.05)
    tessera_write.write_tile(root, 2021, 0.15, 52.05, np.ones((20, 20, 8), np.int8),
                       np.full((20, 20), 0.1, np.float32),
                       transform=Affine(10, 0, g.transform.c + 500, 0, -10, g.transform.f - 500))


def test_a_download_without_its_metadata_is_not_silently_called_tessera(tmp_path):
    """The encoder signature of tiles is their TESSERA dataset version; without
    tessera_metadata.json it is 'tessera:unknown-version' and a warning says so, for the map
    reader, the patch reader and a tile opened alone."""
    import json

    import pandas as pd

    from fungi_ssl.maps.modelspec import encoder_signature
    from fungi_ssl.maps.sources import open_embedding_source
    from fungi_ssl.predictors.tables import embedding_patches

    _one_tile(tmp_path)
    g = tessera_write.tile_grid(0.15, 52.05)
    lon, lat = crs_to_lonlat([g.transform.c + 600], [g.transform.f - 600], g.epsg)
    samples = {"longitude": lon, "latitude": lat}
    bbox = (float(lon[0]) - 0.0005, float(lat[0]) - 0.0005, float(lon[0]) + 0.0005,
            float(lat[0]) + 0.0005)
    with pytest.warns(UserWarning, match="record no dataset version") as rec:
        src = open_embedding_source(tmp_path, 2021, bbox)
    assert src.encoder == "tessera:unknown-version" and len(rec) == 1
    assert "\n" not in str(rec[0].message) and tessera.METADATA_FILENAME in str(rec[0].message)
    with pytest.warns(UserWarning, match="record no dataset version"):
        _, enc, _ = embedding_patches(pd.DataFrame(samples), tmp_path, progress=False)
    assert enc == "tessera:unknown-version"
    assert encoder_signature(tessera.open_tile(tmp_path, 2021, 0.15, 52.05)) == enc
    # with the sidecar geotessera writes, the version is the signature, and nothing is said
    (tmp_path / tessera.METADATA_FILENAME).write_text(json.dumps({"dataset_version": "v1"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert open_embedding_source(tmp_path, 2021, bbox).encoder == "tessera:v1"
        _, enc, _ = embedding_patches(pd.DataFrame(samples), tmp_path, progress=False)
    assert enc == "tessera:v1" == encoder_signature(tessera.open_tile(tmp_path, 2021, 0.15, 52.05))
    assert tessera.dataset_version(tmp_path) == "v1"
