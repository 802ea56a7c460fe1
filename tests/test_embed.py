"""Tests of chunked embedding to Zarr, resume, patch sampling and caching."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import rioxarray  # noqa: F401
import xarray as xr

from fungi_ssl.data.coordinates import crs_to_lonlat
from fungi_ssl.embeddings.embed import (
    cached_embed_cube,
    cached_pretrain,
    embed_cube,
    open_embeddings,
    patch_features_frame,
    raster_patches,
)
from fungi_ssl.embeddings.encoder import EncoderConfig, TesseraEncoder, TrainedEncoder, dequantise
from fungi_ssl.embeddings.inference import embed_pixels, quantise
from fungi_ssl.embeddings.pixels import S1_BANDS, S2_BANDS, PixelTimeSeries

# the fixture cube has one no-data pixel on purpose; its warning is asserted once below
pytestmark = pytest.mark.filterwarnings("ignore:embed_cube.*no valid")

TINY = EncoderConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, n_timesteps=8,
                     projector_dims=(32, 32))


def make_cube(ny: int = 10, nx: int = 13, t2: int = 18, t1: int = 12, seed: int = 0,
              chunks: dict | None = None) -> xr.Dataset:
    """Tiny cube in the exact CONTRIBUTING.md format (UTM 30N, 10 m)."""
    rng = np.random.default_rng(seed)
    doy2 = np.sort(rng.choice(np.arange(1, 366), t2, replace=False))
    doy1 = np.sort(rng.choice(np.arange(1, 366), t1, replace=False))
    s2_valid = rng.random((t2, ny, nx)) > 0.4
    s1_valid = rng.random((t1, ny, nx)) > 0.05
    s2_valid[:, 0, 0] = False  # one pixel with no data at all
    s1_valid[:, 0, 0] = False
    ds = xr.Dataset(
        {
            "s2": (("time_s2", "band_s2", "y", "x"),
                   rng.uniform(200, 4000, (t2, 10, ny, nx)).astype(np.float32)),
            "s2_valid": (("time_s2", "y", "x"), s2_valid),
            "s1": (("time_s1", "band_s1", "y", "x"),
                   rng.normal(-12, 3, (t1, 2, ny, nx)).astype(np.float32)),
            "s1_valid": (("time_s1", "y", "x"), s1_valid),
        },
        coords={
            "band_s2": list(S2_BANDS), "band_s1": list(S1_BANDS),
            "doy_s2": ("time_s2", doy2), "doy_s1": ("time_s1", doy1),
            "orbit": ("time_s1", np.where(np.arange(t1) % 2, "ascending", "descending")),
            "y": 6_300_000.0 - 10 * np.arange(ny) - 5, "x": 500_000.0 + 10 * np.arange(nx) + 5,
        },
    ).rio.write_crs(32630)
    return ds.chunk(chunks) if chunks else ds


@pytest.fixture(scope="module")
def trained() -> TrainedEncoder:
    import torch

    torch.manual_seed(0)
    enc = TesseraEncoder(TINY).eval()
    return TrainedEncoder(enc, TINY, enc.normaliser, seed=0)


def test_chunked_equals_whole_array(tmp_path, trained):
    cube = make_cube(chunks={"y": 4, "x": 4})  # dask-backed
    with pytest.warns(UserWarning, match="1 of 130 pixels have no valid"):
        run = embed_cube(cube, trained, tmp_path / "e.zarr", chunk=4, seed=3, progress=False)
    assert run.complete and run.n_chunks == 3 * 4 and run.n_nan == 1
    ds = open_embeddings(run.store)
    assert ds["embedding"].dtype == np.int8 and ds["scale"].dtype == np.float32
    assert ds["embedding"].dims == ("y", "x", "dim") and ds.sizes["dim"] == 128
    assert ds.rio.crs.to_epsg() == 32630
    assert "crs_wkt" in ds["spatial_ref"].attrs
    assert ds.rio.transform() == cube.rio.transform()
    assert ds.attrs["n_nan"] == 1 and ds.attrs["complete"]

    whole = embed_pixels(trained, PixelTimeSeries.from_cube(make_cube()), seed=3,
                         return_flags=True)[0]
    q, s = quantise(whole)
    lazy = dequantise(ds)
    assert lazy.chunks is not None  # the store is read window by window, not loaded whole
    assert lazy.dims == ("y", "x", "dim") and lazy.dtype == np.float32
    got = lazy.values.reshape(-1, 128)
    ref = dequantise(q, s)
    assert np.isnan(got[0]).all() and np.isnan(ref[0]).all()
    # identical up to one int8 step where float rounding differs across batch shapes
    np.testing.assert_allclose(got[1:], ref[1:], rtol=0, atol=float(np.nanmax(s)) * 1.01)
    assert np.mean(ds["embedding"].values.reshape(-1, 128) == q) > 0.99


def test_chunk_size_does_not_change_result(tmp_path, trained):
    cube = make_cube()
    a = open_embeddings(embed_cube(cube, trained, tmp_path / "a.zarr", chunk=3, progress=False).store)
    b = open_embeddings(embed_cube(cube, trained, tmp_path / "b.zarr", chunk=16, progress=False).store)
    assert np.mean(a["embedding"].values == b["embedding"].values) > 0.99
    np.testing.assert_allclose(a["scale"].values, b["scale"].values, rtol=1e-4)


def test_resume_equals_uninterrupted(tmp_path, trained):
    cube = make_cube()
    full = embed_cube(cube, trained, tmp_path / "full.zarr", chunk=4, progress=False)
    part = embed_cube(cube, trained, tmp_path / "part.zarr", chunk=4, max_chunks=1, progress=False)
    assert not part.complete and part.n_done == 1
    assert not open_embeddings(part.store).attrs["complete"]
    rest = embed_cube(cube, trained, tmp_path / "part.zarr", chunk=4, progress=False)
    assert rest.complete and rest.n_skipped == 1
    a, b = open_embeddings(full.store), open_embeddings(rest.store)
    np.testing.assert_array_equal(a["embedding"].values, b["embedding"].values)
    np.testing.assert_array_equal(a["scale"].values, b["scale"].values)
    assert rest.n_nan == full.n_nan == 1
    with pytest.raises(ValueError, match="other parameters"):
        embed_cube(cube, trained, tmp_path / "part.zarr", chunk=4, seed=9, progress=False)
    with pytest.raises(ValueError, match="other parameters"):
        embed_cube(cube, trained, tmp_path / "part.zarr", chunk=4, n_draws=2, progress=False)
    assert open_embeddings(full.store).attrs["n_draws"] == 1


def test_in_memory_equals_the_store(tmp_path, trained):
    """embed_cube_in_memory gives the store's values bit for bit, and the same map."""
    from fungi_ssl.embeddings.embed import embed_cube_in_memory

    cube = make_cube(chunks={"y": 4, "x": 4})  # lazy: windows load in a background thread
    with pytest.warns(UserWarning, match="1 of 130 pixels have no valid"):
        run = embed_cube(cube, trained, tmp_path / "e.zarr", chunk=4, seed=3, progress=False)
    with pytest.warns(UserWarning, match="1 of 130 pixels have no valid"):
        mem = embed_cube_in_memory(cube, trained, chunk=4, seed=3)
    disk = open_embeddings(run.store).load()
    for v in ("embedding", "scale", "chunk_done", "chunk_nan"):
        np.testing.assert_array_equal(mem[v].values, disk[v].values)
        assert mem[v].dtype == disk[v].dtype
    for k in ("encoder", "seed", "n_draws", "chunk", "shape", "n_nan", "complete"):
        assert str(mem.attrs[k]) == str(disk.attrs[k])
    assert mem.rio.crs == disk.rio.crs and mem.rio.transform() == disk.rio.transform()


