"""Embedding sources of a map: the pixel grid, Zarr embedding stores and TESSERA tiles, read block by block.

:func:`open_embedding_source` opens what :func:`fungi_ssl.maps.predict.predict_map`
reads (a Zarr store, a mapping or folder of yearly stores, or a TESSERA download
folder) as an :class:`EmbeddingSource` on a :class:`MapGrid`; its
:meth:`EmbeddingSource.block_reader` reads one block plus its halo.
:func:`write_embedding_store` writes int8 embeddings in the stores' layout.
"""

from __future__ import annotations

import itertools
import math
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from affine import Affine
from pyproj import CRS, Transformer

__all__ = [
    "DEFAULT_CHUNK",
    "EmbeddingSource",
    "MapGrid",
    "open_embedding_source",
    "write_embedding_store",
]

#: Side of the dask blocks (pixels); the project's embedding stores use 256.
DEFAULT_CHUNK = 256
#: Bytes of decoded store chunks a block reader keeps (:class:`_ChunkCache`): a
#: block's one-pixel halo reaches into up to eight neighbouring chunks, each
#: compressed whole, so without it a map of 256² blocks on 256² chunks decoded
#: every chunk about six times (1.5 of a 1024² map's 8.7 CPU-seconds, in
#: zarr's own threads). 144 MiB holds three rows of six 256² × 128 chunks: the
#: rows a row of blocks of a 1,024-pixel window and its halo touch.
CHUNK_CACHE_BYTES = 144 * 2**20

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


class _ChunkCache:
    """Decoded chunks of a Zarr store's ``embedding`` and ``scale``, least recently used dropped.

    Holds at most ``max_bytes`` of chunks, keyed by chunk row and column. Two
    threads asking for one chunk at once decode it once: the second waits
    for the first.
    """

    def __init__(self, emb: Any, scale: Any, max_bytes: int = CHUNK_CACHE_BYTES) -> None:
        self.emb, self.scale = emb, scale
        self.ch, self.cw = (int(v) for v in emb.chunks[:2])
        self.max_bytes = int(max_bytes)
        self._chunks: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._pending: dict[tuple[int, int], threading.Event] = {}
        self.decoded = 0  # chunks decoded so far (a test counts them)

    def chunk(self, i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Chunk ``(i, j)``: its embeddings ``(rows, cols, dim)`` and scales ``(rows, cols)``."""
        key = (i, j)
        while True:
            with self._lock:
                hit = self._chunks.get(key)
                if hit is not None:
                    self._chunks.move_to_end(key)
                    return hit
                wait = self._pending.get(key)
                if wait is None:
                    done = self._pending[key] = threading.Event()
                    break
            wait.wait()
        try:
            rows = slice(i * self.ch, (i + 1) * self.ch)
            cols = slice(j * self.cw, (j + 1) * self.cw)
            value = (np.asarray(self.emb[rows, cols]), np.asarray(self.scale[rows, cols]))
            size = value[0].nbytes + value[1].nbytes
            with self._lock:
                self.decoded += 1
                if size <= self.max_bytes:
                    self._chunks[key] = value
                    self._bytes += size
                    while self._bytes > self.max_bytes:
                        _, old = self._chunks.popitem(last=False)
                        self._bytes -= old[0].nbytes + old[1].nbytes
            return value
        finally:
            with self._lock:
                del self._pending[key]
            done.set()

    def read(self, a0: int, a1: int, b0: int, b1: int,
             emb: np.ndarray, sc: np.ndarray) -> None:
        """Copy store rows ``a0:a1``, cols ``b0:b1`` into ``emb`` and ``sc`` (same shape)."""
        for i in range(a0 // self.ch, (a1 - 1) // self.ch + 1):
            r0, r1 = max(a0, i * self.ch), min(a1, (i + 1) * self.ch)
            for j in range(b0 // self.cw, (b1 - 1) // self.cw + 1):
                c0, c1 = max(b0, j * self.cw), min(b1, (j + 1) * self.cw)
                e, s = self.chunk(i, j)
                src = (slice(r0 - i * self.ch, r1 - i * self.ch),
                       slice(c0 - j * self.cw, c1 - j * self.cw))
                dst = (slice(r0 - a0, r1 - a0), slice(c0 - b0, c1 - b0))
                emb[dst] = e[src]
                sc[dst] = s[src]


_CACHE_LOCK = threading.Lock()


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
        state.pop("_cache", None)  # decoded chunks stay in the process that decoded them
        if self.path is not None:
            state["_arrays"] = None  # reopened where it is used
        return state

    def _open(self) -> tuple[Any, Any]:
        if self._arrays is None:
            import zarr

            g = zarr.open_group(self.path, mode="r")
            self._arrays = (g["embedding"], g["scale"])
        return self._arrays

    def _chunk_cache(self, emb_a: Any, sc_a: Any) -> _ChunkCache | None:
        """The store's decoded-chunk cache (stores read by path only), made on first use."""
        if self.path is None:
            return None
        cache = self.__dict__.get("_cache")
        if cache is None:
            with _CACHE_LOCK:
                cache = self.__dict__.get("_cache")
                if cache is None:
                    cache = self.__dict__["_cache"] = _ChunkCache(emb_a, sc_a)
        return cache

    def __call__(self, r0, r1, c0, c1):
        emb_a, sc_a = self._open()
        R0, R1, C0, C1 = r0 + self.r_off, r1 + self.r_off, c0 + self.c_off, c1 + self.c_off
        a0, a1 = max(R0, 0), min(R1, self.ny)
        b0, b1 = max(C0, 0), min(C1, self.nx)
        emb = np.zeros((r1 - r0, c1 - c0, self.dim), np.int8)
        sc = np.full((r1 - r0, c1 - c0), np.nan, np.float32)
        cache = self._chunk_cache(emb_a, sc_a) if a0 < a1 and b0 < b1 else None
        if cache is not None:
            cache.read(a0, a1, b0, b1, emb[a0 - R0:a1 - R0, b0 - C0:b1 - C0],
                       sc[a0 - R0:a1 - R0, b0 - C0:b1 - C0])
        elif a0 < a1 and b0 < b1:
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
        Signature of the encoder (:func:`fungi_ssl.maps.modelspec.encoder_signature`).
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
