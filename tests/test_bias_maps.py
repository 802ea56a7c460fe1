"""Tests of chapter 07's drivers: chapter 04's held-out predictions and the uncertainty maps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from affine import Affine

from fungi_ssl.embeddings.embed import open_embeddings, raster_patches
from fungi_ssl.maps.mapmodel import MapModel
from fungi_ssl.maps.predict import predict_map
from fungi_ssl.maps.sources import write_embedding_store
from fungi_ssl.uncertainty.aoa import AreaOfApplicability
from fungi_ssl.uncertainty.bias_maps import (
    interval_width,
    map_aoa,
    map_truth_table,
    uncertainty_maps,
    window_scores,
)
from fungi_ssl.uncertainty.heldout import chapter04_heldout
from fungi_ssl.uncertainty.intervals import conformal_quantile
from fungi_ssl.validation.comparison import table1
from fungi_ssl.validation.models import evaluate_random_splits, regression_metrics

DIM = 8
H, W = 48, 64
ORIGIN = Affine(10, 0, 500_000, 0, -10, 6_000_000)
CRS = 32630
ENCODER = "enc-test"


# --------------------------------------------------------------------------
# held-out predictions of chapter 04's protocols
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def table():
    """Sites of two cores on a 6° × 6° area; the target follows one climate covariate."""
    rng = np.random.default_rng(3)
    n_sites = 240
    lon = np.repeat(rng.uniform(0, 6, n_sites), 2)
    lat = np.repeat(rng.uniform(44, 50, n_sites), 2)
    pet = np.repeat(rng.normal(size=n_sites), 2)
    sand = np.repeat(rng.normal(size=n_sites), 2)
    t = pd.DataFrame({
        "sample_id": [f"s{i}" for i in range(2 * n_sites)],
        "site_id": np.repeat([f"site{i}" for i in range(n_sites)], 2),
        "longitude": lon, "latitude": lat, "CGIAR_PET": pet, "SG_Sand_Content_005cm": sand,
    })
    t["y"] = 3 + 0.8 * pet + rng.normal(0, 0.4, len(t))
    return t


def test_heldout_scores_equal_chapter04_table1(table):
    h = chapter04_heldout(table, "y", "climate", "lightgbm", n_seeds=2, seed=0)
    ref = table1(table, "y", sets=["climate", "soil"], models=["lightgbm"], n_seeds=2, seed=0,
                 progress=False)
    ref = ref[(ref["set"] == "climate")]
    for scheme, scope, key in (("random", "seed", "seed"), ("spatial", "fold", "fold")):
        mine = h.scores[h.scores["scheme"] == scheme]
        if scheme == "spatial":
            mine = mine[mine["scope"] == "fold"]
        theirs = ref[(ref["scheme"] == scheme) & (ref["scope"] == scope)]
        np.testing.assert_allclose(
            mine.sort_values(key)["r2"].to_numpy(), theirs.sort_values(key)["r2"].to_numpy(),
            rtol=0, atol=1e-12)
    # and the predictions kept are the ones those scores were computed from
    for s, g in h.table[h.table["scheme"] == "random"].groupby("split"):
        r2 = regression_metrics(g["y_true"], g["y_pred"])["r2"]
        assert r2 == pytest.approx(float(h.scores.query("scheme == 'random' and seed == @s")["r2"]
                                         .iloc[0]), abs=1e-12)


def test_heldout_rows_are_the_right_samples_and_protocols_stay_apart(table):
    h = chapter04_heldout(table, "y", "climate", "ridge", n_seeds=3, seed=5)
    t = h.table
    assert set(t["scheme"]) == {"random", "spatial"}
    by_id = table.set_index("sample_id")
    np.testing.assert_array_equal(t["y_true"].to_numpy(), by_id.loc[t["sample_id"], "y"].to_numpy())
    np.testing.assert_array_equal(t["site_id"].to_numpy(),
                                  by_id.loc[t["sample_id"], "site_id"].to_numpy())
    spatial = t[t["scheme"] == "spatial"]
    assert spatial["sample_id"].is_unique and len(spatial) == len(table)
    # spatial folds are the 50 km blocks: no site is split, and a fold label per data row
    assert spatial.groupby("site_id")["split"].nunique().max() == 1
    np.testing.assert_array_equal(h.fold[spatial["row"].to_numpy()], spatial["split"].to_numpy())
    rnd = t[t["scheme"] == "random"]
    assert sorted(rnd["split"].unique()) == [5, 6, 7]
    assert rnd.groupby("split").size().eq(round(0.2 * len(table))).all()


def test_heldout_bad_input(table):
    with pytest.raises(ValueError, match="model must be one of"):
        chapter04_heldout(table, "y", "climate", "svm")
    with pytest.raises(ValueError, match="longitude"):
        chapter04_heldout(table.drop(columns="longitude"), "y", "climate", "ridge")
    with pytest.raises(ValueError, match="n_seeds"):
        chapter04_heldout(table, "y", "climate", "ridge", n_seeds=0)


def test_random_split_predictions_name_rows_of_the_original_table():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 2))
    y = X[:, 0] + rng.normal(0, 0.1, 120)
    X[7, 1] = np.nan
    with pytest.warns(UserWarning, match="dropped 1"):
        res, pred = evaluate_random_splits(X, y, "ridge", n_seeds=2, nan_policy="drop",
                                           progress=False, return_predictions=True)
    assert 7 not in set(pred["row"])
    np.testing.assert_array_equal(y[pred["row"]], pred["observed"])
    for s, g in pred.groupby("seed"):
        assert regression_metrics(g["observed"], g["predicted"])["r2"] == pytest.approx(
            float(res.loc[res["seed"] == s, "r2"].iloc[0]), abs=1e-12)


# --------------------------------------------------------------------------
# interval width
# --------------------------------------------------------------------------
def test_interval_width_contains_what_the_log_interval_contains():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 5, 2000)
    y = p + rng.normal(0, 0.5, 2000)
    y = np.maximum(y, 0)  # log1p(richness) is never negative
    q = conformal_quantile(np.abs(y[:1000] - p[:1000]), 0.9)
    lo, hi = np.maximum(p - q, 0), p + q
    inside_log = (y >= lo) & (y <= hi)
    r, rlo, rhi = np.expm1(y), np.expm1(lo), np.expm1(hi)
    assert np.array_equal(inside_log, (r >= rlo - 1e-9) & (r <= rhi + 1e-9))
    np.testing.assert_allclose(interval_width(p, q), rhi - rlo)
    assert interval_width([np.nan], q).tolist() == [pytest.approx(np.nan, nan_ok=True)]
    with pytest.raises(ValueError, match="quantile"):
        interval_width(p, -1.0)


# --------------------------------------------------------------------------
# maps: a store whose right third lies far from anything the model was trained on
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def region(tmp_path_factory):
    rng = np.random.default_rng(2)
    latent = np.clip(rng.normal(size=(H, W)), -3, 3)
    q = rng.integers(-30, 31, size=(H, W, DIM))
    q[..., 0] = np.clip(np.round(latent * 30), -127, 127)
    # other land: the informative dimension beyond anything the samples show
    q[:, 2 * W // 3 :, 0] = np.round(latent[:, 2 * W // 3 :] * 10) + 118
    scale = np.full((H, W), 0.01, np.float32)
    scale[10:12, 5:7] = np.nan
    root = tmp_path_factory.mktemp("region")
    store = root / "2020.zarr"
    write_embedding_store(store, np.clip(q, -127, 127).astype(np.int8), scale, transform=ORIGIN,
                          crs=CRS, encoder=ENCODER, year=2020, chunk=16)
    ds = open_embeddings(store)
    # samples only in the left two thirds
    n = 600
    rows = rng.integers(2, H - 2, n)
    cols = rng.integers(2, 2 * W // 3 - 2, n)
    x, y = ds["x"].values[cols], ds["y"].values[rows]
    with pytest.warns(UserWarning, match="patch with NaN"):  # samples near the cloud
        patches = raster_patches(ds, x=x, y=y, k=3).values.reshape(n, -1)
    log_r = 3.0 + 0.8 * latent
    target = np.expm1(log_r[rows, cols] + rng.normal(0, 0.1, n))
    model = MapModel("lightgbm", n_components=6, n_jobs=1).fit(
        patches, target, encoder=ENCODER, embedding_dim=DIM)
    frame = pd.DataFrame(patches, columns=list(model.spec.predictor_columns))
    folds = (cols // 8) % 4  # stripes of 80 m: spatial folds (samples 10 m apart chain into
    # one 25 m "site", so BlockKFold would see a single site here)
    return store, model, frame, folds, log_r


def test_window_scores_equal_the_patch_projection_at_every_pixel(region):
    store, model, *_ = region
    ds = open_embeddings(store)
    emb = ds["embedding"].values[:12, :14]
    sc = ds["scale"].values[:12, :14]
    z = window_scores(model, emb, sc)
    patches = np.stack([(emb[i : i + 3, j : j + 3] * sc[i : i + 3, j : j + 3, None]).ravel()
                        for i in range(10) for j in range(12)])
    ref = model.project_patches(patches).reshape(10, 12, -1)
    ok = np.isfinite(ref).all(axis=2)
    assert (~ok).sum() > 0  # the cloud patch reaches in
    np.testing.assert_allclose(z[ok], ref[ok], atol=1e-4)
    assert np.isnan(z[~ok]).all(axis=1).all()


def test_map_aoa_flags_the_unseen_land_and_maps_agree_with_predict_map(region, tmp_path):
    store, model, frame, folds, _ = region
    aoa = map_aoa(model, frame, folds, n_jobs=1)
    run = uncertainty_maps(model, store, 2020, aoa=aoa, quantile=0.3, window=32, progress=False,
                           num_threads=1)
    m = run.maps
    ref = predict_map(model, store, 2020, quantity="log_richness", chunk=16, window=32,
                      progress=False)
    np.testing.assert_allclose(m["log_richness"].values, ref.map.values, rtol=0, atol=1e-6,
                               equal_nan=True)
    inside = m["aoa"].values
    seen, unseen = inside[:, 2 : 2 * W // 3 - 2], inside[:, 2 * W // 3 + 2 : -2]
    assert np.nanmean(seen) > 0.9
    assert np.nanmean(unseen) < 0.05
    assert np.isnan(inside[np.isnan(ref.map.values)]).all()
    # the dissimilarity index of a pixel is that of its patch
    di = m["dissimilarity"].values
    patch = frame.iloc[:5]
    z = pd.DataFrame(model.project_patches(patch), columns=list(aoa.feature_names_in_))
    assert np.isfinite(di).sum() > 0.8 * H * W
    assert np.all(aoa.dissimilarity(z) >= 0)
    # width on the richness scale: expm1(p + q) − expm1(max(p − q, 0))
    p = m["log_richness"].values
    np.testing.assert_allclose(m["interval_width"].values, interval_width(p, 0.3), rtol=1e-6,
                               equal_nan=True)
    assert run.quantile == 0.3 and run.threshold == aoa.threshold_
    assert set(run.seconds) == {"read", "project", "predict", "dissimilarity", "write"}


def test_uncertainty_layers_are_written_as_valid_cogs(region, tmp_path):
    from rio_cogeo.cogeo import cog_validate

    store, model, frame, folds, _ = region
    aoa = map_aoa(model, frame, folds, n_jobs=1)
    mem = uncertainty_maps(model, store, 2020, aoa=aoa, quantile=0.3, window=32, progress=False)
    outs = {k: tmp_path / f"{k}.tif" for k in ("interval_width", "aoa", "dissimilarity")}
    run = uncertainty_maps(model, store, 2020, aoa=aoa, quantile=0.3, outputs=outs, window=32,
                           progress=False)
    for k, path in outs.items():
        assert cog_validate(path)[0], k
        np.testing.assert_allclose(run.maps[k].values, mem.maps[k].values, equal_nan=True)
    assert run.maps["aoa"].rio.crs.to_epsg() == CRS
    assert float(run.maps["aoa"].attrs["aoa_threshold"]) == aoa.threshold_
    with pytest.raises(FileExistsError, match="overwrite"):
        uncertainty_maps(model, store, 2020, aoa=aoa, quantile=0.3, outputs=outs, progress=False)
    with pytest.raises(ValueError, match="unknown layers"):
        uncertainty_maps(model, store, 2020, aoa=aoa, quantile=0.3,
                         outputs={"width": tmp_path / "w.tif"}, progress=False)


def test_uncertainty_maps_bad_input(region):
    store, model, frame, folds, _ = region
    other = AreaOfApplicability(n_jobs=1).fit(pd.DataFrame({"a": np.arange(10.0)}))
    with pytest.raises(ValueError, match="trained on other predictors"):
        uncertainty_maps(model, store, 2020, aoa=other, quantile=0.3, progress=False)
    aoa = map_aoa(model, frame, folds, n_jobs=1)
    with pytest.raises(ValueError, match="quantile"):
        uncertainty_maps(model, store, 2020, aoa=aoa, quantile=np.inf, progress=False)
    with pytest.raises(ValueError, match="folds"):
        map_aoa(model, frame, folds[:-1])
    with pytest.raises(ValueError, match="weights"):
        map_aoa(model, frame, folds, weights="gain")


def test_map_truth_table_lines_up_pixels_and_refuses_another_grid():
    import xarray as xr

    g = {"y": [25.0, 15.0, 5.0], "x": [5.0, 15.0]}
    p = xr.DataArray([[1.0, 2.0], [np.nan, 3.0], [0.5, 0.5]], dims=("y", "x"), coords=g)
    t = xr.DataArray(np.expm1([[1.0, 2.5], [1.0, np.nan], [0.0, 1.0]]), dims=("y", "x"), coords=g)
    inside = xr.DataArray([[1.0, 0.0], [1.0, 1.0], [np.nan, 1.0]], dims=("y", "x"), coords=g)
    lc = xr.DataArray([[0, 1], [0, 1], [1, 0]], dims=("y", "x"), coords=g)
    tab = map_truth_table(p, t, inside=inside, landcover=lc, classes=["wood", "grass"], region="r")
    assert tab["y_pred"].tolist() == [1.0, 2.0, 0.5, 0.5]
    assert tab["inside"].tolist() == [True, False, False, True]
    assert tab["landcover"].tolist() == ["wood", "grass", "grass", "wood"]
    assert set(tab["region"]) == {"r"}
    shifted = t.assign_coords(x=[6.0, 16.0])
    with pytest.raises(ValueError, match="pixel centres"):
        map_truth_table(p, shifted)
    with pytest.raises(ValueError, match="codes outside"):
        map_truth_table(p, t, landcover=lc + 5, classes=["wood", "grass"])


def test_cached_heldout_reuses_predictions_only_for_the_same_rows_and_settings(table, tmp_path):
    from fungi_ssl.uncertainty.heldout import cached_heldout

    a = cached_heldout(table, "y", "climate", "ridge", n_seeds=2, root=tmp_path)
    assert a.seconds  # computed
    b = cached_heldout(table, "y", "climate", "ridge", n_seeds=2, root=tmp_path)
    assert not b.seconds  # read back
    pd.testing.assert_frame_equal(a.table.reset_index(drop=True), b.table, check_dtype=False)
    np.testing.assert_array_equal(a.fold, b.fold)
    assert len(list((tmp_path / "heldout").iterdir())) == 1
    c = cached_heldout(table, "y", "climate", "ridge", n_seeds=3, root=tmp_path)
    assert c.seconds and len(list((tmp_path / "heldout").iterdir())) == 2
    changed = table.assign(y=table["y"] + 1.0)
    d = cached_heldout(changed, "y", "climate", "ridge", n_seeds=2, root=tmp_path)
    assert d.seconds
    np.testing.assert_allclose(d.table["y_true"], a.table["y_true"] + 1.0)


def test_table1_predictions_stored_for_chapter07_equal_chapter04_heldout(table, tmp_path,
                                                                        monkeypatch):
    """Chapter 04's Table 1 stores the held-out predictions chapter 07 reads, without refitting."""
    from fungi_ssl.uncertainty import heldout
    from fungi_ssl.uncertainty.heldout import cached_heldout, store_table1_heldout

    res, pred = table1(table, "y", sets=["climate", "soil"], models=["lightgbm", "ridge"],
                       n_seeds=2, seed=1, progress=False, return_predictions=["climate"])
    plain = table1(table, "y", sets=["climate", "soil"], models=["lightgbm", "ridge"],
                   n_seeds=2, seed=1, progress=False)
    pd.testing.assert_frame_equal(res, plain)  # keeping predictions changes no score
    assert set(pred["set"]) == {"climate"}
    written = store_table1_heldout(table, "y", res, pred, predictor_set="climate", root=tmp_path)
    assert sorted(written) == ["lightgbm", "ridge"]
    for model in ("lightgbm", "ridge"):
        ref = chapter04_heldout(table, "y", "climate", model, n_seeds=2, seed=1)
        with monkeypatch.context() as mp:  # a cache hit fits nothing
            mp.setattr(heldout, "chapter04_heldout",
                       lambda *a, **k: (_ for _ in ()).throw(AssertionError("refitted")))
            got = cached_heldout(table, "y", "climate", model, n_seeds=2, seed=1, root=tmp_path)
        assert not got.seconds
        assert len(got.table) == len(ref.table) == 2 * round(0.2 * len(table)) + len(table)
        for c in ("sample_id", "site_id", "scheme", "split", "row"):
            np.testing.assert_array_equal(got.table[c].to_numpy(), ref.table[c].to_numpy())
        for c in ("y_true", "y_pred", "longitude", "latitude"):
            np.testing.assert_allclose(got.table[c], ref.table[c], rtol=0, atol=1e-12)
        assert list(got.scores.columns) == list(ref.scores.columns)
        for c in ("r2", "rmse", "me", "n_test"):
            np.testing.assert_allclose(got.scores[c].astype(float), ref.scores[c].astype(float),
                                       rtol=0, atol=1e-12)
        np.testing.assert_array_equal(got.fold, ref.fold)
    # other settings are another entry: computed, not read
    other = cached_heldout(table, "y", "climate", "ridge", n_seeds=3, seed=1, root=tmp_path)
    assert other.seconds
    # settings chapter 07 would not run are refused, not stored under its key
    with pytest.raises(ValueError, match="spatial folds"):
        store_table1_heldout(table, "y", res, pred, predictor_set="climate",
                             block_size_m=20_000, root=tmp_path)
    with pytest.raises(ValueError, match="no predictions kept"):
        store_table1_heldout(table, "y", res, pred, predictor_set="soil", root=tmp_path)
    # other model parameters (a profile's Table 1) are stored under their own key: read back
    # by asking for them, never served to a call that asks for the book's
    odd, odd_pred = table1(table, "y", sets=["climate", "soil"], models=["ridge"], n_seeds=2,
                           seed=1, progress=False, return_predictions=True,
                           model_params={"ridge": {"alphas": [1.0]}})
    odd_dir = store_table1_heldout(table, "y", odd, odd_pred, predictor_set="climate",
                                   root=tmp_path)["ridge"]
    assert odd_dir not in written.values()
    kw = {"n_seeds": 2, "seed": 1, "row_sets": ["climate", "soil"], "root": tmp_path}
    got = cached_heldout(table, "y", "climate", "ridge", model_params={"alphas": [1.0]}, **kw)
    assert not got.seconds and got.model_params == {"alphas": [1.0]}
    ref = chapter04_heldout(table, "y", "climate", "ridge", n_seeds=2, seed=1,
                            row_sets=["climate", "soil"], model_params={"alphas": [1.0]})
    np.testing.assert_allclose(got.table["y_pred"], ref.table["y_pred"], rtol=0, atol=1e-12)
    book = cached_heldout(table, "y", "climate", "ridge", **kw)  # the entry stored above
    assert book.model_params == {}
    assert not np.allclose(book.table["y_pred"], got.table["y_pred"])
    with pytest.raises(ValueError, match="return_predictions"):
        table1(table, "y", sets=["climate"], models=["ridge"], n_seeds=2, progress=False,
               return_predictions=["ssl"])


