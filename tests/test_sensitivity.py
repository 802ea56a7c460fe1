"""Chapter 11's machinery: gains that give target variance shares, the grid of worlds, the
crossover; and chapter 00's 1 km skill against the SPUN figures."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from fungi_ssl.simulate import SimulatedStudy, richness_variance
from fungi_ssl.validation import sensitivity as sens


@pytest.fixture(scope="module")
def study() -> SimulatedStudy:
    return SimulatedStudy(n_samples=500, n_campaigns=12, seed=2)


@pytest.fixture(scope="module")
def variance(study) -> dict:
    return richness_variance(study, n_cells=120, seed=0)


@pytest.fixture(scope="module")
def frame(study) -> pd.DataFrame:
    """A predictor table whose fake SSL patch sees the visible part of the truth at the core."""
    s = study.samples.reset_index(drop=True)
    keep = s["rarefied"].notna().to_numpy()
    cov = study.covariates.reset_index(drop=True)
    from fungi_ssl.simulate.communities import COARSE_TERMS, INVISIBLE_TERMS, richness_terms

    terms = richness_terms(model=study.config.richness, **study._cores["inputs"])
    visible = sum(v for k, v in terms.items() if k not in COARSE_TERMS + INVISIBLE_TERMS)
    rng = np.random.default_rng(0)
    signal = np.repeat(visible[:, None], 9 * 128, axis=1) * rng.uniform(0.5, 1.5, 9 * 128)
    ssl = pd.DataFrame(signal + rng.normal(0, 0.5, signal.shape),
                       columns=[f"ssl_{i:04d}" for i in range(9 * 128)])
    return pd.concat([s, cov, ssl], axis=1)[keep].reset_index(drop=True)


def test_gains_reproduce_target_shares(variance):
    for below, inv in [(0.3, 0.1), (0.5, 0.3), (0.2, 0.0)]:
        gc, gi = sens.solve_gains(variance, below, inv)
        assert np.isfinite(gc), (below, inv)
        b, i = sens.shares_at(variance, gc, gi)
        assert abs(b - below) < 0.01 and abs(i - inv) < 0.01
    # with nothing invisible, the share below 1 km cannot exceed the visible terms' own
    visible_only = sens.shares_at(variance, 0.0, 0.0)[0]
    assert np.isnan(sens.solve_gains(variance, min(visible_only + 0.2, 0.99), 0.0)[0])
    with pytest.raises(ValueError, match="shares"):
        sens.solve_gains(variance, 1.2, 0.1)


def test_shares_match_a_study_with_scaled_richness(study, variance):
    """The quadratic form predicts what richness_variance measures on the rescaled world."""
    rm = sens.richness_with_gains(study.config.richness, 2.0, 0.5)
    other = richness_variance(SimulatedStudy(replace(study.config, richness=rm)), n_cells=120)
    b, i = sens.shares_at(variance, 2.0, 0.5)
    assert abs(b - other["share_below_1km"]) < 1e-6 and abs(i - other["invisible_share"]) < 1e-6


def test_grid_scores_every_feasible_setting_and_ssl_falls_with_invisible_share(
        study, frame, variance):
    # simulator v5 (issue 15) put the mosaic at 2 km, so fewer below-1 km shares are
    # reachable with nothing invisible: take the largest that is
    below = next(b for b in (0.5, 0.4, 0.3, 0.2)
                 if np.isfinite(sens.solve_gains(variance, b, 0.0)[0]))
    high = next(i for i in (0.6, 0.5, 0.4, 0.3)
                if np.isfinite(sens.solve_gains(variance, below, i)[0]))
    grid = {"below_1km": (below,), "invisible": (0.0, high)}
    res = sens.sensitivity_grid(frame, study, grid=grid, n_cells=120, n_components=8,
                                progress=False)
    assert list(res["setting"]) == ["study", "grid", "grid"]
    for col in ("r2_ssl", "r2_1km", "r2_all", "r2_ssl_random", "below_1km", "invisible",
                "sub_km_index"):
        assert res[col].notna().all(), col
    study_row = res.iloc[0]
    assert study_row["coarse_gain"] == 1.0 and study_row["invisible_gain"] == 1.0
    g = res[res["setting"] == "grid"].set_index("invisible_target")
    np.testing.assert_allclose(g["invisible"], [0.0, high], atol=0.01)
    # the fake patch sees only visible terms: hiding more of the truth costs it skill
    assert g.loc[0.0, "r2_ssl"] > g.loc[high, "r2_ssl"] + 0.1


def test_crossover_is_interpolated_on_rows_and_columns():
    g = pd.DataFrame({"setting": "grid",
                      "below_1km_target": [0.1, 0.5, 0.1, 0.5],
                      "invisible_target": [0.0, 0.0, 0.4, 0.4],
                      "r2_ssl": [0.2, 0.6, 0.1, 0.3], "r2_1km": [0.4, 0.2, 0.3, 0.1]})
    cross = sens.crossover(g)
    rows = [c for c in cross if c["along"] == "below_1km"]
    assert [round(c["below_1km"], 3) for c in rows] == [0.233, 0.3]
    # the interpolated R² is where the two lines meet
    assert rows[1]["r2"] == pytest.approx(0.2)
    assert sens.crossover(g.assign(r2_ssl=1.0)) == []      # ssl wins everywhere


def test_one_km_skill_loses_site_leakage_under_blocks():
    """Samples cluster at sites with a site effect the covariates identify: random folds
    reward it, 50 km blocks do not."""
    rng = np.random.default_rng(1)
    n_sites = 300
    lon, lat = rng.uniform(0, 10, n_sites), rng.uniform(45, 52, n_sites)
    effect = rng.normal(0, 1, n_sites)
    site = np.repeat(np.arange(n_sites), 4)
    t = pd.DataFrame({"longitude": lon[site], "latitude": lat[site],
                      "CHELSA_BIO_Annual_Mean_Temperature": 100 + 10 * rng.normal(size=n_sites)[site],
                      "SG_Soil_pH_H2O_005cm": 60 + 5 * rng.normal(size=n_sites)[site]})
    t["y"] = effect[site] + rng.normal(0, 0.3, len(site))
    skill = sens.one_km_skill(t, "y", sets=["climate", "soil"], n_estimators=100)
    assert (skill["random"] > 0.15).all() and (skill["blocks"] < 0.05).all(), skill


def test_spun_reference_is_shipped_with_provenance():
    skill, info = sens.spun_reference(None)
    assert info["origin"] == "shipped" and info["n_samples"] == 3478 and info["n_sites"] == 672
    assert info["provenance"]["function"] == "fungi_ssl.sensitivity.one_km_skill"
    # the figures (random 5-fold 0.73, 0.68, 0.58, 0.73), reproduced
    np.testing.assert_allclose(skill["random"], [0.73, 0.68, 0.58, 0.73], atol=0.015)
    assert (skill["blocks"] < skill["random"] - 0.5).all()


def test_spun_reference_from_the_table_matches_the_shipped_one(real_data_dir):
    skill, info = sens.spun_reference(real_data_dir)
    shipped, _ = sens.spun_reference(None)
    assert info["origin"] == "table"
    pd.testing.assert_frame_equal(skill, shipped, atol=1e-9)


def _grid_by_index() -> pd.DataFrame:
    # two rows of the grid (invisible 0.1 and 0.3); ssl wins above an index of ~0.5
    rows = []
    for inv, shift in ((0.1, 0.0), (0.3, 0.1)):
        for idx in (0.1, 0.3, 0.5, 0.7, 0.9):
            rows.append({"setting": "grid", "invisible_target": inv, "sub_km_index": idx,
                         "r2_ssl": 0.2 + 0.5 * (idx - 0.5 - shift), "r2_1km": 0.2})
    return pd.DataFrame(rows)


def test_predicted_winner_reads_every_row_at_the_interval():
    g = _grid_by_index()
    assert sens.predicted_winner(g, 0.2, [0.1, 0.3]) == "1km"
    assert sens.predicted_winner(g, 0.85, [0.8, 0.9]) == "ssl"
    # the interval straddles the crossing of the first row
    assert sens.predicted_winner(g, 0.5, [0.4, 0.6]) == "undecided"
    # between the rows' crossings the unknown invisible share decides: undecided
    assert sens.predicted_winner(g, 0.55, [0.54, 0.56]) == "undecided"
    cross = sens.index_crossover(g)
    assert [round(c["sub_km_index"], 2) for c in cross] == [0.5, 0.6]


def test_sensitivity_json_rows_carry_the_sub_km_index():
    g = _grid_by_index().assign(below_1km_target=0.3, coarse_gain=1.0, invisible_gain=1.0,
                                below_1km=0.3, invisible=0.1, r2_all=0.3, r2_ssl_random=0.6)
    out = sens.sensitivity_json(g)
    assert [e["sub_km_index"] for e in out["grid"]][:2] == [0.1, 0.3]
