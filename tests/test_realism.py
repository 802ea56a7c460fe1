"""Realism statistics: one function for simulated and real tables, and the shipped summary."""

from __future__ import annotations

import json
import math
import zipfile

import numpy as np
import pandas as pd
import pytest

from fungi_ssl.data import realism

REAL_SHA256 = "7d304d56eb4ad7453208eb8871238bea8275c1a7bf13a54049416ae6cf8e4594"


def _table() -> pd.DataFrame:
    # site A (3 cores, log richness varies), site B (2 cores, equal), site C (1 core, zero),
    # one row without a value; coordinates recorded with 1, 2 and 5 decimals
    return pd.DataFrame({
        "sample_id": list("abcdefg"),
        "longitude": [6.1, 6.1, 6.1, 7.25, 7.25, 8.12345, 9.0],
        "latitude": [52.3, 52.3, 52.3, 50.55, 50.55, 49.54321, 48.0],
        "raw_obs_div": [3, 10, 30, 8, 8, 0, 5],
        "rarefied": [3.0, 9.0, 27.0, 8.0, 8.0, 0.0, np.nan],
    })


def test_statistics_by_hand():
    s = realism.sample_table_statistics(_table())
    assert list(s) == list(realism.STATISTICS)
    assert s["n_samples"] == 6 and s["n_sites"] == 3
    assert s["share_without_value"] == pytest.approx(1 / 7)
    assert s["samples_per_site_mean"] == pytest.approx(2.0) and s["samples_per_site_max"] == 3
    assert s["share_zero"] == pytest.approx(1 / 6)
    r = np.array([3.0, 9, 27, 8, 8, 0])
    assert s["rarefied_q50"] == pytest.approx(np.median(r))
    assert s["rarefied_q10"] == pytest.approx(np.quantile(r, 0.1))
    log_r = np.log1p(r)
    site_a = log_r[:3]
    within = np.sum((site_a - site_a.mean()) ** 2)  # sites B and C add nothing within
    assert s["within_site_share_log_variance"] == pytest.approx(
        within / np.sum((log_r - log_r.mean()) ** 2)
    )
    # raw and rarefied rank the same except the tie at site B: rho = 1
    assert s["spearman_raw_vs_rarefied"] == pytest.approx(1.0)
    # rarefied never exceeds raw_obs_div in this table
    assert s["share_rarefied_above_raw"] == 0.0
    # coordinates: site A one decimal (x3), site B two (x2), site C five
    assert s["share_coords_le1_decimals"] == pytest.approx(3 / 6)
    assert s["share_coords_le2_decimals"] == pytest.approx(5 / 6)


def test_rarefied_above_raw_share():
    t = _table().assign(raw_obs_div=[2, 10, 30, 5, 8, 0, 5])  # a and d exceed
    assert realism.sample_table_statistics(t)["share_rarefied_above_raw"] == pytest.approx(2 / 6)


def test_agreement_ranges():
    real = {"rarefied_q25": 10.0, "within_site_share_log_variance": 0.14}
    sim = {"rarefied_q25": 13.1, "within_site_share_log_variance": 0.19}
    a = realism.agreement(sim, real)
    assert a.loc["rarefied_q25", "high"] == pytest.approx(13.0)
    assert not a.loc["rarefied_q25", "matches"]
    assert a.loc["within_site_share_log_variance", "matches"]
    assert list(a.index) == ["rarefied_q25", "within_site_share_log_variance"]


def test_coarser_of_longitude_and_latitude_sets_precision():
    t = pd.DataFrame({"longitude": [6.1, 6.12345], "latitude": [52.12345, 52.1],
                      "rarefied": [1.0, 2.0]})
    assert realism.sample_table_statistics(t)["share_coords_le1_decimals"] == 1.0


def test_dropped_rows_counted_back_and_no_raw_column():
    t = _table().dropna(subset=["rarefied"]).drop(columns="raw_obs_div")
    t.attrs["n_dropped_na"] = 1
    s = realism.sample_table_statistics(t)
    assert s["share_without_value"] == pytest.approx(1 / 7)
    assert math.isnan(s["spearman_raw_vs_rarefied"])


