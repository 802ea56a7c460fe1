"""Tests for the ``fungi-ssl`` command (fungi_ssl/cli/).

A tiny region is written in geotessera's tile layout: one 0.1° cell
(``grid_0.15_52.05``), a 200 × 200 pixel raster of 8-dimensional embeddings for
the years 2020–2023. Richness follows embedding dimension 0 of the sample's
pixel (``log1p(richness) = 2 + 0.5 · value``), and dimension 0 rises every
year in the western half of the raster only. So a model fitted on the samples
maps richness rising in the west ("ancient" polygons) and flat in the east
("other" polygons), which the trend command must recover.

Bad input is checked through the command as a user meets it: a non-zero exit,
one line ``error: …`` on stderr naming the problem, no traceback; and with
``--debug`` the original exception with its traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from affine import Affine
from typer.main import get_command
from typer.testing import CliRunner

# fungi_ssl.data.download imports pooch, whose logger binds sys.stderr when imported: import it
# here, not inside a CliRunner invocation whose captured stderr is closed afterwards
from fungi_ssl import cli
from fungi_ssl.data import download  # noqa: F401
from fungi_ssl.data.coordinates import crs_to_lonlat
from fungi_ssl.embeddings import tessera, tessera_write
from fungi_ssl.maps.mapmodel import MapModel
from fungi_ssl.predictors import tables as predictors
from fungi_ssl.trends import trend_table

YEARS = (2020, 2021, 2022, 2023)
H = W = 200
DIM = 8
SCALE = 0.02
DRIFT = 8  # int8 units per year added to dimension 0 in the western half
LON, LAT = 0.15, 52.05
EPSG = 32631
SLOPE = 0.5  # log1p(richness) per unit of dequantised dimension 0

runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(cli.app, [str(a) for a in args])


# --------------------------------------------------------------------------
# a tiny region in geotessera's layout
# --------------------------------------------------------------------------
class Region:
    """Tiles, samples and polygons of the test region."""

    def __init__(self, root: Path) -> None:
        rng = np.random.default_rng(0)
        grid = tessera_write.tile_grid(LON, LAT)
        self.x0 = grid.transform.c + 2000.0
        self.y0 = grid.transform.f - 3000.0
        self.transform = Affine(10, 0, self.x0, 0, -10, self.y0)
        blocks = rng.normal(size=(H // 20, W // 20, DIM))
        base = np.repeat(np.repeat(blocks, 20, 0), 20, 1) * 25 + rng.normal(0, 3, (H, W, DIM))
        self.emb = {}
        self.tiles = root / "tiles"
        for i, year in enumerate(YEARS):
            e = base.copy()
            e[:, : W // 2, 0] += DRIFT * i
            e = np.clip(np.round(e), -127, 127).astype(np.int8)
            self.emb[year] = e
            tessera_write.write_tile(
                self.tiles,
                year,
                LON,
                LAT,
                e,
                np.full((H, W), SCALE, np.float32),
                transform=self.transform,
                overwrite=True,
            )
        # the provenance sidecar `geotessera download` writes: the TESSERA dataset version
        (self.tiles / tessera.METADATA_FILENAME).write_text(json.dumps({"dataset_version": "v1"}))
        # samples: sampled in 2015 (before the first embedding year: read from 2020) or 2021-22
        n = 150
        r, c = rng.integers(3, H - 3, n), rng.integers(3, W - 3, n)
        years = rng.choice([2015, 2021, 2022], n)
        read = np.where(years == 2015, 2020, years)
        v0 = np.array([self.emb[y][i, j, 0] for y, i, j in zip(read, r, c)]) * SCALE
        richness = np.expm1(2.0 + SLOPE * v0)
        lon, lat = crs_to_lonlat(self.x0 + 10 * c + 5, self.y0 - 10 * r - 5, EPSG)
        self.samples = pd.DataFrame(
            {
                "sample_id": [f"s{i:03d}" for i in range(n)],
                "longitude": np.round(lon, 7),
                "latitude": np.round(lat, 7),
                "raw_obs_div": np.round(richness),
                "rarefied": richness,
                "year": years,
                "am_richness": np.round(richness / 3, 3),  # another guild's target column
            }
        )
        self.n_before = int((years == 2015).sum())
        self.csv = root / "samples.csv"
        self.samples.to_csv(self.csv, index=False)
        # the map's box: pixels 30..170 of the raster, in lon/lat
        blon, blat = crs_to_lonlat(
            [self.x0 + 300, self.x0 + 1700], [self.y0 - 1700, self.y0 - 300], EPSG
        )
        self.bbox = (float(blon[0]), float(blat[0]), float(blon[1]), float(blat[1]))
        # polygons in the tile's UTM zone: two ancient in the west half, two other in the east
        import geopandas as gpd
        from shapely.geometry import box

        xm, top = self.x0 + 1000, self.y0 - 400
        geoms = [
            box(xm - 600, top - 500, xm - 100, top),
            box(xm - 600, top - 1200, xm - 100, top - 700),
            box(xm + 100, top - 500, xm + 600, top),
            box(xm + 100, top - 1200, xm + 600, top - 700),
        ]
        self.polygons = root / "woodland.geojson"
        gpd.GeoDataFrame(
            {
                "wood_id": ["a1", "a2", "o1", "o2"],
                "kind": ["ancient", "ancient", "other", "other"],
                "park": "P",
            },
            geometry=geoms,
            crs=EPSG,
        ).to_file(self.polygons, driver="GeoJSON")


@pytest.fixture(scope="module")
def region(tmp_path_factory) -> Region:
    return Region(tmp_path_factory.mktemp("region"))


@pytest.fixture(scope="module")
def model_file(region: Region, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model") / "ecm.model"
    res = _invoke(
        "fit",
        "--samples",
        region.csv,
        "--embeddings",
        region.tiles,
        "--out",
        out,
        "--model",
        "ridge",
        "--components",
        8,
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def yearly_maps(region: Region, model_file: Path, tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("maps")
    paths = []
    for year in YEARS:
        out = folder / f"richness_{year}.tif"
        res = _invoke(
            "predict-map",
            "--embeddings",
            region.tiles,
            "--model",
            model_file,
            "--bbox",
            *region.bbox,
            "--year",
            year,
            "--out",
            out,
            "--blocksize",
            128,
            "--no-progress",
        )
        assert res.exit_code == 0, res.output
        paths.append(out)
    return paths


# --------------------------------------------------------------------------
# help
# --------------------------------------------------------------------------
COMMANDS = ("download", "fit", "predict-map", "trend", "book")


def test_root_help_lists_every_subcommand_and_debug():
    res = _invoke("--help")
    assert res.exit_code == 0
    for name in (*COMMANDS, "--debug"):
        assert name in res.stdout


@pytest.mark.parametrize("name", COMMANDS)
def test_help_describes_every_option_with_its_default(name):
    res = _invoke(name, "--help")
    assert res.exit_code == 0, res.output
    group = get_command(cli.app)
    command = group.commands[name]
    ctx = command.context_class(command, info_name=name)
    options = [p for p in command.params if p.param_type_name == "option"]
    assert options
    for param in options:
        for opt in param.opts:
            assert opt in res.stdout, f"{name} --help does not list {opt}"
        record = param.get_help_record(ctx)
        assert record is not None, f"{name}: {param.opts} is hidden"
        text = record[1]
        assert len(text.split("[")[0].strip()) > 10, f"{name} {param.opts}: no description"
        assert "default" in text or "[required]" in text, (
            f"{name} {param.opts}: help states no default: {text!r}"
        )


def test_defaults_match_the_package():
    from fungi_ssl.trends.polygons import DEFAULT_CONFIDENCE
    from fungi_ssl.validation.pipelines import SSL_COMPONENTS

    fit_cmd = get_command(cli.app).commands["fit"]
    trend_cmd = get_command(cli.app).commands["trend"]
    comp = next(p for p in fit_cmd.params if p.name == "components")
    conf = next(p for p in trend_cmd.params if p.name == "confidence")
    assert comp.default == SSL_COMPONENTS
    assert conf.default == DEFAULT_CONFIDENCE


# --------------------------------------------------------------------------
# the happy path: fit, predict-map (a valid COG), trend
# --------------------------------------------------------------------------
def test_fit_reads_patches_at_each_sample_from_its_year(region, model_file):
    m = MapModel.load(model_file)
    assert m.spec.embedding_dim == DIM and m.spec.patch_size == 3
    # the encoder is the TESSERA dataset version the download records
    assert m.spec.encoder == "tessera:v1"
    assert m.n_samples == len(region.samples)
    assert m.settings["guild"] == "ECM" and m.settings["target_column"] == "rarefied"
    # samples from 2015 were read from 2020, the first year held
    assert m.settings["embedding_years"] == [2020, 2021, 2022]
    # the model recovers the rule richness follows: predict the samples' own patches
    patches, _, which = predictors.embedding_patches(region.samples, region.tiles, progress=False)
    pred = m.predict_patches(patches, output="log_richness")
    truth = np.log1p(region.samples["rarefied"].to_numpy())
    assert np.corrcoef(pred, truth)[0, 1] > 0.95
    assert which.n_before == region.n_before and which.n_gap == 0 and which.n_after == 0
    # its cross-validated skill is in its metadata: site-grouped folds and spatial blocks
    skill = m.settings["cv_skill"]
    assert skill["site"]["r2"] > 0.8 and skill["site"]["n_samples"] == len(region.samples)
    assert skill["block"]["block_km"] < 50 and np.isfinite(skill["block"]["r2"])  # a 2 km region


def test_fit_reports_the_year_rule_on_stderr(region, tmp_path):
    out = tmp_path / "m.model"
    res = _invoke(
        "fit",
        "--samples",
        region.csv,
        "--embeddings",
        region.tiles,
        "--out",
        out,
        "--model",
        "ridge",
        "--components",
        4,
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    assert f"{region.n_before} sampled before 2020 took 2020" in res.stderr
    assert res.stdout.startswith(f"wrote {out}")


def test_fit_another_guild_by_its_target_column(region, tmp_path):
    out = tmp_path / "am.model"
    res = _invoke(
        "fit",
        "--samples",
        region.csv,
        "--embeddings",
        region.tiles,
        "--out",
        out,
        "--target",
        "am_richness",
        "--guild",
        "AM",
        "--model",
        "ridge",
        "--components",
        4,
        "--year",
        2021,
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    m = MapModel.load(out)
    assert (m.settings["guild"], m.settings["target_column"]) == ("AM", "am_richness")
    assert m.settings["embedding_years"] == [2021]
    assert "AM am_richness" in res.stdout


def test_fit_and_predict_from_a_folder_of_zarr_stores(region, model_file, tmp_path):
    from fungi_ssl.maps.sources import write_embedding_store

    folder = tmp_path / "stores"
    folder.mkdir()
    for y in YEARS:
        write_embedding_store(
            folder / f"{y}.zarr",
            region.emb[y],
            np.full((H, W), SCALE, np.float32),
            transform=region.transform,
            crs=EPSG,
            encoder="enc-test",
            year=y,
        )
    out = tmp_path / "zarr.model"
    res = _invoke(
        "fit",
        "--samples",
        region.csv,
        "--embeddings",
        folder,
        "--out",
        out,
        "--model",
        "ridge",
        "--components",
        8,
    )
    assert res.exit_code == 0, res.output
    m = MapModel.load(out)
    assert m.spec.encoder == "enc-test" and m.spec.embedding_dim == DIM
    assert m.settings["embedding_years"] == [2020, 2021, 2022]
    # the same samples read from tiles and from stores give the same patches
    a, _, _ = predictors.embedding_patches(region.samples, folder)
    b, _, _ = predictors.embedding_patches(region.samples, region.tiles, progress=False)
    np.testing.assert_array_equal(a, b)
    res = _invoke(
        "predict-map",
        "--embeddings",
        folder,
        "--model",
        out,
        "--bbox",
        *region.bbox,
        "--year",
        2022,
        "--out",
        tmp_path / "m.tif",
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    # a model fitted on TESSERA tiles refuses embeddings of another encoder
    _assert_one_line_error(
        [
            "predict-map",
            "--embeddings",
            folder,
            "--model",
            model_file,
            "--bbox",
            *region.bbox,
            "--year",
            2022,
            "--out",
            tmp_path / "n.tif",
        ],
        ["encoder", "'tessera:v1'", "'enc-test'"],
        ValueError,
    )


def test_predict_map_writes_a_valid_cog(region, yearly_maps):
    import rasterio

    with rasterio.open(yearly_maps[0]) as src:
        assert src.driver == "GTiff"
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.profile["tiled"] and src.block_shapes[0] == (128, 128)
        assert len(src.overviews(1)) >= 1
        assert src.crs.to_epsg() == EPSG
        assert src.res == (10.0, 10.0)
        assert src.tags()["years"] == "2020"
        values = src.read(1)
        t = src.transform
    try:  # GDAL's own layout rules, where rio-cogeo is installed (the dev extra)
        from rio_cogeo.cogeo import cog_validate
    except ImportError:  # pragma: no cover
        pass
    else:
        valid, errors, _ = cog_validate(str(yearly_maps[0]), quiet=True)
        assert valid, errors
    # the map covers the box (the UTM envelope of the lon/lat box: at least 140 × 140 pixels)
    assert values.shape[0] >= 140 and values.shape[1] >= 140
    assert np.isfinite(values).mean() > 0.98
    # each map pixel is the model applied to the tile pixel under it: richness follows dim 0
    rows = np.round((region.y0 - (t.f + (np.arange(values.shape[0]) + 0.5) * t.e)) / 10 - 0.5)
    cols = np.round((t.c + (np.arange(values.shape[1]) + 0.5) * t.a - region.x0) / 10 - 0.5)
    r, c = np.meshgrid(rows.astype(int), cols.astype(int), indexing="ij")
    expected = np.expm1(2.0 + SLOPE * region.emb[2020][r, c, 0] * SCALE)
    ok = np.isfinite(values)
    assert np.corrcoef(values[ok], expected[ok])[0, 1] > 0.8


def test_trend_on_yearly_maps_recovers_the_drift(region, yearly_maps, tmp_path):
    out, summary = tmp_path / "trends.csv", tmp_path / "summary.json"
    res = _invoke(
        "trend",
        "--maps",
        *yearly_maps,
        "--polygons",
        region.polygons,
        "--id-column",
        "wood_id",
        "--type-column",
        "kind",
        "--out",
        out,
        "--summary",
        summary,
        "--n-boot",
        200,
    )
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out).set_index("wood_id")
    assert sorted(table.index) == ["a1", "a2", "o1", "o2"]
    assert (table["n_years"] == len(YEARS)).all()
    # west: log1p(richness) rises by SLOPE * DRIFT * SCALE a year; log(richness) a bit faster
    per_year = SLOPE * DRIFT * SCALE
    for pid in ("a1", "a2"):
        assert per_year * 0.7 < table.loc[pid, "slope"] < per_year * 1.6
    for pid in ("o1", "o2"):
        assert abs(table.loc[pid, "slope"]) < per_year * 0.2
    doc = json.loads(summary.read_text())
    assert doc["years"] == list(YEARS) and doc["n_with_trend"] == 4
    assert doc["contrast"]["slope_difference"] > per_year * 0.5
    assert "ancient − other woodland" in res.stdout
    # one estimand with the book: the mean of log1p(richness) over each polygon's pixels,
    # and the book's interval (parks and park-years as units), stated in the output
    assert doc["estimand"] == trend_table.TREND_ESTIMAND and "estimand: " in res.stdout
    assert doc["contrast"]["interval"] == "park_years" and "park-years" in res.stdout


def test_trend_fits_the_books_estimand_on_richness_maps(region, yearly_maps):
    from fungi_ssl.maps.outputs import open_map
    from fungi_ssl.trends import polygons as trends

    result = trend_table.polygon_trend_table(yearly_maps, region.polygons, id_column="wood_id",
                                     type_column="kind", n_boot=200)
    poly = __import__("geopandas").read_file(region.polygons).rename(
        columns={"wood_id": "polygon_id", "kind": "woodland"})
    stack = trends.stack_years({y: open_map(p) for y, p in zip(YEARS, yearly_maps)})
    z = trends.zonal_means(np.log1p(stack).rio.write_crs(stack.rio.crs), poly)
    book = trends.polygon_trends(z, log=False).set_index("polygon_id")["slope"]
    got = result.trends.set_index("wood_id")["slope"]
    np.testing.assert_allclose(got.loc[book.index].to_numpy(), book.to_numpy(), rtol=1e-9)
    # not log(mean(richness)): that is another number
    other = trends.polygon_trends(trends.zonal_means(stack, poly), log=True)
    assert not np.allclose(other.set_index("polygon_id")["slope"].loc[book.index], book)
    c = result.contrast
    assert c.method == "park_years" and c.n_parks == 1 and c.n_park_years == len(YEARS)


def test_trend_on_a_zarr_stack_equals_trend_on_the_geotiffs(
    region, model_file, yearly_maps, tmp_path
):
    stack = tmp_path / "stack.zarr"
    args = [
        "predict-map",
        "--embeddings",
        region.tiles,
        "--model",
        model_file,
        "--bbox",
        *region.bbox,
        "--out",
        stack,
        "--no-progress",
    ]
    for y in YEARS:
        args += ["--year", y]
    res = _invoke(*args)
    assert res.exit_code == 0, res.output
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    common = [
        "--polygons",
        region.polygons,
        "--id-column",
        "wood_id",
        "--type-column",
        "kind",
        "--n-boot",
        50,
    ]
    assert _invoke("trend", stack, *common, "--out", a).exit_code == 0
    assert _invoke("trend", *yearly_maps, *common, "--out", b).exit_code == 0
    pd.testing.assert_frame_equal(pd.read_csv(a), pd.read_csv(b))


def test_trend_without_a_type_column_gives_trends_only(region, yearly_maps, tmp_path):
    out = tmp_path / "t.csv"
    res = _invoke(
        "trend", *yearly_maps, "--polygons", region.polygons, "--id-column", "wood_id", "--out", out
    )
    assert res.exit_code == 0, res.output
    assert "no woodland type column 'woodland'" in res.stderr
    assert "ancient − other" not in res.stdout
    assert len(pd.read_csv(out)) == 4


# --------------------------------------------------------------------------
# bad input: one line, non-zero exit, no traceback; --debug shows it
# --------------------------------------------------------------------------
def _assert_one_line_error(args, words, exc_type):
    res = _invoke(*args)
    assert res.exit_code != 0, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, res.stderr
    assert lines[-1] == errors[0]
    for w in words:
        assert w in errors[0], f"{w!r} not in {errors[0]!r}"
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    dbg = _invoke("--debug", *args)
    assert dbg.exit_code != 0
    assert isinstance(dbg.exception, exc_type), repr(dbg.exception)
    assert dbg.exc_info is not None and dbg.exc_info[2] is not None  # the traceback
    return errors[0]


def test_fit_with_a_sample_table_that_does_not_exist(region, tmp_path):
    missing = tmp_path / "nope.csv"
    _assert_one_line_error(
        ["fit", "--samples", missing, "--embeddings", region.tiles, "--out", tmp_path / "m"],
        [str(missing), "not found"],
        FileNotFoundError,
    )


def test_predict_map_with_embeddings_that_do_not_exist(model_file, region, tmp_path):
    missing = tmp_path / "no_tiles"
    _assert_one_line_error(
        [
            "predict-map",
            "--embeddings",
            missing,
            "--model",
            model_file,
            "--bbox",
            *region.bbox,
            "--year",
            2020,
            "--out",
            tmp_path / "m.tif",
        ],
        ["--embeddings", str(missing), "does not exist"],
        FileNotFoundError,
    )


def test_predict_map_with_a_model_that_does_not_exist(region, tmp_path):
    missing = tmp_path / "none.model"
    _assert_one_line_error(
        [
            "predict-map",
            "--embeddings",
            region.tiles,
            "--model",
            missing,
            "--bbox",
            *region.bbox,
            "--year",
            2020,
            "--out",
            tmp_path / "m.tif",
        ],
        [str(missing), "does not exist"],
        FileNotFoundError,
    )


def test_trend_with_a_map_that_does_not_exist(region, tmp_path):
    missing = tmp_path / "richness_2020.tif"
    _assert_one_line_error(
        ["trend", "--maps", missing, "--polygons", region.polygons, "--out", tmp_path / "t.csv"],
        [str(missing), "does not exist"],
        FileNotFoundError,
    )


def test_trend_with_polygons_that_do_not_exist(yearly_maps, tmp_path):
    missing = tmp_path / "woods.gpkg"
    _assert_one_line_error(
        ["trend", *yearly_maps, "--polygons", missing, "--out", tmp_path / "t.csv"],
        ["--polygons", str(missing)],
        FileNotFoundError,
    )


def test_trend_with_polygons_that_are_not_a_vector_file(yearly_maps, tmp_path):
    junk = tmp_path / "woods.gpkg"
    junk.write_text("not a geopackage")
    _assert_one_line_error(
        ["trend", *yearly_maps, "--polygons", junk, "--out", tmp_path / "t.csv"],
        ["--polygons", str(junk), "not a vector file"],
        ValueError,
    )


def test_book_with_a_data_directory_that_does_not_exist(tmp_path):
    missing = tmp_path / "real"
    _assert_one_line_error(
        ["book", "--data", missing, "--no-html"],
        ["--data", str(missing), "does not exist"],
        FileNotFoundError,
    )


def test_fit_with_a_folder_without_embeddings(region, tmp_path):
    empty = tmp_path / "downloads"
    empty.mkdir()
    (empty / "readme.txt").write_text("nothing here")
    _assert_one_line_error(
        ["fit", "--samples", region.csv, "--embeddings", empty, "--out", tmp_path / "m"],
        [str(empty), "holds no embeddings", "global_0.1_degree_representation"],
        ValueError,
    )


def test_fit_with_a_geotessera_folder_without_tiles(region, tmp_path):
    root = tmp_path / "tess"
    (root / tessera.EMBEDDINGS_DIR_NAME / "2021").mkdir(parents=True)
    _assert_one_line_error(
        ["fit", "--samples", region.csv, "--embeddings", root, "--out", tmp_path / "m"],
        [str(root), "holds no tiles"],
        ValueError,
    )


def test_predict_map_with_a_folder_without_embeddings(model_file, region, tmp_path):
    _assert_one_line_error(
        [
            "predict-map",
            "--embeddings",
            tmp_path,
            "--model",
            model_file,
            "--bbox",
            *region.bbox,
            "--year",
            2020,
            "--out",
            tmp_path / "m.tif",
        ],
        [str(tmp_path), "geotessera download folder"],
        ValueError,
    )


def test_trend_with_a_zarr_folder_without_a_store(region, tmp_path):
    fake = tmp_path / "stack.zarr"
    fake.mkdir()
    _assert_one_line_error(
        ["trend", fake, "--polygons", region.polygons, "--out", tmp_path / "t.csv"],
        [str(fake)],
        FileNotFoundError,
    )


def test_predict_map_for_a_year_not_in_the_embeddings(model_file, region, tmp_path):
    _assert_one_line_error(
        [
            "predict-map",
            "--embeddings",
            region.tiles,
            "--model",
            model_file,
            "--bbox",
            *region.bbox,
            "--year",
            2019,
            "--out",
            tmp_path / "m.tif",
        ],
        ["2019", "years present: [2020, 2021, 2022, 2023]"],
        ValueError,
    )
    assert not (tmp_path / "m.tif").exists()


def test_fit_for_a_year_not_in_the_embeddings(region, tmp_path):
    _assert_one_line_error(
        [
            "fit",
            "--samples",
            region.csv,
            "--embeddings",
            region.tiles,
            "--out",
            tmp_path / "m",
            "--year",
            2016,
        ],
        ["year 2016 is not in the embeddings", "[2020, 2021, 2022, 2023]"],
        ValueError,
    )


def test_predict_map_with_a_bbox_whose_min_exceeds_its_max(model_file, region, tmp_path):
    w, s, e, n = region.bbox
    _assert_one_line_error(
        [
            "predict-map",
            "--embeddings",
            region.tiles,
            "--model",
            model_file,
            "--bbox",
            e,
            s,
            w,
            n,
            "--year",
            2020,
            "--out",
            tmp_path / "m.tif",
        ],
        ["bbox", "min ≥ max", "xmin"],
        ValueError,
    )


def test_predict_map_with_a_bbox_outside_the_tiles(model_file, region, tmp_path):
    _assert_one_line_error(
        [
            "predict-map",
            "--embeddings",
            region.tiles,
            "--model",
            model_file,
            "--bbox",
            10.0,
            45.0,
            10.01,
            45.01,
            "--year",
            2020,
            "--out",
            tmp_path / "m.tif",
        ],
        ["bbox", "outside every TESSERA tile"],
        ValueError,
    )


def _rewrite_meta(src: Path, dst: Path, edit) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.namelist():
            data = zin.read(item)
            if item == "meta.json":
                meta = json.loads(data)
                edit(meta)
                data = json.dumps(meta).encode()
            zout.writestr(item, data)
    return dst


def test_predict_map_with_a_model_from_another_version(model_file, region, tmp_path):
    old = _rewrite_meta(
        model_file, tmp_path / "old.model", lambda m: m["versions"].update(fungi_ssl="0.0.1")
    )
    args = [
        "predict-map",
        "--embeddings",
        region.tiles,
        "--model",
        old,
        "--bbox",
        *region.bbox,
        "--year",
        2020,
        "--out",
        tmp_path / "m.tif",
        "--no-progress",
    ]
    _assert_one_line_error(
        args, [str(old), "versions differ", "0.0.1", "--ignore-versions"], ValueError
    )
    # --ignore-versions loads it anyway
    res = _invoke(*args, "--ignore-versions")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "m.tif").exists()


def test_predict_map_with_a_model_of_another_file_format(model_file, region, tmp_path):
    other = _rewrite_meta(model_file, tmp_path / "v99.model", lambda m: m.update(format_version=99))
    _assert_one_line_error(
        [
            "predict-map",
            "--embeddings",
            region.tiles,
            "--model",
            other,
            "--bbox",
            *region.bbox,
            "--year",
            2020,
            "--out",
            tmp_path / "m.tif",
        ],
        [str(other), "file format version 99"],
        ValueError,
    )


def test_predict_map_with_a_file_that_is_not_a_model(region, tmp_path):
    bogus = tmp_path / "notes.model"
    bogus.write_text("not a model")
    _assert_one_line_error(
        [
            "predict-map",
            "--embeddings",
            region.tiles,
            "--model",
            bogus,
            "--bbox",
            *region.bbox,
            "--year",
            2020,
            "--out",
            tmp_path / "m.tif",
        ],
        [str(bogus), "not a map model"],
        ValueError,
    )


def test_predict_map_with_a_model_for_another_embedding_dimension(region, tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 3 * 3 * 16))
    wide = MapModel("ridge", n_components=4).fit(
        X, np.exp(X[:, 0]), encoder="tessera", embedding_dim=16
    )
    path = wide.save(tmp_path / "dim16.model")
    _assert_one_line_error(
        [
            "predict-map",
            "--embeddings",
            region.tiles,
            "--model",
            path,
            "--bbox",
            *region.bbox,
            "--year",
            2020,
            "--out",
            tmp_path / "m.tif",
        ],
        ["embedding_dim", "model 16", "8"],
        ValueError,
    )


def test_fit_with_a_missing_target_column(region, tmp_path):
    _assert_one_line_error(
        [
            "fit",
            "--samples",
            region.csv,
            "--embeddings",
            region.tiles,
            "--out",
            tmp_path / "m",
            "--target",
            "em_richness",
        ],
        [str(region.csv), "no target column 'em_richness'", "am_richness"],
        ValueError,
    )


def test_fit_with_a_target_column_that_is_not_numeric(region, tmp_path):
    table = region.samples.copy()
    table["am_richness"] = table["am_richness"].astype(object)
    table.loc[3, "am_richness"] = "many"
    csv = tmp_path / "am.csv"
    table.to_csv(csv, index=False)
    _assert_one_line_error(
        [
            "fit",
            "--samples",
            csv,
            "--embeddings",
            region.tiles,
            "--out",
            tmp_path / "m",
            "--target",
            "am_richness",
        ],
        ["target column 'am_richness' is not numeric", "sample 's003': 'many'"],
        ValueError,
    )


def test_fit_with_a_rarefied_column_that_is_not_numeric(region, tmp_path):
    table = region.samples.copy()
    table["rarefied"] = table["rarefied"].astype(object)
    table.loc[5, "rarefied"] = "n/a?"
    csv = tmp_path / "bad.csv"
    table.to_csv(csv, index=False)
    _assert_one_line_error(
        ["fit", "--samples", csv, "--embeddings", region.tiles, "--out", tmp_path / "m"],
        [str(csv), "'rarefied'", "is not a number", "line 7"],
        ValueError,
    )


def test_fit_with_samples_outside_the_embeddings(region, tmp_path):
    table = region.samples.copy()
    table["longitude"] += 2.0
    csv = tmp_path / "far.csv"
    table.to_csv(csv, index=False)
    _assert_one_line_error(
        [
            "fit",
            "--samples",
            csv,
            "--embeddings",
            region.tiles,
            "--out",
            tmp_path / "m",
            "--no-progress",
        ],
        ["only 0 of 150 samples", "complete 3×3 patch"],
        cli.CommandError,
    )


def test_fit_refuses_to_overwrite_a_model(region, model_file):
    _assert_one_line_error(
        ["fit", "--samples", region.csv, "--embeddings", region.tiles, "--out", model_file],
        [str(model_file), "exists", "--overwrite"],
        FileExistsError,
    )


def test_predict_map_refuses_to_overwrite_a_map(region, model_file, yearly_maps):
    _assert_one_line_error(
        [
            "predict-map",
            "--embeddings",
            region.tiles,
            "--model",
            model_file,
            "--bbox",
            *region.bbox,
            "--year",
            2020,
            "--out",
            yearly_maps[0],
        ],
        ["--out", str(yearly_maps[0]), "exists", "--overwrite"],
        FileExistsError,
    )


def test_trend_with_an_unknown_id_column(region, yearly_maps, tmp_path):
    _assert_one_line_error(
        ["trend", *yearly_maps, "--polygons", region.polygons, "--out", tmp_path / "t.csv"],
        ["no id column 'polygon_id'", "wood_id", "--id-column"],
        ValueError,
    )


def test_trend_with_woodland_types_other_than_ancient_or_other(region, yearly_maps, tmp_path):
    _assert_one_line_error(
        [
            "trend",
            *yearly_maps,
            "--polygons",
            region.polygons,
            "--id-column",
            "wood_id",
            "--type-column",
            "park",
            "--park-column",
            "none",
            "--out",
            tmp_path / "t.csv",
        ],
        ["column 'park' must hold ancient or other", "'P'"],
        ValueError,
    )


def test_trend_with_too_few_years(region, yearly_maps, tmp_path):
    _assert_one_line_error(
        [
            "trend",
            *yearly_maps[:3],
            "--polygons",
            region.polygons,
            "--id-column",
            "wood_id",
            "--out",
            tmp_path / "t.csv",
        ],
        ["3 year(s)", "at least 4"],
        ValueError,
    )


def test_book_with_an_unknown_profile():
    _assert_one_line_error(
        ["book", "--profile", "fast", "--no-html"], ["profile", "'fast'"], ValueError
    )


def test_debug_prints_the_traceback_from_the_installed_command(tmp_path):
    exe = Path(sys.executable).parent / "fungi-ssl"
    if not exe.exists():
        pytest.skip("the fungi-ssl entry point is not installed (pip install -e .)")
    missing = tmp_path / "real"
    args = ["book", "--data", str(missing), "--no-html"]
    plain = subprocess.run(
        [str(exe), *args], check=False, capture_output=True, text=True, timeout=120
    )
    assert plain.returncode == 1
    assert plain.stderr.strip().splitlines() == [f"error: --data {missing} does not exist"]
    assert "Traceback" not in plain.stderr + plain.stdout
    debug = subprocess.run(
        [str(exe), "--debug", *args], check=False, capture_output=True, text=True, timeout=120
    )
    assert debug.returncode != 0
    assert "Traceback (most recent call last)" in debug.stderr
    assert (
        debug.stderr.strip().splitlines()[-1]
        == f"FileNotFoundError: --data {missing} does not exist"
    )


# --------------------------------------------------------------------------
# download and book pass their options through
# --------------------------------------------------------------------------
def test_download_checks_sha256_and_keeps_nothing_on_a_mismatch(monkeypatch, tmp_path):
    from fungi_ssl.data import download as dl

    src = tmp_path / "table.csv"
    src.write_text("sample_id,rarefied\na,1\n")
    good = dl.RealTable("table.csv", src.as_uri(), dl.sha256_of(src), "t", "c")
    monkeypatch.setattr(dl, "REAL_TABLES", {"t": good})
    dest = tmp_path / "real"
    res = _invoke("download", "--dest", dest, "--no-progress")
    assert res.exit_code == 0, res.output
    assert (dest / "table.csv").read_text() == src.read_text()
    assert f"t: {dest / 'table.csv'}" in res.stdout
    bad = dl.RealTable("other.csv", src.as_uri(), "0" * 64, "t", "c")
    monkeypatch.setattr(dl, "REAL_TABLES", {"t": bad})
    err = _assert_one_line_error(
        ["download", "--dest", dest, "--no-progress"], ["sha256 mismatch", src.as_uri()], ValueError
    )
    assert "other.csv" in err
    assert not (dest / "other.csv").exists()


def test_download_into_a_file(tmp_path):
    f = tmp_path / "real"
    f.write_text("")
    _assert_one_line_error(["download", "--dest", f], [str(f), "not a directory"], OSError)


def test_book_passes_its_options_to_run_book(monkeypatch, tmp_path):
    from fungi_ssl.book import runner as bookrun

    calls = []

    def fake_run_book(**kwargs):
        calls.append(kwargs)
        return [bookrun.NotebookRun("01_field_data", 1.0, kwargs["profile"], kwargs["seed"])]

    monkeypatch.setattr(bookrun, "run_book", fake_run_book)
    res = _invoke(
        "book",
        "--profile",
        "quick",
        "--seed",
        7,
        "--data",
        tmp_path,
        "--only",
        "01",
        "--only",
        "04",
        "--no-html",
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    assert calls == [
        {
            "profile": "quick",
            "seed": 7,
            "data_dir": tmp_path,
            "only": ["01", "04"],
            "progress": False,
        }
    ]
    assert "01_field_data" in res.stdout


def test_book_names_the_failed_notebook_in_one_line(monkeypatch):
    from fungi_ssl.book import runner as bookrun

    def failing(**kwargs):
        raise bookrun.NotebookFailure(
            Path("notebooks/04_x.ipynb"),
            Path("book/04_x.ipynb"),
            3,
            5,
            "x = 1\ny = 1 / 0",
            "ZeroDivisionError",
            "division by zero",
        )

    monkeypatch.setattr(bookrun, "run_book", failing)
    _assert_one_line_error(
        ["book", "--no-html"],
        ["04_x.ipynb failed in cell 3", "ZeroDivisionError", "book/04_x.ipynb"],
        cli.CommandError,
    )


# --------------------------------------------------------------------------
# issue 16: --overwrite never deletes what this tool did not write; NaN warning
# --------------------------------------------------------------------------
def _predict_args(region, model_file, out, *years):
    return ["predict-map", "--embeddings", region.tiles, "--model", model_file, "--bbox",
            *region.bbox, *[a for y in (years or (2020,)) for a in ("--year", y)], "--out", out,
            "--blocksize", 128, "--no-progress", "--overwrite"]


def test_overwrite_refuses_a_plain_folder_and_keeps_the_users_file(region, model_file, tmp_path):
    """The data-loss case: `--out x.zarr --overwrite` where x.zarr is an ordinary folder
    holding a user's file used to delete both."""
    folder = tmp_path / "x.zarr"
    folder.mkdir()
    precious = folder / "my_notes.txt"
    precious.write_text("field notes, not a map")
    _assert_one_line_error(_predict_args(region, model_file, folder, 2020, 2021),
                           ["--out", str(folder), "not a map written by fungi-ssl",
                            "left as it is"], FileExistsError)
    assert precious.read_text() == "field notes, not a map"
    assert sorted(p.name for p in folder.iterdir()) == ["my_notes.txt"]
    # a folder named .tif is refused too; a Zarr store of another tool as well
    tif_dir = tmp_path / "y.tif"
    tif_dir.mkdir()
    (tif_dir / "keep.txt").write_text("keep")
    _assert_one_line_error(_predict_args(region, model_file, tif_dir), ["not a GeoTIFF file"],
                           FileExistsError)
    assert (tif_dir / "keep.txt").exists()
    import zarr

    other = tmp_path / "other.zarr"
    zarr.open_group(str(other), mode="w").attrs["made_by"] = "another tool"
    _assert_one_line_error(_predict_args(region, model_file, other, 2020, 2021),
                           ["not a map written by fungi-ssl"], FileExistsError)
    assert other.is_dir()


