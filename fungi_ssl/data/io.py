"""Reading and validating real tables: field samples, 1 km covariates, rasters.

Every reader returns the sample-table schema of ``CONTRIBUTING.md`` (one row
per soil sample: ``sample_id``, ``longitude``, ``latitude``, ``raw_obs_div``,
``rarefied``, optional ``year``, ``site_id``), so the notebooks cannot tell a
real table from the simulated study. Input files are only ever read.

A bad table fails early with a ``ValueError`` that names the file, the column
and the first offending rows, as file line numbers (the header is line 1)
with their values, instead of a traceback from deep inside pandas.

Known files in a real data directory (see :func:`find_real_tables`):

any CSV with ``sample_id``, ``longitude``, ``latitude`` (``SAMPLES=`` names one of several)
    GlobalFungi-style sample table, read by :func:`read_samples`.
``spun_ecm_samples_1km_covariates.csv``
    SPUN 1 km covariate table, read by :func:`read_spun_covariates`.
``*.tif``, ``*.tiff``
    Covariate rasters (GeoTIFF with a CRS), read by :func:`read_covariate_raster`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from fungi_ssl.data.coordinates import check_lonlat, lonlat_to_crs
from fungi_ssl.data.download import REAL_TABLES
from fungi_ssl.data.sites import SITE_DISTANCE_M, site_groups

__all__ = [
    "SAMPLE_COLUMNS",
    "PointSample",
    "RealTables",
    "check_data_directory",
    "csv_columns",
    "derive_site_ids",
    "find_real_tables",
    "read_covariate_raster",
    "read_samples",
    "read_spun_covariates",
    "sample_raster_at_points",
    "target_values",
    "validate_samples",
]

logger = logging.getLogger("fungi_ssl")

#: Columns every sample table must carry.
SAMPLE_COLUMNS = ("sample_id", "longitude", "latitude", "raw_obs_div", "rarefied")
#: How many offending rows an error message shows.
_MAX_SHOWN = 5

# SPUN covariate table: columns that are not covariates.
_SPUN_ID, _SPUN_TARGET, _SPUN_LAT, _SPUN_LON = (
    "sample_id",
    "ECM_diversity",
    "Pixel_Lat",
    "Pixel_Long",
)
_SPUN_DROP = ("CV_Fold",)
_SPUN_CATEGORICAL = ("Resolve_Biome",)


# ---------------------------------------------------------------------------
# Error messages and low-level reading
# ---------------------------------------------------------------------------


def _rows_message(
    source: str, column: str, problem: str, mask: np.ndarray, values: pd.Series
) -> str:
    """``<file>: column 'c' <problem> in n row(s): line 4: 'x', line 9: 'y', ...``.

    Rows are labelled by the index: file line numbers for a table read from a
    file (index name ``line``), the index label otherwise (``row``).
    """
    mask = np.asarray(mask, dtype=bool)
    label = values.index.name if values.index.name == "line" else "row"
    bad = values[mask]
    shown = ", ".join(f"{label} {key}: {value!r}" for key, value in bad.iloc[:_MAX_SHOWN].items())
    if len(bad) > _MAX_SHOWN:
        shown += ", ..."
    return f"{source}: column '{column}' {problem} in {len(bad)} row(s): {shown}"


def _read_text_table(path: str | os.PathLike, what: str) -> tuple[pd.DataFrame, str]:
    """Read a CSV as text, indexed by file line number (header = line 1)."""
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {source}")
    if not path.is_file():
        raise ValueError(f"{source}: expected a CSV file for the {what}, got a directory")
    try:
        raw = pd.read_csv(path, dtype=str, skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{source}: the {what} is empty (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ValueError(f"{source}: could not be read as a CSV {what}: {err}") from None
    raw.index = pd.RangeIndex(2, len(raw) + 2, name="line")
    raw = raw.loc[~raw.isna().all(axis=1)]  # blank lines
    raw.columns = [str(c).strip() for c in raw.columns]
    # An unnamed leading column is R's / pandas' row number: drop it.
    if len(raw.columns) and (raw.columns[0] == "" or raw.columns[0].startswith("Unnamed: 0")):
        raw = raw.drop(columns=raw.columns[0])
    return raw, source


def _require_columns(frame: pd.DataFrame, required: tuple[str, ...], source: str) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{source}: missing column(s) {', '.join(repr(c) for c in missing)}; "
            f"expected {', '.join(required)}; found {', '.join(map(str, frame.columns))}"
        )
    if len(frame) == 0:
        raise ValueError(f"{source}: the table is empty (a header but no data rows)")


def _numeric(frame: pd.DataFrame, column: str, source: str) -> pd.Series:
    """Column as float; a value that is present but not a number is an error."""
    values = frame[column]
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values.astype(float)
    as_text = values.astype(object).where(values.notna(), None)
    number = pd.to_numeric(
        as_text.map(lambda v: v.strip() if isinstance(v, str) else v), errors="coerce"
    ).astype(float)
    bad = (number.isna() & values.notna()).to_numpy()
    if bad.any():
        raise ValueError(_rows_message(source, column, "is not a number", bad, values))
    return number


def _check_finite_nonnegative(values: pd.Series, column: str, source: str) -> None:
    bad = np.isinf(values.to_numpy())
    if bad.any():
        raise ValueError(_rows_message(source, column, "is infinite", bad, values))
    bad = (values < 0).to_numpy()
    if bad.any():
        raise ValueError(
            _rows_message(source, column, "is negative (richness must be >= 0)", bad, values)
        )


def _check_coordinates(lon: pd.Series, lat: pd.Series, names: tuple[str, str], source: str) -> None:
    """The shared lon/lat check, naming the file's columns and lines."""
    check_lonlat(lon.rename(names[0]), lat.rename(names[1]), source)


