"""Another guild by parameters alone (issue 12 item 5).

A simulated arbuscular-mycorrhizal (AM) sample table in the GlobalFungi schema
is written into a temporary directory, with TESSERA tiles of its region in
geotessera's layout (``tessera/``). Its AM richness sits in the column
``am_rarefied`` and depends on the embedding at each plot; the ``rarefied``
column holds another guild's numbers, so a chapter that read the wrong column
would show it. Chapters 01, 04, 05 and 10 run on it with ``guild="AM"`` and
``target="am_rarefied"`` and nothing else changed but the CV block size and
the run's size; their results and text speak of AM.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fungi_ssl.embeddings import tessera_patches
from fungi_ssl.region import workflow as region

REPO = Path(__file__).resolve().parent.parent
BBOX = (-3.7025, 57.0800, -3.6980, 57.0827)
YEAR = 2019
N = 240


def make_am_directory(root: Path) -> Path:
    """Tiles of the simulated region and an AM sample table whose richness follows them."""
    import torch

    from fungi_ssl.embeddings.encoder import EncoderConfig, TesseraEncoder, TrainedEncoder
    from fungi_ssl.simulate import SimulatedStudy

    torch.manual_seed(0)
    enc = TesseraEncoder(EncoderConfig()).eval()
    trained = TrainedEncoder(enc, enc.config, enc.normaliser)
    region.write_simulated_tiles(SimulatedStudy(), trained, BBOX, [YEAR], root / "tessera",
                                 progress=False)
    rng = np.random.default_rng(0)
    n_sites = N // 4
    lon = np.repeat(rng.uniform(BBOX[0] + 2e-4, BBOX[2] - 2e-4, n_sites), 4)
    lat = np.repeat(rng.uniform(BBOX[1] + 2e-4, BBOX[3] - 2e-4, n_sites), 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = tessera_patches.sample_patches(root / "tessera", YEAR, lon, lat, k=3, progress=False).values
    centre = p[:, 1, 1, :]
    z = (centre - centre.mean(0)) @ np.linalg.svd(centre - centre.mean(0), full_matrices=False)[2][0]
    z = (z - z.mean()) / z.std()
    am = np.round(np.expm1(2.5 + 0.5 * z + rng.normal(0, 0.15, N)), 2)
    pd.DataFrame({
        "sample_id": [f"AM{i:04d}" for i in range(N)],
        "longitude": np.round(lon, 7), "latitude": np.round(lat, 7),
        "raw_obs_div": np.round(am * 1.3),
        "rarefied": np.full(N, 500.0),  # another guild's column: never the target here
        "am_rarefied": am,
        "year": YEAR,
    }).to_csv(root / "samples.csv", index=False)
    return root


@pytest.fixture(scope="module")
def am_dir(tmp_path_factory) -> Path:
    return make_am_directory(tmp_path_factory.mktemp("am"))


def test_the_am_table_reads_its_own_target(am_dir):
    from fungi_ssl.predictors.tables import predictor_table, table_kind

    assert table_kind(am_dir) == "samples"
    t = predictor_table(am_dir, target="am_rarefied", progress=False)
    am = pd.read_csv(am_dir / "samples.csv")["am_rarefied"].to_numpy()
    np.testing.assert_allclose(t.frame["rarefied"], am)
    assert t.has_ssl and len(t.ssl_columns) == 9 * 128
    assert np.isfinite(t.frame[t.ssl_columns].to_numpy()).all()
    assert t.frame.attrs["ssl_notes"]["n_complete_patch"] == N


def _papermill(nb: str, out: Path, params: dict, data_dir: Path) -> Path:
    results = out / "results"
    args = [sys.executable, "-m", "papermill", str(REPO / "notebooks" / nb), str(out / nb),
            "-p", "profile", "quick", "-p", "results_dir", str(results),
            "-p", "data_dir", str(data_dir), "-p", "guild", "AM", "-p", "target", "am_rarefied",
            "--cwd", str(REPO / "notebooks"), "--no-progress-bar"]
    for k, v in params.items():
        args += ["-y", json.dumps({k: v})]
    proc = subprocess.run(args, check=False, capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "MPLBACKEND": "Agg"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return results


def _markdown_outputs(path: Path) -> str:
    nb = json.loads(path.read_text())
    return "\n".join(
        "".join(o.get("data", {}).get("text/markdown", ""))
        for c in nb["cells"] for o in c.get("outputs", [])
    )


@pytest.mark.slow
def test_chapter_01_speaks_of_am(am_dir, tmp_path):
    res = _papermill("01_field_data.ipynb", tmp_path, {}, am_dir)
    summary = json.loads((res / "01_field_data.json").read_text())
    assert summary["guild"] == "AM" and summary["target"] == "am_rarefied"
    text = _markdown_outputs(tmp_path / "01_field_data.ipynb")
    assert "rarefied am richness" in text.lower()
    assert "ECM" not in text


@pytest.mark.slow
def test_chapter_10_maps_am_richness(am_dir, tmp_path):
    res = _papermill("10_your_region.ipynb", tmp_path,
                     {"bbox": list(BBOX), "years": [YEAR], "model_type": "ridge",
                      "output_dir": str(tmp_path / "maps")}, am_dir)
    out = json.loads((res / "10_region.json").read_text())
    assert out["guild"] == "AM" and out["units"] == "rarefied AM richness"
    assert out["grid"]["covers_bbox"] and not out["simulated"]
    assert out["model"]["n_samples"] == N
    import rasterio

    with rasterio.open(tmp_path / "maps" / f"map_{YEAR}.tif") as src:
        assert src.tags()["units"] == "rarefied AM richness"
        values = src.read(1)
    am = pd.read_csv(am_dir / "samples.csv")["am_rarefied"]
    # the map is on the AM scale, not the 500 of the other column
    assert np.nanmedian(values) < 5 * am.median()


@pytest.mark.slow
@pytest.mark.parametrize("nb, result", [("04_predictor_comparison.ipynb", "04_predictor_comparison"),
                                        ("05_partition_shap.ipynb", "05_partition_shap")])
def test_chapters_04_and_05_model_am_richness(am_dir, tmp_path, nb, result):
    """Both run on the patches alone (no 1 km covariates here); 50 km CV blocks would put the
    whole region in one block, so the block side is a parameter too."""
    params = {"block_km": 0.1} if nb.startswith("04") else {}
    res = _papermill(nb, tmp_path, params, am_dir)
    out = json.loads((res / f"{result}.json").read_text())
    assert "skipped" not in out
    text = _markdown_outputs(tmp_path / nb)
    assert "rarefied AM richness" in text and "ECM" not in text
    if nb.startswith("04"):
        # the patches carry the AM signal the table was made with
        r2 = out["random"]["ssl"]
        assert max(v["r2_mean"] for v in r2.values()) > 0.3


@pytest.mark.slow
def test_chapter_03_says_it_needs_covariates(am_dir, tmp_path):
    res = _papermill("03_predictors.ipynb", tmp_path, {}, am_dir)
    out = json.loads((res / "03_predictors.json").read_text())
    assert "no covariate table" in out["skipped"] and out["guild"] == "AM"


def test_make_book_and_fungi_ssl_book_pass_the_guild(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from fungi_ssl import cli
    from fungi_ssl.book import notebooks as booknb
    from fungi_ssl.book import runner as bookrun

    calls = []
    monkeypatch.setattr(bookrun, "run_book", lambda **kw: calls.append(kw) or [])
    res = CliRunner().invoke(cli.app, ["book", "--data", str(tmp_path), "--guild", "AM",
                                       "--target", "am_rarefied", "--no-html", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert calls[0]["guild"] == "AM" and calls[0]["target"] == "am_rarefied"
    # injected only into notebooks that declare them, and only when given
    declared = {"profile": "'full'", "guild": "'ECM'", "target": "'rarefied'"}
    kw = {"profile": "quick", "seed": 0, "data_dir": tmp_path, "results_dir": tmp_path}
    assert booknb.notebook_parameters(declared, **kw, guild="AM")["guild"] == "AM"
    assert "guild" not in booknb.notebook_parameters(declared, **kw)
    assert "guild" not in booknb.notebook_parameters({"profile": "'full'"}, **kw, guild="AM")
    make = subprocess.run(["make", "-n", "notebooks", "GUILD=AM", "TARGET=am_rarefied"], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout
    assert "--guild AM --target am_rarefied" in make
    args = bookrun.build_parser().parse_args(["--guild", "AM", "--target", "am_rarefied"])
    assert (args.guild, args.target) == ("AM", "am_rarefied")
    for nb in ("01_field_data", "03_predictors", "04_predictor_comparison", "05_partition_shap",
               "10_your_region"):
        assert {"guild", "target"} <= set(booknb.declared_parameters(
            REPO / "notebooks" / f"{nb}.ipynb")), nb
