"""SSL patches of real samples at the plot coordinate and the embedding year (fungi_ssl.predictors.tables).

A real data directory is made of a SPUN-style covariate table (1 km pixel
centres), a GlobalFungi-style sample table (plot coordinates) for some of the
same sample ids, and TESSERA tiles whose every pixel holds a value that says
where it is. The patches must come from the plot coordinates, never from the
pixel centres, and samples without a plot coordinate must be left out and
counted.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from affine import Affine

from fungi_ssl.data.coordinates import crs_to_lonlat
from fungi_ssl.embeddings import tessera_write
from fungi_ssl.predictors.tables import (
    FIRST_EMBEDDING_YEAR,
    embedding_years,
    plot_coordinates,
    predictor_table,
)

LON, LAT, EPSG = 0.15, 52.05, 32631
H = W = 60
DIM = 8


def test_the_year_rule():
    e = embedding_years([2010, 2016, 2018, 2019, 2030], [2017, 2018, 2020])
    assert e.years.tolist() == [2017, 2017, 2018, 2018, 2020]
    assert (e.n_before, e.n_gap, e.n_after) == (2, 1, 1)
    assert FIRST_EMBEDDING_YEAR == 2017
    # one rule everywhere: a sample without a year is read from the first year held, and said
    e = embedding_years([None, 2018, None], [2017, 2018])
    assert e.years.tolist() == [2017, 2018, 2017] and e.n_no_year == 2
    assert "2 without a sampling year took 2017" in e.describe()
    assert embedding_years([None], [2017, 2018], year=2018).years.tolist() == [2018]
    with pytest.raises(ValueError, match=r"year 2016 is not in the tiles \(years held"):
        embedding_years([2018], [2017, 2018], year=2016, source="tiles")


def test_plot_coordinates_join_and_leave_out():
    spun = pd.DataFrame({"sample_id": ["a", "b", "c"], "longitude": [5.0, 6.0, 7.0],
                         "latitude": [50.0, 51.0, 52.0]})
    gf = pd.DataFrame({"sample_id": ["c", "a", "a"], "longitude": [7.01, 5.002, 5.002],
                       "latitude": [52.01, 50.003, 50.003], "year": [2019, 2015, 2015]})
    pc = plot_coordinates(spun, gf, pixel_centres=True)
    np.testing.assert_array_equal(pc.longitude[[0, 2]], [5.002, 7.01])
    assert np.isnan(pc.longitude[1]) and pc.source.tolist() == ["joined", "none", "joined"]
    assert (pc.n_joined, pc.n_missing) == (2, 1)
    assert pc.year[0] == 2015 and np.isnan(pc.year[1])
    assert "1 have none" in pc.describe()
    # a table of plot coordinates is used as it is
    own = plot_coordinates(gf.drop_duplicates("sample_id"))
    assert own.n_plot == 2 and own.describe() == "all 2 samples have a plot coordinate"
    # without a table to join, a pixel-centre table gives no coordinate at all
    assert plot_coordinates(spun, None, pixel_centres=True).n_missing == 3


@pytest.fixture
def real_dir(tmp_path):
    grid = tessera_write.tile_grid(LON, LAT)
    x0, y0 = grid.transform.c + 1000.0, grid.transform.f - 1000.0
    rows, cols = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    emb = np.zeros((H, W, DIM), np.int8)
    emb[..., 0], emb[..., 1] = rows, cols  # each pixel says where it is
    for year in (2018, 2019):
        e = emb.copy()
        e[..., 2] = year - 2000
        tessera_write.write_tile(tmp_path / "tessera", year, LON, LAT, e, np.ones((H, W), np.float32),
                           transform=Affine(10, 0, x0, 0, -10, y0), overwrite=True)
    # three samples: plot coordinates at pixels (10, 12), (30, 40); the third has no plot
    plot_rc = [(10, 12), (30, 40)]
    lon, lat = crs_to_lonlat([x0 + 10 * c + 5 for _, c in plot_rc],
                             [y0 - 10 * r - 5 for r, _ in plot_rc], EPSG)
    # the SPUN pixel centres lie elsewhere in the tile (pixel (50, 50))
    plon, plat = crs_to_lonlat([x0 + 505.0] * 3, [y0 - 505.0] * 3, EPSG)
    pd.DataFrame({"sample_id": ["s1", "s2", "s3"], "CGIAR_PET": [1.0, 2.0, 3.0],
                  "ECM_diversity": [1.0, 2.0, 3.0], "Pixel_Lat": plat, "Pixel_Long": plon,
                  "CV_Fold": [1, 2, 3]}).to_csv(
        tmp_path / "spun_ecm_samples_1km_covariates.csv", index=False)
    pd.DataFrame({"sample_id": ["s1", "s2"], "longitude": lon, "latitude": lat,
                  "raw_obs_div": [2, 6], "rarefied": [1.7, 6.4]}).to_csv(
        tmp_path / "globalfungi_ecm_richness_europe.csv", index=False)
    return tmp_path, plot_rc


def test_predictor_table_reads_patches_at_plot_coordinates(real_dir):
    data_dir, plot_rc = real_dir
    t = predictor_table(data_dir, progress=False)
    assert t.has_ssl
    f = t.frame.set_index("sample_id")
    patch = f[t.ssl_columns].to_numpy().reshape(3, 3, 3, DIM)
    for i, (r, c) in enumerate(plot_rc):  # the centre pixel is the plot's, not the pixel centre's
        assert patch[i, 1, 1, 0] == r and patch[i, 1, 1, 1] == c
        # no year in either table: read from the first year held (2018), as old samples are
        assert patch[i, 1, 1, 2] == 18
    assert np.isnan(patch[2]).all()  # no plot coordinate: no patch
    notes = t.frame.attrs["ssl_notes"]
    assert notes["n_joined"] == 2 and notes["n_no_coordinate"] == 1
    assert notes["n_complete_patch"] == 2
    assert "2 of 3 samples were given their GlobalFungi plot coordinate" in notes["coordinates"]
    assert "2 without a sampling year took 2018" in notes["years"]


def test_the_chapters_sentence_on_ssl_patches(real_dir):
    data_dir, _ = real_dir
    note = predictor_table(data_dir, progress=False).ssl_note
    assert note.startswith("SSL patches: 2 of 3 samples were given their GlobalFungi plot")
    assert "2 of 3 samples have a complete patch" in note
    assert predictor_table(None, with_ssl=False, progress=False).ssl_note == ""


@pytest.mark.parametrize("store", ["tiles", "zarr"])
def test_the_command_line_and_the_chapters_read_equal_patches(tmp_path, store):
    """One sample table, one embeddings folder: ``fungi-ssl fit`` (and chapter 10, which
    calls the same function) and chapters 03-05 (``predictor_table``) read the same patches,
    whether the folder holds geotessera tiles or Zarr stores, with samples of several years,
    from before the first year, and without a year."""
    from typer.testing import CliRunner

    from fungi_ssl import cli
    from fungi_ssl.data import download  # noqa: F401  (pooch's logger: see test_cli)
    from fungi_ssl.data.io import read_samples
    from fungi_ssl.maps.mapmodel import MapModel
    from fungi_ssl.maps.modelspec import table_fingerprint
    from fungi_ssl.maps.sources import write_embedding_store
    from fungi_ssl.predictors.tables import embedding_patches

    grid = tessera_write.tile_grid(LON, LAT)
    x0, y0 = grid.transform.c + 1000.0, grid.transform.f - 1000.0
    rng = np.random.default_rng(1)
    folder = tmp_path / "tessera"
    for year in (2018, 2019, 2021):
        emb = rng.integers(-100, 100, (H, W, DIM)).astype(np.int8)
        emb[..., 2] = year - 2000  # each year says which it is
        scale = rng.uniform(0.01, 0.02, (H, W)).astype(np.float32)
        if store == "tiles":
            tessera_write.write_tile(folder, year, LON, LAT, emb, scale,
                               transform=Affine(10, 0, x0, 0, -10, y0), overwrite=True)
        else:
            folder.mkdir(exist_ok=True)
            write_embedding_store(folder / f"{year}.zarr", emb, scale,
                                  transform=Affine(10, 0, x0, 0, -10, y0), crs=EPSG,
                                  encoder="enc-test", year=year)
    n = 40
    r, c = rng.integers(2, H - 2, n), rng.integers(2, W - 2, n)
    lon, lat = crs_to_lonlat(x0 + 10 * c + 5, y0 - 10 * r - 5, EPSG)
    years = pd.array(rng.choice([2012, 2018, 2019, 2020, 2021, -1], n), dtype="Int64")
    years[years == -1] = pd.NA
    richness = rng.uniform(1, 80, n).round(2)
    csv = tmp_path / "samples.csv"
    pd.DataFrame({"sample_id": [f"s{i:02d}" for i in range(n)], "longitude": lon,
                  "latitude": lat, "raw_obs_div": richness.round(), "rarefied": richness,
                  "year": years}).to_csv(csv, index=False)

    # chapters 03-05: the predictor table of a data directory with a sample table and tiles
    table = predictor_table(tmp_path, progress=False)
    f = table.frame.set_index("sample_id")
    chapters = f[table.ssl_columns].to_numpy()
    assert np.isfinite(chapters).all()
    # the command line's reader on the same table
    samples = read_samples(csv)
    patches, _, which = embedding_patches(samples, folder, progress=False)
    own = patches.reshape(n, -1)
    order = samples["sample_id"].map({s: i for i, s in enumerate(f.index)}).to_numpy()
    np.testing.assert_array_equal(own, chapters[order])
    # the year rule took effect: 2012 and no year -> 2018; 2020 (a gap) -> 2019 (earlier)
    y = years.to_numpy(dtype=float, na_value=np.nan)
    want = np.select([np.isnan(y) | (y == 2012), y == 2020], [2018, 2019], y).astype(int)
    np.testing.assert_array_equal(which.years, want)
    # and `fungi-ssl fit` trained on exactly those patches: its fingerprint is theirs
    out = tmp_path / "m.model"
    res = CliRunner().invoke(cli.app, ["fit", "--samples", str(csv), "--embeddings", str(folder),
                                       "--out", str(out), "--model", "ridge", "--components",
                                       "4", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert f"{int(np.isnan(y).sum())} without a sampling year took 2018" in res.stderr
    m = MapModel.load(out)
    expect = table_fingerprint(chapters[order], np.log1p(richness), tuple(table.ssl_columns))
    assert m.fingerprint == expect
