"""Read TESSERA embedding tiles from the directory that ``geotessera`` downloads into.

TESSERA publishes one annual 128-dimensional embedding per 10 m pixel, cut
into tiles on a 0.1° grid. The ``geotessera`` client (ucam-eo/geotessera)
downloads them into a directory with this layout, which this module reads with
numpy and rasterio alone, so ``geotessera`` itself (Python ≥ 3.12) stays an
optional extra::

    root/
    ├── tessera_metadata.json                          (optional provenance sidecar)
    ├── global_0.1_degree_representation/
    │   └── {year}/
    │       └── grid_{lon:.2f}_{lat:.2f}/
    │           ├── grid_{lon:.2f}_{lat:.2f}.npy         int8    (H, W, 128)
    │           └── grid_{lon:.2f}_{lat:.2f}_scales.npy  float32 (H, W)
    └── global_0.1_degree_tiff_all/
        └── grid_{lon:.2f}_{lat:.2f}.tiff                landmask: uint8 band 1, 0 = water;
                                                         holds the tile's CRS and transform

Facts about the layout, with where they come from in ucam-eo/geotessera
(version 0.10.1 per ``pyproject.toml`` at commit 0b310421; file versions read:
``geotessera/registry.py`` @ 2f873ba4, ``geotessera/tiles.py`` @ 84b0c514,
``geotessera/core.py`` @ 00a12b82, ``geotessera/zarr.py`` @ 055cc189):

- Directory names ``global_0.1_degree_representation`` and
  ``global_0.1_degree_tiff_all`` are ``EMBEDDINGS_DIR_NAME`` and
  ``LANDMASKS_DIR_NAME`` in ``registry.py``. The local layout uses the bare
  embeddings directory whatever the dataset version or variant; which dataset
  was downloaded is recorded in ``tessera_metadata.json`` (``registry.py``,
  ``write_tessera_metadata``), which :func:`open_tile` copies into ``attrs``.
- Tiles are 0.1° × 0.1° cells centred at 0.05° offsets. A point belongs to the
  cell ``floor(lon * 10) / 10 + 0.05`` (same for latitude), rounded to two
  decimals (``registry.py``, ``tile_from_world``). Names are
  ``f"grid_{lon:.2f}_{lat:.2f}"`` of the centre (``tile_to_grid_name``), so
  ``grid_-0.15_-0.05``; centres are never 0, so there is no ``-0.00``.
- Paths: ``{year}/{grid}/{grid}.npy`` and ``{year}/{grid}/{grid}_scales.npy``
  under the embeddings directory (``tile_to_embedding_paths``);
  ``{grid}.tiff`` under the landmask directory (``tile_to_landmask_filename``).
  Discovery takes the year from the grandparent directory (four digits) and
  skips ``*_scales.npy`` (``tiles.py``, ``_parse_npy_filename``,
  ``discover_npy_tiles``).
- The ``.npy`` files carry no georeferencing: the CRS, affine transform and
  pixel grid of an NPY tile are those of its landmask GeoTIFF
  (``tiles.py``, ``Tile._load_spatial_metadata_from_landmask``); a tile without
  its landmask is unusable (``Tile.from_npy`` raises).
- Embeddings are int8 ``(H, W, 128)``; scales are float32 ``(H, W)``, and
  ``dequantize_embedding`` in ``core.py`` also accepts ``(H, W, 128)``. The
  dequantised value is ``embedding.astype(float32) * scale`` broadcast over the
  last axis. Non-finite scales mean no data and landmask 0 means water
  (``zarr.py``: the scale sentinels in its module docstring, NaN = water and
  +inf = land without data, and ``_load_landmask_slice``). Here a non-finite
  scale gives NaN, and water is kept unless ``mask_water=True``, as in
  geotessera's ``sample_embeddings_at_points`` (``core.py``), which does not
  mask water.
- Each tile lies in the WGS84 UTM zone of its centre longitude (EPSG 326xx, or
  327xx when the centre latitude is negative) at 10 m, north-up; its grid is
  the UTM envelope of the 0.1° cell (``zarr.py``, ``project_tile``), so
  neighbouring tiles overlap along their shared edges (at 52° N by up to about
  450 m at one end of an edge, none at the other) and need not share a pixel
  grid (the origin is not snapped to 10 m).

The rule for patches across tile edges (:func:`sample_patches`) is documented
there. All code here is our own; only the facts above come from geotessera.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from affine import Affine
from pyproj import CRS

from fungi_ssl.data.coordinates import check_lonlat

EMBEDDINGS_DIR_NAME = "global_0.1_degree_representation"
LANDMASKS_DIR_NAME = "global_0.1_degree_tiff_all"
METADATA_FILENAME = "tessera_metadata.json"
#: Width of a tile cell in degrees.
TILE_DEGREES = 0.1
#: Embedding dimensions of TESSERA v1.
N_DIM = 128
#: Pixel size of TESSERA tiles in metres.
PIXEL_METRES = 10.0

_GRID_NAME = re.compile(r"^grid_(-?\d+\.\d+)_(-?\d+\.\d+)$")
# Cells tried, in order, for a location: its own cell, then the 4 edge
# neighbours, then the 4 corner neighbours (tiles overlap their neighbours).
_CELL_ORDER = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1))


# --------------------------------------------------------------------------
# Names and paths
# --------------------------------------------------------------------------


def _cell_index(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer 0.1° cell indices ``floor(deg * 10)``; 180 and 90 fall in the last cell."""
    i_lon = np.floor(np.asarray(lon, dtype=float) * 10.0)
    i_lat = np.floor(np.asarray(lat, dtype=float) * 10.0)
    i_lon = np.clip(i_lon, -1800, 1799)
    i_lat = np.clip(i_lat, -900, 899)
    return i_lon.astype(np.int64), i_lat.astype(np.int64)