def test_cached_conformal_keeps_calibrations_and_schemes_apart(table, tmp_path):
    from fungi_ssl.uncertainty.heldout import cached_conformal, cached_heldout
    from fungi_ssl.uncertainty.intervals import coverage_table

    h = cached_heldout(table, "y", "climate", "ridge", n_seeds=2, root=tmp_path)
    iv = cached_conformal(h, "y", n_seeds=2, root=tmp_path, progress=False)
    got = iv.groupby(["requested", "scheme", "calibration"]).size().to_dict()
    assert set(got) == {("matched", "random", "random"), ("matched", "spatial", "block"),
                        ("random", "spatial", "random")}
    assert got[("matched", "spatial", "block")] == len(table)
    cov = coverage_table(iv)
    assert cov["coverage"].between(0.75, 1.0).all()
    again = cached_conformal(h, "y", n_seeds=2, root=tmp_path, progress=False)
    pd.testing.assert_frame_equal(iv, again, check_dtype=False)


def test_heldout_aoa_flags_samples_far_from_their_training_folds(table):
    from fungi_ssl.uncertainty.heldout import heldout_aoa
    from fungi_ssl.validation.comparison import spatial_splitter

    far = table.copy()
    # the blocks of one spatial fold have a climate no other fold shows
    sel = spatial_splitter(far).fold_labels() == 0
    far.loc[sel, "CGIAR_PET"] += 8.0
    h = chapter04_heldout(far, "y", "climate", "lightgbm", n_seeds=1)
    aoa, samples = heldout_aoa(h, "y")
    assert len(samples) == len(h.data) and np.isfinite(samples["di"]).all()
    shifted = h.data["CGIAR_PET"].to_numpy() > 5.0
    assert samples.loc[shifted, "di"].median() > 3 * samples.loc[~shifted, "di"].median()
    assert samples.loc[~shifted, "inside"].mean() > 0.9
    assert samples.loc[shifted, "inside"].mean() < 0.5
    assert list(aoa.feature_names_in_) == ["CGIAR_PET"]


