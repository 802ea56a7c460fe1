"""Chunked embedding of satellite cubes to Zarr, and patch sampling at points of one raster.

On-disk layout of an embedding store (a Zarr group written by
:func:`embed_cube`, opened with :func:`open_embeddings`):

``embedding`` (y, x, dim) int8
    Quantised 128-d embedding, ``value = embedding * scale``.
``scale`` (y, x) float32
    Per-pixel scale ``max|x| / 127``; NaN where the pixel had no valid S2 and
    no valid S1 observation (the embedding is then missing).
``chunk_done`` (chunk_y, chunk_x) uint8
    1 for windows already written: the completed-chunks record that lets an
    interrupted run resume.
``chunk_nan`` (chunk_y, chunk_x) int64
    NaN (no-data) pixels per window; their sum is the store's NaN count.
``spatial_ref``
    rioxarray CRS variable (``crs_wkt`` attribute, ``GeoTransform``).

The encoder only ever sees one ``chunk × chunk`` window of the cube at a time,
so memory is bounded by the chunk, not the area.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
import zarr
import zarr.errors
from rioxarray.exceptions import RioXarrayError
from tqdm import tqdm

from fungi_ssl.core import cache
from fungi_ssl.core.worker_threads import in_lanes, made_ahead
from fungi_ssl.data import coordinates
from fungi_ssl.embeddings.encoder import EncoderConfig, TrainedEncoder, pretrain
from fungi_ssl.embeddings.inference import embed_pixels, load_encoder, quantise, save_encoder
from fungi_ssl.embeddings.pixels import PixelTimeSeries, check_cube
from fungi_ssl.embeddings.tessera import dequantise

__all__ = [
    "EmbeddingRun",
    "cached_embed_cube",
    "cached_pretrain",
    "embed_cube",
    "embed_cube_in_memory",
    "open_embeddings",
    "patch_features_frame",
    "raster_patches",
]


@dataclass
class EmbeddingRun:
    """What :func:`embed_cube` did.

    Attributes
    ----------
    store : pathlib.Path
    n_pixels, n_nan : int
        Pixels in the raster; pixels with a NaN (missing) embedding so far.
    n_chunks, n_done, n_skipped : int
        Windows in total; completed (now); skipped because already done.
    complete : bool
        Every window has been written.
    """

    store: Path
    n_pixels: int
    n_nan: int
    n_chunks: int
    n_done: int
    n_skipped: int

    @property
    def complete(self) -> bool:
        return self.n_done == self.n_chunks


def _encoder_signature(model: TrainedEncoder) -> str:
    meta = {"config": model.config.to_dict(), "normaliser": model.normaliser.to_dict(),
            "steps": model.steps, "seed": model.seed, "meta": model.meta}
    h = hashlib.sha256()
    for name, tensor in model.model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    meta["weights"] = h.hexdigest()
    return cache.cache_key(meta)


def _template(cube: xr.Dataset, chunk: int, n_cy: int, n_cx: int, dim: int, attrs: dict,
              emb: Any = None, scale: Any = None, done: Any = None, nan: Any = None) -> xr.Dataset:
    """The store's Dataset: lazy zeros (to create a store), or the given arrays (in memory)."""
    ny, nx = cube.sizes["y"], cube.sizes["x"]
    if emb is None:
        emb = da.zeros((ny, nx, dim), dtype=np.int8, chunks=(chunk, chunk, dim))
        scale = da.full((ny, nx), np.nan, dtype=np.float32, chunks=(chunk, chunk))
        done = np.zeros((n_cy, n_cx), np.uint8)
        nan = np.zeros((n_cy, n_cx), np.int64)
    ds = xr.Dataset(
        {
            "embedding": (("y", "x", "dim"), emb),
            "scale": (("y", "x"), scale),
            "chunk_done": (("chunk_y", "chunk_x"), done),
            "chunk_nan": (("chunk_y", "chunk_x"), nan),
        },
        coords={"y": cube["y"].values, "x": cube["x"].values, "dim": np.arange(dim)},
        attrs=attrs,
    )
    crs = cube.rio.crs
    if crs is not None:
        ds = ds.rio.write_crs(crs)
        try:
            ds = ds.rio.write_transform(cube.rio.transform(recalc=True))
        except RioXarrayError:  # a 1-pixel-wide raster has no derivable transform
            ds.attrs["transform_note"] = "raster too narrow to derive a transform"
    return ds


