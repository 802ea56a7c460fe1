"""Run the book's notebooks with papermill, in order, and keep their results.

``make notebooks`` calls this module::

    python -m fungi_ssl.book.runner [--profile quick] [--seed 0] [--data DIR] [--only 01]
                                [--guild AM] [--target am_rarefied] [--samples FILE]
                                [-P block_km=10 -P 'bbox=[-3.9,56.8,-3.0,57.3]']

Without ``--profile`` the book is built with :data:`fungi_ssl.core.config.DEFAULT_PROFILE`.

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
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fungi_ssl.book.notebooks import (
    check_chapter_parameters,
    declared_parameters,
    find_notebooks,
    machine_path_placeholders,
    notebook_parameters,
    parse_chapter_parameters,
    scrub_machine_paths,
    shows_results,
    skipped_reason,
    strip_skipped_chapter,
)
from fungi_ssl.core import config
from fungi_ssl.core.results import results_folder, results_key, to_json_safe

#: The kernel every notebook runs in (``make setup`` installs it with ``--sys-prefix``).
KERNEL_NAME = "python3"
#: Matplotlib backend for kernels: headless (it renders with Agg) but, unlike plain
#: ``Agg``, it still puts every figure into the notebook, so the book shows it.
#: Set explicitly so that an ``MPLBACKEND=Agg`` in the caller's environment
#: (CI, servers) cannot silently drop the book's figures.
KERNEL_MPLBACKEND = "module://matplotlib_inline.backend_inline"
#: glibc's allocator in each kernel (and the worker processes it starts): keep 512 MiB
#: beyond the top of the heap when it grows or shrinks. By default glibc hands freed
#: memory back at once and faults it in again page by page on the next allocation;
#: simulating and embedding a cube allocates and frees hundreds of MB per window. With
#: it, chapter 08's park-years are made 1.18 times as fast (``benchmarks/bench_allocator.py``)
#: and a cold full book spent 131 system CPU-seconds instead of 215 (957 s against 1,008 s).
#: The numbers are unchanged; a variable already set in the caller's environment wins.
KERNEL_ALLOCATOR_ENV = {"MALLOC_TOP_PAD_": str(512 * 2**20)}
#: Idle threads in each kernel (and its worker processes) sleep soon: a GNU OpenMP thread
#: (LightGBM's) that waits at the end of a parallel region spins 1,000 times, not libgomp's
#: default 300,000, and an OpenBLAS thread (numpy's, scipy's) with no work waits 2^4
#: cycles, not 2^28. Two-thread fits run many small parallel regions; while the other lane
#: (or a worker) keeps the second core busy, the waiting thread spun through the time
#: slice the working one needed. Measured here: chapter 08's map model (12,350 samples, two
#: threads) beside two busy processes took 32.4 s and 28.9 CPU-seconds with the defaults,
#: 14.4 s and 10.1 with the OpenMP setting, 11.1 s and 5.8 with both; a fit of its shape
#: (``benchmarks/bench_thread_wait.py``) is 3.64 times as fast beside two busy processes
#: and 1.39 times idle. Waiting does not change any result; a variable already set in the
#: caller's environment wins.
KERNEL_THREAD_WAIT_ENV = {"GOMP_SPINCOUNT": "1000", "OPENBLAS_THREAD_TIMEOUT": "4"}
#: Lines of the failing cell's source shown in the error message.
SOURCE_LINES_SHOWN = 6
#: How the runner talks to kernels: IPC (Unix domain sockets in Jupyter's runtime
#: folder) rather than TCP on localhost, which ipykernel warns is unencrypted.
KERNEL_TRANSPORT = "ipc"


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
    #: CPU-seconds (user + system) of the notebook's kernel and every process it
    #: started and waited for (model fits, worker pools); None where unmeasured.
    cpu_seconds: float | None = None


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


def kernel_tuning_environment() -> dict[str, str]:
    """:data:`KERNEL_ALLOCATOR_ENV` and :data:`KERNEL_THREAD_WAIT_ENV`, less any variable the
    caller's environment already sets.

    Examples
    --------
    >>> import os
    >>> defaults = {**KERNEL_ALLOCATOR_ENV, **KERNEL_THREAD_WAIT_ENV}
    >>> sorted(kernel_tuning_environment()) == sorted(k for k in defaults if k not in os.environ)
    True
    """
    defaults = {**KERNEL_ALLOCATOR_ENV, **KERNEL_THREAD_WAIT_ENV}
    return {k: v for k, v in defaults.items() if k not in os.environ}


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
    # the IPC sockets' path prefix, one per kernel: by default it is "kernel-ipc" in the
    # working folder, and two kernels started at once (lanes) picked the same sockets
    kernel_config.KernelManager.ip = os.path.join(
        tempfile.gettempdir(), f"fungi-ssl-kernel-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    notebook, output = Path(notebook), Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with _kernel_environment({"MPLBACKEND": KERNEL_MPLBACKEND, **kernel_tuning_environment()}):
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
        "total_cpu_seconds": (round(sum(e["cpu_seconds"] for e in ordered), 1)
                              if all(e.get("cpu_seconds") is not None for e in ordered)
                              else None),
        "written": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    path.write_text(json.dumps(to_json_safe(summary), indent=2, sort_keys=True) + "\n")
    return path


def format_summary(runs: Sequence[NotebookRun]) -> str:
    """A plain-text table of notebook, status, seconds and, where measured, CPU-seconds.

    Examples
    --------
    >>> print(format_summary([NotebookRun("01_field_data", 12.345, "quick", 0)]))
    notebook         status   seconds
    01_field_data    ok          12.3
    total                        12.3
    >>> print(format_summary([NotebookRun("01_field_data", 12.345, "quick", 0, cpu_seconds=20.0)]))
    notebook         status   seconds    CPU-s
    01_field_data    ok          12.3       20
    total                        12.3       20
    """
    width = max([len("notebook"), *(len(r.notebook) for r in runs)]) + 4
    cpu = all(r.cpu_seconds is not None for r in runs)
    lines = [f"{'notebook':<{width}}{'status':<7}{'seconds':>9}" + (f"{'CPU-s':>9}" if cpu else "")]
    for r in runs:
        lines.append(f"{r.notebook:<{width}}{r.status:<7}{r.seconds:>9.1f}"
                     + (f"{r.cpu_seconds:>9.0f}" if cpu else ""))
    total = f"{'total':<{width}}{'':<7}{sum(r.seconds for r in runs):>9.1f}"
    lines.append(total + (f"{sum(r.cpu_seconds or 0.0 for r in runs):>9.0f}" if cpu else ""))
    return "\n".join(lines)


#: Stages of chapters that run side by side, per profile, each a tuple of lanes:
#: each lane in book order, the lanes at once, each notebook in a process of its own;
#: every other chapter runs alone, in order. A stage starts where its first
#: chapter comes in the book, once every chapter before it has run.
#:
#: - Chapter 02 pre-trains the encoder for minutes, one torch thread per view
#:   (:data:`fungi_ssl.embeddings.encoder.TRAIN_THREADS`, ``VIEW_THREADS``),
#:   and leaves gaps (a step's loss, the optimiser, the probes), so chapters
#:   00, 01 and 09, which need neither the encoder nor each other's results, run
#:   beside it (00 and 01 may each make the simulated study's tables; cache
#:   entries are written under unique temporary names and renamed, so two makers
#:   of one entry leave one whole file). Chapter 03, which embeds the samples with
#:   the encoder, follows 02 in its lane instead of running alone afterwards.
#: - Chapters 04-11 read what chapters 00-03 leave (the study, the encoder, the
#:   predictor table) and each writes caches of its own kinds. Chapters 06, 07
#:   and 11 also read chapter 04's results (the model family, the held-out
#:   predictions), and chapter 07 reads chapter 06's held-out models
#:   (:data:`AFTER`).
#: - **Full:** chapter 04 (Table 1 over 10 seeds, on both cores) runs alone,
#:   then 06 and 07 in one lane beside 05, 08, 09, 10 and 11. In a lane beside
#:   chapter 08, chapter 04 took twice as long (343 s against about 170 s,
#:   cold) and the chain 04, 06, 07 then ended 220 s after the other lane.
#: - **Quick:** chapter 04 (3 seeds) joins the lanes: 04, 06 and 07 in one,
#:   05, 08, 10 and 11 in the other, where chapter 11 waits for 04 if it
#:   gets there first. With chapter 06's regions held out in groups, 04 alone
#:   and then the lanes would take about 44 s longer by the chapter times of a
#:   cold run (82 s, then lanes of 143 and 266 s, against lanes of 304 and 266 s).
#: - The lanes of the stage after 03 run one per core (:data:`PIN_LANES`).
STAGES_BY_PROFILE: dict[str, tuple[tuple[tuple[str, ...], ...], ...]] = {
    "full": ((("02", "03"), ("00", "01", "09")),
             (("06", "07"), ("05", "08", "10", "11"))),
    "quick": ((("02", "03"), ("00", "01", "09")),
              (("04", "06", "07"), ("05", "08", "10", "11"))),
}
#: The stages of the default profile (:data:`fungi_ssl.core.config.DEFAULT_PROFILE`).
STAGES: tuple[tuple[tuple[str, ...], ...], ...] = STAGES_BY_PROFILE[config.DEFAULT_PROFILE]
#: The lanes of the last stage of :data:`STAGES`.
LANES: tuple[tuple[str, ...], ...] = STAGES[-1]
#: Chapters that read what other chapters of their stage write: a lane holds such a
#: chapter until those have run (:func:`_next_in_lanes`). Chapters 06, 07 and 11 read
#: chapter 04's results (its model family, its held-out predictions); chapter 07 reads
#: chapter 06's held-out models.
AFTER: dict[str, tuple[str, ...]] = {"06": ("04",), "07": ("04", "06"), "11": ("04",)}


def lane_plan(notebooks: Sequence[Path],
              stages: Sequence[Sequence[Sequence[str]]] = STAGES) -> list[list[list[Path]]]:
    """Stages of a book run: each a list of lanes, each lane a list of notebooks run in book order.

    A notebook in none of ``stages`` runs alone, in its place in the book. The
    notebooks of a stage of :data:`STAGES` form one stage where the first of
    them comes; a stage with fewer than two lanes holding a notebook runs its
    notebooks one after another instead.

    Examples
    --------
    >>> names = [Path(f"{n}_x.ipynb") for n in ("00", "02", "03", "05", "06", "07", "12")]
    >>> [[[p.name[:2] for p in lane] for lane in stage] for stage in lane_plan(names)]
    [[['02', '03'], ['00']], [['06', '07'], ['05']], [['12']]]
    >>> len(lane_plan(names[2:4]))  # one lane chapter only: one after another
    2
    """
    where = {ch: (s, i) for s, stage in enumerate(stages)
             for i, lane in enumerate(stage) for ch in lane}
    plan: list[list[list[Path]]] = []
    placed: set[int] = set()
    for nb in notebooks:
        if nb.name[:2] not in where:
            plan.append([[nb]])
            continue
        s = where[nb.name[:2]][0]
        if s in placed:
            continue
        placed.add(s)
        members = [p for p in notebooks if where.get(p.name[:2], (None,))[0] == s]
        lanes = [[p for p in members if where[p.name[:2]][1] == i] for i in range(len(stages[s]))]
        filled = [lane for lane in lanes if lane]
        plan.extend([filled] if len(filled) >= 2 else [[[p]] for p in members])
    return plan


def _children_cpu_seconds() -> float:
    """User + system CPU-seconds of this process's waited-for children (and theirs)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _execute(nb_path: Path, output: Path, params: Mapping[str, Any], kernel_name: str,
             placeholders: Mapping[str, str], env: Mapping[str, str],
             cores: set[int] | None = None,
             ) -> tuple[float, dict[str, Any] | None, float, float]:
    """Run one notebook: ``(seconds, failure fields or None, start time, CPU-seconds)``.

    Also runs in a lane's child process, one notebook at a time, so the CPU time
    the kernel's process tree used is the growth of this process's children's
    usage (the kernel is waited for when papermill shuts it down, and it waits
    for its own workers).
    """
    started = time.time() - 1.0
    start = time.perf_counter()
    cpu_before = _children_cpu_seconds()
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)  # the kernel and its workers inherit it
    try:
        with _kernel_environment(env):
            seconds = execute_notebook(nb_path, output, params, kernel_name, placeholders)
    except NotebookFailure as failure:
        fields = {k: getattr(failure, k) for k in ("notebook", "output", "cell_index",
                                                   "execution_count", "source", "ename",
                                                   "evalue")}
        return (time.perf_counter() - start, fields, started,
                _children_cpu_seconds() - cpu_before)
    return seconds, None, started, _children_cpu_seconds() - cpu_before