def test_uncertainty_maps_computes_only_the_layers_asked_for():
    """Chapter 10's AOA asks for the index alone: same index, the regressor never run."""
    import xarray as xr

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 72)).astype(np.float32)
    m = MapModel("ridge", n_components=3).fit(X, np.expm1(3 + X[:, 32] / 2), encoder="demo",
                                              embedding_dim=8)
    aoa = map_aoa(m, pd.DataFrame(X, columns=[f"ssl_{i:04d}" for i in range(72)]),
                  np.arange(300) % 5, weights=None)
    ds = xr.Dataset(
        {"embedding": (("y", "x", "dim"), rng.integers(-127, 128, (20, 30, 8)).astype(np.int8)),
         "scale": (("y", "x"), np.full((20, 30), 0.01, np.float32))},
        coords={"y": 6e6 - 10 * np.arange(20) - 5, "x": 5e5 + 10 * np.arange(30) + 5},
        attrs={"encoder": "demo", "year": 2020}).rio.write_crs(32630)
    full = uncertainty_maps(m, ds, 2020, aoa=aoa, quantile=0.5, window=16, progress=False)
    di = uncertainty_maps(m, ds, 2020, aoa=aoa, quantile=0.0, window=16, progress=False,
                          layers=("dissimilarity",))
    assert list(di.maps.data_vars) == ["dissimilarity"]
    assert di.seconds["predict"] < 1e-3  # no regressor run
    np.testing.assert_array_equal(di.maps["dissimilarity"].values,
                                  full.maps["dissimilarity"].values)
    with pytest.raises(ValueError, match="not computed"):
        uncertainty_maps(m, ds, 2020, aoa=aoa, quantile=0.0, layers=("dissimilarity",),
                         outputs={"aoa": "x.tif"}, progress=False)
    with pytest.raises(ValueError, match="layers"):
        uncertainty_maps(m, ds, 2020, aoa=aoa, quantile=0.0, layers=("width",), progress=False)


