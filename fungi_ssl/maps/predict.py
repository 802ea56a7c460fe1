"""10 m richness maps from embedding rasters, chunk by chunk with dask.

:func:`predict_map` applies a fitted :class:`fungi_ssl.maps.mapmodel.MapModel` to
every pixel of a bounding box, for one year or a stack of years, from

* the project's **Zarr embedding stores** (:func:`fungi_ssl.embeddings.embed.embed_cube`:
  ``embedding (y, x, dim)`` int8 and ``scale (y, x)`` float32), given as one
  store whose ``year`` attribute says which year it holds, a mapping
  ``{year: store}``, or a folder of ``<year>.zarr`` stores; or
* **TESSERA tiles** in the layout that ``geotessera`` downloads
  (:mod:`fungi_ssl.embeddings.tessera`), given as the download folder.

How the work is cut
-------------------
The map is cut into *windows* of ``window × window`` pixels and each window
into *blocks* of ``chunk × chunk``. Every block is one task: it reads its own
rectangle plus a halo of ``k // 2`` pixels (one for the 3 × 3 patch) straight
from the Zarr store or the TESSERA tiles (:meth:`EmbeddingSource.block_reader`)
and predicts it (:meth:`~fungi_ssl.maps.mapmodel.MapModel.predict_window`, in
strips), so no block data moves between tasks, threads or workers; a map is
the same whatever the window and chunk sizes. The blocks of the next windows
are queued while a finished window is written (reading and prediction
overlap the writing), and only finished maps (``window²`` float32) are held:
memory follows the window and the chunk, never the area. Each window's
result is brought back to this process and written there, so the workers of
a cluster never need to reach the output file. ``MapRun.details["seconds"]``
records the tasks' CPU time of reading and predicting and this process's
time writing windows and finishing the output.

Pixels without an embedding (a non-finite scale: cloud-only, water, outside
every tile or store) are NaN, and so is any pixel whose k × k patch has such a
neighbour (the patch is incomplete); both are counted.

Outputs
-------
* ``.tif`` / ``.tiff``: a Cloud-Optimised GeoTIFF (GDAL's COG driver: 512 ×
  512 tiles, DEFLATE, overviews, CRS and transform, NaN as nodata) that QGIS
  and GDAL open directly. One year per file.
* ``.zarr``: a Zarr store with ``<quantity> (year, y, x)`` and its CRS, for
  stacks of years.

Writing is atomic: the map is written under a temporary name in the output
folder and renamed when complete, so a half-written map never carries the
final name. An existing output is refused unless ``overwrite=True``.

Schedulers
----------
By default the blocks run on ``num_workers`` threads of this process (each
block single-threaded). With a scheduler address, given as
``scheduler="tcp://host:8786"`` or in the environment variable
:data:`SCHEDULER_ENV` (``FUNGI_SSL_DASK_SCHEDULER``), they run as tasks on that
existing ``dask.distributed`` cluster: the model and the block readers are
sent to every worker once, each task returns its block's map (4 bytes per
pixel) straight to this process. Its workers must be able to import
``fungi_ssl`` and to read the embedding stores or tiles at the same paths.
:func:`fungi_ssl.core.cluster.loopback_cluster` starts such a cluster of
processes on this machine.

:func:`aggregate_map` turns a 10 m map into 1 km cells (mean and within-cell
standard deviation), with its CRS.
"""

from __future__ import annotations

import ctypes
import itertools
import math
import os
import re
import shutil
import sys
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import rioxarray  # also registers the .rio accessor
import xarray as xr
from affine import Affine
from pyproj import CRS, Transformer
from tqdm import tqdm

from fungi_ssl.maps.mapmodel import MapModel

__all__ = [
    "DEFAULT_CHUNK",
    "DEFAULT_WINDOW",
    "PATCH_SIZE",
    "SCHEDULER_ENV",
    "EmbeddingSource",
    "MapGrid",
    "MapRun",
    "aggregate_map",
    "open_embedding_source",
    "open_map",
    "predict_map",
    "write_embedding_store",
]

#: Environment variable holding a dask.distributed scheduler address.
SCHEDULER_ENV = "FUNGI_SSL_DASK_SCHEDULER"
#: Side of the dask blocks (pixels); the project's embedding stores use 256.
DEFAULT_CHUNK = 256
#: Side of the windows computed one after another (pixels).
DEFAULT_WINDOW = 1024
#: The study's patch: 3 × 3 pixels.
PATCH_SIZE = 3
#: The guild a map model is taken to be of when it records none.
DEFAULT_GUILD = "ECM"

Quantity = Literal["richness", "log_richness"]
BBox = tuple[float, float, float, float]


