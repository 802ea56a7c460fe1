"""Raster stacks of 1 km covariates: what the product map model reads beside the embeddings.

The product model (:class:`fungi_ssl.maps.mapmodel.MapModel` fitted with
``covariates``, chapter 06's winner) sees each pixel's 3 × 3 embedding patch
*and* the 1 km climate, soil and land-cover covariates of its cell. For a
real region those covariates come as a raster stack:

* a **GeoTIFF** with one band per covariate, each band's *description* its
  name (``gdal_translate`` and rasterio set it; QGIS shows it), or
* a **Zarr** store with one ``(y, x)`` variable per covariate, named after it,
  and its CRS (rioxarray's ``spatial_ref``).

Names are the SPUN covariate table's (``CHELSA_BIO_Annual_Mean_Temperature``,
``SG_Soil_pH_H2O_005cm`` …; CONTRIBUTING.md, "1 km covariates"), so a stack
made from the SPUN rasters and the book's predictor table speak of the same
columns. A stack may hold more bands than a model needs; a model's columns are
found by name, in any band order.

The rule that gives a point its covariates is chapter 06's: **the value of the
1 km cell that holds it** (nearest cell, no interpolation), for a sample's plot
coordinate (:meth:`CovariateStack.at_lonlat`, what ``fungi-ssl fit
--covariates`` fits on) as for a map pixel's centre
(:meth:`CovariateStack.grid_reader`, what ``predict-map --covariates`` maps
with). Points are carried into the stack's CRS with pyproj, so a stack in
another CRS than the embeddings is fine as long as pyproj can transform
between them. Cells holding nodata give NaN, and so a NaN prediction.

:func:`write_covariate_stack` writes either format from an
:class:`xarray.Dataset` of ``(y, x)`` layers; :func:`cells_to_stack` builds
that Dataset from a table of cell centres (the simulated study's cells,
:func:`fungi_ssl.region.workflow.write_simulated_covariates`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from affine import Affine
from pyproj import CRS, Transformer

__all__ = [
    "CovariateReader",
    "CovariateStack",
    "cells_to_stack",
    "open_covariate_stack",
    "write_covariate_stack",
]

#: The ``software`` tag of the stacks :func:`write_covariate_stack` writes: only
#: such a stack is replaced with ``overwrite``.
STACK_SOFTWARE = "fungi_ssl.covariate_stack.write_covariate_stack"
#: The kinds of stack read and written, by file suffix.
_KINDS = {".tif": "tif", ".tiff": "tif", ".zarr": "zarr"}


def _kind(path: Path, where: str) -> str:
    kind = _KINDS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{where} {path}: expected a GeoTIFF (.tif) or a Zarr store (.zarr) of "
                         "1 km covariates, one band per covariate")
    return kind


@dataclass
class CovariateReader:
    """The covariates of every pixel of a map grid's blocks (picklable: numpy arrays only).

    Calling it with grid rows ``r0:r1`` and columns ``c0:c1`` gives
    ``(r1 - r0, c1 - c0, K)`` float32: each pixel centre carried into the
    stack's CRS, then the value of the cell that holds it (NaN outside).
    """

    values: np.ndarray  # (K, ny, nx) float32, the model's columns in its order
    inverse: tuple[float, ...]  # the stack's ~transform, (a, b, c, d, e, f)
    grid_transform: tuple[float, ...]
    grid_crs: str
    stack_crs: str

    def __call__(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        g = Affine(*self.grid_transform)
        cols, rows = np.meshgrid(np.arange(c0, c1) + 0.5, np.arange(r0, r1) + 0.5)
        x = g.c + cols * g.a + rows * g.b
        y = g.f + cols * g.d + rows * g.e
        if self.grid_crs != self.stack_crs:
            tr = Transformer.from_crs(self.grid_crs, self.stack_crs, always_xy=True)
            x, y = tr.transform(x, y)
        return _lookup(self.values, Affine(*self.inverse), np.asarray(x), np.asarray(y))


def _lookup(values: np.ndarray, inverse: Affine, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Values ``(…, K)`` of the cells holding points ``x, y`` (stack CRS); NaN outside."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    col = inverse.a * x + inverse.b * y + inverse.c
    row = inverse.d * x + inverse.e * y + inverse.f
    with np.errstate(invalid="ignore"):
        ci, ri = np.floor(col), np.floor(row)
    k, ny, nx = values.shape
    inside = np.isfinite(ci) & np.isfinite(ri) & (ci >= 0) & (ci < nx) & (ri >= 0) & (ri < ny)
    out = np.full((*np.shape(x), k), np.nan, np.float32)
    ri_i, ci_i = ri[inside].astype(np.intp), ci[inside].astype(np.intp)
    out[inside] = values[:, ri_i, ci_i].T
    return out


@dataclass
class CovariateStack:
    """A raster stack of 1 km covariates, held in memory (a region's cells are few).

    Attributes
    ----------
    path : pathlib.Path
    names : list of str
        Band names, in the file's order.
    values : numpy.ndarray
        ``(K, ny, nx)`` float32; nodata as NaN.
    crs : pyproj.CRS
    transform : affine.Affine
        Cell-corner transform, rows north to south.
    where : str
        How messages name the stack (e.g. ``"--covariates"``).
    """

    path: Path
    names: list[str]
    values: np.ndarray
    crs: CRS
    transform: Affine
    where: str = "covariate stack"

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(xmin, ymin, xmax, ymax)`` of the cells, in the stack's CRS."""
        t = self.transform
        ny, nx = self.values.shape[1:]
        xs = [t.c, t.c + nx * t.a + ny * t.b]
        ys = [t.f, t.f + nx * t.d + ny * t.e]
        return min(xs), min(ys), max(xs), max(ys)

    def _label(self) -> str:
        return f"{self.where} {self.path}"

    def require(self, columns: Sequence[str], *, needed_by: str = "the map model") -> np.ndarray:
        """The bands named ``columns``, ``(len(columns), ny, nx)``; one line naming any missing.

        Raises
        ------
        ValueError
            The stack lacks a band of ``columns``.
        """
        missing = [c for c in columns if c not in self.names]
        if missing:
            raise ValueError(
                f"{self._label()} lacks the band(s) {', '.join(missing)} that {needed_by} needs "
                f"(it holds {', '.join(self.names) or 'no named band'}); band names must be the "
                "model's covariate columns"
            )
        return self.values[[self.names.index(c) for c in columns]]

    def _transformer(self, crs: Any, what: str) -> Transformer:
        src = CRS.from_user_input(crs)
        try:
            return Transformer.from_crs(src, self.crs, always_xy=True)
        except Exception as err:  # noqa: BLE001 - pyproj raises several kinds
            raise ValueError(f"{self._label()} is in {self.crs.to_string()}, and {what} in "
                             f"{src.to_string()} cannot be transformed to it ({err})") from None

    def at_points(self, x: Sequence[float], y: Sequence[float], crs: Any,
                  columns: Sequence[str] | None = None) -> pd.DataFrame:
        """The covariates of the cells holding points ``x, y`` given in ``crs`` (NaN outside)."""
        cols = list(self.names if columns is None else columns)
        values = self.require(cols)
        tr = self._transformer(crs, "the points")
        sx, sy = tr.transform(np.asarray(x, float), np.asarray(y, float))
        out = _lookup(values, ~self.transform, np.asarray(sx), np.asarray(sy))
        return pd.DataFrame(out.astype(np.float64), columns=cols)

    def at_lonlat(self, longitude: Sequence[float], latitude: Sequence[float],
                  columns: Sequence[str] | None = None) -> pd.DataFrame:
        """The covariates at WGS84 points (a sample table's plot coordinates).

        Examples
        --------
        >>> import tempfile
        >>> cells = pd.DataFrame({"x": [500_500.0, 501_500.0], "y": [5_799_500.0] * 2,
        ...                       "SG_Soil_pH_H2O_005cm": [55.0, 61.0]})
        >>> path = write_covariate_stack(cells_to_stack(cells, 32631),
        ...                              Path(tempfile.mkdtemp()) / "cov.tif")
        >>> from fungi_ssl.data.coordinates import crs_to_lonlat
        >>> lon, lat = crs_to_lonlat([500_100.0, 501_900.0, 510_000.0], [5_799_100.0] * 3, 32631)
        >>> open_covariate_stack(path).at_lonlat(lon, lat)["SG_Soil_pH_H2O_005cm"].tolist()
        [55.0, 61.0, nan]
        """
        return self.at_points(longitude, latitude, "EPSG:4326", columns)

    def check_covers(self, bounds: Sequence[float], crs: Any, what: str = "the map") -> None:
        """Refuse a box (``xmin, ymin, xmax, ymax`` in ``crs``) the stack does not cover.

        Raises
        ------
        ValueError
            One line naming both extents, or a CRS that cannot be transformed.
        """
        tr = self._transformer(crs, what)
        try:
            bx = tr.transform_bounds(*bounds, densify_pts=21)
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"{self._label()}: {what} cannot be transformed from "
                             f"{CRS.from_user_input(crs).to_string()} to the stack's "
                             f"{self.crs.to_string()} ({err})") from None
        if not all(math.isfinite(v) for v in bx):
            raise ValueError(f"{self._label()}: {what} cannot be transformed from "
                             f"{CRS.from_user_input(crs).to_string()} to the stack's "
                             f"{self.crs.to_string()}")
        sb = self.bounds
        if bx[0] < sb[0] or bx[1] < sb[1] or bx[2] > sb[2] or bx[3] > sb[3]:
            shown = ", ".join(f"{v:.0f}" for v in bx)
            held = ", ".join(f"{v:.0f}" for v in sb)
            raise ValueError(
                f"{self._label()} does not cover {what}: the stack spans ({held}) in "
                f"{self.crs.to_string()}, {what} needs ({shown}) there"
            )

    def grid_reader(self, grid: Any, columns: Sequence[str]) -> CovariateReader:
        """A :class:`CovariateReader` of ``columns`` over a map grid
        (:class:`fungi_ssl.maps.sources.MapGrid`), after checking that the stack holds
        them and covers the grid."""
        values = np.ascontiguousarray(self.require(columns))
        self.check_covers(grid.bounds, grid.crs)
        return CovariateReader(values, tuple(~self.transform)[:6], tuple(grid.transform)[:6],
                               grid.crs.to_wkt(), self.crs.to_wkt())