def test_adaptive_interval_layers_follow_sigma(region):
    """With an AdaptiveConformal the half-width is q·σ̂(prediction, DI) at every pixel."""
    from fungi_ssl.uncertainty.bias_maps import adaptive_features
    from fungi_ssl.uncertainty.intervals import AdaptiveConformal

    store, model, frame, folds, _ = region
    aoa = map_aoa(model, frame, folds, n_jobs=1)
    rng = np.random.default_rng(0)
    complete = np.isfinite(model.project_patches(frame)).all(axis=1)  # the rows the AOA saw
    pred = model.predict_patches(frame, output="log_richness")[complete]
    di = aoa.train_di_
    e = rng.normal(0, 0.1 + di)                      # errors grow with the DI
    ac = AdaptiveConformal(0.9).fit(adaptive_features(pred, di), e, np.asarray(folds)[complete])
    run = uncertainty_maps(model, store, 2020, aoa=aoa, conformal=ac, window=32, progress=False)
    m = run.maps
    p, d = m["log_richness"].values, m["dissimilarity"].values
    half = ac.quantile_ * ac.sigma(adaptive_features(p.ravel(), d.ravel())).reshape(p.shape)
    np.testing.assert_allclose(m["upper"].values, p + half, rtol=1e-5, equal_nan=True)
    np.testing.assert_allclose(m["lower"].values, np.maximum(p - half, 0), rtol=1e-5, atol=1e-6,
                               equal_nan=True)
    np.testing.assert_allclose(m["interval_width"].values, interval_width(p, half), rtol=1e-5,
                               equal_nan=True)
    ok = np.isfinite(half)
    assert half[ok].std() > 0  # not one width everywhere
    with pytest.raises(ValueError, match="either quantile"):
        uncertainty_maps(model, store, 2020, aoa=aoa, quantile=0.3, conformal=ac, progress=False)


