"""1 km covariate stacks (fungi_ssl/data/covariate_stack.py) and the product map model that reads them.

* :class:`~fungi_ssl.maps.mapmodel.MapModel` fitted with covariates is chapter 06's
  :class:`~fungi_ssl.maps.resolution.ProductModel`: the same rows give the same
  predictions, to the last bit.
* It survives a save and load, maps window by window as it predicts patch by
  patch, and refuses to predict without its covariates.
* A stack reads back what was written (GeoTIFF and Zarr), in another CRS too.
* The simulated region's stack gives every sample in it exactly the
  covariates of the study's table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fungi_ssl.data.covariate_stack import (
    cells_to_stack,
    open_covariate_stack,
    write_covariate_stack,
)
from fungi_ssl.maps import resolution
from fungi_ssl.maps.mapmodel import MapModel

DIM = 8
COVS = ["CHELSA_BIO_Annual_Mean_Temperature", "SG_Soil_pH_H2O_005cm"]


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 400
    X = rng.normal(size=(n, 9 * DIM)).astype(np.float32)
    f = pd.DataFrame(X, columns=[f"ssl_{i:04d}" for i in range(9 * DIM)])
    f[COVS[0]] = rng.normal(80, 20, n)
    f[COVS[1]] = rng.normal(55, 5, n)
    f["log_richness"] = 2 + 0.3 * X[:, 4 * DIM] + 0.02 * (f[COVS[0]] - 80) + rng.normal(0, 0.2, n)
    f["site_id"] = [f"s{i // 2}" for i in range(n)]
    return f


@pytest.fixture(scope="module")
def product(frame) -> MapModel:
    # one thread: two LightGBM threads on a busy machine spin-wait (resolution.fit_1km_model)
    return MapModel("lightgbm", n_components=8, seed=0, n_jobs=1).fit(
        frame, encoder="e", embedding_dim=DIM, covariates=COVS)


def test_the_product_map_model_is_chapter_06s_product_model(frame, product):
    m10 = MapModel("lightgbm", n_components=8, seed=0, n_jobs=1).fit(frame, encoder="e",
                                                                     embedding_dim=DIM)
    ch06 = resolution.fit_product_model(frame, m10, "lightgbm", seed=0,
                                        predictor_set="climate+soil")
    assert ch06.covariate_columns == COVS
    assert product.settings["early_stopped_trees"] == ch06.n_trees
    np.testing.assert_array_equal(product.predict_patches(frame, output="log_richness"),
                                  ch06.predict_frame(frame))
    # and the covariates matter: without them the same patches predict worse
    y = frame["log_richness"].to_numpy()
    err_p = np.mean((product.predict_patches(frame, output="log_richness") - y) ** 2)
    err_s = np.mean((m10.predict_patches(frame, output="log_richness") - y) ** 2)
    assert err_p < 0.8 * err_s


def test_a_product_model_saves_loads_and_refuses_to_predict_without_covariates(
        frame, product, tmp_path):
    path = product.save(tmp_path / "p.model")
    meta = MapModel.read_metadata(path)
    assert meta["format_version"] == 2 and meta["spec"]["covariate_columns"] == COVS
    back = MapModel.load(path)
    assert back.covariate_columns == tuple(COVS)
    np.testing.assert_array_equal(back.predict_patches(frame), product.predict_patches(frame))
    patches = frame.filter(like="ssl_").to_numpy()
    with pytest.raises(ValueError, match="fitted with the 1 km covariates"):
        back.predict_patches(patches)
    with pytest.raises(ValueError, match="lacks"):
        back.predict_patches(patches, covariates=frame[[COVS[0]]])
    ssl_only = MapModel("ridge", n_components=4).fit(frame, encoder="e", embedding_dim=DIM)
    assert MapModel.read_metadata(ssl_only.save(tmp_path / "s.model"))["format_version"] == 1


def test_a_window_maps_as_its_patches_predict(product):
    rng = np.random.default_rng(3)
    emb = rng.integers(-127, 128, size=(9, 11, DIM)).astype(np.int8)
    sc = np.full((9, 11), 0.01, np.float32)
    cov = np.stack([rng.normal(80, 20, (7, 9)), rng.normal(55, 5, (7, 9))], axis=-1)
    cov[2, 3, 0] = np.nan
    got = product.predict_window(emb, sc, covariates=cov, output="log_richness")
    e = emb.astype(np.float32) * 0.01
    win = np.lib.stride_tricks.sliding_window_view(e, (3, 3), axis=(0, 1))
    patches = win.transpose(0, 1, 3, 4, 2).reshape(63, -1)
    want = product.predict_patches(patches, covariates=cov.reshape(63, 2),
                                   output="log_richness").reshape(7, 9)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.isnan(got[2, 3]) and np.isfinite(np.delete(got.ravel(), 2 * 9 + 3)).all()
    with pytest.raises(ValueError, match="give them for every pixel"):
        product.predict_window(emb, sc)


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_a_stack_reads_back_by_name_in_its_own_and_another_crs(suffix, tmp_path):
    from fungi_ssl.data.coordinates import crs_to_lonlat

    cells = pd.DataFrame({"x": [500_500.0, 501_500.0, 500_500.0, 501_500.0],
                          "y": [5_799_500.0, 5_799_500.0, 5_798_500.0, 5_798_500.0],
                          COVS[1]: [50.0, 60.0, 70.0, np.nan], COVS[0]: [1.0, 2.0, 3.0, 4.0]})
    stack = open_covariate_stack(write_covariate_stack(cells_to_stack(cells, 32631),
                                                       tmp_path / f"c{suffix}"))
    assert sorted(stack.names) == sorted(COVS)
    assert stack.bounds == (500_000.0, 5_798_000.0, 502_000.0, 5_800_000.0)
    x = np.array([500_010.0, 501_990.0, 500_999.0, 501_001.0, 499_990.0])
    y = np.array([5_799_990.0, 5_799_010.0, 5_798_001.0, 5_798_001.0, 5_799_500.0])
    got = stack.at_points(x, y, 32631, columns=[COVS[1]])[COVS[1]].to_numpy()
    np.testing.assert_array_equal(got, [50.0, 60.0, 70.0, np.nan, np.nan])
    lon, lat = crs_to_lonlat(x, y, 32631)
    np.testing.assert_allclose(stack.at_lonlat(lon, lat, [COVS[1]])[COVS[1]], got)
    with pytest.raises(ValueError, match="lacks the band"):
        stack.require(["SG_Sand_Content_005cm"])
    with pytest.raises(ValueError, match="does not cover"):
        stack.check_covers((499_000.0, 5_798_500.0, 501_000.0, 5_799_000.0), 32631)


def test_the_simulated_regions_stack_gives_the_samples_their_table_covariates(tmp_path):
    from fungi_ssl.region import workflow as region
    from fungi_ssl.simulate import SimulatedStudy
    from fungi_ssl.simulate.sensors import covariates_1km

    study = SimulatedStudy()
    bbox = region.default_bbox(study)
    out = region.write_simulated_covariates(study, bbox, tmp_path / "region.tif")
    stack = open_covariate_stack(out.path)
    assert stack.names == out.columns and stack.crs.to_epsg() == out.epsg
    s = study.samples
    v = stack.at_lonlat(s["longitude"].to_numpy(), s["latitude"].to_numpy())
    inside = np.isfinite(v.to_numpy()).all(axis=1)
    assert inside.sum() >= 10
    sub = s.loc[inside]
    sites = study.sites[study.sites["site_id"].isin(sub["site_id"])]
    table = covariates_1km(study.landscape, sites, sub, study.config.sensors)
    np.testing.assert_array_equal(v.loc[inside].to_numpy(),
                                  table.loc[sub["sample_id"], out.columns].to_numpy())


def test_overwrite_replaces_only_a_stack_this_package_wrote(tmp_path):
    """Issue 16: a user's folder or file at the stack's path is refused and kept, whole."""
    cells = pd.DataFrame({"x": [500.0, 1500.0], "y": [-500.0, -500.0],
                          COVS[0]: [80.0, 81.0], COVS[1]: [55.0, 56.0]})
    stack = cells_to_stack(cells, 32630)
    own = write_covariate_stack(stack, tmp_path / "own.zarr")
    write_covariate_stack(stack, own, overwrite=True)  # ours: replaced
    assert sorted(open_covariate_stack(own).names) == sorted(COVS)
    user = tmp_path / "user.zarr"
    user.mkdir()
    (user / "notes.txt").write_text("field notes")
    with pytest.raises(FileExistsError, match="not a stack written by fungi-ssl"):
        write_covariate_stack(stack, user, overwrite=True)
    assert (user / "notes.txt").read_text() == "field notes"
    folder = tmp_path / "folder.tif"
    folder.mkdir()
    (folder / "keep.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not a GeoTIFF file"):
        write_covariate_stack(stack, folder, overwrite=True)
    assert (folder / "keep.txt").read_text() == "keep"
