"""``fungi-ssl fit/predict-map --covariates``: the ``blend`` and ``product_deviations`` maps end to end.

The tiny region of ``test_cli`` (geotessera tiles of 8-dimensional
embeddings, 2 km on a side) gets a stack of two covariates on 500 m cells
of its UTM zone, so that three whole cells fit on each side of the raster
with room for every pixel's 3 × 3 patch. The samples' richness follows
embedding dimension 0 and the temperature of their cell. ``fit --covariates``
then writes one file with the product and ``ssl`` models, and ``predict-map``
must write, for every pixel of the box, its cell's level plus its own ``ssl``
value minus its cell's mean of the ``ssl`` map, the means taken over the
*whole* cell even where the box cuts it. The level is the mean of the cell's
means of the product and ``ssl`` maps (``blend``, the default) or the cell's
mean of the product map (``--map-model product_deviations``). The oracle is
chapter 06's own arithmetic,
:func:`fungi_ssl.maps.resolution_regions.with_within_cell_deviations`, on the
two members' maps predicted separately over the whole cells (50 × 50 pixels
each here). The 1 km stack of ``test_cli_covariates`` shows the other case:
cells that reach beyond the embeddings, counted in one warning line.
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pandas as pd
import pytest
import rasterio
from test_cli import EPSG, Region, _assert_one_line_error, _invoke
from test_cli_covariates import PH, TEMP, YEAR, samples_using_both_scales
from test_cli_covariates import _cells as _cells_1km

from fungi_ssl.data.covariate_stack import (
    cells_to_stack,
    write_covariate_stack,
)
from fungi_ssl.maps.composite import (
    KIND,
    LEVEL_WEIGHTS,
    CompositeMapModel,
    cell_deviation_map,
    load_map_model,
)
from fungi_ssl.maps.mapmodel import MapModel
from fungi_ssl.maps.resolution_regions import with_within_cell_deviations

CELL = 500.0
CELL_PX = 50  # pixels per cell side at 10 m
UTM = f"EPSG:{EPSG}"


def _cells(region: Region, size: float) -> pd.DataFrame:
    """Cells of ``size`` metres (aligned to its multiples) over the raster, two of margin."""
    rng = np.random.default_rng(11)
    xs = np.arange(np.floor(region.x0 / size) - 2, np.ceil((region.x0 + 2000) / size) + 2) * size
    ys = np.arange(np.floor((region.y0 - 2000) / size) - 2, np.ceil(region.y0 / size) + 2) * size
    gx, gy = np.meshgrid(xs + size / 2, ys + size / 2)
    n = gx.size
    return pd.DataFrame({"x": gx.ravel(), "y": gy.ravel(), TEMP: rng.uniform(40, 120, n).round(1),
                         PH: rng.uniform(45, 70, n).round(1)})


def _read(path):
    with rasterio.open(path) as src:
        return src.read(1), src.transform, src.tags(), src.descriptions[0]


def _predict(region, model, out, bbox, *extra, crs=UTM):
    res = _invoke("predict-map", "--embeddings", region.tiles, "--model", model, "--bbox", *bbox,
                  "--bbox-crs", crs, "--year", YEAR, "--out", out, "--quantity", "log_richness",
                  "--blocksize", 128, "--no-progress", *extra)
    assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """The region, a 500 m stack, samples using both scales, the composite and its members."""
    root = tmp_path_factory.mktemp("product_deviations")
    region = Region(root)
    stack = write_covariate_stack(cells_to_stack(_cells(region, CELL), EPSG, cell_size=CELL),
                                  root / "covariates_500m.tif")
    csv = samples_using_both_scales(region, stack, root / "samples_cov.csv")
    model = root / "composite.model"
    res = _invoke("fit", "--samples", csv, "--embeddings", region.tiles, "--out", model,
                  "--covariates", stack, "--components", 8, "--model", "ridge", "--no-progress")
    assert res.exit_code == 0, res.output
    composite = load_map_model(model)
    members = {}
    for name in ("product", "ssl"):
        members[name] = getattr(composite, name).save(root / f"member_{name}.model")
    # the whole 500 m cells around the test box: three on a side, inside the raster with a halo
    x_west = np.ceil(region.x0 / CELL) * CELL
    y_north = np.floor(region.y0 / CELL) * CELL
    assert x_west - region.x0 > 10 and region.x0 + 2000 - (x_west + 3 * CELL) > 10
    assert region.y0 - y_north > 10 and (y_north - 3 * CELL) - (region.y0 - 2000) > 10
    # the members' maps over (nearly) the whole raster: the oracle's inputs
    ref_box = (region.x0 + 30, region.y0 - 1970, region.x0 + 1970, region.y0 - 30)
    refs = {}
    for name, path in members.items():
        out = root / f"ref_{name}.tif"
        _predict(region, path, out, ref_box, *(["--covariates", stack] if name == "product" else []))
        refs[name] = _read(out)
    return {"region": region, "stack": stack, "csv": csv, "model": model, "fit_out": res.stdout,
            "composite": composite, "members": members, "refs": refs, "root": root,
            "x_west": x_west, "y_north": y_north}


def _at(transform, xc, yc):
    """Rows and columns of pixel centres ``xc, yc`` on a grid."""
    col = np.rint((xc - transform.c) / transform.a - 0.5).astype(int)
    row = np.rint((yc - transform.f) / transform.e - 0.5).astype(int)
    return row, col


def _centres(values, transform):
    h, w = values.shape
    xc = transform.c + (np.arange(w) + 0.5) * transform.a
    yc = transform.f + (np.arange(h) + 0.5) * transform.e
    return np.meshgrid(xc, yc)


def test_fit_writes_both_models_in_one_file(fitted):
    m = fitted["composite"]
    assert isinstance(m, CompositeMapModel)
    assert m.covariate_columns == (TEMP, PH) and m.ssl.covariate_columns == ()
    assert m.product.settings["map_model"] == "product" and m.ssl.settings["map_model"] == "ssl"
    assert m.settings["map_model"] == KIND and m.settings["guild"] == "ECM"
    assert f"{KIND} model" in fitted["fit_out"] and "ssl-only model" in fitted["fit_out"]
    with zipfile.ZipFile(fitted["model"]) as zf:
        meta = json.loads(zf.read("meta.json"))
        assert sorted(zf.namelist()) == ["meta.json", "product.model", "ssl.model"]
    assert meta["kind"] == KIND == "blend" and meta["format_version"] == 3
    assert meta["level_weight"] == LEVEL_WEIGHTS[KIND] == 0.5 == m.level_weight
    assert set(meta["versions"]) >= {"fungi_ssl", "scikit-learn", "numpy"}
    # the single-model loader refuses it in one line that says where to go
    with pytest.raises(ValueError, match=rf"{KIND} model .*load_map_model") as err:
        MapModel.load(fitted["model"])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kind", ["blend", "product_deviations"])
def test_the_map_is_chapter_06s_arithmetic_on_whole_cells(fitted, tmp_path, kind):
    region, xw, yn = fitted["region"], fitted["x_west"], fitted["y_north"]
    model = fitted["model"]
    if kind != KIND:  # the other kind: the same two members, another cell level
        model = tmp_path / f"{kind}.model"
        res = _invoke("fit", "--samples", fitted["csv"], "--embeddings", region.tiles, "--out",
                      model, "--covariates", fitted["stack"], "--map-model", kind,
                      "--components", 8, "--model", "ridge", "--no-progress")
        assert res.exit_code == 0, res.output
        assert load_map_model(model).kind == kind and f"{kind} model" in res.stdout
    weight = LEVEL_WEIGHTS[kind]
    # a box that holds one whole cell and cuts its eight neighbours
    box = (xw + 200, yn - 1300, xw + 1300, yn - 200)
    out = tmp_path / "composite.tif"
    res = _predict(region, model, out, box, "--covariates", fitted["stack"])
    assert f"{kind} model" in res.stdout
    assert "9 1 km cells, 8 cut by the bbox edge" in res.stdout and "(0 of them" in res.stdout
    assert "warning" not in res.stderr
    mapped, t, tags, description = _read(out)
    assert tags["map_model"] == kind and tags["quantity"] == "log_richness"
    assert kind in description and description.startswith("log_richness: log1p(")
    assert np.isfinite(mapped).all()
    # the oracle: with_within_cell_deviations on the members' maps over the 3 × 3 whole cells
    (p, tp, _, _), (s, ts, _, _) = fitted["refs"]["product"], fitted["refs"]["ssl"]
    r0, c0 = _at(tp, xw + 5.0, yn - 5.0)
    rs0, cs0 = _at(ts, xw + 5.0, yn - 5.0)
    n = 3 * CELL_PX
    p_cells = p[r0 : r0 + n, c0 : c0 + n].astype(float)
    s_cells = s[rs0 : rs0 + n, cs0 : cs0 + n].astype(float)
    expected = with_within_cell_deviations(p_cells, s_cells, f=CELL_PX, weight=weight)
    xc, yc = _centres(mapped, t)
    rows, cols = _at(tp, xc, yc)
    rows, cols = rows - r0, cols - c0
    assert rows.min() >= 0 and cols.min() >= 0 and rows.max() < n and cols.max() < n
    np.testing.assert_allclose(mapped, expected[rows, cols], atol=2e-4)
    # (a) the interior cell's mean is its level (from the product and ssl maps' means),
    # (b) its deviations are the ssl map's
    cell_r, cell_c = rows // CELL_PX, cols // CELL_PX
    inner = (cell_r == 1) & (cell_c == 1)
    assert inner.sum() == CELL_PX * CELL_PX
    p_mean = p_cells[CELL_PX : 2 * CELL_PX, CELL_PX : 2 * CELL_PX].mean()
    s_mean = s_cells[CELL_PX : 2 * CELL_PX, CELL_PX : 2 * CELL_PX].mean()
    s_here = s_cells[rows, cols]  # the ssl map at each pixel of the box
    assert mapped[inner].mean() == pytest.approx(weight * p_mean + (1 - weight) * s_mean,
                                                 abs=1e-4)
    assert abs(p_mean - s_mean) > 1e-2  # the two levels differ, so the weight matters
    np.testing.assert_allclose(mapped[inner] - mapped[inner].mean(),
                               s_here[inner] - s_here[inner].mean(), atol=2e-4)
    assert np.std(s_here[inner]) > 0.01  # there are deviations to keep
    # the cut cells' means come from the whole cell, not from the box's part of it
    cut = (cell_r == 0) & (cell_c == 0)
    part_only = cell_deviation_map(p[rows + r0, cols + c0], s[rows + rs0, cols + cs0],
                                   np.where(cut, 0, -1), weight=weight)
    assert np.abs(part_only[cut] - mapped[cut]).max() > 1e-3  # the test can tell them apart


def test_cells_beyond_the_embeddings_are_counted_in_one_warning(fitted, tmp_path):
    region = fitted["region"]
    stack = write_covariate_stack(cells_to_stack(_cells_1km(region), EPSG),
                                  tmp_path / "covariates_1km.tif")
    out = tmp_path / "composite_1km.tif"
    res = _invoke("predict-map", "--embeddings", region.tiles, "--model", fitted["model"],
                  "--bbox", *region.bbox, "--year", YEAR, "--out", out, "--covariates", stack,
                  "--quantity", "log_richness", "--no-progress")
    assert res.exit_code == 0, res.output
    mapped, t, _, _ = _read(out)
    # oracle: the 1 km cells holding a pixel of the map; cut = not wholly inside the map; of
    # those, the ones not wholly inside the raster's pixels that have a full 3 × 3 patch
    xc, yc = _centres(mapped, t)
    held = set(zip(np.floor(xc / 1000).ravel().astype(int), np.floor(yc / 1000).ravel().astype(int)))
    h, w = mapped.shape
    west, north = t.c, t.f
    east, south = west + w * t.a, north + h * t.e
    x_lo, x_hi, y_lo, y_hi = region.x0 + 10, region.x0 + 1990, region.y0 - 1990, region.y0 - 10
    cut = [(i, j) for i, j in held
           if not (i * 1000 >= west and (i + 1) * 1000 <= east
                   and j * 1000 >= south and (j + 1) * 1000 <= north)]
    partial = [(i, j) for i, j in cut
               if not (i * 1000 >= x_lo and (i + 1) * 1000 <= x_hi
                       and j * 1000 >= y_lo and (j + 1) * 1000 <= y_hi)]
    assert 0 < len(partial) < len(cut)
    warns = [ln for ln in res.stderr.splitlines() if ln.startswith("warning: ")]
    assert len(warns) == 1, res.stderr
    assert f"{len(partial)} of the {len(cut)} 1 km cells cut by the bbox edge" in warns[0]
    assert f"{len(held)} 1 km cells, {len(cut)} cut" in res.stdout
    assert np.isfinite(mapped).all()


def test_a_composite_model_without_covariates_is_refused(fitted, tmp_path):
    region = fitted["region"]
    _assert_one_line_error(
        ["predict-map", "--embeddings", region.tiles, "--model", fitted["model"], "--bbox",
         *region.bbox, "--year", YEAR, "--out", tmp_path / "m.tif", "--no-progress"],
        ["--covariates", KIND, TEMP, PH], Exception)
    assert not (tmp_path / "m.tif").exists()
    _assert_one_line_error(
        ["fit", "--samples", fitted["csv"], "--embeddings", region.tiles, "--out",
         tmp_path / "x.model", "--map-model", KIND], [f"--map-model {KIND}", "--covariates"],
        Exception)


def _old_save(model: MapModel, path) -> None:
    """A model file written as MapModel.save wrote it before composite models existed."""
    import skops.io as sio

    blob = sio.dumps({"pca": model.pca_, "regressor": model.regressor_})
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("meta.json", json.dumps(model.metadata(), indent=1))
        zf.writestr("model.skops", blob)


def test_single_model_files_still_load_and_map_as_before(fitted, tmp_path):
    region, stack, csv = fitted["region"], fitted["stack"], fitted["csv"]
    ref_box = (region.x0 + 30, region.y0 - 1970, region.x0 + 1970, region.y0 - 30)
    for kind, extra in (("product", ["--covariates", stack]), ("ssl", [])):
        path = tmp_path / f"{kind}.model"
        res = _invoke("fit", "--samples", csv, "--embeddings", region.tiles, "--out", path,
                      "--map-model", kind, *extra, "--components", 8, "--model", "ridge",
                      "--no-progress")
        assert res.exit_code == 0, res.output
        single = load_map_model(path)
        assert type(single) is MapModel and single.settings["map_model"] == kind
        with zipfile.ZipFile(path) as zf:
            assert "kind" not in json.loads(zf.read("meta.json"))
        # the same fit as the composite's member: the same map, pixel by pixel
        out = tmp_path / f"{kind}.tif"
        _predict(region, path, out, ref_box, *extra)
        mapped, _, tags, _ = _read(out)
        assert tags["map_model"] == kind
        np.testing.assert_array_equal(mapped, fitted["refs"][kind][0])
        # a file written the old way loads and predicts as the model it holds
        old = tmp_path / f"old_{kind}.model"
        _old_save(single, old)
        again = load_map_model(old)
        assert type(again) is MapModel and again.fingerprint == single.fingerprint
        rng = np.random.default_rng(3)
        X = rng.normal(size=(20, 72))
        cov = np.column_stack([rng.uniform(40, 120, 20), rng.uniform(45, 70, 20)])
        kw = {"covariates": cov} if kind == "product" else {}
        np.testing.assert_array_equal(again.predict_patches(X, **kw),
                                      single.predict_patches(X, **kw))
    # and a composite rebuilt from its bytes round-trips
    m = fitted["composite"]
    again = CompositeMapModel.load(m.save(tmp_path / "again.model"))
    assert again.fingerprint == m.fingerprint
    assert MapModel.from_bytes(m.ssl.to_bytes(), label="x").fingerprint == m.ssl.fingerprint
    assert zipfile.is_zipfile(io.BytesIO(m.product.to_bytes()))