# --------------------------------------------------------------------------
# Grids
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class MapGrid:
    """A north-up pixel grid: CRS, pixel-corner transform and shape.

    Examples
    --------
    >>> g = MapGrid(CRS.from_epsg(32630), Affine(10, 0, 500_000, 0, -10, 6_000_000), 2, 3)
    >>> g.x.tolist(), g.y.tolist()
    ([500005.0, 500015.0, 500025.0], [5999995.0, 5999985.0])
    >>> g.bounds
    (500000.0, 5999980.0, 500030.0, 6000000.0)
    """

    crs: CRS
    transform: Affine
    height: int
    width: int

    @property
    def x(self) -> np.ndarray:
        """Pixel-centre x coordinates."""
        t = self.transform
        return t.c + (np.arange(self.width) + 0.5) * t.a

    @property
    def y(self) -> np.ndarray:
        """Pixel-centre y coordinates (north to south)."""
        t = self.transform
        return t.f + (np.arange(self.height) + 0.5) * t.e

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(xmin, ymin, xmax, ymax)`` of the pixel edges."""
        t = self.transform
        return (
            float(t.c),
            float(t.f + self.height * t.e),
            float(t.c + self.width * t.a),
            float(t.f),
        )

    @property
    def n_pixels(self) -> int:
        return self.height * self.width


def _check_bbox(bbox: Sequence[float], where: str) -> BBox:
    try:
        vals = tuple(float(v) for v in bbox)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: bbox must be (xmin, ymin, xmax, ymax) numbers, got {bbox!r}") from None
    if len(vals) != 4 or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"{where}: bbox must be 4 finite numbers (xmin, ymin, xmax, ymax), got {bbox!r}")
    xmin, ymin, xmax, ymax = vals
    if xmin >= xmax or ymin >= ymax:
        raise ValueError(
            f"{where}: bbox {bbox!r} has min ≥ max "
            f"({'xmin ' + repr(xmin) + ' ≥ xmax ' + repr(xmax) if xmin >= xmax else 'ymin ' + repr(ymin) + ' ≥ ymax ' + repr(ymax)}); "
            "expected (xmin, ymin, xmax, ymax)"
        )
    return vals  # type: ignore[return-value]


def _transform_bbox(bbox: BBox, src: CRS, dst: CRS) -> BBox:
    if CRS.from_user_input(src) == CRS.from_user_input(dst):
        return bbox
    tr = Transformer.from_crs(src, dst, always_xy=True)
    return tuple(float(v) for v in tr.transform_bounds(*bbox, densify_pts=21))  # type: ignore[return-value]


# --------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------
class EmbeddingSource:
    """Embeddings of one year on a map grid, read lazily window by window.

    Made by :func:`open_embedding_source`. ``grid`` is the map's grid (the
    bounding box's pixels); :meth:`read` gives the embeddings of any rectangle
    of that grid, also beyond its edges (for the halo), with a NaN scale where
    there is no embedding.

    Attributes
    ----------
    grid : MapGrid
    dim : int
        Embedding dimensions.
    encoder : str
        Signature of the encoder that made the embeddings.
    year : int
    name : str
        What was opened (for messages).
    """

    grid: MapGrid
    dim: int
    encoder: str
    year: int
    name: str

    def read(
        self, r0: int, r1: int, c0: int, c1: int, row_chunks: tuple[int, ...],
        col_chunks: tuple[int, ...],
    ) -> tuple[da.Array, da.Array]:
        """Lazy ``embedding (rows, cols, dim)`` int8 and ``scale (rows, cols, 1)`` float32."""
        raise NotImplementedError

    def block_reader(self) -> BlockReader:
        """A small picklable reader of any rectangle of the grid, as numpy arrays.

        What a map's block task calls on a thread or a cluster's worker: it
        reads its own block with its halo, so no block data moves between
        tasks or workers.
        """
        raise NotImplementedError


class BlockReader:
    """Reads grid rows ``r0:r1``, cols ``c0:c1`` (also beyond the grid's edges) as numpy.

    ``reader(r0, r1, c0, c1)`` gives ``embedding (rows, cols, dim)`` int8 and
    ``scale (rows, cols)`` float32, NaN where there is no embedding.
    """

    def __call__(self, r0: int, r1: int, c0: int, c1: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class _StoreBlocks(BlockReader):
    """Blocks of a Zarr store read straight from its arrays, or of in-memory/dask arrays.

    Opened from a path, only the path and offsets are pickled; each process
    opens the store's arrays once. Otherwise the arrays themselves travel
    (scattered once per map on a cluster) and dask arrays are computed in
    the task, synchronously.
    """

    def __init__(self, path: str | None, arrays: tuple[Any, Any] | None, r_off: int, c_off: int,
                 ny: int, nx: int, dim: int) -> None:
        self.path, self._arrays = path, arrays
        self.r_off, self.c_off, self.ny, self.nx, self.dim = r_off, c_off, ny, nx, dim

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.path is not None:
            state["_arrays"] = None  # reopened where it is used
        return state

    def _open(self) -> tuple[Any, Any]:
        if self._arrays is None:
            import zarr

            g = zarr.open_group(self.path, mode="r")
            self._arrays = (g["embedding"], g["scale"])
        return self._arrays

    def __call__(self, r0, r1, c0, c1):
        emb_a, sc_a = self._open()
        R0, R1, C0, C1 = r0 + self.r_off, r1 + self.r_off, c0 + self.c_off, c1 + self.c_off
        a0, a1 = max(R0, 0), min(R1, self.ny)
        b0, b1 = max(C0, 0), min(C1, self.nx)
        emb = np.zeros((r1 - r0, c1 - c0, self.dim), np.int8)
        sc = np.full((r1 - r0, c1 - c0), np.nan, np.float32)
        if a0 < a1 and b0 < b1:
            e, s = emb_a[a0:a1, b0:b1], sc_a[a0:a1, b0:b1]
            if isinstance(e, da.Array):
                e, s = dask.compute(e, s, scheduler="synchronous")
            emb[a0 - R0:a1 - R0, b0 - C0:b1 - C0] = e
            sc[a0 - R0:a1 - R0, b0 - C0:b1 - C0] = s
        return emb, sc


class _TileBlocks(BlockReader):
    """Blocks of the map grid read from TESSERA tiles (:func:`_read_tiles_block`)."""

    def __init__(self, tiles: list, grid: MapGrid, dim: int, mask_water: bool) -> None:
        self.tiles, self.grid, self.dim, self.mask_water = tiles, grid, dim, mask_water

    def __call__(self, r0, r1, c0, c1):
        emb, sc = _read_tiles_block(self.tiles, self.grid, r0, r1, c0, c1, self.dim,
                                    self.mask_water)
        return emb, sc[..., 0]


class _ZarrSource(EmbeddingSource):
    """A window of one Zarr embedding store."""

    def __init__(self, ds: xr.Dataset, name: str, year: int, bbox: BBox | None,
                 bbox_crs: Any) -> None:
        for var in ("embedding", "scale"):
            if var not in ds:
                raise ValueError(f"embedding store {name} has no {var!r} array")
        emb = ds["embedding"]
        if emb.dims != ("y", "x", "dim"):
            emb = emb.transpose("y", "x", "dim")
        if ds["scale"].ndim != 2:
            raise ValueError(
                f"embedding store {name}: scale has dims {ds['scale'].dims}; maps need one scale "
                "per pixel (y, x)"
            )
        crs = ds.rio.crs
        if crs is None:
            raise ValueError(f"embedding store {name} has no CRS (spatial_ref); a map needs one")
        x, y = ds["x"].values.astype(float), ds["y"].values.astype(float)
        if len(x) < 2 or len(y) < 2:
            raise ValueError(f"embedding store {name} is smaller than 2 × 2 pixels")
        dx, dy = float(x[1] - x[0]), float(y[1] - y[0])
        if dx <= 0 or dy >= 0:
            raise ValueError(
                f"embedding store {name}: expected x increasing and y decreasing (north-up), "
                f"got steps dx={dx}, dy={dy}"
            )
        if not (np.allclose(np.diff(x), dx) and np.allclose(np.diff(y), dy)):
            raise ValueError(f"embedding store {name}: x/y are not a regular pixel grid")
        self.name, self.year = name, int(year)
        self.dim = int(emb.sizes["dim"])
        self.encoder = str(ds.attrs.get("encoder", "unknown"))
        self._emb = emb.data if isinstance(emb.data, da.Array) else da.from_array(emb.values)
        sc = ds["scale"].transpose("y", "x").data
        self._scale = sc if isinstance(sc, da.Array) else da.from_array(np.asarray(sc))
        self._ny, self._nx = len(y), len(x)
        self._path = _store_path(ds, emb, self._ny, self._nx, self.dim)
        crs = CRS.from_user_input(crs)
        if bbox is None:
            r0, r1, c0, c1 = 0, self._ny, 0, self._nx
        else:
            b = _transform_bbox(bbox, CRS.from_user_input(bbox_crs), crs) if bbox_crs else bbox
            cols = np.flatnonzero((x >= b[0]) & (x <= b[2]))
            rows = np.flatnonzero((y >= b[1]) & (y <= b[3]))
            if cols.size == 0 or rows.size == 0:
                xb = (x[0] - dx / 2, y[-1] + dy / 2, x[-1] + dx / 2, y[0] - dy / 2)
                raise ValueError(
                    f"bbox {tuple(bbox)} lies outside the embedding store {name}, whose extent "
                    f"is {tuple(round(v, 3) for v in xb)} in {crs.to_string()}"
                )
            r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            inside = (b[0] >= x[0] - dx / 2 and b[2] <= x[-1] + dx / 2
                      and b[3] <= y[0] - dy / 2 and b[1] >= y[-1] + dy / 2)
            if not inside:
                warnings.warn(
                    f"bbox {tuple(bbox)} reaches beyond the embedding store {name}; the map "
                    "covers the part inside it", UserWarning, stacklevel=3,
                )
        self._r0, self._c0 = r0, c0
        origin = Affine(dx, 0, x[c0] - dx / 2, 0, dy, y[r0] - dy / 2)
        self.grid = MapGrid(crs, origin, r1 - r0, c1 - c0)

    def read(self, r0, r1, c0, c1, row_chunks, col_chunks):
        # grid rows -> store rows, clipped; what lies beyond the store is padded
        R0, R1, C0, C1 = r0 + self._r0, r1 + self._r0, c0 + self._c0, c1 + self._c0
        a0, a1 = max(R0, 0), min(R1, self._ny)
        b0, b1 = max(C0, 0), min(C1, self._nx)
        emb = self._emb[a0:a1, b0:b1, :]
        sc = self._scale[a0:a1, b0:b1].astype(np.float32)
        pad = ((a0 - R0, R1 - a1), (b0 - C0, C1 - b1))
        if any(p for pair in pad for p in pair):
            emb = da.pad(emb, pad + ((0, 0),), mode="constant", constant_values=0)
            sc = da.pad(sc, pad, mode="constant", constant_values=np.nan)
        emb = emb.rechunk((row_chunks, col_chunks, self.dim))
        sc = sc.rechunk((row_chunks, col_chunks))[:, :, None]
        return emb, sc

    def block_reader(self) -> BlockReader:
        arrays = None if self._path else (self._emb, self._scale)
        return _StoreBlocks(self._path, arrays, self._r0, self._c0, self._ny, self._nx, self.dim)


def _store_path(ds: xr.Dataset, emb: xr.DataArray, ny: int, nx: int, dim: int) -> str | None:
    """The Zarr store ``ds`` was opened from, if its arrays are that store's, whole and (y, x, dim)."""
    src = ds.encoding.get("source")
    if not src or emb.dims != ds["embedding"].dims or ds["scale"].dims != ("y", "x"):
        return None
    for var in ("embedding", "scale"):  # as opened, not changed since (xarray names them so)
        data = ds[var].data
        if not (isinstance(data, da.Array) and data.name.startswith(f"open_dataset-{var}-")):
            return None
    try:
        import zarr

        g = zarr.open_group(str(src), mode="r")
        ok = (tuple(g["embedding"].shape) == (ny, nx, dim) and tuple(g["scale"].shape) == (ny, nx)
              and g["embedding"].dtype == np.int8)
    except (OSError, KeyError, ValueError, TypeError):  # not a Zarr group of ours
        return None
    return str(src) if ok else None


class _TesseraSource(EmbeddingSource):
    """TESSERA tiles around a lon/lat bounding box, resampled onto one UTM grid.

    The map grid lies in the UTM zone of the bbox centre, at 10 m, aligned to
    the pixel grid of the tile holding the bbox centre (or of the first tile
    in that zone), so that tile's pixels are used exactly. A map pixel is
    read from the first tile whose raster contains its centre: tiles of the
    map's grid first, then the others (nearest pixel, i.e. the one containing
    the centre). Pixels in no tile have no embedding. A bbox whose cells hold
    tiles of more than one UTM zone is refused with the longitude to split it
    at (:func:`_check_one_utm_zone`): a map lies in one zone.
    """

    def __init__(self, root: Path, year: int, bbox: BBox, bbox_crs: Any,
                 mask_water: bool) -> None:
        from fungi_ssl.data.coordinates import utm_epsg
        from fungi_ssl.embeddings import tessera

        self.name, self.year, self.mask_water = str(root), int(year), mask_water
        years = _tessera_years(root)
        if int(year) not in years:
            raise ValueError(
                f"the TESSERA tiles under {root} hold no year {year} (years present: "
                f"{years or 'none'})"
            )
        lonlat = CRS.from_epsg(4326)
        b = _transform_bbox(bbox, CRS.from_user_input(bbox_crs), lonlat) if bbox_crs else bbox
        if not (-180 <= b[0] <= 180 and -180 <= b[2] <= 180 and -90 <= b[1] <= 90 and -90 <= b[3] <= 90):
            raise ValueError(
                f"bbox {tuple(bbox)} is not in WGS84 longitude/latitude (TESSERA tiles take a "
                "lon/lat bbox unless bbox_crs says otherwise)"
            )
        # candidate cells: those the bbox touches, plus one ring (tiles overlap their neighbours)
        i0, j0 = math.floor(b[0] * 10) - 1, math.floor(b[1] * 10) - 1
        i1, j1 = math.floor(b[2] * 10) + 1, math.floor(b[3] * 10) + 1
        tiles = []
        for i in range(i0, i1 + 1):
            for j in range(j0, j1 + 1):
                lon, lat = i / 10 + 0.05, j / 10 + 0.05
                if not (-180 < lon < 180 and -90 < lat < 90):
                    continue
                paths = tessera.tile_paths(root, year, lon, lat)
                if paths.embedding.is_file():
                    tiles.append(tessera.read_tile(root, year, lon, lat))
        c_lon, c_lat = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        crs = CRS.from_epsg(utm_epsg(c_lon, c_lat))
        tr = Transformer.from_crs(lonlat, crs, always_xy=True)
        xb = tr.transform_bounds(*b, densify_pts=21)
        # keep tiles whose raster meets the bbox
        keep = []
        for t in tiles:
            tb = _tile_bounds_in(t, crs)
            if tb[0] < xb[2] and tb[2] > xb[0] and tb[1] < xb[3] and tb[3] > xb[1]:
                keep.append(t)
        if not keep:
            raise ValueError(
                f"bbox {tuple(bbox)} lies outside every TESSERA tile for {year} under {root}"
            )
        _check_one_utm_zone(keep, b, bbox, root, year)
        dims = {t.shape[2] for t in keep}
        if len(dims) > 1:
            raise ValueError(f"TESSERA tiles under {root} for {year} differ in dimensions {sorted(dims)}")
        self.dim = dims.pop()
        centre = tessera.tile_name(c_lon, c_lat)
        ref = next((t for t in keep if t.name == centre and CRS(t.crs) == crs), None)
        ref = ref or next((t for t in keep if CRS(t.crs) == crs), None)
        res = 10.0 if ref is None else float(ref.transform.a)
        ox = 0.0 if ref is None else float(ref.transform.c) % res
        oy = 0.0 if ref is None else float(ref.transform.f) % res
        x0 = math.floor((xb[0] - ox) / res) * res + ox
        y1 = math.ceil((xb[3] - oy) / res) * res + oy
        width = max(1, math.ceil((xb[2] - x0) / res))
        height = max(1, math.ceil((y1 - xb[1]) / res))
        self.grid = MapGrid(crs, Affine(res, 0, x0, 0, -res, y1), height, width)
        on_grid = [t for t in keep if _same_grid(t, crs, self.grid.transform)]
        self._tiles = on_grid + [t for t in keep if t not in on_grid]
        for t in self._tiles:
            sc = np.load(t.paths.scales, mmap_mode="r")
            if sc.ndim == 3 and sc.shape[2] != 1:
                raise ValueError(
                    f"TESSERA tile {t.name} has per-dimension scales {sc.shape}; maps need one "
                    "scale per pixel"
                )
        self.encoder = tessera.embeddings_signature(root)

    def read(self, r0, r1, c0, c1, row_chunks, col_chunks):
        rows, cols = [], []
        start = r0
        for n in row_chunks:
            rows.append((start, start + n))
            start += n
        start = c0
        for n in col_chunks:
            cols.append((start, start + n))
            start += n
        emb_blocks, sc_blocks = [], []
        reader = dask.delayed(_read_tiles_block, pure=True)
        for a, b in rows:
            erow, srow = [], []
            for c, d in cols:
                pair = reader(self._tiles, self.grid, a, b, c, d, self.dim, self.mask_water)
                erow.append(da.from_delayed(pair[0], (b - a, d - c, self.dim), np.int8))
                srow.append(da.from_delayed(pair[1], (b - a, d - c, 1), np.float32))
            emb_blocks.append(erow)
            sc_blocks.append(srow)
        def joined(blocks):
            return da.concatenate([da.concatenate(row, axis=1) for row in blocks], axis=0)

        return joined(emb_blocks), joined(sc_blocks)

    def block_reader(self) -> BlockReader:
        return _TileBlocks(self._tiles, self.grid, self.dim, self.mask_water)


def _utm_zone(crs: Any) -> str:
    """The zone number of a WGS84 UTM CRS, whichever hemisphere (``"31"``), else the CRS's name."""
    epsg = CRS(crs).to_epsg()
    if epsg is not None and (32601 <= epsg <= 32660 or 32701 <= epsg <= 32760):
        return str(epsg % 100)
    return CRS(crs).name


def _check_one_utm_zone(tiles: Sequence[Any], lonlat_bbox: BBox, bbox: Sequence[float],
                        root: Path, year: int) -> None:
    """Refuse a bbox whose 0.1° cells hold tiles of more than one UTM zone, saying where to split.

    A map is one raster in one CRS: tiles of another zone would be resampled onto it
    (nearest pixel), so the pixels near the zone edge would not be TESSERA's own. The
    hemisphere does not count (32631 and 32731 share a grid up to a false northing).
    """
    from fungi_ssl.data.coordinates import utm_zone_edges

    w, s, e, n = lonlat_bbox
    inside = [t for t in tiles
              if t.bounds[0] < e and t.bounds[2] > w and t.bounds[1] < n and t.bounds[3] > s]
    zones = sorted({_utm_zone(t.crs) for t in inside}, key=lambda z: (len(z), z))
    if len(zones) <= 1:
        return
    edges = utm_zone_edges(w, e) or [round((w + e) / 2, 4)]
    cuts = [w, *edges, e]
    parts = "; ".join(f"{a:g} {s:g} {b:g} {n:g}" for a, b in itertools.pairwise(cuts))
    raise ValueError(
        f"bbox {tuple(bbox)} takes TESSERA tiles for {year} under {root} from UTM zones "
        f"{', '.join(zones)}, and a map lies in one zone's grid; split the box at longitude "
        f"{', '.join(f'{x:g}' for x in edges)} and map each part on its own "
        f"(west south east north: {parts})"
    )


def _tessera_years(root: Path) -> list[int]:
    from fungi_ssl.embeddings.tessera import EMBEDDINGS_DIR_NAME

    base = root / EMBEDDINGS_DIR_NAME
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.is_dir() and re.fullmatch(r"\d{4}", p.name))


