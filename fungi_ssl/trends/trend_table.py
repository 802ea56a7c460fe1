"""Per-polygon trends of yearly map files and a polygon file (``fungi-ssl trend``, chapter 10).

:func:`polygon_trend_table` reads one map per year (GeoTIFFs from
``fungi-ssl predict-map``, whose ``years`` tag or file name gives the
year) or one Zarr ``(year, y, x)`` stack, and a vector file of polygons,
and returns a :class:`TrendTable`: the per-polygon trends of
:func:`fungi_ssl.trends.polygons.polygon_trends` and, when the polygons carry a
woodland type, the ancient-against-other contrast of
:func:`fungi_ssl.trends.contrasts.park_year_contrast`. What it estimates,
in one sentence: :data:`TREND_ESTIMAND`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr

from fungi_ssl.trends.contrasts import SLOPE_GAIN_SD, park_year_contrast
from fungi_ssl.trends.polygons import (
    DEFAULT_CONFIDENCE,
    WOODLAND_TYPES,
    polygon_trends,
    stack_years,
    zonal_means,
)

if TYPE_CHECKING:  # pragma: no cover
    import geopandas as gpd

__all__ = [
    "TREND_ESTIMAND",
    "TrendTable",
    "polygon_trend_table",
]


# --------------------------------------------------------------------------
# per-polygon trends of yearly map files (fungi-ssl trend, chapter 10)
# --------------------------------------------------------------------------

def _map_year(arr: Any, path: Path) -> int:
    """The year of one map file: its ``years`` tag (predict-map) or the one 4-digit year in its name."""
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
    """One ``(year, y, x)`` stack from one map per year or one Zarr stack."""
    from fungi_ssl.maps.outputs import open_map

    for p in maps:
        if not p.exists():
            raise FileNotFoundError(f"map {p} does not exist")
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
    """A vector file as a GeoDataFrame; one line when GDAL cannot read it."""
    import geopandas as gpd
    from pyogrio.errors import DataSourceError

    if not path.exists():
        raise FileNotFoundError(f"--polygons {path} does not exist")
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
    contrast : fungi_ssl.trends.contrasts.WoodlandContrast or None
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
    slope_gain_sd: float = SLOPE_GAIN_SD,
) -> TrendTable:
    """Per-polygon Theil–Sen trends of yearly maps, and the ancient-vs-other contrast.

    Chapter 08's estimand (:data:`TREND_ESTIMAND`): richness maps are taken
    to ``log1p`` pixel by pixel before the polygon means, so a polygon's
    value is the mean of ``log1p(richness)``, whatever scale the maps hold.
    The contrast's interval is :func:`fungi_ssl.trends.contrasts.park_year_contrast`'s.

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
        :func:`fungi_ssl.trends.contrasts.woodland_contrast`.
    slope_gain_sd : float
        As :func:`park_year_contrast`; by default :data:`SLOPE_GAIN_SD`,
        chapter 08's measurement on simulated worlds.

    Raises
    ------
    FileNotFoundError, ValueError
        Missing files; maps of different grids, unknown years or too few of
        them; polygons without CRS, id or overlap with the maps; woodland
        types other than ancient/other.
    """
    confidence = DEFAULT_CONFIDENCE if confidence is None else confidence
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
        unknown = sorted(kinds - set(WOODLAND_TYPES))
        if unknown:
            raise ValueError(
                f"--polygons {polygons}: column {type_column!r} must hold "
                f"{' or '.join(WOODLAND_TYPES)}, found {unknown}"
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
    zonal = zonal_means(stack, poly, id_column=key)
    attrs = pd.DataFrame(poly.drop(columns="geometry"))
    table = polygon_trends(
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
        missing = [k for k in WOODLAND_TYPES if not (ok["woodland"] == k).any()]
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
            contrast = park_year_contrast(
                z.dropna(subset=["woodland"]),
                log=log,
                min_valid_fraction=min_valid_fraction,
                years=years,
                n_boot=n_boot,
                confidence=confidence,
                seed=seed,
                slope_gain_sd=slope_gain_sd,
            )
    return TrendTable(table, years, contrast, notes)


#: What ``fungi-ssl trend`` and chapter 08 estimate, in one sentence.
TREND_ESTIMAND = (
    "per polygon, the Theil-Sen slope over the years of the mean over its pixels of "
    "log1p(richness) (log richness per year); per woodland type, the pixel-weighted mean of "
    "those slopes; the interval treats parks and park-years as the units of replication and "
    "adds the spread of the map's response to each polygon's change (slope gain)"
)
