"""The world's semivariogram over seeds (issue 15): the same bands as chapter 00, cached, counted right."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fungi_ssl.core import config
from fungi_ssl.data import realism
from fungi_ssl.simulate import SimulatedStudy, field_data, seed_spread


@pytest.fixture()
def small_world(monkeypatch, tmp_path):
    """A study of 1,500 samples in place of the profile's, and a cache of its own."""
    monkeypatch.setattr(config, "CACHE_DIR", tmp_path)
    full = field_data.study_config

    def small(profile: str = "quick", seed: int = 0):
        return dataclasses.replace(full(profile, seed), n_samples=1_500, n_campaigns=60)

    monkeypatch.setattr(field_data, "study_config", small)
    return small


def test_each_seed_gives_chapter_00s_bands(small_world):
    out = seed_spread.variogram_over_seeds("quick", [0, 1])
    for k, seed in enumerate([0, 1]):
        s = SimulatedStudy(small_world("quick", seed)).samples
        europe = s[s["rarefied"].notna() & (s["continent"] == "Europe")]
        ch00 = realism.variogram_comparison(europe)["variogram"]
        got = [b["gamma_by_seed"][k] for b in out["bands"]]
        want = [r["gamma_simulated"] for r in ch00]
        np.testing.assert_allclose(np.array(got, float), np.array(want, float), equal_nan=True)
        assert [b["pairs_by_seed"][k] for b in out["bands"]] == [r["pairs_simulated"] for r in ch00]
        assert [b["gamma_real"] for b in out["bands"]] == [r["gamma_real"] for r in ch00]
    # two seeds draw two worlds
    assert out["bands"][-1]["gamma_by_seed"][0] != out["bands"][-1]["gamma_by_seed"][1]


def test_counts_and_largest_errors_follow_the_bound(small_world):
    out = seed_spread.variogram_over_seeds("quick", [0, 1, 2])
    errs = np.full((3, len(out["bands"])), np.nan)
    for b, band in enumerate(out["bands"]):
        g = np.array(band["gamma_by_seed"], float)
        judged = (np.array(band["pairs_by_seed"]) >= 50) & (band["pairs_real"] >= 50)
        err = np.abs(g - band["gamma_real"])
        assert band["seeds_within_bound"] == int(np.sum(~judged | (err <= seed_spread.BOUND)))
        assert band["gamma_min"] <= band["gamma_mean"] <= band["gamma_max"]
        assert band["gamma_sd"] == pytest.approx(float(np.nanstd(g, ddof=1)))
        errs[judged, b] = err[judged]
    np.testing.assert_allclose(out["largest_error_per_seed"], np.nanmax(errs, axis=1))


def test_chance_of_meeting_every_band_falls_with_the_spread_and_the_bands():
    def spread(sds, bound=0.08):
        return {"bound": bound, "bands": [{"judged": True, "gamma_sd": sd} for sd in sds]
                + [{"judged": False, "gamma_sd": 1.0}]}  # a band not judged does not count

    one = seed_spread.chance_one_draw_meets_every_band(spread([0.04]))
    assert one == pytest.approx(0.9545, abs=1e-3)  # two standard deviations
    assert seed_spread.chance_one_draw_meets_every_band(spread([0.04] * 3)) == pytest.approx(
        one ** 3)
    assert (seed_spread.chance_one_draw_meets_every_band(spread([0.1] * 9))
            < seed_spread.chance_one_draw_meets_every_band(spread([0.05] * 9)))
    assert np.isnan(seed_spread.chance_one_draw_meets_every_band({"bound": 0.08, "bands": []}))


def test_a_seed_is_drawn_once_then_read_from_the_cache(small_world, monkeypatch):
    first = seed_spread.variogram_over_seeds("quick", [4])

    def no_drawing(*args, **kwargs):
        raise AssertionError("drew the study again instead of reading the cache")

    monkeypatch.setattr("fungi_ssl.simulate.SimulatedStudy", no_drawing)
    assert seed_spread.variogram_over_seeds("quick", [4]) == first


def test_the_books_own_draw_is_read_from_the_study_a_chapter_cached(small_world, monkeypatch):
    """Chapter 00 has drawn (and cached) the book's seed before it draws the others: that
    draw is read back, not drawn again, and gives the same bands as drawing it."""
    assert field_data.cached_samples(small_world("quick", 3)) is None  # nothing cached yet
    assert not (config.CACHE_DIR / "study").exists()  # and looking made no entry
    drawn = seed_spread.seed_bands("quick", 3)
    study = SimulatedStudy(small_world("quick", 3))
    field_data._cached_tables(study)  # what a chapter's open_field_data leaves
    cached = field_data.cached_samples(small_world("quick", 3))
    assert cached is not None and cached.equals(study.samples)
    for path in config.CACHE_DIR.glob("variogram_seeds/*/bands.json"):
        path.unlink()

    def no_drawing(*args, **kwargs):
        raise AssertionError("drew the study again instead of reading the chapter's cache")

    monkeypatch.setattr("fungi_ssl.simulate.SimulatedStudy", no_drawing)
    assert seed_spread.seed_bands("quick", 3) == drawn
