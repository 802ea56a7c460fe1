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
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from tqdm import tqdm

from fungi_ssl.maps.mapmodel import MapModel
from fungi_ssl.maps.outputs import (
    DEFAULT_GUILD,
    _as_dataarray,
    _check_output,
    _make_writer,
    _model_attrs,
    map_units,
    open_map,
)
from fungi_ssl.maps.sources import DEFAULT_CHUNK, BlockReader, MapGrid, open_embedding_source

__all__ = [
    "DEFAULT_WINDOW",
    "PATCH_SIZE",
    "SCHEDULER_ENV",
    "MapRun",
    "predict_map",
]

#: Environment variable holding a dask.distributed scheduler address.
SCHEDULER_ENV = "FUNGI_SSL_DASK_SCHEDULER"
#: Side of the windows computed one after another (pixels).
DEFAULT_WINDOW = 1024
#: The study's patch: 3 × 3 pixels.
PATCH_SIZE = 3

#: Share of NaN pixels above which ``predict_map`` warns (1%).
NAN_WARN_SHARE = 0.01

Quantity = Literal["richness", "log_richness"]


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
    """Where block tasks run: ``submit(fn, *args)`` gives a future; ``share`` ships an object once.

    ``near(band, n_bands)`` gives ``submit``'s placement for a block in band
    ``band`` of ``n_bands`` contiguous bands of its window: on a cluster, the
    band's worker (others may still take it), so that the blocks whose halos
    reach into the same stored chunks are read by one worker, which decodes
    each chunk once (``sources.CHUNK_CACHE_BYTES``); in one process, nothing.
    """

    submit: Any
    share: Any
    threads: int
    near: Any = None

    def place(self, band: int, n_bands: int) -> dict[str, Any]:
        return self.near(band, n_bands) if self.near else {}


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
        workers = sorted(client.nthreads())

        def near(band: int, n_bands: int) -> dict[str, Any]:
            if len(workers) < 2:
                return {}
            return {"workers": [workers[band * len(workers) // max(1, n_bands)]],
                    "allow_other_workers": True}

        return _Pool(lambda fn, *args, **kw: client.submit(fn, *args, pure=False, **kw),
                     lambda obj: client.scatter(obj, broadcast=True, hash=False),
                     max(1, sum(client.nthreads().values())), near)

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
            rows = sorted({b[0] for b in blocks})  # the window's block rows, in bands
            futures = [pool.submit(_map_block, readers[yi], model_ref, *b, halo, quantity,
                                   covariates, **pool.place(rows.index(b[0]), len(rows)))
                       for b in blocks]
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
    warn_nan: bool = True,
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
    warn_nan : bool
        Warn when more than :data:`NAN_WARN_SHARE` of the pixels have no
        prediction, saying how many and why. The book's simulated windows,
        embedded with no margin, pass ``False``: their one-pixel ring has no
        full patch by design, and their analyses leave it out.

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
    if warn_nan and n_pixels and n_nan > NAN_WARN_SHARE * n_pixels:
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


# --------------------------------------------------------------------------