def _cell_centre(i_lon: int, i_lat: int) -> tuple[float, float]:
    # "+ 0.0" turns a -0.0 into 0.0 (cannot happen for centres, kept for safety).
    return round(i_lon / 10.0 + 0.05, 2) + 0.0, round(i_lat / 10.0 + 0.05, 2) + 0.0


def tile_for_point(lon: float, lat: float) -> tuple[float, float]:
    """Centre of the 0.1° TESSERA tile that contains a point.

    Tiles are centred at 0.05° offsets; a point on a cell edge belongs to the
    cell to its east/north, as in geotessera's ``tile_from_world``.

    Parameters
    ----------
    lon, lat : float
        WGS84 degrees.

    Returns
    -------
    (float, float)
        Tile centre longitude and latitude, rounded to two decimals.

    Examples
    --------
    >>> tile_for_point(0.17, 52.23)
    (0.15, 52.25)
    >>> tile_for_point(-0.12, -0.03)
    (-0.15, -0.05)
    >>> tile_for_point(0.1, 52.0)      # on an edge: the cell to the east/north
    (0.15, 52.05)
    """
    check_lonlat(lon, lat, "tile_for_point")
    i_lon, i_lat = _cell_index(np.array([lon]), np.array([lat]))
    return _cell_centre(int(i_lon[0]), int(i_lat[0]))


def tile_name(lon: float, lat: float) -> str:
    """geotessera grid name ``grid_{lon:.2f}_{lat:.2f}`` of the tile containing a point.

    A tile centre maps to its own name, so this works for centres and for
    arbitrary points alike.

    Examples
    --------
    >>> tile_name(0.15, 52.05)
    'grid_0.15_52.05'
    >>> tile_name(-3.21, 57.08)
    'grid_-3.25_57.05'
    >>> tile_name(-0.0, -0.0)
    'grid_0.05_0.05'
    """
    c_lon, c_lat = tile_for_point(lon, lat)
    return f"grid_{c_lon:.2f}_{c_lat:.2f}"


