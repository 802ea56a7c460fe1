"""``fungi-ssl trend``: per-polygon richness trends from yearly maps (:func:`fungi_ssl.trends.trend_table.polygon_trend_table`)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer

from fungi_ssl.cli.app import CommandError, _writable, app


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
    units of replication (fungi_ssl.trends.contrasts.park_year_contrast).
    """
    from fungi_ssl.trends.trend_table import TREND_ESTIMAND, polygon_trend_table

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