def _tile_bounds_in(t, crs: CRS) -> tuple[float, float, float, float]:
    h, w = t.shape[:2]
    tt = t.transform
    b = (tt.c, tt.f + h * tt.e, tt.c + w * tt.a, tt.f)
    return _transform_bbox(b, CRS(t.crs), crs)


def _same_grid(t, crs: CRS, transform: Affine) -> bool:
    if CRS(t.crs) != crs or t.transform.a != transform.a or t.transform.e != transform.e:
        return False
    dx = (t.transform.c - transform.c) / transform.a
    dy = (t.transform.f - transform.f) / transform.e
    return abs(dx - round(dx)) < 1e-6 and abs(dy - round(dy)) < 1e-6


def _read_tiles_block(tiles, grid: MapGrid, r0, r1, c0, c1, dim, mask_water):
    """int8 embeddings and float32 scales of grid rows r0:r1, cols c0:c1 from the tiles."""
    import rasterio

    h, w = r1 - r0, c1 - c0
    emb = np.zeros((h, w, dim), np.int8)
    scale = np.full((h, w, 1), np.nan, np.float32)
    filled = np.zeros((h, w), bool)
    t = grid.transform
    xs = t.c + (np.arange(c0, c1) + 0.5) * t.a
    ys = t.f + (np.arange(r0, r1) + 0.5) * t.e
    for tile in tiles:
        if filled.all():
            break
        tt = tile.transform
        th, tw = tile.shape[:2]
        if _same_grid(tile, grid.crs, t):
            # an integer offset: a rectangle of the tile
            dr = round((t.f - tt.f) / tt.e) + r0
            dc = round((t.c - tt.c) / tt.a) + c0
            a0, a1 = max(dr, 0), min(dr + h, th)
            b0, b1 = max(dc, 0), min(dc + w, tw)
            if a0 >= a1 or b0 >= b1:
                continue
            e_mm = np.load(tile.paths.embedding, mmap_mode="r")
            s_mm = np.load(tile.paths.scales, mmap_mode="r")
            sub = (slice(a0 - dr, a1 - dr), slice(b0 - dc, b1 - dc))
            todo = ~filled[sub]
            if not todo.any():
                continue
            e = np.asarray(e_mm[a0:a1, b0:b1])
            s = np.asarray(s_mm[a0:a1, b0:b1], dtype=np.float32).reshape(a1 - a0, b1 - b0)
            if mask_water:
                with rasterio.open(tile.paths.landmask) as src:
                    land = src.read(1, window=((a0, a1), (b0, b1))) != 0
                s = np.where(land, s, np.nan)
            emb[sub][todo] = e[todo]
            scale[sub][..., 0][todo] = s[todo]
            filled[sub] |= todo
            continue
        gx, gy = np.meshgrid(xs, ys)
        if CRS(tile.crs) != grid.crs:
            tr = Transformer.from_crs(grid.crs, tile.crs, always_xy=True)
            gx, gy = tr.transform(gx, gy)
        col = np.floor((gx - tt.c) / tt.a).astype(np.int64)
        row = np.floor((gy - tt.f) / tt.e).astype(np.int64)
        inside = (~filled) & (row >= 0) & (row < th) & (col >= 0) & (col < tw)
        if not inside.any():
            continue
        e_mm = np.load(tile.paths.embedding, mmap_mode="r")
        s_mm = np.load(tile.paths.scales, mmap_mode="r")
        rr, cc = row[inside], col[inside]
        s = np.asarray(s_mm[rr, cc], dtype=np.float32).reshape(-1)
        if mask_water:
            with rasterio.open(tile.paths.landmask) as src:
                land = src.read(1) != 0
            s = np.where(land[rr, cc], s, np.nan)
        emb[inside] = np.asarray(e_mm[rr, cc])
        scale[..., 0][inside] = s
        filled |= inside
    bad = ~np.isfinite(scale)
    scale[bad] = np.nan
    return emb, scale