def parse_tile_name(name: str) -> tuple[float, float]:
    """Tile centre ``(lon, lat)`` from a grid name such as ``grid_-0.15_52.05``.

    Raises
    ------
    ValueError
        If ``name`` is not ``grid_<lon>_<lat>`` with a valid tile centre.

    Examples
    --------
    >>> parse_tile_name("grid_-0.15_52.05")
    (-0.15, 52.05)
    """
    m = _GRID_NAME.match(name)
    if not m:
        raise ValueError(
            f"parse_tile_name: {name!r} is not a geotessera grid name like 'grid_0.15_52.05'"
        )
    lon, lat = float(m.group(1)), float(m.group(2))
    check_lonlat(lon, lat, f"parse_tile_name({name!r})")
    if tile_for_point(lon, lat) != (lon, lat):
        raise ValueError(
            f"parse_tile_name: {name!r} is not a tile centre (centres lie at 0.05° offsets, "
            f"e.g. {tile_name(lon, lat)!r})"
        )
    return lon, lat


@dataclass(frozen=True)
class TilePaths:
    """The three files of one NPY tile, as geotessera lays them out."""

    embedding: Path
    scales: Path
    landmask: Path


def tile_paths(root: str | Path, year: int, lon: float, lat: float) -> TilePaths:
    """Where geotessera puts the files of the tile containing ``(lon, lat)``.

    Parameters
    ----------
    root : str or Path
        The directory given to ``geotessera download --output``.
    year : int
        Embedding year.
    lon, lat : float
        Any point in the tile (its centre, for instance).

    Examples
    --------
    >>> p = tile_paths("tiles", 2024, 0.15, 52.05)
    >>> p.embedding.as_posix()
    'tiles/global_0.1_degree_representation/2024/grid_0.15_52.05/grid_0.15_52.05.npy'
    >>> p.scales.name, p.landmask.as_posix()
    ('grid_0.15_52.05_scales.npy', 'tiles/global_0.1_degree_tiff_all/grid_0.15_52.05.tiff')
    """
    name = tile_name(lon, lat)
    root = Path(root)
    folder = root / EMBEDDINGS_DIR_NAME / str(int(year)) / name
    return TilePaths(
        embedding=folder / f"{name}.npy",
        scales=folder / f"{name}_scales.npy",
        landmask=root / LANDMASKS_DIR_NAME / f"{name}.tiff",
    )


# --------------------------------------------------------------------------
# Tiles
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class TesseraTile:
    """One TESSERA tile on disk: where it is and how it is georeferenced.

    Attributes
    ----------
    year : int
    lon, lat : float
        Tile centre (WGS84 degrees, on the 0.05° offsets).
    paths : TilePaths
    crs : pyproj.CRS
        The tile's UTM CRS, from its landmask GeoTIFF.
    transform : affine.Affine
        Pixel-corner affine transform (10 m, north-up), from the landmask.
    shape : tuple of int
        ``(height, width, dim)`` of the int8 embedding array.
    """

    year: int
    lon: float
    lat: float
    paths: TilePaths
    crs: CRS
    transform: Affine
    shape: tuple[int, int, int]

    @property
    def name(self) -> str:
        """Grid name, e.g. ``grid_0.15_52.05``."""
        return f"grid_{self.lon:.2f}_{self.lat:.2f}"

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """The 0.1° cell as ``(west, south, east, north)`` in degrees."""
        h = TILE_DEGREES / 2
        return (self.lon - h, self.lat - h, self.lon + h, self.lat + h)

    def open(self) -> xr.Dataset:
        """The tile as a lazily memory-mapped Dataset (see :func:`open_tile`)."""
        return _tile_dataset(self)


def _root_dir(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"TESSERA root directory {root} does not exist")
    if root.name in (EMBEDDINGS_DIR_NAME, LANDMASKS_DIR_NAME):
        raise ValueError(
            f"TESSERA root {root} is a geotessera sub-directory; pass its parent "
            f"{root.parent}, which holds {EMBEDDINGS_DIR_NAME}/ and {LANDMASKS_DIR_NAME}/"
        )
    return root


def _years_present(root: Path) -> list[int]:
    base = root / EMBEDDINGS_DIR_NAME
    if not base.is_dir():
        return []
    return sorted(
        int(p.name) for p in base.iterdir() if p.is_dir() and re.fullmatch(r"\d{4}", p.name)
    )