def _check_ids(ids: pd.Series, column: str, source: str) -> pd.Series:
    text = ids.astype(object).where(ids.notna(), None)
    text = text.map(lambda v: None if v is None else str(v).strip())
    bad = (text.isna() | (text == "")).to_numpy()
    if bad.any():
        raise ValueError(_rows_message(source, column, "is empty", bad, ids))
    dup = text.duplicated(keep=False).to_numpy()
    if dup.any():
        raise ValueError(_rows_message(source, column, "has duplicate values", dup, ids))
    return text.astype(str)


def _drop_na_target(
    frame: pd.DataFrame, target: pd.Series, column: str, source: str
) -> tuple[pd.DataFrame, pd.Series, int]:
    na = target.isna()
    n_dropped = int(na.sum())
    if n_dropped:
        logger.warning(
            "%s: dropped %d of %d samples with no '%s' value (NA target)",
            source,
            n_dropped,
            len(frame),
            column,
        )
    if n_dropped == len(frame):
        raise ValueError(f"{source}: every row has an NA '{column}'; no samples left")
    return frame.loc[~na], target.loc[~na], n_dropped


# ---------------------------------------------------------------------------
# Sites
# ---------------------------------------------------------------------------


def derive_site_ids(
    longitude: Any, latitude: Any, distance_m: float = SITE_DISTANCE_M
) -> np.ndarray:
    """Site ids: samples within ``distance_m`` (25 m) of each other share one.

    The sites are those of :func:`fungi_ssl.data.sites.site_groups`, the package's one
    definition of a site: single linkage at 25 m geodesic distance, the
    study's site radius. This includes samples at equal coordinates
    (GlobalFungi records one plot coordinate for every core taken at a plot)
    and also joins plots recorded a few metres apart, which share a satellite
    pixel. Ids are ``site_00000``, ``site_00001`` ... in order of first
    appearance, so they are stable for a given table.

    Parameters
    ----------
    longitude, latitude : array_like
        Degrees, WGS84.
    distance_m : float, default 25
        Linkage distance in metres.

    Returns
    -------
    numpy.ndarray of str

    Examples
    --------
    >>> derive_site_ids([6.0, 6.0, 6.0002, 5.9], [52.0, 52.0, 52.0, 52.0]).tolist()  # 14 m
    ['site_00000', 'site_00000', 'site_00000', 'site_00001']
    """
    lon = np.asarray(longitude, dtype=float).ravel()
    lat = np.asarray(latitude, dtype=float).ravel()
    check_lonlat(lon, lat, "derive_site_ids")
    if lon.size == 0:
        return np.array([], dtype=str)
    codes = site_groups(np.column_stack([lon, lat]), distance_m, coordinates="lonlat")
    width = max(5, len(str(int(codes.max()))))
    return np.array([f"site_{c:0{width}d}" for c in codes], dtype=object).astype(str)


# ---------------------------------------------------------------------------
# Sample tables
# ---------------------------------------------------------------------------


