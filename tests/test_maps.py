"""Tests of fungi_ssl.maps.predict: chunked 10 m maps from embedding stores and TESSERA tiles."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine

from fungi_ssl.embeddings.embed import open_embeddings, raster_patches
from fungi_ssl.maps.mapmodel import MapModel
from fungi_ssl.maps.outputs import aggregate_map, open_map
from fungi_ssl.maps.predict import SCHEDULER_ENV, predict_map
from fungi_ssl.maps.sources import open_embedding_source, write_embedding_store

DIM = 16
H, W = 70, 90
ORIGIN = Affine(10, 0, 500_000, 0, -10, 6_000_000)
CRS = 32630
ENCODER = "enc-test"


def synthetic_embeddings(seed: int, h: int = H, w: int = W, dim: int = DIM):
    """int8 embeddings whose dimension 0 carries a latent field L; true log richness = 4 + L.

    Other dimensions are noise. A few pixels have no embedding (NaN scale).
    """
    rng = np.random.default_rng(seed)
    latent = np.clip(rng.normal(size=(h, w)), -3, 3)
    q = rng.integers(-40, 41, size=(h, w, dim))
    q[..., 0] = np.clip(np.round(latent * 80 + rng.normal(0, 10, (h, w))), -127, 127)
    scale = rng.uniform(0.008, 0.012, size=(h, w)).astype(np.float32)
    scale[30:32, 40:43] = np.nan  # a cloud-only patch of 6 pixels
    return q.astype(np.int8), scale, 4.0 + latent


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Two yearly stores (2020, 2021) on one grid, as a folder of <year>.zarr."""
    root = tmp_path_factory.mktemp("stores")
    truth = {}
    for year, seed in ((2020, 1), (2021, 2)):
        emb, scale, log_r = synthetic_embeddings(seed)
        write_embedding_store(root / f"{year}.zarr", emb, scale, transform=ORIGIN, crs=CRS,
                              encoder=ENCODER, year=year, chunk=32)
        truth[year] = log_r
    return root, truth


def _fit(store, encoder=ENCODER, model="ridge", n=800, seed=0, k=3, **kw):
    """A map model fitted on patches sampled from a store with the project's own sampler."""
    ds = open_embeddings(store)
    rng = np.random.default_rng(seed)
    rows = rng.integers(2, H - 2, n)
    cols = rng.integers(2, W - 2, n)
    x, y = ds["x"].values[cols], ds["y"].values[rows]
    patches = raster_patches(ds, x=x, y=y, k=k).values
    _, _, log_r = synthetic_embeddings(1)
    target = np.expm1(log_r[rows, cols] + rng.normal(0, 0.1, n))
    return MapModel(model, n_components=12, n_jobs=1, **kw).fit(
        patches, target, encoder=encoder, embedding_dim=ds.sizes["dim"]
    ), (x, y, rows, cols, patches)


@pytest.fixture(scope="module")
def model(stores):
    root, _ = stores
    return _fit(root / "2020.zarr")


@pytest.fixture(scope="module")
def reference_map(stores, model):
    root, _ = stores
    return predict_map(model[0], root, 2020, chunk=16, window=32, progress=False,
                       quantity="log_richness", scheduler="threads")


def test_map_recovers_the_known_signal(stores, reference_map):
    _, truth = stores
    m = reference_map.map.values
    ok = np.isfinite(m)
    t = truth[2020][ok]
    r2 = 1 - np.sum((m[ok] - t) ** 2) / np.sum((t - t.mean()) ** 2)
    # the truth is a linear function of the centre pixel; int8 rounding and the noise in
    # dimension 0 (SD 10 of 80) limit R² to about 1 / (1 + 1/64) ≈ 0.98
    assert r2 > 0.9
    assert reference_map.map.rio.crs.to_epsg() == CRS
    assert reference_map.map.dims == ("y", "x") and reference_map.map.shape == (H, W)
    assert reference_map.grid.transform == ORIGIN


def test_map_equals_the_patch_path_at_sampled_pixels(model, reference_map):
    """Same numbers as raster_patches → predict_patches: orientation and halo are right."""
    m, (_, _, rows, cols, patches) = model
    expected = m.predict_patches(patches, output="log_richness")
    got = reference_map.map.values[rows, cols]
    ok = np.isfinite(expected)
    assert ok.sum() > 700
    np.testing.assert_allclose(got[ok], expected[ok], rtol=1e-5, atol=1e-5)
    assert np.array_equal(np.isnan(got), ~ok)


