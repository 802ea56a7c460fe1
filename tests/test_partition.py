"""Tests for fungi_ssl.attribution.partition: commonality analysis."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import GroupKFold, ShuffleSplit
from sklearn.pipeline import make_pipeline

from fungi_ssl.attribution.partition import (
    CommonalityResult,
    commonality_from_r2,
    commonality_partition,
    plot_commonality,
    subsumed_share,
)
from fungi_ssl.predictors.features import PatchReducer

# y = bs*s + ba*a + bb*b + bc*c + noise, all independent N(0, 1).
# Group A = [s, a], B = [s, b], C = [c]: s is the latent component A and B share.
BETA = {"s": 1.0, "a": 0.8, "b": 0.6, "c": 0.7}
NOISE_SD = 1.0
VAR_Y = sum(v**2 for v in BETA.values()) + NOISE_SD**2
TRUE = {
    "unique:A": BETA["a"] ** 2 / VAR_Y,
    "unique:B": BETA["b"] ** 2 / VAR_Y,
    "unique:C": BETA["c"] ** 2 / VAR_Y,
    "shared:A+B": BETA["s"] ** 2 / VAR_Y,
    "shared:A+C": 0.0,
    "shared:B+C": 0.0,
    "shared:A+B+C": 0.0,
}


def latent_study(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    s, a, b, c, e = rng.normal(size=(5, n))
    y = BETA["s"] * s + BETA["a"] * a + BETA["b"] * b + BETA["c"] * c + NOISE_SD * e
    X = {
        "A": pd.DataFrame({"s_in_A": s, "a": a}),
        "B": pd.DataFrame({"s_in_B": s, "b": b}),
        "C": pd.DataFrame({"c": c}),
    }
    return X, y


@pytest.fixture(scope="module")
def latent_result() -> CommonalityResult:
    X, y = latent_study(6000)
    return commonality_partition(X, y, LinearRegression, cv=5, n_jobs=1, progress=False)


def test_recovers_known_unique_and_shared_fractions(latent_result):
    res = latent_result
    assert set(res.fractions) == set(TRUE)
    for name, truth in TRUE.items():
        assert abs(res.fractions[name] - truth) < 0.02, (name, res.fractions[name], truth)
    assert abs(res.full_r2 - (1 - NOISE_SD**2 / VAR_Y)) < 0.02
    assert res.scoring == "pooled" and res.n_folds == 5


def test_fractions_sum_exactly_to_full_r2(latent_result):
    res = latent_result
    assert abs(sum(res.fractions.values()) - res.full_r2) < 1e-9
    # each group's R² alone is the sum of the fractions containing it
    gt = res.group_table()
    np.testing.assert_allclose(
        gt["unique"] + gt["shared_positive"] + gt["shared_negative"], gt["r2_alone"], atol=1e-12
    )


def test_subsumed_share_known_value(latent_result):
    # B's R² alone is (s² + b²)/V, of which s² is shared with A
    truth = BETA["s"] ** 2 / (BETA["s"] ** 2 + BETA["b"] ** 2)
    assert abs(subsumed_share(latent_result, by="A", group="B") - truth) < 0.03
    # C shares nothing with B: a fraction error of 0.02 over R²(B) ≈ 0.39 gives 0.05
    assert abs(subsumed_share(latent_result, by="C", group="B")) < 0.06
    assert subsumed_share(latent_result, by="B", group="B") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not a group"):
        subsumed_share(latent_result, by="ssl", group="B")


def test_suppression_gives_an_honest_negative_commonality():
    # y = s + e; x1 = s + n; x2 = n: x2 alone explains nothing but removes x1's noise.
    rng = np.random.default_rng(3)
    s, n_, e = rng.normal(size=(3, 6000))
    y = s + e
    X = {"x1": (s + n_)[:, None], "x2": n_[:, None]}
    res = commonality_partition(X, y, LinearRegression(), cv=5, n_jobs=1, progress=False)
    # analytic: R²(x1) = 1/4, R²(x2) = 0, R²(x1, x2) = 1/2
    assert res.fractions["unique:x1"] == pytest.approx(0.5, abs=0.02)
    assert res.fractions["unique:x2"] == pytest.approx(0.25, abs=0.02)
    assert res.fractions["shared:x1+x2"] == pytest.approx(-0.25, abs=0.02)
    assert res.group_table().loc["x2", "shared_negative"] < -0.2


def test_k2_formulas_by_hand():
    r2 = {"ssl": 0.55, "climate": 0.30, "ssl+climate": 0.60}
    f = commonality_from_r2(r2, ["ssl", "climate"])
    assert f["unique:ssl"] == pytest.approx(0.60 - 0.30)
    assert f["unique:climate"] == pytest.approx(0.60 - 0.55)
    assert f["shared:ssl+climate"] == pytest.approx(0.55 + 0.30 - 0.60)


def test_k3_formulas_by_hand():
    # Nimon et al. 2008, three predictors
    r = {"a": 0.40, "b": 0.25, "c": 0.10, "a+b": 0.50, "a+c": 0.45, "b+c": 0.30, "a+b+c": 0.55}
    f = commonality_from_r2(r, ["a", "b", "c"])
    assert f["unique:a"] == pytest.approx(r["a+b+c"] - r["b+c"])
    assert f["unique:b"] == pytest.approx(r["a+b+c"] - r["a+c"])
    assert f["unique:c"] == pytest.approx(r["a+b+c"] - r["a+b"])
    assert f["shared:a+b"] == pytest.approx(r["a+c"] + r["b+c"] - r["c"] - r["a+b+c"])
    assert f["shared:a+c"] == pytest.approx(r["a+b"] + r["b+c"] - r["b"] - r["a+b+c"])
    assert f["shared:b+c"] == pytest.approx(r["a+b"] + r["a+c"] - r["a"] - r["a+b+c"])
    assert f["shared:a+b+c"] == pytest.approx(
        r["a"] + r["b"] + r["c"] - r["a+b"] - r["a+c"] - r["b+c"] + r["a+b+c"]
    )
    assert sum(f.values()) == pytest.approx(r["a+b+c"], abs=1e-12)
    # keys in any order / as frozensets give the same answer
    g = commonality_from_r2({frozenset(k.split("+")): v for k, v in r.items()}, ["a", "b", "c"])
    assert g == f
    with pytest.raises(ValueError, match="lacks the R²"):
        commonality_from_r2({"a": 0.1, "b": 0.2}, ["a", "b"])


def test_parallel_matches_serial_and_any_splitter_works():
    X, y = latent_study(600, seed=1)
    sites = np.repeat(np.arange(120), 5)
    one = commonality_partition(
        X, y, LinearRegression, GroupKFold(4), cv_groups=sites, n_jobs=1, progress=False
    )
    two = commonality_partition(
        X, y, LinearRegression, GroupKFold(4), cv_groups=sites, n_jobs=2, progress=False
    )
    assert one.fractions == pytest.approx(two.fractions, abs=1e-12)
    # overlapping test folds (repeated shuffle splits) fall back to the fold mean
    rep = commonality_partition(
        X,
        y,
        LinearRegression,
        ShuffleSplit(3, test_size=0.3, random_state=0),
        n_jobs=1,
        progress=False,
    )
    assert rep.scoring == "fold_mean"
    assert rep.subset_r2["A"] == pytest.approx(np.mean(rep.fold_r2["A"]))
    with pytest.raises(ValueError, match="disjoint"):
        commonality_partition(
            X,
            y,
            LinearRegression,
            ShuffleSplit(3, test_size=0.3, random_state=0),
            scoring="pooled",
            n_jobs=1,
            progress=False,
        )


def test_pipeline_factory_reduces_ssl_in_fold():
    rng = np.random.default_rng(2)
    n = 300
    latent = rng.normal(size=(n, 3))
    ssl = pd.DataFrame(
        latent @ rng.normal(size=(3, 1152)) + 0.1 * rng.normal(size=(n, 1152)),
        columns=[f"ssl_{i:04d}" for i in range(1152)],
    )
    clim = pd.DataFrame({"CHELSA_BIO_Annual_Mean_Temperature": latent[:, 0] + rng.normal(size=n)})
    y = latent.sum(axis=1) + 0.5 * rng.normal(size=n)
    res = commonality_partition(
        {"ssl": ssl, "climate": clim},
        y,
        lambda: make_pipeline(PatchReducer(n_components=5), LinearRegression()),
        cv=3,
        n_jobs=1,
        progress=False,
    )
    assert res.subset_r2["ssl"] > 0.85
    assert res.fractions["shared:ssl+climate"] > 0.05
    assert 0.9 < subsumed_share(res, by="ssl", group="climate") <= 1.05


def test_bad_input_errors():
    X, y = latent_study(50)
    with pytest.raises(ValueError, match="rows"):
        commonality_partition(X, y[:40], LinearRegression, n_jobs=1, progress=False)
    y_nan = y.copy()
    y_nan[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        commonality_partition(X, y_nan, LinearRegression, n_jobs=1, progress=False)
    with pytest.raises(ValueError, match="non-empty mapping"):
        commonality_partition({}, y, LinearRegression)
    with pytest.raises(ValueError, match="must be numeric"):
        commonality_partition(
            {"A": pd.DataFrame({"k": ["x"] * 50})}, y, LinearRegression, n_jobs=1, progress=False
        )


def test_plots_draw_every_part(latent_result):
    import matplotlib.pyplot as plt

    ax = plot_commonality(latent_result)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(
        latent_result.group_table().sort_values("r2_alone").index
    )
    ax2 = plot_commonality(latent_result, kind="fractions")
    assert len(ax2.get_yticklabels()) == 7
    with pytest.raises(ValueError, match="kind"):
        plot_commonality(latent_result, kind="pie")
    plt.close("all")