def open_covariate_stack(path: str | Path, *, where: str = "covariate stack") -> CovariateStack:
    """Read a GeoTIFF or Zarr stack of 1 km covariates (see the module docstring).

    Parameters
    ----------
    path : path
    where : str
        How messages name the stack (the CLI passes ``"--covariates"``).

    Raises
    ------
    FileNotFoundError
        No such file or store.
    ValueError
        Another format, a band without a name, repeated names, no CRS, or a
        grid that is not north-up.
    """
    path = Path(path)
    label = f"{where} {path}"
    if not path.exists():
        raise FileNotFoundError(f"{label} does not exist")
    kind = _kind(path, where)
    if kind == "tif":
        import rasterio

        try:
            with rasterio.open(path) as src:
                data = src.read(masked=True).astype(np.float32).filled(np.nan)
                names = list(src.descriptions)
                crs = src.crs
                transform = src.transform
        except rasterio.errors.RasterioIOError as err:
            raise ValueError(f"{label}: not a GeoTIFF GDAL can read ({err})") from None
        unnamed = [i + 1 for i, n in enumerate(names) if not n]
        if unnamed:
            raise ValueError(f"{label}: band(s) {unnamed} have no description; name each band "
                             "after its covariate (e.g. CHELSA_BIO_Annual_Mean_Temperature)")
        if crs is None:
            raise ValueError(f"{label} has no CRS")
        crs = CRS.from_wkt(crs.to_wkt())
    else:
        try:
            ds = xr.open_zarr(path, consolidated=False, decode_coords="all")
        except Exception as err:  # noqa: BLE001 - zarr raises several kinds
            raise ValueError(f"{label}: not a Zarr store xarray can open ({err})") from None
        layers = [v for v in ds.data_vars if ds[v].ndim == 2 and set(ds[v].dims) == {"y", "x"}]
        if not layers:
            raise ValueError(f"{label} holds no (y, x) variable: one variable per covariate, "
                             "named after it, is expected")
        names = [str(v) for v in layers]
        data = np.stack([ds[v].transpose("y", "x").values.astype(np.float32) for v in layers])
        rio_crs = ds[layers[0]].rio.crs or ds.rio.crs
        if rio_crs is None and "spatial_ref" in ds.variables:
            wkt = ds["spatial_ref"].attrs.get("crs_wkt") or ds["spatial_ref"].attrs.get("spatial_ref")
            rio_crs = wkt
        if rio_crs is None:
            raise ValueError(f"{label} has no CRS (write it with rioxarray's rio.write_crs)")
        crs = CRS.from_user_input(rio_crs if isinstance(rio_crs, str) else rio_crs.to_wkt())
        transform = ds[layers[0]].rio.transform()
        for v in layers:
            fill = ds[v].attrs.get("_FillValue", ds[v].encoding.get("_FillValue"))
            if fill is not None and np.isfinite(fill):
                data[layers.index(v)][data[layers.index(v)] == fill] = np.nan
    if len(set(names)) != len(names):
        raise ValueError(f"{label}: band names repeat ({names})")
    if transform.b or transform.d or transform.e >= 0:
        raise ValueError(f"{label}: the grid is not north-up (transform {tuple(transform)[:6]})")
    return CovariateStack(path, names, data, crs, transform, where)