def _next_in_lanes(queues: Sequence[list[Path]], idle: Sequence[int], finished: set[str],
                   running: set[str], failed: set[str] = frozenset(),
                   after: Mapping[str, Sequence[str]] = AFTER) -> list[tuple[int, Path]]:
    """The notebooks the ``idle`` lanes start now: each lane's next one, unless it reads a
    chapter of the stage that has not run yet (:data:`AFTER`).

    A chapter waits while a chapter it reads is still queued in some lane or
    ``running``. A lane whose next chapter reads a ``failed`` one stops (its
    queue is emptied). The notebooks started are removed from ``queues``.

    Examples
    --------
    >>> q = [[Path("04_a.ipynb"), Path("06_b.ipynb")], [Path("05_c.ipynb"), Path("11_d.ipynb")]]
    >>> [(i, p.name[:2]) for i, p in _next_in_lanes(q, [0, 1], set(), set())]
    [(0, '04'), (1, '05')]
    >>> _next_in_lanes(q, [1], {"05"}, {"04"})  # 11 waits for 04, which is running
    []
    >>> [(i, p.name[:2]) for i, p in _next_in_lanes(q, [1], {"04", "05"}, {"06"})]
    [(1, '11')]
    """
    started: list[tuple[int, Path]] = []
    for i in idle:
        if not queues[i]:
            continue
        chapter = queues[i][0].name[:2]
        queued = {p.name[:2] for lane in queues for p in lane} - {chapter}
        needs = [c for c in after.get(chapter, ()) if c not in finished]
        if any(c in failed for c in needs):
            queues[i].clear()
        elif not any(c in queued or c in running for c in needs):
            started.append((i, queues[i].pop(0)))
    return started


