"""``fungi-ssl download``: fetch the public sample tables (:func:`fungi_ssl.data.download.download_real_tables`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fungi_ssl.cli.app import app
from fungi_ssl.core import config


# --------------------------------------------------------------------------
# download
# --------------------------------------------------------------------------
@app.command()
def download(
    dest: Annotated[
        Path,
        typer.Option(
            "--dest",
            metavar="DIR",
            help="Real data directory to create or fill.",
            show_default="data/real under $FUNGI_SSL_DATA, else under the repository",
        ),
    ] = config.DATA_DIR / "real",
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Replace a file whose sha256 is wrong (default: refuse and say so)."
        ),
    ] = False,
    retries: Annotated[
        int,
        typer.Option(
            "--retries", metavar="N", help="Extra attempts per URL before the next mirror."
        ),
    ] = 0,
    progress: Annotated[
        bool,
        typer.Option("--progress/--no-progress", help="Show a progress bar per file."),
    ] = True,
) -> None:
    """Download the public real-data tables, each checked against its published sha256.

    A table already present with the right sha256 is kept (so a re-run after
    an interruption fetches only what is missing); a download that fails or
    mismatches leaves nothing under the final name.
    """
    from fungi_ssl.data.download import download_real_tables

    if dest.exists() and not dest.is_dir():
        raise NotADirectoryError(f"--dest {dest} is a file, not a directory")
    saved = download_real_tables(dest, overwrite=overwrite, retries=retries, progress=progress)
    for key, path in saved.items():
        typer.echo(f"{key}: {path}")
