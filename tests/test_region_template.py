"""Chapter 10, your region (fungi_ssl/region/workflow.py and notebooks/10_your_region.ipynb).

The simulated region is written in geotessera's tile layout and read back by
the real readers (fungi_ssl.embeddings.tessera, fungi_ssl.maps.predict, ``fungi-ssl
predict-map``); the chapter run through papermill with another bounding box
maps exactly that box.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyproj import Transformer

from fungi_ssl import cli
from fungi_ssl.data import download  # noqa: F401  (pooch's logger: see test_cli)
from fungi_ssl.embeddings import tessera, tessera_patches
from fungi_ssl.maps.mapmodel import MapModel
from fungi_ssl.region import workflow as region

REPO = Path(__file__).resolve().parent.parent
# a box across the 0.1° cell edge at 3.7° W (two tiles, one UTM zone), about 30 × 45 pixels
BBOX = (-3.7025, 57.0800, -3.6980, 57.0827)
YEAR = 2019


@pytest.fixture(scope="module")
def trained():
    import torch

    from fungi_ssl.embeddings.encoder import EncoderConfig, TesseraEncoder, TrainedEncoder

    torch.manual_seed(0)
    enc = TesseraEncoder(EncoderConfig()).eval()  # untrained: the layout is the point here
    return TrainedEncoder(enc, enc.config, enc.normaliser)


@pytest.fixture(scope="module")
def tiles(trained, tmp_path_factory):
    from fungi_ssl.simulate import SimulatedStudy

    root = tmp_path_factory.mktemp("region") / "tiles"
    return region.write_simulated_tiles(SimulatedStudy(), trained, BBOX, [YEAR], root,
                                        progress=False)


def _grid_vs_box(bounds, crs, bbox):
    tr = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    bx = tr.transform_bounds(*bbox, densify_pts=21)
    inner = min(bx[0] - bounds[0], bx[1] - bounds[1], bounds[2] - bx[2], bounds[3] - bx[3])
    outer = max(bx[0] - bounds[0], bx[1] - bounds[1], bounds[2] - bx[2], bounds[3] - bx[3])
    return inner, outer


def test_simulated_tiles_are_in_geotessera_layout(tiles, trained):
    assert sorted(tiles.tiles) == ["grid_-3.65_57.05", "grid_-3.75_57.05"]
    for name in tiles.tiles:
        lon, lat = tessera.parse_tile_name(name)
        p = tessera.tile_paths(tiles.root, YEAR, lon, lat)
        assert p.embedding.is_file() and p.scales.is_file() and p.landmask.is_file()
        t = tessera.read_tile(tiles.root, YEAR, lon, lat)
        assert t.crs.to_epsg() == 32630 and t.transform.a == 10.0
        emb = np.load(p.embedding)
        assert emb.dtype == np.int8 and emb.shape[2] == 128
        # the embedding round-trips: dequantised values are the encoder's, not zeros
        scale = np.load(p.scales)
        assert np.isfinite(scale).mean() > 0.9 and np.abs(emb).max() > 50
    meta = json.loads((tiles.root / tessera.METADATA_FILENAME).read_text())
    assert f"tessera:{meta['dataset_version']}" == region.tiles_encoder(trained) == tiles.encoder
    # a second call finds the finished tiles and computes nothing
    again = region.write_simulated_tiles(None, trained, BBOX, [YEAR], tiles.root, progress=False)
    assert again.seconds == 0.0 and again.n_pixels == tiles.n_pixels


def test_patches_read_back_equal_the_encoder_output(tiles, trained):
    """Patches at points inside the box, through tessera_patches.sample_patches, are complete and
    equal to the tiles' int8 × scale values."""
    lon = np.linspace(BBOX[0] + 3e-4, BBOX[2] - 3e-4, 7)
    lat = np.full(7, (BBOX[1] + BBOX[3]) / 2)
    p = tessera_patches.sample_patches(tiles.root, YEAR, lon, lat, k=3, progress=False).values
    assert np.isfinite(p).all()
    # points on both sides of the cell edge read their own tile
    name = tessera.tile_name(lon[0], lat[0])
    t = tessera.open_tile(tiles.root, YEAR, *tessera.parse_tile_name(name))
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:32630", always_xy=True).transform(lon[0], lat[0])
    r = int(np.argmin(np.abs(t["y"].values - y)))
    c = int(np.argmin(np.abs(t["x"].values - x)))
    expect = t["embedding"].values[r, c].astype(np.float32) * t["scale"].values[r, c]
    np.testing.assert_allclose(p[0, 1, 1], expect, rtol=1e-6)