def test_patch_sampling_at_lonlat(tmp_path, trained):
    cube = make_cube()
    ds = open_embeddings(embed_cube(cube, trained, tmp_path / "e.zarr", chunk=5, progress=False).store)
    full = dequantise(ds).values
    # pixel (row 4, col 6), moved 3 m off its centre, given as lon/lat
    x, y = cube.x.values[6] + 3.0, cube.y.values[4] - 2.0
    lon, lat = crs_to_lonlat([x], [y], 32630)
    patches = raster_patches(ds, longitude=lon, latitude=lat, k=3)
    assert patches.dims == ("sample", "row", "col", "dim") and patches.shape == (1, 3, 3, 128)
    assert patches.attrs["n_outside"] == patches.attrs["n_incomplete"] == 0
    np.testing.assert_allclose(patches.values[0], full[3:6, 5:8], rtol=1e-6)
    # the same via raster coordinates, and a corner point whose patch runs off the edge
    with pytest.warns(UserWarning, match="0 of 2 points lie outside .* and 1 have a 3×3 patch"):
        p2 = raster_patches(ds, x=[x, cube.x.values[0]], y=[y, cube.y.values[0]], k=3)
    assert (p2.attrs["n_outside"], p2.attrs["n_incomplete"]) == (0, 1)
    v = p2.values
    np.testing.assert_allclose(v[0], patches.values[0])
    assert np.isnan(v[1, 0]).all() and np.isnan(v[1, :, 0]).all()
    assert np.isnan(v[1, 1, 1]).all()  # pixel (0, 0) has no data at all
    np.testing.assert_allclose(v[1, 2, 2], full[1, 1], rtol=1e-6)
    # row +1 is the next raster row (south), col +1 the next column (east)
    np.testing.assert_allclose(p2.sel(sample=0, row=1, col=-1).values, full[5, 5], rtol=1e-6)

    df = patch_features_frame(p2, ["s1", "s2"])
    assert df.shape == (2, 1152) and list(df.columns[:2]) == ["ssl_0000", "ssl_0001"]
    # (row, col, dim) order: column 4*128 + d is the centre pixel
    np.testing.assert_allclose(df.loc["s1", [f"ssl_{512 + d:04d}" for d in range(128)]].values,
                               full[4, 6], rtol=1e-6)
    # the DataArray and its numpy values flatten alike, whatever the dimension order
    pd.testing.assert_frame_equal(df, patch_features_frame(v, ["s1", "s2"]))
    pd.testing.assert_frame_equal(df, patch_features_frame(p2.transpose("dim", "col", "row", "sample"),
                                                           ["s1", "s2"]))


