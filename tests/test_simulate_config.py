"""Every simulator parameter does something.

Chapter 00 lists each field of :class:`~fungi_ssl.simulate.StudyConfig` and
:class:`~fungi_ssl.simulate.RichnessModel` with the reason for its value. A
field that the simulator never reads would be a false statement in that table
(issue 7: ``reads_sdlog`` was listed but unused, and the configured ``floor``
was ignored). This test changes one field at a time on a small study and
checks that the samples, the truth or the 1 km covariates change.

A field that cannot change those tables is listed in :data:`NO_EFFECT_ON_TABLES`
with the reason; the test also fails if a new field is added without a
perturbation or a listed reason, so the table cannot grow a dead parameter.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from fungi_ssl.simulate import RichnessModel, SimulatedStudy, StudyConfig

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
    "campaign_bias_sd": 0.6,
    "median_reads": 5_000.0,
    "reads_sdlog": 1.6,
    "rarefaction_depth": 2_000,
    "otu_pool": 800,
    "sad_sdlog": 2.4,
    "years": (2019, 2020),
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
    "decline_rate": 0.3,
    "drought_effect": -0.5,
}

#: Fields that cannot change the samples, truth or covariates, and why.
NO_EFFECT_ON_TABLES: dict[str, str] = {
    # ``richness`` is a record, not a value: each of its fields is checked on its own.
    "richness": "a RichnessModel record; its fields are perturbed one by one below",
}


def _tables(cfg: StudyConfig) -> dict[str, pd.DataFrame]:
    study = SimulatedStudy(cfg)
    return {"samples": study.samples, "truth": study.truth, "covariates": study.covariates}


@pytest.fixture(scope="module")
def base_tables() -> dict[str, pd.DataFrame]:
    return _tables(BASE)


def _differs(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> list[str]:
    """Names of the tables that differ between two studies."""
    out = []
    for name in a:
        x, y = a[name], b[name]
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
    richness_fields = {f.name for f in dataclasses.fields(RichnessModel)}
    assert study_fields == set(STUDY_CHANGES) | set(NO_EFFECT_ON_TABLES), (
        study_fields ^ (set(STUDY_CHANGES) | set(NO_EFFECT_ON_TABLES)))
    assert richness_fields == set(RICHNESS_CHANGES), richness_fields ^ set(RICHNESS_CHANGES)
    for name, value in {**STUDY_CHANGES}.items():
        assert value != getattr(BASE, name), name
    for name, value in RICHNESS_CHANGES.items():
        assert value != getattr(BASE.richness, name), name


@pytest.mark.parametrize("name", sorted(STUDY_CHANGES))
def test_study_field_changes_the_study(name, base_tables):
    changed = dataclasses.replace(BASE, **{name: STUDY_CHANGES[name]})
    assert _differs(base_tables, _tables(changed)), f"StudyConfig.{name} changes nothing"


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
