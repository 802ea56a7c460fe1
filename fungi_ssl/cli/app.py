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
:func:`fungi_ssl.trends.polygons.polygon_trend_table`; ``book``
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
variable per covariate (:mod:`fungi_ssl.data.covariate_stack`), named as the SPUN
covariate table names them. ``fit --covariates`` samples every band at each
sample's plot coordinate (the value of the 1 km cell holding it) and fits
the **product model**, chapter 06's map model: one regressor on the patch's
principal components and those covariates (``--map-model product``, the
default when covariates are given; ``--map-model ssl`` fits the study's
``ssl``-only model and ignores them). ``predict-map`` then needs
``--covariates`` too: each 10 m pixel gets the covariates of the 1 km cell
holding its centre, the rule chapter 06 maps the product model with. A stack
that lacks a band the model needs, whose CRS cannot be transformed to the
map's, or that does not cover the map's box is refused in one line, as is a
product model without ``--covariates``.

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

import json
import logging
import os
import re
import subprocess
import sys
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from typer.core import TyperGroup

from fungi_ssl.core import config

__all__ = ["CommandError", "app"]

#: Exceptions that mean bad input: one line on stderr unless ``--debug``.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, OSError)
#: The sample-table column :class:`fungi_ssl.maps.mapmodel.MapModel` is fitted on by default.
DEFAULT_TARGET = "rarefied"
#: The fungal guild a sample table holds by default.
DEFAULT_GUILD = "ECM"


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