def test_missing_embeddings_become_nan_and_are_counted(reference_map):
    run = reference_map
    m = run.map.values
    assert run.n_pixels == H * W
    assert run.n_no_embedding == 6
    # NaN: the outer ring (no full patch) and the 3x3 neighbourhoods of the 2x3 hole (4x5)
    ring = 2 * W + 2 * (H - 2)
    assert run.n_nan == ring + 4 * 5 == int(np.isnan(m).sum())
    assert np.isnan(m[29:33, 39:44]).all() and np.isfinite(m[28, 40])


def test_map_does_not_depend_on_chunk_window_or_bbox(stores, model, reference_map):
    root, _ = stores
    other = predict_map(model[0], root, 2020, chunk=48, window=96, progress=False,
                        quantity="log_richness")
    np.testing.assert_allclose(other.map.values, reference_map.map.values, rtol=1e-5, atol=1e-5)
    # a bbox inside the store: its edge pixels take their halo from outside the bbox
    x0, y1 = ORIGIN.c, ORIGIN.f
    bbox = (x0 + 200, y1 - 500, x0 + 450, y1 - 150)  # pixel centres inclusive
    sub = predict_map(model[0], root, 2020, bbox=bbox, chunk=16, window=16, progress=False,
                      quantity="log_richness")
    cols = np.flatnonzero((reference_map.map.x >= bbox[0]) & (reference_map.map.x <= bbox[2]))
    rows = np.flatnonzero((reference_map.map.y >= bbox[1]) & (reference_map.map.y <= bbox[3]))
    assert sub.map.shape == (len(rows), len(cols)) == (35, 25)
    np.testing.assert_allclose(
        sub.map.values, reference_map.map.values[np.ix_(rows, cols)], rtol=1e-5, atol=1e-5
    )
    assert sub.grid.transform.c == reference_map.map.x.values[cols[0]] - 5


def test_block_reader_decodes_each_store_chunk_once_and_reads_what_the_store_holds(stores):
    """A sweep of halo'd blocks decodes each chunk once (not once per neighbour that reaches
    into it), reads exactly the store's values, and a small cache still reads them right."""
    import pickle

    import zarr

    from fungi_ssl.maps import sources

    root, _ = stores
    g = zarr.open_group(str(root / "2020.zarr"), mode="r")
    emb_all, sc_all = np.asarray(g["embedding"]), np.asarray(g["scale"])
    reader = open_embedding_source(root, 2020).block_reader()
    halo, chunk = 1, 32  # the store's chunks are 32 × 32
    for r0 in range(0, H, chunk):
        for c0 in range(0, W, chunk):
            r1, c1 = min(r0 + chunk, H), min(c0 + chunk, W)
            emb, sc = reader(r0 - halo, r1 + halo, c0 - halo, c1 + halo)
            a0, b0 = max(r0 - halo, 0), max(c0 - halo, 0)
            a1, b1 = min(r1 + halo, H), min(c1 + halo, W)
            inner = (slice(a0 - r0 + halo, a1 - r0 + halo), slice(b0 - c0 + halo, b1 - c0 + halo))
            np.testing.assert_array_equal(emb[inner], emb_all[a0:a1, b0:b1])
            np.testing.assert_array_equal(sc[inner], sc_all[a0:a1, b0:b1])
            if r0 == 0:
                assert np.isnan(sc[0]).all() and (emb[0] == 0).all()  # beyond the store
    n_chunks = -(-H // chunk) * -(-W // chunk)
    assert reader._cache.decoded == n_chunks  # 9 chunks, each decoded once
    # the cache stays in the process: a pickled reader carries no decoded chunk
    assert "_cache" not in pickle.loads(pickle.dumps(reader)).__dict__
    # a cache of one chunk: the same values, decoded again as blocks come back to a chunk
    small = sources._ChunkCache(g["embedding"], g["scale"],
                                max_bytes=chunk * chunk * (DIM + 4))
    emb = np.zeros((H, W, DIM), np.int8)
    sc = np.zeros((H, W), np.float32)
    small.read(0, H, 0, W, emb, sc)
    small.read(0, H, 0, W, emb, sc)
    np.testing.assert_array_equal(emb, emb_all)
    np.testing.assert_array_equal(sc, sc_all)
    assert small.decoded == 2 * n_chunks and 0 < small._bytes <= small.max_bytes


def test_richness_is_the_inverse_of_the_log_map(stores, model, reference_map):
    root, _ = stores
    rich = predict_map(model[0], root, 2020, chunk=32, window=64, progress=False)
    np.testing.assert_allclose(rich.map.values, np.expm1(reference_map.map.values), rtol=1e-5)


def test_cog_output_is_valid_and_atomic(model, tmp_path):
    from rio_cogeo.cogeo import cog_validate

    # a map larger than one COG tile, so that it has overviews
    big = tmp_path / "big"
    big.mkdir()
    emb, scale, _ = synthetic_embeddings(3, h=300, w=280)
    write_embedding_store(big / "2020.zarr", emb, scale, transform=ORIGIN, crs=CRS,
                          encoder=ENCODER, year=2020, chunk=64)
    out = tmp_path / "map.tif"
    run = predict_map(model[0], big, 2020, output=out, chunk=64, window=128, cog_blocksize=128,
                      progress=False)
    valid, errors, warnings_ = cog_validate(out)
    assert valid, (errors, warnings_)
    with rasterio.open(out) as src:
        assert src.crs.to_epsg() == CRS
        assert src.transform == ORIGIN
        assert src.block_shapes == [(128, 128)]
        assert src.overviews(1) == [2, 4]  # 300 px halved until it fits one 128 px tile
        assert src.dtypes[0] == "float32" and np.isnan(src.nodata)
        values = src.read(1)
        assert src.tags()["quantity"] == "richness" and int(src.tags()["n_nan"]) == run.n_nan
        # the band itself says what it holds, in species (the COG copy keeps it)
        assert src.descriptions[0] == "richness: rarefied ECM richness"
        assert src.units[0] == "rarefied ECM richness"
    inmem = predict_map(model[0], big, 2020, chunk=64, window=128, progress=False)
    np.testing.assert_array_equal(values, inmem.map.values)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big", "map.tif"]  # no temp file
    lazy = open_map(out)
    assert lazy.rio.crs.to_epsg() == CRS and lazy.shape == (300, 280)
    # existing output: refused, untouched; replaced on request
    before = out.stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="overwrite=True"):
        predict_map(model[0], big, 2020, output=out, progress=False)
    assert out.stat().st_mtime_ns == before
    predict_map(model[0], big, 2020, output=out, overwrite=True, chunk=64, progress=False)
    assert cog_validate(out)[0]