_CUBE_VARIABLES = ["s2", "s2_valid", "s1", "s1_valid"]


def _embedded_windows(
    cube: xr.Dataset,
    model: TrainedEncoder,
    todo: Sequence[tuple[int, int]],
    chunk: int,
    seed: int,
    batch_size: int,
    n_draws: int,
    n_threads: int | None,
) -> Iterator[tuple[tuple[int, int], slice, slice, np.ndarray, np.ndarray, int]]:
    """Embed the windows ``todo`` of a cube: ``((i, j), ys, xs, int8, scale, n_nan)`` each, in order.

    With several windows and ``n`` cores to use (``n_threads``, default
    :func:`~fungi_ssl.embeddings.encoder.free_cores`), ``n`` lanes each load a
    window (for a lazy cube, simulate or read it) and embed it with one torch
    thread. Loading (NumPy, numba, I/O) and the encoder (torch) release the
    GIL, so the lanes run side by side. One encoder on ``n`` threads beside a
    loading thread did worse: its threads wait for each other at every
    operation, and one of them had lost its core to the loader (a simulated
    region embedded at 0.54–0.62 of the encoder's own speed; in lanes,
    0.8–0.9). With one window, or one core, the encoder gets every thread and
    the next window loads in a background thread meanwhile. Timestep draws
    are keyed by each pixel's index in the whole cube, and the encoder gives
    the same values on any number of threads, so neither the lanes nor the
    window size change a value.
    """
    from fungi_ssl.embeddings.encoder import free_cores

    ny, nx = cube.sizes["y"], cube.sizes["x"]
    dim = model.config.embed_dim
    sub = cube[_CUBE_VARIABLES]
    cores = int(n_threads) if n_threads else free_cores()
    lanes = max(1, min(cores, len(todo)))

    def window(i: int, j: int, scheduler: str | None = None) -> tuple[slice, slice, xr.Dataset]:
        ys = slice(i * chunk, min(ny, (i + 1) * chunk))
        xs = slice(j * chunk, min(nx, (j + 1) * chunk))
        return ys, xs, sub.isel(y=ys, x=xs).compute(scheduler=scheduler)

    def embedded(ys: slice, xs: slice, data: xr.Dataset, threads: int):
        pixels = PixelTimeSeries.from_cube(data)
        del data
        rows, cols = np.meshgrid(np.arange(ys.start, ys.stop), np.arange(xs.start, xs.stop),
                                 indexing="ij")
        ids = (rows * nx + cols).ravel().astype(np.int64)
        emb, flags = embed_pixels(model, pixels, batch_size=batch_size, seed=seed,
                                  pixel_ids=ids, return_flags=True, n_draws=n_draws,
                                  n_threads=threads)
        q, s = quantise(emb)
        wy, wx = ys.stop - ys.start, xs.stop - xs.start
        return ys, xs, q.reshape(wy, wx, dim), s.reshape(wy, wx), flags.n_nan

    if not todo:
        return
    if lanes == 1:
        for ij, loaded in zip(todo, made_ahead(list(todo), window)):
            yield (ij, *embedded(*loaded, cores))
        return

    def lane(i: int, j: int):  # the lane's own thread computes its window's blocks
        return embedded(*window(i, j, "synchronous"), 1)

    for ij, done in zip(todo, in_lanes(list(todo), lane, lanes)):
        yield (ij, *done)