def cells_to_stack(cells: pd.DataFrame, crs: Any, cell_size: float = 1000.0,
                   columns: Sequence[str] | None = None) -> xr.Dataset:
    """A Dataset of ``(y, x)`` layers from a table of cell centres (``x``, ``y``) and values.

    The cells must lie on one grid of ``cell_size``; cells missing from the
    table are NaN.

    Parameters
    ----------
    cells : pandas.DataFrame
        ``x``, ``y`` cell centres in ``crs`` and one column per covariate.
    crs : CRS
    cell_size : float
    columns : sequence of str, optional
        The covariates (default: every column but ``x``, ``y``, ``cell_row``,
        ``cell_col``).
    """
    skip = {"x", "y", "cell_row", "cell_col"}
    cols = [c for c in cells.columns if c not in skip] if columns is None else list(columns)
    xs = np.asarray(cells["x"], float)
    ys = np.asarray(cells["y"], float)
    x0, y1 = xs.min(), ys.max()
    ci = np.rint((xs - x0) / cell_size).astype(int)
    ri = np.rint((y1 - ys) / cell_size).astype(int)
    if not (np.allclose(x0 + ci * cell_size, xs) and np.allclose(y1 - ri * cell_size, ys)):
        raise ValueError(f"cells_to_stack: the cell centres are not on one {cell_size:g} m grid")
    nx, ny = ci.max() + 1, ri.max() + 1
    data = {}
    for c in cols:
        grid = np.full((ny, nx), np.nan, np.float32)
        grid[ri, ci] = cells[c].to_numpy(np.float32)
        data[c] = (("y", "x"), grid)
    ds = xr.Dataset(data, coords={"y": y1 - np.arange(ny) * cell_size,
                                  "x": x0 + np.arange(nx) * cell_size})
    # the transform is written, not inferred from the coordinates: one row or column has no step
    transform = Affine(cell_size, 0.0, x0 - cell_size / 2, 0.0, -cell_size, y1 + cell_size / 2)
    return ds.rio.write_crs(CRS.from_user_input(crs).to_wkt()).rio.write_transform(transform)