def test_a_failure_midway_leaves_no_output(stores, model, tmp_path, monkeypatch):
    root, _ = stores
    calls = {"n": 0}
    original = MapModel.predict_window

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("worker died")
        return original(self, *a, **k)

    monkeypatch.setattr(MapModel, "predict_window", flaky)
    for name in ("m.tif", "m.zarr"):
        calls["n"] = 0
        with pytest.raises(RuntimeError, match="worker died"):
            predict_map(model[0], root, [2020] if name.endswith("zarr") else 2020,
                        output=tmp_path / name, chunk=16, window=32, progress=False,
                        scheduler="synchronous")
    assert list(tmp_path.iterdir()) == []


def test_zarr_stack_of_years(stores, model, reference_map, tmp_path):
    root, truth = stores
    out = tmp_path / "stack.zarr"
    run = predict_map(model[0], root, [2020, 2021], output=out, chunk=32, window=64,
                      quantity="log_richness", progress=False)
    stack = open_map(out)
    assert stack.dims == ("year", "y", "x") and stack["year"].values.tolist() == [2020, 2021]
    assert stack.rio.crs.to_epsg() == CRS
    np.testing.assert_allclose(stack.sel(year=2020).values, reference_map.map.values,
                               rtol=1e-5, atol=1e-5)
    y2021 = stack.sel(year=2021).values
    ok = np.isfinite(y2021)
    assert np.corrcoef(y2021[ok], truth[2021][ok])[0, 1] > 0.9  # the other year's own signal
    assert run.n_pixels == 2 * H * W and run.n_no_embedding == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stack.zarr"]