# --------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------
@app.command()
def fit(
    samples: Annotated[
        Path,
        typer.Option(
            "--samples",
            metavar="CSV",
            help="Sample table in the GlobalFungi schema (sample_id, longitude, latitude, "
            "raw_obs_div, rarefied; optional year, site_id).",
        ),
    ],
    embeddings: Annotated[
        Path,
        typer.Option(
            "--embeddings",
            metavar="DIR",
            help="geotessera download folder, Zarr embedding store or folder of <year>.zarr stores.",
        ),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", metavar="MODEL", help="Model file to write."),
    ],
    target: Annotated[
        str,
        typer.Option(
            "--target",
            metavar="COLUMN",
            help="Column of the sample table holding the richness to model (≥ 0).",
        ),
    ] = DEFAULT_TARGET,
    guild: Annotated[
        str,
        typer.Option(
            "--guild",
            metavar="NAME",
            help="Fungal guild the target counts (recorded in the model).",
        ),
    ] = DEFAULT_GUILD,
    year: Annotated[
        int | None,
        typer.Option(
            "--year",
            metavar="YEAR",
            help="Read every sample's patch from this embedding year.",
            show_default="each sample's year, or the nearest year held",
        ),
    ] = None,
    model: Annotated[
        Literal["lightgbm", "xgboost", "rf", "ridge"],
        typer.Option("--model", help="Regressor fitted on the patch PCA (chapter 10's families)."),
    ] = "lightgbm",
    covariates: Annotated[
        Path | None,
        typer.Option(
            "--covariates",
            metavar="STACK",
            help="1 km covariates: a GeoTIFF (band descriptions = covariate names) or a Zarr "
            "store (one variable per covariate), sampled at each sample's coordinate; fits the "
            "product model (patch PCA + covariates).",
            show_default="none: the ssl-only model",
        ),
    ] = None,
    map_model: Annotated[
        Literal["product", "ssl"] | None,
        typer.Option(
            "--map-model",
            help="product: one regressor on the patch PCA and the 1 km covariates (chapter 06's "
            "map model; needs --covariates); ssl: the study's patch-only model.",
            show_default="product with --covariates, else ssl",
        ),
    ] = None,
    components: Annotated[
        int,
        typer.Option("--components", metavar="N", help="PCA components of the 3×3 patch."),
    ] = 32,
    seed: Annotated[
        int,
        typer.Option("--seed", metavar="SEED", help="Seed of the PCA, hold-out and model."),
    ] = 0,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace an existing model file (default: refuse)."),
    ] = False,
    progress: Annotated[
        bool,
        typer.Option("--progress/--no-progress", help="Show progress bars while reading patches."),
    ] = True,
) -> None:
    """Fit the map model (3×3 patch → PCA → regressor) on every sample and save it.

    Patches are read at each sample's plot coordinate from the embeddings of
    its sampling year; a year the embeddings lack takes the nearest year held
    (TESSERA starts in 2017), and a sample without a year the first year
    held. Samples without a complete patch are left out and counted. With
    --covariates the regressor also sees the 1 km covariates of each
    sample's cell (the product model, chapter 06's map model); samples
    outside the stack are left out and counted.
    """
    import numpy as np

    from fungi_ssl.data.io import read_samples, target_values
    from fungi_ssl.maps.mapmodel import MapModel
    from fungi_ssl.predictors.tables import PATCH_SIZE, embedding_patches

    kind = map_model or ("product" if covariates is not None else "ssl")
    if kind == "product" and covariates is None:
        raise CommandError(
            "--map-model product needs --covariates STACK: the 1 km covariates it is fitted on"
        )
    _writable(out, overwrite, "--out")
    stack = None
    if covariates is not None:
        _existing(covariates, "--covariates")
        if kind == "product":
            stack = _covariate_stack(covariates)
        else:
            typer.echo(f"note: --map-model ssl: the covariates in {covariates} are not used",
                       err=True)
    table = read_samples(samples)
    richness = target_values(table, target)
    cov = None
    if stack is not None:
        cov = stack.at_lonlat(table["longitude"].to_numpy(float),
                              table["latitude"].to_numpy(float))
        if not np.isfinite(cov.to_numpy()).all(axis=1).any():
            raise ValueError(
                f"--covariates {covariates} covers none of the {len(table)} samples in {samples} "
                f"(with a value in every band); it spans {stack.bounds} in {stack.crs.to_string()}"
            )
    patches, encoder, which = embedding_patches(
        table, embeddings, year=year, k=PATCH_SIZE, progress=progress
    )
    typer.echo(which.describe(), err=True)
    X = patches.reshape(len(patches), -1)
    complete = np.isfinite(X).all(axis=1)
    has_cov = np.ones(len(X), bool) if cov is None else np.isfinite(cov.to_numpy()).all(axis=1)
    usable = complete & np.isfinite(richness) & has_cov
    if usable.sum() < 10:
        raise CommandError(
            f"only {int(usable.sum())} of {len(table)} samples in {samples} have a complete "
            f"{PATCH_SIZE}×{PATCH_SIZE} patch in the embeddings under {embeddings}"
            + ("" if cov is None else f", every covariate in {covariates}")
            + f" and a {target!r} value; need at least 10 (do the embeddings"
            + ("" if cov is None else " and covariates") + " cover the samples?)"
        )
    fitted = MapModel(model, n_components=components, seed=seed).fit(
        X,
        richness,
        encoder=encoder,
        groups=table["site_id"].to_numpy(),
        embedding_dim=patches.shape[-1],
        covariates=cov,
    )
    from fungi_ssl.region.workflow import map_model_skill

    lonlat = table[["longitude", "latitude"]].to_numpy(dtype=float)
    skill = map_model_skill(X[usable], richness[usable], lonlat[usable], model=model,
                            n_components=components, seed=seed,
                            embedding_dim=patches.shape[-1],
                            covariates=None if cov is None else cov.loc[usable])
    fitted.settings.update({"map_model": kind})
    if stack is not None:
        fitted.settings.update({"covariate_stack": str(covariates)})
    fitted.settings.update(
        {
            "target_column": target,
            "guild": guild,
            "embedding_years": sorted(int(y) for y in np.unique(which.years)),
            "cv_skill": skill,
        }
    )
    fitted.save(out, overwrite=overwrite)
    site, block = skill["site"], skill["block"]
    with_cov = (f" + {len(fitted.covariate_columns)} 1 km covariates from {covariates}"
                if fitted.covariate_columns else "")
    typer.echo(
        f"wrote {out}: {kind} model, {fitted.model} on {fitted.n_samples} samples "
        f"({int((~complete).sum())} without a complete patch, "
        f"{int((complete & ~np.isfinite(richness)).sum())} without {target!r}"
        + ("" if cov is None else
           f", {int((complete & np.isfinite(richness) & ~has_cov).sum())} outside the covariates")
        + f"), {guild} {target}, {PATCH_SIZE}×{PATCH_SIZE}×{patches.shape[-1]} patches from "
        f"{encoder}{with_cov}; "
        f"cross-validated R² of log1p({target}): {site['r2']:.2f} over {site['n_folds']} folds "
        f"of 25 m site groups, {block['r2']:.2f} over {block['n_folds']} folds of "
        f"{block['block_km']:g} km blocks (in the model's settings, cv_skill)"
    )


