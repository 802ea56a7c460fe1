"""Writing tiles in TESSERA's layout: for simulated embeddings and tests.

:func:`tile_grid` gives the pixel grid of a 0.1° cell and :func:`write_tile`
writes one year's tile (int8 embeddings, scales, land mask, provenance) where
:func:`fungi_ssl.embeddings.tessera.read_tile` finds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from affine import Affine
from pyproj import CRS

from fungi_ssl.data.coordinates import lonlat_to_crs, utm_epsg
from fungi_ssl.embeddings.tessera import (
    PIXEL_METRES,
    TILE_DEGREES,
    TilePaths,
    tile_for_point,
    tile_name,
    tile_paths,
)

# Writing tiles in the same layout (for simulated embeddings and tests)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class TileGrid:
    """UTM pixel grid of one tile: the envelope of its 0.1° cell at 10 m."""

    epsg: int
    transform: Affine
    height: int
    width: int


def tile_grid(lon: float, lat: float, pixel_size: float = PIXEL_METRES) -> TileGrid:
    """The UTM grid of the tile containing ``(lon, lat)``, computed from its cell.

    Projects the four cell corners to the UTM zone of the cell centre and takes
    their envelope, origin at the west-most corner easting and north-most
    corner northing, as geotessera's Zarr builder does (``zarr.py``,
    ``project_tile``). Real tiles carry their grid in the landmask; this is
    for writing tiles of one's own (e.g. simulated embeddings).

    Examples
    --------
    >>> g = tile_grid(0.15, 52.05)
    >>> g.epsg, g.width, g.height
    (32631, 729, 1139)
    """
    c_lon, c_lat = tile_for_point(lon, lat)
    epsg = utm_epsg(c_lon, c_lat)
    h = TILE_DEGREES / 2
    corner_lon = np.array([c_lon - h, c_lon + h, c_lon - h, c_lon + h])
    corner_lat = np.array([c_lat + h, c_lat + h, c_lat - h, c_lat - h])
    e, n = lonlat_to_crs(corner_lon, corner_lat, epsg)
    west, north = min(e[0], e[2]), max(n[0], n[1])
    east, south = max(e[1], e[3]), min(n[2], n[3])
    return TileGrid(
        epsg=epsg,
        transform=Affine(pixel_size, 0.0, float(west), 0.0, -pixel_size, float(north)),
        height=round(float(north - south) / pixel_size),
        width=round(float(east - west) / pixel_size),
    )


def write_tile(
    root: str | Path,
    year: int,
    lon: float,
    lat: float,
    embedding: np.ndarray,
    scale: np.ndarray,
    *,
    crs: CRS | int | str | None = None,
    transform: Affine | None = None,
    land: np.ndarray | None = None,
    overwrite: bool = False,
) -> TilePaths:
    """Write one tile in geotessera's on-disk layout (embedding, scales, landmask).

    Parameters
    ----------
    root : str or Path
        Output directory (created if needed).
    year : int
    lon, lat : float
        Any point in the tile's 0.1° cell.
    embedding : numpy.ndarray
        int8 ``(H, W, D)``.
    scale : numpy.ndarray
        float ``(H, W)``, written as float32.
    crs : pyproj.CRS, int or str, optional
        Default: the UTM zone of the cell centre (:func:`tile_grid`).
    transform : affine.Affine, optional
        Pixel-corner transform. Default: :func:`tile_grid`'s, which then
        requires ``(H, W)`` to equal the grid's shape.
    land : numpy.ndarray, optional
        bool ``(H, W)`` land mask (default all land), written as uint8.
    overwrite : bool, default False
        Replace existing files instead of raising ``FileExistsError``.

    Returns
    -------
    TilePaths

    Examples
    --------
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> p = write_tile(root, 2024, 0.15, 52.05, np.zeros((2, 2, 128), np.int8),
    ...                np.ones((2, 2)), transform=Affine(10, 0, 300_000, 0, -10, 5_770_000))
    >>> p.embedding.exists(), p.scales.exists(), p.landmask.exists()
    (True, True, True)
    """
    import rioxarray  # noqa: F401  (registers the .rio accessor)

    emb = np.asarray(embedding)
    if emb.dtype != np.int8 or emb.ndim != 3:
        raise ValueError(
            f"write_tile: embedding must be int8 of shape (H, W, D), got {emb.dtype} {emb.shape}"
        )
    h, w, _ = emb.shape
    sc = np.asarray(scale)
    if sc.shape != (h, w):
        raise ValueError(
            f"write_tile: scale has shape {sc.shape}; expected ({h}, {w}) to match the embedding"
        )
    if transform is None or crs is None:
        grid = tile_grid(lon, lat)
        if transform is None:
            if (grid.height, grid.width) != (h, w):
                raise ValueError(
                    f"write_tile: the embedding is {h}×{w} but the tile grid of {tile_name(lon, lat)} "
                    f"is {grid.height}×{grid.width}; pass `transform` for a raster of another size"
                )
            transform = grid.transform
        if crs is None:
            crs = grid.epsg
    lm = np.ones((h, w), dtype=np.uint8) if land is None else np.asarray(land).astype(np.uint8)
    if lm.shape != (h, w):
        raise ValueError(f"write_tile: land has shape {lm.shape}; expected ({h}, {w})")
    paths = tile_paths(root, year, lon, lat)
    if not overwrite:
        for p in (paths.embedding, paths.scales, paths.landmask):
            if p.exists():
                raise FileExistsError(f"write_tile: {p} exists; pass overwrite=True to replace it")
    paths.embedding.parent.mkdir(parents=True, exist_ok=True)
    paths.landmask.parent.mkdir(parents=True, exist_ok=True)
    np.save(paths.embedding, emb)
    np.save(paths.scales, sc.astype(np.float32))
    t = Affine(*transform[:6])
    x = t.c + (np.arange(w) + 0.5) * t.a
    y = t.f + (np.arange(h) + 0.5) * t.e
    da = xr.DataArray(lm, dims=("y", "x"), coords={"y": y, "x": x}, name="landmask")
    da = da.rio.write_crs(CRS.from_user_input(crs).to_wkt()).rio.write_transform(t)
    da.rio.to_raster(paths.landmask)
    return paths