def write_embedding_store(
    path: str | Path,
    embedding: np.ndarray | da.Array,
    scale: np.ndarray | da.Array,
    *,
    transform: Affine,
    crs: Any,
    encoder: str,
    year: int | None = None,
    chunk: int = DEFAULT_CHUNK,
    overwrite: bool = False,
) -> Path:
    """Write int8 embeddings and scales as a Zarr store in :mod:`fungi_ssl.embeddings.embed`'s layout.

    For embeddings made elsewhere (and for tests and benchmarks): the store
    opens with :func:`fungi_ssl.embeddings.embed.open_embeddings` and maps with
    :func:`predict_map`. Dask inputs are written chunk by chunk.

    Parameters
    ----------
    path : path
        The store to create.
    embedding : array
        ``(y, x, dim)`` int8.
    scale : array
        ``(y, x)`` float32; non-finite where there is no embedding.
    transform : affine.Affine
        North-up pixel-corner transform.
    crs : CRS
        Anything pyproj accepts.
    encoder : str
        Signature of the encoder (:func:`fungi_ssl.maps.mapmodel.encoder_signature`).
    year : int, optional
        The year the embeddings are of (recorded as the ``year`` attribute).
    chunk : int
        Zarr chunk side.
    overwrite : bool

    Examples
    --------
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> p = write_embedding_store(os.path.join(d, "2020.zarr"), np.ones((3, 4, 8), np.int8),
    ...                           np.full((3, 4), 0.5, np.float32),
    ...                           transform=Affine(10, 0, 500_000, 0, -10, 6_000_000),
    ...                           crs=32630, encoder="demo", year=2020)
    >>> from fungi_ssl.embeddings.embed import open_embeddings
    >>> ds = open_embeddings(p)
    >>> ds["embedding"].shape, ds.attrs["year"], ds.rio.crs.to_epsg(), float(ds.x[0])
    ((3, 4, 8), 2020, 32630, 500005.0)
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"write_embedding_store: {path} exists; pass overwrite=True")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"write_embedding_store: folder {path.parent} does not exist")
    emb = embedding if isinstance(embedding, da.Array) else da.from_array(np.asarray(embedding))
    sc = scale if isinstance(scale, da.Array) else da.from_array(np.asarray(scale))
    if emb.ndim != 3 or emb.dtype != np.int8:
        raise ValueError(f"write_embedding_store: embedding must be int8 (y, x, dim), got {emb.dtype} {emb.shape}")
    ny, nx, dim = emb.shape
    if sc.shape != (ny, nx):
        raise ValueError(f"write_embedding_store: scale has shape {sc.shape}, expected {(ny, nx)}")
    emb = emb.rechunk((chunk, chunk, dim))
    sc = sc.astype(np.float32).rechunk((chunk, chunk))
    n_cy, n_cx = -(-ny // chunk), -(-nx // chunk)
    nan_per_chunk = da.map_blocks(
        lambda b: np.array([[int((~np.isfinite(b)).sum())]], np.int64), sc, chunks=(1, 1),
        dtype=np.int64,
    ).compute()
    t = Affine(*tuple(transform)[:6])
    grid = MapGrid(CRS.from_user_input(crs), t, ny, nx)
    attrs = {"encoder": str(encoder), "chunk": int(chunk), "shape": f"[{ny}, {nx}, {dim}]",
             "description": "TESSERA-style int8 embeddings; value = embedding * scale"}
    if year is not None:
        attrs["year"] = int(year)
    ds = xr.Dataset(
        {
            "embedding": (("y", "x", "dim"), emb),
            "scale": (("y", "x"), sc),
            "chunk_done": (("chunk_y", "chunk_x"), np.ones((n_cy, n_cx), np.uint8)),
            "chunk_nan": (("chunk_y", "chunk_x"), nan_per_chunk.reshape(n_cy, n_cx)),
        },
        coords={"y": grid.y, "x": grid.x, "dim": np.arange(dim)},
        attrs=attrs,
    )
    ds = ds.rio.write_crs(grid.crs.to_wkt()).rio.write_transform(t)
    ds.to_zarr(path, mode="w", consolidated=False)
    return path


def _open_zarr_store(path: Path) -> xr.Dataset:
    """:func:`fungi_ssl.embeddings.embed.open_embeddings` without importing the encoder (torch)."""
    ds = xr.open_zarr(path, consolidated=False, decode_coords="all")
    if "embedding" not in ds or "scale" not in ds:
        raise ValueError(f"{path} is not an embedding store: it has no 'embedding'/'scale' arrays")
    if "chunk_done" in ds and not bool(ds["chunk_done"].values.all()):
        done = ds["chunk_done"].values
        warnings.warn(
            f"embedding store {path} is incomplete: {int((done == 0).sum())} of {done.size} "
            "windows were never embedded, so their pixels have no embedding (NaN in the map); "
            "fungi_ssl.embeddings.embed.embed_cube resumes it", UserWarning, stacklevel=4,
        )
    return ds


def _is_zarr_store(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in ("zarr.json", ".zgroup", ".zattrs"))


def _store_year(ds: xr.Dataset, name: str) -> int | None:
    y = ds.attrs.get("year")
    return None if y is None else int(y)


def open_embedding_source(
    source: str | Path | xr.Dataset | Mapping[int, str | Path | xr.Dataset],
    year: int,
    bbox: Sequence[float] | None = None,
    *,
    bbox_crs: Any = None,
    mask_water: bool = False,
) -> EmbeddingSource:
    """Open the embeddings of one year over a bounding box.

    Parameters
    ----------
    source : path, Dataset or mapping
        * a Zarr embedding store (path or :func:`fungi_ssl.embeddings.embed.open_embeddings`
          Dataset) whose ``year`` attribute names its year;
        * a mapping ``{year: store}`` (use this for stores that record no year);
        * a folder of stores named ``<year>.zarr``;
        * a geotessera download folder (holding ``global_0.1_degree_representation/``).
    year : int
    bbox : (xmin, ymin, xmax, ymax), optional
        Pixels whose centres lie inside (inclusive). For stores, in the
        store's CRS unless ``bbox_crs`` is given; default the whole store.
        For TESSERA tiles, required, in WGS84 longitude/latitude unless
        ``bbox_crs`` is given.
    bbox_crs : CRS, optional
        CRS of ``bbox`` (anything pyproj accepts, e.g. ``"EPSG:4326"``).
    mask_water : bool
        TESSERA only: treat landmask water as no embedding.

    Returns
    -------
    EmbeddingSource

    Raises
    ------
    FileNotFoundError
        A path that does not exist.
    ValueError
        A year the source does not hold; a bbox with min ≥ max or outside
        every store or tile; a store without CRS or year.
    """
    year = int(year)
    if bbox is not None:
        bbox = _check_bbox(bbox, "open_embedding_source")
    if isinstance(source, xr.Dataset):
        held = _store_year(source, "the Dataset")
        if held is None:
            raise ValueError(
                "the embedding Dataset records no year (attribute 'year'); pass {year: dataset} "
                "to say which year it holds"
            )
        if held != year:
            raise ValueError(f"the embedding Dataset holds year {held}, not {year}")
        return _ZarrSource(source, source.encoding.get("source", "Dataset"), year, bbox, bbox_crs)
    if isinstance(source, Mapping):
        years = sorted(int(k) for k in source)
        if year not in years:
            raise ValueError(f"year {year} is not among the embedding stores given (years {years})")
        return open_embedding_source(_as_year_store(source[year], year), year, bbox,
                                     bbox_crs=bbox_crs, mask_water=mask_water)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"no embedding store or TESSERA folder at {path}")
    from fungi_ssl.embeddings.tessera import EMBEDDINGS_DIR_NAME

    if (path / EMBEDDINGS_DIR_NAME).is_dir():
        if bbox is None:
            raise ValueError("a bbox is required to map TESSERA tiles (lon/lat by default)")
        return _TesseraSource(path, year, bbox, bbox_crs, mask_water)
    if _is_zarr_store(path):
        ds = _open_zarr_store(path)
        held = _store_year(ds, str(path))
        if held is None:
            raise ValueError(
                f"embedding store {path} records no year (attribute 'year'); pass "
                "{year: store} to say which year it holds"
            )
        if held != year:
            raise ValueError(f"embedding store {path} holds year {held}, not {year}")
        return _ZarrSource(ds, str(path), year, bbox, bbox_crs)
    if path.is_dir():
        stores = {int(p.stem): p for p in path.glob("*.zarr") if re.fullmatch(r"\d{4}", p.stem)}
        if stores:
            if year not in stores:
                raise ValueError(
                    f"the folder {path} holds no embedding store for year {year} "
                    f"(years {sorted(stores)})"
                )
            return _ZarrSource(_open_zarr_store(stores[year]), str(stores[year]), year, bbox,
                               bbox_crs)
    raise ValueError(
        f"{path} is neither a Zarr embedding store, a folder of <year>.zarr stores, nor a "
        "geotessera download folder"
    )


def _as_year_store(store, year: int):
    if isinstance(store, xr.Dataset):
        ds = store.copy()
    else:
        path = Path(store)
        if not path.exists():
            raise FileNotFoundError(f"no embedding store at {path} (given for year {year})")
        ds = _open_zarr_store(path)
        ds.encoding["source"] = str(path)
    held = _store_year(ds, "")
    if held is not None and held != year:
        raise ValueError(f"the embedding store given for year {year} records year {held}")
    ds.attrs["year"] = year
    return ds


# --------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------
_MMAP_THRESHOLD_FIXED = False


def _fix_mmap_threshold() -> None:
    """Make glibc return large freed arrays to the system (Linux; once per process).

    glibc raises its mmap threshold each time a large block is freed, after
    which blocks of that size come from per-thread heaps that keep what they
    once held; the resident memory of a map run then crept up with the number
    of windows (1, 4 and 16 windows of 512² pixels peaked 264, 342 and 363 MB
    above the process baseline). Fixing the threshold at 1 MiB (``mallopt``,
    as ``MALLOC_MMAP_THRESHOLD_=1048576`` would) gave 190, 213 and 215 MB.
    An explicit ``MALLOC_MMAP_THRESHOLD_`` in the environment is left alone.
    """
    global _MMAP_THRESHOLD_FIXED
    if _MMAP_THRESHOLD_FIXED:
        return
    _MMAP_THRESHOLD_FIXED = True
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        pass


def _map_block(reader: BlockReader, model: MapModel, r0: int, r1: int, c0: int, c1: int,
               halo: int, quantity: str, covariates: Any = None
               ) -> tuple[np.ndarray, int, float, float]:
    """Map grid rows r0:r1, cols c0:c1: read them with their halo, predict them.

    ``covariates`` (a :class:`fungi_ssl.data.covariate_stack.CovariateReader`)
    gives the product model its 1 km covariates of the block's pixels.
    Returns the block's map, its count of pixels without an embedding, and
    the CPU seconds this thread spent reading and predicting.
    """
    _fix_mmap_threshold()  # on a cluster's workers too
    t0 = time.thread_time()
    emb, sc = reader(r0 - halo, r1 + halo, c0 - halo, c1 + halo)
    cov = None if covariates is None else covariates(r0, r1, c0, c1)
    t1 = time.thread_time()
    n_missing = int((~np.isfinite(sc[halo : halo + r1 - r0, halo : halo + c1 - c0])).sum())
    values = model.predict_window(emb, sc, output=quantity, num_threads=1, covariates=cov)
    return values, n_missing, t1 - t0, time.thread_time() - t1


def _blocks(r0: int, r1: int, c0: int, c1: int, chunk: int) -> list[tuple[int, int, int, int]]:
    """The ``chunk × chunk`` blocks of a window, row by row (the last ones smaller)."""
    return [(a, min(a + chunk, r1), b, min(b + chunk, c1))
            for a in range(r0, r1, chunk) for b in range(c0, c1, chunk)]


class _Done:
    """The result of a task run when it was submitted (``scheduler="synchronous"``)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self) -> Any:
        return self.value

    def cancel(self) -> bool:
        return False


