"""The ``fungi-ssl`` command: a thin typer layer over the package.

``make setup`` installs it (``[project.scripts]`` in ``pyproject.toml``)::

    fungi-ssl download [--dest DIR] [--overwrite]
    fungi-ssl fit --samples CSV --embeddings DIR --out MODEL [--covariates STACK] [--target COL]
    fungi-ssl predict-map --embeddings DIR --model FILE --bbox W S E N --year Y --out map.tif
                          [--covariates STACK]
    fungi-ssl trend --maps MAP1.tif MAP2.tif ... --polygons FILE --out trends.csv
    fungi-ssl book [--profile quick] [--seed 0] [--data DIR] [--only NN] [--guild AM]

Each subcommand calls the package's public functions and prints what it
wrote: ``download`` calls :func:`fungi_ssl.data.download.download_real_tables`;
``fit`` :func:`fungi_ssl.predictors.tables.embedding_patches` and
:class:`fungi_ssl.maps.mapmodel.MapModel`; ``predict-map``
:func:`fungi_ssl.maps.predict.predict_map`; ``trend``
:func:`fungi_ssl.trends.trend_table.polygon_trend_table`; ``book``
:func:`fungi_ssl.book.runner.run_book`, then Jupyter Book as ``make book`` does.

Embeddings
----------
``--embeddings DIR`` is a geotessera download folder (holding
``global_0.1_degree_representation/``, read by :mod:`fungi_ssl.embeddings.tessera`), a
Zarr embedding store whose ``year`` attribute names its year
(:mod:`fungi_ssl.embeddings.embed`), or a folder of ``<year>.zarr`` stores.

1 km covariates: the product model
----------------------------------
``--covariates STACK`` is a raster stack of 1 km covariates, a GeoTIFF whose
band descriptions name the covariates or a Zarr store with one ``(y, x)``
variable per covariate (:mod:`fungi_ssl.data.covariate_stack`), named as the
SPUN covariate table names them. ``fit --covariates`` samples every band at
each sample's plot coordinate (the value of the 1 km cell holding it) and fits
chapter 06's map model, ``blend`` (the default when covariates are given): the
**product model**, one regressor on the patch's principal components and those
covariates, and the ``ssl``-only model, saved in one file
(:mod:`fungi_ssl.maps.composite`); ``--map-model product`` fits the product
model alone, ``--map-model ssl`` the ``ssl``-only model (ignoring the
covariates), ``--map-model product_deviations`` both models with the product
model's cell means as each cell's level. ``predict-map`` then needs
``--covariates`` too: each 10 m pixel gets the covariates of the 1 km cell
holding its centre, the rule chapter 06 maps the product model with, and a
``blend`` pixel is its cell's level (the mean of its cell's means of the
product map and the ``ssl`` map) plus its own ``ssl`` value minus its cell's
mean of the ``ssl`` map. A stack that lacks a band the model needs, whose CRS
cannot be transformed to the map's, or that does not cover the map's box is
refused in one line, as is a model fitted with covariates without
``--covariates``.

The year rule of ``fit``
------------------------
A sample's patch is read at its plot coordinate (``longitude``,
``latitude``), from the embeddings of its sampling year (the ``year``
column). When that year is not held (TESSERA starts in 2017, so older
samples have none), the sample takes the nearest year held: the first year
for samples from before it, the last for samples after it, the earlier of
two equally near years in a gap. A sample without a year (the real
GlobalFungi table has no year column) is read from the first year held, as
an old sample is. ``--year Y`` instead reads every sample from year ``Y``,
which must be held. :func:`fungi_ssl.predictors.tables.embedding_years` applies the
rule, the same for the book's chapters, and ``fit`` prints how many samples
took each case.

Errors
------
Bad input (a path that does not exist, a folder without the files a command
needs, a year the embeddings do not hold, a bounding box with min > max or
outside the tiles, a model file of another version or embedding dimension, a
sample table whose target column is missing or not numeric) ends the command
with one line ``error: <what is wrong>`` on stderr and exit status 1. The
package raises these as ``ValueError``, ``KeyError`` or ``OSError``
(``FileNotFoundError``, ``FileExistsError``, ``URLError`` …); they are
caught in one place (:class:`_FungiGroup`). ``fungi-ssl --debug <command>``
lets them through with their traceback. Any other exception is a bug and
always shows its traceback. A malformed command line (an unknown option, a
value of the wrong type) gets click's usage message and exit status 2.
Warnings are printed as one line ``warning: <message>``.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

__all__ = ["CommandError", "EmbeddingsOption", "app"]

#: Exceptions that mean bad input: one line on stderr unless ``--debug``.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, OSError)
#: The sample-table column :class:`fungi_ssl.maps.mapmodel.MapModel` is fitted on by default.
DEFAULT_TARGET = "rarefied"
#: The fungal guild a sample table holds by default.
DEFAULT_GUILD = "ECM"
#: ``--embeddings``, as ``fit`` and ``predict-map`` take it.
EmbeddingsOption = Annotated[
    Path,
    typer.Option(
        "--embeddings",
        metavar="DIR",
        help="geotessera download folder, Zarr embedding store or folder of <year>.zarr stores.",
    ),
]


class CommandError(Exception):
    """Bad input found by the command itself (not by the package); one line unless ``--debug``."""


#: Words of the package's messages that name Python arguments, and the options a user
#: of the command line gave instead.
_OPTION_WORDS = (
    ("open_embedding_source: bbox", "--bbox"),
    ("unless bbox_crs says otherwise", "unless --bbox-crs says otherwise"),
    ("pass overwrite=True", "pass --overwrite"),
    ("pass check_versions=False", "pass --ignore-versions"),
)


def _one_line(err: BaseException) -> str:
    """An error as one line that speaks of options, files and values, never of Python.

    Examples
    --------
    >>> _one_line(ValueError("open_embedding_source: bbox (np.float64(2.0), 1) has min ≥ max"))
    '--bbox (2.0, 1) has min ≥ max'
    """
    if isinstance(err, KeyError) and err.args:
        text = str(err.args[0])
    else:
        text = str(err) or type(err).__name__
    for internal, option in _OPTION_WORDS:
        text = text.replace(internal, option)
    text = re.sub(r"np\.(?:float|int|uint|bool_?)\d*\(([^()]*)\)", r"\1", text)
    return re.sub(r"\s*\n\s*", " ", text).strip()


def _swapped_bbox_hint(embeddings: Path, year: int, bbox: Sequence[float], bbox_crs: str) -> str:
    """``"; with longitude and latitude swapped …"`` when the swapped box lies on the tiles."""
    from pyproj import CRS

    from fungi_ssl.maps.sources import open_embedding_source

    try:
        if not CRS.from_user_input(bbox_crs).is_geographic:
            return ""
        swapped = (bbox[1], bbox[0], bbox[3], bbox[2])
        open_embedding_source(embeddings, year, swapped, bbox_crs=bbox_crs)
    except Exception:  # noqa: BLE001 - any failure: no hint
        return ""
    shown = " ".join(f"{v:g}" for v in swapped)
    return (f"; with longitude and latitude swapped (--bbox {shown}) the box lies on the tiles: "
            "--bbox takes west south east north, longitude first")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    typer.echo(f"warning: {_one_line(Warning(str(message)))}", err=True)


class _EchoHandler(logging.Handler):
    """Log records of the ``fungi_ssl`` logger as lines on the current stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        typer.echo(self.format(record), err=True)


