"""Tests of fungi_ssl.maps.mapmodel: the savable map model (patch → PCA → regressor → richness)."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pandas as pd
import pytest
from sklearn.pipeline import make_pipeline

from fungi_ssl.maps import mapmodel, modelspec
from fungi_ssl.maps.flattrees import FlatTrees
from fungi_ssl.maps.mapmodel import MapModel
from fungi_ssl.maps.modelspec import FeatureSpec, encoder_signature, package_versions
from fungi_ssl.predictors.features import PatchReducer
from fungi_ssl.predictors.tables import TARGET
from fungi_ssl.validation.comparison import BOOK_MODEL_PARAMS
from fungi_ssl.validation.models import make_model

DIM = 16  # small embeddings keep the tests fast; the code is the same for 128


def dequantised_patches(emb: np.ndarray, scale: np.ndarray, k: int = 3) -> np.ndarray:
    """(n, k*k*dim) patches in (row, col, dim) order of every interior pixel, as training sees them."""
    values = emb.astype(np.float32) * np.where(np.isfinite(scale), scale, np.nan)[..., None]
    win = np.lib.stride_tricks.sliding_window_view(values, (k, k), axis=(0, 1))
    # win: (H-k+1, W-k+1, dim, k, k) -> (n, k, k, dim)
    return np.ascontiguousarray(win.transpose(0, 1, 3, 4, 2)).reshape(-1, k * k * values.shape[2])


def synthetic(n: int = 600, dim: int = DIM, k: int = 3, seed: int = 0):
    """Patches with a known signal: a latent factor drives dimension 0 of every pixel and
    log richness = 4 + latent + noise (SD 0.2), so the true R² is 1 / 1.04 ≈ 0.96."""
    rng = np.random.default_rng(seed)
    latent = np.clip(rng.normal(size=n), -3, 3)
    q = rng.integers(-40, 41, size=(n, k, k, dim))
    q[..., 0] = np.clip(np.round(latent[:, None, None] * 80 + rng.normal(0, 10, (n, k, k))), -127, 127)
    s = rng.uniform(0.008, 0.012, size=(n, k, k, 1)).astype(np.float32)
    patches = (q.astype(np.int8).astype(np.float32) * s).reshape(n, -1)
    log_r = 4.0 + latent + rng.normal(0, 0.2, n)
    return patches, np.expm1(log_r), log_r


@pytest.fixture(scope="module")
def lgbm_model():
    X, y, _ = synthetic()
    return MapModel("lightgbm", model_params={"n_estimators": 60}, n_jobs=1).fit(
        X, y, encoder="enc-test", embedding_dim=DIM
    )


# --------------------------------------------------------------------------- fit
def test_fit_recovers_known_signal_and_records_spec():
    X, y, log_r = synthetic(800)
    m = MapModel("ridge", n_components=8).fit(X[:600], y[:600], encoder="enc-a", embedding_dim=DIM)
    pred = m.predict_patches(X[600:], output="log_richness")
    r2 = 1 - np.sum((pred - log_r[600:]) ** 2) / np.sum((log_r[600:] - log_r[600:].mean()) ** 2)
    # true R² ≈ 0.96; the first components carry the latent factor (int8 rounding, scale noise)
    assert r2 > 0.85
    assert m.spec == FeatureSpec(DIM, 3, "enc-a", tuple(f"ssl_{i:04d}" for i in range(9 * DIM)))
    # every library whose objects the file holds: a ridge is scikit-learn's, as the PCA is
    assert set(m.versions) == {"fungi_ssl", "scikit-learn", "skops", "numpy"}
    assert m.versions == package_versions("ridge")
    assert len(m.fingerprint) == 16 and m.n_samples == 600 and m.n_dropped == 0
    np.testing.assert_allclose(m.predict_patches(X[600:605]), np.expm1(pred[:5]))


def test_target_is_the_predictor_tables():
    assert mapmodel.TARGET == TARGET  # repeated in mapmodel so that loading skips torch


def test_fit_from_predictor_table_uses_target_and_sites_for_early_stopping():
    X, _, log_r = synthetic(500)
    cols = [f"ssl_{i:04d}" for i in range(X.shape[1])]
    table = pd.DataFrame(X, columns=cols)
    table[TARGET] = log_r
    table["site_id"] = np.repeat(np.arange(250), 2).astype(str)
    table["CHELSA_BIO_Annual_Precipitation"] = 1.0  # not an SSL column: ignored
    table.loc[3, "ssl_0005"] = np.nan  # a sample without embedding is left out
    m = MapModel("lightgbm", n_components=8, n_jobs=1, model_params={"learning_rate": 0.3}).fit(
        table, encoder="enc", embedding_dim=DIM
    )
    assert m.n_samples == 499 and m.n_dropped == 1
    trees = m.settings["early_stopped_trees"]
    assert 1 <= trees < 1000 and m.regressor_.n_estimators == trees
    assert m.spec.predictor_columns == tuple(cols)
    # a table with 'rarefied' only gives the same target
    m2 = MapModel("ridge", n_components=8).fit(
        table.drop(columns=[TARGET]).assign(rarefied=np.expm1(log_r)), encoder="enc",
        embedding_dim=DIM,
    )
    m3 = MapModel("ridge", n_components=8).fit(table, encoder="enc", embedding_dim=DIM)
    np.testing.assert_allclose(m2.predict_patches(X[:5]), m3.predict_patches(X[:5]), rtol=1e-9)
    assert m2.fingerprint == m3.fingerprint


def test_map_model_equals_the_chapter_04_pipeline():
    """Same PCA and model as Pipeline(PatchReducer, make_model) fitted on the same rows."""
    X, y, log_r = synthetic(400)
    params = {**BOOK_MODEL_PARAMS["lightgbm"], "n_estimators": 40}
    m = MapModel("lightgbm", n_components=6, model_params=params, n_jobs=1, seed=3).fit(
        X, y, encoder="e", embedding_dim=DIM
    )
    pipe = make_pipeline(
        PatchReducer(n_components=6, dim=DIM, seed=3),
        make_model("lightgbm", seed=3, n_jobs=1, **params),
    )
    frame = pd.DataFrame(X, columns=[f"ssl_{i:04d}" for i in range(X.shape[1])])
    pipe.fit(frame, log_r)
    np.testing.assert_allclose(
        m.predict_patches(X, output="log_richness"), pipe.predict(frame), rtol=1e-9, atol=1e-9
    )


@pytest.mark.parametrize("bad", ["negative", "no_ssl", "few_rows", "shape"])
def test_fit_rejects_bad_input(bad):
    X, y, _ = synthetic(50)
    m = MapModel("ridge", n_components=3)
    with pytest.raises(ValueError) as err:
        if bad == "negative":
            m.fit(X, np.log(y) - 10, encoder="e", embedding_dim=DIM)
        elif bad == "no_ssl":
            m.fit(pd.DataFrame({"rarefied": y}), encoder="e", embedding_dim=DIM)
        elif bad == "few_rows":
            m.fit(X[:5], y[:5], encoder="e", embedding_dim=DIM)
        else:
            m.fit(X[:, :100], y, encoder="e", embedding_dim=DIM)
    assert {"negative": "rarefied richness (≥ 0)", "no_ssl": "no SSL patch columns",
            "few_rows": "only 5 rows", "shape": "k*k*16"}[bad] in str(err.value)


# ------------------------------------------------------------------ prediction
def test_flat_trees_equal_lightgbm_and_forest_exactly(lgbm_model):
    rng = np.random.default_rng(5)
    z = rng.normal(size=(1001, lgbm_model.pca_.n_components_)) * 3
    booster = lgbm_model.regressor_.booster_
    flat = FlatTrees.from_model(lgbm_model.regressor_)
    assert flat is not None and flat.n_trees == 60
    for dtype in (np.float32, np.float64):
        zz = z.astype(dtype)
        assert np.array_equal(flat.predict(zz), booster.predict(zz))
    X, _, log_r = synthetic(300)
    rf = make_model("rf", n_estimators=20, n_jobs=1).fit(X[:, :10], log_r)
    frf = FlatTrees.from_model(rf)
    for dtype in (np.float32, np.float64):
        xx = (rng.normal(size=(333, 10)) * 0.5).astype(dtype)
        np.testing.assert_allclose(frf.predict(xx), rf.predict(xx), rtol=1e-12, atol=1e-12)
    assert FlatTrees.from_model(make_model("ridge").fit(X[:, :3], log_r)) is None


def test_flat_trees_exact_one_ulp_around_every_threshold(lgbm_model):
    """Rows at each split threshold and one float64 ULP either side give the library's value:
    scikit-learn casts rows to float32 before comparing, LightGBM compares doubles."""
    X, _, log_r = synthetic(300)
    rf = make_model("rf", n_estimators=15, n_jobs=1, random_state=0).fit(X[:, :6], log_r)
    cases = [(rf, X[:, :6]), (lgbm_model.regressor_, None)]
    for model, base in cases:
        flat = FlatTrees.from_model(model)
        if base is None:
            n_feat = lgbm_model.pca_.n_components_
            base = np.zeros((1, n_feat))
        internal = np.isfinite(flat.threshold64)
        feats, thrs = flat.feature[internal], flat.threshold64[internal]
        rows = np.repeat(np.asarray(base, np.float64)[:1], 3 * len(thrs), axis=0)
        for k, step in enumerate((-np.inf, None, np.inf)):
            vals = thrs if step is None else np.nextafter(thrs, step)
            rows[np.arange(len(thrs)) * 3 + k, feats] = vals
        ref = (model.booster_.predict(rows) if hasattr(model, "booster_") else model.predict(rows))
        np.testing.assert_allclose(flat.predict(rows), ref, rtol=1e-12, atol=1e-12)


def test_predict_window_equals_predict_patches(lgbm_model):
    """The matmul-and-shift path gives the patch → PCA → model values of every pixel."""
    rng = np.random.default_rng(7)
    emb = rng.integers(-127, 128, size=(21, 30, DIM)).astype(np.int8)
    scale = rng.uniform(0.005, 0.02, size=(21, 30)).astype(np.float32)
    scale[10, 12] = np.nan  # no embedding: its 3x3 neighbourhood has no full patch
    scale[4, 5] = np.inf    # a non-finite scale is no data too
    fast = lgbm_model.predict_window(emb, scale, output="log_richness", strip_pixels=100)
    ref = lgbm_model.predict_patches(dequantised_patches(emb, scale), output="log_richness")
    ref = ref.reshape(19, 28)
    assert fast.shape == (19, 28) and fast.dtype == np.float32
    nan_ref = np.isnan(ref)
    assert nan_ref.sum() == 18 and np.array_equal(np.isnan(fast), nan_ref)
    # float32 projection against float64: a split threshold may (rarely) fall in between
    close = np.isclose(fast[~nan_ref], ref[~nan_ref], rtol=1e-5, atol=1e-5)
    assert close.mean() > 0.99
    # the PCA scores themselves agree to float32 precision
    z_ref = lgbm_model.project_patches(dequantised_patches(emb, scale))
    assert np.nanmax(np.abs(z_ref)) > 0.1


def test_predict_window_projection_is_exact_for_a_linear_model():
    X, y, _ = synthetic(300)
    m = MapModel("ridge", n_components=5).fit(X, y, encoder="e", embedding_dim=DIM)
    rng = np.random.default_rng(8)
    emb = rng.integers(-127, 128, size=(12, 9, DIM)).astype(np.int8)
    scale = rng.uniform(0.005, 0.02, size=(12, 9)).astype(np.float32)
    fast = m.predict_window(emb, scale, output="log_richness", strip_pixels=7)
    ref = m.predict_patches(dequantised_patches(emb, scale), output="log_richness").reshape(10, 7)
    np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="16-dimensional"):
        m.predict_window(emb[..., :8], scale)


def test_check_embeddings_names_both_sides(lgbm_model):
    lgbm_model.check_embeddings(embedding_dim=DIM, encoder="enc-test", patch_size=3)
    with pytest.raises(ValueError, match=r"embedding_dim: model 16, store 128"):
        lgbm_model.check_embeddings(embedding_dim=128, where="store")
    with pytest.raises(ValueError, match=r"encoder: model 'enc-test', embeddings 'other'"):
        lgbm_model.check_embeddings(embedding_dim=DIM, encoder="other")
    with pytest.raises(ValueError, match=r"patch_size: model 3, embeddings 5"):
        lgbm_model.check_embeddings(embedding_dim=DIM, patch_size=5)


# ------------------------------------------------------------------- save/load
def test_save_load_round_trip(lgbm_model, tmp_path):
    path = lgbm_model.save(tmp_path / "model.fmm")
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["meta.json", "model.skops"]
        meta = json.loads(zf.read("meta.json"))
    assert meta["spec"]["encoder"] == "enc-test" and meta["fingerprint"] == lgbm_model.fingerprint
    back = MapModel.load(path, expect=lgbm_model.spec)
    X, _, _ = synthetic(50, seed=9)
    np.testing.assert_array_equal(back.predict_patches(X), lgbm_model.predict_patches(X))
    assert back.spec == lgbm_model.spec and back.versions == lgbm_model.versions
    assert back.settings == lgbm_model.settings
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left
    with pytest.raises(FileExistsError, match="overwrite=True"):
        lgbm_model.save(path)
    lgbm_model.save(path, overwrite=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        lgbm_model.save(tmp_path / "missing" / "m.fmm")


@pytest.mark.parametrize("name", ["rf", "xgboost", "ridge"])
def test_save_load_round_trip_other_models(name, tmp_path):
    X, y, _ = synthetic(200)
    params = {"n_estimators": 10} if name == "rf" else {"learning_rate": 0.3} if name == "xgboost" else {}
    m = MapModel(name, n_components=4, model_params=params, n_jobs=1).fit(
        X, y, encoder="e", embedding_dim=DIM
    )
    back = MapModel.load(m.save(tmp_path / f"{name}.fmm"))
    np.testing.assert_array_equal(back.predict_patches(X[:20]), m.predict_patches(X[:20]))
    assert (back._flat is None) == (name != "rf")
    if name == "xgboost":  # early-stopped on a hold-out, then refitted with that many trees
        assert 1 <= m.settings["early_stopped_trees"] < 1000
    # the regressor's library is recorded beside scikit-learn, skops and numpy
    lib = {"rf": "scikit-learn", "xgboost": "xgboost", "ridge": "scikit-learn"}[name]
    assert set(m.versions) == {"fungi_ssl", "scikit-learn", "skops", "numpy", lib}
    assert back.versions == m.versions == package_versions(name)


def _rewrite_meta(path, out, change):
    with zipfile.ZipFile(path) as zf:
        meta = json.loads(zf.read("meta.json"))
        blob = zf.read("model.skops")
    change(meta)
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("meta.json", json.dumps(meta))
        zf.writestr("model.skops", blob)
    return out


def test_load_refuses_other_versions_and_feature_spec_in_one_message(lgbm_model, tmp_path):
    path = lgbm_model.save(tmp_path / "m.fmm")

    def old_versions(meta):
        meta["versions"]["scikit-learn"] = "0.24.2"
        meta["versions"]["lightgbm"] = "3.0.0"

    bad = _rewrite_meta(path, tmp_path / "old.fmm", old_versions)
    here = package_versions("lightgbm")
    other_spec = FeatureSpec(128, 3, "enc-test", lgbm_model.spec.predictor_columns)
    with pytest.raises(ValueError) as err:
        MapModel.load(bad, expect=other_spec)
    msg = str(err.value)
    assert "scikit-learn: saved with '0.24.2', installed " + repr(here["scikit-learn"]) in msg
    assert "lightgbm: saved with '3.0.0', installed " + repr(here["lightgbm"]) in msg
    assert "embedding_dim: model 16, expected 128" in msg
    assert msg.count("\n") == 0
    # an explicit opt-out loads it
    assert MapModel.load(bad, check_versions=False).spec == lgbm_model.spec
    with pytest.raises(ValueError, match="encoder: model 'enc-test', expected 'enc-other'"):
        MapModel.load(path, expect=FeatureSpec(DIM, 3, "enc-other", lgbm_model.spec.predictor_columns))


def test_load_refuses_files_that_are_not_map_models(tmp_path):
    p = tmp_path / "x.fmm"
    p.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a map model"):
        MapModel.load(p)
    with pytest.raises(FileNotFoundError):
        MapModel.load(tmp_path / "absent.fmm")


def test_encoder_signature_of_a_trained_encoder_matches_its_store(tmp_path):
    import xarray as xr

    from fungi_ssl.embeddings.embed import embed_cube, open_embeddings
    from fungi_ssl.embeddings.encoder import EncoderConfig, TesseraEncoder, TrainedEncoder
    from fungi_ssl.embeddings.pixels import S1_BANDS, S2_BANDS

    rng = np.random.default_rng(0)
    cube = xr.Dataset(
        {"s2": (("time_s2", "band_s2", "y", "x"), rng.random((6, 10, 3, 4), np.float32)),
         "s2_valid": (("time_s2", "y", "x"), np.ones((6, 3, 4), bool)),
         "s1": (("time_s1", "band_s1", "y", "x"), rng.random((5, 2, 3, 4), np.float32)),
         "s1_valid": (("time_s1", "y", "x"), np.ones((5, 3, 4), bool))},
        coords={"band_s2": list(S2_BANDS), "band_s1": list(S1_BANDS),
                "doy_s2": ("time_s2", np.arange(6) * 60 + 1),
                "doy_s1": ("time_s1", np.arange(5) * 70 + 1),
                "y": 6e6 - 10 * np.arange(3) - 5, "x": 5e5 + 10 * np.arange(4) + 5},
    ).rio.write_crs(32630)
    enc = TesseraEncoder(EncoderConfig()).eval()
    trained = TrainedEncoder(enc, enc.config, enc.normaliser)
    run = embed_cube(cube, trained, tmp_path / "e.zarr", chunk=2, progress=False)
    store = open_embeddings(run.store)
    assert encoder_signature(trained) == encoder_signature(store) == store.attrs["encoder"]
    with pytest.raises(ValueError, match="records no encoder"):
        encoder_signature(xr.Dataset())


def _shift(version: str, part: int) -> str:
    """``version`` with its major (0) or minor (1) part raised by one."""
    nums = [int(v) for v in version.split(".")[:2]] + [0]
    nums[part] += 1
    if part == 0:
        nums[1] = 0
    return f"{nums[0]}.{nums[1]}.0"


def test_compatible_series_is_the_major_version_or_zero_minor():
    assert modelspec.compatible_series("4.6.0") == modelspec.compatible_series("4.1.2") == (4,)
    assert modelspec.compatible_series("0.1.0") != modelspec.compatible_series("0.2.0")
    assert modelspec.compatible_series("3.0.0") != modelspec.compatible_series("4.0.0")


def test_load_accepts_another_minor_version_with_one_warning_line(lgbm_model, tmp_path):
    import warnings

    path = lgbm_model.save(tmp_path / "m.fmm")
    here = package_versions("lightgbm")
    newer = _shift(here["lightgbm"], 1)
    other = _rewrite_meta(path, tmp_path / "minor.fmm",
                          lambda m: m["versions"].update(lightgbm=newer))
    with pytest.warns(UserWarning) as rec:
        back = MapModel.load(other)
    msg = str(rec[0].message)
    assert len(rec) == 1 and "\n" not in msg
    assert f"lightgbm: saved with {newer!r}, installed {here['lightgbm']!r}" in msg
    X, _, _ = synthetic(20, seed=3)
    np.testing.assert_array_equal(back.predict_patches(X), lgbm_model.predict_patches(X))
    # the same versions: no warning at all
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MapModel.load(path)


@pytest.mark.parametrize("lib", ["lightgbm", "fungi_ssl", "scikit-learn"])
def test_load_refuses_another_major_version_in_one_line(lgbm_model, tmp_path, lib):
    path = lgbm_model.save(tmp_path / "m.fmm")
    here = package_versions("lightgbm")[lib]
    # a 0.y package breaks at a minor release (0.1 -> 0.2), a 1.x one at the major
    other = _shift(here, 1 if here.startswith("0.") else 0)
    bad = _rewrite_meta(path, tmp_path / "major.fmm", lambda m: m["versions"].update({lib: other}))
    with pytest.raises(ValueError) as err:
        MapModel.load(bad)
    msg = str(err.value)
    assert f"{lib}: saved with {other!r}, installed {here!r}" in msg and "\n" not in msg
    assert "same major version" in msg and "check_versions=False" in msg


def test_xgboost_models_check_xgboost_not_lightgbm(tmp_path):
    X, y, _ = synthetic(200)
    m = MapModel("xgboost", n_components=4, model_params={"learning_rate": 0.3}, n_jobs=1).fit(
        X, y, encoder="e", embedding_dim=DIM)
    path = m.save(tmp_path / "x.fmm")
    here = package_versions("xgboost")["xgboost"]
    bad = _rewrite_meta(path, tmp_path / "old.fmm",
                        lambda meta: meta["versions"].update(xgboost=_shift(here, 0)))
    with pytest.raises(ValueError, match=r"xgboost: saved with"):
        MapModel.load(bad)
    # a lightgbm of another major version is not this model's business
    fine = _rewrite_meta(path, tmp_path / "fine.fmm",
                         lambda meta: meta["versions"].update(lightgbm="1.0.0"))
    MapModel.load(fine)


def test_numpy_or_skops_of_another_series_only_warns_and_old_files_load(lgbm_model, tmp_path):
    import warnings

    path = lgbm_model.save(tmp_path / "m.fmm")
    here = package_versions("lightgbm")
    other = _rewrite_meta(path, tmp_path / "np.fmm",
                          lambda m: m["versions"].update(numpy=_shift(here["numpy"], 0)))
    with pytest.warns(UserWarning, match="numpy: saved with"):
        MapModel.load(other)
    # a file from before numpy and skops were recorded loads without a word
    def old_file(meta):
        meta["versions"] = {k: here[k] for k in ("fungi_ssl", "scikit-learn", "lightgbm")}

    old = _rewrite_meta(path, tmp_path / "old.fmm", old_file)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MapModel.load(old)


@pytest.mark.parametrize(("encoder", "version"), [("tessera:v1", "v1"),
                                                  ("tessera:unknown-version", None),
                                                  ("enc-test", None)])
def test_model_file_records_the_tessera_dataset_version(tmp_path, encoder, version):
    X, y, _ = synthetic(100)
    m = MapModel("ridge", n_components=4).fit(X, y, encoder=encoder, embedding_dim=DIM)
    with zipfile.ZipFile(m.save(tmp_path / "m.fmm")) as zf:
        meta = json.loads(zf.read("meta.json"))
    assert meta["embeddings"] == {"encoder": encoder, "tessera_dataset_version": version}
    assert MapModel.load(tmp_path / "m.fmm").tessera_dataset_version == version
