"""Run the book's notebooks with papermill, in order, and keep their results.

``make notebooks`` calls this module::

    python -m fungi_ssl.bookrun [--profile quick] [--seed 0] [--data DIR] [--only 01]
                                [--guild AM] [--target am_rarefied] [--samples FILE]
                                [-P block_km=10 -P 'bbox=[-3.9,56.8,-3.0,57.3]']

Without ``--profile`` the book is built with :data:`fungi_ssl.config.DEFAULT_PROFILE`.

Every ``notebooks/NN_*.ipynb`` (two-digit prefix) is executed in order into
``book/NN_*.ipynb``, which Jupyter Book then renders without re-executing. Each
notebook receives, as papermill parameters, only those of ``profile``,
``seed``, ``data_dir`` and ``results_dir`` that its cell tagged ``parameters``
declares, and ``guild`` and ``target`` (``--guild AM --target am_rarefied``)
when they are given and the notebook declares them. ``data_dir`` is the empty string (or ``None``, if that is the
notebook's own default) for the embedded simulated study, and a path for a real
data directory. Paths are injected relative to the notebook's folder (where the
kernel runs), so the book shows no machine's absolute paths; after the run,
any absolute path that remains in the executed notebook (the repository, the
home folder, a data or results folder elsewhere) is replaced by a placeholder
(:func:`scrub_machine_paths`). Kernels talk to the runner over IPC sockets,
not unencrypted local TCP (:data:`KERNEL_TRANSPORT`).

Numbers a chapter wants to keep (for the text of later chapters, or for tests)
go through :func:`write_results`, which writes ``book/results/NN_<name>.json``;
:func:`read_results` reads them back. Only a run with the book's own
parameters writes ``book/results/``: any other (another profile, seed, data
directory or chapter parameter, from ``make book``, ``--only`` or papermill
itself) writes ``book/results-<key>/``, named for what it changed
(:func:`results_key`, :func:`default_results_dir`). Chapter parameters come
from ``-P name=value`` (``make book PARAMS="…"``) and reach the notebooks that
declare them; a chapter that skips is reduced to its title and one sentence. The run itself writes
``book/results/run_summary.json``: seconds per notebook and the profile used.

A failing notebook stops the run: the message names the notebook, the cell
(index in the source notebook, execution count, first lines of its source)
and the error; later notebooks are not run, and the exit status is non-zero.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import config

#: The kernel every notebook runs in (``make setup`` installs it with ``--sys-prefix``).
KERNEL_NAME = "python3"
#: The parameters the runner injects into every notebook (each declares them all).
BOOK_PARAMETERS = ("profile", "seed", "data_dir", "results_dir")
#: The guild and the sample-table column of its richness (``make book GUILD=AM
#: TARGET=am_rarefied``): injected, when given, into the notebooks that declare them
#: (those whose text speaks of a guild); the others keep ECM.
GUILD_PARAMETERS = ("guild", "target")
#: Notebook file names the runner picks up: two digits, an underscore, a name.
NOTEBOOK_PATTERN = re.compile(r"^(\d{2})_[^/]+\.ipynb$")
#: Result names: the chapter's two digits, an underscore, then a plain name.
RESULT_NAME_PATTERN = re.compile(r"^\d{2}_[A-Za-z0-9][A-Za-z0-9_\-]*$")
#: Matplotlib backend for kernels: headless (it renders with Agg) but, unlike plain
#: ``Agg``, it still puts every figure into the notebook, so the book shows it.
#: Set explicitly so that an ``MPLBACKEND=Agg`` in the caller's environment
#: (CI, servers) cannot silently drop the book's figures.
KERNEL_MPLBACKEND = "module://matplotlib_inline.backend_inline"
#: Lines of the failing cell's source shown in the error message.
SOURCE_LINES_SHOWN = 6
#: How the runner talks to kernels: IPC (Unix domain sockets in Jupyter's runtime
#: folder) rather than TCP on localhost, which ipykernel warns is unencrypted.
KERNEL_TRANSPORT = "ipc"


# --------------------------------------------------------------------------
# Results written by chapters
# --------------------------------------------------------------------------


def to_json_safe(value: Any) -> Any:
    """Convert numpy/pandas values to plain JSON types; NaN and ±inf become ``None``.

    Dict keys become strings; tuples become lists and sets sorted lists; a
    pandas Series becomes a dict and a DataFrame a list of row records.

    Examples
    --------
    >>> import numpy as np
    >>> to_json_safe({"r2": np.float32(0.5), "n": np.int64(3), "bad": float("nan")})
    {'r2': 0.5, 'n': 3, 'bad': None}
    >>> to_json_safe(np.array([1.0, np.inf]))
    [1.0, None]
    """
    import numpy as np
    import pandas as pd

    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): to_json_safe(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [to_json_safe(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [to_json_safe(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((to_json_safe(v) for v in value), key=repr)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    if isinstance(value, pd.DataFrame):
        return [to_json_safe(row) for row in value.to_dict(orient="records")]
    if isinstance(value, pd.Series):
        return {str(k): to_json_safe(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return to_json_safe(value.item())
    raise ValueError(
        f"cannot write a value of type {type(value).__name__} to a results file; "
        "expected numbers, strings, lists, dicts, numpy arrays or pandas objects"
    )


def _results_path(name: str, results_dir: str | Path | None) -> Path:
    name = name.removesuffix(".json")
    if not RESULT_NAME_PATTERN.match(name):
        raise ValueError(
            f"result name must be the chapter's two digits, an underscore and a plain name "
            f"(e.g. '01_field_data'), got {name!r}"
        )
    root = Path(results_dir) if results_dir else default_results_dir()
    return root / f"{name}.json"


# --------------------------------------------------------------------------
# Where a run's results go: book/results only for the book's own parameters
# --------------------------------------------------------------------------


def _slug(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(to_json_safe(value))
    return re.sub(r"[^A-Za-z0-9.+\-]+", "_", text).strip("_") or "empty"


def results_key(changed: Mapping[str, Any]) -> str:
    """A folder name for a run's results from the parameters that differ from the book's.

    ``changed`` holds only the parameters whose value is not the book's
    default (:func:`changed_parameters`). An empty mapping gives ``""``: the
    book's own results, ``book/results``. A data directory is named by its
    folder name and a hash of its absolute path; long keys end in a hash.

    Examples
    --------
    >>> results_key({})
    ''
    >>> results_key({"profile": "quick", "seed": 7})
    'quick_seed7'
    >>> results_key({"block_km": 10, "years": [2018, 2024]})
    'block_km-10_years-2018_2024'
    """
    import hashlib

    parts = []
    for name in sorted(changed, key=lambda k: (k not in ("profile", "seed", "data_dir"), k)):
        value = changed[name]
        if name == "profile":
            parts.append(str(value))
        elif name == "seed":
            parts.append(f"seed{int(value)}")
        elif name == "data_dir":
            where = os.path.abspath(str(value))
            digest = hashlib.sha256(where.encode()).hexdigest()[:6]
            parts.append(f"data-{_slug(Path(where).name)}-{digest}")
        else:
            parts.append(f"{name}-{_slug(value)}")
    key = "_".join(parts)
    if len(key) > 80:
        key = f"{key[:60]}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    return key


def results_folder(key: str, book_dir: str | Path | None = None) -> Path:
    """``<book>/results`` for the book's own parameters, else ``<book>/results-<key>``.

    Examples
    --------
    >>> results_folder("", "/b").as_posix(), results_folder("quick_seed7", "/b").as_posix()
    ('/b/results', '/b/results-quick_seed7')
    """
    book = Path(book_dir) if book_dir else config.BOOK_DIR
    return book / "results" if not key else book / f"results-{key}"


def _literal(source: str) -> Any:
    import ast

    try:
        return ast.literal_eval(source)
    except (ValueError, SyntaxError):
        return source.strip()


def _assignments(source: str) -> dict[str, Any]:
    """``name = value`` lines of a parameters cell, values as Python literals where they are."""
    import ast

    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    out: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(
                node.targets[0], ast.Name):
            out[node.targets[0].id] = _literal(ast.get_source_segment(source, node.value) or "")
    return out


def changed_parameters(defaults: Mapping[str, Any], injected: Mapping[str, Any]) -> dict[str, Any]:
    """The injected parameters whose value differs from the notebook's default.

    ``results_dir`` never counts; an empty ``data_dir`` is the simulated study.

    Examples
    --------
    >>> changed_parameters({"profile": "full", "seed": 0, "data_dir": ""},
    ...                    {"profile": "full", "seed": 3, "data_dir": ""})
    {'seed': 3}
    """
    out = {}
    for name, value in injected.items():
        if name == "results_dir" or (name == "data_dir" and not value):
            continue
        if name not in defaults or defaults[name] != value:
            out[name] = value
    return out


def _kernel_changed_parameters() -> dict[str, Any] | None:
    """In a papermill kernel: the parameters its injected cell changed; None elsewhere.

    papermill runs the notebook's ``parameters`` cell, then the cell it
    injected (its source starts ``# Parameters``); both are in IPython's input
    history, so the kernel can tell a default run from a rerun with others.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    history = list(shell.user_ns.get("In", [])) if shell is not None else []
    for i, source in enumerate(history):
        if isinstance(source, str) and source.startswith("# Parameters") and i > 0:
            changed = changed_parameters(_assignments(history[i - 1]), _assignments(source))
            if "data_dir" in changed:  # named by where it is, as the runner names it
                changed["data_dir"] = os.path.abspath(str(changed["data_dir"]))
            samples = os.environ.get("FUNGI_SSL_SAMPLES")
            if samples:
                changed["samples"] = samples
            return changed
    return None


def default_results_dir() -> Path:
    """Where a chapter's results go when it passes no ``results_dir``.

    ``book/results`` (:data:`fungi_ssl.config.RESULTS_DIR`), unless the
    notebook runs under papermill with parameters other than its defaults
    (``papermill … -p seed 7``): then ``book/results-<key>``
    (:func:`results_key`), so a rerun never overwrites the book's results.
    """
    changed = _kernel_changed_parameters()
    if not changed:
        return config.RESULTS_DIR
    return results_folder(results_key(changed), config.RESULTS_DIR.parent)


def write_results(
    name: str, payload: Mapping[str, Any], results_dir: str | Path | None = None
) -> Path:
    """Write a chapter's key numbers to ``<results_dir>/<name>.json``.

    Parameters
    ----------
    name : str
        ``NN_<name>``: the chapter's two-digit number, an underscore and a plain
        name, e.g. ``"04_predictor_comparison"``.
    payload : mapping
        Numbers, strings, lists, numpy arrays or pandas objects. numpy scalars
        become plain numbers, NaN and ±inf become ``null``.
    results_dir : str or pathlib.Path, optional
        Directory to write into (created if needed); defaults to
        :data:`fungi_ssl.config.RESULTS_DIR`. Notebooks pass their
        ``results_dir`` parameter.

    Returns
    -------
    pathlib.Path
        The file written. Keys are sorted and indented by 2 so diffs are readable.

    Raises
    ------
    ValueError
        If ``name`` is not ``NN_<name>`` or a value cannot be written as JSON.
    TypeError
        If ``payload`` is not a mapping.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> tmp = tempfile.mkdtemp()
    >>> path = write_results("01_demo", {"n": np.int64(12), "r2": np.nan}, tmp)
    >>> path.name
    '01_demo.json'
    >>> read_results("01_demo", tmp)
    {'n': 12, 'r2': None}
    """
    if not isinstance(payload, Mapping):
        raise TypeError(
            f"payload for {name!r} must be a mapping (dict), got {type(payload).__name__}"
        )
    path = _results_path(name, results_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(to_json_safe(payload), indent=2, sort_keys=True, allow_nan=False)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(text + "\n")
    tmp.replace(path)
    return path


def read_results(name: str, results_dir: str | Path | None = None) -> dict[str, Any]:
    """Read the results a chapter wrote with :func:`write_results`.

    Raises
    ------
    FileNotFoundError
        If the file is missing, naming it and the notebook that writes it.

    Examples
    --------
    >>> import tempfile
    >>> tmp = tempfile.mkdtemp()
    >>> _ = write_results("02_demo", {"loss": [1.0, 0.5]}, tmp)
    >>> read_results("02_demo", tmp)["loss"]
    [1.0, 0.5]
    """
    path = _results_path(name, results_dir)
    if not path.exists():
        raise FileNotFoundError(
            f"results file {path} not found; run the notebook notebooks/{name[:2]}_*.ipynb "
            f"first (python -m fungi_ssl.bookrun --only {name[:2]})"
        )
    return json.loads(path.read_text())


# --------------------------------------------------------------------------
# Finding and parameterising notebooks
# --------------------------------------------------------------------------


def find_notebooks(notebook_dir: str | Path, only: Sequence[str] | None = None) -> list[Path]:
    """The ``NN_*.ipynb`` notebooks of ``notebook_dir``, in order.

    Parameters
    ----------
    notebook_dir : str or pathlib.Path
        Directory holding the source notebooks.
    only : sequence of str, optional
        Keep only notebooks whose two-digit number (``"01"``) or file stem
        (``"01_field_data"``) is listed.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> for n in ["10_new_region", "01_field_data", "notes"]:
    ...     _ = (tmp / f"{n}.ipynb").write_text("{}")
    >>> [p.name for p in find_notebooks(tmp)]
    ['01_field_data.ipynb', '10_new_region.ipynb']
    >>> [p.name for p in find_notebooks(tmp, only=["10"])]
    ['10_new_region.ipynb']
    """
    notebook_dir = Path(notebook_dir)
    if not notebook_dir.is_dir():
        raise FileNotFoundError(f"notebook directory {notebook_dir} does not exist")
    found = sorted(p for p in notebook_dir.iterdir() if NOTEBOOK_PATTERN.match(p.name))
    if not found:
        raise FileNotFoundError(f"no NN_*.ipynb notebooks in {notebook_dir}")
    if only:
        wanted = {str(o).removesuffix(".ipynb") for o in only}
        kept = [p for p in found if p.name[:2] in wanted or p.stem in wanted]
        matched = {p.name[:2] for p in kept} | {p.stem for p in kept}
        missing = sorted(wanted - matched)
        if missing:
            raise ValueError(
                f"--only {', '.join(missing)} matches no notebook in {notebook_dir}; "
                f"available: {', '.join(p.stem for p in found)}"
            )
        found = kept
    return found


def declared_parameters(notebook: str | Path) -> dict[str, str]:
    """Names and default values (as source text) declared in a notebook's ``parameters`` cell.

    Returns an empty dict for a notebook with no cell tagged ``parameters``.
    """
    import papermill

    inspected = papermill.inspect_notebook(str(notebook))
    return {name: str(p["default"]) for name, p in inspected.items()}


def shown_path(path: str | Path, cwd: str | Path | None) -> str:
    """A path as the book injects it: relative to ``cwd`` when they share a folder below ``/``.

    Examples
    --------
    >>> shown_path("/work/repo/book/results", "/work/repo/notebooks")
    '../book/results'
    >>> shown_path("/data/real", "/work/repo/notebooks")
    '/data/real'
    >>> shown_path("/data/real", None)
    '/data/real'
    """
    path = Path(os.path.abspath(path))
    if cwd is None:
        return str(path)
    cwd = Path(os.path.abspath(cwd))
    if os.path.commonpath([path, cwd]) == path.anchor:
        return str(path)
    return os.path.relpath(path, cwd)


def notebook_parameters(
    declared: Mapping[str, str],
    *,
    profile: str,
    seed: int,
    data_dir: str | Path | None,
    results_dir: str | Path,
    cwd: str | Path | None = None,
    guild: str | None = None,
    target: str | None = None,
    chapter_parameters: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The parameters to inject: the book's parameters that the notebook declares.

    ``chapter_parameters`` (``make book PARAMS="block_km=10"``) are injected
    into the notebooks that declare them, and only those.

    ``guild`` (the fungal guild, e.g. ``"AM"``) and ``target`` (the sample
    table's column of its rarefied richness) are injected only when given;
    otherwise each notebook keeps its default (``"ECM"``, ``"rarefied"``).

    ``data_dir`` is a path string for real data; for the simulated study it is
    ``None`` if the notebook's default is ``None``, else ``""``. Paths are
    relative to ``cwd`` (the kernel's working directory) where
    :func:`shown_path` can make them so, else absolute.

    Examples
    --------
    >>> notebook_parameters({"profile": "'quick'", "data_dir": "None"},
    ...                     profile="full", seed=1, data_dir=None, results_dir="/r")
    {'profile': 'full', 'data_dir': None}
    >>> notebook_parameters({"guild": "'ECM'", "target": "'rarefied'"}, profile="full", seed=0,
    ...                     data_dir=None, results_dir="/r", guild="AM")
    {'guild': 'AM'}
    >>> notebook_parameters({"seed": "0", "data_dir": "''", "results_dir": "''"},
    ...                     profile="full", seed=1, data_dir=None, results_dir="/w/book/results",
    ...                     cwd="/w/notebooks")
    {'seed': 1, 'data_dir': '', 'results_dir': '../book/results'}
    """
    if data_dir:
        data_value: str | None = shown_path(data_dir, cwd)
    else:
        data_value = None if declared.get("data_dir", "").strip() == "None" else ""
    values: dict[str, Any] = {
        "profile": profile,
        "seed": int(seed),
        "data_dir": data_value,
        "results_dir": shown_path(results_dir, cwd),
        "guild": guild,
        "target": target,
    }
    unset = {k for k in GUILD_PARAMETERS if values[k] is None}  # the notebook's default
    out = {k: values[k] for k in (*BOOK_PARAMETERS, *GUILD_PARAMETERS)
           if k in declared and k not in unset}
    out.update({k: v for k, v in (chapter_parameters or {}).items() if k in declared})
    return out


def machine_path_placeholders(
    data_dir: str | Path | None = None,
    results_dir: str | Path | None = None,
    notebook_dir: str | Path | None = None,
    output_dir: str | Path | None = None,
) -> dict[str, str]:
    """Absolute paths that must not appear in the book, and what to show instead.

    The data, results, source-notebook and output folders become
    ``<data_dir>``, ``<results_dir>``, ``<notebooks>`` and ``<book>``, the
    repository ``<repo>`` and the home folder ``~``. Longest paths come first,
    so a folder inside the repository keeps its own placeholder.

    Examples
    --------
    >>> m = machine_path_placeholders("/mnt/real", None)
    >>> m["/mnt/real"]
    '<data_dir>'
    >>> m[str(config.REPO_ROOT)]
    '<repo>'
    """
    mapping: dict[str, str] = {}
    if data_dir:
        mapping[os.path.abspath(data_dir)] = "<data_dir>"
    if results_dir:
        mapping[os.path.abspath(results_dir)] = "<results_dir>"
    if notebook_dir:
        mapping.setdefault(os.path.abspath(notebook_dir), "<notebooks>")
    if output_dir:
        mapping.setdefault(os.path.abspath(output_dir), "<book>")
    mapping.setdefault(str(config.REPO_ROOT), "<repo>")
    home = os.path.expanduser("~")
    if home not in ("", "/"):
        mapping.setdefault(home, "~")
    return dict(sorted(mapping.items(), key=lambda kv: -len(kv[0])))


def _scrub(value: Any, pattern: re.Pattern, mapping: Mapping[str, str], key: str = "") -> Any:
    if isinstance(value, str):
        if key.startswith("image/") or key == "application/pdf":
            return value  # base64 data
        return pattern.sub(lambda m: mapping[m.group(0)], value)
    if isinstance(value, Mapping):
        return {k: _scrub(v, pattern, mapping, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, pattern, mapping, key) for v in value]
    return value


def scrub_machine_paths(executed: str | Path, mapping: Mapping[str, str]) -> bool:
    """Replace machine-specific absolute paths everywhere in an executed notebook.

    Cell sources (the injected parameters), text outputs, tracebacks and
    papermill's metadata (``input_path``, ``output_path``) are rewritten with
    ``mapping`` (e.g. from :func:`machine_path_placeholders`); images are left
    alone. Returns True if anything changed.
    """
    path = Path(executed)
    if not mapping:
        return False
    pattern = re.compile("|".join(re.escape(k) for k in sorted(mapping, key=len, reverse=True)))
    nb = json.loads(path.read_text())
    cleaned = _scrub(nb, pattern, mapping)
    if cleaned == nb:
        return False
    path.write_text(json.dumps(cleaned, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    return True


# --------------------------------------------------------------------------
# Chapter parameters given on the command line (make book PARAMS="…")
# --------------------------------------------------------------------------

#: Parameters the runner sets from its own options (PROFILE, SEED, DATA, GUILD,
#: TARGET): not accepted in ``PARAMS``.
RUNNER_PARAMETERS = (*BOOK_PARAMETERS, *GUILD_PARAMETERS)
_RUNNER_OPTIONS = {"profile": "PROFILE= (--profile)", "seed": "SEED= (--seed)",
                   "data_dir": "DATA= (--data)", "results_dir": "--results",
                   "guild": "GUILD= (--guild)", "target": "TARGET= (--target)"}


def _value(text: str) -> Any:
    """A parameter value as written on the command line: a Python/JSON literal, else text."""
    if text in ("true", "false", "null"):
        return json.loads(text)
    value = _literal(text)
    return value


def parse_chapter_parameters(items: str | Sequence[str] | None) -> dict[str, Any]:
    """``name=value`` pairs (``PARAMS="bbox=[-3.9,56.8,-3.0,57.3] block_km=10"``) as a dict.

    Values are Python (or JSON) literals where they read as one (numbers,
    lists, ``None``, ``true``), else text (``model_type=rf``).

    Raises
    ------
    ValueError
        A pair without ``=``, a name that is not an identifier, a name given
        twice, or one of the runner's own parameters (``seed`` …), naming the
        option that sets it.

    Examples
    --------
    >>> parse_chapter_parameters("bbox=[-3.9,56.8,-3.0,57.3] years=[2018,2024] block_km=10")
    {'bbox': [-3.9, 56.8, -3.0, 57.3], 'years': [2018, 2024], 'block_km': 10}
    >>> parse_chapter_parameters(["model_type=rf", "woodland=None"])
    {'model_type': 'rf', 'woodland': None}
    """
    import shlex

    if not items:
        return {}
    pieces = shlex.split(items) if isinstance(items, str) else [
        piece for item in items for piece in shlex.split(item)]
    out: dict[str, Any] = {}
    for piece in pieces:
        name, sep, text = piece.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise ValueError(
                f"PARAMS: {piece!r} is not name=value (e.g. block_km=10 or "
                "bbox=[-3.9,56.8,-3.0,57.3])")
        if name in _RUNNER_OPTIONS:
            raise ValueError(f"PARAMS: set {name} with {_RUNNER_OPTIONS[name]}, not in PARAMS")
        if name in out:
            raise ValueError(f"PARAMS: {name} is given twice")
        out[name] = _value(text.strip())
    return out


def check_chapter_parameters(params: Mapping[str, Any], notebooks: Sequence[Path]) -> None:
    """Fail, in one line, for a parameter that no chapter of the book declares.

    Every notebook beside ``notebooks[0]`` counts, not only those run: the
    same ``PARAMS`` can then rerun one chapter (``--only``) of a book built
    with them, and reach only the chapters that declare each parameter.

    Raises
    ------
    ValueError
        Naming the parameter and the parameters the chapters do declare.
    """
    if not params:
        return
    declared: dict[str, list[str]] = {}
    for nb in find_notebooks(notebooks[0].parent):
        for name in declared_parameters(nb):
            declared.setdefault(name, []).append(nb.name[:2])
    for name in params:
        if name not in declared:
            known = ", ".join(sorted(k for k in declared if k not in RUNNER_PARAMETERS))
            raise ValueError(
                f"PARAMS: no chapter declares the parameter {name!r}; chapter parameters are "
                f"{known or 'none'}")


# --------------------------------------------------------------------------
# Skipped chapters: their title and one sentence, nothing else
# --------------------------------------------------------------------------


def skipped_reason(results_dir: str | Path, chapter: str, since: float) -> str | None:
    """The ``skipped`` value of a results file chapter ``NN`` wrote since ``since``, if any."""
    for path in sorted(Path(results_dir).glob(f"{chapter}_*.json")):
        try:
            if path.stat().st_mtime < since:
                continue
            reason = json.loads(path.read_text()).get("skipped")
        except (OSError, ValueError, AttributeError):
            continue
        if reason:
            return str(reason)
    return None


def _markdown_outputs(nb: Any) -> list[str]:
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            text = out.get("data", {}).get("text/markdown")
            if text:
                texts.append("".join(text) if isinstance(text, list) else text)
    return texts


def shows_results(executed: str | Path) -> bool:
    """True when an executed chapter shows a figure or a table (it skipped only part of its work).

    A chapter whose results say ``skipped`` but which still drew a figure or a
    table (chapter 09 describes the field table when it cannot cross-validate)
    keeps its page; one that showed sentences only is reduced to its title and
    one sentence.
    """
    import nbformat

    nb = nbformat.read(str(executed), as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if any(k.startswith("image/") for k in data) or "text/html" in data:
                return True
    return False


def strip_skipped_chapter(executed: str | Path, reason: str) -> None:
    """Reduce an executed chapter that skipped its analysis to its title and one sentence.

    The sentence is the first one the chapter displayed that speaks of skipping
    (``skip``), else ``reason`` (its results file's ``skipped`` value). The
    ``parameters`` and ``injected-parameters`` cells stay in the file, hidden
    (``remove-cell``), so the executed notebook still records what ran; every
    other cell (methods, code, figures, summary) is dropped.
    """
    import nbformat

    nb = nbformat.read(str(executed), as_version=4)
    title = next((line for c in nb.cells if c.cell_type == "markdown"
                  for line in c.source.splitlines() if line.startswith("# ")), None)
    sentence = next((t.strip() for t in _markdown_outputs(nb) if "skip" in t.lower()), None)
    if sentence is None:
        sentence = reason if reason.rstrip().endswith(".") else (
            f"This chapter is skipped on this run ({reason}).")
    kept = []
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if "parameters" in tags or "injected-parameters" in tags:
            if "remove-cell" not in tags:
                cell.metadata["tags"] = [*tags, "remove-cell"]
            kept.append(cell)
    head = nbformat.v4.new_markdown_cell(f"{title or '# ' + Path(executed).stem}\n\n{sentence}")
    nb.cells = [head, *kept]
    nbformat.write(nb, str(executed))


# --------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------


@dataclass
class NotebookRun:
    """Timing of one executed notebook, as written to ``run_summary.json``."""

    notebook: str
    seconds: float
    profile: str
    seed: int
    status: str = "ok"


class NotebookFailure(RuntimeError):
    """A notebook raised in one of its cells; the message says where and what.

    Attributes
    ----------
    notebook : pathlib.Path
        The source notebook.
    output : pathlib.Path
        The executed copy, which holds the traceback.
    cell_index : int or None
        Index of the failing cell in the source notebook (0-based).
    execution_count : int or None
        The ``In [n]`` number of the failing cell.
    source : str
        The failing cell's source.
    ename, evalue : str
        Exception name and message.
    """

    def __init__(
        self,
        notebook: Path,
        output: Path,
        cell_index: int | None,
        execution_count: int | None,
        source: str,
        ename: str,
        evalue: str,
    ) -> None:
        self.notebook = notebook
        self.output = output
        self.cell_index = cell_index
        self.execution_count = execution_count
        self.source = source
        self.ename = ename
        self.evalue = evalue
        #: Notebooks run so far, the failed one last (set by :func:`run_book`).
        self.runs: list[NotebookRun] = []
        super().__init__(self.describe())

    def describe(self) -> str:
        """A multi-line message naming notebook, cell and error."""
        lines = self.source.splitlines()
        shown = lines[:SOURCE_LINES_SHOWN]
        if len(lines) > SOURCE_LINES_SHOWN:
            shown.append(f"... ({len(lines) - SOURCE_LINES_SHOWN} more lines)")
        where = "before any cell ran" if self.cell_index is None else f"in cell {self.cell_index}"
        count = "" if self.execution_count is None else f" (In [{self.execution_count}])"
        return "\n".join(
            [
                f"notebook {self.notebook.name} failed {where}{count}:",
                *(f"    | {line}" for line in shown),
                f"{self.ename}: {self.evalue}",
                f"the executed notebook with the full traceback is {self.output}",
            ]
        )


def _source_cell_index(output: Path, executed_index: int) -> int:
    """Map a cell index in papermill's output back to the source notebook.

    papermill inserts an ``injected-parameters`` cell; cells after it shift by one.
    """
    try:
        import nbformat

        nb = nbformat.read(str(output), as_version=4)
    except (OSError, ValueError):  # unreadable if the kernel died while writing it
        return executed_index
    cells = [
        c
        for c in nb.cells
        if "papermill-error-cell-tag" not in c.get("metadata", {}).get("tags", [])
    ]
    for i, cell in enumerate(cells[: executed_index + 1]):
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            return executed_index - 1 if executed_index > i else executed_index
    return executed_index


def _running_cell(output: Path) -> tuple[int | None, int | None, str]:
    """Index, execution count and source of the last code cell papermill started."""
    import nbformat

    try:
        nb = nbformat.read(str(output), as_version=4)
    except (OSError, ValueError):
        return None, None, ""
    started = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        and cell.get("metadata", {}).get("papermill", {}).get("start_time")
    ]
    if not started:
        return None, None, ""
    cell = nb.cells[started[-1]]
    return started[-1], cell.get("execution_count"), cell.get("source", "")


def hide_default_parameters(executed: str | Path) -> bool:
    """Tag the ``parameters`` cell of an executed notebook ``remove-cell``.

    papermill keeps the notebook's own ``parameters`` cell (the defaults) and
    adds an ``injected-parameters`` cell with the values actually used. The
    book shows only the latter, so a reader never sees two conflicting sets.
    Returns True if a cell was tagged.
    """
    import nbformat

    nb = nbformat.read(str(executed), as_version=4)
    tags = [c.get("metadata", {}).get("tags", []) for c in nb.cells]
    if not any("injected-parameters" in t for t in tags):
        return False
    changed = False
    for cell, cell_tags in zip(nb.cells, tags, strict=True):
        if "parameters" in cell_tags and "remove-cell" not in cell_tags:
            cell.metadata["tags"] = [*cell_tags, "remove-cell"]
            changed = True
    if changed:
        nbformat.write(nb, str(executed))
    return changed


@contextlib.contextmanager
def _kernel_environment(extra: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables that kernels inherit; restore them afterwards."""
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def execute_notebook(
    notebook: str | Path,
    output: str | Path,
    parameters: Mapping[str, Any],
    kernel_name: str = KERNEL_NAME,
    path_placeholders: Mapping[str, str] | None = None,
) -> float:
    """Execute one notebook with papermill; return the seconds it took.

    The kernel runs in the notebook's own directory, headless, with
    ``MPLBACKEND`` set to :data:`KERNEL_MPLBACKEND`, and is reached over
    :data:`KERNEL_TRANSPORT`. In the executed copy the default ``parameters``
    cell is hidden from the book (:func:`hide_default_parameters`); the
    injected values stay visible. Absolute paths in ``path_placeholders``
    (default: :func:`machine_path_placeholders` of the repository and home
    folder) are replaced in the executed copy (:func:`scrub_machine_paths`).

    Raises
    ------
    NotebookFailure
        If a cell raises; the executed copy (with the traceback) is still written.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError
    from traitlets.config import Config

    kernel_config = Config()
    kernel_config.KernelManager.transport = KERNEL_TRANSPORT
    notebook, output = Path(notebook), Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with _kernel_environment({"MPLBACKEND": KERNEL_MPLBACKEND}):
        try:
            papermill.execute_notebook(
                str(notebook),
                str(output),
                parameters=dict(parameters),
                kernel_name=kernel_name,
                progress_bar=False,
                cwd=str(notebook.parent),
                config=kernel_config,
            )
        except PapermillExecutionError as err:
            scrub_machine_paths(output, _placeholders(path_placeholders))
            raise NotebookFailure(
                notebook=notebook,
                output=output,
                cell_index=_source_cell_index(output, err.cell_index),
                execution_count=err.exec_count,
                source=err.source,
                ename=err.ename,
                evalue=err.evalue,
            ) from None
        except (RuntimeError, KeyError, TimeoutError, OSError) as err:
            # The kernel did not start (unknown kernel name, no response) or died
            # (out of memory); name the cell that was running, if any.
            index, count, source = _running_cell(output)
            with contextlib.suppress(OSError, ValueError):
                scrub_machine_paths(output, _placeholders(path_placeholders))
            raise NotebookFailure(
                notebook=notebook,
                output=output,
                cell_index=None if index is None else _source_cell_index(output, index),
                execution_count=count,
                source=source,
                ename=type(err).__name__,
                evalue=f"{err} (kernel {kernel_name!r})",
            ) from err
    seconds = time.perf_counter() - start
    hide_default_parameters(output)
    scrub_machine_paths(output, _placeholders(path_placeholders))
    return seconds


def _placeholders(given: Mapping[str, str] | None) -> Mapping[str, str]:
    return machine_path_placeholders() if given is None else given


def write_run_summary(runs: Sequence[NotebookRun], results_dir: str | Path, merge: bool) -> Path:
    """Write ``run_summary.json``; with ``merge``, keep earlier entries of other notebooks."""
    path = Path(results_dir) / "run_summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    entries: dict[str, dict[str, Any]] = {}
    if merge and path.exists():
        try:
            for entry in json.loads(path.read_text()).get("notebooks", []):
                entries[entry["notebook"]] = entry
        except (json.JSONDecodeError, KeyError, AttributeError):
            entries = {}
    for run in runs:
        entries[run.notebook] = asdict(run)
    ordered = [entries[k] for k in sorted(entries)]
    summary = {
        "notebooks": ordered,
        "total_seconds": round(sum(e["seconds"] for e in ordered), 2),
        "written": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    path.write_text(json.dumps(to_json_safe(summary), indent=2, sort_keys=True) + "\n")
    return path


def format_summary(runs: Sequence[NotebookRun]) -> str:
    """A plain-text table of notebook, status and seconds.

    Examples
    --------
    >>> print(format_summary([NotebookRun("01_field_data", 12.345, "quick", 0)]))
    notebook         status   seconds
    01_field_data    ok          12.3
    total                        12.3
    """
    width = max([len("notebook"), *(len(r.notebook) for r in runs)]) + 4
    lines = [f"{'notebook':<{width}}{'status':<7}{'seconds':>9}"]
    for r in runs:
        lines.append(f"{r.notebook:<{width}}{r.status:<7}{r.seconds:>9.1f}")
    lines.append(f"{'total':<{width}}{'':<7}{sum(r.seconds for r in runs):>9.1f}")
    return "\n".join(lines)


def run_book(
    *,
    profile: str | None = None,
    seed: int = 0,
    data_dir: str | Path | None = None,
    only: Sequence[str] | None = None,
    notebook_dir: str | Path | None = None,
    output_dir: str | Path | None = None,
    results_dir: str | Path | None = None,
    kernel_name: str = KERNEL_NAME,
    progress: bool = True,
    guild: str | None = None,
    target: str | None = None,
    samples: str | Path | None = None,
    chapter_parameters: Mapping[str, Any] | None = None,
) -> list[NotebookRun]:
    """Execute the book's notebooks in order and write ``run_summary.json``.

    A real data directory is checked before any chapter runs
    (:func:`fungi_ssl.io.check_data_directory`: one line, in a second or
    two). Results go to ``<output_dir>/results`` for the book's own parameters
    (default profile, seed 0, the simulated study, no chapter parameters), and
    to ``<output_dir>/results-<key>`` (:func:`results_key`) for any other run, so
    a rerun never mixes its numbers into the book's; a run of some chapters
    (``only``) with other parameters also writes its executed notebooks there,
    beside their results. A chapter whose results say ``skipped`` and which
    shows no figure or table is reduced to its title and its one sentence
    (:func:`strip_skipped_chapter`).

    Parameters
    ----------
    profile : {"quick", "full"}, optional
        Book profile (:data:`fungi_ssl.config.PROFILES`); default
        :data:`fungi_ssl.config.DEFAULT_PROFILE`.
    seed : int
        Seed passed to every notebook that declares ``seed``.
    data_dir : str or pathlib.Path, optional
        Real data directory; ``None`` runs the simulated study.
    only : sequence of str, optional
        Run only these chapters (``"01"`` or ``"01_field_data"``).
    notebook_dir, output_dir, results_dir : path, optional
        Source notebooks (default ``notebooks/``), executed copies (default
        ``book/``) and results (default ``<output_dir>/results``).
    kernel_name : str
        Jupyter kernel to run in.
    progress : bool
        Show a tqdm bar over the notebooks.
    guild, target : str, optional
        The fungal guild and the sample-table column of its rarefied
        richness, passed to every notebook that declares them (default: each
        notebook's own, ``"ECM"`` and ``"rarefied"``).
    samples : str or pathlib.Path, optional
        The sample table of ``data_dir`` when it holds several (a file name or
        path); kernels see it as ``FUNGI_SSL_SAMPLES``.
    chapter_parameters : mapping, optional
        Other parameters (``{"block_km": 10}``, :func:`parse_chapter_parameters`),
        injected into the notebooks that declare them; one that no notebook run
        declares is an error.

    Returns
    -------
    list of NotebookRun
        One entry per executed notebook.

    Raises
    ------
    NotebookFailure
        When a notebook fails; the summary is still written, with the failed
        notebook marked ``"failed"``, and later notebooks are not run.
    """
    from tqdm import tqdm

    profile = profile or config.DEFAULT_PROFILE
    config.get_profile(profile)  # validates the name
    if data_dir:
        data_path = Path(data_dir)
        if not data_path.is_dir():
            raise FileNotFoundError(
                f"data directory {data_path} does not exist (or is not a directory); "
                "omit --data to run the simulated study"
            )
        from .io import check_data_directory

        check_data_directory(data_path, target=target or "rarefied", samples=samples)
    elif samples:
        raise ValueError("SAMPLES (--samples) names a table of a data directory; give DATA too")
    chapter_parameters = dict(chapter_parameters or {})
    notebook_dir = Path(notebook_dir) if notebook_dir else config.NOTEBOOK_DIR
    notebooks = find_notebooks(notebook_dir, only)
    check_chapter_parameters(chapter_parameters, notebooks)
    changed = {k: v for k, v in {"profile": profile if profile != config.DEFAULT_PROFILE else None,
                                 "seed": seed or None, "data_dir": data_dir or None,
                                 "guild": guild, "target": target,
                                 "samples": str(samples) if samples else None}.items()
               if v is not None}
    key = results_key({**changed, **chapter_parameters})
    book_dir = Path(output_dir) if output_dir else config.BOOK_DIR
    if results_dir:
        results_dir, output_dir = Path(results_dir), book_dir
    else:
        results_dir = results_folder(key, book_dir)
        output_dir = results_dir if (key and only) else book_dir
    results_dir.mkdir(parents=True, exist_ok=True)
    placeholders = machine_path_placeholders(data_dir, results_dir, notebook_dir, output_dir)

    runs: list[NotebookRun] = []
    bar = tqdm(notebooks, desc="notebooks", unit="nb", disable=not progress, file=sys.stderr)
    try:
        for nb_path in bar:
            bar.set_postfix_str(nb_path.stem)
            params = notebook_parameters(
                declared_parameters(nb_path),
                profile=profile,
                seed=seed,
                data_dir=data_dir,
                results_dir=results_dir,
                cwd=nb_path.parent,
                guild=guild,
                target=target,
                chapter_parameters=chapter_parameters,
            )
            start = time.perf_counter()
            started = time.time() - 1.0
            env = {} if not samples else {"FUNGI_SSL_SAMPLES": str(
                Path(samples).resolve() if Path(samples).exists() else samples)}
            try:
                with _kernel_environment(env):
                    seconds = execute_notebook(
                        nb_path, output_dir / nb_path.name, params, kernel_name, placeholders
                    )
            except NotebookFailure as failure:
                runs.append(
                    NotebookRun(
                        nb_path.stem, round(time.perf_counter() - start, 2), profile, seed, "failed"
                    )
                )
                failure.runs = list(runs)
                raise
            reason = skipped_reason(results_dir, nb_path.name[:2], started)
            if reason and not shows_results(output_dir / nb_path.name):
                strip_skipped_chapter(output_dir / nb_path.name, reason)
            runs.append(NotebookRun(nb_path.stem, round(seconds, 2), profile, seed))
            bar.write(f"[{len(runs)}/{len(notebooks)}] {nb_path.name}: {seconds:.1f} s")
    finally:
        bar.close()
        if runs:
            write_run_summary(runs, results_dir, merge=bool(only))
    return runs


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``python -m fungi_ssl.bookrun``."""
    parser = argparse.ArgumentParser(
        prog="python -m fungi_ssl.bookrun",
        description="Execute notebooks/NN_*.ipynb in order with papermill into book/.",
    )
    parser.add_argument(
        "--profile",
        choices=sorted(config.PROFILES),
        default=config.DEFAULT_PROFILE,
        help=f"book profile (default: {config.DEFAULT_PROFILE}, from fungi_ssl.config)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed passed to notebooks (default: 0)"
    )
    parser.add_argument(
        "--data",
        metavar="DIR",
        default=None,
        help="real data directory (default: the simulated study)",
    )
    parser.add_argument(
        "--only",
        metavar="NN",
        action="append",
        default=None,
        help="run only this chapter, e.g. 01 (repeatable)",
    )
    parser.add_argument(
        "--notebooks",
        metavar="DIR",
        default=None,
        help=f"source notebooks (default: {config.NOTEBOOK_DIR})",
    )
    parser.add_argument(
        "--output",
        metavar="DIR",
        default=None,
        help=f"the book folder: executed notebooks and results/ (default: {config.BOOK_DIR}); "
             "a rerun of some chapters (--only) with other parameters writes both to "
             "OUTPUT/results-<key>",
    )
    parser.add_argument(
        "--results", metavar="DIR", default=None, help="results directory (default: OUTPUT/results)"
    )
    parser.add_argument(
        "--kernel", default=KERNEL_NAME, help=f"Jupyter kernel (default: {KERNEL_NAME})"
    )
    parser.add_argument(
        "--guild", default=None,
        help="fungal guild of the sample table, e.g. AM (default: each notebook's, ECM)",
    )
    parser.add_argument(
        "--target", metavar="COLUMN", default=None,
        help="sample-table column of the guild's rarefied richness (default: rarefied)",
    )
    parser.add_argument(
        "--samples", metavar="FILE", default=None,
        help="the sample table of --data when it holds several (a file name in it, or a path)",
    )
    parser.add_argument(
        "--param", "-P", metavar="NAME=VALUE", action="append", default=None,
        help="a chapter parameter, e.g. -P block_km=10 -P 'bbox=[-3.9,56.8,-3.0,57.3]' "
             "(repeatable; several in one quoted string as make's PARAMS); injected into the "
             "chapters that declare it",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    args = build_parser().parse_args(argv)
    if args.data and not Path(args.data).is_dir():
        what = "is a file, not a directory" if Path(args.data).exists() else "does not exist"
        print(f"error: --data {args.data}: directory {what}", file=sys.stderr)
        return 2
    try:
        chapter_parameters = parse_chapter_parameters(args.param)
        runs = run_book(
            profile=args.profile,
            seed=args.seed,
            data_dir=args.data,
            only=args.only,
            notebook_dir=args.notebooks,
            output_dir=args.output,
            results_dir=args.results,
            kernel_name=args.kernel,
            progress=not args.no_progress,
            guild=args.guild,
            target=args.target,
            samples=args.samples,
            chapter_parameters=chapter_parameters,
        )
    except NotebookFailure as failure:
        if failure.runs:
            print(format_summary(failure.runs))
        print(f"\nerror: {failure.describe()}\nlater notebooks were not run.", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_summary(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
