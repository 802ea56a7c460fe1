"""``fungi-ssl book``: run the chapters (:func:`fungi_ssl.book.runner.run_book`), then Jupyter Book, as ``make book`` does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from fungi_ssl.cli.app import CommandError, _existing, app
from fungi_ssl.core import config


# --------------------------------------------------------------------------
# book
# --------------------------------------------------------------------------
@app.command()
def book(
    profile: Annotated[
        str,
        typer.Option(
            "--profile",
            metavar="|".join(sorted(config.PROFILES)),
            help="Book profile: full (the real book) or quick (smaller, as CI).",
        ),
    ] = config.DEFAULT_PROFILE,
    seed: Annotated[
        int,
        typer.Option("--seed", metavar="SEED", help="Seed of the simulated study and every model."),
    ] = 0,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            metavar="DIR",
            help="A directory of real tables.",
            show_default="the simulated study",
        ),
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--only",
            metavar="NN",
            help="Run only this chapter, e.g. 04 (repeatable).",
            show_default="every chapter",
        ),
    ] = None,
    html: Annotated[
        bool,
        typer.Option(
            "--html/--no-html", help="Render the HTML with Jupyter Book after the notebooks."
        ),
    ] = True,
    guild: Annotated[
        str | None,
        typer.Option(
            "--guild",
            metavar="NAME",
            help="Fungal guild of the sample table (e.g. AM); the chapters' text follows it.",
            show_default="each chapter's, ECM",
        ),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            metavar="COLUMN",
            help="Sample-table column of the guild's rarefied richness.",
            show_default="each chapter's, rarefied",
        ),
    ] = None,
    samples: Annotated[
        str | None,
        typer.Option(
            "--samples",
            metavar="FILE",
            help="The sample table of --data when it holds several (a file name in it, or a path).",
            show_default="the one CSV with sample_id, longitude and latitude",
        ),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            "-P",
            metavar="NAME=VALUE",
            help="A chapter parameter, e.g. -P block_km=10 -P 'bbox=[-3.9,56.8,-3.0,57.3]' "
            "(repeatable; several in one quoted string as make's PARAMS). It reaches the "
            "chapters that declare it; one that no chapter declares is an error.",
            show_default="each chapter's",
        ),
    ] = None,
    progress: Annotated[
        bool,
        typer.Option("--progress/--no-progress", help="Show a progress bar over the notebooks."),
    ] = True,
) -> None:
    """Run the book's notebooks with papermill into book/, then render HTML (as `make book`)."""
    from fungi_ssl.book.notebooks import parse_chapter_parameters
    from fungi_ssl.book.runner import NotebookFailure, format_summary, run_book

    config.get_profile(profile)
    if data is not None:
        _existing(data, "--data")
        if not data.is_dir():
            raise NotADirectoryError(f"--data {data} is a file, not a directory")
    try:
        named = {k: v for k, v in (("guild", guild), ("target", target), ("samples", samples))
                 if v is not None}
        chapter_parameters = parse_chapter_parameters(param)
        if chapter_parameters:
            named["chapter_parameters"] = chapter_parameters
        runs = run_book(
            profile=profile, seed=seed, data_dir=data, only=only or None, progress=progress,
            **named,
        )
    except NotebookFailure as failure:
        if failure.runs:
            typer.echo(format_summary(failure.runs))
        where = (
            "before any cell ran" if failure.cell_index is None else f"in cell {failure.cell_index}"
        )
        raise CommandError(
            f"notebook {failure.notebook.name} failed {where}: {failure.ename}: "
            f"{failure.evalue}; the executed notebook with the traceback is {failure.output}"
        ) from failure
    typer.echo(format_summary(runs))
    if html:
        _build_html()


def _build_html() -> None:
    """``make html``: Jupyter Book over the executed notebooks, warnings as errors."""
    exe = Path(sys.executable).parent / "jupyter-book"
    if not exe.exists():
        raise FileNotFoundError(f"jupyter-book not found beside {sys.executable} (make setup)")
    cmd = [str(exe), "build", ".", "--path-output", "book", "--warningiserror"]
    rc = subprocess.run(cmd, cwd=config.REPO_ROOT, check=False).returncode
    if rc:
        raise CommandError(f"jupyter-book build failed (exit status {rc}); see its output above")
