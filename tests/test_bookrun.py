"""Tests for the notebook runner: parameters, ordering, failure reports, results files."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from fungi_ssl import bookrun


def _notebook(path: Path, parameters: str | None, *cells: str) -> Path:
    """Write a small notebook; ``parameters`` becomes the tagged parameters cell."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells.append(nbformat.v4.new_markdown_cell(f"# {path.stem}"))
    if parameters is not None:
        cell = nbformat.v4.new_code_cell(parameters)
        cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    nb.cells.extend(nbformat.v4.new_code_cell(c) for c in cells)
    nbformat.write(nb, str(path))
    return path


@pytest.fixture
def book_dirs(tmp_path: Path) -> tuple[Path, Path]:
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    return notebooks, tmp_path / "book"


def _outputs_text(path: Path) -> str:
    nb = nbformat.read(str(path), as_version=4)
    return "".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
    )


# ---------------------------------------------------------------- pure functions


def test_notebook_parameters_injects_only_declared_names():
    declared = {"profile": "'quick'", "results_dir": "''"}
    got = bookrun.notebook_parameters(
        declared, profile="full", seed=7, data_dir=None, results_dir="/tmp/r"
    )
    assert got == {"profile": "full", "results_dir": str(Path("/tmp/r").resolve())}


def test_notebook_parameters_data_dir_default_follows_notebook(tmp_path):
    as_none = bookrun.notebook_parameters(
        {"data_dir": "None"}, profile="quick", seed=0, data_dir=None, results_dir=tmp_path
    )
    as_str = bookrun.notebook_parameters(
        {"data_dir": '""'}, profile="quick", seed=0, data_dir="", results_dir=tmp_path
    )
    real = bookrun.notebook_parameters(
        {"data_dir": "None"}, profile="quick", seed=0, data_dir=tmp_path, results_dir=tmp_path
    )
    assert as_none == {"data_dir": None}
    assert as_str == {"data_dir": ""}
    assert real == {"data_dir": str(tmp_path.resolve())}


def test_find_notebooks_orders_and_filters(book_dirs):
    notebooks, _ = book_dirs
    for name in ["02_b", "00_a", "10_c", "draft", "1_bad"]:
        (notebooks / f"{name}.ipynb").write_text("{}")
    assert [p.stem for p in bookrun.find_notebooks(notebooks)] == ["00_a", "02_b", "10_c"]
    assert [p.stem for p in bookrun.find_notebooks(notebooks, ["02"])] == ["02_b"]
    assert [p.stem for p in bookrun.find_notebooks(notebooks, ["10_c", "00"])] == ["00_a", "10_c"]
    with pytest.raises(ValueError, match="--only 05"):
        bookrun.find_notebooks(notebooks, ["05"])


def test_write_results_converts_numpy_and_nan(tmp_path):
    payload = {
        "z": np.float32(0.25),
        "a": {"n": np.int64(12), "ok": np.bool_(True)},
        "values": np.array([1.5, np.nan, -np.inf]),
        "table": pd.DataFrame({"set": ["ssl", "climate"], "r2": [0.55, np.nan]}),
        "missing": float("nan"),
    }
    path = bookrun.write_results("04_comparison", payload, tmp_path)
    assert path == tmp_path / "04_comparison.json"
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert list(json.loads(text)) == sorted(payload)  # keys sorted
    assert text.startswith('{\n  "a"')  # indent 2
    back = bookrun.read_results("04_comparison", tmp_path)
    assert back["a"] == {"n": 12, "ok": True}
    assert math.isclose(back["z"], 0.25)
    assert back["values"] == [1.5, None, None]
    assert back["table"] == [{"set": "ssl", "r2": 0.55}, {"set": "climate", "r2": None}]
    assert back["missing"] is None
    assert payload["values"][1] != payload["values"][1]  # input left untouched (still NaN)


def test_results_names_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="two digits"):
        bookrun.write_results("field_data", {"a": 1}, tmp_path)
    with pytest.raises(TypeError, match="mapping"):
        bookrun.write_results("01_x", [1, 2], tmp_path)
    with pytest.raises(ValueError, match="object"):
        bookrun.write_results("01_x", {"a": object()}, tmp_path)
    with pytest.raises(FileNotFoundError, match="03_predictors.json"):
        bookrun.read_results("03_predictors", tmp_path)


def test_missing_data_dir_is_a_clear_error(book_dirs, capsys):
    notebooks, book = book_dirs
    _notebook(notebooks / "00_a.ipynb", "profile = 'quick'", "pass")
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        bookrun.run_book(
            data_dir="/no_such_dir", notebook_dir=notebooks, output_dir=book, progress=False
        )
    code = bookrun.main(
        ["--data", "/no_such_dir", "--notebooks", str(notebooks), "--output", str(book)]
    )
    assert code == 2
    assert "--data /no_such_dir" in capsys.readouterr().err


# ---------------------------------------------------------------- running notebooks