def validate_samples(
    frame: pd.DataFrame, source: str = "<DataFrame>", drop_na_target: bool = True
) -> pd.DataFrame:
    """Check a sample table and return it in the schema of ``CONTRIBUTING.md``.

    This is what :func:`read_samples` applies to a file; it is public so that
    any table built in memory (a simulation, a user's merge) can be checked
    the same way. ``frame`` is not modified.

    Parameters
    ----------
    frame : pandas.DataFrame
        Columns ``sample_id, longitude, latitude, raw_obs_div, rarefied``,
        optional ``year`` and ``site_id``; other columns are kept after them.
        Values may be text (as read from a file) or numbers. The index is used
        as the row label in error messages.
    source : str
        Name of the table in error messages (a file name).
    drop_na_target : bool, default True
        Drop rows with NA ``rarefied`` (counted in ``attrs["n_dropped_na"]``)
        instead of failing.

    Returns
    -------
    pandas.DataFrame
        ``sample_id`` (str), ``longitude``, ``latitude``, ``raw_obs_div``,
        ``rarefied`` (float), ``year`` (Int64, if present), ``site_id`` (str),
        then extra columns; a fresh RangeIndex. ``attrs`` holds ``source`` and
        ``n_dropped_na``.

    Raises
    ------
    ValueError
        Missing column, empty table, non-numeric or negative richness,
        coordinate missing or out of range, empty or duplicate ``sample_id``,
        fractional ``year``. The message names ``source``, the column and the
        first bad rows with their values.

    Examples
    --------
    >>> df = pd.DataFrame({"sample_id": ["a", "b", "c"], "longitude": [6.0, 6.0, 7.0],
    ...                    "latitude": [52.0, 52.0, 50.0], "raw_obs_div": [3, 1, None],
    ...                    "rarefied": [5.0, 1.0, None]})
    >>> out = validate_samples(df)
    >>> out["site_id"].tolist(), out.attrs["n_dropped_na"]
    (['site_00000', 'site_00000'], 1)
    """
    _require_columns(frame, SAMPLE_COLUMNS, source)
    sample_id = _check_ids(frame["sample_id"], "sample_id", source)
    numbers = {c: _numeric(frame, c, source) for c in SAMPLE_COLUMNS[1:]}
    year = _numeric(frame, "year", source) if "year" in frame.columns else None

    target = numbers["rarefied"]
    n_dropped = 0
    if drop_na_target:
        _, target, n_dropped = _drop_na_target(frame, target, "rarefied", source)
    else:
        bad = target.isna().to_numpy()
        if bad.any():
            raise ValueError(_rows_message(source, "rarefied", "is NA", bad, frame["rarefied"]))
    keep = target.index
    lon, lat = numbers["longitude"].loc[keep], numbers["latitude"].loc[keep]
    _check_coordinates(lon, lat, ("longitude", "latitude"), source)
    _check_finite_nonnegative(target, "rarefied", source)
    raw_obs = numbers["raw_obs_div"].loc[keep]
    _check_finite_nonnegative(raw_obs, "raw_obs_div", source)

    out = pd.DataFrame(
        {
            "sample_id": sample_id.loc[keep].astype(str),
            "longitude": lon,
            "latitude": lat,
            "raw_obs_div": raw_obs,
            "rarefied": target,
        }
    )
    if year is not None:
        y = year.loc[keep]
        bad = (y.notna() & (y != np.round(y))).to_numpy()
        if bad.any():
            raise ValueError(_rows_message(source, "year", "is not a whole year", bad, y))
        out["year"] = y.astype("Int64")
    if "site_id" in frame.columns:
        site = frame["site_id"].loc[keep]
        bad = site.isna().to_numpy()
        if bad.any():
            raise ValueError(_rows_message(source, "site_id", "is empty", bad, site))
        out["site_id"] = site.astype(str).str.strip()
    else:
        out["site_id"] = derive_site_ids(lon.to_numpy(), lat.to_numpy())
    known = set(SAMPLE_COLUMNS) | {"year", "site_id"}
    for column in frame.columns:
        if column not in known:
            extra = frame[column].loc[keep]
            try:
                out[column] = pd.to_numeric(extra)
            except (ValueError, TypeError):
                out[column] = extra
    out = out.reset_index(drop=True)
    out.attrs = {"source": source, "n_dropped_na": n_dropped}
    return out