def test_distributed_cluster_gives_the_same_map(stores, model, reference_map, monkeypatch):
    from distributed import LocalCluster

    root, _ = stores
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None,
                      silence_logs=40) as cluster:
        run = predict_map(model[0], root, 2020, chunk=16, window=32, quantity="log_richness",
                          scheduler=cluster.scheduler_address, progress=False)
        monkeypatch.setenv(SCHEDULER_ENV, cluster.scheduler_address)
        via_env = predict_map(model[0], root, 2020, chunk=16, window=64,
                              quantity="log_richness", progress=False)
    assert run.details["scheduler"] == cluster.scheduler_address
    assert via_env.details["scheduler"] == cluster.scheduler_address
    np.testing.assert_allclose(run.map.values, reference_map.map.values, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(via_env.map.values, reference_map.map.values, rtol=1e-6, atol=1e-6)
    assert run.n_nan == reference_map.n_nan


def test_dask_scheduler_and_worker_processes_give_the_same_map(stores, model, reference_map,
                                                                tmp_path, monkeypatch):
    """`dask scheduler` and two `dask worker` processes (one thread each) on 127.0.0.1.

    What the README tells a user to start: every block, the model and the
    tasks are pickled and cross process boundaries over TCP. Maps from a Zarr
    store and from TESSERA tiles equal the local threaded map.
    """
    from distributed import Client

    from fungi_ssl.core.cluster import loopback_cluster
    from fungi_ssl.data.coordinates import crs_to_lonlat
    from fungi_ssl.embeddings.tessera_write import tile_grid, write_tile

    root, _ = stores
    tiles = tmp_path / "tiles"
    g = tile_grid(0.15, 52.05)
    ta = Affine(10, 0, g.transform.c + 200, 0, -10, g.transform.f - 300)
    emb, sc, _ = synthetic_embeddings(7, h=48, w=64)
    write_tile(tiles, 2024, 0.15, 52.05, emb, sc, transform=ta)
    tm = MapModel.load(model[0].save(tmp_path / "m.fmm"))
    # tiles without tessera_metadata.json: an unknown TESSERA release
    tm.spec = type(tm.spec)(tm.spec.embedding_dim, tm.spec.patch_size, "tessera:unknown-version",
                            tm.spec.predictor_columns)
    west, south = crs_to_lonlat(ta.c + 30, ta.f - 450, g.epsg)
    east, north = crs_to_lonlat(ta.c + 600, ta.f - 20, g.epsg)
    bbox = (float(west), float(south), float(east), float(north))
    tiles_local = predict_map(tm, tiles, 2024, bbox=bbox, chunk=16, window=32, progress=False,
                              scheduler="threads")
    with loopback_cluster(2, threads_per_worker=1, timeout=120) as cluster:
        assert cluster.address.startswith("tcp://127.0.0.1:")
        with Client(cluster.address, set_as_default=False) as client:
            info = client.scheduler_info()["workers"]
            pids = client.run(os.getpid)
        assert len(info) == 2 and all(w["nthreads"] == 1 for w in info.values())
        assert os.getpid() not in pids.values() and len(set(pids.values())) == 2
        run = predict_map(model[0], root, 2020, chunk=16, window=32, quantity="log_richness",
                          scheduler=cluster.address, progress=False)
        monkeypatch.setenv(SCHEDULER_ENV, cluster.address)
        cog = predict_map(model[0], root, 2020, chunk=16, window=64, quantity="log_richness",
                          output=tmp_path / "cluster.tif", progress=False)
        tiles_run = predict_map(tm, tiles, 2024, bbox=bbox, chunk=16, window=32, progress=False)
    assert run.details["scheduler"] == cog.details["scheduler"] == cluster.address
    np.testing.assert_array_equal(run.map.values, reference_map.map.values)
    np.testing.assert_allclose(cog.map.values, reference_map.map.values, rtol=1e-6, atol=1e-6)
    assert run.n_nan == cog.n_nan == reference_map.n_nan
    assert run.n_no_embedding == reference_map.n_no_embedding
    assert tiles_run.grid == tiles_local.grid
    np.testing.assert_array_equal(tiles_run.map.values, tiles_local.map.values)
    assert np.isfinite(tiles_local.map.values).sum() > 1000
    for pid in cluster.pids:  # torn down
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# ------------------------------------------------------------------ bad input
def _nothing_written(folder):
    return list(folder.iterdir()) == []


def test_bad_input_one_clear_error_each_nothing_written(stores, model, tmp_path):
    root, _ = stores
    m = model[0]
    out = tmp_path / "out"
    out.mkdir()
    cog = out / "map.tif"
    # embeddings of another dimension
    wide = tmp_path / "wide"
    wide.mkdir()
    emb, scale, _ = synthetic_embeddings(4, h=20, w=20, dim=8)
    write_embedding_store(wide / "2020.zarr", emb, scale, transform=ORIGIN, crs=CRS,
                          encoder=ENCODER, year=2020)
    with pytest.raises(ValueError, match=r"embedding_dim: model 16, embeddings of .* 8"):
        predict_map(m, wide, 2020, output=cog, progress=False)
    # another encoder
    other = tmp_path / "other"
    other.mkdir()
    emb, scale, _ = synthetic_embeddings(4, h=20, w=20)
    write_embedding_store(other / "2020.zarr", emb, scale, transform=ORIGIN, crs=CRS,
                          encoder="enc-other", year=2020)
    with pytest.raises(ValueError, match=r"encoder: model 'enc-test', embeddings .* 'enc-other'"):
        predict_map(m, other, 2020, output=cog, progress=False)
    # a model fitted on 5x5 patches
    m5, _ = _fit(root / "2020.zarr", k=5, n=300)
    with pytest.raises(ValueError, match=r"patch_size: model 5, embeddings .* 3"):
        predict_map(m5, root, 2020, output=cog, progress=False)
    # bbox with min > max, and outside the store
    with pytest.raises(ValueError, match=r"min ≥ max \(xmin 500400.0 ≥ xmax 500100.0\)"):
        predict_map(m, root, 2020, bbox=(500_400, 5_999_500, 500_100, 5_999_900), output=cog,
                    progress=False)
    with pytest.raises(ValueError, match="lies outside the embedding store"):
        predict_map(m, root, 2020, bbox=(0, 0, 100, 100), output=cog, progress=False)
    # a year the source does not hold: folder of years, one store, mapping
    with pytest.raises(ValueError, match=r"no embedding store for year 2019 \(years \[2020, 2021\]\)"):
        predict_map(m, root, 2019, output=cog, progress=False)
    with pytest.raises(ValueError, match="holds year 2020, not 2022"):
        predict_map(m, root / "2020.zarr", 2022, output=cog, progress=False)
    with pytest.raises(ValueError, match=r"year 2018 is not among .* \(years \[2020\]\)"):
        predict_map(m, {2020: root / "2020.zarr"}, 2018, output=cog, progress=False)
    # output folder missing; output exists; a COG for several years
    with pytest.raises(FileNotFoundError, match="output folder .*missing.* does not exist"):
        predict_map(m, root, 2020, output=tmp_path / "missing" / "m.tif", progress=False)
    with pytest.raises(ValueError, match="a GeoTIFF holds one year"):
        predict_map(m, root, [2020, 2021], output=cog, progress=False)
    assert _nothing_written(out)
    cog.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="exists; pass overwrite=True"):
        predict_map(m, root, 2020, output=cog, progress=False)
    assert cog.read_bytes() == b"keep me" and len(list(out.iterdir())) == 1