#: Run each lane of a stage on a core (or share of the cores) of its own, by CPU
#: affinity, which the chapter's kernel and its workers inherit. Two lanes of model
#: fits left to the scheduler took more CPU time than the same work one lane per core
#: (threads moved between cores and waited on partners the other lane had displaced):
#: in single runs chapter 08 took 125 CPU-seconds pinned beside chapter 04 and 153 in
#: an unpinned lane; ``benchmarks/bench_lanes.py`` measures 1-6% on a synthetic pair.
#: ``FUNGI_SSL_PIN_LANES=0`` turns it off.
PIN_LANES = os.environ.get("FUNGI_SSL_PIN_LANES", "1") != "0"
#: Chapters whose stage is not pinned: chapter 02 pre-trains with two threads by design
#: (:data:`fungi_ssl.embeddings.encoder.VIEW_THREADS`) and is the stage's longest
#: chapter, so it takes whatever core the other lane leaves.
UNPINNED_CHAPTERS = ("02",)


def _allowed_cores() -> set[int] | None:
    """The cores this process may run on; None where the system cannot pin (macOS, Windows)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def lane_cores(lane: int, n_lanes: int) -> set[int] | None:
    """The cores lane ``lane`` of ``n_lanes`` runs on: one of its own, or None (any).

    None also where the system cannot pin a process to cores (macOS, Windows)
    or pinning is off (:data:`PIN_LANES`).
    """
    cores = _allowed_cores()
    if not PIN_LANES or cores is None or len(cores) < n_lanes:
        return None
    allowed = sorted(cores)
    return {allowed[lane * len(allowed) // n_lanes]} if len(allowed) == n_lanes else set(
        allowed[lane * len(allowed) // n_lanes:(lane + 1) * len(allowed) // n_lanes])


def widen_to_all_cores() -> int:
    """Let every process under this one, and each of their threads, run on any allowed core.

    Called when a lane has run its last chapter, so that the lanes still running
    may use its core. Returns the threads widened (a process or thread that has
    ended meanwhile is passed over).
    """
    import psutil

    allowed = _allowed_cores()
    if allowed is None:
        return 0
    widened = 0
    for proc in psutil.Process().children(recursive=True):
        try:
            tids = [t.id for t in proc.threads()]
        except psutil.Error:
            continue
        for tid in tids:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, allowed)
                widened += 1
    return widened


def _run_stages(stages: Sequence[Sequence[Sequence[Path]]], task: Any,
                ) -> Iterator[tuple[Path, tuple[float, dict[str, Any] | None, float, float]]]:
    """Run the stages in order, the lanes of a stage in child processes; yield each result.

    ``task(nb)`` gives :func:`_execute`'s arguments. A lane stops at its first
    failed notebook; the other lanes of the stage finish theirs. A lane holds a
    chapter of :data:`AFTER` until the chapters it reads have run. Each lane
    runs on a core of its own (:func:`lane_cores`) until some lane has run its
    last chapter; from then on every lane may use every core
    (:func:`widen_to_all_cores`).
    """
    import concurrent.futures as cf
    import multiprocessing

    for stage in stages:
        if len(stage) == 1:
            for nb in stage[0]:
                result = _execute(*task(nb))
                yield nb, result
                if result[1] is not None:
                    return
            continue
        stage_failed = False
        queues = [list(lane) for lane in stage]
        finished: set[str] = set()
        failed: set[str] = set()
        with cf.ProcessPoolExecutor(len(queues),
                                    mp_context=multiprocessing.get_context("spawn")) as pool:
            running: dict[Any, tuple[int, Path]] = {}
            idle = list(range(len(queues)))
            allowed = _allowed_cores()
            pinned = (not any(nb.name[:2] in UNPINNED_CHAPTERS for lane in queues for nb in lane)
                      and any(lane_cores(i, len(queues)) for i in idle))
            while True:
                now = {nb.name[:2] for _, nb in running.values()}
                for i, nb in _next_in_lanes(queues, idle, finished, now, failed):
                    cores = lane_cores(i, len(queues)) if pinned else allowed
                    running[pool.submit(_execute, *task(nb), cores)] = (i, nb)
                    idle.remove(i)
                if not running:
                    if any(queues):  # every lane waits on another: STAGES and AFTER disagree
                        raise RuntimeError(f"book runner: the lanes {queues} wait on each other")
                    break
                done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    i, nb = running.pop(fut)
                    result = fut.result()
                    yield nb, result
                    idle.append(i)
                    if pinned and not queues[i] and running:  # its core goes to the others
                        widen_to_all_cores()
                        pinned = False
                    if result[1] is None:
                        finished.add(nb.name[:2])
                    else:  # the lane stops; a chapter that reads this one never starts
                        stage_failed = True
                        failed.add(nb.name[:2])
                        queues[i].clear()
        if stage_failed:
            return


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
    lanes: bool = True,
) -> list[NotebookRun]:
    """Execute the book's notebooks in order and write ``run_summary.json``.

    With ``lanes`` (the default, unless ``only`` is given) the chapters of
    each stage of the profile's :data:`STAGES_BY_PROFILE` run side by side
    (:func:`lane_plan`): chapters 00, 01 and 09 beside chapters 02 and 03,
    then chapters 05-11 (quick: 04-11) in two lanes, one core each
    (:data:`PIN_LANES`). The same notebooks and results, in less time on two
    cores; each chapter's seconds are then measured beside another chapter.

    A real data directory is checked before any chapter runs
    (:func:`fungi_ssl.data.io.check_data_directory`: one line, in a second or
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
        Book profile (:data:`fungi_ssl.core.config.PROFILES`); default
        :data:`fungi_ssl.core.config.DEFAULT_PROFILE`.
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
    lanes : bool
        Run the stages of :data:`STAGES_BY_PROFILE` side by side; False runs every
        notebook one after another.

    Returns
    -------
    list of NotebookRun
        One entry per executed notebook.

    Raises
    ------
    NotebookFailure
        When a notebook fails; the summary is still written, with the failed
        notebook marked ``"failed"``, and later notebooks are not run (in
        lanes: the other lane finishes its chapters first).
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
        from fungi_ssl.data.io import check_data_directory

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
    env = {} if not samples else {"FUNGI_SSL_SAMPLES": str(
        Path(samples).resolve() if Path(samples).exists() else samples)}

    def task(nb_path: Path) -> tuple[Any, ...]:
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
        return nb_path, output_dir / nb_path.name, params, kernel_name, placeholders, env

    stages = (lane_plan(notebooks, STAGES_BY_PROFILE.get(profile, STAGES)) if lanes and not only
              else [[[nb]] for nb in notebooks])
    failed: NotebookFailure | None = None
    bar = tqdm(total=len(notebooks), desc="notebooks", unit="nb", disable=not progress,
               file=sys.stderr)
    try:
        for nb_path, (seconds, failure, started, cpu) in _run_stages(stages, task):
            bar.update(1)
            bar.set_postfix_str(nb_path.stem)
            if failure is not None:
                runs.append(NotebookRun(nb_path.stem, round(seconds, 2), profile, seed, "failed",
                                        round(cpu, 1)))
                failed = failed or NotebookFailure(**failure)
                continue
            reason = skipped_reason(results_dir, nb_path.name[:2], started)
            if reason and not shows_results(output_dir / nb_path.name):
                strip_skipped_chapter(output_dir / nb_path.name, reason)
            runs.append(NotebookRun(nb_path.stem, round(seconds, 2), profile, seed,
                                    cpu_seconds=round(cpu, 1)))
            bar.write(f"[{len(runs)}/{len(notebooks)}] {nb_path.name}: {seconds:.1f} s, "
                      f"{cpu:.0f} CPU-s")
        if failed is not None:
            failed.runs = list(runs)
            raise failed
    finally:
        bar.close()
        if runs:
            write_run_summary(runs, results_dir, merge=bool(only))
    return runs


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``python -m fungi_ssl.book.runner``."""
    parser = argparse.ArgumentParser(
        prog="python -m fungi_ssl.book.runner",
        description="Execute notebooks/NN_*.ipynb in order with papermill into book/.",
    )
    parser.add_argument(
        "--profile",
        choices=sorted(config.PROFILES),
        default=config.DEFAULT_PROFILE,
        help=f"book profile (default: {config.DEFAULT_PROFILE}, from fungi_ssl.core.config)",
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
    parser.add_argument(
        "--serial", action="store_true",
        help="run every notebook one after another (default: chapters 00-01 beside 02, "
             "then chapters 05-11 (quick: 04-11) in two lanes)",
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
            lanes=not args.serial,
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
