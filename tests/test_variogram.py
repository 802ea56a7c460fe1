"""The semivariogram and the sub-km index on tables whose answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fungi_ssl.data import variogram


def _table(sub_km_sd: float, regional_sd: float, seed: int = 0, n_sites: int = 400) -> pd.DataFrame:
    """Plots of 3 cores, grouped 4 plots within a few hundred metres, groups spread over 30 km.

    Richness varies between groups (``regional_sd``), between plots of one group
    (``sub_km_sd``) and between cores of one plot (SD 0.3).
    """
    rng = np.random.default_rng(seed)
    n_groups = n_sites // 4
    g_lon = 10 + rng.uniform(0, 0.45, n_groups)
    g_lat = 52 + rng.uniform(0, 0.27, n_groups)
    g_val = rng.normal(3, regional_sd, n_groups)
    rows = []
    for g in range(n_groups):
        for _ in range(4):
            lon = g_lon[g] + rng.uniform(-0.004, 0.004)
            lat = g_lat[g] + rng.uniform(-0.0025, 0.0025)
            plot = g_val[g] + rng.normal(0, sub_km_sd)
            for _ in range(3):
                rows.append((lon, lat, np.expm1(plot + rng.normal(0, 0.3))))
    return pd.DataFrame(rows, columns=["longitude", "latitude", "rarefied"])


def test_index_tracks_how_much_varies_below_one_km():
    low = variogram.sub_km_index(_table(sub_km_sd=0.1, regional_sd=1.0))
    high = variogram.sub_km_index(_table(sub_km_sd=1.0, regional_sd=0.1))
    assert low < 0.4
    assert high > 0.8


def test_semivariogram_bands_count_every_pair_once():
    t = _table(0.5, 0.5, n_sites=80)
    pairs = variogram.sample_pairs(t, max_distance_m=1e9)
    assert pairs.i.size == len(t) * (len(t) - 1) // 2
    sv = variogram.semivariogram(t, bands=[(0, 1), (1, 1e9)])
    assert sv["pairs"].sum() == pairs.i.size
    # same-coordinate pairs: 3 cores per plot give 3 pairs per plot
    assert sv["pairs"].iloc[0] == 3 * 80


def test_interval_covers_and_narrows_with_more_data():
    small = variogram.sub_km_index_interval(_table(0.5, 0.8, n_sites=120), n_boot=300, block_km=10)
    big = variogram.sub_km_index_interval(_table(0.5, 0.8, n_sites=800), n_boot=300, block_km=10)
    for r in (small, big):
        lo, hi = r["ci"]
        assert lo <= r["index"] <= hi
    assert np.diff(big["ci"])[0] < np.diff(small["ci"])[0]


def test_interval_is_reproducible_and_checks_level():
    t = _table(0.5, 0.8, n_sites=120)
    a = variogram.sub_km_index_interval(t, n_boot=100, seed=3)
    b = variogram.sub_km_index_interval(t, n_boot=100, seed=3)
    assert a == b
    with pytest.raises(ValueError, match="level"):
        variogram.sub_km_index_interval(t, level=90)


def test_missing_column_is_named():
    with pytest.raises(ValueError, match="'latitude'"):
        variogram.semivariogram(pd.DataFrame({"longitude": [1.0], "rarefied": [2.0]}))


def test_real_table_matches_the_reference_figures(real_data_dir):
    t = pd.read_csv(real_data_dir / "globalfungi_ecm_richness_europe.csv")
    sv = variogram.semivariogram(t)
    # the figures the issue quotes (EPSG:3035 distances; ours are geodesic)
    expected = [0.16, 0.20, 0.23, 0.32, 0.53, 0.66, 0.67, 0.62, 0.82]
    assert np.allclose(sv["gamma_over_var"], expected, atol=0.01)
    assert variogram.sub_km_index(t) == pytest.approx(0.27, abs=0.01)
    assert variogram.share_at_busy_coordinates(t) == pytest.approx(0.149, abs=0.002)


def test_shipped_real_summary_has_bands_index_and_provenance():
    ref = variogram.load_variogram_reference()
    assert [b["band_m"] for b in ref["bands"]] == [list(b) for b in variogram.BANDS]
    assert all(b["pairs"] > 0 for b in ref["bands"])
    lo, hi = ref["sub_km_index_ci"]
    assert lo < ref["sub_km_index"] < hi
    assert 0.0 < ref["share_at_busy_coordinates"] < 1.0
    prov = ref["provenance"]
    assert prov["source_file"] == "globalfungi_ecm_richness_europe.csv"
    assert len(prov["sha256"]) == 64 and prov["sha256_matches_published"]
    # with no data directory the shipped summary is what the book reads
    same, origin = variogram.reference_variogram(None)
    assert origin == "shipped" and same["sub_km_index"] == ref["sub_km_index"]


def test_realism_variogram_comparison_lists_every_band():
    from fungi_ssl.data import realism

    out = realism.variogram_comparison(_table(0.5, 0.8, n_sites=120))
    assert out["origin"] == "shipped"
    rows = out["variogram"]
    assert len(rows) == len(variogram.BANDS)
    assert set(rows[0]) == {"band_m", "gamma_real", "gamma_simulated", "pairs_real",
                            "pairs_simulated"}
    assert rows[0]["pairs_simulated"] == 3 * 120


def test_real_summary_matches_the_table(real_data_dir):
    summary, origin = variogram.reference_variogram(real_data_dir)
    assert origin == "table"
    shipped = variogram.load_variogram_reference()
    for a, b in zip(summary["bands"], shipped["bands"]):
        assert a["pairs"] == b["pairs"]
        assert abs(a["gamma_over_var"] - b["gamma_over_var"]) < 1e-9


def test_inferred_studies_split_at_id_gaps_and_long_steps():
    t = pd.DataFrame({"sample_id": ["GF10", "GF11", "GF12", "GF40", "GF41", "S1"],
                      "longitude": [10.0, 10.01, 14.0, 10.0, 10.0, 10.0],
                      "latitude": [50.0] * 6})
    labels = variogram.inferred_studies(t)
    # GF10-GF11 one study; GF12 lies 290 km east; GF40 jumps the ids; S1 has its own prefix
    assert labels[0] == labels[1]
    assert len({labels[0], labels[2], labels[3], labels[5]}) == 4
    assert labels[3] == labels[4]


def test_study_split_tells_overlapping_studies_from_mixed_ones():
    rng = np.random.default_rng(1)
    lon = 10 + rng.uniform(0, 0.05, 400)
    lat = 52 + rng.uniform(0, 0.03, 400)
    study = np.repeat([0, 1], 200)
    # two overlapping studies, each homogeneous, at different levels
    overlap = pd.DataFrame({"longitude": lon, "latitude": lat,
                            "rarefied": np.expm1(np.where(study == 0, 2.0, 4.0)
                                                 + rng.normal(0, 0.2, 400))})
    rows = variogram.study_split(overlap, study)
    band = next(r for r in rows if r["band_m"] == [1000.0, 3000.0])
    assert 0.4 < band["share_between"] < 0.6
    assert band["gamma_within"] < 0.1
    assert band["gamma_between"] > 1.5
    # the same values with the labels shuffled: within and between look alike
    mixed = variogram.study_split(overlap, rng.permutation(study))
    band = next(r for r in mixed if r["band_m"] == [1000.0, 3000.0])
    assert abs(band["gamma_within"] - band["gamma_between"]) < 0.2


def test_shipped_study_split_matches_the_table(real_data_dir):
    shipped, origin = variogram.real_study_split(None)
    computed, origin_t = variogram.real_study_split(real_data_dir)
    assert (origin, origin_t) == ("shipped", "table")
    assert computed["n_studies"] == shipped["n_studies"]
    for a, b in zip(computed["bands"], shipped["bands"]):
        assert a["pairs"] == b["pairs"]
        assert abs(a["share_between"] - b["share_between"]) < 1e-9