def test_validation_folds_are_chapter04s_spatial_folds_and_adapt_to_small_studies():
    from fungi_ssl.uncertainty.bias_maps import validation_folds
    from fungi_ssl.validation.comparison import spatial_splitter

    rng = np.random.default_rng(2)
    t = pd.DataFrame({"longitude": rng.uniform(0, 8, 400), "latitude": rng.uniform(44, 50, 400)})
    folds, how = validation_folds(t, 50, seed=3)
    assert np.array_equal(folds, spatial_splitter(t, 50_000, 5, seed=3).fold_labels())
    assert how == "50 km spatial blocks, 5 folds"
    small = pd.DataFrame({"longitude": rng.uniform(0, 0.2, 200),
                          "latitude": rng.uniform(50, 50.15, 200)})   # about 14 km across
    f2, how2 = validation_folds(small, 50)
    assert len(np.unique(f2)) == 5 and "too few 50 km blocks" in how2
    with pytest.raises(ValueError, match="longitude"):
        validation_folds(t.drop(columns="longitude"))


def test_draw_cores_follow_the_truth_curve():
    from fungi_ssl.simulate import SimulatedStudy
    from fungi_ssl.simulate.truth import rarefied_curve
    from fungi_ssl.uncertainty.bias_maps import draw_cores

    study = SimulatedStudy(n_samples=300, n_campaigns=8)
    lr = np.full(20_000, 4.0)
    cores = draw_cores(study, lr, seed=1)
    cv = rarefied_curve(study)
    mean = np.interp(4.0, cv["log_richness"], cv["log1p_mean"])
    sd = np.interp(4.0, cv["log_richness"], cv["sd_log1p"])
    assert abs(cores.mean() - mean) < 0.02 and abs(cores.std() - sd) < 0.02
    assert np.isnan(draw_cores(study, [np.nan])[0])
    assert not np.array_equal(draw_cores(study, lr[:10], seed=1), draw_cores(study, lr[:10], seed=2))