# --------------------------------------------------------------------------
# predict-map
# --------------------------------------------------------------------------
@app.command("predict-map")
def predict_map(
    embeddings: Annotated[
        Path,
        typer.Option(
            "--embeddings",
            metavar="DIR",
            help="geotessera download folder, Zarr embedding store or folder of <year>.zarr stores.",
        ),
    ],
    model: Annotated[
        Path,
        typer.Option("--model", metavar="FILE", help="Model file written by `fungi-ssl fit`."),
    ],
    bbox: Annotated[
        tuple[float, float, float, float],
        typer.Option(
            "--bbox",
            metavar="W S E N",
            help="Bounding box: west, south, east, north, in --bbox-crs.",
        ),
    ],
    year: Annotated[
        list[int],
        typer.Option(
            "--year",
            metavar="YEAR",
            help="Embedding year of the map; repeat it for a stack of years (needs a .zarr --out).",
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            metavar="MAP",
            help="Output: .tif for a Cloud-Optimised GeoTIFF, .zarr for a (year, y, x) store.",
        ),
    ],
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace an existing map (default: refuse)."),
    ] = False,
    scheduler: Annotated[
        str | None,
        typer.Option(
            "--scheduler",
            metavar="ADDRESS",
            help="dask.distributed scheduler, e.g. tcp://host:8786.",
            show_default="$FUNGI_SSL_DASK_SCHEDULER if set, else local threads",
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option("--workers", metavar="N", help="Threads of the local scheduler."),
    ] = 2,
    bbox_crs: Annotated[
        str,
        typer.Option(
            "--bbox-crs",
            metavar="CRS",
            help="CRS of --bbox (anything pyproj reads; EPSG:4326 is lon/lat degrees).",
        ),
    ] = "EPSG:4326",
    quantity: Annotated[
        Literal["richness", "log_richness"],
        typer.Option("--quantity", help="Map rarefied richness or its log1p."),
    ] = "richness",
    blocksize: Annotated[
        int,
        typer.Option(
            "--blocksize",
            metavar="PIXELS",
            help="Tile side of the COG; overviews stop below one tile.",
        ),
    ] = 512,
    ignore_versions: Annotated[
        bool,
        typer.Option(
            "--ignore-versions",
            help="Load a model saved under other package versions (default: refuse it).",
        ),
    ] = False,
    progress: Annotated[
        bool,
        typer.Option("--progress/--no-progress", help="Show a progress bar over map windows."),
    ] = True,
    covariates: Annotated[
        Path | None,
        typer.Option(
            "--covariates",
            metavar="STACK",
            help="1 km covariates of a product model (fit --covariates): a GeoTIFF or Zarr "
            "stack with its bands; each pixel takes its 1 km cell's values.",
            show_default="none: needed only by a product model",
        ),
    ] = None,
) -> None:
    """Predict a 10 m richness map over a bounding box from stored embeddings.

    Inputs are checked before anything is computed: the model against the
    embeddings (dimension, encoder, patch), the year, the bounding box, the
    output and, for a product model, the covariate stack (its bands, CRS and
    extent). The map is written under a temporary name and renamed when
    complete.
    """
    from fungi_ssl.maps.mapmodel import MapModel
    from fungi_ssl.maps.predict import predict_map as _predict_map

    _existing(model, "--model")
    _existing(embeddings, "--embeddings")
    _writable(out, overwrite, "--out")
    if overwrite and (out.exists() or out.is_symlink()):
        from fungi_ssl.maps.outputs import check_replaceable

        try:  # only a map this tool wrote is replaced; a user's folder is never deleted
            check_replaceable(out)
        except FileExistsError as err:
            raise FileExistsError(str(err).replace("output ", "--out ", 1)) from None
    try:
        fitted = MapModel.load(model, check_versions=not ignore_versions)
    except ValueError as err:  # name the option, not the Python argument
        if "check_versions=False" not in str(err):
            raise
        raise ValueError(
            str(err).replace("pass check_versions=False", "pass --ignore-versions")
        ) from err
    need = list(fitted.covariate_columns)
    stack = None
    if need and covariates is None:
        raise CommandError(
            f"--model {model} is a product model fitted with 1 km covariates: pass --covariates "
            f"STACK with the bands {', '.join(need)}"
        )
    if covariates is not None:
        _existing(covariates, "--covariates")
        if not need:
            raise CommandError(
                f"--model {model} is the ssl-only model (fitted without 1 km covariates), so "
                f"--covariates {covariates} would not be used; leave it out, or refit with "
                "fit --covariates"
            )
        stack = _covariate_stack(covariates)
        stack.require(need, needed_by=f"--model {model}")
    years = list(year)
    try:
        run = _predict_map(
            fitted,
            embeddings,
            years[0] if len(years) == 1 else years,
            bbox,
            output=out,
            overwrite=overwrite,
            quantity=quantity,
            bbox_crs=bbox_crs,
            scheduler=scheduler,
            num_workers=workers,
            cog_blocksize=blocksize,
            progress=progress,
            covariates=stack,
        )
    except ValueError as err:
        if "--covariates" in str(err) or (
                "outside" not in str(err) and "not in WGS84" not in str(err)):
            raise
        hint = _swapped_bbox_hint(embeddings, years[0], bbox, bbox_crs)
        if not hint:
            raise
        raise ValueError(f"{_one_line(err)}{hint}") from err
    g = run.grid
    typer.echo(
        f"wrote {run.path}: {'product' if need else 'ssl'} model, "
        f"{g.height} × {g.width} pixels × {len(run.years)} year(s) in "
        f"{g.crs.to_string()}, {run.n_nan} without a prediction ({run.n_no_embedding} without "
        f"an embedding), {run.seconds:.1f} s ({run.pixels_per_second:,.0f} pixels/s)"
    )