@dataclass
class _Pool:
    """Where block tasks run: ``submit(fn, *args)`` gives a future; ``share`` ships an object once."""

    submit: Any
    share: Any
    threads: int


@contextmanager
def _scheduler(scheduler: Any, num_workers: int) -> Iterator[_Pool]:
    """Threads of this process by default, or the workers of an existing distributed cluster."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    if scheduler is None:
        scheduler = os.environ.get(SCHEDULER_ENV) or "threads"
    if scheduler in ("synchronous", "sync"):
        with threadpool_limits(1):
            yield _Pool(lambda fn, *args: _Done(fn(*args)), lambda obj: obj, 1)
        return
    if scheduler == "threads":
        # blocks run in parallel, each one single-threaded
        with threadpool_limits(1), ThreadPoolExecutor(max(1, int(num_workers)),
                                                      thread_name_prefix="fungi-map") as pool:
            yield _Pool(pool.submit, lambda obj: obj, max(1, int(num_workers)))
        return
    try:
        import distributed
    except ImportError as err:  # pragma: no cover - distributed is a dependency
        raise ImportError("a scheduler address needs dask.distributed: pip install distributed") from err
    if not isinstance(scheduler, distributed.Client) and (
            not isinstance(scheduler, str) or "://" not in scheduler):
        raise ValueError(
            f"scheduler must be 'threads', a distributed Client or an address like "
            f"'tcp://host:8786' (or set {SCHEDULER_ENV}), got {scheduler!r}"
        )

    def pool_of(client) -> _Pool:
        # the model and the readers go to every worker once, not with every task
        return _Pool(lambda fn, *args: client.submit(fn, *args, pure=False),
                     lambda obj: client.scatter(obj, broadcast=True, hash=False),
                     max(1, sum(client.nthreads().values())))

    if isinstance(scheduler, distributed.Client):
        yield pool_of(scheduler)
        return
    # results come straight from the workers, not through the scheduler (half the bytes)
    with threadpool_limits(1), distributed.Client(scheduler, set_as_default=False,
                                                  direct_to_workers=True) as client:
        yield pool_of(client)


def _run_windows(jobs: list, pool: _Pool, model_ref: Any, readers: list, chunk: int, halo: int,
                 quantity: str, seconds: dict[str, float], covariates: Any = None) -> Iterator:
    """Compute the windows in order, yielding ``(job, (map, n_no_embedding))``.

    Every block is one task that reads its own rectangle with its halo and
    predicts it, so only the model and the readers (once) and the block's
    map (4 bytes per pixel) travel. Blocks of the next window are submitted
    before the current one is handed back, so the threads or workers keep
    computing while the caller writes: the oldest window is waited for once
    at least two blocks per thread are queued behind it (two windows on
    this machine; more on a large cluster), and only maps are held. ``seconds`` collects the tasks' CPU time of
    reading and predicting.
    """
    from collections import deque

    pending: deque = deque()
    n_pending = 0
    enough = 2 * pool.threads  # blocks queued behind the oldest window keep every thread busy

    def collect():
        nonlocal n_pending
        job, blocks, futures = pending.popleft()
        n_pending -= len(futures)
        _, (r0, r1, c0, c1) = job
        values = np.empty((r1 - r0, c1 - c0), np.float32)
        n_missing = 0
        for (a0, a1, b0, b1), fut in zip(blocks, futures):
            v, nm, t_read, t_pred = fut.result()
            values[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] = v
            n_missing += nm
            seconds["read_cpu_s"] += t_read
            seconds["predict_cpu_s"] += t_pred
        return job, (values, n_missing)

    try:
        for job in jobs:
            yi, (r0, r1, c0, c1) = job
            blocks = _blocks(r0, r1, c0, c1, chunk)
            futures = [pool.submit(_map_block, readers[yi], model_ref, *b, halo, quantity,
                                   covariates) for b in blocks]
            pending.append((job, blocks, futures))
            n_pending += len(futures)
            while len(pending) > 1 and n_pending - len(pending[0][2]) >= enough:
                yield collect()
        while pending:
            yield collect()
    finally:
        for _, _, futures in pending:
            for fut in futures:
                fut.cancel()


@dataclass
class MapRun:
    """What :func:`predict_map` made.

    Attributes
    ----------
    map : xarray.DataArray
        ``(y, x)`` for one year or ``(year, y, x)`` for a stack, with CRS:
        in memory when no output was asked for, else opened lazily from it.
    path : pathlib.Path or None
        The output written.
    grid : MapGrid
    years : list of int
    n_pixels : int
        Pixels mapped (all years).
    n_nan : int
        NaN pixels in the map (all years).
    n_no_embedding : int
        Of those, pixels with no embedding of their own (the rest had an
        incomplete patch).
    seconds : float
        Wall time of prediction and writing.
    pixels_per_second : float
        ``n_pixels / seconds``.
    """

    map: xr.DataArray
    path: Path | None
    grid: MapGrid
    years: list[int]
    n_pixels: int
    n_nan: int
    n_no_embedding: int
    seconds: float
    pixels_per_second: float
    details: dict[str, Any] = field(default_factory=dict)


def _output_kind(output: Path) -> str:
    suffix = output.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return "cog"
    if suffix == ".zarr":
        return "zarr"
    raise ValueError(
        f"output {output}: expected a .tif/.tiff (Cloud-Optimised GeoTIFF) or a .zarr path"
    )


#: Share of NaN pixels above which ``predict_map`` warns (1%).
NAN_WARN_SHARE = 0.01
#: Attributes every Zarr map store this package writes carries (``predict_map``).
ZARR_MAP_ATTRS = ("quantity", "units", "model_fingerprint")


def _zarr_attributes(store: Path) -> dict[str, Any] | None:
    """The root attributes of a Zarr store (format 2 or 3) read from its files; None if not one."""
    import json

    try:
        if (store / "zarr.json").is_file():
            meta = json.loads((store / "zarr.json").read_text())
            return dict(meta.get("attributes", {})) if meta.get("node_type") == "group" else None
        if (store / ".zgroup").is_file():
            attrs = store / ".zattrs"
            return json.loads(attrs.read_text()) if attrs.is_file() else {}
    except (OSError, ValueError, AttributeError):
        return None
    return None


def check_replaceable(out: str | Path, kind: str | None = None) -> None:
    """Refuse to replace anything but a map this package wrote.

    ``overwrite`` replaces a regular ``.tif``/``.tiff`` file, or a ``.zarr``
    folder that is a Zarr group carrying this package's map attributes
    (:data:`ZARR_MAP_ATTRS`). Anything else (an ordinary folder, a link, a
    store of another tool) is refused, and nothing is deleted.

    Raises
    ------
    FileExistsError
        Naming the output and what it is.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp()) / "x.zarr"
    >>> folder.mkdir()
    >>> check_replaceable(folder)
    Traceback (most recent call last):
    ...
    FileExistsError: output ...x.zarr is a folder that is not a map written by fungi-ssl (no Zarr map metadata); it is left as it is: remove it yourself or choose another output
    """
    out = Path(out)
    kind = kind or _output_kind(out)
    if out.is_symlink():
        raise FileExistsError(
            f"output {out} is a link; it is left as it is: remove it yourself or choose "
            "another output")
    if kind == "cog":
        if not out.is_file():
            raise FileExistsError(
                f"output {out} is a folder, not a GeoTIFF file; it is left as it is: remove it "
                "yourself or choose another output")
        return
    if not out.is_dir():
        raise FileExistsError(
            f"output {out} is a file, not a Zarr store; it is left as it is: remove it yourself "
            "or choose another output")
    attrs = _zarr_attributes(out)
    if attrs is None or not all(k in attrs for k in ZARR_MAP_ATTRS):
        raise FileExistsError(
            f"output {out} is a folder that is not a map written by fungi-ssl (no Zarr map "
            "metadata); it is left as it is: remove it yourself or choose another output")


def _check_output(output: str | Path | None, overwrite: bool, n_years: int) -> tuple[Path | None, str | None]:
    if output is None:
        return None, None
    out = Path(output)
    kind = _output_kind(out)
    if not out.parent.is_dir():
        raise FileNotFoundError(f"output folder {out.parent} does not exist (for {out.name})")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise FileExistsError(f"output {out} exists; pass overwrite=True to replace it")
    if out.exists() or out.is_symlink():
        check_replaceable(out, kind)
    if kind == "cog" and n_years != 1:
        raise ValueError(
            f"output {out}: a GeoTIFF holds one year, {n_years} were asked for; "
            "write a .zarr store for a stack of years"
        )
    return out, kind


def predict_map(
    model: MapModel | str | Path,
    source: Any,
    year: int | Sequence[int],
    bbox: Sequence[float] | None = None,
    *,
    output: str | Path | None = None,
    overwrite: bool = False,
    quantity: Quantity = "richness",
    bbox_crs: Any = None,
    patch_size: int = PATCH_SIZE,
    chunk: int = DEFAULT_CHUNK,
    window: int = DEFAULT_WINDOW,
    scheduler: Any = None,
    num_workers: int = 2,
    mask_water: bool = False,
    cog_blocksize: int = 512,
    progress: bool = True,
    covariates: Any = None,
) -> MapRun:
    """Predict a 10 m map over a bounding box from stored embeddings.

    Every input is checked before anything is computed or written: the
    model against the embeddings (dimension, encoder, patch size), the years,
    the bbox and the output path.

    Parameters
    ----------
    model : MapModel or path
        A fitted model, or a file saved by :meth:`MapModel.save`.
    source : path, Dataset or mapping
        See :func:`open_embedding_source`.
    year : int or sequence of int
        One year (a ``(y, x)`` map) or several (a ``(year, y, x)`` stack on
        one grid; needs a ``.zarr`` output or none).
    bbox : (xmin, ymin, xmax, ymax), optional
        See :func:`open_embedding_source`.
    output : path, optional
        ``.tif``/``.tiff`` for a COG, ``.zarr`` for a Zarr store; None keeps
        the map in memory (small regions only).
    overwrite : bool
        Replace an existing output.
    quantity : {"richness", "log_richness"}
        Rarefied richness, or the model's log1p scale.
    bbox_crs : CRS, optional
    patch_size : int
        The patch the map is made with (the study's 3 × 3); a model fitted on
        another patch size is refused.
    chunk, window : int
        Dask block side and window side in pixels (``window`` is rounded up
        to a multiple of ``chunk``; both multiples of 16).
    scheduler : str or distributed.Client, optional
        ``None`` (the ``FUNGI_SSL_DASK_SCHEDULER`` address if set, else
        threads), ``"threads"``, ``"synchronous"``, a scheduler address
        ``"tcp://host:8786"`` or a ``distributed.Client``.
    num_workers : int
        Threads of the threaded scheduler.
    mask_water : bool
        TESSERA tiles: water pixels have no embedding.
    cog_blocksize : int
        Tile side of the COG (its overviews stop below one tile).
    progress : bool
        A tqdm bar over windows.
    covariates : path or CovariateStack, optional
        The 1 km covariates of a product model (a model fitted with
        covariates, :attr:`MapModel.covariate_columns`): a GeoTIFF or Zarr
        stack (:func:`fungi_ssl.data.covariate_stack.open_covariate_stack`). Each
        pixel gets the values of the 1 km cell holding its centre, as
        chapter 06 maps the product model. Required by such a model, refused
        by the ``ssl``-only one.

    Returns
    -------
    MapRun

    Raises
    ------
    ValueError
        Embeddings whose dimension or encoder differ from the model's; a
        model fitted for another patch size; a bbox with min ≥ max or outside
        every store or tile; a year the source does not hold; a COG asked for
        several years; a product model without covariates, or a stack that
        lacks one of its bands, is in a CRS that cannot be transformed or
        does not cover the map.
    FileNotFoundError
        A missing source, model file or output folder.
    FileExistsError
        An existing output without ``overwrite``.

    Examples
    --------
    >>> import tempfile, zarr
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(300, 3 * 3 * 8)).astype(np.float32)
    >>> m = MapModel("ridge", n_components=2).fit(X, np.expm1(3 + X[:, 4 * 8] / 2),
    ...                                           encoder="demo", embedding_dim=8)
    >>> ds = xr.Dataset(
    ...     {"embedding": (("y", "x", "dim"), rng.integers(-127, 128, (40, 50, 8)).astype(np.int8)),
    ...      "scale": (("y", "x"), np.full((40, 50), 0.01, np.float32))},
    ...     coords={"y": 6e6 - 10 * np.arange(40) - 5, "x": 5e5 + 10 * np.arange(50) + 5},
    ...     attrs={"encoder": "demo", "year": 2020}).rio.write_crs(32630)
    >>> run = predict_map(m, ds, 2020, chunk=16, window=32, progress=False)
    >>> run.map.shape, run.n_pixels, run.n_nan    # the outer ring has no full patch
    ((40, 50), 2000, 176)
    """
    years = [int(year)] if isinstance(year, (int, np.integer)) else [int(y) for y in year]
    if not years:
        raise ValueError("year: give one year or a non-empty list of years")
    if len(set(years)) != len(years):
        raise ValueError(f"year: {years} repeats a year")
    if quantity not in ("richness", "log_richness"):
        raise ValueError(f"quantity must be 'richness' or 'log_richness', got {quantity!r}")
    for name, v in (("chunk", chunk), ("window", window)):
        if int(v) < 16 or int(v) % 16:
            raise ValueError(f"{name} must be a multiple of 16 pixels (≥ 16), got {v}")
    chunk = int(chunk)
    window = int(math.ceil(int(window) / chunk) * chunk)
    if not isinstance(model, MapModel):
        model = MapModel.load(model)
    model._check_fitted()
    if int(patch_size) < 1 or int(patch_size) % 2 == 0:
        raise ValueError(f"patch_size must be a positive odd integer, got {patch_size}")
    _check_covariates_given(model, covariates)
    out_path, kind = _check_output(output, overwrite, len(years))
    sources = [
        open_embedding_source(source, y, bbox, bbox_crs=bbox_crs, mask_water=mask_water)
        for y in years
    ]
    for s in sources:
        model.check_embeddings(embedding_dim=s.dim, encoder=s.encoder, patch_size=int(patch_size),
                               where=f"embeddings of {s.name} ({s.year})")
    grid = sources[0].grid
    for s in sources[1:]:
        if s.grid != grid:
            raise ValueError(
                f"the embeddings of {s.year} ({s.name}) lie on another grid than those of "
                f"{years[0]}; a stack of years needs one grid"
            )

    cov_reader = None
    if model.covariate_columns:
        from fungi_ssl.data.covariate_stack import CovariateStack, open_covariate_stack

        stack = (covariates if isinstance(covariates, CovariateStack)
                 else open_covariate_stack(covariates))
        cov_reader = stack.grid_reader(grid, model.covariate_columns)

    _fix_mmap_threshold()
    halo = int(patch_size) // 2
    windows = [
        (r, min(r + window, grid.height), c, min(c + window, grid.width))
        for r in range(0, grid.height, window)
        for c in range(0, grid.width, window)
    ]
    t0 = time.perf_counter()
    writer = _make_writer(kind, out_path, grid, years, quantity, model, cog_blocksize, chunk)
    n_nan = n_no = 0
    memory = None if writer is not None else np.full((len(years), grid.height, grid.width),
                                                     np.nan, np.float32)
    timing = dict.fromkeys(("read_cpu_s", "predict_cpu_s", "write_s", "finish_s"), 0.0)
    try:
        with _scheduler(scheduler, num_workers) as pool:
            model_ref = pool.share(model)
            readers = [pool.share(s.block_reader()) for s in sources]
            cov_ref = None if cov_reader is None else pool.share(cov_reader)
            jobs = [(yi, w) for yi in range(len(sources)) for w in windows]
            with tqdm(total=len(jobs), desc="map windows", unit="window",
                      disable=not progress) as bar:
                for (yi, (r0, r1, c0, c1)), (values, n_missing) in _run_windows(
                    jobs, pool, model_ref, readers, chunk, halo, quantity, timing, cov_ref
                ):
                    tw = time.perf_counter()
                    n_nan += int(np.isnan(values).sum())
                    n_no += int(n_missing)
                    if writer is None:
                        memory[yi, r0:r1, c0:c1] = values
                    else:
                        writer.write(yi, r0, r1, c0, c1, values)
                    timing["write_s"] += time.perf_counter() - tw
                    bar.update(1)
        if writer is not None:
            tw = time.perf_counter()
            writer.finish(overwrite, {"n_nan": n_nan, "n_no_embedding": n_no})
            timing["finish_s"] = time.perf_counter() - tw
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    seconds = time.perf_counter() - t0
    n_pixels = grid.n_pixels * len(years)
    attrs = {
        "quantity": quantity,
        "units": map_units(model, quantity),
        "guild": model.settings.get("guild", DEFAULT_GUILD),
        "model_fingerprint": model.fingerprint,
        "encoder": model.spec.encoder,
        "n_nan": n_nan,
        "n_no_embedding": n_no,
        **_model_attrs(model),
    }
    if n_pixels and n_nan > NAN_WARN_SHARE * n_pixels:
        warnings.warn(
            f"{n_nan:,} of {n_pixels:,} map pixels ({n_nan / n_pixels:.1%}) have no prediction: "
            f"{n_no:,} lie outside the embedding tiles or have no embedding there, and "
            f"{max(n_nan - n_no, 0):,} lack a full {patch_size} × {patch_size} patch (beside "
            "them, or at the tiles' edge)", UserWarning, stacklevel=2)
    if writer is None:
        arr = memory[0] if isinstance(year, (int, np.integer)) else memory
        the_map = _as_dataarray(arr, grid, None if isinstance(year, (int, np.integer)) else years,
                                quantity, attrs)
    else:
        the_map = open_map(out_path)
    return MapRun(
        map=the_map, path=out_path, grid=grid, years=years, n_pixels=n_pixels, n_nan=n_nan,
        n_no_embedding=n_no, seconds=seconds,
        pixels_per_second=n_pixels / seconds if seconds > 0 else float("inf"),
        details={"chunk": chunk, "window": window, "n_windows": len(windows),
                 "scheduler": str(scheduler or os.environ.get(SCHEDULER_ENV) or "threads"),
                 "seconds": timing},
    )


def _check_covariates_given(model: MapModel, covariates: Any) -> None:
    """A product model needs its covariates; the ``ssl``-only model takes none."""
    cols = list(model.covariate_columns)
    if cols and covariates is None:
        raise ValueError(
            f"the map model was fitted with 1 km covariates; pass covariates= a stack with the "
            f"bands {', '.join(cols)}"
        )
    if not cols and covariates is not None:
        raise ValueError(
            "the map model was fitted without 1 km covariates (the ssl-only model), so a "
            "covariate stack would not be used; refit it with covariates, or leave them out"
        )


def _as_dataarray(values: np.ndarray, grid: MapGrid, years: list[int] | None, name: str,
                  attrs: dict[str, Any]) -> xr.DataArray:
    dims: tuple[str, ...] = ("y", "x")
    coords: dict[str, Any] = {"y": grid.y, "x": grid.x}
    if years is not None:
        dims = ("year", "y", "x")
        coords["year"] = years
    arr = xr.DataArray(values, dims=dims, coords=coords, name=name, attrs=attrs)
    return arr.rio.write_crs(grid.crs.to_wkt()).rio.write_transform(grid.transform)


# --------------------------------------------------------------------------
# Writers: a temporary name in the output folder, renamed when complete
# --------------------------------------------------------------------------
def _tmp_name(out: Path, tag: str) -> Path:
    return out.with_name(f".{out.name}.{tag}-{uuid.uuid4().hex[:8]}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _replace(tmp: Path, out: Path, overwrite: bool) -> None:
    """Give ``tmp`` the name ``out``; an existing ``out`` goes only once ``tmp`` is in place."""
    if out.exists() or out.is_symlink():
        if not overwrite:  # appeared while the map was computed
            raise FileExistsError(f"output {out} exists; pass overwrite=True to replace it")
        check_replaceable(out)  # it may have changed while the map was computed
        if out.is_dir():
            trash = _tmp_name(out, "old")
            os.replace(out, trash)
            os.replace(tmp, out)
            _remove(trash)
            return
    os.replace(tmp, out)


class _CogWriter:
    """Windows into a tiled GeoTIFF, then GDAL's COG driver copies it with overviews."""

    def __init__(self, out: Path, grid: MapGrid, tags: dict[str, str], blocksize: int,
                 chunk: int) -> None:
        import rasterio

        self.out, self.grid, self.blocksize = out, grid, int(blocksize)
        self.tmp = _tmp_name(out, "part.tif")
        self.env = rasterio.Env(GDAL_CACHEMAX=64, GDAL_NUM_THREADS=1)
        self.env.__enter__()
        block = math.gcd(chunk, 512)
        self.dst = rasterio.open(
            self.tmp, "w", driver="GTiff", width=grid.width, height=grid.height, count=1,
            dtype="float32", crs=grid.crs.to_wkt(), transform=grid.transform, nodata=np.nan,
            tiled=True, blockxsize=block, blockysize=block, compress="ZSTD", BIGTIFF="IF_SAFER",
        )
        self.dst.update_tags(**tags)
        # the band says what it holds: species (richness) or log1p(species), and whose
        self.dst.set_band_description(1, f"{tags.get('quantity', 'richness')}: "
                                         f"{tags.get('units', '')}".rstrip(": "))
        self.dst.set_band_unit(1, tags.get("units", ""))

    def write(self, yi: int, r0: int, r1: int, c0: int, c1: int, values: np.ndarray) -> None:
        from rasterio.windows import Window

        self.dst.write(values, 1, window=Window(c0, r0, c1 - c0, r1 - r0))

    def finish(self, overwrite: bool, tags: dict[str, Any]) -> None:
        import rasterio.shutil

        self.dst.update_tags(**{k: str(v) for k, v in tags.items()})
        self.dst.close()
        cog = _tmp_name(self.out, "cog.tif")
        try:
            rasterio.shutil.copy(
                self.tmp, cog, driver="COG", BLOCKSIZE=self.blocksize, COMPRESS="DEFLATE",
                PREDICTOR="YES", OVERVIEWS="IGNORE_EXISTING", OVERVIEW_RESAMPLING="AVERAGE",
                BIGTIFF="IF_SAFER",
            )
            _replace(cog, self.out, overwrite)
        finally:
            _remove(cog)
            _remove(self.tmp)
            self.env.__exit__(None, None, None)

    def abort(self) -> None:
        try:
            if not self.dst.closed:
                self.dst.close()
        finally:
            _remove(self.tmp)
            self.env.__exit__(None, None, None)