def embed_cube(
    cube: xr.Dataset,
    model: TrainedEncoder,
    store: str | Path,
    chunk: int = 256,
    seed: int = 0,
    batch_size: int = 8192,
    max_chunks: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    n_draws: int = 1,
    n_threads: int | None = None,
) -> EmbeddingRun:
    """Embed a satellite cube window by window into a Zarr store.

    Each ``chunk × chunk`` window of the cube is loaded (dask ``.compute()``;
    the next window loads in a background thread while this one is embedded),
    embedded with :func:`fungi_ssl.embeddings.inference.embed_pixels` (timestep draws keyed
    by each pixel's global index, so results do not depend on ``chunk``),
    quantised to int8 plus scale and written to its region of the store. After
    each window the completed-chunks record is updated, so re-running on an
    existing store skips finished windows.

    Parameters
    ----------
    cube : xarray.Dataset
        Satellite cube in the CONTRIBUTING.md format (may be dask-backed).
    model : TrainedEncoder
    store : path
        Zarr directory to create or resume.
    chunk : int
        Window side in pixels, also the store's chunk size.
    seed : int
        Seed of the timestep draws.
    max_chunks : int, optional
        Stop after this many newly embedded windows (an interruption on purpose).
    overwrite : bool
        Replace a store made with other parameters instead of raising.
    n_draws : int
        Timestep draws averaged per pixel (see
        :func:`fungi_ssl.embeddings.inference.embed_pixels`); recorded in the store.
    n_threads : int, optional
        Torch threads of the encoder (default :func:`fungi_ssl.embeddings.encoder.torch_threads`'s).
        One thread avoids two threads waiting on each other on a loaded machine.

    Returns
    -------
    EmbeddingRun

    Examples
    --------
    >>> import tempfile, os
    >>> from fungi_ssl.embeddings.encoder import TesseraEncoder, TrainedEncoder, EncoderConfig
    >>> from fungi_ssl.embeddings.pixels import example_cube
    >>> cube = example_cube(4, 5)  # a small random cube
    >>> enc = TesseraEncoder(EncoderConfig()).eval()
    >>> trained = TrainedEncoder(enc, enc.config, enc.normaliser)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     run = embed_cube(cube, trained, os.path.join(d, "e.zarr"), chunk=2, progress=False)
    ...     ds = open_embeddings(run.store)
    ...     print(run.complete, ds["embedding"].shape, ds.rio.crs.to_epsg())
    True (4, 5, 128) 32630
    """
    if not isinstance(model, TrainedEncoder):
        raise ValueError(  # noqa: TRY004 (project rule: bad input is a ValueError)
            f"embed_cube: model must be a TrainedEncoder, got {type(model).__name__}"
        )
    if int(chunk) < 1:
        raise ValueError(f"embed_cube: chunk must be ≥ 1, got {chunk}")
    chunk = int(chunk)
    check_cube(cube)
    store = Path(store)
    ny, nx = cube.sizes["y"], cube.sizes["x"]
    n_cy, n_cx = -(-ny // chunk), -(-nx // chunk)
    dim = model.config.embed_dim
    attrs = _store_attrs(cube, model, chunk, seed, n_draws)
    if store.exists() and not overwrite:
        try:
            old = xr.open_zarr(store, consolidated=False)
            # stores written before n_draws existed averaged one draw
            recorded = {"n_draws": 1, **old.attrs}
            same = all(str(recorded.get(k)) == str(v) for k, v in attrs.items() if k != "description")
        except (OSError, ValueError, KeyError, zarr.errors.BaseZarrError):
            same = False  # not a readable embedding store
        if not same:
            raise ValueError(
                f"embed_cube: store {store} exists but was made with other parameters "
                "(encoder, seed, n_draws, chunk or shape); pass overwrite=True or another path"
            )
    else:
        tmpl = _template(cube, chunk, n_cy, n_cx, dim, attrs)
        tmpl.to_zarr(store, mode="w", compute=False, consolidated=False)
        # the small bookkeeping arrays are written eagerly
        root = zarr.open_group(str(store), mode="r+")
        root["chunk_done"][:] = 0
        root["chunk_nan"][:] = 0

    root = zarr.open_group(str(store), mode="r+")
    done = np.asarray(root["chunk_done"][:]).astype(bool)
    n_skipped = int(done.sum())
    todo = [(i, j) for i in range(n_cy) for j in range(n_cx) if not done[i, j]]
    if max_chunks is not None:
        todo = todo[: max(0, int(max_chunks))]
    windows = _embedded_windows(cube, model, todo, chunk, seed, batch_size, n_draws, n_threads)
    for (i, j), ys, xs, q, s, n_nan in tqdm(windows, total=len(todo), desc="embedding chunks",
                                            disable=not progress):
        root["embedding"][ys, xs, :] = q
        root["scale"][ys, xs] = s
        root["chunk_nan"][i, j] = n_nan
        root["chunk_done"][i, j] = 1  # last: the window is only "done" once written
    done = np.asarray(root["chunk_done"][:]).astype(bool)
    n_nan = int(np.asarray(root["chunk_nan"][:]).sum())
    run = EmbeddingRun(store, ny * nx, n_nan, n_cy * n_cx, int(done.sum()), n_skipped)
    if run.complete and n_nan:
        warnings.warn(
            f"embed_cube: {n_nan} of {ny * nx} pixels have no valid S2 or S1 observation; "
            "their embeddings are NaN (scale NaN)", stacklevel=2,
        )
    return run


def _store_attrs(cube: xr.Dataset, model: TrainedEncoder, chunk: int, seed: int,
                 n_draws: int) -> dict[str, Any]:
    """What an embedding store records of how it was made."""
    return {
        "encoder": _encoder_signature(model),
        "seed": int(seed),
        "n_draws": int(n_draws),
        "chunk": int(chunk),
        "shape": json.dumps([cube.sizes["y"], cube.sizes["x"], model.config.embed_dim]),
        "description": "TESSERA-style int8 embeddings; value = embedding * scale",
    }


def embed_cube_in_memory(
    cube: xr.Dataset,
    model: TrainedEncoder,
    chunk: int = 256,
    seed: int = 0,
    batch_size: int = 8192,
    progress: bool = False,
    n_draws: int = 1,
    n_threads: int | None = None,
) -> xr.Dataset:
    """:func:`embed_cube` into memory: the Dataset ``open_embeddings(store).load()`` would give.

    The same windows, timestep draws and quantisation as :func:`embed_cube`
    (so the same int8 values and scales), without writing a Zarr store and
    reading it back: for cubes embedded to be mapped at once and thrown away
    (chapter 08's replicate worlds, :func:`fungi_ssl.region.workflow.write_simulated_tiles`),
    where the store's creation costs as much as embedding a small window.
    Nothing resumes, so use :func:`embed_cube` for long runs.

    Examples
    --------
    >>> from fungi_ssl.embeddings.encoder import TesseraEncoder, TrainedEncoder, EncoderConfig
    >>> from fungi_ssl.embeddings.pixels import example_cube
    >>> cube = example_cube(4, 5)  # a small random cube
    >>> enc = TesseraEncoder(EncoderConfig()).eval()
    >>> ds = embed_cube_in_memory(cube, TrainedEncoder(enc, enc.config, enc.normaliser), chunk=2)
    >>> ds["embedding"].shape, ds.attrs["complete"], ds.rio.crs.to_epsg()
    ((4, 5, 128), True, 32630)
    """
    if not isinstance(model, TrainedEncoder):
        raise ValueError(  # noqa: TRY004 (project rule: bad input is a ValueError)
            f"embed_cube_in_memory: model must be a TrainedEncoder, got {type(model).__name__}"
        )
    if int(chunk) < 1:
        raise ValueError(f"embed_cube_in_memory: chunk must be ≥ 1, got {chunk}")
    chunk = int(chunk)
    check_cube(cube)
    ny, nx = cube.sizes["y"], cube.sizes["x"]
    n_cy, n_cx = -(-ny // chunk), -(-nx // chunk)
    dim = model.config.embed_dim
    emb = np.zeros((ny, nx, dim), np.int8)
    scale = np.full((ny, nx), np.nan, np.float32)
    nan = np.zeros((n_cy, n_cx), np.int64)
    todo = [(i, j) for i in range(n_cy) for j in range(n_cx)]
    windows = _embedded_windows(cube, model, todo, chunk, seed, batch_size, n_draws, n_threads)
    for (i, j), ys, xs, q, s, n_nan in tqdm(windows, total=len(todo), desc="embedding chunks",
                                            disable=not progress):
        emb[ys, xs] = q
        scale[ys, xs] = s
        nan[i, j] = n_nan
    attrs = _store_attrs(cube, model, chunk, seed, n_draws)
    ds = _template(cube, chunk, n_cy, n_cx, dim, attrs, emb, scale,
                   np.ones((n_cy, n_cx), np.uint8), nan)
    n_nan = int(nan.sum())
    ds.attrs.update(n_nan=n_nan, complete=True)
    if n_nan:
        warnings.warn(
            f"embed_cube: {n_nan} of {ny * nx} pixels have no valid S2 or S1 observation; "
            "their embeddings are NaN (scale NaN)", stacklevel=2,
        )
    return ds


def open_embeddings(store: str | Path) -> xr.Dataset:
    """Open an embedding store lazily (dask), with its CRS.

    The NaN count is in ``attrs["n_nan"]``; ``attrs["complete"]`` says whether
    every window has been written.
    """
    store = Path(store)
    if not store.exists():
        raise FileNotFoundError(f"open_embeddings: no embedding store at {store}")
    ds = xr.open_zarr(store, consolidated=False)
    if "embedding" not in ds or "scale" not in ds:
        raise ValueError(f"open_embeddings: {store} has no 'embedding'/'scale' arrays")
    if "spatial_ref" in ds.coords or "spatial_ref" in ds:
        ds = ds.set_coords("spatial_ref") if "spatial_ref" in ds.data_vars else ds
    ds.attrs["n_nan"] = int(ds["chunk_nan"].values.sum())
    ds.attrs["complete"] = bool(ds["chunk_done"].values.all())
    return ds


def _pixel_index(coord: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the pixel containing each value, and whether it is inside."""
    c0 = float(coord[0])
    step = float(coord[1] - coord[0]) if len(coord) > 1 else 1.0
    pos = (np.asarray(values, float) - c0) / step
    idx = np.floor(pos + 0.5).astype(np.int64)
    inside = np.isfinite(pos) & (idx >= 0) & (idx < len(coord))
    return idx, inside


def raster_patches(
    emb_ds: xr.Dataset,
    x: Sequence[float] | None = None,
    y: Sequence[float] | None = None,
    longitude: Sequence[float] | None = None,
    latitude: Sequence[float] | None = None,
    k: int = 3,
) -> xr.DataArray:
    """Dequantised k×k patches centred on points, from one embedding raster.

    The raster is any Dataset with ``embedding (y, x, dim)`` int8 and
    ``scale (y, x)``: an embedding store (:func:`open_embeddings`) or one
    TESSERA tile (:func:`fungi_ssl.embeddings.tessera.open_tile`). For points spread over
    a directory of TESSERA tiles use :func:`fungi_ssl.embeddings.tessera_patches.sample_patches`,
    which returns patches in the same layout.

    Points are given in the raster CRS (``x``, ``y``) or as WGS84
    ``longitude``/``latitude`` (reprojected with
    :func:`fungi_ssl.data.coordinates.lonlat_to_crs`). A point outside the raster
    gets an all-NaN patch; patch cells beyond the raster edge, and pixels with
    a non-finite scale (no data), are NaN too. A warning counts both kinds.

    Parameters
    ----------
    emb_ds : xarray.Dataset
        The embedding raster, with ``x``/``y`` pixel-centre coordinates (and a
        CRS when points are given as lon/lat).
    x, y : array_like, optional
        Points in the raster CRS.
    longitude, latitude : array_like, optional
        Points in WGS84 degrees (NaN gives an all-NaN patch).
    k : int
        Odd patch width in pixels (3 gives the study's 3×3×128 = 1,152 features).

    Returns
    -------
    xarray.DataArray
        float32 ``(sample, row, col, dim)`` = ``(n, k, k, dim)`` in input
        order; ``row``/``col`` are pixel offsets from the centre pixel (row +1
        is the next raster row, one pixel south on a north-up raster; col +1 one
        pixel east). ``.values.reshape(n, -1)`` is the (row, col, dim)
        flattening of :func:`patch_features_frame`. ``attrs["n_outside"]``
        counts points outside the raster, ``attrs["n_incomplete"]`` points
        inside whose patch has NaN pixels.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> ds = xr.Dataset({"embedding": (("y", "x", "dim"), np.ones((4, 4, 2), np.int8)),
    ...                  "scale": (("y", "x"), np.ones((4, 4), np.float32))},
    ...                 coords={"y": [35., 25., 15., 5.], "x": [5., 15., 25., 35.]})
    >>> p = raster_patches(ds, x=[15.0], y=[25.0])
    >>> p.dims, p.shape, float(np.nansum(p)), p.attrs["n_outside"]
    (('sample', 'row', 'col', 'dim'), (1, 3, 3, 2), 18.0, 0)
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 or k % 2 == 0:
        raise ValueError(f"raster_patches: k must be a positive odd integer, got {k!r}")
    if (x is None) != (y is None) or (longitude is None) != (latitude is None):
        raise ValueError("raster_patches: give both x and y, or both longitude and latitude")
    if (x is None) == (longitude is None):
        raise ValueError("raster_patches: give either x/y (raster CRS) or longitude/latitude, not both")
    if longitude is not None:
        lon = np.atleast_1d(np.asarray(longitude, float))
        lat = np.atleast_1d(np.asarray(latitude, float))
        coordinates.check_lonlat(lon, lat, "raster_patches", allow_nan=True)
        crs = emb_ds.rio.crs
        if crs is None:
            raise ValueError("raster_patches: the embedding Dataset has no CRS to project lon/lat into")
        px, py = coordinates.lonlat_to_crs(lon, lat, crs)
        px, py = np.atleast_1d(np.asarray(px, float)), np.atleast_1d(np.asarray(py, float))
    else:
        px, py = np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float))
    if px.shape != py.shape:
        raise ValueError(f"raster_patches: x and y have different lengths ({px.size}, {py.size})")
    cols, in_x = _pixel_index(emb_ds["x"].values, px)
    rows, in_y = _pixel_index(emb_ds["y"].values, py)
    inside = in_x & in_y
    n, h = px.size, k // 2
    ny, nx = emb_ds.sizes["y"], emb_ds.sizes["x"]
    dim = emb_ds.sizes["dim"]
    out = np.full((n, k, k, dim), np.nan, np.float32)
    emb = emb_ds["embedding"]
    scale = emb_ds["scale"]
    pts = np.flatnonzero(inside)
    for a in range(k):
        for b in range(k):
            r, c = rows[pts] + a - h, cols[pts] + b - h
            ok = (r >= 0) & (r < ny) & (c >= 0) & (c < nx)
            if not ok.any():
                continue
            rr = xr.DataArray(r[ok], dims="point")
            cc = xr.DataArray(c[ok], dims="point")
            q = np.asarray(emb.isel(y=rr, x=cc).transpose("point", "dim").values)
            s = np.asarray(scale.isel(y=rr, x=cc).values, np.float32)
            out[pts[ok], a, b, :] = dequantise(q, s)
    n_out = int((~inside).sum())
    n_incomplete = int((inside & np.isnan(out).any(axis=(1, 2, 3))).sum())
    if n_out or n_incomplete:
        warnings.warn(
            f"raster_patches: {n_out} of {n} points lie outside the raster (all NaN) and "
            f"{n_incomplete} have a {k}×{k} patch with NaN pixels (raster edge or no-data pixel)",
            UserWarning, stacklevel=2,
        )
    offsets = np.arange(-h, h + 1)
    return xr.DataArray(
        out,
        dims=("sample", "row", "col", "dim"),
        coords={"sample": np.arange(n), "row": offsets, "col": offsets, "dim": np.arange(dim)},
        name="embedding_patch",
        attrs={"k": int(k), "n_outside": n_out, "n_incomplete": n_incomplete},
    )


def patch_features_frame(patches: np.ndarray | xr.DataArray, sample_ids: Sequence[Any]) -> pd.DataFrame:
    """Flatten ``(n, k, k, dim)`` patches to ``ssl_0000 …`` columns (row, col, dim order).

    ``patches`` is the output of :func:`raster_patches` or
    :func:`fungi_ssl.embeddings.tessera_patches.sample_patches` (a ``(sample, row, col, dim)``
    DataArray), or the same values as a numpy array.

    Examples
    --------
    >>> import numpy as np
    >>> df = patch_features_frame(np.zeros((2, 3, 3, 128), np.float32), ["a", "b"])
    >>> df.shape, df.columns[-1], df.index.name
    ((2, 1152), 'ssl_1151', 'sample_id')
    """
    if isinstance(patches, xr.DataArray) and set(patches.dims) == {"sample", "row", "col", "dim"}:
        patches = patches.transpose("sample", "row", "col", "dim")
    patches = np.asarray(patches, np.float32)
    if patches.ndim != 4:
        raise ValueError(f"patch_features_frame: patches must be (n, k, k, dim), got {patches.shape}")
    ids = list(sample_ids)
    if len(ids) != patches.shape[0]:
        raise ValueError(
            f"patch_features_frame: {len(ids)} sample_ids for {patches.shape[0]} patches"
        )
    flat = patches.reshape(patches.shape[0], -1)
    cols = [f"ssl_{i:04d}" for i in range(flat.shape[1])]
    return pd.DataFrame(flat, index=pd.Index(ids, name="sample_id"), columns=cols)


def cached_pretrain(
    pixels: PixelTimeSeries | Callable[[], PixelTimeSeries],
    config: EncoderConfig | None = None,
    steps: int = 300,
    batch_size: int = 512,
    seed: int = 0,
    data_params: dict[str, Any] | None = None,
    root: str | Path | None = None,
    **kwargs: Any,
) -> tuple[TrainedEncoder, pd.DataFrame]:
    """:func:`fungi_ssl.embeddings.encoder.pretrain`, cached under ``data/cache/encoder/<key>``.

    The key covers the config, steps, batch size, seed, every extra keyword
    (``lr``, ``warmup`` …) and the training data: ``data_params`` (e.g. the
    simulation parameters) when given, otherwise a hash of the pixel arrays.
    ``pixels`` may be a function that makes them: it is then called only when
    nothing is cached (with ``data_params``, a cache hit never builds them).
    An interrupted training resumes from its checkpoint in the same directory.
    """
    config = config or EncoderConfig()
    if data_params is None and callable(pixels):
        pixels = pixels()
    kwargs.pop("checkpoint_dir", None)
    progress = kwargs.pop("progress", True)
    params = {
        "config": config.to_dict(), "steps": steps, "batch_size": batch_size, "seed": seed,
        "options": {k: v for k, v in sorted(kwargs.items())
                    if k not in ("n_threads", "view_threads")},
        "data": data_params if data_params is not None else {"pixels": pixels.fingerprint()},
    }
    d = cache.cache_dir("encoder", params, root=Path(root) if root is not None else None)
    enc_path, hist_path = d / "encoder.pt", d / "history.csv"
    if enc_path.exists() and hist_path.exists():
        return load_encoder(enc_path), pd.read_csv(hist_path)
    if callable(pixels):
        pixels = pixels()
    trained, history = pretrain(pixels, config, steps, batch_size, seed,
                                checkpoint_dir=d / "checkpoints", progress=progress, **kwargs)
    history.to_csv(hist_path, index=False)
    save_encoder(trained, enc_path)
    return trained, history


def cached_embed_cube(
    cube: xr.Dataset,
    model: TrainedEncoder,
    cube_params: dict[str, Any],
    chunk: int = 256,
    seed: int = 0,
    root: str | Path | None = None,
    n_draws: int = 1,
    **kwargs: Any,
) -> xr.Dataset:
    """:func:`embed_cube` into ``data/cache/embeddings/<key>/embeddings.zarr``.

    ``cube_params`` must identify the cube (e.g. simulation parameters, tile
    and year); the key also covers the encoder, ``chunk``, ``seed`` and
    ``n_draws``. A finished store is reopened; an unfinished one resumes.
    """
    params = {"cube": cube_params, "encoder": _encoder_signature(model),
              "chunk": chunk, "seed": seed, "n_draws": int(n_draws)}
    d = cache.cache_dir("embeddings", params, root=Path(root) if root is not None else None)
    store = d / "embeddings.zarr"
    if store.exists():
        ds = open_embeddings(store)
        if ds.attrs["complete"]:
            return ds
    embed_cube(cube, model, store, chunk=chunk, seed=seed, n_draws=n_draws, **kwargs)
    return open_embeddings(store)
