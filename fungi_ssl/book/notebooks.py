"""The book's notebooks: finding them, their parameters, and cleaning what a run leaves in them.

Used by the runner (:mod:`fungi_ssl.book.runner`): notebook discovery
(:func:`find_notebooks`), the parameters each declares and receives
(:func:`notebook_parameters`, :func:`parse_chapter_parameters`), machine paths
replaced by placeholders (:func:`scrub_machine_paths`) and chapters that skip
reduced to their title and reason (:func:`strip_skipped_chapter`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fungi_ssl.core import config
from fungi_ssl.core.results import _literal

#: The parameters the runner injects into every notebook (each declares them all).
BOOK_PARAMETERS = ("profile", "seed", "data_dir", "results_dir")
#: The guild and the sample-table column of its richness (``make book GUILD=AM
#: TARGET=am_rarefied``): injected, when given, into the notebooks that declare them
#: (those whose text speaks of a guild); the others keep ECM.
GUILD_PARAMETERS = ("guild", "target")
#: Notebook file names the runner picks up: two digits, an underscore, a name.
NOTEBOOK_PATTERN = re.compile(r"^(\d{2})_[^/]+\.ipynb$")


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