class _ZarrWriter:
    """Windows into a Zarr store ``<quantity> (year, y, x)`` with CRS."""

    def __init__(self, out: Path, grid: MapGrid, years: list[int], quantity: str,
                 attrs: dict[str, Any], chunk: int) -> None:
        import zarr

        self.out, self.quantity = out, quantity
        self.tmp = _tmp_name(out, "part.zarr")
        lazy = da.full((len(years), grid.height, grid.width), np.nan, dtype=np.float32,
                       chunks=(1, chunk, chunk))
        ds = _as_dataarray(lazy, grid, years, quantity, {}).to_dataset()
        ds.attrs.update(attrs)
        ds.to_zarr(self.tmp, mode="w", compute=False, consolidated=False)
        self.array = zarr.open_group(str(self.tmp), mode="r+")[quantity]

    def write(self, yi, r0, r1, c0, c1, values):
        self.array[yi, r0:r1, c0:c1] = values

    def finish(self, overwrite: bool, tags: dict[str, Any]) -> None:
        import zarr

        zarr.open_group(str(self.tmp), mode="r+").attrs.update(tags)
        try:
            _replace(self.tmp, self.out, overwrite)
        finally:
            _remove(self.tmp)

    def abort(self) -> None:
        _remove(self.tmp)


def map_units(model: MapModel, quantity: str = "richness") -> str:
    """The unit of a map: the rarefied richness of the guild the model was fitted for.

    A model records its guild in ``settings["guild"]`` (``fungi-ssl fit --guild``);
    one that records none is taken to be of the default, ECM.

    Examples
    --------
    >>> m = MapModel("ridge")
    >>> m.settings = {"guild": "AM"}
    >>> map_units(m), map_units(m, "log_richness")
    ('rarefied AM richness', 'log1p(rarefied AM richness)')
    """
    guild = (getattr(model, "settings", None) or {}).get("guild", DEFAULT_GUILD)
    base = f"rarefied {guild} richness"
    return base if quantity == "richness" else f"log1p({base})"