def test_overwrite_replaces_a_map_this_tool_wrote(region, model_file, tmp_path):
    store = tmp_path / "stack.zarr"
    for _ in range(2):  # written, then replaced
        res = _invoke(*_predict_args(region, model_file, store, 2020, 2021))
        assert res.exit_code == 0, res.output
    tif = tmp_path / "one.tif"
    for _ in range(2):
        res = _invoke(*_predict_args(region, model_file, tif))
        assert res.exit_code == 0, res.output


def test_a_map_partly_outside_the_tiles_warns(region, model_file, tmp_path):
    from fungi_ssl.maps.mapmodel import MapModel
    from fungi_ssl.maps.predict import predict_map

    w, s, e, n = region.bbox
    wider = (w, s, e + (e - w) * 2.0, n)  # two thirds of the box lie east of the tile's pixels
    with pytest.warns(UserWarning, match=r"map pixels \(\d+\.\d%\) have no prediction: .* lie "
                                         r"outside the embedding tiles"):
        run = predict_map(MapModel.load(model_file), region.tiles, 2020, wider, progress=False)
    assert run.n_nan > 0.01 * run.n_pixels
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # inside the tiles: no warning
        predict_map(MapModel.load(model_file), region.tiles, 2020, region.bbox, progress=False)
        # the book's margin-less windows ask for no warning, and get the same map
        quiet = predict_map(MapModel.load(model_file), region.tiles, 2020, wider, progress=False,
                            warn_nan=False)
    assert quiet.n_nan == run.n_nan
    np.testing.assert_array_equal(quiet.map.values, run.map.values)


