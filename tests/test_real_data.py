"""The real tables enter through the same interface as the simulated study.

These tests read ``../shared/data/real`` (or wherever ``--real-data`` points)
and never write to it.
"""

from __future__ import annotations

import hashlib

import numpy as np

from fungi_ssl.predictors.features import group_columns
from fungi_ssl.simulate.field_data import open_field_data


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_globalfungi_table_reads_and_is_untouched(real_data_dir):
    before = {p.name: _digest(p) for p in real_data_dir.glob("*.csv")}
    fd = open_field_data(real_data_dir, table="samples")
    s = fd.samples
    assert not fd.is_simulated
    assert len(s) > 8_000 and fd.n_sites > 1_000
    assert s["rarefied"].notna().all() and (s["rarefied"] >= 0).all()
    assert s["longitude"].between(-180, 180).all() and s["latitude"].between(-90, 90).all()
    # the table's NA targets are dropped and counted, not silently kept
    assert fd.n_dropped_na > 0
    assert {p.name: _digest(p) for p in real_data_dir.glob("*.csv")} == before


def test_spun_table_has_the_simulated_schema(real_data_dir):
    real = open_field_data(real_data_dir, table="covariates")
    sim = open_field_data(None, profile="quick", seed=0)
    for group in ("climate", "soil", "landcover"):
        assert group_columns(real.covariates.columns, group), group
        assert group_columns(sim.covariates.columns, group), group
    assert list(real.samples.columns[:5]) == list(sim.samples.columns[:5])
    assert np.isfinite(real.samples["rarefied"]).all()