def test_bad_tables_name_the_column():
    with pytest.raises(ValueError, match=r"my\.csv.*\['rarefied'\]"):
        realism.sample_table_statistics(_table().drop(columns="rarefied"), source="my.csv")
    bad = _table().astype({"latitude": object})
    bad.loc[2, "latitude"] = "north"
    with pytest.raises(ValueError, match="'latitude' must be numeric"):
        realism.sample_table_statistics(bad)
    with pytest.raises(ValueError, match="no row"):
        realism.sample_table_statistics(_table().assign(rarefied=np.nan))


def test_shipped_reference_without_data_dir(tmp_path):
    """Every build has the comparison: no data directory, or one without the table."""
    ref = realism.load_reference()
    prov = ref["provenance"]
    assert prov["source_file"] == realism.REFERENCE_TABLE
    assert prov["sha256"] == REAL_SHA256 and prov["sha256_matches_published"] is True
    assert prov["function"] == "fungi_ssl.realism.sample_table_statistics"
    assert "/" not in prov["command"].split()[-1]  # no machine path
    for data_dir in (None, "", tmp_path):
        stats, origin = realism.reference_statistics(data_dir)
        assert origin == "shipped"
        assert set(stats) == set(realism.STATISTICS)
        assert all(np.isfinite(v) for v in stats.values())
    # the real table's documented shape (shared/data/real/README.md, DESIGN.md)
    assert stats["n_samples"] == 8321 and stats["n_coordinates"] == 3650
    assert stats["n_sites"] == 3296  # 25 m linkage joins plots recorded metres apart
    assert stats["samples_per_site_max"] == 215
    assert 0.9 < stats["spearman_raw_vs_rarefied"] < 1.0


def test_reference_table_in_data_dir_is_used(tmp_path):
    _table().to_csv(tmp_path / realism.REFERENCE_TABLE, index=False)
    stats, origin = realism.reference_statistics(tmp_path)
    assert origin == "table" and stats["n_samples"] == 6


def test_reference_is_package_data(tmp_path):
    """The JSON is declared as package data, so a wheel carries it."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    # build from a copy, so that no build/ folder appears in the working tree
    root = Path(realism.__file__).resolve().parent.parent.parent
    src = tmp_path / "src"
    shutil.copytree(root / "fungi_ssl", src / "fungi_ssl",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path), str(src)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("*.whl")
    assert f"fungi_ssl/reference/{realism.REFERENCE_FILE}" in zipfile.ZipFile(wheel).namelist()


def test_shipped_reference_recomputed_from_real_table(real_data_dir):
    path = real_data_dir / realism.REFERENCE_TABLE
    if not path.is_file():
        pytest.skip(f"{path} not present")
    shipped = realism.load_reference()
    again = realism.compute_reference(path)
    assert again["provenance"]["sha256"] == shipped["provenance"]["sha256"]
    assert again["statistics"].keys() == shipped["statistics"].keys()
    for key, value in shipped["statistics"].items():
        assert again["statistics"][key] == pytest.approx(value, rel=1e-12), key
    assert json.loads(json.dumps(again))["descriptions"] == shipped["descriptions"]


def test_command_line_refuses_a_table_with_another_checksum(tmp_path, capsys):
    csv = tmp_path / realism.REFERENCE_TABLE
    _table().to_csv(csv, index=False)
    out = tmp_path / "summary.json"
    assert realism.main([str(csv), "--output", str(out)]) == 2
    assert "published sha256" in capsys.readouterr().err and not out.exists()


def test_chapter_00_does_not_need_the_shared_folder():
    """Chapter 00 takes the real column from reference_statistics (table or shipped), never
    from ../shared, so its results JSON has a realism block in any clone."""
    from pathlib import Path

    nb = json.loads((Path(__file__).resolve().parent.parent / "notebooks"
                     / "00_simulated_study.ipynb").read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert "realism.reference_statistics(data_dir)" in code
    assert "realism_report(" not in code and "../shared" not in code