def test_a_store_without_year_needs_a_mapping(tmp_path):
    emb, scale, _ = synthetic_embeddings(1)
    p = write_embedding_store(tmp_path / "noyear.zarr", emb, scale, transform=ORIGIN, crs=CRS,
                              encoder=ENCODER)
    with pytest.raises(ValueError, match="records no year"):
        open_embedding_source(p, 2020)
    src = open_embedding_source({2020: p}, 2020)
    assert src.year == 2020 and src.grid.height == H and src.dim == DIM


# ----------------------------------------------------------------- aggregation
def test_aggregate_to_cells_mean_and_sd():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(230, 260)).astype(np.float32)
    values[0:3, 0:3] = np.nan
    # the map starts 30 m east of and 20 m south of a 1 km line
    x = 401_030 + 10 * np.arange(260) + 5
    y = 5_999_980 - 10 * np.arange(230) - 5
    m = xr.DataArray(values, dims=("y", "x"), coords={"y": y, "x": x}).rio.write_crs(CRS)
    agg = aggregate_map(m, 1000)
    assert agg.rio.crs.to_epsg() == CRS
    assert agg["x"].values.tolist() == [401_500, 402_500, 403_500]
    assert agg["y"].values.tolist() == [5_999_500, 5_998_500, 5_997_500]
    # cell (0, 0): rows 0..97 (y 5999975 .. 5999005), cols 0..96
    cell = values[0:98, 0:97]
    assert int(agg["n_valid"][0, 0]) == cell.size - 9
    np.testing.assert_allclose(float(agg["mean"][0, 0]), np.nanmean(cell), rtol=1e-5)
    np.testing.assert_allclose(float(agg["sd"][0, 0]), np.nanstd(cell), rtol=1e-5)
    cell = values[98:198, 97:197]
    np.testing.assert_allclose(float(agg["mean"][1, 1]), cell.mean(), rtol=1e-5)
    assert float(agg["valid_fraction"][1, 1]) == 1.0
    strict = aggregate_map(m, 1000, min_valid_fraction=0.99)
    assert np.isnan(strict["mean"][0, 0]) and np.isfinite(strict["mean"][1, 1])
    with pytest.raises(ValueError, match="must divide"):
        aggregate_map(m, 1005)