def test_run_book_injects_parameters_and_writes_summary(book_dirs, capsys, monkeypatch):
    notebooks, book = book_dirs
    monkeypatch.setenv("MPLBACKEND", "Agg")  # as on a CI machine: must not drop the book's figures
    _notebook(
        notebooks / "00_sim.ipynb",
        "profile = 'quick'\nseed = 0\ndata_dir = None\nresults_dir = ''",
        "import matplotlib, matplotlib.pyplot as plt\n"
        "print('PARAMS', profile, seed, repr(data_dir), matplotlib.get_backend())\n"
        "fig, ax = plt.subplots()\nax.plot([0, 1])\nplt.show()",
        "from fungi_ssl.bookrun import write_results\n"
        "write_results('00_sim', {'seed': seed, 'profile': profile}, results_dir)",
    )
    # declares only `profile`: seed/data_dir/results_dir must not be injected
    _notebook(
        notebooks / "01_field.ipynb", "profile = 'quick'", "print('HAS_SEED', 'seed' in dir())"
    )
    code = bookrun.main(
        [
            "--profile",
            "full",
            "--seed",
            "5",
            "--notebooks",
            str(notebooks),
            "--output",
            str(book),
            "--no-progress",
        ]
    )
    assert code == 0
    assert f"PARAMS full 5 None {bookrun.KERNEL_MPLBACKEND}" in _outputs_text(book / "00_sim.ipynb")
    executed = nbformat.read(str(book / "00_sim.ipynb"), as_version=4)
    mimetypes = {
        k
        for c in executed.cells
        if c.cell_type == "code"
        for o in c.outputs
        for k in o.get("data", {})
    }
    assert "image/png" in mimetypes  # headless, yet the figure reaches the book
    tags = {tuple(c.metadata.get("tags", [])) for c in executed.cells}
    assert ("parameters", "remove-cell") in tags  # defaults hidden in the book
    assert ("injected-parameters",) in tags  # the values used stay visible
    assert os.environ["MPLBACKEND"] == "Agg"  # the caller's environment is restored
    assert "HAS_SEED False" in _outputs_text(book / "01_field.ipynb")
    assert bookrun.read_results("00_sim", book / "results") == {"profile": "full", "seed": 5}
    summary = json.loads((book / "results" / "run_summary.json").read_text())
    assert [e["notebook"] for e in summary["notebooks"]] == ["00_sim", "01_field"]
    assert all(
        e["profile"] == "full" and e["seconds"] > 0 and e["status"] == "ok"
        for e in summary["notebooks"]
    )
    table = capsys.readouterr().out
    assert "00_sim" in table and "01_field" in table and "total" in table

    # --only re-runs one chapter and keeps the other's summary entry
    assert (
        bookrun.main(
            ["--only", "01", "--notebooks", str(notebooks), "--output", str(book), "--no-progress"]
        )
        == 0
    )
    summary = json.loads((book / "results" / "run_summary.json").read_text())
    by_name = {e["notebook"]: e for e in summary["notebooks"]}
    assert by_name["00_sim"]["profile"] == "full" and by_name["01_field"]["profile"] == "quick"


def test_failing_notebook_reports_cell_and_stops(book_dirs, capsys):
    notebooks, book = book_dirs
    _notebook(notebooks / "00_ok.ipynb", "seed = 0", "x = 1")
    _notebook(
        notebooks / "01_broken.ipynb",
        "seed = 0",
        "y = 2",
        "# fit the richness model\nraise ValueError('column rarefied is missing')",
        "print('never')",
    )
    _notebook(notebooks / "02_later.ipynb", "seed = 0", "print('later')")

    with pytest.raises(bookrun.NotebookFailure) as info:
        bookrun.run_book(notebook_dir=notebooks, output_dir=book, progress=False)
    failure = info.value
    assert failure.notebook.name == "01_broken.ipynb"
    # source cells: 0 markdown, 1 parameters, 2 `y = 2`, 3 the raise
    assert failure.cell_index == 3
    assert failure.execution_count == 4  # parameters, injected parameters, y = 2, then this
    assert failure.ename == "ValueError" and "rarefied is missing" in failure.evalue
    assert not (book / "02_later.ipynb").exists()
    summary = json.loads((book / "results" / "run_summary.json").read_text())
    assert [(e["notebook"], e["status"]) for e in summary["notebooks"]] == [
        ("00_ok", "ok"),
        ("01_broken", "failed"),
    ]

    code = bookrun.main(["--notebooks", str(notebooks), "--output", str(book), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert "01_broken.ipynb failed in cell 3" in err
    assert "# fit the richness model" in err
    assert "ValueError: column rarefied is missing" in err


def test_kernel_that_dies_is_reported_with_its_cell(book_dirs):
    notebooks, book = book_dirs
    _notebook(notebooks / "00_dies.ipynb", "seed = 0", "x = 1", "import os\nos._exit(1)")
    with pytest.raises(bookrun.NotebookFailure) as info:
        bookrun.run_book(notebook_dir=notebooks, output_dir=book, progress=False)
    assert info.value.ename == "DeadKernelError"
    assert info.value.cell_index == 3  # markdown, parameters, x = 1, then the exit
    assert "os._exit(1)" in info.value.describe()


def test_unknown_kernel_is_a_clear_failure(book_dirs):
    notebooks, book = book_dirs
    _notebook(notebooks / "00_a.ipynb", "seed = 0", "x = 1")
    with pytest.raises(bookrun.NotebookFailure, match="no_such_kernel") as info:
        bookrun.run_book(
            notebook_dir=notebooks, output_dir=book, kernel_name="no_such_kernel", progress=False
        )
    assert info.value.cell_index is None and "before any cell ran" in info.value.describe()
