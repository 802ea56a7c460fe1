"""``fungi-ssl fit --covariates`` and ``predict-map --covariates``: the product model end to end.

The tiny region of ``test_cli`` (geotessera tiles of 8-dimensional
embeddings) gets a stack of two 1 km covariates on the 1 km grid of its UTM
zone, written by :func:`fungi_ssl.data.covariate_stack.write_covariate_stack`.
The samples' richness follows embedding dimension 0 *and* the temperature of
their 1 km cell, so the product model must use both. The map the command
writes must equal the package's in-memory product prediction pixel by pixel,
with each pixel given the covariates of the 1 km cell holding its centre.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import rasterio
from test_cli import EPSG, SCALE, Region, _assert_one_line_error, _invoke

from fungi_ssl.data.coordinates import lonlat_to_crs
from fungi_ssl.data.covariate_stack import (
    cells_to_stack,
    open_covariate_stack,
    write_covariate_stack,
)
from fungi_ssl.maps.mapmodel import MapModel

TEMP, PH = "CHELSA_BIO_Annual_Mean_Temperature", "SG_Soil_pH_H2O_005cm"
YEAR = 2021


def _cells(region: Region, x_shift: float = 0.0) -> pd.DataFrame:
    """1 km cells (multiples of 1000 m in the UTM zone) over the raster, one cell of margin."""
    rng = np.random.default_rng(7)
    xs = np.arange(np.floor(region.x0 / 1000) - 1, np.ceil((region.x0 + 2000) / 1000) + 1) * 1000
    ys = np.arange(np.floor((region.y0 - 2000) / 1000) - 1, np.ceil(region.y0 / 1000) + 1) * 1000
    gx, gy = np.meshgrid(xs + 500.0 + x_shift, ys + 500.0)
    n = gx.size
    return pd.DataFrame({"x": gx.ravel(), "y": gy.ravel(), TEMP: rng.uniform(40, 120, n).round(1),
                         PH: rng.uniform(45, 70, n).round(1)})


def samples_using_both_scales(region: Region, stack, csv):
    """Write the region's samples with a richness of embedding band 0 and the stack's temperature."""
    s = region.samples.copy()
    x, y = lonlat_to_crs(s["longitude"].to_numpy(), s["latitude"].to_numpy(), EPSG)
    r = np.floor((region.y0 - y) / 10).astype(int)
    c = np.floor((x - region.x0) / 10).astype(int)
    read = np.where(s["year"] == 2015, 2020, s["year"])  # 2015: before the tiles, read 2020
    v0 = np.array([region.emb[yr][i, j, 0] for yr, i, j in zip(read, r, c)]) * SCALE
    temp = open_covariate_stack(stack).at_lonlat(s["longitude"], s["latitude"])[TEMP].to_numpy()
    s["rarefied"] = np.expm1(1.0 + 0.5 * v0 + 0.02 * temp)
    s.to_csv(csv, index=False)
    return csv


@pytest.fixture(scope="module")
def product(tmp_path_factory):
    """The region, its covariate stack, samples whose richness uses both, a fitted product model."""
    root = tmp_path_factory.mktemp("covariates")
    region = Region(root)
    cells = _cells(region)
    stack = write_covariate_stack(cells_to_stack(cells, EPSG), root / "covariates.tif")
    csv = samples_using_both_scales(region, stack, root / "samples_cov.csv")
    model = root / "product.model"
    # the single product model (the default with covariates is product_deviations, tested in
    # test_cli_product_deviations)
    res = _invoke("fit", "--samples", csv, "--embeddings", region.tiles, "--out", model,
                  "--covariates", stack, "--map-model", "product", "--components", 8,
                  "--no-progress")
    assert res.exit_code == 0, res.output
    return region, stack, csv, model, res.stdout, cells


def test_fit_with_covariates_writes_a_product_model(product):
    region, _, csv, model, out, _ = product
    m = MapModel.load(model)
    assert m.covariate_columns == (TEMP, PH)
    assert m.settings["map_model"] == "product"
    assert "product model" in out and "2 1 km covariates" in out
    # the covariates carry the cell's level: the product model beats the same chain without them
    tmp = model.with_name("ssl.model")
    res = _invoke("fit", "--samples", csv, "--embeddings", region.tiles, "--out", tmp,
                  "--components", 8, "--no-progress")
    assert res.exit_code == 0, res.output
    ssl = MapModel.load(tmp)
    assert ssl.covariate_columns == () and ssl.settings["map_model"] == "ssl"
    assert m.settings["cv_skill"]["site"]["r2"] > ssl.settings["cv_skill"]["site"]["r2"] + 0.05


def test_predict_map_with_covariates_equals_the_in_memory_product_prediction(product, tmp_path):
    region, stack, _, model, _, cells = product
    out = tmp_path / "product.tif"
    res = _invoke("predict-map", "--embeddings", region.tiles, "--model", model, "--bbox",
                  *region.bbox, "--year", YEAR, "--out", out, "--covariates", stack,
                  "--quantity", "log_richness", "--blocksize", 128, "--no-progress")
    assert res.exit_code == 0, res.output
    assert "product model" in res.stdout
    with rasterio.open(out) as src:
        mapped = src.read(1)
        t = src.transform
        assert src.tags()["map_model"] == "product"
        assert src.tags()["covariates"] == f"{TEMP},{PH}"
    # the package, in memory: each pixel's 3 × 3 patch from the raster, the covariates of the
    # 1 km cell holding its centre, looked up in the cell table (not through the stack reader)
    h, w = mapped.shape
    xc = t.c + (np.arange(w) + 0.5) * t.a
    yc = t.f + (np.arange(h) + 0.5) * t.e
    col0 = round((xc[0] - region.x0 - 5) / 10)
    row0 = round((region.y0 - yc[0] - 5) / 10)
    emb = region.emb[YEAR].astype(np.float32) * SCALE
    win = np.lib.stride_tricks.sliding_window_view(
        emb[row0 - 1 : row0 + h + 1, col0 - 1 : col0 + w + 1], (3, 3), axis=(0, 1))
    patches = win.transpose(0, 1, 3, 4, 2).reshape(h * w, -1)
    gx, gy = np.meshgrid(np.floor(xc / 1000) * 1000 + 500, np.floor(yc / 1000) * 1000 + 500)
    key = cells.set_index(["x", "y"])
    cov = key.loc[list(zip(gx.ravel(), gy.ravel())), [TEMP, PH]].reset_index(drop=True)
    assert cov[TEMP].nunique() > 1  # the map spans several cells
    expected = MapModel.load(model).predict_patches(patches, covariates=cov,
                                                    output="log_richness").reshape(h, w)
    np.testing.assert_allclose(mapped, expected, rtol=1e-5, atol=1e-5)
    assert np.isfinite(mapped).all()


def test_predict_map_of_a_product_model_without_covariates_is_refused(product, tmp_path):
    region, _, _, model, _, _ = product
    _assert_one_line_error(
        ["predict-map", "--embeddings", region.tiles, "--model", model, "--bbox", *region.bbox,
         "--year", YEAR, "--out", tmp_path / "m.tif", "--no-progress"],
        ["--covariates", TEMP, PH, "product model"], Exception)
    assert not (tmp_path / "m.tif").exists()


def test_a_stack_missing_a_band_is_refused(product, tmp_path):
    region, _, _, model, _, cells = product
    partial = write_covariate_stack(cells_to_stack(cells.drop(columns=[PH]), EPSG),
                                    tmp_path / "temperature_only.zarr")
    _assert_one_line_error(
        ["predict-map", "--embeddings", region.tiles, "--model", model, "--bbox", *region.bbox,
         "--year", YEAR, "--out", tmp_path / "m.tif", "--covariates", partial, "--no-progress"],
        ["--covariates", str(partial), "lacks", PH], ValueError)


def test_a_stack_that_does_not_cover_the_map_is_refused(product, tmp_path):
    region, _, _, model, _, _ = product
    away = write_covariate_stack(cells_to_stack(_cells(region, x_shift=50_000.0), EPSG),
                                 tmp_path / "elsewhere.tif")
    _assert_one_line_error(
        ["predict-map", "--embeddings", region.tiles, "--model", model, "--bbox", *region.bbox,
         "--year", YEAR, "--out", tmp_path / "m.tif", "--covariates", away, "--no-progress"],
        ["--covariates", "does not cover"], ValueError)


def test_a_stack_without_crs_is_refused(product, tmp_path):
    region, stack, _, model, _, _ = product
    bare = tmp_path / "no_crs.tif"
    with rasterio.open(stack) as src:
        profile = src.profile | {"crs": None}
        with rasterio.open(bare, "w", **profile) as dst:
            dst.write(src.read())
            dst.descriptions = src.descriptions
    _assert_one_line_error(
        ["predict-map", "--embeddings", region.tiles, "--model", model, "--bbox", *region.bbox,
         "--year", YEAR, "--out", tmp_path / "m.tif", "--covariates", bare, "--no-progress"],
        ["--covariates", "no CRS"], ValueError)


def test_an_ssl_model_refuses_covariates_and_product_needs_them(product, tmp_path):
    region, stack, csv, _, _, _ = product
    _assert_one_line_error(
        ["fit", "--samples", csv, "--embeddings", region.tiles, "--out", tmp_path / "x.model",
         "--map-model", "product"], ["--map-model product", "--covariates"], Exception)
    ssl = tmp_path / "ssl.model"
    res = _invoke("fit", "--samples", csv, "--embeddings", region.tiles, "--out", ssl,
                  "--components", 8, "--model", "ridge", "--no-progress")
    assert res.exit_code == 0, res.output
    _assert_one_line_error(
        ["predict-map", "--embeddings", region.tiles, "--model", ssl, "--bbox", *region.bbox,
         "--year", YEAR, "--out", tmp_path / "m.tif", "--covariates", stack, "--no-progress"],
        ["ssl-only", "--covariates"], Exception)


def test_fit_with_samples_outside_the_stack_is_refused(product, tmp_path):
    region, _, csv, _, _, _ = product
    away = write_covariate_stack(cells_to_stack(_cells(region, x_shift=50_000.0), EPSG),
                                 tmp_path / "elsewhere.tif")
    _assert_one_line_error(
        ["fit", "--samples", csv, "--embeddings", region.tiles, "--out", tmp_path / "x.model",
         "--covariates", away, "--no-progress"], ["--covariates", "covers none"], ValueError)
