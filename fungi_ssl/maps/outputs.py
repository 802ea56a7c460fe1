"""Map outputs: checks before writing, the COG and Zarr writers, and reading maps back.

Used by :func:`fungi_ssl.maps.predict.predict_map`, whose module docstring
describes the outputs: a Cloud-Optimised GeoTIFF per year or a Zarr stack,
written under a temporary name and renamed when complete. :func:`open_map`
reads either back, :func:`map_units` names what a map holds and
:func:`aggregate_map` turns a 10 m map into 1 km cells.
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import rioxarray  # also registers the .rio accessor
import xarray as xr
from affine import Affine

from fungi_ssl.maps.mapmodel import MapModel
from fungi_ssl.maps.sources import MapGrid

__all__ = [
    "aggregate_map",
    "open_map",
]

#: The guild a map model is taken to be of when it records none.
DEFAULT_GUILD = "ECM"


def _output_kind(output: Path) -> str:
    suffix = output.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return "cog"
    if suffix == ".zarr":
        return "zarr"
    raise ValueError(
        f"output {output}: expected a .tif/.tiff (Cloud-Optimised GeoTIFF) or a .zarr path"
    )


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
        # the band says what it holds: species (richness) or log1p(species), and whose; a
        # composite map (fungi_ssl.maps.composite) also says which map it is
        self.dst.set_band_description(1, tags.get("band_description") or (
            f"{tags.get('quantity', 'richness')}: {tags.get('units', '')}".rstrip(": ")))
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


def _as_dataarray(values: np.ndarray, grid: MapGrid, years: list[int] | None, name: str,
                  attrs: dict[str, Any]) -> xr.DataArray:
    dims: tuple[str, ...] = ("y", "x")
    coords: dict[str, Any] = {"y": grid.y, "x": grid.x}
    if years is not None:
        dims = ("year", "y", "x")
        coords["year"] = years
    arr = xr.DataArray(values, dims=dims, coords=coords, name=name, attrs=attrs)
    return arr.rio.write_crs(grid.crs.to_wkt()).rio.write_transform(grid.transform)
