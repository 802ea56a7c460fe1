"""Tests for fungi_ssl.predictors.features: predictor sets and SSL patch reduction."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import make_pipeline

from fungi_ssl.predictors.features import (
    PREDICTOR_GROUPS,
    PatchReducer,
    column_groups,
    group_columns,
    group_of,
    landcover_one_hot,
    select_predictors,
)

SPUN_COLUMNS = [
    "sample_id",
    "CGIAR_PET",
    "CHELSA_BIO_Annual_Mean_Temperature",
    "ConsensusLandCover_Human_Development_Percentage",
    "ConsensusLandCoverClass_Barren",
    "EarthEnvTexture_CoOfVar_EVI",
    "EarthEnvTopoMed_Elevation",
    "EsaCci_BurntAreasProbability",
    "GHS_Population_Density",
    "GlobBiomass_AboveGroundBiomass",
    "GlobPermafrost_PermafrostExtent",
    "MODIS_NPP",
    "PelletierEtAl_SoilAndSedimentaryDepositThicknesses",
    "SG_Depth_to_bedrock",
    "SG_Soil_pH_H2O_005cm",
    "Resolve_Biome",
    "ECM_diversity",
    "Pixel_Lat",
    "Pixel_Long",
    "CV_Fold",
]


def ssl_frame(n: int, seed: int = 0, k: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    # low-rank patch: 5 latent factors + noise, so PCA has structure to find
    latent = rng.normal(size=(n, 5))
    loadings = rng.normal(size=(5, k * k * 128))
    values = latent @ loadings + 0.1 * rng.normal(size=(n, k * k * 128))
    cols = [f"ssl_{i:04d}" for i in range(k * k * 128)]
    return pd.DataFrame(values, columns=cols, index=[f"S{i}" for i in range(n)])


def mixed_table(n: int = 40) -> pd.DataFrame:
    table = ssl_frame(n)
    rng = np.random.default_rng(1)
    for c in SPUN_COLUMNS:
        table[c] = rng.normal(size=n) if c != "sample_id" else [f"S{i}" for i in range(n)]
    table["longitude"] = rng.uniform(-5, 20, n)
    table["latitude"] = rng.uniform(40, 60, n)
    return table


def test_every_real_spun_column_lands_in_exactly_one_group_or_none():
    groups = column_groups(SPUN_COLUMNS)
    assert "sample_id" not in groups and "ECM_diversity" not in groups and "CV_Fold" not in groups
    assert groups["CGIAR_PET"] == "climate"
    assert groups["PelletierEtAl_SoilAndSedimentaryDepositThicknesses"] == "soil"
    assert groups["ConsensusLandCover_Human_Development_Percentage"] == "landcover"
    assert groups["EarthEnvTopoMed_Elevation"] == "topography"
    assert groups["MODIS_NPP"] == "vegetation"
    assert groups["Resolve_Biome"] == "other"
    assert groups["Pixel_Lat"] == "coords"
    # no prefix is claimed by two groups
    for c in SPUN_COLUMNS + ["ssl_0000", "longitude"]:
        hits = [g for g, p in PREDICTOR_GROUPS.items() if c.startswith(p)]
        assert len(hits) <= 1, (c, hits)


def test_select_by_name_and_combination():
    t = mixed_table()
    cols, mapping = select_predictors(t, "climate")
    assert cols == ["CGIAR_PET", "CHELSA_BIO_Annual_Mean_Temperature"]
    assert set(mapping.values()) == {"climate"}

    sel = select_predictors(t, "ssl+climate")
    assert sel.groups == ["ssl", "climate"]
    assert len(sel.columns) == 1152 + 2
    assert sel.columns[:2] == ["ssl_0000", "ssl_0001"]
    assert select_predictors(t, ["ssl", "climate"]).columns == sel.columns

    all_sel = select_predictors(t, "all")
    assert "coords" not in all_sel.groups and "Pixel_Lat" not in all_sel.columns
    assert "ECM_diversity" not in all_sel.columns and "CV_Fold" not in all_sel.columns
    assert set(all_sel.groups) == {
        "ssl",
        "climate",
        "soil",
        "landcover",
        "topography",
        "vegetation",
        "other",
    }
    with_coords = select_predictors(t, "all+coords")
    assert set(with_coords.columns) - set(all_sel.columns) == {
        "Pixel_Lat",
        "Pixel_Long",
        "longitude",
        "latitude",
    }
    cov = select_predictors(t, "covariates")
    assert "ssl" not in cov.groups and "soil" in cov.groups

    parts = select_predictors(t, "climate+soil").split(t)
    assert list(parts) == ["climate", "soil"]
    assert list(parts["soil"].columns) == group_columns(t.columns, "soil")


def test_unknown_set_and_empty_set_errors_name_the_set():
    t = mixed_table().drop(columns=group_columns(mixed_table().columns, "soil"))
    with pytest.raises(ValueError, match=r"'soils'.*available groups.*climate"):
        select_predictors(t, "ssl+soils")
    with pytest.raises(ValueError, match=r"'soil' .*no columns.*groups available.*climate"):
        select_predictors(t, "climate+soil")
    # an alias tolerates absent groups
    assert "soil" not in select_predictors(t, "all").groups
    with pytest.raises(ValueError, match="has no columns"):
        select_predictors(pd.DataFrame(columns=["sample_id"]), "all")
    with pytest.raises(ValueError, match="group must be one of"):
        group_columns(t.columns, "weather")
    assert group_of("rarefied") is None


def test_landcover_one_hot_fixed_categories_and_group():
    classes = pd.Series(["heath", None, "conifer"], index=["a", "b", "c"], name="lc")
    oh = landcover_one_hot(classes, categories=["conifer", "grassland", "heath"])
    assert list(oh.index) == ["a", "b", "c"]
    assert set(column_groups(oh.columns).values()) == {"landcover"}
    np.testing.assert_array_equal(oh.loc["a"].to_numpy(), [0, 0, 1])
    assert oh.loc["b"].isna().all()
    with pytest.raises(ValueError, match="not in categories"):
        landcover_one_hot(classes, categories=["conifer"])


def test_pca_reducer_shape_names_and_determinism():
    X = mixed_table(60)[["CGIAR_PET"] + [f"ssl_{i:04d}" for i in range(1152)]]
    a = PatchReducer(n_components=8, seed=3).fit_transform(X)
    b = PatchReducer(n_components=8, seed=3).fit_transform(X)
    assert a.shape == (60, 1 + 8)
    assert list(a.columns[:2]) == ["CGIAR_PET", "ssl_pca_00"]
    assert set(column_groups(a.columns).values()) == {"climate", "ssl"}
    pd.testing.assert_frame_equal(a, b)
    # the other column passes through untouched; the input is not modified
    np.testing.assert_array_equal(a["CGIAR_PET"].to_numpy(), X["CGIAR_PET"].to_numpy())
    assert X.shape == (60, 1153)
    # 5 latent factors + small noise: the first 5 PCs carry nearly all variance
    r = PatchReducer(n_components=8).fit(X)
    assert r.reducer_.explained_variance_ratio_[:5].sum() > 0.95
    assert list(r.get_feature_names_out()) == list(a.columns)


def test_reducer_fitted_on_train_only():
    X = ssl_frame(80)
    train, test = X.iloc[:50], X.iloc[50:] * 5.0 + 3.0  # test from another distribution
    red = PatchReducer(n_components=4).fit(train)
    comps = red.reducer_.components_.copy()
    mean = red.reducer_.mean_.copy()
    before = red.transform(train)
    red.transform(test)
    np.testing.assert_array_equal(red.reducer_.components_, comps)
    np.testing.assert_array_equal(red.reducer_.mean_, mean)
    pd.testing.assert_frame_equal(red.transform(train), before)
    # a reducer fitted on all rows differs: the fit really came from train alone
    other = PatchReducer(n_components=4).fit(pd.concat([train, test]))
    assert not np.allclose(np.abs(other.reducer_.components_), np.abs(comps), atol=1e-3)


def test_reducer_in_pipeline_and_as_factory():
    X = ssl_frame(70)
    y = X["ssl_0000"].to_numpy() * 2.0
    factory = functools.partial(PatchReducer, n_components=6)
    pipe = make_pipeline(factory(), LinearRegression()).fit(X.iloc[:50], y[:50])
    pred = pipe.predict(X.iloc[50:])
    assert pred.shape == (20,)
    assert np.corrcoef(pred, y[50:])[0, 1] > 0.9
    # a table without SSL columns passes through the same pipeline step
    plain = pd.DataFrame({"CGIAR_PET": np.arange(5.0)})
    pd.testing.assert_frame_equal(PatchReducer().fit_transform(plain), plain)


def test_centre_mean_pixels_and_missing_embeddings():
    X = ssl_frame(30)
    centre = PatchReducer(method="none", pixels="centre").fit_transform(X)
    assert centre.shape == (30, 128)
    # centre pixel (1, 1) of a 3x3 patch is pixel 4: columns 512..639
    np.testing.assert_array_equal(centre.to_numpy(), X.iloc[:, 512:640].to_numpy())
    mean = PatchReducer(method="none", pixels="mean").fit_transform(X)
    expect = X.to_numpy().reshape(30, 9, 128).mean(axis=1)
    np.testing.assert_allclose(mean.to_numpy(), expect)
    pca_mean = PatchReducer(n_components=3, pixels="mean").fit_transform(X)
    assert list(pca_mean.columns) == ["ssl_pca_00", "ssl_pca_01", "ssl_pca_02"]

    Xn = X.copy()
    Xn.iloc[3, :] = np.nan
    out = PatchReducer(n_components=3).fit_transform(Xn)
    assert out.iloc[3].isna().all() and out.drop(index=out.index[3]).notna().all().all()


def test_reducer_errors():
    X = ssl_frame(10)
    with pytest.raises(ValueError, match="k\\*k\\*128"):
        PatchReducer().fit(X.iloc[:, :100])
    with pytest.raises(ValueError, match="method must be"):
        PatchReducer(method="tsne").fit(X)
    with pytest.raises(ValueError, match="not fitted"):
        PatchReducer().transform(X)
    try:
        import umap  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install fungi-ssl\[umap\]"):
            PatchReducer(method="umap").fit(X)
