"""Patches of TESSERA embeddings at points: the ``k × k`` pixels around each field sample.

:func:`sample_patches` finds each point's tile (its own 0.1° cell or a
neighbour; tiles overlap), reads the pixels around it and dequantises them
(:mod:`fungi_ssl.embeddings.tessera` reads the tiles).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from affine import Affine

from fungi_ssl.data.coordinates import check_lonlat, crs_to_lonlat, lonlat_to_crs
from fungi_ssl.embeddings.tessera import (
    _CELL_ORDER,
    N_DIM,
    TesseraTile,
    _cell_centre,
    _cell_index,
    _checked_scale,
    _load_npy,
    _read_tile,
    _root_dir,
    _year_dir,
    dequantise,
    tile_paths,
)

# Patch sampling at points
# --------------------------------------------------------------------------


@dataclass
class _OpenTile:
    tile: TesseraTile
    embedding: np.ndarray
    scale: np.ndarray
    land: np.ndarray | None = None


class _TileCache:
    """Open tiles of one root/year on demand, keyed by integer cell index."""

    def __init__(self, root: Path, year: int, mask_water: bool) -> None:
        self.root, self.year, self.mask_water = root, year, mask_water
        self.by_cell: dict[tuple[int, int], int | None] = {}
        self.tiles: list[_OpenTile] = []

    def get(self, i_lon: int, i_lat: int) -> int | None:
        i_lon = (i_lon + 1800) % 3600 - 1800  # wrap across the antimeridian
        key = (i_lon, i_lat)
        if key in self.by_cell:
            return self.by_cell[key]
        found: int | None = None
        if -900 <= i_lat <= 899:
            lon, lat = _cell_centre(i_lon, i_lat)
            if tile_paths(self.root, self.year, lon, lat).embedding.is_file():
                tile = _read_tile(self.root, self.year, lon, lat)
                emb = _load_npy(tile.paths.embedding, "embedding")
                scale = _checked_scale(
                    _load_npy(tile.paths.scales, "scales"), emb.shape, tile.paths.scales
                )
                land = None
                if self.mask_water:
                    import rasterio

                    with rasterio.open(tile.paths.landmask) as src:
                        land = src.read(1) != 0
                self.tiles.append(_OpenTile(tile, emb, scale, land))
                found = len(self.tiles) - 1
        self.by_cell[key] = found
        return found


def _pixel_of(t: Affine, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fractional (column, row) of map coordinates under a north-up transform."""
    return (x - t.c) / t.a, (y - t.f) / t.e


