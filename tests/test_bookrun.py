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

from fungi_ssl.book import notebooks as booknb
from fungi_ssl.book import runner as bookrun
from fungi_ssl.core import results


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
    got = booknb.notebook_parameters(
        declared, profile="full", seed=7, data_dir=None, results_dir="/tmp/r"
    )
    assert got == {"profile": "full", "results_dir": str(Path("/tmp/r").resolve())}


def test_notebook_parameters_data_dir_default_follows_notebook(tmp_path):
    as_none = booknb.notebook_parameters(
        {"data_dir": "None"}, profile="quick", seed=0, data_dir=None, results_dir=tmp_path
    )
    as_str = booknb.notebook_parameters(
        {"data_dir": '""'}, profile="quick", seed=0, data_dir="", results_dir=tmp_path
    )
    real = booknb.notebook_parameters(
        {"data_dir": "None"}, profile="quick", seed=0, data_dir=tmp_path, results_dir=tmp_path
    )
    assert as_none == {"data_dir": None}
    assert as_str == {"data_dir": ""}
    assert real == {"data_dir": str(tmp_path.resolve())}


def test_find_notebooks_orders_and_filters(book_dirs):
    notebooks, _ = book_dirs
    for name in ["02_b", "00_a", "10_c", "draft", "1_bad"]:
        (notebooks / f"{name}.ipynb").write_text("{}")
    assert [p.stem for p in booknb.find_notebooks(notebooks)] == ["00_a", "02_b", "10_c"]
    assert [p.stem for p in booknb.find_notebooks(notebooks, ["02"])] == ["02_b"]
    assert [p.stem for p in booknb.find_notebooks(notebooks, ["10_c", "00"])] == ["00_a", "10_c"]
    with pytest.raises(ValueError, match="--only 05"):
        booknb.find_notebooks(notebooks, ["05"])


def test_write_results_converts_numpy_and_nan(tmp_path):
    payload = {
        "z": np.float32(0.25),
        "a": {"n": np.int64(12), "ok": np.bool_(True)},
        "values": np.array([1.5, np.nan, -np.inf]),
        "table": pd.DataFrame({"set": ["ssl", "climate"], "r2": [0.55, np.nan]}),
        "missing": float("nan"),
    }
    path = results.write_results("04_comparison", payload, tmp_path)
    assert path == tmp_path / "04_comparison.json"
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert list(json.loads(text)) == sorted(payload)  # keys sorted
    assert text.startswith('{\n  "a"')  # indent 2
    back = results.read_results("04_comparison", tmp_path)
    assert back["a"] == {"n": 12, "ok": True}
    assert math.isclose(back["z"], 0.25)
    assert back["values"] == [1.5, None, None]
    assert back["table"] == [{"set": "ssl", "r2": 0.55}, {"set": "climate", "r2": None}]
    assert back["missing"] is None
    assert payload["values"][1] != payload["values"][1]  # input left untouched (still NaN)


