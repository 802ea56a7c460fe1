"""Tests for fungi_ssl.data.io: sample tables, SPUN covariates, rasters, real data directory."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

from fungi_ssl.data.coordinates import crs_to_lonlat
from fungi_ssl.data.io import (
    derive_site_ids,
    find_real_tables,
    read_covariate_raster,
    read_samples,
    read_spun_covariates,
    sample_raster_at_points,
    validate_samples,
)
from fungi_ssl.data.sites import site_groups

HEADER = '"","sample_id","longitude","latitude","continent","raw_obs_div","rarefied"\n'
GOOD_ROWS = [
    '"1","A1",6.020833,52.04222,"Europe",3,5\n',
    '"2","A2",21.8025,40.99361,"Europe",NA,NA\n',
    '"3","A3",6.020833,52.04222,"Europe",1,1\n',
    '"4","A4",5.976667,52.0175,"Europe",1,1\n',
    '"5","A5",14.974722,46.25306,"Europe",4,6.571\n',
]


def write(tmp_path: Path, rows: list[str], header: str = HEADER, name="samples.csv") -> Path:
    path = tmp_path / name
    path.write_text(header + "".join(rows))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- read_samples: good input -------------------------------------------------


def test_read_samples_schema_and_na_drop(tmp_path, caplog):
    path = write(tmp_path, GOOD_ROWS)
    before = sha256(path)
    with caplog.at_level(logging.INFO, logger="fungi_ssl"):
        df = read_samples(path)
    assert sha256(path) == before  # the user's file is never modified
    assert list(df.columns) == [
        "sample_id",
        "longitude",
        "latitude",
        "raw_obs_div",
        "rarefied",
        "site_id",
        "continent",
    ]
    assert df["sample_id"].tolist() == ["A1", "A3", "A4", "A5"]
    assert pd.api.types.is_string_dtype(df["sample_id"])
    for col in ("longitude", "latitude", "raw_obs_div", "rarefied"):
        assert df[col].dtype == np.float64
    assert df["rarefied"].tolist() == [5.0, 1.0, 1.0, 6.571]
    assert df.attrs["n_dropped_na"] == 1
    assert "dropped 1 of 5" in caplog.text and str(path) in caplog.text
    assert isinstance(df.index, pd.RangeIndex)


def test_site_ids_shared_by_equal_coordinates(tmp_path):
    df = read_samples(write(tmp_path, GOOD_ROWS))
    sites = dict(zip(df["sample_id"], df["site_id"]))
    assert sites["A1"] == sites["A3"]
    assert len({sites["A1"], sites["A4"], sites["A5"]}) == 3


def test_derive_site_ids_link_samples_within_25_m():
    # 10 E 50 N: 1e-4 degree of longitude is 7.2 m, of latitude 11.1 m
    lon = [10.0, 10.0, 10.0003, 10.0, 10.0, 10.0]
    lat = [50.0, 50.0, 50.0, 50.0 + 2e-3, 50.0 + 2e-3 + 2.5e-4, 50.01]
    ids = derive_site_ids(lon, lat)
    # equal coordinates, then 21.6 m east: one site; 222 m north: another,
    # which 27.8 m further north does not join; 1.1 km north: a third
    assert ids.tolist() == [
        "site_00000",
        "site_00000",
        "site_00000",
        "site_00001",
        "site_00002",
        "site_00003",
    ]
    assert derive_site_ids([], []).tolist() == []
    with pytest.raises(ValueError, match="derive_site_ids: latitude is outside"):
        derive_site_ids([1.0], [91.0])


def io_and_cv_partitions(frame: pd.DataFrame) -> tuple[list, list]:
    """The sites of ``frame`` as io names them and as cv groups them, as sorted partitions."""

    def partition(labels) -> list:
        groups = pd.Series(np.arange(len(labels))).groupby(np.asarray(labels)).agg(tuple)
        return sorted(groups.tolist())

    cv_labels = site_groups(frame[["longitude", "latitude"]])
    return partition(frame["site_id"].to_numpy()), partition(cv_labels)


def test_io_site_ids_and_cv_site_groups_are_the_same_sites(tmp_path):
    rng = np.random.default_rng(0)
    # plots of several cores in Europe, East Asia and Australia, some cores a few metres
    # off the plot coordinate and some plots 15-40 m apart (chains across 25 m)
    plots = np.vstack(
        [
            np.column_stack(
                [rng.uniform(c[0], c[0] + 0.05, 40), rng.uniform(c[1], c[1] + 0.05, 40)]
            )
            for c in [(10.0, 50.0), (135.0, 35.0), (150.0, -33.0)]
        ]
    )
    near = plots[::4] + rng.uniform(-4e-4, 4e-4, size=plots[::4].shape)
    plots = np.vstack([plots, near])
    idx = rng.integers(0, len(plots), 400)
    lonlat = plots[idx] + rng.normal(0, 2e-5, (400, 2)) * (rng.random(400) < 0.3)[:, None]
    rows = [f"s{i},{lon!r},{lat!r},1,{1 + i % 7}\n" for i, (lon, lat) in enumerate(lonlat.tolist())]
    frame = read_samples(
        write(tmp_path, rows, "sample_id,longitude,latitude,raw_obs_div,rarefied\n")
    )
    io_sites, cv_sites = io_and_cv_partitions(frame)
    assert io_sites == cv_sites
    # the table is a real test: some sites join distinct coordinates, some do not
    n_coordinates = len(np.unique(lonlat, axis=0))
    assert len(cv_sites) < n_coordinates and len(cv_sites) > len(plots) / 2


def test_year_and_given_site_id_are_kept(tmp_path):
    header = "sample_id,longitude,latitude,raw_obs_div,rarefied,year,site_id\n"
    rows = ["a,1,2,3,4,2019,plotX\n", "b,1,2,3,4,,plotX\n", "c,5,6,7,8,2021,plotY\n"]
    df = read_samples(write(tmp_path, rows, header))
    assert str(df["year"].dtype) == "Int64"
    assert df["year"].isna().tolist() == [False, True, False]
    assert df["site_id"].tolist() == ["plotX", "plotX", "plotY"]
    assert df.attrs["n_dropped_na"] == 0


def test_validate_samples_leaves_input_untouched():
    frame = pd.DataFrame(
        {
            "sample_id": ["a", "b"],
            "longitude": [1.0, 1.0],
            "latitude": [2.0, 2.0],
            "raw_obs_div": [1, 2],
            "rarefied": [np.nan, 3.0],
        }
    )
    copy = frame.copy()
    out = validate_samples(frame)
    pd.testing.assert_frame_equal(frame, copy)
    assert out["sample_id"].tolist() == ["b"]


# --- read_samples: every bad input has a clear error --------------------------


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="no_such.csv"):
        read_samples("no_such.csv")


def test_missing_column_names_file_and_column(tmp_path):
    header = "sample_id,longitude,latitude,raw_obs_div\n"
    path = write(tmp_path, ["a,1,2,3\n"], header)
    with pytest.raises(ValueError) as err:
        read_samples(path)
    assert str(path) in str(err.value) and "'rarefied'" in str(err.value)


@pytest.mark.parametrize(
    "bad_row, column, problem, shown",
    [
        ('"6","B1",181.5,50,"Europe",1,1\n', "longitude", "outside -180..180", "181.5"),
        ('"6","B1",10,-95,"Europe",1,1\n', "latitude", "outside -90..90", "-95"),
        ('"6","B1",,50,"Europe",1,1\n', "longitude", "is missing", "nan"),
        ('"6","B1",10,50,"Europe",1,many\n', "rarefied", "is not a number", "'many'"),
        ('"6","B1",10,50,"Europe",1,-2\n', "rarefied", "is negative", "-2"),
        ('"6","B1",10,50,"Europe",-1,2\n', "raw_obs_div", "is negative", "-1"),
        ('"6","B1",10,50,"Europe",x1,2\n', "raw_obs_div", "is not a number", "'x1'"),
        ('"6","A3",10,50,"Europe",1,2\n', "sample_id", "duplicate", "'A3'"),
        ('"6",,10,50,"Europe",1,2\n', "sample_id", "is empty", "line 7"),
    ],
)
def test_bad_rows_are_reported_with_file_column_line_and_value(
    tmp_path, bad_row, column, problem, shown
):
    path = write(tmp_path, [*GOOD_ROWS, bad_row])
    before = sha256(path)
    with pytest.raises(ValueError) as err:
        read_samples(path)
    message = str(err.value)
    assert str(path) in message
    assert f"column '{column}'" in message
    assert problem in message
    assert "line 7" in message  # header is line 1, the bad row is the 6th data row
    assert shown in message
    assert sha256(path) == before


def test_many_bad_rows_show_the_first_few_and_the_count(tmp_path):
    rows = [f"s{i},{200 + i},50,1,1\n" for i in range(12)]
    path = write(tmp_path, rows, "sample_id,longitude,latitude,raw_obs_div,rarefied\n")
    with pytest.raises(ValueError) as err:
        read_samples(path)
    message = str(err.value)
    assert "in 12 of 12 row(s)" in message and "line 2: 200.0" in message and "..." in message
    assert "line 13" not in message


def test_fractional_year_is_rejected(tmp_path):
    header = "sample_id,longitude,latitude,raw_obs_div,rarefied,year\n"
    path = write(tmp_path, ["a,1,2,3,4,2019.5\n"], header)
    with pytest.raises(ValueError, match="column 'year'"):
        read_samples(path)


@pytest.mark.parametrize("content", ["", "sample_id,longitude,latitude,raw_obs_div,rarefied\n"])
def test_empty_table(tmp_path, content):
    path = tmp_path / "empty.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match="empty") as err:
        read_samples(path)
    assert str(path) in str(err.value)


def test_all_na_targets_is_an_error(tmp_path):
    path = write(tmp_path, [GOOD_ROWS[1]])
    with pytest.raises(ValueError, match="every row has an NA 'rarefied'"):
        read_samples(path)


# --- SPUN covariate table ----------------------------------------------------

SPUN_HEADER = (
    "sample_id,CGIAR_PET,CHELSA_BIO_Annual_Mean_Temperature,SG_Soil_pH_H2O_005cm,"
    "Resolve_Biome,ECM_diversity,Pixel_Lat,Pixel_Long,CV_Fold\n"
)


def spun_rows(values: list[float]) -> list[str]:
    return [
        f"S{i},{1000 + i}.0,{150 + i}.5,55.0,{4 + i % 2},{v},{35 + i * 0.01},{135 + i * 0.01},{i + 1}\n"
        for i, v in enumerate(values)
    ]


def test_read_spun_covariates_back_transforms_log1p(tmp_path):
    logs = [0.0, np.log(2.0), np.log1p(6.571), np.log1p(120.25)]
    path = write(tmp_path, spun_rows(logs), SPUN_HEADER, "spun.csv")
    before = sha256(path)
    samples, cov = read_spun_covariates(path)
    assert sha256(path) == before
    np.testing.assert_allclose(samples["rarefied"], [0.0, 1.0, 6.571, 120.25], rtol=1e-12)
    np.testing.assert_allclose(samples["log_richness"], logs)
    assert samples["longitude"].tolist()[0] == 135.0 and samples["latitude"].tolist()[0] == 35.0
    assert samples["raw_obs_div"].isna().all()
    assert samples["site_id"].nunique() == 4
    assert "CV_Fold" not in cov.columns
    assert list(cov.columns) == [
        "CGIAR_PET",
        "CHELSA_BIO_Annual_Mean_Temperature",
        "SG_Soil_pH_H2O_005cm",
        "Resolve_Biome",
    ]
    assert cov.index.name == "sample_id" and cov.index.tolist() == samples["sample_id"].tolist()
    assert isinstance(cov["Resolve_Biome"].dtype, pd.CategoricalDtype)
    assert cov["CGIAR_PET"].dtype == np.float64


def test_spun_na_target_dropped_from_both_tables(tmp_path):
    rows = spun_rows([1.0, 2.0, 3.0])
    rows[1] = rows[1].replace(",2.0,", ",NA,")
    samples, cov = read_spun_covariates(write(tmp_path, rows, SPUN_HEADER, "spun.csv"))
    assert samples["sample_id"].tolist() == ["S0", "S2"] == cov.index.tolist()
    assert samples.attrs["n_dropped_na"] == 1


@pytest.mark.parametrize(
    "edit, column, problem",
    [
        (lambda r: r.replace(",55.0,", ",acid,"), "SG_Soil_pH_H2O_005cm", "is not a number"),
        (lambda r: r.replace(",1.0,35", ",-0.5,35"), "ECM_diversity", "is negative"),
        (lambda r: r.replace(",135.01,", ",190.0,"), "Pixel_Long", "outside -180..180"),
    ],
)
def test_spun_bad_values(tmp_path, edit, column, problem):
    rows = spun_rows([0.5, 1.0, 2.0])
    rows[1] = edit(rows[1])
    path = write(tmp_path, rows, SPUN_HEADER, "spun.csv")
    with pytest.raises(ValueError) as err:
        read_spun_covariates(path)
    message = str(err.value)
    assert str(path) in message and f"column '{column}'" in message and problem in message
    assert "line 3" in message


def test_spun_missing_target_column(tmp_path):
    path = write(tmp_path, ["S1,1.0,35,135\n"], "sample_id,CGIAR_PET,Pixel_Lat,Pixel_Long\n")
    with pytest.raises(ValueError, match="'ECM_diversity'"):
        read_spun_covariates(path)


# --- rasters -----------------------------------------------------------------


def utm_raster(nodata_at=None, bands=1) -> xr.DataArray:
    """A 4 x 5 raster of 100 m pixels in UTM 32N; value = 10 * row + col."""
    x = 500_050.0 + 100.0 * np.arange(5)
    y = 5_600_350.0 - 100.0 * np.arange(4)
    data = (10.0 * np.arange(4)[:, None] + np.arange(5)[None, :]).astype("float32")
    if nodata_at is not None:
        data[nodata_at] = -9999.0
    arr = np.stack([data + 100 * b for b in range(bands)])
    da = xr.DataArray(
        arr, dims=("band", "y", "x"), coords={"band": np.arange(1, bands + 1), "y": y, "x": x}
    )
    da = da.rio.write_crs("EPSG:32632").rio.write_nodata(-9999.0)
    return da


def test_read_and_sample_a_tiny_geotiff(tmp_path, caplog):
    path = tmp_path / "ph.tif"
    utm_raster(nodata_at=(3, 4)).rio.to_raster(path)
    da = read_covariate_raster(path)
    assert da.dims == ("y", "x") and da.rio.crs.to_epsg() == 32632 and da.name == "ph"
    # points at pixel centres, nudged 30 m off centre (still inside the same pixel)
    rows = np.array([0, 1, 2, 3, 3])
    cols = np.array([0, 4, 2, 1, 4])
    lon, lat = crs_to_lonlat(500_050.0 + 100 * cols + 30, 5_600_350.0 - 100 * rows - 30, 32632)
    lon = np.append(lon, [9.5, np.nan])  # far away; missing
    lat = np.append(lat, [10.0, 50.5])
    with caplog.at_level(logging.WARNING, logger="fungi_ssl"):
        got = sample_raster_at_points(da, lon, lat)
    expected = 10.0 * rows + cols
    expected[-1] = np.nan  # the nodata pixel
    np.testing.assert_array_equal(got.values[:5], expected)
    assert np.isnan(got.values[5:]).all()
    assert got.inside.tolist() == [True] * 5 + [False, False]
    assert got.n_outside == 2
    assert "2 of 7 points fall outside" in caplog.text


def test_sample_multiband_raster_in_lonlat(tmp_path):
    da = utm_raster(bands=2).rio.reproject("EPSG:4326")
    path = tmp_path / "two.tif"
    da.rio.to_raster(path)
    back = read_covariate_raster(path)
    assert back.dims == ("band", "y", "x")
    lon0, lat0 = float(back.x[2]), float(back.y[1])
    got = sample_raster_at_points(back, [lon0], [lat0])
    assert got.values.shape == (1, 2)
    np.testing.assert_allclose(got.values[0], back.isel(x=2, y=1).values)
    assert got.values[0, 1] - got.values[0, 0] == pytest.approx(100.0)


def test_raster_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.tif"):
        read_covariate_raster(tmp_path / "missing.tif")
    no_crs = tmp_path / "no_crs.tif"
    xr.DataArray(
        np.ones((1, 2, 2), dtype="float32"),
        dims=("band", "y", "x"),
        coords={"band": [1], "y": [1.5, 0.5], "x": [0.5, 1.5]},
    ).rio.to_raster(no_crs)
    with pytest.raises(ValueError, match="no CRS") as err:
        read_covariate_raster(no_crs)
    assert str(no_crs) in str(err.value)
    not_raster = tmp_path / "table.tif"
    not_raster.write_text("sample_id,x\n")
    with pytest.raises(ValueError, match="could not be read as a raster"):
        read_covariate_raster(not_raster)
    with pytest.raises(ValueError, match="1-D arrays of one length"):
        sample_raster_at_points(utm_raster(), [1.0, 2.0], [1.0])


# --- real data directory ------------------------------------------------------


def test_find_real_tables(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        find_real_tables(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no usable table") as err:
        find_real_tables(tmp_path)
    assert "sample_id, longitude, latitude" in str(err.value)
    (tmp_path / "notes.csv").write_text("a,b\n1,2\n")
    with pytest.raises(FileNotFoundError, match=r"no usable table \(notes.csv\)"):
        find_real_tables(tmp_path)
    spun_header = "sample_id,CGIAR_PET,ECM_diversity,Pixel_Lat,Pixel_Long\n"
    (tmp_path / "spun_ecm_samples_1km_covariates.csv").write_text(spun_header)
    (tmp_path / "elevation.tif").write_bytes(b"")
    found = find_real_tables(tmp_path)
    assert found.samples is None
    assert found.spun_covariates == tmp_path / "spun_ecm_samples_1km_covariates.csv"
    assert found.covariate_rasters == (tmp_path / "elevation.tif",)
    # any file name: the columns make a sample table
    header = '"","sample_id","longitude","latitude","raw_obs_div","rarefied"\n'
    (tmp_path / "my field table.csv").write_text(header)
    assert find_real_tables(tmp_path).samples.name == "my field table.csv"
    (tmp_path / "second.csv").write_text(header)
    with pytest.raises(ValueError, match="2 sample tables.*SAMPLES="):
        find_real_tables(tmp_path)
    assert find_real_tables(tmp_path, samples="second.csv").samples.name == "second.csv"
    with pytest.raises(FileNotFoundError, match="SAMPLES=absent.csv: no such file"):
        find_real_tables(tmp_path, samples="absent.csv")
    with pytest.raises(ValueError, match="SAMPLES=notes.csv: notes.csv has no column"):
        find_real_tables(tmp_path, samples="notes.csv")
    # the download's name wins among several, as before
    (tmp_path / "globalfungi_ecm_richness_europe.csv").write_text(header)
    assert find_real_tables(tmp_path).samples.name == "globalfungi_ecm_richness_europe.csv"


def test_samples_env_names_the_table(tmp_path, monkeypatch):
    header = "sample_id,longitude,latitude,raw_obs_div,rarefied\n"
    for name in ("a.csv", "b.csv"):
        (tmp_path / name).write_text(header)
    monkeypatch.setenv("FUNGI_SSL_SAMPLES", "b.csv")
    assert find_real_tables(tmp_path).samples.name == "b.csv"


def test_check_data_directory_is_fast_and_one_line(tmp_path):
    import time

    from fungi_ssl.data.io import check_data_directory

    (tmp_path / "readme.txt").write_text("nothing here")
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as err:
        check_data_directory(tmp_path)
    assert time.perf_counter() - start < 5 and "\n" not in str(err.value)
    (tmp_path / "am table.csv").write_text(
        "sample_id,longitude,latitude,raw_obs_div,am_rarefied\nA1,6.02,52.04,3,5\n")
    with pytest.raises(ValueError, match="no target column 'rarefied'") as err:
        check_data_directory(tmp_path)
    assert "\n" not in str(err.value)
    assert check_data_directory(tmp_path, target="am_rarefied").samples.name == "am table.csv"


# Tests below read the real tables from --real-data DIR (or FUNGI_SSL_REAL_DATA) and
# skip when neither is given: the fixture real_data_dir is in conftest.py.


def test_real_globalfungi_table(real_data_dir):
    found = find_real_tables(real_data_dir)
    if found.samples is None:
        pytest.skip("GlobalFungi table absent")
    before = sha256(found.samples)
    df = read_samples(found.samples)
    assert sha256(found.samples) == before
    assert len(df) == 8321 and df.attrs["n_dropped_na"] == 811
    assert df["sample_id"].is_unique and df["rarefied"].notna().all()
    lonlat = df[["longitude", "latitude"]].to_numpy()
    assert len(np.unique(lonlat, axis=0)) == 3650  # DESIGN.md: 3,650 distinct coordinates
    # 25 m single linkage joins 354 of them into neighbours' sites
    assert df["site_id"].nunique() == 3296
    assert df["site_id"].value_counts().max() == 215  # DESIGN.md: up to 215 at one site
    assert df["longitude"].between(-180, 180).all() and df["latitude"].between(-90, 90).all()
    assert df["rarefied"].median() == pytest.approx(40.2, abs=0.5)  # DESIGN.md: median 40


def test_real_tables_io_sites_equal_cv_sites_and_link_fast(real_data_dir):
    import time

    found = find_real_tables(real_data_dir)
    if found.samples is None:
        pytest.skip("GlobalFungi table absent")
    df = read_samples(found.samples)
    start = time.perf_counter()
    io_sites, cv_sites = io_and_cv_partitions(df)
    elapsed = time.perf_counter() - start
    assert io_sites == cv_sites
    assert elapsed < 5.0, f"linking {len(df)} samples took {elapsed:.1f} s"


def test_real_spun_table(real_data_dir):
    found = find_real_tables(real_data_dir)
    if found.spun_covariates is None:
        pytest.skip("SPUN covariate table absent")
    samples, cov = read_spun_covariates(found.spun_covariates)
    assert len(samples) == len(cov) == 9061
    assert cov.shape[1] == 32 and "CV_Fold" not in cov.columns
    assert (cov.drop(columns="Resolve_Biome").dtypes == np.float64).all()
    np.testing.assert_allclose(np.log1p(samples["rarefied"]), samples["log_richness"], atol=1e-12)
    assert samples["rarefied"].min() == 0.0
