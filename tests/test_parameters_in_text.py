"""The text follows every parameter (issue 16).

Each chapter of issue 16's part of the book (01–05 and 10) is run with papermill
on the quick profile with one parameter other than its default, and the
rendered text (markdown cells and every text output, the hidden parameter cells
left out) is searched for the default value as the text would write it. A
chapter that types a parameter's default instead of computing from the
parameter fails here. Results go to a temporary folder, never to book/results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

#: chapter, the parameter changed (papermill -y), what the default would read as in text,
#: and what the changed value must read as (so the check cannot pass on an empty chapter)
CASES = [
    ("01_field_data", {"profile": "quick"}, ["full profile", "profile full"], None),
    ("03_predictors", {"n_pcs": 6}, ["first 10 components"], "first 6 components"),
    ("04_predictor_comparison", {"block_km": 25.0}, ["50 km"], "25 km"),
    ("05_partition_shap", {"shap_samples": 500}, ["2,000 samples"], "500 samples"),
    ("10_your_region", {"years": [2019]}, ["2018, 2019", "2018–2021", "map_2018", " 2018 "],
     "for 2019"),
]


def rendered_text(path: Path) -> str:
    """Markdown cells and text outputs of an executed notebook, hidden cells left out."""
    nb = json.loads(path.read_text())
    parts = []
    for cell in nb["cells"]:
        tags = cell.get("metadata", {}).get("tags", [])
        if {"parameters", "injected-parameters", "remove-cell"} & set(tags):
            continue
        if cell["cell_type"] == "markdown":
            parts.append("".join(cell["source"]))
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            for kind in ("text/markdown", "text/plain", "text/html"):
                if kind in data and "image/png" not in data:
                    parts.append("".join(data[kind]))
            if out.get("name") == "stdout":
                parts.append("".join(out.get("text", "")))
    return "\n".join(parts)


@pytest.mark.slow
@pytest.mark.parametrize("chapter, params, defaults, expected", CASES,
                         ids=[c[0][:2] for c in CASES])
def test_a_chapter_run_with_another_parameter_never_states_the_default(
        tmp_path, chapter, params, defaults, expected):
    out = tmp_path / f"{chapter}.ipynb"
    args = [sys.executable, "-m", "papermill", str(REPO / "notebooks" / f"{chapter}.ipynb"),
            str(out), "-p", "profile", "quick", "-p", "results_dir", str(tmp_path / "results"),
            "--cwd", str(REPO / "notebooks"), "--no-progress-bar"]
    for name, value in params.items():
        args += ["-y", json.dumps({name: value})]
    proc = subprocess.run(args, capture_output=True, text=True, check=False, timeout=1800,
                          env={**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = rendered_text(out)
    for default in defaults:
        assert default not in text, f"{chapter} with {params} still says {default!r}"
    if expected:
        assert expected in text, f"{chapter} with {params} never says {expected!r}"