def test_aggregate_a_cog_lazily(stores, model, tmp_path):
    root, _ = stores
    run = predict_map(model[0], root, 2020, output=tmp_path / "m.tif", chunk=32, progress=False)
    lazy = aggregate_map(open_map(run.path, chunks=32), 200)
    eager = aggregate_map(predict_map(model[0], root, 2020, chunk=32, progress=False).map, 200)
    np.testing.assert_allclose(lazy["mean"].values, eager["mean"].values, rtol=1e-5)
    assert lazy["mean"].shape == (4, 5)  # 700 m × 900 m in 200 m cells, aligned


# ----------------------------------------------------------------- TESSERA tiles
def test_tessera_tiles_map_like_a_store(tmp_path, model):
    from fungi_ssl.data.coordinates import crs_to_lonlat
    from fungi_ssl.embeddings.tessera_write import tile_grid, write_tile

    root = tmp_path / "tiles"
    ga, gb = tile_grid(0.15, 52.05), tile_grid(0.25, 52.05)
    assert ga.epsg == gb.epsg
    # A: the north-east corner of its cell's grid; B: the north-west corner of the next
    # cell's grid (which overlaps A's), 3 m off A's pixel grid in y, so B is resampled
    ta = Affine(10, 0, ga.transform.c + (ga.width - 60) * 10, 0, -10, ga.transform.f)
    tb = Affine(10, 0, gb.transform.c, 0, -10, ga.transform.f - 3)
    emb_a, sc_a, _ = synthetic_embeddings(5, h=40, w=60)
    emb_b, sc_b, _ = synthetic_embeddings(6, h=40, w=60)
    sc_a[np.isnan(sc_a)] = sc_b[np.isnan(sc_b)] = 0.01  # no cloud holes here
    write_tile(root, 2024, 0.15, 52.05, emb_a, sc_a, transform=ta)
    write_tile(root, 2024, 0.25, 52.05, emb_b, sc_b, transform=tb)
    tm = MapModel.load(model[0].save(tmp_path / "m.fmm"), check_versions=True)
    # tiles without tessera_metadata.json: an unknown TESSERA release
    tm.spec = type(tm.spec)(tm.spec.embedding_dim, tm.spec.patch_size, "tessera:unknown-version",
                            tm.spec.predictor_columns)
    # a bbox inside tile A: the same map as a store holding tile A's arrays
    west, south = crs_to_lonlat(ta.c + 100, ta.f - 300, ga.epsg)
    east, north = crs_to_lonlat(ta.c + 400, ta.f - 50, ga.epsg)
    bbox = (float(west), float(south), float(east), float(north))
    tiles_run = predict_map(tm, root, 2024, bbox=bbox, chunk=16, window=32, progress=False)
    store = write_embedding_store(tmp_path / "a.zarr", emb_a, sc_a, transform=ta, crs=ga.epsg,
                                  encoder="tessera:unknown-version", year=2024)
    src = open_embedding_source(root, 2024, bbox)
    g = src.grid
    store_run = predict_map(tm, store, 2024, bbox=(g.bounds[0] + 5, g.bounds[1] + 5,
                                                   g.bounds[2] - 5, g.bounds[3] - 5),
                            chunk=16, window=32, progress=False)
    assert tiles_run.grid == store_run.grid
    np.testing.assert_array_equal(tiles_run.map.values, store_run.map.values)
    # across the edge between A and B: pixels from both tiles, none from the gap below them
    w2, s2 = crs_to_lonlat(ta.c + 300, ta.f - 500, ga.epsg)
    e2, n2 = crs_to_lonlat(ga.transform.c + ga.width * 10 + 120, ta.f - 50, ga.epsg)
    both = predict_map(tm, root, 2024, bbox=(float(w2), float(s2), float(e2), float(n2)),
                       chunk=32, progress=False)
    v = both.map.values  # rows 0..45 cover 50..500 m below A's top; both rasters are 400 m
    # the last 10 columns lie east of A's raster, inside B's
    assert np.isfinite(v[2:30, :20]).all() and np.isfinite(v[2:30, -10:]).all()
    assert both.n_no_embedding > 0 and np.isnan(v[-1]).all()
    # bad input for tiles
    with pytest.raises(ValueError, match=r"hold no year 2023 \(years present: \[2024\]\)"):
        predict_map(tm, root, 2023, bbox=bbox, progress=False)
    with pytest.raises(ValueError, match="outside every TESSERA tile"):
        predict_map(tm, root, 2024, bbox=(10.0, 40.0, 10.01, 40.01), progress=False)
    with pytest.raises(ValueError, match="encoder: model 'enc-test', embeddings .* 'tessera:unknown-version'"):
        predict_map(model[0], root, 2024, bbox=bbox, progress=False)