def test_raster_patches_match_tessera_patches_on_one_tile(tmp_path):
    """One concept, two sources: a single raster and a tile directory give the same patches."""
    from fungi_ssl.data.coordinates import lonlat_to_crs
    from fungi_ssl.embeddings import tessera, tessera_patches, tessera_write

    rng = np.random.default_rng(4)
    grid = tessera_write.tile_grid(0.15, 52.05)
    emb = rng.integers(-127, 128, (grid.height, grid.width, 8), dtype=np.int8)
    scale = rng.uniform(0.01, 0.1, (grid.height, grid.width)).astype(np.float32)
    tessera_write.write_tile(tmp_path, 2024, 0.15, 52.05, emb, scale)
    lon = np.array([0.12, 0.17, 0.141])
    lat = np.array([52.02, 52.07, 52.09])
    a = raster_patches(tessera.open_tile(tmp_path, 2024, 0.15, 52.05), longitude=lon, latitude=lat)
    b = tessera_patches.sample_patches(tmp_path, 2024, lon, lat, progress=False)
    assert a.dims == b.dims and a.shape == b.shape == (3, 3, 3, 8)
    np.testing.assert_array_equal(a.values, b.values)
    x, y = lonlat_to_crs(lon, lat, grid.epsg)
    np.testing.assert_array_equal(raster_patches(tessera.open_tile(tmp_path, 2024, 0.15, 52.05),
                                                 x=x, y=y).values, a.values)


