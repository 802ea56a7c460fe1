"""The ``fungi-ssl`` command: a thin typer layer over the package.

``make setup`` installs it (``[project.scripts]`` in ``pyproject.toml``)::

    fungi-ssl download [--dest DIR] [--overwrite]
    fungi-ssl fit --samples CSV --embeddings DIR --out MODEL [--covariates STACK] [--target COL]
    fungi-ssl predict-map --embeddings DIR --model FILE --bbox W S E N --year Y --out map.tif
                          [--covariates STACK]
    fungi-ssl trend --maps MAP1.tif MAP2.tif ... --polygons FILE --out trends.csv
    fungi-ssl book [--profile quick] [--seed 0] [--data DIR] [--only NN] [--guild AM]

Each subcommand calls the package's public functions and prints what it
wrote: ``download`` calls :func:`fungi_ssl.download.download_real_tables`;
``fit`` :func:`embedding_patches` and :class:`fungi_ssl.mapmodel.MapModel`;
``predict-map`` :func:`fungi_ssl.maps.predict_map`; ``trend``
:func:`polygon_trend_table` (:mod:`fungi_ssl.trends`); ``book``
:func:`fungi_ssl.bookrun.run_book`, then Jupyter Book as ``make book`` does.

Embeddings
----------
``--embeddings DIR`` is a geotessera download folder (holding
``global_0.1_degree_representation/``, read by :mod:`fungi_ssl.tessera`), a
Zarr embedding store whose ``year`` attribute names its year
(:mod:`fungi_ssl.embed`), or a folder of ``<year>.zarr`` stores.

1 km covariates: the product model
----------------------------------
``--covariates STACK`` is a raster stack of 1 km covariates, a GeoTIFF whose
band descriptions name the covariates or a Zarr store with one ``(y, x)``
variable per covariate (:mod:`fungi_ssl.covariate_stack`), named as the SPUN
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
two equally near years in a gap. ``--year Y`` instead reads every sample
from year ``Y``, which must be held. A sample without a year needs
``--year``. :func:`fungi_ssl.predictors.embedding_years` applies the rule
(the book's chapters use the same function) and counts each case.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from typer.core import TyperGroup

from . import config

if TYPE_CHECKING:  # pragma: no cover
    import geopandas as gpd
    import numpy as np
    import pandas as pd

    from .predictors import EmbeddingYears

__all__ = [
    "CommandError",
    "app",
    "embedding_patches",
    "held_years",
    "polygon_trend_table",
    "target_values",
]

#: Exceptions that mean bad input: one line on stderr unless ``--debug``.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, OSError)
#: The sample-table column :class:`fungi_ssl.mapmodel.MapModel` is fitted on by default.
DEFAULT_TARGET = "rarefied"
#: The fungal guild a sample table holds by default.
DEFAULT_GUILD = "ECM"
#: The study's patch (3 × 3 pixels), the one :func:`fungi_ssl.maps.predict_map` maps with.
PATCH_SIZE = 3


def __getattr__(name: str) -> Any:
    # the year rule lives in fungi_ssl.predictors, which imports torch: load it only when asked
    if name in ("EmbeddingYears", "embedding_years"):
        from . import predictors

        return getattr(predictors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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

    from .maps import open_embedding_source

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


def _is_zarr_store(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in ("zarr.json", ".zgroup", ".zattrs"))


def _covariate_stack(path: Path) -> Any:
    """The ``--covariates`` stack, read with messages that name the option."""
    from .covariate_stack import open_covariate_stack

    return open_covariate_stack(path, where="--covariates")


# --------------------------------------------------------------------------
# the embeddings behind a sample table
# --------------------------------------------------------------------------
def held_years(embeddings: str | os.PathLike) -> dict[int, Path]:
    """The years an embeddings folder holds, each with what to read it from.

    Parameters
    ----------
    embeddings : path
        A geotessera download folder, a Zarr embedding store with a ``year``
        attribute, or a folder of ``<year>.zarr`` stores.

    Returns
    -------
    dict
        ``{year: path}``: the geotessera folder itself for every year it
        holds tiles of, or the Zarr store of that year; sorted by year.

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    ValueError
        A folder that holds none of the three, a geotessera folder without
        any year, or a store that records no year.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from affine import Affine
    >>> from fungi_ssl import tessera
    >>> root = tempfile.mkdtemp()
    >>> _ = tessera.write_tile(root, 2021, 0.15, 52.05, np.zeros((3, 3, 8), np.int8),
    ...                        np.ones((3, 3), np.float32),
    ...                        transform=Affine(10, 0, 303_000, 0, -10, 5_772_000))
    >>> list(held_years(root))
    [2021]
    """
    from .tessera import EMBEDDINGS_DIR_NAME

    path = _existing(Path(embeddings), "embeddings folder")
    if (path / EMBEDDINGS_DIR_NAME).is_dir():
        years = sorted(
            int(p.name)
            for p in (path / EMBEDDINGS_DIR_NAME).iterdir()
            if p.is_dir() and re.fullmatch(r"\d{4}", p.name) and any(p.iterdir())
        )
        if not years:
            raise ValueError(
                f"the geotessera folder {path} holds no tiles: {path / EMBEDDINGS_DIR_NAME} has "
                "no non-empty <year>/ folder"
            )
        return {y: path for y in years}
    if _is_zarr_store(path):
        from .embed import open_embeddings

        year = open_embeddings(path).attrs.get("year")
        if year is None:
            raise ValueError(
                f"embedding store {path} records no year (attribute 'year'); put it in a folder "
                "as <year>.zarr"
            )
        return {int(year): path}
    if path.is_dir():
        stores = {int(p.stem): p for p in path.glob("*.zarr") if re.fullmatch(r"\d{4}", p.stem)}
        if stores:
            return dict(sorted(stores.items()))
    raise ValueError(
        f"{path} holds no embeddings: expected a geotessera download folder (with "
        f"{EMBEDDINGS_DIR_NAME}/), a Zarr embedding store or a folder of <year>.zarr stores"
    )


def embedding_patches(
    samples: pd.DataFrame,
    embeddings: str | os.PathLike,
    *,
    year: int | None = None,
    k: int = PATCH_SIZE,
    progress: bool = True,
) -> tuple[np.ndarray, str, EmbeddingYears]:
    """Dequantised k × k patches at each sample's plot coordinate, from its embedding year.

    Parameters
    ----------
    samples : pandas.DataFrame
        The sample-table schema (:func:`fungi_ssl.io.read_samples`):
        ``longitude``, ``latitude`` and, unless ``year`` is given, ``year``.
    embeddings : path
        See :func:`held_years`.
    year : int, optional
        Read every sample from this year (see the module's year rule).
    k : int
        Patch side in pixels.
    progress : bool
        Progress bars over tiles.

    Returns
    -------
    patches : numpy.ndarray
        float32 ``(n, k, k, dim)`` in the samples' order; NaN where a sample
        or a pixel of its patch has no embedding.
    encoder : str
        Signature of the embeddings' encoder
        (:func:`fungi_ssl.mapmodel.encoder_signature`), which a map model
        records.
    years : EmbeddingYears
        The year each sample was read from.

    Raises
    ------
    FileNotFoundError, ValueError
        As :func:`held_years` and :func:`embedding_years`; embeddings of
        different dimensions or encoders in different years.
    """
    import numpy as np

    from .mapmodel import encoder_signature
    from .predictors import embedding_years

    held = held_years(embeddings)
    path = Path(embeddings)
    if "year" in samples.columns:
        sample_years = samples["year"]
    elif year is not None:
        sample_years = [year] * len(samples)
    else:
        raise ValueError(
            f"the sample table has no 'year' column; pass --year to read every sample from one "
            f"year of the embeddings under {path} (years held: {sorted(held)})"
        )
    which = embedding_years(sample_years, list(held), year=year, source=f"embeddings under {path}")
    lon = samples["longitude"].to_numpy(dtype=float)
    lat = samples["latitude"].to_numpy(dtype=float)
    parts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    encoders: dict[int, str] = {}
    for y in np.unique(which.years):
        rows = np.flatnonzero(which.years == y)
        src = held[int(y)]
        if _is_zarr_store(src):
            from .embed import open_embeddings, raster_patches

            ds = open_embeddings(src)
            p = raster_patches(ds, longitude=lon[rows], latitude=lat[rows], k=k)
            encoders[int(y)] = encoder_signature(ds)
        else:
            from . import tessera

            p = tessera.sample_patches(src, int(y), lon[rows], lat[rows], k=k, progress=progress)
            # the signature is the download's (its tessera_metadata.json): any tile gives it
            folder = src / tessera.EMBEDDINGS_DIR_NAME / str(int(y))
            first = min(d.name for d in folder.glob("grid_*") if d.is_dir())
            encoders[int(y)] = encoder_signature(
                tessera.open_tile(src, int(y), *tessera.parse_tile_name(first))
            )
        parts[int(y)] = (rows, np.asarray(p.transpose("sample", "row", "col", "dim").values))
    dims = {int(y): v[1].shape[-1] for y, v in parts.items()}
    if len(set(dims.values())) > 1:
        raise ValueError(f"the embeddings under {path} differ in dimension between years: {dims}")
    if len(set(encoders.values())) > 1:
        raise ValueError(f"the embeddings under {path} come from different encoders: {encoders}")
    dim = next(iter(dims.values()))
    out = np.full((len(samples), k, k, dim), np.nan, np.float32)
    for rows, values in parts.values():
        out[rows] = values
    return out, next(iter(encoders.values())), which


def target_values(samples: pd.DataFrame, target: str) -> np.ndarray:
    """The target column of a sample table as float richness (≥ 0, NaN kept).

    Raises
    ------
    ValueError
        The column is missing, holds text that is not a number, or a
        negative or infinite value; the message names the table, the column
        and the first bad rows.

    Examples
    --------
    >>> import pandas as pd
    >>> target_values(pd.DataFrame({"am": [1.0, None]}), "am").tolist()
    [1.0, nan]
    >>> target_values(pd.DataFrame({"am": ["1", "many"]}), "am")
    Traceback (most recent call last):
    ...
    ValueError: sample table: target column 'am' is not numeric in 1 row(s): row 1: 'many'
    """
    import numpy as np
    import pandas as pd

    source = str(samples.attrs.get("source", "sample table"))
    if target not in samples.columns:
        raise ValueError(
            f"{source}: no target column {target!r}; columns are {list(map(str, samples.columns))}"
        )
    col = samples[target]
    values = pd.to_numeric(col, errors="coerce")
    bad = values.isna() & col.notna()
    problem = ""
    if bad.any():
        problem = "is not numeric"
    else:
        values = values.astype(float)
        bad = ~np.isfinite(values) & values.notna()
        problem = "is infinite"
        if not bad.any():
            bad = values < 0
            problem = "is negative (richness must be ≥ 0)"
    if bad.any():
        ids = samples["sample_id"] if "sample_id" in samples.columns else None
        shown = ", ".join(
            f"{'row ' + str(i) if ids is None else 'sample ' + repr(ids[i])}: {v!r}"
            for i, v in col[bad].iloc[:5].items()
        )
        raise ValueError(
            f"{source}: target column {target!r} {problem} in {int(bad.sum())} row(s): {shown}"
        )
    if values.isna().all():
        raise ValueError(f"{source}: target column {target!r} has no value")
    return values.to_numpy(dtype=float)


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
    from .download import download_real_tables

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
    (TESSERA starts in 2017). Samples without a complete patch are left out
    and counted. With --covariates the regressor also sees the 1 km
    covariates of each sample's cell (the product model, chapter 06's map
    model); samples outside the stack are left out and counted.
    """
    import numpy as np

    from .io import read_samples
    from .mapmodel import MapModel

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
    from .region import map_model_skill

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
    from .mapmodel import MapModel
    from .maps import predict_map as _predict_map

    _existing(model, "--model")
    _existing(embeddings, "--embeddings")
    _writable(out, overwrite, "--out")
    if overwrite and (out.exists() or out.is_symlink()):
        from .maps import check_replaceable

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
def _map_year(arr: Any, path: Path) -> int:
    years = arr.attrs.get("years")
    if years is not None and re.fullmatch(r"\s*\d{4}\s*", str(years)):
        return int(years)
    found = re.findall(r"(?<!\d)(\d{4})(?!\d)", path.stem)
    if len(found) == 1:
        return int(found[0])
    raise ValueError(
        f"map {path}: cannot tell its year (no 'years' tag as fungi-ssl predict-map writes, "
        "and not exactly one 4-digit year in the file name)"
    )


def _open_stack(maps: Sequence[Path]) -> Any:
    from .maps import open_map
    from .trends import stack_years

    for p in maps:
        _existing(p, "map")
    zarrs = [p for p in maps if p.suffix.lower() == ".zarr"]
    if zarrs:
        if len(maps) != 1:
            raise ValueError(
                f"give either one Zarr stack or one GeoTIFF per year, not {len(maps)} maps "
                f"including {zarrs[0]}"
            )
        stack = open_map(maps[0])
        if stack.rio.crs is None or "quantity" not in stack.attrs:
            # maps.open_map leaves the CRS behind when the store keeps spatial_ref as a data
            # variable (as predict_map writes it), and the quantity in the store's attributes
            import xarray as xr

            ds = xr.open_zarr(maps[0], consolidated=False)
            if stack.rio.crs is None and "spatial_ref" in ds.variables:
                stack = stack.rio.write_crs(ds["spatial_ref"].attrs.get("crs_wkt"))
            stack.attrs.setdefault("quantity", ds.attrs.get("quantity", "richness"))
        return stack
    by_year: dict[int, Any] = {}
    for p in maps:
        arr = open_map(p)
        y = _map_year(arr, p)
        if y in by_year:
            raise ValueError(f"two maps for year {y}: {by_year[y].encoding.get('source')} and {p}")
        arr.encoding["source"] = str(p)
        by_year[y] = arr
    stack = stack_years(by_year)
    stack.attrs["quantity"] = next(iter(by_year.values())).attrs.get("quantity", "richness")
    return stack


def _read_polygons(path: Path) -> gpd.GeoDataFrame:
    import geopandas as gpd
    from pyogrio.errors import DataSourceError

    _existing(path, "--polygons")
    try:
        return gpd.read_file(path)
    except DataSourceError as err:  # a RuntimeError
        raise ValueError(f"--polygons {path}: not a vector file GDAL can read ({err})") from None


@dataclass
class TrendTable:
    """What :func:`polygon_trend_table` computed.

    Attributes
    ----------
    trends : pandas.DataFrame
        One row per polygon (:func:`fungi_ssl.trends.polygon_trends`).
    years : list of int
    contrast : fungi_ssl.trends.WoodlandContrast or None
        Ancient against other woodland, when the polygons say which is which.
    notes : list of str
        Why the contrast was left out, if it was.
    """

    trends: pd.DataFrame
    years: list[int]
    contrast: Any = None
    notes: list[str] = field(default_factory=list)


def polygon_trend_table(
    maps: Sequence[str | os.PathLike],
    polygons: str | os.PathLike,
    *,
    id_column: str = "polygon_id",
    type_column: str = "woodland",
    park_column: str = "park",
    min_valid_fraction: float = 0.5,
    n_boot: int = 2000,
    confidence: float | None = None,
    seed: int = 0,
) -> TrendTable:
    """Per-polygon Theil–Sen trends of yearly maps, and the ancient-vs-other contrast.

    Chapter 08's estimand (:data:`TREND_ESTIMAND`): richness maps are taken
    to ``log1p`` pixel by pixel before the polygon means, so a polygon's
    value is the mean of ``log1p(richness)``, whatever scale the maps hold.
    The contrast's interval is :func:`fungi_ssl.trends.park_year_contrast`'s.

    Parameters
    ----------
    maps : sequence of path
        One map per year (GeoTIFFs from ``fungi-ssl predict-map``, whose
        ``years`` tag or file name gives the year) or one Zarr ``(year, y, x)`` stack.
    polygons : path
        A vector file (GeoPackage, GeoJSON, shapefile …) with a CRS and a
        unique ``id_column``.
    id_column, type_column, park_column : str
        Polygon id; woodland type (``ancient`` or ``other``; without it, no
        contrast); park (strata of the bootstrap, when present).
    min_valid_fraction, n_boot, confidence, seed
        As :func:`fungi_ssl.trends.polygon_trends` and
        :func:`fungi_ssl.trends.woodland_contrast`.

    Raises
    ------
    FileNotFoundError, ValueError
        Missing files; maps of different grids, unknown years or too few of
        them; polygons without CRS, id or overlap with the maps; woodland
        types other than ancient/other.
    """
    import numpy as np
    import pandas as pd

    from . import trends as tr

    confidence = tr.DEFAULT_CONFIDENCE if confidence is None else confidence
    stack = _open_stack([Path(m) for m in maps])
    poly = _read_polygons(Path(polygons))
    if id_column not in poly.columns:
        raise ValueError(
            f"--polygons {polygons}: no id column {id_column!r} (columns: "
            f"{[c for c in poly.columns if c != 'geometry']}); name it with --id-column"
        )
    notes: list[str] = []
    rename = {}
    if type_column in poly.columns:
        rename[type_column] = "woodland"
    else:
        notes.append(
            f"no woodland type column {type_column!r} in {polygons}: no ancient-vs-other "
            "contrast (name it with --type-column)"
        )
    if park_column in poly.columns:
        rename[park_column] = "park"
    poly = poly.drop(
        columns=[c for c in ("woodland", "park") if c in poly.columns and c not in rename],
        errors="ignore",
    ).rename(columns=rename)
    if "woodland" in poly.columns:
        kinds = set(poly["woodland"].dropna().astype(str))
        unknown = sorted(kinds - set(tr.WOODLAND_TYPES))
        if unknown:
            raise ValueError(
                f"--polygons {polygons}: column {type_column!r} must hold "
                f"{' or '.join(tr.WOODLAND_TYPES)}, found {unknown}"
            )
    if stack.attrs.get("quantity", "richness") != "log_richness":
        # the book's estimand everywhere: the polygon mean of log1p(richness) per pixel
        # (for predict-map's richness maps, expm1 of the model's log1p scale, exactly
        # the model's own log1p prediction), not the log of the mean richness
        attrs_ = dict(stack.attrs)
        stack = np.log1p(stack.where(stack > -1))
        stack.attrs.update(attrs_, quantity="log_richness")
    log = False
    # trends.zonal_means names its id column "polygon_id" whatever id_column is, so the
    # polygons carry their ids under that name here and get theirs back in the table
    key = "polygon_id"
    if id_column != key:
        poly = poly.drop(columns=[key], errors="ignore").rename(columns={id_column: key})
    zonal = tr.zonal_means(stack, poly, id_column=key)
    attrs = pd.DataFrame(poly.drop(columns="geometry"))
    table = tr.polygon_trends(
        zonal,
        attrs,
        log=log,
        min_valid_fraction=min_valid_fraction,
        confidence=confidence,
        id_column=key,
    )
    table = table.rename(columns={key: id_column})
    years = list(table.attrs.get("years", []))
    contrast = None
    if "woodland" in table.columns:
        ok = table[table["slope"].notna()]
        missing = [k for k in tr.WOODLAND_TYPES if not (ok["woodland"] == k).any()]
        if missing:
            notes.append(f"no {' or '.join(missing)} woodland polygon with a trend: no contrast")
        else:
            z = zonal.merge(
                attrs[[key, "woodland", *(["park"] if "park" in attrs.columns else [])]], on=key
            )
            if "park" not in z.columns:
                notes.append(
                    f"no park column {park_column!r}: all polygons are taken as one park, so "
                    "errors shared by a park-year cancel from the contrast and only type and "
                    "polygon errors enter its interval"
                )
                z = z.assign(park="all")
            contrast = tr.park_year_contrast(
                z.dropna(subset=["woodland"]),
                log=log,
                min_valid_fraction=min_valid_fraction,
                years=years,
                n_boot=n_boot,
                confidence=confidence,
                seed=seed,
            )
    return TrendTable(table, years, contrast, notes)


#: What ``fungi-ssl trend`` and chapter 08 estimate, in one sentence.
TREND_ESTIMAND = (
    "per polygon, the Theil-Sen slope over the years of the mean over its pixels of "
    "log1p(richness) (log richness per year); per woodland type, the pixel-weighted mean of "
    "those slopes; the interval treats parks and park-years as the units of replication"
)


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
    units of replication (fungi_ssl.trends.park_year_contrast).
    """
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
    from .bookrun import NotebookFailure, format_summary, parse_chapter_parameters, run_book

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