def _log_to_stderr() -> None:
    logger = logging.getLogger("fungi_ssl")
    if not any(isinstance(h, _EchoHandler) for h in logger.handlers):
        handler = _EchoHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)


class _FungiGroup(TyperGroup):
    """The command group: the one place where bad input becomes a one-line error."""

    def invoke(self, ctx: Any) -> Any:
        debug = bool(ctx.params.get("debug"))
        with warnings.catch_warnings():
            # what a user should see: each warning once, one line; not libraries' deprecations
            warnings.resetwarnings()
            warnings.simplefilter("default")
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            warnings.showwarning = _show_warning
            try:
                return super().invoke(ctx)
            except (*USER_ERRORS, CommandError) as err:
                if debug:
                    raise
                typer.echo(f"error: {_one_line(err)}", err=True)
                raise typer.Exit(1) from None


app = typer.Typer(
    name="fungi-ssl",
    cls=_FungiGroup,
    help=(
        "Map below-ground fungal richness from satellite embeddings: fetch the public "
        "tables, fit a map model, predict 10 m maps, compute per-polygon trends, build "
        "the book."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib import metadata

        typer.echo(f"fungi-ssl {metadata.version('fungi-ssl')}")
        raise typer.Exit()


@app.callback()
def main(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            help="On an error, show the full traceback instead of one line (default: one line).",
        ),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version,
            is_eager=True,
            help="Print the installed version and exit.",
        ),
    ] = False,
) -> None:
    """Map below-ground fungal richness from self-supervised satellite embeddings."""
    _log_to_stderr()


# --------------------------------------------------------------------------
# helpers shared by the subcommands
# --------------------------------------------------------------------------
def _existing(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    return path


def _writable(path: Path, overwrite: bool, what: str) -> Path:
    """Refuse an existing output (unless ``overwrite``) or a missing folder, before any work."""
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{what}: folder {path.parent} does not exist (for {path.name})")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{what} {path} exists; pass --overwrite to replace it")
    return path


def _covariate_stack(path: Path) -> Any:
    """The ``--covariates`` stack, read with messages that name the option."""
    from fungi_ssl.data.covariate_stack import open_covariate_stack

    return open_covariate_stack(path, where="--covariates")


