"""``fungi-ssl predict-map``: a 10 m map from a saved model and embeddings (:func:`fungi_ssl.maps.predict.predict_map`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from fungi_ssl.cli.app import (
    CommandError,
    EmbeddingsOption,
    _covariate_stack,
    _existing,
    _one_line,
    _swapped_bbox_hint,
    _writable,
    app,
)


# --------------------------------------------------------------------------
# predict-map
# --------------------------------------------------------------------------
@app.command("predict-map")
def predict_map(
    embeddings: EmbeddingsOption,
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
            help="1 km covariates of a blend, product_deviations or product model (fit "
            "--covariates): a GeoTIFF or Zarr stack with its bands; each pixel takes its 1 km "
            "cell's values, and a blend or product_deviations map combines its two maps per "
            "cell of this stack.",
            show_default="none: needed only by a model fitted with covariates",
        ),
    ] = None,
) -> None:
    """Predict a 10 m richness map over a bounding box from stored embeddings.

    Inputs are checked before anything is computed: the model against the
    embeddings (dimension, encoder, patch), the year, the bounding box, the
    output and, for a model fitted with covariates, the covariate stack (its
    bands, CRS and extent). A blend model (fit's default with --covariates)
    or a product_deviations model maps both its models over the bbox grown
    to the whole 1 km cells it cuts, then writes each pixel as its cell's
    level plus its own ssl value minus its cell's mean of the ssl map; the
    level is the mean of the cell's product and ssl means (blend) or the
    cell's mean of the product map (product_deviations). The map is written
    under a temporary name and renamed when complete.
    """
    from fungi_ssl.maps.composite import (
        KINDS,
        CompositeMapModel,
        load_map_model,
        predict_composite_map,
    )
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
        fitted = load_map_model(model, check_versions=not ignore_versions)
    except ValueError as err:  # name the option, not the Python argument
        if "check_versions=False" not in str(err):
            raise
        raise ValueError(
            str(err).replace("pass check_versions=False", "pass --ignore-versions")
        ) from err
    need = list(fitted.covariate_columns)
    kind = (fitted.kind if isinstance(fitted, CompositeMapModel)
            else "product" if need else "ssl")
    stack = None
    if need and covariates is None:
        what = (f"a {kind} model ({KINDS[kind]})" if kind in KINDS else "a product model")
        raise CommandError(
            f"--model {model} is {what} fitted with 1 km covariates: pass --covariates "
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
        run = (predict_composite_map if kind in KINDS else _predict_map)(
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
        f"wrote {run.path}: {kind} model, "
        f"{g.height} × {g.width} pixels × {len(run.years)} year(s) in "
        f"{g.crs.to_string()}, {run.n_nan} without a prediction ({run.n_no_embedding} without "
        f"an embedding), {run.seconds:.1f} s ({run.pixels_per_second:,.0f} pixels/s)"
        + ("" if kind not in KINDS else
           f"; {run.details['n_cells']} 1 km cells, {run.details['n_cells_cut']} cut by the bbox "
           f"edge and averaged over the whole cell ({run.details['n_cells_partial']} of them "
           "only where it has predictions)")
    )