# --------------------------------------------------------------------------
# trend
# --------------------------------------------------------------------------
def _write_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@app.command()
def trend(
    polygons: Annotated[
        Path,
        typer.Option(
            "--polygons",
            metavar="FILE",
            help="Woodland polygons (GeoPackage, GeoJSON, shapefile …) with a CRS.",
        ),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", metavar="CSV", help="Per-polygon trend table to write."),
    ],
    more_maps: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="MAP",
            show_default=False,
            help="Further maps, as for --maps (so `--maps A.tif B.tif C.tif` works).",
        ),
    ] = None,
    maps: Annotated[
        list[Path] | None,
        typer.Option(
            "--maps",
            metavar="MAP",
            help="Yearly maps: one GeoTIFF per year from predict-map (year from its tag or file "
            "name), or one .zarr stack.",
            show_default="none: give the maps here or as arguments",
        ),
    ] = None,
    id_column: Annotated[
        str,
        typer.Option("--id-column", metavar="COLUMN", help="Unique polygon id column."),
    ] = "polygon_id",
    type_column: Annotated[
        str,
        typer.Option(
            "--type-column",
            metavar="COLUMN",
            help="Woodland type column (ancient or other); without it, no contrast.",
        ),
    ] = "woodland",
    park_column: Annotated[
        str,
        typer.Option(
            "--park-column",
            metavar="COLUMN",
            help="Park column: bootstrap strata of the contrast, when present.",
        ),
    ] = "park",
    min_valid_fraction: Annotated[
        float,
        typer.Option(
            "--min-valid-fraction",
            metavar="F",
            help="A polygon-year counts when at least this share of its pixels is mapped.",
        ),
    ] = 0.5,
    n_boot: Annotated[
        int,
        typer.Option("--n-boot", metavar="N", help="Bootstrap draws of the contrast's interval."),
    ] = 2000,
    confidence: Annotated[
        float,
        typer.Option(
            "--confidence", metavar="LEVEL", help="Level of the slope and contrast intervals."
        ),
    ] = 0.9,
    seed: Annotated[
        int,
        typer.Option("--seed", metavar="SEED", help="Seed of the bootstrap."),
    ] = 0,
    summary: Annotated[
        Path | None,
        typer.Option(
            "--summary",
            metavar="JSON",
            help="Also write the contrast and counts as JSON.",
            show_default="not written",
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace existing outputs (default: refuse)."),
    ] = False,
) -> None:
    """Per-polygon richness trends (Theil–Sen slope, Mann–Kendall test) from yearly maps.

    The estimand is chapter 08's: per polygon, the Theil–Sen slope of the
    yearly mean of log1p(richness) over its pixels, in log richness per year
    (percent per year beside them). With a woodland type column, the
    area-weighted mean slopes of ancient and other woodland and their
    difference, with an interval that treats parks and park-years as the
    units of replication (fungi_ssl.trends.polygons.park_year_contrast).
    """
    from fungi_ssl.trends.polygons import TREND_ESTIMAND, polygon_trend_table

    paths = [*(maps or []), *(more_maps or [])]
    if not paths:
        raise CommandError("no maps given: pass --maps MAP1.tif MAP2.tif ... or one .zarr stack")
    _writable(out, overwrite, "--out")
    if summary is not None:
        _writable(summary, overwrite, "--summary")
    result = polygon_trend_table(
        paths,
        polygons,
        id_column=id_column,
        type_column=type_column,
        park_column=park_column,
        min_valid_fraction=min_valid_fraction,
        n_boot=n_boot,
        confidence=confidence,
        seed=seed,
    )
    for note in result.notes:
        typer.echo(f"note: {note}", err=True)
    _write_atomic(out, lambda p: result.trends.to_csv(p, index=False))
    t = result.trends
    n_trend = int(t["slope"].notna().sum())
    typer.echo(
        f"wrote {out}: {len(t)} polygons, {n_trend} with a trend over "
        f"{result.years[0]}–{result.years[-1]}"
    )
    typer.echo(f"estimand: {TREND_ESTIMAND}")
    c = result.contrast
    if c is not None:
        pct = round(100 * c.confidence)
        typer.echo(
            f"ancient − other woodland: {c.difference:+.4f} log richness per year "
            f"({pct}% CI {c.ci[0]:+.4f} to {c.ci[1]:+.4f}, from {c.n_parks} park(s) × "
            f"{len(result.years)} years = {c.n_park_years} park-years); ancient "
            f"{c.slope_ancient:+.4f} ({c.n_ancient} polygons), other {c.slope_other:+.4f} "
            f"({c.n_other} polygons)"
        )
    if summary is not None:
        doc = {
            "n_polygons": len(t),
            "n_with_trend": n_trend,
            "years": result.years,
            "estimand": TREND_ESTIMAND,
            "contrast": None if c is None else c.to_dict(),
            "notes": result.notes,
        }
        _write_atomic(summary, lambda p: p.write_text(json.dumps(doc, indent=1) + "\n"))


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