def test_results_names_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="two digits"):
        results.write_results("field_data", {"a": 1}, tmp_path)
    with pytest.raises(TypeError, match="mapping"):
        results.write_results("01_x", [1, 2], tmp_path)
    with pytest.raises(ValueError, match="object"):
        results.write_results("01_x", {"a": object()}, tmp_path)
    with pytest.raises(FileNotFoundError, match="03_predictors.json"):
        results.read_results("03_predictors", tmp_path)


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
    monkeypatch.delenv("MALLOC_TOP_PAD_", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT", raising=False)
    _notebook(
        notebooks / "00_sim.ipynb",
        "profile = 'quick'\nseed = 0\ndata_dir = None\nresults_dir = ''",
        "import matplotlib, matplotlib.pyplot as plt\n"
        "print('PARAMS', profile, seed, repr(data_dir), matplotlib.get_backend())\n"
        "fig, ax = plt.subplots()\nax.plot([0, 1])\nplt.show()",
        "from fungi_ssl.core.results import write_results\n"
        "write_results('00_sim', {'seed': seed, 'profile': profile}, results_dir)",
    )
    # declares only `profile`: seed/data_dir/results_dir must not be injected
    _notebook(
        notebooks / "01_field.ipynb", "profile = 'quick'",
        "import os\nprint('HAS_SEED', 'seed' in dir(), 'PAD', os.environ.get('MALLOC_TOP_PAD_'), 'SPIN', os.environ.get('GOMP_SPINCOUNT'), 'BLAS', os.environ.get('OPENBLAS_THREAD_TIMEOUT'))"
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
    # the kernel's allocator keeps freed memory (bookrun.KERNEL_ALLOCATOR_ENV) and its idle
    # threads sleep soon (KERNEL_THREAD_WAIT_ENV); ours is untouched
    pad = bookrun.KERNEL_ALLOCATOR_ENV["MALLOC_TOP_PAD_"]
    spin = bookrun.KERNEL_THREAD_WAIT_ENV["GOMP_SPINCOUNT"]
    blas = bookrun.KERNEL_THREAD_WAIT_ENV["OPENBLAS_THREAD_TIMEOUT"]
    assert (f"HAS_SEED False PAD {pad} SPIN {spin} BLAS {blas}"
            in _outputs_text(book / "01_field.ipynb"))
    assert not {"MALLOC_TOP_PAD_", "GOMP_SPINCOUNT", "OPENBLAS_THREAD_TIMEOUT"} & set(os.environ)
    # seed 5 is not the book's: its results go to a folder named for it, never book/results
    assert not (book / "results").exists()
    runs = book / "results-seed5"
    assert results.read_results("00_sim", runs) == {"profile": "full", "seed": 5}
    summary = json.loads((runs / "run_summary.json").read_text())
    assert [e["notebook"] for e in summary["notebooks"]] == ["00_sim", "01_field"]
    assert all(
        e["profile"] == "full" and e["seconds"] > 0 and e["status"] == "ok"
        for e in summary["notebooks"]
    )
    table = capsys.readouterr().out
    assert "00_sim" in table and "01_field" in table and "total" in table

    # the book's own parameters write book/results; --only re-runs one chapter and keeps
    # the other's summary entry
    args = ["--notebooks", str(notebooks), "--output", str(book), "--no-progress"]
    assert bookrun.main(args) == 0
    assert results.read_results("00_sim", book / "results") == {"profile": "full", "seed": 0}
    assert bookrun.main(["--only", "01", *args]) == 0
    summary = json.loads((book / "results" / "run_summary.json").read_text())
    by_name = {e["notebook"]: e for e in summary["notebooks"]}
    assert set(by_name) == {"00_sim", "01_field"}
    # a rerun of one chapter with another profile writes its notebook and results beside
    # each other, and leaves the book's chapter and results alone
    before = (book / "00_sim.ipynb").read_text(), (book / "results" / "00_sim.json").read_text()
    assert bookrun.main(["--only", "00", "--profile", "quick", *args]) == 0
    assert ((book / "00_sim.ipynb").read_text(), (book / "results" / "00_sim.json").read_text()
            ) == before
    quick = book / "results-quick"
    assert (quick / "00_sim.ipynb").exists()
    assert results.read_results("00_sim", quick) == {"profile": "quick", "seed": 0}
    by_name = {e["notebook"]: e for e in json.loads(
        (quick / "run_summary.json").read_text())["notebooks"]}
    assert by_name["00_sim"]["profile"] == "quick"


def test_failing_notebook_reports_cell_and_stops(book_dirs, capsys):
    notebooks, book = book_dirs  # chapters that run alone, one after another (no stage)
    _notebook(notebooks / "03_ok.ipynb", "seed = 0", "x = 1")
    _notebook(
        notebooks / "04_broken.ipynb",
        "seed = 0",
        "y = 2",
        "# fit the richness model\nraise ValueError('column rarefied is missing')",
        "print('never')",
    )
    _notebook(notebooks / "12_later.ipynb", "seed = 0", "print('later')")

    with pytest.raises(bookrun.NotebookFailure) as info:
        bookrun.run_book(notebook_dir=notebooks, output_dir=book, progress=False)
    failure = info.value
    assert failure.notebook.name == "04_broken.ipynb"
    # source cells: 0 markdown, 1 parameters, 2 `y = 2`, 3 the raise
    assert failure.cell_index == 3
    assert failure.execution_count == 4  # parameters, injected parameters, y = 2, then this
    assert failure.ename == "ValueError" and "rarefied is missing" in failure.evalue
    assert not (book / "12_later.ipynb").exists()
    summary = json.loads((book / "results" / "run_summary.json").read_text())
    assert [(e["notebook"], e["status"]) for e in summary["notebooks"]] == [
        ("03_ok", "ok"),
        ("04_broken", "failed"),
    ]

    code = bookrun.main(["--notebooks", str(notebooks), "--output", str(book), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert "04_broken.ipynb failed in cell 3" in err
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


# ---------------------------------------------------------------- one default profile


def test_one_default_profile_for_make_bookrun_and_notebooks():
    """config.DEFAULT_PROFILE is the only default: bookrun's, make's (by omission) and each
    notebook's parameters cell, so a chapter re-run with bookrun matches `make book`."""
    import inspect
    import subprocess

    from fungi_ssl.core import config

    default = config.DEFAULT_PROFILE
    assert default in config.PROFILES
    assert bookrun.build_parser().parse_args([]).profile == default
    assert inspect.signature(bookrun.run_book).parameters["profile"].default is None
    make = subprocess.run(["make", "-n", "notebooks"], cwd=config.REPO_ROOT, capture_output=True,
                          text=True, check=True).stdout
    assert "fungi_ssl.book.runner" in make and "--profile" not in make  # leaves it to bookrun
    make_quick = subprocess.run(["make", "-n", "notebooks", "PROFILE=quick"],
                                cwd=config.REPO_ROOT, capture_output=True, text=True, check=True).stdout
    assert "--profile quick" in make_quick
    notebooks = booknb.find_notebooks(config.NOTEBOOK_DIR)
    for nb in notebooks:
        declared = booknb.declared_parameters(nb)
        assert set(booknb.BOOK_PARAMETERS) <= set(declared), (nb.name, sorted(declared))
        assert declared["profile"].strip("'\"") == default, (
            f"{nb.name}: parameters cell says profile = {declared['profile']}, "
            f"config.DEFAULT_PROFILE is {default!r}"
        )


def test_run_book_without_profile_uses_the_default(book_dirs):
    from fungi_ssl.core import config

    notebooks, book = book_dirs
    _notebook(notebooks / "00_p.ipynb", "profile = 'x'", "print('PROFILE', profile)")
    runs = bookrun.run_book(notebook_dir=notebooks, output_dir=book, progress=False)
    assert runs[0].profile == config.DEFAULT_PROFILE
    assert f"PROFILE {config.DEFAULT_PROFILE}" in _outputs_text(book / "00_p.ipynb")


# ---------------------------------------------------------------- nothing machine-specific


def test_executed_notebooks_hold_no_machine_paths(tmp_path):
    """The book (HTML and the executed .ipynb it offers for download) shows no absolute path
    of this machine: injected paths are relative, and any that a cell prints is replaced."""
    from fungi_ssl.core import config

    notebooks, book = tmp_path / "notebooks", tmp_path / "book"
    notebooks.mkdir()
    real = tmp_path / "real"
    real.mkdir()
    (real / "field.csv").write_text("sample_id,longitude,latitude,rarefied\nA,6.0,52.0,3\n")
    _notebook(
        notebooks / "00_paths.ipynb",
        "profile = 'full'\nseed = 0\ndata_dir = ''\nresults_dir = ''",
        "import os, warnings\nfrom fungi_ssl.core import config\nfrom fungi_ssl.core.results import write_results\n"
        "print(os.path.abspath(data_dir), os.path.abspath(results_dir))\n"
        "print(config.REPO_ROOT, os.path.expanduser('~'))\n"
        "warnings.warn(f'something in {config.REPO_ROOT}/fungi_ssl')\n"
        "write_results('00_paths', {'ok': os.path.isdir(data_dir)}, results_dir)",
        "raise_in = None",
    )
    bookrun.run_book(notebook_dir=notebooks, output_dir=book, data_dir=real, progress=False)
    text = (book / "00_paths.ipynb").read_text()
    for machine in (str(tmp_path), str(config.REPO_ROOT), os.path.expanduser("~")):
        assert machine not in text, machine
    nb = nbformat.read(str(book / "00_paths.ipynb"), as_version=4)
    injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert 'data_dir = "../real"' in injected.source
    key = results.results_key({"data_dir": real})
    assert f'results_dir = "../book/results-{key}"' in injected.source
    out = _outputs_text(book / "00_paths.ipynb")
    assert "<data_dir> <results_dir>" in out and "<repo> ~" in out
    # the relative paths worked: results landed in book/results-<key>, data_dir was found
    assert results.read_results("00_paths", book / f"results-{key}") == {"ok": True}


def test_a_failing_notebook_is_scrubbed_too(tmp_path):
    from fungi_ssl.core import config

    notebooks, book = tmp_path / "notebooks", tmp_path / "book"
    notebooks.mkdir()
    _notebook(notebooks / "00_fail.ipynb", "seed = 0",
              "from fungi_ssl.core import config\nraise FileNotFoundError(str(config.REPO_ROOT))")
    with pytest.raises(bookrun.NotebookFailure):
        bookrun.run_book(notebook_dir=notebooks, output_dir=book, progress=False)
    assert str(config.REPO_ROOT) not in (book / "00_fail.ipynb").read_text()


def test_scrub_leaves_images_alone(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [nbformat.v4.new_output(
        "display_data", data={"image/png": "L2hvbWUvdXNlcg==", "text/plain": "/home/user/x"})]
    nb.cells.append(cell)
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, str(path))
    assert booknb.scrub_machine_paths(path, {"/home/user": "~"})
    data = nbformat.read(str(path), as_version=4).cells[0].outputs[0]["data"]
    assert data["text/plain"] == "~/x" and data["image/png"] == "L2hvbWUvdXNlcg=="
    assert not booknb.scrub_machine_paths(path, {"/home/user": "~"})  # nothing left


# ---------------------------------------------------------------- kernel transport


def test_kernels_run_over_ipc_without_the_tcp_warning(book_dirs, capfd):
    notebooks, book = book_dirs
    _notebook(notebooks / "00_k.ipynb", "seed = 0",
              "from ipykernel.connect import get_connection_info\n"
              "print('TRANSPORT', get_connection_info(unpack=True)['transport'])")
    bookrun.run_book(notebook_dir=notebooks, output_dir=book, progress=False)
    assert "TRANSPORT ipc" in _outputs_text(book / "00_k.ipynb")
    captured = capfd.readouterr()
    assert "without encryption" not in captured.out + captured.err


# ---------------------------------------------------------------- issue 16: parameters, skips, results


def test_chapter_parameters_reach_only_the_notebooks_that_declare_them(book_dirs):
    notebooks, book = book_dirs
    _notebook(notebooks / "04_a.ipynb", "profile = 'full'\nblock_km = 50.0\nresults_dir = ''",
              "print('BLOCK', block_km)")
    _notebook(notebooks / "05_b.ipynb", "profile = 'full'\nresults_dir = ''",
              "print('HAS_BLOCK', 'block_km' in dir())")
    with pytest.raises(ValueError, match="no chapter declares the parameter 'bbox'; chapter "
                                         "parameters are block_km"):
        bookrun.run_book(notebook_dir=notebooks, output_dir=book, progress=False,
                         chapter_parameters={"bbox": [0, 0, 1, 1]})
    assert not book.exists()  # nothing ran
    code = bookrun.main(["--notebooks", str(notebooks), "--output", str(book), "--no-progress",
                         "-P", "block_km=10"])
    assert code == 0
    assert "BLOCK 10" in _outputs_text(book / "04_a.ipynb")
    assert "HAS_BLOCK False" in _outputs_text(book / "05_b.ipynb")
    assert (book / "results-block_km-10" / "run_summary.json").exists()
    assert not (book / "results").exists()


def test_parse_chapter_parameters_errors():
    with pytest.raises(ValueError, match="set seed with SEED="):
        booknb.parse_chapter_parameters("seed=3")
    with pytest.raises(ValueError, match="'block_km' is not name=value"):
        booknb.parse_chapter_parameters("block_km")
    with pytest.raises(ValueError, match="given twice"):
        booknb.parse_chapter_parameters(["years=[2018]", "years=[2019]"])
    assert booknb.parse_chapter_parameters("partition_cv=block land_only=false") == {
        "partition_cv": "block", "land_only": False}


def test_make_passes_params_and_samples():
    from fungi_ssl.core import config

    out = __import__("subprocess").run(
        ["make", "-n", "notebooks", "PARAMS=bbox=[-3.9,56.8,-3.0,57.3] years=[2018,2024]",
         "SAMPLES=my table.csv", "DATA=/d"], cwd=config.REPO_ROOT, capture_output=True,
        text=True, check=True).stdout
    assert "--param 'bbox=[-3.9,56.8,-3.0,57.3] years=[2018,2024]'" in out
    assert "--samples 'my table.csv'" in out
    from typer.testing import CliRunner

    from fungi_ssl import cli

    calls = []
    run_book = bookrun.run_book
    try:
        bookrun.run_book = lambda **kw: calls.append(kw) or []
        res = CliRunner().invoke(cli.app, ["book", "--no-html", "--no-progress", "-P",
                                           "block_km=10 years=[2018,2024]", "--samples", "a.csv"])
    finally:
        bookrun.run_book = run_book
    assert res.exit_code == 0, res.output
    assert calls[0]["chapter_parameters"] == {"block_km": 10, "years": [2018, 2024]}
    assert calls[0]["samples"] == "a.csv"
    args = bookrun.build_parser().parse_args(["--param", "bbox=[-3.9,56.8,-3.0,57.3] block_km=10"])
    assert booknb.parse_chapter_parameters(args.param) == {
        "bbox": [-3.9, 56.8, -3.0, 57.3], "block_km": 10}


def test_a_skipped_chapter_shows_its_title_and_one_sentence(book_dirs):
    notebooks, book = book_dirs
    _notebook(
        notebooks / "06_maps.ipynb",
        "profile = 'full'\ndata_dir = ''\nresults_dir = ''",
        "from IPython.display import Markdown, display\nfrom fungi_ssl.core.results import write_results\n"
        "run = not data_dir\n"
        "if not run:\n    display(Markdown('This chapter needs the simulated regions, so it is "
        "skipped.'))\nprint('METHODS OUTPUT')",
        "import matplotlib.pyplot as plt\nif run:\n    plt.plot([0, 1]); plt.show()",
        "write_results('06_maps', {'skipped': 'real data: no regions'} if not run else {'n': 1}, "
        "results_dir)",
    )
    nb = nbformat.read(str(notebooks / "06_maps.ipynb"), as_version=4)
    nb.cells[0].source = "# Maps\n\n## Overview\n\nLong methods text."
    nb.cells.append(nbformat.v4.new_markdown_cell("## Summary\n\nConclusions."))
    nbformat.write(nb, str(notebooks / "06_maps.ipynb"))
    real = book.parent / "real"
    real.mkdir()
    (real / "t.csv").write_text("sample_id,longitude,latitude,rarefied\nA,6.0,52.0,3\n")
    bookrun.run_book(notebook_dir=notebooks, output_dir=book, data_dir=real, progress=False)
    out = nbformat.read(str(book / "06_maps.ipynb"), as_version=4)
    shown = [c for c in out.cells if "remove-cell" not in c.metadata.get("tags", [])]
    assert len(shown) == 1 and shown[0].cell_type == "markdown"
    assert shown[0].source == ("# Maps\n\nThis chapter needs the simulated regions, so it is "
                               "skipped.")
    text = json.dumps(out)
    assert "METHODS OUTPUT" not in text and "Conclusions" not in text and "image/png" not in text
    # a chapter that skips part of its work but still shows a table keeps its page
    _notebook(notebooks / "09_part.ipynb", "profile = 'full'\ndata_dir = ''\nresults_dir = ''",
              "import pandas as pd\nfrom fungi_ssl.core.results import write_results\n"
              "display(pd.DataFrame({'n': [1]}))\n"
              "write_results('09_part', {'skipped': 'no covariates'}, results_dir)")
    bookrun.run_book(notebook_dir=notebooks, output_dir=book, data_dir=real, progress=False,
                     only=["09"])
    part = book / f"results-{results.results_key({'data_dir': real})}" / "09_part.ipynb"
    assert booknb.shows_results(part)
    assert len(nbformat.read(str(part), as_version=4).cells) == 4  # title, parameters x2, code
    # the same chapter on the simulated study keeps everything
    bookrun.run_book(notebook_dir=notebooks, output_dir=book, progress=False)
    out = nbformat.read(str(book / "06_maps.ipynb"), as_version=4)
    assert "Conclusions" in json.dumps(out) and "METHODS OUTPUT" in _outputs_text(
        book / "06_maps.ipynb")


def test_a_directory_without_a_usable_table_fails_before_any_chapter(book_dirs, capsys):
    import time

    notebooks, book = book_dirs
    _notebook(notebooks / "00_a.ipynb", "profile = 'quick'", "print('RAN')")
    empty = book.parent / "empty"
    empty.mkdir()
    (empty / "notes.csv").write_text("a,b\n1,2\n")
    start = time.perf_counter()
    code = bookrun.main(["--data", str(empty), "--notebooks", str(notebooks), "--output",
                         str(book), "--no-progress"])
    assert time.perf_counter() - start < 5
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "no usable table (notes.csv)" in err
    assert not (book / "00_a.ipynb").exists()
    (empty / "am.csv").write_text("sample_id,longitude,latitude,am\nA,6.0,52.0,3\n")
    code = bookrun.main(["--data", str(empty), "--notebooks", str(notebooks), "--output",
                         str(book), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no target column 'rarefied'; name the richness column with TARGET=" in err


def test_a_papermill_rerun_with_other_parameters_leaves_book_results_alone(tmp_path):
    """papermill itself, with no results_dir: the kernel sees its injected cell and writes
    its results under book/results-<key>, never into book/results."""
    import shutil
    import subprocess
    import sys

    from fungi_ssl.core import config

    nb = _notebook(tmp_path / "01_probe.ipynb", "profile = 'full'\nseed = 0\nresults_dir = ''",
                   "from fungi_ssl.core.results import write_results\n"
                   "print('WROTE', write_results('01_probe_w16', {'seed': seed}, results_dir))")
    seed = 987_654
    target = config.BOOK_DIR / f"results-seed{seed}"
    shutil.rmtree(target, ignore_errors=True)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "papermill", str(nb), str(tmp_path / "out.ipynb"), "-p",
             "seed", str(seed), "--no-progress-bar"], capture_output=True, text=True, check=False,
            env={**os.environ, "PYTHONPATH": str(config.REPO_ROOT)})
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads((target / "01_probe_w16.json").read_text()) == {"seed": seed}
        assert not (config.RESULTS_DIR / "01_probe_w16.json").exists()
    finally:
        shutil.rmtree(target, ignore_errors=True)
    # the kernel's view, unit by unit
    assert results.changed_parameters(
        results._assignments("profile = 'full'\nseed = 0\nbbox = None  # note"),
        results._assignments("# Parameters\nprofile = \"full\"\nbbox = [1, 2, 3, 4]\n")) == {
        "bbox": [1, 2, 3, 4]}


def test_lanes_run_chapters_side_by_side_in_order_and_stop_after_a_failure(book_dirs):
    """00-01 run beside 02; 05-11 run in two lanes after 00-04; a lane keeps its order; a failure stops the book."""
    import time as _time

    notebooks, book = book_dirs
    stamp = ("import time, json, pathlib\n"
             "t0 = time.time(); time.sleep({sleep})\n"
             "pathlib.Path(results_dir, '{name}.json').write_text(json.dumps([t0, time.time()]))")
    for name, sleep in (("00_sim", 4), ("02_enc", 4), ("04_table", 0), ("05_part", 3),
                        ("06_res", 1), ("07_bias", 1), ("12_after", 0)):
        _notebook(notebooks / f"{name}.ipynb", "results_dir = ''",
                  stamp.format(sleep=sleep, name=name))
    start = _time.time()
    runs = bookrun.run_book(notebook_dir=notebooks, output_dir=book, progress=False)
    # runs come back as they finish: the first stage's two, in either order
    assert {runs[0].notebook, runs[1].notebook} == {"00_sim", "02_enc"}
    assert runs[-1].notebook == "12_after"
    assert {r.status for r in runs} == {"ok"} and len(runs) == 7
    t = {n: json.loads((book / "results" / f"{n}.json").read_text())
         for n in ("00_sim", "02_enc", "04_table", "05_part", "06_res", "07_bias", "12_after")}
    assert t["00_sim"][0] < t["02_enc"][1] and t["02_enc"][0] < t["00_sim"][1]  # side by side
    assert t["04_table"][0] >= max(t["00_sim"][1], t["02_enc"][1])
    assert t["04_table"][1] <= min(t["05_part"][0], t["06_res"][0])  # after 00-04
    assert t["06_res"][1] <= t["07_bias"][0]  # one lane, in order
    assert t["05_part"][0] < t["07_bias"][1] and t["06_res"][0] < t["05_part"][1]  # side by side
    assert t["12_after"][0] >= max(t["05_part"][1], t["07_bias"][1])
    assert start <= min(t["00_sim"][0], t["02_enc"][0])
    summary = json.loads((book / "results" / "run_summary.json").read_text())
    assert [e["notebook"] for e in summary["notebooks"]] == sorted(t)
    # serial: the same notebooks one after another
    serial = bookrun.run_book(notebook_dir=notebooks, output_dir=book, progress=False,
                              lanes=False)
    assert [r.notebook for r in serial] == sorted(t)
    # a failing chapter in one lane: the other lane finishes, later chapters do not run
    _notebook(notebooks / "05_part.ipynb", "results_dir = ''", "raise RuntimeError('lane A broke')")
    (book / "results" / "12_after.json").unlink()
    with pytest.raises(bookrun.NotebookFailure, match="lane A broke") as err:
        bookrun.run_book(notebook_dir=notebooks, output_dir=book, progress=False)
    status = {r.notebook: r.status for r in err.value.runs}
    assert status == {"00_sim": "ok", "02_enc": "ok", "04_table": "ok", "05_part": "failed",
                      "06_res": "ok", "07_bias": "ok"}
    assert not (book / "results" / "12_after.json").exists()


def test_kernel_tuning_yields_to_the_callers(monkeypatch):
    monkeypatch.delenv("MALLOC_TOP_PAD_", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT", raising=False)
    assert bookrun.kernel_tuning_environment() == {**bookrun.KERNEL_ALLOCATOR_ENV,
                                               **bookrun.KERNEL_THREAD_WAIT_ENV}
    monkeypatch.setenv("MALLOC_TOP_PAD_", "0")  # a user's own setting wins
    monkeypatch.setenv("GOMP_SPINCOUNT", "300000")
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "28")
    assert bookrun.kernel_tuning_environment() == {}


@pytest.mark.parametrize("first_done", [0, 1])
def test_lanes_run_every_chapter_after_the_chapters_it_reads(first_done):
    """Every profile's stages, scheduled as the runner does with chapters finishing lane 0
    first or lane 1 first: every chapter starts, none before a chapter it reads (AFTER)."""
    from fungi_ssl.book.runner import AFTER, STAGES_BY_PROFILE, _next_in_lanes

    for stage in (st for stages in STAGES_BY_PROFILE.values() for st in stages):
        queues = [[Path(f"{c}_x.ipynb") for c in lane] for lane in stage]
        finished: set[str] = set()
        running: dict[int, str] = {}
        idle = list(range(len(queues)))
        order = []
        while True:
            for i, nb in _next_in_lanes(queues, idle, finished, set(running.values())):
                running[i] = nb.name[:2]
                idle.remove(i)
                assert all(c in finished for c in AFTER.get(nb.name[:2], ())
                           if any(c in lane for lane in stage)), nb.name
            if not running:
                break
            i = first_done if first_done in running else next(iter(running))
            chapter = running.pop(i)
            finished.add(chapter)
            order.append(chapter)
            idle.append(i)
        assert sorted(order) == sorted(c for lane in stage for c in lane)


def test_a_lane_stops_when_a_chapter_it_reads_failed():
    from fungi_ssl.book.runner import _next_in_lanes

    queues = [[Path("06_x.ipynb")], [Path("05_x.ipynb")]]
    started = _next_in_lanes(queues, [0, 1], set(), set(), failed={"04"})
    assert [p.name[:2] for _, p in started] == ["05"] and queues[0] == []


def test_the_quick_profile_runs_chapter_04_in_a_lane_and_the_full_one_alone():
    from fungi_ssl.book.runner import STAGES_BY_PROFILE, lane_plan

    names = [Path(f"{n:02d}_x.ipynb") for n in range(12)]

    def shape(profile):
        return [[[p.name[:2] for p in lane] for lane in stage]
                for stage in lane_plan(names, STAGES_BY_PROFILE[profile])]

    assert shape("full")[1] == [["04"]] and ["06", "07"] in shape("full")[2]
    assert ["04", "06", "07"] in shape("quick")[1]
    assert shape("quick")[0] == [["02", "03"], ["00", "01", "09"]]  # 03 follows 02 in its lane
    assert ["05", "08", "10", "11"] in shape("quick")[1]  # a lane runs in book order
    assert shape("full")[0] == [["02", "03"], ["00", "01", "09"]]


def test_each_lane_gets_a_core_of_its_own_until_one_lane_is_done(monkeypatch):
    import subprocess
    import sys as _sys

    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("needs two cores")
    first, second = bookrun.lane_cores(0, 2), bookrun.lane_cores(1, 2)
    assert first and second and not first & second and first | second <= set(allowed)
    assert bookrun.lane_cores(0, len(allowed) + 1) is None  # more lanes than cores: any core
    monkeypatch.setattr(bookrun, "PIN_LANES", False)
    assert bookrun.lane_cores(0, 2) is None
    monkeypatch.setattr(bookrun, "PIN_LANES", True)
    with monkeypatch.context() as m:  # a system that cannot pin (macOS): any core, no error
        m.delattr(os, "sched_getaffinity")
        assert bookrun.lane_cores(0, 2) is None and bookrun.widen_to_all_cores() == 0
    # a lane's process (and its threads) pinned to one core is let onto every core again
    child = subprocess.Popen([_sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        os.sched_setaffinity(child.pid, first)
        assert bookrun.widen_to_all_cores() >= 1
        assert os.sched_getaffinity(child.pid) == set(allowed)
    finally:
        child.kill()
        child.wait()


def test_the_summary_records_each_chapters_cpu_seconds(book_dirs):
    """The CPU time of the kernel and of the processes it starts, beside the wall time."""
    notebooks, book = book_dirs
    burn = ("import time, multiprocessing as mp\n"
            "def spin():\n"
            "    t = time.process_time()\n"
            "    while time.process_time() - t < 0.6: pass\n"
            "p = mp.get_context('fork').Process(target=spin); p.start(); spin(); p.join()")
    _notebook(notebooks / "03_burn.ipynb", "results_dir = ''", burn)
    runs = bookrun.run_book(notebook_dir=notebooks, output_dir=book, progress=False,
                            only=["03"])
    assert runs[0].cpu_seconds >= 1.2  # the kernel's 0.6 s and its child's 0.6 s
    summary = json.loads((book / "results" / "run_summary.json").read_text())
    entry = next(e for e in summary["notebooks"] if e["notebook"] == "03_burn")
    assert entry["cpu_seconds"] == runs[0].cpu_seconds
    assert "CPU-s" in bookrun.format_summary(runs)