def test_predict_map_suggests_swapping_longitude_and_latitude(region, model_file, tmp_path):
    w, s, e, n = region.bbox
    err = _assert_one_line_error(
        ["predict-map", "--embeddings", region.tiles, "--model", model_file, "--bbox", s, w, n, e,
         "--year", 2020, "--out", tmp_path / "m.tif", "--no-progress"],
        ["outside", "with longitude and latitude swapped", "longitude first"], ValueError)
    assert "np.float64" not in err and "open_embedding_source" not in err


def test_errors_name_options_not_python_arguments(region, model_file, tmp_path):
    err = _assert_one_line_error(
        ["predict-map", "--embeddings", region.tiles, "--model", model_file, "--bbox", 0.2, 52.0,
         0.1, 52.1, "--year", 2020, "--out", tmp_path / "m.tif", "--no-progress"],
        ["--bbox"], ValueError)
    assert "open_embedding_source" not in err and "np.float64" not in err


def test_fit_prints_its_skill_and_offers_every_family(region, tmp_path):
    out = tmp_path / "xgb.model"
    res = _invoke("fit", "--samples", region.csv, "--embeddings", region.tiles, "--out", out,
                  "--model", "xgboost", "--components", 8, "--no-progress")
    assert res.exit_code == 0, res.output
    assert "cross-validated R² of log1p(rarefied)" in res.stdout and "site groups" in res.stdout
    assert MapModel.load(out).model == "xgboost"
    from fungi_ssl.validation.models import MODEL_NAMES

    help_text = _invoke("fit", "--help").output
    for family in MODEL_NAMES:  # every family chapter 10 offers
        assert family in help_text