def read_samples(path: str | os.PathLike, target: str = "rarefied") -> pd.DataFrame:
    """Read and validate a GlobalFungi-style sample table (CSV).

    Expected columns: ``sample_id, longitude, latitude, raw_obs_div,
    rarefied``, optionally ``year`` and ``site_id``, plus any extra columns
    (e.g. ``continent``), which are kept. An unnamed leading row-number
    column, as R's ``write.csv`` writes, is dropped. The file is only read.

    Rows whose ``rarefied`` is NA are dropped; their number is logged on the
    ``fungi_ssl`` logger and kept in ``df.attrs["n_dropped_na"]``. When the
    table has no ``site_id``, samples at the same coordinate (to 1e-6 degree)
    get the same one: GlobalFungi gives all cores of a plot its coordinate.

    Parameters
    ----------
    path : path-like
        The CSV file.
    target : str, default "rarefied"
        The column holding the rarefied richness to model (another guild's,
        say ``am_rarefied``); it becomes ``rarefied`` (a ``rarefied`` column
        already there is kept as ``rarefied_original``), and ``attrs["target"]``
        names it.

    Returns
    -------
    pandas.DataFrame
        The sample-table schema; see :func:`validate_samples`.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        For a missing column, an empty table, a coordinate outside
        -180..180 / -90..90, a non-numeric or negative richness or a
        duplicate ``sample_id``; the message names the file, the column and
        the first bad rows (file line numbers, header = line 1) with values.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "samples.csv"
    >>> _ = p.write_text('"","sample_id","longitude","latitude","raw_obs_div","rarefied"\\n'
    ...                  '"1","A1",6.02,52.04,3,5\\n"2","A2",21.8,40.99,NA,NA\\n')
    >>> df = read_samples(p)
    >>> df[["sample_id", "rarefied", "site_id"]].values.tolist(), df.attrs["n_dropped_na"]
    ([['A1', 5.0, 'site_00000']], 1)
    """
    raw, source = _read_text_table(path, "sample table")
    if target not in raw.columns:
        hint = "; name the richness column with TARGET=<column> (--target)" if (
            target == "rarefied") else ""
        raise ValueError(
            f"{source}: no target column {target!r}{hint}; columns are "
            f"{list(map(str, raw.columns))}"
        )
    if "raw_obs_div" not in raw.columns:  # optional in a user's table: the observed count
        raw = raw.assign(raw_obs_div=pd.NA)
    if target != "rarefied":
        if "rarefied" in raw.columns:
            raw = raw.rename(columns={"rarefied": "rarefied_original"})
        raw = raw.rename(columns={target: "rarefied"})
    out = validate_samples(raw, source=source)
    out.attrs["target"] = target
    return out