def test_points_outside_give_nan_with_count(tmp_path, trained):
    cube = make_cube()
    ds = open_embeddings(embed_cube(cube, trained, tmp_path / "e.zarr", chunk=8, progress=False).store)
    xs = [cube.x.values[2], cube.x.values[-1] + 6.0, 400_000.0]   # inside, just past the edge, far
    ys = [cube.y.values[2], cube.y.values[2], cube.y.values[2]]
    with pytest.warns(UserWarning, match="2 of 3 points lie outside"):
        p = raster_patches(ds, x=xs, y=ys, k=3)
    assert p.attrs["n_outside"] == 2
    assert np.isfinite(p.values[0]).all()
    assert np.isnan(p.values[1:]).all()
    with pytest.raises(ValueError, match="odd"):
        raster_patches(ds, x=xs, y=ys, k=2)
    with pytest.raises(ValueError, match="latitude"):
        raster_patches(ds, longitude=[-3.0], latitude=[95.0])


def test_cached_pretrain_reuses_matching_parameters(tmp_path):
    rng = np.random.default_rng(0)
    n = 96
    px = PixelTimeSeries(rng.normal(1000, 200, (n, 10, 10)), rng.random((n, 10)) > 0.3,
                         np.tile(np.arange(10) * 30 + 5, (n, 1)), rng.normal(-10, 2, (n, 8, 2)),
                         np.ones((n, 8), bool), np.tile(np.arange(8) * 40 + 5, (n, 1)))
    kw = {"steps": 3, "batch_size": 32, "seed": 1, "warmup": 1, "root": tmp_path, "progress": False}
    a, ha = cached_pretrain(px, TINY, **kw)
    b, hb = cached_pretrain(px, TINY, **kw)
    assert len(list((tmp_path / "encoder").iterdir())) == 1  # second call hit the cache
    np.testing.assert_allclose(hb["loss"], ha["loss"])
    for wa, wb in zip(a.model.state_dict().values(), b.model.state_dict().values()):
        assert (wa == wb).all()
    other = PixelTimeSeries(px.s2 + 1, px.s2_valid, px.s2_doy, px.s1, px.s1_valid, px.s1_doy)
    cached_pretrain(other, TINY, **kw)  # other data → another key
    assert len(list((tmp_path / "encoder").iterdir())) == 2

    cube = make_cube(ny=5, nx=6)
    e1 = cached_embed_cube(cube, a, {"tile": "t0", "year": 2020}, chunk=4, root=tmp_path, progress=False)
    e2 = cached_embed_cube(cube, a, {"tile": "t0", "year": 2020}, chunk=4, root=tmp_path, progress=False)
    assert e1.attrs["complete"] and len(list((tmp_path / "embeddings").iterdir())) == 1
    np.testing.assert_array_equal(e1["embedding"].values, e2["embedding"].values)


def test_lanes_give_the_values_of_one_encoder(tmp_path, trained):
    """Windows embedded in two lanes (one torch thread each) equal one lane's, in order."""
    from fungi_ssl.embeddings.embed import embed_cube_in_memory

    cube = make_cube(chunks={"y": 4, "x": 4})  # lazy: each lane loads its own windows
    with pytest.warns(UserWarning, match="no valid"):
        one = embed_cube_in_memory(cube, trained, chunk=4, seed=3, n_threads=1)
    with pytest.warns(UserWarning, match="no valid"):
        two = embed_cube_in_memory(cube, trained, chunk=4, seed=3, n_threads=2)
    with pytest.warns(UserWarning, match="no valid"):
        run = embed_cube(cube, trained, tmp_path / "l.zarr", chunk=4, seed=3, progress=False,
                         n_threads=2)
    disk = open_embeddings(run.store).load()
    for v in ("embedding", "scale", "chunk_nan"):
        np.testing.assert_array_equal(one[v].values, two[v].values)
        np.testing.assert_array_equal(two[v].values, disk[v].values)