def _centre_of(t: Affine, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map coordinates of pixel centres under a north-up transform."""
    return t.c + (cols + 0.5) * t.a, t.f + (rows + 0.5) * t.e


def _locate(
    lon: np.ndarray, lat: np.ndarray, cache: _TileCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tile id (-1 = none), row and column of the pixel holding each location.

    Each location is looked up in the tile of its own 0.1° cell first, then in
    the tiles of the neighbouring cells (tiles overlap), in ``_CELL_ORDER``.
    """
    n = lon.size
    tile_id = np.full(n, -1, dtype=np.int64)
    rows = np.zeros(n, dtype=np.int64)
    cols = np.zeros(n, dtype=np.int64)
    pending = np.isfinite(lon) & np.isfinite(lat)
    if not pending.any():
        return tile_id, rows, cols
    i_lon, i_lat = _cell_index(np.where(pending, lon, 0.0), np.where(pending, lat, 0.0))
    for d_lon, d_lat in _CELL_ORDER:
        idx = np.flatnonzero(pending)
        if idx.size == 0:
            break
        cells = np.stack([i_lon[idx] + d_lon, i_lat[idx] + d_lat], axis=1)
        uniq, inverse = np.unique(cells, axis=0, return_inverse=True)
        inverse = inverse.ravel()
        for u, (c_lon, c_lat) in enumerate(uniq):
            tid = cache.get(int(c_lon), int(c_lat))
            if tid is None:
                continue
            t = cache.tiles[tid]
            sel = idx[inverse == u]
            x, y = lonlat_to_crs(lon[sel], lat[sel], t.tile.crs)
            col_f, row_f = _pixel_of(t.tile.transform, np.atleast_1d(x), np.atleast_1d(y))
            r, c = np.floor(row_f).astype(np.int64), np.floor(col_f).astype(np.int64)
            h, w = t.embedding.shape[:2]
            inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
            hit = sel[inside]
            tile_id[hit], rows[hit], cols[hit] = tid, r[inside], c[inside]
            pending[hit] = False
    return tile_id, rows, cols


def _read_pixels(t: _OpenTile, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Dequantised ``(p, D)`` float32 values of pixels ``(rows, cols)`` of one tile."""
    values = dequantise(np.asarray(t.embedding[rows, cols]), np.asarray(t.scale[rows, cols]))
    if t.land is not None:
        values[~t.land[rows, cols]] = np.nan
    return values


def sample_patches(
    root: str | Path,
    year: int,
    longitude: Sequence[float] | np.ndarray,
    latitude: Sequence[float] | np.ndarray,
    k: int = 3,
    *,
    mask_water: bool = False,
    progress: bool = True,
) -> xr.DataArray:
    """Dequantised k×k pixel patches centred on points, across tile edges.

    The centre pixel is the one containing the point, in the tile of the
    point's 0.1° cell (or, where that tile is absent or does not cover the
    point, a neighbouring tile that does). The other pixels are the centre's
    grid neighbours in that tile. A neighbour that falls off the tile's raster
    is found elsewhere: its pixel centre (in the centre tile's UTM CRS) is
    converted to lon/lat and looked up the same way, i.e. projected into the
    tile of its own cell (each tile has its own UTM zone and pixel grid) and
    snapped to the pixel containing it. Points and pixels covered by no tile
    on disk are NaN.

    Parameters
    ----------
    root : str or Path
        Directory that geotessera downloaded into.
    year : int
        Embedding year.
    longitude, latitude : array_like
        WGS84 degrees, one entry per sample. Non-finite entries give NaN.
    k : int, default 3
        Odd patch width in pixels (3 gives the study's 3×3 = 1,152 features).
    mask_water : bool, default False
        Set pixels that the landmask marks as water to NaN.
    progress : bool, default True
        Show a tqdm bar over the tiles.

    Returns
    -------
    xarray.DataArray
        float32 ``(sample, row, col, dim)`` = ``(n, k, k, 128)``, in input
        order; ``row``/``col`` are pixel offsets from the centre (row +1 is one
        pixel south, col +1 one pixel east). ``.values.reshape(n, -1)`` is the
        (row, col, dim) flattening of CONTRIBUTING.md's SSL patch features.
        ``attrs["n_outside"]`` counts points with no tile (all NaN) and
        ``attrs["n_incomplete"]`` points whose patch has some NaN pixels; a
        warning reports both when non-zero.

    Raises
    ------
    FileNotFoundError
        If ``root`` or its embeddings for ``year`` do not exist, or a tile
        needed is missing its scales file or landmask.
    ValueError
        If ``k`` is not a positive odd integer, the coordinate arrays differ
        in length, or a coordinate is out of range.

    Examples
    --------
    >>> from fungi_ssl.embeddings.tessera_write import write_tile
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> emb = np.arange(5 * 5 * 128).reshape(5, 5, 128).astype(np.int8)
    >>> _ = write_tile(root, 2024, 0.15, 52.05, emb, np.full((5, 5), 0.5, np.float32),
    ...                transform=Affine(10, 0, 300_000, 0, -10, 5_770_000))
    >>> from fungi_ssl.data.coordinates import crs_to_lonlat
    >>> lon, lat = crs_to_lonlat([300_025.0, 400_000.0], [5_769_975.0, 5_700_000.0], 32631)
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     p = sample_patches(root, 2024, lon, lat, k=3, progress=False)
    >>> p.shape, p.attrs["n_outside"]
    ((2, 3, 3, 128), 1)
    >>> bool(np.allclose(p[0].values, emb[1:4, 1:4] * 0.5)), bool(np.isnan(p[1]).all())
    (True, True)
    """
    from tqdm import tqdm

    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 or k % 2 == 0:
        raise ValueError(f"sample_patches: k must be a positive odd integer, got {k!r}")
    lon = np.asarray(longitude, dtype=float).ravel()
    lat = np.asarray(latitude, dtype=float).ravel()
    check_lonlat(lon, lat, "sample_patches", allow_nan=True)
    root = _root_dir(root)
    _year_dir(root, year)
    cache = _TileCache(root, int(year), mask_water)

    n, half = lon.size, k // 2
    offsets = np.arange(-half, half + 1)
    centre_tile, r0, c0 = _locate(lon, lat, cache)
    dims = {t.embedding.shape[2] for t in cache.tiles}
    if len(dims) > 1:
        raise ValueError(
            f"sample_patches: tiles under {root} for {year} have different dimensions {sorted(dims)}"
        )
    d = dims.pop() if dims else N_DIM
    out = np.full((n, k, k, d), np.nan, dtype=np.float32)

    rows = r0[:, None, None] + offsets[None, :, None] + np.zeros((1, 1, k), dtype=np.int64)
    cols = c0[:, None, None] + offsets[None, None, :] + np.zeros((1, k, 1), dtype=np.int64)
    spill_pos: list[np.ndarray] = []  # flat indices into (n, k, k)
    spill_lon: list[np.ndarray] = []
    spill_lat: list[np.ndarray] = []
    with_tile = np.unique(centre_tile[centre_tile >= 0])
    for tid in tqdm(with_tile, desc="TESSERA patches", unit="tile", disable=not progress):
        t = cache.tiles[int(tid)]
        pts = np.flatnonzero(centre_tile == tid)
        r, c = rows[pts], cols[pts]
        h, w = t.embedding.shape[:2]
        inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        p_idx, a_idx, b_idx = np.nonzero(inside)
        out[pts[p_idx], a_idx, b_idx] = _read_pixels(t, r[inside], c[inside])
        if not inside.all():
            p_idx, a_idx, b_idx = np.nonzero(~inside)
            rr, cc = r[~inside], c[~inside]
            x, y = _centre_of(t.tile.transform, rr, cc)
            s_lon, s_lat = crs_to_lonlat(x, y, t.tile.crs)
            spill_pos.append(np.ravel_multi_index((pts[p_idx], a_idx, b_idx), (n, k, k)))
            spill_lon.append(np.atleast_1d(s_lon))
            spill_lat.append(np.atleast_1d(s_lat))

    n_spilled = 0
    if spill_pos:
        pos = np.concatenate(spill_pos)
        s_tile, s_row, s_col = _locate(np.concatenate(spill_lon), np.concatenate(spill_lat), cache)
        flat_out = out.reshape(n * k * k, d)
        for tid in np.unique(s_tile[s_tile >= 0]):
            sel = s_tile == tid
            t = cache.tiles[int(tid)]
            if t.embedding.shape[2] != d:
                raise ValueError(
                    f"sample_patches: tile {t.tile.name} has {t.embedding.shape[2]} dimensions, others {d}"
                )
            flat_out[pos[sel]] = _read_pixels(t, s_row[sel], s_col[sel])
            n_spilled += int(sel.sum())

    outside = centre_tile < 0
    n_outside = int(outside.sum())
    n_incomplete = int((~outside & np.isnan(out).any(axis=(1, 2, 3))).sum())
    if n_outside or n_incomplete:
        warnings.warn(
            f"sample_patches: of {n} points, {n_outside} fall outside every TESSERA tile for "
            f"{year} under {root} (all NaN) and {n_incomplete} have a {k}×{k} patch with NaN "
            "pixels (tile edge without a neighbouring tile, no-data scale or masked water)",
            UserWarning,
            stacklevel=2,
        )
    return xr.DataArray(
        out,
        dims=("sample", "row", "col", "dim"),
        coords={"sample": np.arange(n), "row": offsets, "col": offsets, "dim": np.arange(d)},
        name="tessera_patch",
        attrs={
            "year": int(year),
            "k": int(k),
            "root": str(root),
            "n_outside": n_outside,
            "n_incomplete": n_incomplete,
            "n_tiles": len(cache.tiles),
            "n_pixels_from_other_tiles": n_spilled,
        },
    )


# --------------------------------------------------------------------------
