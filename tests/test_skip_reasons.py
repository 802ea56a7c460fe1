"""A directory with only a GlobalFungi-style sample table (issue 12 item 1).

Every chapter decides with a package function whether it can run on what a
data directory holds; where it cannot, it shows one sentence at its top and
skips. These tests make such a directory (a small synthetic table in the
GlobalFungi schema) and check each decision, and that the chapters that can
run on a sample table alone do.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fungi_ssl.predictors.tables import predictor_table, table_kind, table_skip_reason
from fungi_ssl.region import workflow as region


@pytest.fixture
def only_samples(tmp_path):
    rng = np.random.default_rng(0)
    n = 60
    pd.DataFrame({
        "sample_id": [f"S{i:03d}" for i in range(n)],
        "longitude": np.repeat(rng.uniform(5, 15, n // 3), 3),
        "latitude": np.repeat(rng.uniform(45, 55, n // 3), 3),
        "raw_obs_div": rng.integers(0, 40, n),
        "rarefied": rng.gamma(2.0, 10.0, n).round(2),
    }).to_csv(tmp_path / "globalfungi_ecm_richness_europe.csv", index=False)
    return tmp_path


def _one_sentence(text: str | None) -> bool:
    return bool(text) and text.endswith(".") and text.count(". ") == 0


def test_predictor_chapters_say_why_they_skip(only_samples):
    """Chapters 03, 04 and 05 need the SPUN covariates or TESSERA tiles."""
    assert table_kind(only_samples) is None
    reason = table_skip_reason(only_samples)
    assert _one_sentence(reason) and "skipped" in reason
    assert _one_sentence(table_skip_reason(only_samples, covariates=True))
    with pytest.raises(FileNotFoundError, match="so it is skipped"):
        predictor_table(only_samples, with_ssl=False)
    # tiles beside the sample table: 04 and 05 can run on the patches, 03 (which compares
    # patches with the covariates) cannot
    (only_samples / "tessera").mkdir()
    assert table_kind(only_samples) == "samples"
    assert table_skip_reason(only_samples) is None
    assert "no covariate table" in table_skip_reason(only_samples, covariates=True)
    assert table_skip_reason(None) is None and table_skip_reason("") is None


def test_region_chapter_says_why_it_skips(only_samples):
    r = region.region_inputs(only_samples)
    assert _one_sentence(r.skip_reason) and "`tessera/`" in r.skip_reason


def test_real_data_chapter_runs_on_the_sample_table_alone(only_samples):
    """Chapter 09 describes the sample table and skips the CV that needs covariates."""
    from fungi_ssl.validation import cv_schemes as cs

    inputs = cs.chapter_inputs(only_samples)
    assert inputs.samples is not None and inputs.covariates is None


def test_field_data_chapter_reads_the_sample_table(only_samples):
    from fungi_ssl.simulate.field_data import open_field_data

    f = open_field_data(only_samples)
    assert len(f.samples) == 60 and f.samples["site_id"].nunique() == 20


@pytest.mark.slow
@pytest.mark.parametrize("nb, result", [("04_predictor_comparison", "04_predictor_comparison"),
                                        ("10_your_region", "10_region")])
def test_a_chapter_that_cannot_run_says_why_at_its_top(only_samples, tmp_path, nb, result):
    """One cheap papermill run per decision function: the sentence first, then nothing fails."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    out = tmp_path / f"{nb}.ipynb"
    proc = subprocess.run(
        [sys.executable, "-m", "papermill", str(repo / "notebooks" / f"{nb}.ipynb"), str(out),
         "-p", "profile", "quick", "-p", "results_dir", str(tmp_path / "results"),
         "-p", "data_dir", str(only_samples), "--cwd", str(repo / "notebooks"),
         "--no-progress-bar"],
        check=False, capture_output=True, text=True, timeout=600,
        env={**os.environ, "MPLBACKEND": "Agg"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    cells = json.loads(out.read_text())["cells"]
    shown = ["".join(o["data"]["text/markdown"]) for c in cells for o in c.get("outputs", [])
             if "text/markdown" in o.get("data", {})]
    assert shown and "so it is skipped" in shown[0] and _one_sentence(shown[0])
    assert len(shown) == 1  # nothing else is shown: the analysis cells were skipped
    written = json.loads((tmp_path / "results" / f"{result}.json").read_text())
    assert written["skipped"] == shown[0]


def test_bias_chapter_says_why_it_skips_in_its_own_words(only_samples):
    """Chapter 07's sentence names what chapter 07 does, not what the predictor chapters do."""
    from fungi_ssl.uncertainty.heldout import skip_reason

    reason = skip_reason(only_samples)
    assert _one_sentence(reason) and reason.startswith("This chapter checks the bias")
    assert reason != table_skip_reason(only_samples) and "models richness" not in reason
    few = skip_reason(None, n_rows=12)
    assert _one_sentence(few) and "only 12 samples" in few
    (only_samples / "tessera").mkdir()
    assert skip_reason(only_samples) is None and skip_reason(None) is None