# ------------------------------------------- a store embedded from the simulated study
def test_map_from_a_store_embedded_from_the_simulated_study(tmp_path):
    """The whole chain on real project data: simulated cube → embed_cube → map."""
    import torch

    from fungi_ssl.embeddings.embed import embed_cube
    from fungi_ssl.embeddings.encoder import EncoderConfig, TesseraEncoder, TrainedEncoder
    from fungi_ssl.simulate import SimulatedStudy, Window

    study = SimulatedStudy()
    window = Window.around(-3.65, 57.08, 24)
    cube = study.cube(window, 2019, chunks=24)
    torch.manual_seed(0)
    enc = TesseraEncoder(EncoderConfig()).eval()  # untrained: the map's skill is not the point
    trained = TrainedEncoder(enc, enc.config, enc.normaliser)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pixels without any valid observation are counted
        run = embed_cube(cube, trained, tmp_path / "e.zarr", chunk=16, progress=False)
    store = open_embeddings(run.store)
    truth = study.layers(window, 2019)["true_richness"].values
    rows, cols = (a.ravel() for a in np.meshgrid(np.arange(1, 23, 2), np.arange(1, 23, 2),
                                                 indexing="ij"))
    patches = raster_patches(store, x=store["x"].values[cols], y=store["y"].values[rows]).values
    ok = np.isfinite(patches).all(axis=(1, 2, 3))
    m = MapModel("ridge", n_components=8).fit(patches[ok], truth[rows, cols][ok], encoder=trained,
                                              embedding_dim=store.sizes["dim"])
    result = predict_map(m, {2019: run.store}, 2019, chunk=16, window=16, progress=False)
    assert result.map.shape == (24, 24) and result.map.rio.crs.to_epsg() == window.epsg
    np.testing.assert_allclose(result.map.values[rows, cols][ok], m.predict_patches(patches[ok]),
                               rtol=1e-4)
    assert result.n_no_embedding == store.attrs["n_nan"]


def test_a_bbox_across_two_utm_zones_is_refused_with_where_to_split(tmp_path):
    """Cells west of 0° lie in UTM zone 30, east of it in 31: a box over both is refused in one
    line naming the longitude to split at, not mapped with one zone resampled onto the other."""
    from fungi_ssl.embeddings.tessera_write import tile_grid, write_tile
    from fungi_ssl.maps.sources import open_embedding_source

    for lon in (-0.05, 0.05):
        g = tile_grid(lon, 52.05)
        write_tile(tmp_path, 2024, lon, 52.05, np.ones((g.height, g.width, 4), np.int8),
                   np.full((g.height, g.width), 0.1, np.float32))
    with pytest.raises(ValueError) as err:
        open_embedding_source(tmp_path, 2024, (-0.02, 52.02, 0.03, 52.08))
    msg = str(err.value)
    assert "\n" not in msg and "UTM zones 30, 31" in msg
    assert "split the box at longitude 0 " in msg
    assert "-0.02 52.02 0 52.08; 0 52.02 0.03 52.08" in msg
    # each part maps, in its own zone
    west = open_embedding_source(tmp_path, 2024, (-0.02, 52.02, 0.0, 52.08))
    east = open_embedding_source(tmp_path, 2024, (0.0, 52.02, 0.03, 52.08))
    assert (west.grid.crs.to_epsg(), east.grid.crs.to_epsg()) == (32630, 32631)