def _year_dir(root: Path, year: int) -> Path:
    base = root / EMBEDDINGS_DIR_NAME
    if not base.is_dir():
        raise FileNotFoundError(
            f"{root} holds no geotessera download: expected the directory {base} "
            f"(and {root / LANDMASKS_DIR_NAME}), as `geotessera download --output {root}` writes"
        )
    folder = base / str(int(year))
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no TESSERA tiles for year {year} under {root}: {folder} does not exist "
            f"(years present: {_years_present(root) or 'none'})"
        )
    return folder


def _load_npy(path: Path, what: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ValueError(f"cannot read TESSERA {what} file {path} as a .npy array: {err}") from None


def _checked_scale(scales: np.ndarray, emb_shape: tuple[int, ...], path: Path) -> np.ndarray:
    """Scales as ``(H, W)`` (or ``(H, W, D)``) float32, without copying when possible."""
    h, w, d = emb_shape
    if scales.shape == (h, w, 1):
        scales = scales[..., 0]
    if scales.shape not in ((h, w), (h, w, d)):
        raise ValueError(
            f"TESSERA scales file {path} has shape {scales.shape}; expected ({h}, {w}) "
            f"(or ({h}, {w}, 1) or ({h}, {w}, {d})) to match its embedding of shape {emb_shape}"
        )
    if not np.issubdtype(scales.dtype, np.floating):
        raise ValueError(f"TESSERA scales file {path} has dtype {scales.dtype}; expected float32")
    if scales.dtype != np.float32:
        scales = scales.astype(np.float32)
    return scales


def _read_tile(root: Path, year: int, lon: float, lat: float) -> TesseraTile:
    import rasterio

    paths = tile_paths(root, year, lon, lat)
    name = paths.embedding.stem
    if not paths.embedding.is_file():
        raise FileNotFoundError(
            f"TESSERA tile {name} for {year}: embedding file {paths.embedding} not found"
        )
    if not paths.scales.is_file():
        raise FileNotFoundError(
            f"TESSERA tile {name} for {year} has no scales file: expected {paths.scales} "
            "next to its embedding (geotessera downloads both; the int8 embedding cannot be "
            "dequantised without it)"
        )
    if not paths.landmask.is_file():
        raise FileNotFoundError(
            f"TESSERA tile {name} has no landmask GeoTIFF: expected {paths.landmask}; "
            "it holds the tile's CRS and transform (geotessera downloads it with the tile)"
        )
    emb = _load_npy(paths.embedding, "embedding")
    if emb.dtype != np.int8 or emb.ndim != 3:
        raise ValueError(
            f"TESSERA embedding file {paths.embedding} holds {emb.dtype} {emb.shape}; "
            "expected int8 of shape (H, W, 128)"
        )
    _checked_scale(_load_npy(paths.scales, "scales"), emb.shape, paths.scales)
    try:
        with rasterio.open(paths.landmask) as src:
            crs, transform, lm_shape = src.crs, src.transform, (src.height, src.width)
    except rasterio.errors.RasterioIOError as err:
        raise ValueError(
            f"cannot read TESSERA landmask {paths.landmask} as a GeoTIFF: {err}"
        ) from None
    if crs is None:
        raise ValueError(
            f"TESSERA landmask {paths.landmask} has no CRS; expected the tile's UTM zone"
        )
    if transform.b != 0 or transform.d != 0:
        raise ValueError(
            f"TESSERA landmask {paths.landmask} has a rotated transform {transform}; expected north-up"
        )
    if lm_shape != emb.shape[:2]:
        raise ValueError(
            f"TESSERA landmask {paths.landmask} is {lm_shape[0]}×{lm_shape[1]} pixels but the "
            f"embedding {paths.embedding} is {emb.shape[0]}×{emb.shape[1]}; the georeferencing "
            "would not match the pixels"
        )
    c_lon, c_lat = tile_for_point(lon, lat)
    return TesseraTile(
        year=int(year),
        lon=c_lon,
        lat=c_lat,
        paths=paths,
        crs=CRS.from_user_input(crs.to_wkt()),
        transform=Affine(*transform[:6]),
        shape=tuple(int(s) for s in emb.shape),
    )


def read_tile(root: str | Path, year: int, lon: float, lat: float) -> TesseraTile:
    """Check one tile's files and read its georeferencing (not its pixels).

    Parameters
    ----------
    root : str or Path
        Directory that geotessera downloaded into.
    year : int
    lon, lat : float
        Any point in the tile.

    Raises
    ------
    FileNotFoundError
        If ``root``, the embedding, its scales file or its landmask GeoTIFF is
        missing (the message names the missing path).
    ValueError
        If a file has the wrong dtype or a shape that does not match the
        embedding.

    Examples
    --------
    >>> from fungi_ssl.embeddings.tessera_write import write_tile
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> emb = np.zeros((4, 5, 128), dtype=np.int8)
    >>> _ = write_tile(root, 2024, 0.15, 52.05, emb, np.ones((4, 5), np.float32),
    ...                transform=Affine(10, 0, 300_000, 0, -10, 5_770_000))
    >>> t = read_tile(root, 2024, 0.15, 52.05)
    >>> t.name, t.crs.to_epsg(), t.shape
    ('grid_0.15_52.05', 32631, (4, 5, 128))
    """
    root = _root_dir(root)
    check_lonlat(lon, lat, "read_tile")
    return _read_tile(root, int(year), lon, lat)


def find_tiles(
    root: str | Path, year: int | None = None, *, strict: bool = True
) -> list[TesseraTile]:
    """Discover the NPY tiles under a geotessera download directory.

    Parameters
    ----------
    root : str or Path
        Directory that geotessera downloaded into.
    year : int, optional
        Only this year (default: every year present).
    strict : bool, default True
        Raise on an incomplete or malformed tile (e.g. a missing scales file).
        With ``False``, warn and skip it, as geotessera's discovery does.

    Returns
    -------
    list of TesseraTile
        Sorted by ``(year, lat, lon)``.

    Raises
    ------
    FileNotFoundError
        If ``root`` does not exist or holds no embeddings directory (or none
        for ``year``), or, when ``strict``, a tile lacks its scales or landmask.

    Examples
    --------
    >>> from fungi_ssl.embeddings.tessera_write import write_tile
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> for lon in (0.15, 0.25):
    ...     _ = write_tile(root, 2024, lon, 52.05, np.zeros((3, 3, 128), np.int8),
    ...                    np.ones((3, 3), np.float32),
    ...                    transform=Affine(10, 0, 300_000, 0, -10, 5_770_000))
    >>> [t.name for t in find_tiles(root, 2024)]
    ['grid_0.15_52.05', 'grid_0.25_52.05']
    """
    root = _root_dir(root)
    if year is None:
        if not (root / EMBEDDINGS_DIR_NAME).is_dir():
            raise FileNotFoundError(
                f"{root} holds no geotessera download: expected the directory "
                f"{root / EMBEDDINGS_DIR_NAME}"
            )
        years = _years_present(root)
    else:
        _year_dir(root, year)
        years = [int(year)]
    tiles: list[TesseraTile] = []
    for y in years:
        for npy in sorted((root / EMBEDDINGS_DIR_NAME / str(y)).glob("grid_*/grid_*.npy")):
            if npy.name.endswith("_scales.npy") or npy.parent.name != npy.stem:
                continue
            try:
                lon, lat = parse_tile_name(npy.stem)
            except ValueError:
                continue
            try:
                tiles.append(_read_tile(root, y, lon, lat))
            except (FileNotFoundError, ValueError) as err:
                if strict:
                    raise
                warnings.warn(f"skipping TESSERA tile {npy}: {err}", UserWarning, stacklevel=2)
    return sorted(tiles, key=lambda t: (t.year, t.lat, t.lon))


def _provenance(root: Path) -> dict[str, str]:
    sidecar = root / METADATA_FILENAME
    if not sidecar.is_file():
        return {}
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return {}
    keys = ("dataset_version", "dataset_variant", "dataset_path")
    return {f"tessera_{k}": str(meta[k]) for k in keys if k in meta}


#: What a download without ``tessera_metadata.json`` (or without its ``dataset_version``)
#: is called in encoder signatures: ``"tessera:unknown-version"``, never plain ``"tessera"``.
UNKNOWN_DATASET_VERSION = "unknown-version"


def dataset_version(root: str | Path) -> str | None:
    """The TESSERA dataset version a download records, or None when it records none.

    ``geotessera download`` writes ``tessera_metadata.json`` beside the tile
    folders; its ``dataset_version`` (e.g. ``"v1"``) says which release the
    embeddings come from.

    Examples
    --------
    >>> import tempfile, json
    >>> root = Path(tempfile.mkdtemp())
    >>> dataset_version(root) is None
    True
    >>> _ = (root / METADATA_FILENAME).write_text(json.dumps({"dataset_version": "v1"}))
    >>> dataset_version(root)
    'v1'
    """
    v = _provenance(Path(root)).get("tessera_dataset_version")
    return None if v in (None, "") else v


def version_signature(version: str | None) -> str:
    """The encoder signature of TESSERA embeddings of one dataset version.

    ``"tessera:<version>"``; ``"tessera:unknown-version"`` when the version is
    unknown, so embeddings of an unknown release are never taken for those of
    a known one (a map model records this signature and refuses others).

    Examples
    --------
    >>> version_signature("v1"), version_signature(None)
    ('tessera:v1', 'tessera:unknown-version')
    """
    return f"tessera:{version if version else UNKNOWN_DATASET_VERSION}"


def embeddings_signature(root: str | Path, *, warn: bool = True) -> str:
    """The encoder signature of a geotessera download: :func:`version_signature` of its version.

    Parameters
    ----------
    root : str or Path
        Directory that geotessera downloaded into.
    warn : bool
        Warn (one line, naming the file to add) when the download records no
        dataset version.

    Examples
    --------
    >>> import tempfile
    >>> with warnings.catch_warnings(record=True) as w:
    ...     warnings.simplefilter("always")
    ...     sig = embeddings_signature(tempfile.mkdtemp())
    >>> sig, "record no dataset version" in str(w[0].message)
    ('tessera:unknown-version', True)
    """
    version = dataset_version(root)
    if version is None and warn:
        warnings.warn(
            f"the TESSERA tiles under {root} record no dataset version (no {METADATA_FILENAME} "
            f"with 'dataset_version', as `geotessera download` writes): they are called "
            f"{version_signature(None)!r}, and a map model fitted on them maps only tiles of an "
            "unknown version too",
            UserWarning,
            stacklevel=2,
        )
    return version_signature(version)


def _tile_dataset(tile: TesseraTile) -> xr.Dataset:
    import rasterio

    emb = _load_npy(tile.paths.embedding, "embedding")
    scale = _checked_scale(_load_npy(tile.paths.scales, "scales"), emb.shape, tile.paths.scales)
    with rasterio.open(tile.paths.landmask) as src:
        land = src.read(1) != 0
    h, w, d = emb.shape
    t = tile.transform
    x = t.c + (np.arange(w) + 0.5) * t.a
    y = t.f + (np.arange(h) + 0.5) * t.e
    scale_dims = ("y", "x") if scale.ndim == 2 else ("y", "x", "dim")
    ds = xr.Dataset(
        {
            "embedding": (("y", "x", "dim"), emb),
            "scale": (scale_dims, scale),
            "land": (("y", "x"), land),
        },
        coords={"y": y, "x": x, "dim": np.arange(d)},
    )
    ds["embedding"].attrs["description"] = "TESSERA embedding, int8; value = embedding * scale"
    ds["scale"].attrs["description"] = "per-pixel dequantisation scale; non-finite = no data"
    ds["land"].attrs["description"] = "landmask band 1 != 0 (False = water)"
    ds = ds.rio.write_crs(tile.crs.to_wkt()).rio.write_transform(t)
    ds.attrs.update(
        {
            "tile": tile.name,
            "year": tile.year,
            "tile_lon": tile.lon,
            "tile_lat": tile.lat,
            "embedding_path": str(tile.paths.embedding),
            "scales_path": str(tile.paths.scales),
            "landmask_path": str(tile.paths.landmask),
            **_provenance(tile.paths.landmask.parent.parent),
        }
    )
    return ds


def open_tile(root: str | Path, year: int, lon: float, lat: float) -> xr.Dataset:
    """Open one tile as an xarray Dataset, memory-mapped (no pixels read yet).

    Parameters
    ----------
    root : str or Path
        Directory that geotessera downloaded into.
    year : int
    lon, lat : float
        Any point in the tile.

    Returns
    -------
    xarray.Dataset
        ``embedding (y, x, dim)`` int8, ``scale (y, x)`` float32 (or
        ``(y, x, dim)`` if the file stores per-dimension scales) and
        ``land (y, x)`` bool from the landmask; ``x``/``y`` are pixel centres
        in metres of the tile's UTM CRS, which rioxarray's ``spatial_ref``
        holds with the transform. ``attrs`` name the tile, year and files.
        Use :func:`dequantise` for float values.

    Raises
    ------
    FileNotFoundError, ValueError
        As :func:`read_tile`.

    Examples
    --------
    >>> from fungi_ssl.embeddings.tessera_write import write_tile
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> emb = np.full((4, 5, 128), 100, dtype=np.int8)
    >>> _ = write_tile(root, 2024, 0.15, 52.05, emb, np.full((4, 5), 0.01, np.float32),
    ...                transform=Affine(10, 0, 300_000, 0, -10, 5_770_000))
    >>> ds = open_tile(root, 2024, 0.15, 52.05)
    >>> ds.embedding.dims, ds.embedding.dtype, ds.rio.crs.to_epsg()
    (('y', 'x', 'dim'), dtype('int8'), 32631)
    >>> float(ds.x[0]), float(ds.y[0])
    (300005.0, 5769995.0)
    """
    return read_tile(root, year, lon, lat).open()


# --------------------------------------------------------------------------
# Dequantisation
# --------------------------------------------------------------------------


def dequantise(
    embedding: np.ndarray | xr.Dataset, scale: np.ndarray | None = None
) -> np.ndarray | xr.DataArray:
    """Float32 embedding values ``embedding * scale``, NaN where the scale is not finite.

    Parameters
    ----------
    embedding : numpy.ndarray or xarray.Dataset
        int8 array ``(..., D)``, or a Dataset from :func:`open_tile` (then
        ``scale`` is taken from it; select a window first, since the result
        is loaded into memory).
    scale : numpy.ndarray, optional
        ``(...)``, ``(..., 1)`` or ``(..., D)`` float scales for an array input.

    Returns
    -------
    numpy.ndarray or xarray.DataArray
        float32 of the embedding's shape (a DataArray for a Dataset input).
        The inputs are not modified.

    Examples
    --------
    >>> q = np.array([[[127, -64], [0, 1]]], dtype=np.int8)      # (1, 2, 2)
    >>> s = np.array([[0.5, np.nan]], dtype=np.float32)          # (1, 2)
    >>> dequantise(q, s)
    array([[[ 63.5, -32. ],
            [  nan,   nan]]], dtype=float32)
    """
    if isinstance(embedding, xr.Dataset):
        if scale is not None:
            raise ValueError("dequantise: pass `scale` only with an array embedding, not a Dataset")
        for var in ("embedding", "scale"):
            if var not in embedding:
                raise ValueError(
                    f"dequantise: Dataset has no {var!r} variable (expected open_tile output)"
                )
        s = embedding["scale"].astype(np.float32)
        out = embedding["embedding"].astype(np.float32) * s.where(np.isfinite(s))
        out = out.transpose(*embedding["embedding"].dims).rename("embedding")
        out.attrs = {"description": "dequantised TESSERA embedding (embedding * scale)"}
        return out
    if scale is None:
        raise ValueError("dequantise: `scale` is required when `embedding` is an array")
    q = np.asarray(embedding)
    s = np.asarray(scale, dtype=np.float32)
    if q.ndim == 0:
        raise ValueError("dequantise: `embedding` must have a last (dimension) axis")
    if s.shape == q.shape[:-1]:
        s = s[..., None]
    if s.shape not in (q.shape[:-1] + (1,), q.shape):
        raise ValueError(
            f"dequantise: scale of shape {np.shape(scale)} does not match embedding of shape "
            f"{q.shape}; expected {q.shape[:-1]}, {q.shape[:-1] + (1,)} or {q.shape}"
        )
    s = np.where(np.isfinite(s), s, np.float32(np.nan))
    return (q.astype(np.float32) * s).astype(np.float32, copy=False)


# --------------------------------------------------------------------------
