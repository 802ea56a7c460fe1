"""The study-structure levers of the simulator (issue 15; benchmarks/campaign_structure.py).

Version 6 kept them at neutral values; version 7 shares the habitat focus
regionally and keeps plot groups in one land-cover class. They draw from their
own random stream, so switching one moves only what it is about: campaigns'
centres, their habitat focus, or which plots they keep.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fungi_ssl.data.coordinates import geodesic_pairs_within
from fungi_ssl.simulate import SimulatedStudy, StudyConfig
from fungi_ssl.simulate.landscape import OPEN_CODES, WOODLAND_CODES
from fungi_ssl.simulate.sampling import _overlapping_centres, _regional_focus, point_layers

BASE = StudyConfig(seed=3, n_samples=400, n_campaigns=12, years=(2018, 2022))
#: Columns a campaign draws from the main stream, whatever the study-structure levers.
OWN_DRAWS = ["continent", "radius_km", "year", "weight", "median_reads", "decimals"]


@pytest.mark.parametrize("change", [
    {"campaign_overlap_share": 1.0}, {"campaign_focus_regional_share": 0.0},
    {"campaign_focus_length_deg": 0.5}, {"campaign_other_class_acceptance": 0.0},
    {"plot_cluster_other_class_acceptance": 1.0}])
def test_a_lever_leaves_every_other_campaign_draw_alone(change):
    base = SimulatedStudy(BASE).campaigns
    other = SimulatedStudy(dataclasses.replace(BASE, **change)).campaigns
    assert other[OWN_DRAWS].equals(base[OWN_DRAWS])


def test_overlapping_campaigns_lie_in_an_earlier_campaigns_region():
    rng = np.random.default_rng(0)
    n = 60
    lon, lat = rng.uniform(5, 20, n), rng.uniform(45, 55, n)
    radius = rng.uniform(2, 40, n)
    continent = np.where(np.arange(n) % 3 == 0, "Asia", "Europe")
    new_lon, new_lat, host = _overlapping_centres(lon, lat, radius, continent, 1.0,
                                                  np.random.default_rng(1))
    first = {c: int(np.flatnonzero(continent == c)[0]) for c in ("Asia", "Europe")}
    for i in range(n):
        if i in first.values():
            assert host[i] == -1 and (new_lon[i], new_lat[i]) == (lon[i], lat[i])
            continue
        j = host[i]
        assert 0 <= j < i and continent[j] == continent[i]
        dx = (new_lon[i] - new_lon[j]) * 111.32 * np.cos(np.radians(new_lat[i]))
        dy = (new_lat[i] - new_lat[j]) * 111.32
        assert np.hypot(dx, dy) <= radius[j] * 1.01
    kept, _, none = _overlapping_centres(lon, lat, radius, continent, 0.0,
                                         np.random.default_rng(1))
    assert (none == -1).all() and np.array_equal(kept, lon)


def test_regional_focus_is_shared_nearby_and_keeps_the_shares():
    # a short length scale, so that 4,000 campaigns span many independent regions (at the
    # book's 4 degrees Europe holds few, and one draw's shares wander around the nominal ones)
    cfg = dataclasses.replace(BASE, campaign_focus_regional_share=1.0,
                              campaign_focus_length_deg=0.5,
                              campaign_focus_shares=(0.5, 0.2, 0.3))
    near = _regional_focus(np.linspace(10.0, 10.05, 50), np.full(50, 50.0),
                           np.full(50, "mixed"), cfg, np.random.default_rng(0))
    assert len(set(near.tolist())) == 1
    rng = np.random.default_rng(1)
    lon, lat = rng.uniform(-10, 30, 4000), rng.uniform(36, 66, 4000)
    focus = _regional_focus(lon, lat, np.full(4000, "mixed"), cfg, np.random.default_rng(2))
    shares = [float(np.mean(focus == f)) for f in ("forest", "mixed", "open")]
    assert np.allclose(shares, (0.5, 0.2, 0.3), atol=0.08), shares
    own = np.array(["open", "forest"] * 2000)
    same = _regional_focus(lon, lat, own, dataclasses.replace(cfg, campaign_focus_regional_share=0.0),
                           np.random.default_rng(2))
    assert np.array_equal(same, own)


def test_a_study_of_one_class_keeps_its_plots_in_that_class():
    cfg = dataclasses.replace(BASE, campaign_other_class_acceptance=0.0,
                              forest_campaign_open_acceptance=0.0,
                              open_campaign_woodland_acceptance=0.0)
    study = SimulatedStudy(cfg)
    camp = study.campaigns.set_index("campaign")
    plots = study.plots
    lc = point_layers(study.landscape, plots["true_longitude"], plots["true_latitude"],
                      plots["year"], ["landcover"])["landcover"]
    habitat = camp.loc[plots["campaign"], "habitat"].to_numpy()
    studied = habitat >= 0
    assert studied.sum() > 20
    assert np.array_equal(lc[studied], habitat[studied])
    assert set(camp.loc[camp["focus"] == "forest", "habitat"]) <= set(WOODLAND_CODES)
    assert set(camp.loc[camp["focus"] == "open", "habitat"]) <= set(OPEN_CODES)
    assert (camp.loc[camp["focus"] == "mixed", "habitat"] == -1).all()


def _same_class_share_of_close_pairs(cfg: StudyConfig) -> tuple[float, int]:
    """Share of a campaign's plot pairs under 300 m apart that lie in one land-cover class."""
    study = SimulatedStudy(cfg)
    plots = study.plots
    lc = point_layers(study.landscape, plots["true_longitude"], plots["true_latitude"],
                      plots["year"], ["landcover"])["landcover"]
    pairs = geodesic_pairs_within(plots["true_longitude"], plots["true_latitude"], 300.0)
    i, j = pairs[:, 0], pairs[:, 1]
    camp = plots["campaign"].to_numpy()
    close = camp[i] == camp[j]
    return float(np.mean(lc[i][close] == lc[j][close])), int(close.sum())


def test_plot_groups_keep_their_first_plots_class():
    cfg = dataclasses.replace(BASE, n_samples=900, n_campaigns=6, plot_cluster_share=0.9,
                              singleton_share=0.9, campaign_focus_shares=(0.0, 1.0, 0.0))
    kept, n_kept = _same_class_share_of_close_pairs(
        dataclasses.replace(cfg, plot_cluster_other_class_acceptance=0.0))
    free, n_free = _same_class_share_of_close_pairs(
        dataclasses.replace(cfg, plot_cluster_other_class_acceptance=1.0))
    assert min(n_kept, n_free) > 200
    assert kept > 0.9 and kept > free + 0.1, (kept, free)
