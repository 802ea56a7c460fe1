"""The chapters' results files: ``book/results/NN_<name>.json``, written and read back.

A chapter keeps the numbers that later chapters and tests need with
:func:`write_results` and reads another chapter's with :func:`read_results`.
Only a run with the book's own parameters writes ``book/results/``; any other
writes ``book/results-<key>/``, named for what it changed (:func:`results_key`,
:func:`default_results_dir`). Moved out of the notebook runner
(:mod:`fungi_ssl.book.runner`) so that any stage may read a chapter's results.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fungi_ssl.core import config

#: Result names: the chapter's two digits, an underscore, then a plain name.
RESULT_NAME_PATTERN = re.compile(r"^\d{2}_[A-Za-z0-9][A-Za-z0-9_\-]*$")
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

    ``book/results`` (:data:`fungi_ssl.core.config.RESULTS_DIR`), unless the
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
        :data:`fungi_ssl.core.config.RESULTS_DIR`. Notebooks pass their
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
            f"first (python -m fungi_ssl.book.runner --only {name[:2]})"
        )
    return json.loads(path.read_text())


# --------------------------------------------------------------------------
# Finding and parameterising notebooks
# --------------------------------------------------------------------------