@pytest.fixture(scope="module")
def model_file(tiles, tmp_path_factory):
    rng = np.random.default_rng(0)
    lon = rng.uniform(BBOX[0], BBOX[2], 300)
    lat = rng.uniform(BBOX[1], BBOX[3], 300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = tessera_patches.sample_patches(tiles.root, YEAR, lon, lat, k=3, progress=False).values
    X = p.reshape(len(p), -1)
    y = np.expm1(3 + 0.5 * np.nan_to_num(X[:, 4 * 128]))
    m = MapModel("ridge", n_components=8).fit(X, y, encoder=tiles.encoder, embedding_dim=128)
    m.settings["guild"] = "AM"
    out = tmp_path_factory.mktemp("model") / "am.model"
    m.save(out)
    return out


def test_predict_map_cli_on_the_chapter_tiles_writes_a_valid_cog(tiles, model_file, tmp_path):
    import rasterio
    from rio_cogeo.cogeo import cog_validate
    from typer.testing import CliRunner

    out = tmp_path / "map_2019.tif"
    res = CliRunner().invoke(cli.app, [
        "predict-map", "--embeddings", str(tiles.root), "--model", str(model_file),
        "--bbox", *map(str, BBOX), "--year", str(YEAR), "--out", str(out), "--no-progress",
        "--blocksize", "16",
    ])
    assert res.exit_code == 0, res.output
    valid, errors, _ = cog_validate(str(out), quiet=True)
    assert valid, errors
    with rasterio.open(out) as src:
        values = src.read(1)
        bounds, crs = tuple(src.bounds), src.crs
        assert src.tags()["units"] == "rarefied AM richness"  # the model's guild
        assert src.tags()["years"] == str(YEAR)
    inner, outer = _grid_vs_box(bounds, crs, BBOX)
    assert inner >= 0 and outer < 10.0  # covers the box, overhangs by less than a pixel
    # both tiles are read: every pixel of the box has a prediction
    assert np.isfinite(values).all()


def test_area_of_applicability_lines_up_with_the_map(tiles, model_file, tmp_path):
    m = MapModel.load(model_file)
    rng = np.random.default_rng(1)
    lon = rng.uniform(BBOX[0], BBOX[2], 200)
    lat = rng.uniform(BBOX[1], BBOX[3], 200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = tessera_patches.sample_patches(tiles.root, YEAR, lon, lat, k=3, progress=False).values
    a = region.area_of_applicability(m, p.reshape(200, -1), np.arange(200) // 4, tiles.root, YEAR,
                                     BBOX, out=tmp_path / "aoa.tif", rows_per_block=7,
                                     progress=False)
    from fungi_ssl.maps.predict import predict_map

    run = predict_map(m, tiles.root, YEAR, BBOX, progress=False)
    assert a.di.shape == run.map.shape
    # training points drawn all over the box: almost all of it lies inside
    assert a.share_inside > 0.8 and np.isfinite(a.di.values).all()
    # a pixel's DI is its nearest training sample's distance: the DI of the pixel under a
    # training sample is small
    assert float(np.nanmin(a.di.values)) < 0.05
    assert a.details["folds"] == "5 site-grouped folds"
    # with the samples' coordinates: chapter 07's validation folds (spatial blocks), so the
    # threshold is the one chapter 07 computes for the same model and samples
    from fungi_ssl.uncertainty.bias_maps import map_aoa, validation_folds

    ll = pd.DataFrame({"longitude": lon, "latitude": lat})
    b = region.area_of_applicability(m, p.reshape(200, -1), np.arange(200) // 4, tiles.root, YEAR,
                                     BBOX, coordinates=ll, block_km=0.1, progress=False)
    folds, how = validation_folds(ll, 0.1)
    assert b.details["folds"] == how and "spatial blocks" in how
    from fungi_ssl.uncertainty.aoa import importance_weights

    X = p.reshape(200, -1).astype(np.float32)
    w = region._weights(m.regressor_, m.project_patches(X), importance_weights)
    assert b.threshold == pytest.approx(map_aoa(m, X, folds, weights=w).threshold_)


def test_region_inputs_say_why_they_skip(tmp_path):
    only = tmp_path / "only_samples"
    only.mkdir()
    r = region.region_inputs(only)
    assert r.skip_reason is not None and r.skip_reason.count(".") == 1
    (only / "tessera").mkdir()
    assert "bbox" in region.region_inputs(only).skip_reason
    assert "model" in region.region_inputs(only, bbox=BBOX).skip_reason
    assert region.region_inputs("").skip_reason is None


# --------------------------------------------------------------------------
# the chapter itself, through papermill, with another bounding box
# --------------------------------------------------------------------------
@pytest.mark.slow
def test_chapter_with_another_bbox_maps_exactly_that_box(tmp_path):
    """Runs chapter 10 on a small box of its own (one year, a ridge model): the map covers
    the box to within a pixel, and 10_region.json records it. Needs the quick encoder
    (pre-trained on first use, then cached under FUNGI_SSL_DATA)."""
    bbox = [111.8450, 25.3050, 111.8490, 25.3080]
    results = tmp_path / "results"
    out = tmp_path / "maps"
    cmd = [
        sys.executable, "-m", "papermill", str(REPO / "notebooks" / "10_your_region.ipynb"),
        str(tmp_path / "10.ipynb"), "-p", "profile", "quick", "-p", "results_dir", str(results),
        "-p", "output_dir", str(out), "-p", "model_type", "ridge", "-y",
        f"bbox: {bbox}\nyears: [{YEAR}]", "--cwd", str(REPO / "notebooks"), "--no-progress-bar",
    ]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "MPLBACKEND": "Agg"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((results / "10_region.json").read_text())
    assert res["bbox"] == bbox and res["years"] == [YEAR] and res["trend"] is None
    assert res["grid"]["covers_bbox"] and res["grid"]["max_overhang_m"] < 10.0
    import rasterio

    with rasterio.open(out / f"map_{YEAR}.tif") as src:
        inner, outer = _grid_vs_box(tuple(src.bounds), src.crs, bbox)
        assert src.height * src.width == res["n_pixels"]
        assert np.isfinite(src.read(1)).mean() > 0.99
    assert inner >= 0 and outer < 10.0
    assert 0.0 <= res["share_in_aoa"] <= 1.0
    assert math.isfinite(res["seconds"])
    # a results file names no path of this machine (the covariate stack: its file name)
    text = (results / "10_region.json").read_text()
    assert str(REPO) not in text and str(tmp_path) not in text