def test_cached_map_aoa_equals_map_aoa_and_keys_on_the_folds(region, tmp_path):
    from fungi_ssl.uncertainty.bias_maps import cached_map_aoa

    _, model, frame, folds, _ = region
    if not hasattr(model.regressor_, "feature_importances_"):
        pytest.skip("the fixture's model has no importances")
    ref = map_aoa(model, frame, folds, n_jobs=1)
    a = cached_map_aoa(model, frame, folds, n_jobs=1, root=tmp_path)
    b = cached_map_aoa(model, frame, folds, n_jobs=1, root=tmp_path)
    assert a.threshold_ == b.threshold_ == ref.threshold_
    np.testing.assert_array_equal(b.train_di_, ref.train_di_)
    assert len(list(tmp_path.glob("map_aoa/*/aoa.joblib"))) == 1
    other = (np.asarray(folds) + 1) % 5
    cached_map_aoa(model, frame, other, n_jobs=1, root=tmp_path)
    assert len(list(tmp_path.glob("map_aoa/*/aoa.joblib"))) == 2


def test_chapter07_text_never_types_the_block_size():
    """Chapter 07 run with another `block_km` must not say 50 km: its prose names the parameter
    and its code prints the value (issue 16 item 6)."""
    import json

    from fungi_ssl.core import config

    nb = json.loads((config.REPO_ROOT / "notebooks" / "07_bias.ipynb").read_text())
    for cell in nb["cells"]:
        text = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            assert "50 km" not in text and "50-km" not in text, text[:80]
        else:
            for line in text.splitlines():
                if "km" in line and ('"' in line or "'" in line) and "50" in line:
                    assert "block_km" in line or "#" in line, line