def _check_own_stack(path: Path) -> None:
    """Refuse to replace a folder that is not a Zarr covariate stack this package wrote."""
    import zarr

    software = None
    if path.is_dir() and not path.is_symlink():
        try:
            software = zarr.open_group(str(path), mode="r").attrs.get("software")
        except Exception:  # noqa: BLE001 (anything unreadable is not ours)
            software = None
    if software != STACK_SOFTWARE:
        raise FileExistsError(
            f"covariate stack {path} exists and is not a stack written by fungi-ssl; it is left "
            "as it is: remove it yourself or choose another path")


def write_covariate_stack(layers: xr.Dataset, path: str | Path, *, overwrite: bool = False
                          ) -> Path:
    """Write ``(y, x)`` layers with a CRS as a GeoTIFF (named bands) or a Zarr store.

    Raises
    ------
    FileExistsError
        The path exists and ``overwrite`` is False.
    ValueError
        Another suffix, or layers without a CRS.
    """
    import shutil

    path = Path(path)
    kind = _kind(path, "covariate stack")
    if path.exists() and not overwrite:
        raise FileExistsError(f"covariate stack {path} exists; pass overwrite=True to replace it")
    if layers.rio.crs is None:
        raise ValueError("write_covariate_stack: the layers have no CRS")
    names = [str(v) for v in layers.data_vars]
    if kind == "tif":
        import rasterio

        arr = np.stack([layers[v].transpose("y", "x").values.astype(np.float32) for v in names])
        if path.exists():
            if not path.is_file() or path.is_symlink():
                raise FileExistsError(
                    f"covariate stack {path} exists and is not a GeoTIFF file; it is left as it "
                    "is: remove it yourself or choose another path")
            path.unlink()
        with rasterio.open(path, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1],
                           count=len(names), dtype="float32", crs=layers.rio.crs.to_wkt(),
                           transform=layers.rio.transform(), nodata=np.nan,
                           compress="DEFLATE") as dst:
            dst.write(arr)
            for i, n in enumerate(names, start=1):
                dst.set_band_description(i, n)
            dst.update_tags(software=STACK_SOFTWARE)
        return path
    if path.exists():
        _check_own_stack(path)
        shutil.rmtree(path)
    out = layers.copy()
    out.attrs["software"] = STACK_SOFTWARE
    out.to_zarr(path, mode="w", consolidated=False)
    return path
