"""Tests for fungi_ssl.attribution.groups: chapter 05's commonality analysis and SHAP."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_comparison import predictor_frame
from threadpoolctl import threadpool_limits

from fungi_ssl.attribution.groups import (
    PARTITION_LIGHTGBM,
    partition_groups,
    partition_splitter,
    shap_attribution,
)
from fungi_ssl.attribution.partition import commonality_partition, subsumed_share
from fungi_ssl.predictors.features import PatchReducer
from fungi_ssl.validation.comparison import spatial_splitter
from fungi_ssl.validation.pipelines import predictor_matrix


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return predictor_frame()


def latent_frame(n: int = 3000, seed: int = 0) -> tuple[pd.DataFrame, dict[str, float]]:
    """y = s + a + c + noise; the SSL patch sees (s, a), climate sees (s, c).

    True commonalities (share of var y): unique ssl = var(a)/V, unique
    climate = var(c)/V, shared ssl+climate = var(s)/V.
    """
    rng = np.random.default_rng(seed)
    s, a, c, e = rng.normal(size=(4, n))
    beta = {"s": 1.0, "a": 0.8, "c": 0.6}
    y = beta["s"] * s + beta["a"] * a + beta["c"] * c + e
    patch = np.column_stack([s, a]) @ rng.normal(size=(2, 1152)) + 0.05 * rng.normal(size=(n, 1152))
    frame = pd.DataFrame(patch, columns=[f"ssl_{i:04d}" for i in range(1152)])
    frame["CHELSA_BIO_Annual_Mean_Temperature"] = s
    frame["CHELSA_BIO_Annual_Precipitation"] = c
    frame["longitude"] = rng.uniform(0, 10, n)
    frame["latitude"] = rng.uniform(44, 52, n)
    frame["y"] = y
    var_y = sum(b**2 for b in beta.values()) + 1.0
    truth = {
        "unique:ssl": beta["a"] ** 2 / var_y,
        "unique:climate": beta["c"] ** 2 / var_y,
        "shared:ssl+climate": beta["s"] ** 2 / var_y,
    }
    return frame, truth


def test_partition_groups_recovers_a_known_partition():
    frame, truth = latent_frame()
    res = partition_groups(
        frame, "y", ["ssl", "climate", "soil"], model="ridge", n_components=4, progress=False
    )
    assert res.groups == ["ssl", "climate"]  # no soil columns: left out
    assert abs(sum(res.fractions.values()) - res.full_r2) < 1e-9
    for name, value in truth.items():
        assert res.fractions[name] == pytest.approx(value, abs=0.02), name
    assert subsumed_share(res, "ssl", "climate") == pytest.approx(
        truth["shared:ssl+climate"] / (truth["shared:ssl+climate"] + truth["unique:climate"]),
        abs=0.03,
    )


def test_partition_groups_threads_and_memo_change_no_number(frame):
    res = partition_groups(
        frame,
        "log_richness",
        cv="block",
        n_components=4,
        model_params={"n_estimators": 40},
        progress=False,
    )
    assert res.groups == ["ssl", "climate", "soil", "landcover"]
    assert abs(sum(res.fractions.values()) - res.full_r2) < 1e-9
    # the same analysis, serial, with a plain PatchReducer pipeline per fit
    from sklearn.pipeline import make_pipeline

    from fungi_ssl.validation.models import make_model

    def plain():
        params = {**PARTITION_LIGHTGBM, "n_estimators": 40}
        return make_pipeline(PatchReducer(4), make_model("lightgbm", seed=0, n_jobs=1, **params))

    X_groups = {g: predictor_matrix(frame, g) for g in res.groups}
    with threadpool_limits(limits=1):
        serial = commonality_partition(
            X_groups,
            frame["log_richness"].to_numpy(),
            plain,
            spatial_splitter(frame, n_splits=5, seed=0),
            n_jobs=1,
            progress=False,
        )
    assert serial.subset_r2 == pytest.approx(res.subset_r2, abs=1e-12)
    with pytest.raises(ValueError, match="scheme"):
        partition_groups(frame, "log_richness", cv="kfold", progress=False)
    with pytest.raises(ValueError, match="groups"):
        partition_groups(frame, "log_richness", ["topography"], progress=False)


def test_shap_attribution_is_additive_and_ranks_ssl_first(frame):
    model, sv, table = shap_attribution(
        frame, "log_richness", n_components=4, max_samples=120, progress=False
    )
    assert len(sv.values) == 120
    np.testing.assert_allclose(
        sv.predictions.to_numpy(), model[-1].predict(sv.data), rtol=1e-6, atol=1e-6
    )
    assert table.index[0] == "ssl"
    assert table["share"].sum() == pytest.approx(1.0)
    assert set(table.index) == {"ssl", "climate", "soil", "landcover"}
    # the group table is the default aggregation: |summed SHAP| per sample
    assert table.attrs["how"] == "abs_sum"
    ssl_sum = sv.values[[c for c in sv.values.columns if c.startswith("ssl_")]].sum(axis=1)
    assert table.loc["ssl", "mean_abs_shap"] == pytest.approx(ssl_sum.abs().mean())


def test_partition_splitter_schemes(frame):
    from fungi_ssl.validation.cv import BlockKFold, SiteGroupKFold

    assert isinstance(partition_splitter(frame), SiteGroupKFold)
    assert isinstance(partition_splitter(frame, "block"), BlockKFold)
    with pytest.raises(ValueError, match="longitude and latitude"):
        partition_splitter(frame.drop(columns="latitude"))