def _model_attrs(model: MapModel) -> dict[str, str]:
    """Which map model made a map: ``ssl`` or ``product``, and the product's covariates."""
    cols = list(model.covariate_columns)
    if not cols:
        return {"map_model": "ssl"}
    return {"map_model": "product", "covariates": ",".join(cols)}


def _make_writer(kind, out, grid, years, quantity, model: MapModel, blocksize, chunk):
    if kind is None:
        return None
    attrs = {
        "quantity": quantity,
        "units": map_units(model, quantity),
        "guild": model.settings.get("guild", DEFAULT_GUILD),
        "model_fingerprint": model.fingerprint,
        "encoder": model.spec.encoder,
        "years": ",".join(str(y) for y in years),
        "software": "fungi_ssl.maps.predict_map",
        **_model_attrs(model),
    }
    if kind == "cog":
        return _CogWriter(out, grid, attrs, blocksize, chunk)
    return _ZarrWriter(out, grid, years, quantity, attrs, chunk)


def open_map(path: str | Path, chunks: int | None = 1024) -> xr.DataArray:
    """Open a map written by :func:`predict_map` lazily, with its CRS.

    A COG gives ``(y, x)``; a Zarr store ``(year, y, x)``. ``attrs`` carry
    what :func:`predict_map` recorded: ``quantity``, ``units``, ``years``,
    ``model_fingerprint``, ``encoder``, ``n_nan``, ``n_no_embedding``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"open_map: no map at {path}")
    kind = _output_kind(path)
    if kind == "cog":
        arr = rioxarray.open_rasterio(path, chunks={"x": chunks, "y": chunks} if chunks else None,
                                      masked=True)
        arr = arr.squeeze("band", drop=True)
        arr.name = arr.attrs.get("quantity", "richness")
        return arr
    ds = xr.open_zarr(path, consolidated=False, decode_coords="all")
    names = [v for v in ds.data_vars if ds[v].dims == ("year", "y", "x")]
    if not names:
        raise ValueError(f"open_map: {path} holds no (year, y, x) map")
    name = ds.attrs.get("quantity", names[0])
    arr = ds[name if name in names else names[0]]
    arr.attrs.update({k: v for k, v in ds.attrs.items() if k not in arr.attrs})
    if arr.rio.crs is None and "spatial_ref" in ds.variables:
        arr = arr.rio.write_crs(ds["spatial_ref"].attrs.get("crs_wkt"))
    return arr


# --------------------------------------------------------------------------
# 1 km aggregation
# --------------------------------------------------------------------------
def aggregate_map(
    richness_map: xr.DataArray, cell: float = 1000.0, *, min_valid_fraction: float = 0.0
) -> xr.Dataset:
    """Aggregate a fine map to square cells: mean and within-cell standard deviation.

    Cells are aligned to multiples of ``cell`` in the map's CRS (as a 1 km
    grid would be); pixels are assigned by their centre. The map's pixel size
    must divide ``cell``. Works lazily on dask-backed maps (e.g. from
    :func:`open_map`), block by block.

    Parameters
    ----------
    richness_map : xarray.DataArray
        ``(y, x)`` or ``(year, y, x)`` with regular x/y pixel centres and a CRS.
    cell : float
        Cell side in CRS units (metres): 1000 for 1 km.
    min_valid_fraction : float
        Cells with a smaller share of non-NaN pixels are NaN.

    Returns
    -------
    xarray.Dataset
        ``mean``, ``sd`` (population SD of the pixels in the cell, ddof 0),
        ``n_valid`` (non-NaN pixels) and ``valid_fraction`` on the cell grid
        (``x``/``y`` cell centres), with the map's CRS and the cells' transform.

    Examples
    --------
    >>> m = xr.DataArray(np.arange(16, dtype=float).reshape(4, 4), dims=("y", "x"),
    ...                  coords={"y": [35.0, 25.0, 15.0, 5.0], "x": [5.0, 15.0, 25.0, 35.0]})
    >>> agg = aggregate_map(m.rio.write_crs(32630), cell=20)
    >>> agg["mean"].values.tolist()
    [[2.5, 4.5], [10.5, 12.5]]
    >>> round(float(agg["sd"][0, 0]), 4), agg["x"].values.tolist()
    (2.0616, [10.0, 30.0])
    """
    if not isinstance(richness_map, xr.DataArray):
        raise ValueError(  # noqa: TRY004 (project rule: bad input is a ValueError)
            f"aggregate_map: expected an xarray.DataArray, got {type(richness_map).__name__}"
        )
    for d in ("y", "x"):
        if d not in richness_map.dims or richness_map.sizes[d] < 1:
            raise ValueError(f"aggregate_map: the map has no {d!r} dimension")
    crs = richness_map.rio.crs
    if crs is None:
        raise ValueError("aggregate_map: the map has no CRS")
    x = richness_map["x"].values.astype(float)
    y = richness_map["y"].values.astype(float)
    res_x = float(x[1] - x[0]) if len(x) > 1 else None
    res_y = float(y[0] - y[1]) if len(y) > 1 else None
    res = res_x or res_y
    if res is None or res <= 0 or (res_y is not None and not math.isclose(res_y, res)):
        raise ValueError("aggregate_map: expected square pixels, x increasing and y decreasing")
    factor = cell / res
    if factor < 1 or abs(factor - round(factor)) > 1e-6:
        raise ValueError(
            f"aggregate_map: the pixel size {res} must divide the cell size {cell}"
        )
    f = round(factor)
    if not 0 <= min_valid_fraction <= 1:
        raise ValueError(f"min_valid_fraction must lie in [0, 1], got {min_valid_fraction}")
    # pad so that the map's edges fall on cell edges
    left_edge, top_edge = x[0] - res / 2, y[0] + res / 2
    pad_left = round((left_edge - math.floor(left_edge / cell + 1e-9) * cell) / res)
    pad_top = round((math.ceil(top_edge / cell - 1e-9) * cell - top_edge) / res)
    nx, ny = len(x) + pad_left, len(y) + pad_top
    pad_right, pad_bottom = (-nx) % f, (-ny) % f
    m = richness_map.astype(np.float64)
    if pad_left or pad_top or pad_right or pad_bottom:
        m = m.pad(x=(pad_left, pad_right), y=(pad_top, pad_bottom), constant_values=np.nan)
        m = m.assign_coords(
            x=x[0] + res * (np.arange(m.sizes["x"]) - pad_left),
            y=y[0] - res * (np.arange(m.sizes["y"]) - pad_top),
        )
    coarse = m.coarsen(x=f, y=f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells
        mean = coarse.mean()
        sd = coarse.std()
        n_valid = m.notnull().coarsen(x=f, y=f).sum()
    frac = n_valid / (f * f)
    keep = (n_valid > 0) & (frac >= min_valid_fraction)
    out = xr.Dataset(
        {
            "mean": mean.where(keep).astype(np.float32),
            "sd": sd.where(keep).astype(np.float32),
            "n_valid": n_valid.astype(np.int32),
            "valid_fraction": frac.astype(np.float32),
        }
    )
    out.attrs.update({"cell_size": float(cell), "pixels_per_cell_side": f})
    x0 = float(out["x"].values[0]) - cell / 2
    y0 = float(out["y"].values[0]) + cell / 2
    out = out.rio.write_crs(crs).rio.write_transform(Affine(cell, 0, x0, 0, -cell, y0))
    return out
