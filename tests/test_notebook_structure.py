"""The book reads as a book (issue 19 item 6): figure and table code hides behind a toggle,
the calls into fungi_ssl that are the method stay visible, and nothing prints stray warnings.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
DRAWS = re.compile(r"plt\.(subplots|figure)\(")
SKIP_TAGS = {"parameters", "injected-parameters", "remove-cell"}


def _fungi_names(nb) -> set[str]:
    names = set()
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        for m in re.finditer(r"^from fungi_ssl(?:\.\w+)* import \(?([^)]*?)\)?$", c.source, re.MULTILINE):
            names |= {p.strip().split(" as ")[-1] for p in m.group(1).split(",") if p.strip()}
    return names - {"plotting", "write_results", "chapter_guild"}


def _method_calls(src: str, names: set[str]) -> list[str]:
    """Calls into fungi_ssl other than drawing (plot_*) and private label helpers."""
    out = []
    for n in names:
        for m in re.finditer(rf"(?<![\w.]){re.escape(n)}(?:\.(\w+))?\s*\(", src):
            func = m.group(1) or n
            if not func.startswith(("plot", "_")):
                out.append(f"{n}.{func}" if m.group(1) else n)
    return out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_figure_code_hides_and_method_code_shows(path):
    nb = nbformat.read(path, as_version=4)
    names = _fungi_names(nb)
    assert names, f"{path.name} imports nothing from fungi_ssl"
    for i, c in enumerate(nb.cells):
        tags = set(c.metadata.get("tags", []))
        if c.cell_type != "code" or tags & SKIP_TAGS:
            continue
        calls = _method_calls(c.source, names)
        if calls:
            assert "hide-input" not in tags, f"{path.name} cell {i} is the method {calls}: visible"
        elif DRAWS.search(c.source):
            assert "hide-input" in tags, f"{path.name} cell {i} only draws a figure: hide-input"


def test_the_package_never_uses_tqdm_auto():
    """tqdm.auto warns 'IProgress not found' in every chapter when ipywidgets is absent."""
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "fungi_ssl").rglob("*.py")
                 if "tqdm.auto" in p.read_text()]
    assert not offenders