def read_spun_covariates(path: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read the SPUN 1 km covariate table as samples plus covariates.

    The table (``spun_ecm_samples_1km_covariates.csv``, from
    ``SocietyProtectionUndergroundNetworks/richness_maps``) has one row per
    sample with ``sample_id``, 1 km covariates, ``Resolve_Biome``, the target
    ``ECM_diversity``, the 1 km pixel centre ``Pixel_Lat``/``Pixel_Long`` and
    the source's random ``CV_Fold``.

    **The target is log(1 + rarefied richness)** (natural log), so
    ``rarefied = expm1(ECM_diversity)``. Evidence: (1) the source's pipelines
    of mid-2022 transform the target with ``np.log(x + 1)`` and back-transform
    with ``exp(x) - 1``; (2) among the 2,557 samples shared with the European
    GlobalFungi table that have a value there, those with a rarefied richness
    of exactly 1 most often have ``ECM_diversity = ln 2`` (90 of 197; 13 have
    0), and ``expm1`` reproduces the European value to 0.1% for 160 samples
    against 27 for ``exp``. The two tables come from different GlobalFungi
    releases and rarefaction depths, so most values differ (median
    ``expm1(ECM_diversity) - rarefied`` is +7.8). 326 values (3.6%) exceed
    ``log1p(1000)``, i.e. over 1,000 ECM OTUs, 92% of them from one Australian
    survey (``FMS16BI`` ids); they are kept as published, but a model of
    richness may want to treat them as a separate source.

    Parameters
    ----------
    path : path-like
        The CSV file.

    Returns
    -------
    samples : pandas.DataFrame
        Sample-table schema: ``sample_id``; ``longitude``/``latitude`` from
        ``Pixel_Long``/``Pixel_Lat`` (the 1 km pixel centre, not the plot);
        ``raw_obs_div`` (all NaN: not in this table); ``rarefied`` =
        ``expm1(ECM_diversity)``; ``log_richness`` = ``ECM_diversity``;
        ``site_id`` derived from the pixel centre (samples in one 1 km pixel
        share it). ``attrs``: ``source``, ``n_dropped_na``, ``target_transform``.
    covariates : pandas.DataFrame
        Indexed by ``sample_id`` (same order as ``samples``): every covariate
        column as float64, with the source's names and units, plus
        ``Resolve_Biome`` as a pandas categorical (a biome code, not a
        quantity; one-hot it or use it as a category). ``CV_Fold`` is dropped:
        it is the source's random, non-spatial fold assignment, not a property
        of the sample.

    Raises
    ------
    FileNotFoundError, ValueError
        As :func:`read_samples`; also a non-numeric covariate column, or a
        negative ``ECM_diversity`` (a richness below zero).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "spun.csv"
    >>> _ = p.write_text("sample_id,CGIAR_PET,Resolve_Biome,ECM_diversity,Pixel_Lat,Pixel_Long,CV_Fold\\n"
    ...                  "S1,1164.0,4,0.6931471805599453,35.03,135.79,1\\n")
    >>> samples, cov = read_spun_covariates(p)
    >>> round(float(samples.loc[0, "rarefied"]), 6), list(cov.columns)
    (1.0, ['CGIAR_PET', 'Resolve_Biome'])
    """
    raw, source = _read_text_table(path, "SPUN covariate table")
    required = (_SPUN_ID, _SPUN_LAT, _SPUN_LON, _SPUN_TARGET)
    _require_columns(raw, required, source)
    covariate_columns = [c for c in raw.columns if c not in required and c not in _SPUN_DROP]
    if not covariate_columns:
        raise ValueError(f"{source}: no covariate columns besides {', '.join(required)}")

    sample_id = _check_ids(raw[_SPUN_ID], _SPUN_ID, source)
    log_richness = _numeric(raw, _SPUN_TARGET, source)
    lon_all, lat_all = _numeric(raw, _SPUN_LON, source), _numeric(raw, _SPUN_LAT, source)
    covariates = {c: _numeric(raw, c, source) for c in covariate_columns}

    _, log_richness, n_dropped = _drop_na_target(raw, log_richness, _SPUN_TARGET, source)
    keep = log_richness.index
    lon, lat = lon_all.loc[keep], lat_all.loc[keep]
    _check_coordinates(lon, lat, (_SPUN_LON, _SPUN_LAT), source)
    _check_finite_nonnegative(log_richness, _SPUN_TARGET, source)

    ids = sample_id.loc[keep].astype(str)
    samples = pd.DataFrame(
        {
            "sample_id": ids,
            "longitude": lon,
            "latitude": lat,
            "raw_obs_div": np.nan,
            "rarefied": np.expm1(log_richness),
            "log_richness": log_richness,
            "site_id": derive_site_ids(lon.to_numpy(), lat.to_numpy()),
        }
    ).reset_index(drop=True)
    samples.attrs = {
        "source": source,
        "n_dropped_na": n_dropped,
        "target_transform": "rarefied = expm1(ECM_diversity)",
    }

    cov = pd.DataFrame({c: covariates[c].loc[keep] for c in covariate_columns})
    for column in _SPUN_CATEGORICAL:
        if column in cov.columns:
            codes = cov[column]
            bad = (codes.notna() & (codes != np.round(codes))).to_numpy()
            if bad.any():
                raise ValueError(
                    _rows_message(source, column, "is not a whole category code", bad, codes)
                )
            cov[column] = pd.Categorical(codes.astype("Int64"))
    cov.index = pd.Index(ids.to_numpy(), name="sample_id")
    cov.attrs = {"source": source}
    return samples, cov


# ---------------------------------------------------------------------------
# Rasters
# ---------------------------------------------------------------------------


def read_covariate_raster(
    path: str | os.PathLike, masked: bool = True, chunks: Any = None
) -> xr.DataArray:
    """Open a covariate raster (GeoTIFF) with its CRS, lazily.

    Parameters
    ----------
    path : path-like
        A GeoTIFF (or any raster GDAL reads) with a CRS.
    masked : bool, default True
        Turn the nodata value into NaN.
    chunks : optional
        Passed to :func:`rioxarray.open_rasterio` to get a dask array (e.g.
        ``True`` or ``{"x": 2048, "y": 2048}``) for rasters larger than memory.

    Returns
    -------
    xarray.DataArray
        Dims ``(y, x)`` for a single band, else ``(band, y, x)``; named after
        the file stem unless the file names it.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file cannot be read as a raster, or has no CRS.

    Examples
    --------
    >>> read_covariate_raster("no_such_raster.tif")
    Traceback (most recent call last):
    ...
    FileNotFoundError: covariate raster not found: no_such_raster.tif
    """
    import rioxarray

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"covariate raster not found: {path}")
    try:
        da = rioxarray.open_rasterio(path, masked=masked, chunks=chunks)
    except (OSError, ValueError, RuntimeError) as err:  # rasterio's errors are OSErrors
        raise ValueError(
            f"{path}: could not be read as a raster (GeoTIFF expected): {err}"
        ) from None
    if isinstance(da, (list, xr.Dataset)):
        raise ValueError(  # noqa: TRY004 (a property of the file, not of an argument)
            f"{path}: holds several sub-datasets; expected a single GeoTIFF raster"
        )
    if da.rio.crs is None:
        raise ValueError(
            f"{path}: the raster has no CRS, so points cannot be placed on it; "
            "write one first, e.g. da.rio.write_crs('EPSG:4326')"
        )
    if "band" in da.dims and da.sizes["band"] == 1:
        da = da.squeeze("band", drop=True)
    if da.name is None:
        da.name = path.stem
    return da


@dataclass
class PointSample:
    """Raster values at points.

    Attributes
    ----------
    values : numpy.ndarray
        ``(n,)`` for a single-band raster, ``(n, bands)`` otherwise; float,
        NaN outside the raster, at nodata and for missing coordinates.
    inside : numpy.ndarray
        Boolean ``(n,)``: the point falls on a pixel of the raster.
    n_outside : int
        Points off the raster (including missing coordinates).
    """

    values: np.ndarray
    inside: np.ndarray
    n_outside: int


def sample_raster_at_points(da: xr.DataArray, longitude: Any, latitude: Any) -> PointSample:
    """Value of the pixel under each WGS84 point (nearest pixel centre).

    Points are projected to the raster's CRS (:func:`fungi_ssl.data.coordinates.lonlat_to_crs`)
    and located with the raster's affine transform, so the pixel returned is
    the one containing the point. Only those pixels are read.

    Parameters
    ----------
    da : xarray.DataArray
        A raster with a CRS (as :func:`read_covariate_raster` returns), dims
        ``(y, x)`` or ``(band, y, x)``.
    longitude, latitude : array_like
        WGS84 degrees, same length.

    Returns
    -------
    PointSample
        Values, the inside mask and the count of points off the raster
        (also logged on the ``fungi_ssl`` logger when non-zero).

    Examples
    --------
    >>> import rioxarray  # noqa: F401
    >>> da = xr.DataArray(np.arange(6.0).reshape(2, 3), dims=("y", "x"),
    ...                   coords={"y": [51.5, 50.5], "x": [0.5, 1.5, 2.5]}).rio.write_crs(4326)
    >>> s = sample_raster_at_points(da, [0.2, 2.9, 10.0], [51.9, 50.1, 50.0])
    >>> s.values.tolist(), s.n_outside
    ([0.0, 5.0, nan], 1)
    """
    import rioxarray  # noqa: F401

    if not isinstance(da, xr.DataArray):
        raise TypeError(f"da: expected an xarray.DataArray raster, got {type(da).__name__}")
    if da.rio.crs is None:
        raise ValueError("da: the raster has no CRS; write one with da.rio.write_crs(...)")
    lon = np.atleast_1d(np.asarray(longitude, dtype=float))
    lat = np.atleast_1d(np.asarray(latitude, dtype=float))
    if lon.ndim != 1 or lon.shape != lat.shape:
        raise ValueError(
            f"longitude, latitude: expected two 1-D arrays of one length, got {lon.shape} and {lat.shape}"
        )
    x_dim, y_dim = da.rio.x_dim, da.rio.y_dim
    finite = np.isfinite(lon) & np.isfinite(lat)
    x = np.full(lon.shape, np.nan)
    y = np.full(lon.shape, np.nan)
    if finite.any():
        x[finite], y[finite] = lonlat_to_crs(lon[finite], lat[finite], da.rio.crs)
    inv = ~da.rio.transform()  # CRS coordinates -> fractional (col, row)
    with np.errstate(invalid="ignore"):
        col = np.floor(inv.a * x + inv.b * y + inv.c)
        row = np.floor(inv.d * x + inv.e * y + inv.f)
    width, height = da.sizes[x_dim], da.sizes[y_dim]
    inside = np.isfinite(col) & np.isfinite(row)
    inside &= (col >= 0) & (col < width) & (row >= 0) & (row < height)
    other_dims = [d for d in da.dims if d not in (x_dim, y_dim)]
    other_shape = tuple(da.sizes[d] for d in other_dims)
    values = np.full(lon.shape + other_shape, np.nan)
    if inside.any():
        picked = da.isel(
            {
                x_dim: xr.DataArray(col[inside].astype(np.int64), dims="point"),
                y_dim: xr.DataArray(row[inside].astype(np.int64), dims="point"),
            }
        ).transpose("point", *other_dims)
        values[inside] = np.asarray(picked.values, dtype=float)
    n_outside = int((~inside).sum())
    if n_outside:
        logger.warning(
            "%d of %d points fall outside raster %s; their values are NaN",
            n_outside,
            lon.size,
            da.name,
        )
    return PointSample(values=values, inside=inside, n_outside=n_outside)


# ---------------------------------------------------------------------------
# Real data directory
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RealTables:
    """Known files found in a real data directory.

    Attributes
    ----------
    directory : pathlib.Path
    samples : pathlib.Path or None
        GlobalFungi-style sample table (``read_samples``).
    spun_covariates : pathlib.Path or None
        SPUN 1 km covariate table (``read_spun_covariates``).
    covariate_rasters : tuple of pathlib.Path
        GeoTIFFs in the directory (``read_covariate_raster``).
    """

    directory: Path
    samples: Path | None = None
    spun_covariates: Path | None = None
    covariate_rasters: tuple[Path, ...] = ()


#: File names preferred as the sample table when a directory holds several tables
#: with its columns and none is named (``SAMPLES=``): the download's and the
#: historical name.
SAMPLE_TABLE_NAMES = (REAL_TABLES["globalfungi_europe"].filename, "samples.csv")
#: Columns that make a CSV a GlobalFungi-style sample table, whatever its name
#: (the richness column is checked against the target when the table is read).
SAMPLE_TABLE_KEY_COLUMNS = ("sample_id", "longitude", "latitude")
#: Columns that make a CSV the SPUN table of 1 km covariates.
SPUN_TABLE_KEY_COLUMNS = (_SPUN_ID, _SPUN_TARGET, _SPUN_LAT, _SPUN_LON)
#: Environment variable naming the sample table of a data directory (a file name in it,
#: or a path): ``make book SAMPLES=…`` and ``--samples`` set it for every chapter.
SAMPLES_ENV = "FUNGI_SSL_SAMPLES"


def csv_columns(path: str | os.PathLike) -> list[str]:
    """The header of a CSV file (its first line), without reading the rows.

    An unnamed leading column (R's row numbers) is left out, as the readers drop it.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
    >>> _ = p.write_text('"","sample_id","longitude"\\n"1","A",3\\n')
    >>> csv_columns(p)
    ['sample_id', 'longitude']
    """
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    columns = [str(c).strip() for c in header]
    if columns and (columns[0] == "" or columns[0].startswith("Unnamed: 0")):
        columns = columns[1:]
    return columns


def _is_sample_table(columns: list[str]) -> bool:
    return all(c in columns for c in SAMPLE_TABLE_KEY_COLUMNS)


def _is_spun_table(columns: list[str]) -> bool:
    return all(c in columns for c in SPUN_TABLE_KEY_COLUMNS)


def _named_samples(directory: Path, samples: str | os.PathLike) -> Path:
    path = Path(samples)
    if not path.is_absolute() and not path.exists():
        path = directory / path
    if not path.is_file():
        raise FileNotFoundError(
            f"SAMPLES={samples}: no such file in {directory} (expected a CSV sample table "
            f"with columns {', '.join(SAMPLE_TABLE_KEY_COLUMNS)} and its richness)")
    columns = csv_columns(path)
    if not _is_sample_table(columns):
        missing = [c for c in SAMPLE_TABLE_KEY_COLUMNS if c not in columns]
        raise ValueError(
            f"SAMPLES={samples}: {path.name} has no column(s) {', '.join(missing)}; a sample "
            f"table needs {', '.join(SAMPLE_TABLE_KEY_COLUMNS)} and its richness")
    return path


def find_real_tables(data_dir: str | os.PathLike,
                     samples: str | os.PathLike | None = None) -> RealTables:
    """Find the real tables in ``data_dir`` by their columns, whatever their names.

    Any CSV whose header has ``sample_id``, ``longitude`` and ``latitude`` is
    a sample table (GlobalFungi style); a CSV with ``sample_id``,
    ``ECM_diversity``, ``Pixel_Lat`` and ``Pixel_Long`` is the SPUN table of
    1 km covariates. Only headers are read.

    Parameters
    ----------
    data_dir : path-like
        A real data directory, e.g. the one ``python -m fungi_ssl.data.download``
        fills.
    samples : path-like, optional
        The sample table when the directory holds several: a file name in
        ``data_dir`` or a path. Default: the environment variable
        ``FUNGI_SSL_SAMPLES`` (``make book SAMPLES=…``), else the one
        table found (or the download's name among several).

    Returns
    -------
    RealTables
        Paths of the files present (None where absent).

    Raises
    ------
    FileNotFoundError
        If ``data_dir`` does not exist, is not a directory, or holds neither a
        sample table nor the SPUN covariate table; if ``samples`` names no file.
    ValueError
        If several CSVs are sample tables and none is named, or the named one
        lacks the sample-table columns.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "my_am_table.csv").write_text("sample_id,longitude,latitude,am\\n")
    >>> found = find_real_tables(d)
    >>> found.samples.name, found.spun_covariates
    ('my_am_table.csv', None)
    """
    directory = Path(data_dir)
    if not directory.exists():
        raise FileNotFoundError(f"real data directory not found: {directory}")
    if not directory.is_dir():
        raise FileNotFoundError(f"real data directory is not a directory: {directory}")
    csvs = sorted(p for p in directory.iterdir() if p.suffix.lower() == ".csv" and p.is_file())
    headers = {p: csv_columns(p) for p in csvs}
    spun_found = [p for p in csvs if _is_spun_table(headers[p])]
    spun_name = directory / REAL_TABLES["spun_covariates"].filename
    spun = spun_name if spun_name in spun_found else (spun_found[0] if spun_found else None)
    named = samples if samples is not None else (os.environ.get(SAMPLES_ENV) or None)
    if named:
        sample_path: Path | None = _named_samples(directory, named)
    else:
        found = [p for p in csvs if _is_sample_table(headers[p]) and p not in spun_found]
        preferred = [directory / n for n in SAMPLE_TABLE_NAMES if directory / n in found]
        if len(found) > 1 and not preferred:
            raise ValueError(
                f"{directory} holds {len(found)} sample tables ({', '.join(p.name for p in found)}); "
                "name one with SAMPLES=<file> (make book) or --samples <file>")
        sample_path = preferred[0] if preferred else (found[0] if found else None)
    rasters = tuple(
        sorted(
            p for p in directory.iterdir() if p.suffix.lower() in (".tif", ".tiff") and p.is_file()
        )
    )
    if sample_path is None and spun is None:
        shown = ", ".join(p.name for p in csvs) or "no CSV files"
        raise FileNotFoundError(
            f"{directory} holds no usable table ({shown}): expected a CSV sample table with "
            f"columns {', '.join(SAMPLE_TABLE_KEY_COLUMNS)} and its richness, or the SPUN table "
            f"{REAL_TABLES['spun_covariates'].filename}"
        )
    return RealTables(
        directory=directory, samples=sample_path, spun_covariates=spun, covariate_rasters=rasters
    )


def check_data_directory(data_dir: str | os.PathLike, *, target: str = "rarefied",
                         samples: str | os.PathLike | None = None) -> RealTables:
    """Check a real data directory before any chapter runs; one-line errors.

    Finds the tables (:func:`find_real_tables`) and reads the sample table
    with ``target`` as its richness column (:func:`read_samples`), so a
    missing column, a bad value or an unknown target fails here, in a second
    or two, rather than inside a chapter.

    Raises
    ------
    FileNotFoundError, ValueError
        As :func:`find_real_tables` and :func:`read_samples`; a ``target``
        other than ``rarefied`` with no sample table to read it from.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "am.csv").write_text("sample_id,longitude,latitude,raw_obs_div,am\\n"
    ...                               "A1,6.02,52.04,3,5\\n")
    >>> check_data_directory(d, target="am").samples.name
    'am.csv'
    >>> check_data_directory(d, target="ecm")
    Traceback (most recent call last):
    ...
    ValueError: ...am.csv: no target column 'ecm'; columns are ['sample_id', 'longitude', 'latitude', 'raw_obs_div', 'am']
    """
    tables = find_real_tables(data_dir, samples)
    if tables.samples is not None:
        read_samples(tables.samples, target=target)
    elif target != "rarefied":
        raise ValueError(
            f"TARGET={target}: {tables.directory} has no sample table to read it from, only "
            f"{tables.spun_covariates.name}, whose richness is ECM_diversity")
    return tables


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
