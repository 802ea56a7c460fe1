"""Every simulator parameter does something.

Chapter 00 lists each field of :class:`~fungi_ssl.simulate.StudyConfig` and of
its records (:class:`~fungi_ssl.simulate.LandscapeModel`,
:class:`~fungi_ssl.simulate.SensorModel`, :class:`~fungi_ssl.simulate.RichnessModel`)
with the reason for its value. A field that the simulator never reads would be
a false statement in that table (issue 7: ``reads_sdlog`` was listed but
unused, and the configured ``floor`` was ignored). This test changes one field
at a time on a small study and checks that the samples, the truth or the 1 km
covariates change.

A field that cannot change those tables is listed in :data:`NO_EFFECT_ON_TABLES`
with the reason, and checked on what it does change (the Sentinel-2 series).
The test also fails if a new field is added without a perturbation, so the
table cannot grow a dead parameter.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from fungi_ssl.simulate import (
    LandscapeModel,
    RichnessModel,
    SensorModel,
    SimulatedStudy,
    StudyConfig,
)

#: The small study every field is perturbed on. Its years are the two
#: drought years, both after 2017, so the drought and decline terms act.
BASE = StudyConfig(seed=1, n_samples=90, n_campaigns=6, years=(2018, 2022))

#: A changed value for each field (chosen far enough from the default that
#: the change shows in a 90-sample study).
STUDY_CHANGES: dict[str, object] = {
    "seed": 2,
    "n_samples": 120,
    "n_campaigns": 9,
    "mean_cores_per_site": 4.0,
    "singleton_share": 0.2,
    "max_cores_per_site": 2,
    "core_spread_px": 6,
    "core_sd": 0.8,
    "campaign_bias_sd": 0.9,
    "campaign_bias_regional_share": 0.1,
    "site_size_sdlog": 0.3,
    "plot_cluster_share": 0.0,
    "plot_cluster_radius_m": 50.0,
    "plot_cluster_other_class_acceptance": 1.0,
    "campaign_focus_shares": (0.0, 0.0, 1.0),
    "forest_campaign_open_acceptance": 1.0,
    "open_campaign_woodland_acceptance": 1.0,
    "campaign_other_class_acceptance": 0.0,
    "campaign_focus_regional_share": 0.0,
    "campaign_focus_length_deg": 0.05,
    "campaign_overlap_share": 1.0,
    "campaign_radius_km": 60.0,
    "campaign_radius_sdlog": 0.1,
    "median_reads": 5_000.0,
    "reads_sdlog": 1.6,
    "rarefaction_depth": 2_000,
    "otu_pool": 40,   # caps the species a core can hold (and names the OTUs)
    "sad_sdlog": 2.4,
    "years": (2019, 2020),
    "coordinate_decimals": (0.5, 0.5, 0.0, 0.0, 0.0, 0.0),
    "ecm_read_share": 0.6,
}

LANDSCAPE_CHANGES: dict[str, object] = {
    "stand_area_median_ha": 12.0,
    "stand_area_sdlog": 0.2,
    "mosaic_length_m": 200.0,
    "patch_length_m": 60.0,
    "forest_propensity_weight": 2.0,
    "geology_ph_sd": 1.5,
    "geology_length_m": 200.0,
}

SENSOR_CHANGES: dict[str, object] = {
    "host_phenology_days": 20.0,
    "host_nir_gain": 0.2,
    "phenology_weather_sd": 0.0,
    "temperature_error_sd": 2.0,
    "precipitation_error_sdlog": 0.5,
    "soil_ph_error_sd": 1.0,
    "soil_soc_error_sdlog": 1.0,
    "sand_error_sd": 20.0,
    "covariate_error_km": 5.0,
    "covariate_error_correlated_share": 0.1,
    "landcover_accuracy": 0.5,
    "spun_columns": False,
}

RICHNESS_CHANGES: dict[str, object] = {
    "s_max": 250.0,
    "floor": 0.15,
    "host_exponent": 1.5,
    "age_floor": 0.1,
    "age_scale": 80.0,
    "continuity": 0.9,
    "ph_optimum": 6.0,
    "ph_width": 0.7,
    "ph_curvature": 1.2,
    "temp_optimum": 11.0,
    "temp_width": 2.5,
    "temp_curvature": 0.8,
    "precip_slope": 0.4,
    "nitrogen_slope": 0.05,
    "regional_sd": 0.6,
    "fine_sd": 0.8,
    "hidden_host_sd": 1.2,
    "fine_nitrogen_sd": 0.9,
    "decline_rate": 0.3,
    "drought_effect": -0.5,
}

#: Fields that are records, not values: each of their fields is checked on its own.
RECORDS = {"landscape": LANDSCAPE_CHANGES, "sensors": SENSOR_CHANGES,
           "richness": RICHNESS_CHANGES}

#: Fields that cannot change the samples, truth or covariates, and why. They
#: are checked on what they do change: the Sentinel-2 time series.
NO_EFFECT_ON_TABLES: dict[str, str] = {
    "host_phenology_days": "changes only the Sentinel-2 phenology of broadleaf canopies",
    "host_nir_gain": "changes only the Sentinel-2 NIR brightness of broadleaf canopies",
    "phenology_weather_sd": "changes only the Sentinel-2 timing of green-up",
}


def _tables(cfg: StudyConfig) -> dict[str, pd.DataFrame]:
    study = SimulatedStudy(cfg)
    return {"samples": study.samples, "truth": study.truth, "covariates": study.covariates}


def _s2(cfg: StudyConfig) -> np.ndarray:
    """Sentinel-2 series of the 3 x 3 patches of the first sites (woodland and open land)."""
    study = SimulatedStudy(cfg)
    arrays, _ = study.site_patch_series(k=3)
    return arrays["s2"]


@pytest.fixture(scope="module")
def base_tables() -> dict[str, pd.DataFrame]:
    return _tables(BASE)


def _differs(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> list[str]:
    """Names of the tables that differ between two studies."""
    out = []
    for name, x in a.items():
        y = b[name]
        if x.shape != y.shape or not x.columns.equals(y.columns):
            out.append(name)
            continue
        try:
            pd.testing.assert_frame_equal(x.reset_index(drop=True), y.reset_index(drop=True))
        except AssertionError:
            out.append(name)
    return out


def test_every_field_is_perturbed_or_explained():
    study_fields = {f.name for f in dataclasses.fields(StudyConfig)}
    assert study_fields == set(STUDY_CHANGES) | set(RECORDS), (
        study_fields ^ (set(STUDY_CHANGES) | set(RECORDS)))
    for name, value in STUDY_CHANGES.items():
        assert value != getattr(BASE, name), name
    for record, changes in RECORDS.items():
        names = {f.name for f in dataclasses.fields(getattr(BASE, record))}
        assert names == set(changes), (record, names ^ set(changes))
        for name, value in changes.items():
            assert value != getattr(getattr(BASE, record), name), name
    assert set(NO_EFFECT_ON_TABLES) <= set(SENSOR_CHANGES)
    assert {LandscapeModel, SensorModel, RichnessModel} == {
        type(getattr(BASE, r)) for r in RECORDS}


@pytest.mark.parametrize("name", sorted(STUDY_CHANGES))
def test_study_field_changes_the_study(name, base_tables):
    changed = dataclasses.replace(BASE, **{name: STUDY_CHANGES[name]})
    assert _differs(base_tables, _tables(changed)), f"StudyConfig.{name} changes nothing"


@pytest.mark.parametrize("name", sorted(LANDSCAPE_CHANGES))
def test_landscape_field_changes_the_study(name, base_tables):
    rec = dataclasses.replace(BASE.landscape, **{name: LANDSCAPE_CHANGES[name]})
    assert _differs(base_tables, _tables(dataclasses.replace(BASE, landscape=rec))), name


@pytest.mark.parametrize("name", sorted(set(SENSOR_CHANGES) - set(NO_EFFECT_ON_TABLES)))
def test_sensor_field_changes_the_covariates(name, base_tables):
    rec = dataclasses.replace(BASE.sensors, **{name: SENSOR_CHANGES[name]})
    differ = _differs(base_tables, _tables(dataclasses.replace(BASE, sensors=rec)))
    assert differ == ["covariates"], (name, differ)


@pytest.mark.parametrize("name", sorted(NO_EFFECT_ON_TABLES))
def test_sensor_field_changes_the_satellite_series(name):
    small = dataclasses.replace(BASE, n_samples=12, n_campaigns=2)
    rec = dataclasses.replace(small.sensors, **{name: SENSOR_CHANGES[name]})
    assert not np.array_equal(_s2(small), _s2(dataclasses.replace(small, sensors=rec))), name


@pytest.mark.parametrize("name", sorted(RICHNESS_CHANGES))
def test_richness_field_changes_the_truth_and_samples(name, base_tables):
    rm = dataclasses.replace(BASE.richness, **{name: RICHNESS_CHANGES[name]})
    other = _tables(dataclasses.replace(BASE, richness=rm))
    differ = _differs(base_tables, other)
    assert "truth" in differ, f"RichnessModel.{name} does not change the true richness"
    # the richness model never moves a site or a covariate: only what depends on richness
    assert "covariates" not in differ
    np.testing.assert_array_equal(base_tables["samples"]["longitude"],
                                  other["samples"]["longitude"])
