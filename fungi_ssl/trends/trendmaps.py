"""Yearly richness maps of the UK park windows, in a changing and in a null world (chapter 08).

Chapter 08 scores the trend analysis of :mod:`fungi_ssl.trends` against the
simulated truth. This module makes its inputs:

* **woodland polygons** per park window (:func:`woodland_stands`): one
  polygon per woodland *stand* (the simulator's crisp units, median about a
  hectare and a half), flagged ``ancient`` or ``other``, like the parcels of
  an ancient-woodland inventory. Connected woodland of one kind
  (:meth:`~fungi_ssl.simulate.SimulatedStudy.park_woodland`) merges a park's
  ancient stands into one or two polygons, too few for a bootstrap over
  polygons; stands give tens per park;
* **the book's map model** (:func:`book_map_model`): chapter 04's ``ssl``
  chain refitted on every sample (:class:`~fungi_ssl.mapmodel.MapModel`),
  cached under ``data/cache/mapmodel``;
* **yearly maps** (:func:`park_maps`): for each park and year, that year's
  simulated Sentinel cube embedded by the chapter-02 encoder
  (:func:`~fungi_ssl.embed.cached_embed_cube`) and mapped by
  :func:`~fungi_ssl.maps.predict_map` on the model's ``log1p(rarefied)``
  scale; each map cached per (world, park, window, year, encoder, model);
* **the truth** (:func:`truth_stack`): ``log1p`` of
  :func:`~fungi_ssl.simulate.truth.truth_layer`, the mean ``log1p(rarefied)``
  of a core at each pixel, the maps' own estimand;
* **the null world** (:func:`null_world`, :class:`StaticLandscape`): the same
  parks with the landscape of 2017 held fixed (no canopy decline, no
  clear-cuts, no regrowth or ageing, no richness trend), but each year's own
  weather (green-up timing, the 2018 and 2022 droughts in the sensors and in
  richness) and each year's own clouds, haze and sensor noise. The world of
  2017 is the same in both.

The null world is built outside :mod:`fungi_ssl.simulate`, from the
simulator's public :meth:`~fungi_ssl.simulate.landscape.Landscape.layers`:
the simulator has no switch for its change processes, and an edit there
would change every cache key of the book.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from tqdm import tqdm

from fungi_ssl.core import cache, config
from fungi_ssl.simulate import SimulatedStudy
from fungi_ssl.simulate.communities import true_log_richness
from fungi_ssl.simulate.landscape import (
    DROUGHT_YEARS,
    PIXEL_SIZE,
    WATER,
    WOODLAND_CODES,
    Landscape,
    Window,
)

if TYPE_CHECKING:  # pragma: no cover
    import geopandas as gpd

    from fungi_ssl.embeddings.encoder import TrainedEncoder
    from fungi_ssl.maps.mapmodel import MapModel

__all__ = [
    "MIN_DECLINE",
    "NORMALISATION",
    "NULL_BASE_YEAR",
    "NULL_WORLD_VERSION",
    "N_REPLICATE_WORLDS",
    "PARK_WINDOW_PX",
    "REPLICATE_VERSION",
    "REPLICATE_WINDOW_PX",
    "SLOPE_TOLERANCE",
    "WORLDS",
    "ParkMaps",
    "ReplicateWorlds",
    "ResensedLandscape",
    "StaticLandscape",
    "TrendAnalysis",
    "book_map_model",
    "null_world",
    "park_maps",
    "park_window",
    "reference_offsets",
    "replicate_maps",
    "replicate_seed",
    "replicate_study",
    "replicate_worlds",
    "trend_analysis",
    "truth_stack",
    "woodland_stands",
]

#: Version of the null world's definition (part of its cache keys).
NULL_WORLD_VERSION = 1
#: The year whose landscape the null world keeps.
NULL_BASE_YEAR = 2017
#: The two worlds of chapter 08.
WORLDS: tuple[str, str] = ("changing", "null")
#: Side (pixels of 10 m) of each park's square window, per book profile.
PARK_WINDOW_PX: dict[str, int] = {"quick": 48, "full": 72}


# --------------------------------------------------------------------------
# the null world
# --------------------------------------------------------------------------


class StaticLandscape(Landscape):
    """The simulated landscape frozen in ``base_year``, with each year's weather.

    :meth:`layers` returns the layers of ``base_year`` whatever year is asked
    (land cover, canopy, stand ages, ancient and declining flags), so nothing
    is cut, nothing declines and nothing grows. Only the weather changes from
    year to year: richness takes the drought effect of the year asked (2018
    and 2022, as in the changing world), and the sensors
    (:func:`~fungi_ssl.simulate.sensors.sentinel_observations`), which read
    the year itself for green-up weather, drought, clouds, haze and noise,
    see the same year-to-year weather and clouds as in the changing world.

    Examples
    --------
    >>> from fungi_ssl.simulate import SimulatedStudy
    >>> from fungi_ssl.simulate.landscape import Window
    >>> s = SimulatedStudy(n_samples=300, n_campaigns=8)
    >>> still = StaticLandscape(s.config.seed, s.config.richness, s.config.landscape)
    >>> w = Window.around(-3.08, 54.48, 16)
    >>> a = still.layers(np.array([w.epsg]), w.x[None], w.y[None], 2024)
    >>> b = s.landscape.layers(np.array([w.epsg]), w.x[None], w.y[None], 2017)
    >>> bool(np.array_equal(a["canopy"], b["canopy"])), bool(np.array_equal(a["stand_age"], b["stand_age"]))
    (True, True)
    """

    def __init__(self, seed: int, richness=None, model=None, base_year: int = NULL_BASE_YEAR):
        super().__init__(seed, richness, model)
        if int(base_year) in DROUGHT_YEARS:
            raise ValueError(f"base_year must not be a drought year {DROUGHT_YEARS}, got {base_year}")
        self.base_year = int(base_year)

    def layers(self, epsg: np.ndarray, xs: np.ndarray, ys: np.ndarray,
               year: int | np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`Landscape.layers` of ``base_year``, with the drought of ``year``."""
        B = xs.shape[0]
        L = super().layers(epsg, xs, ys, self.base_year)
        year_b = np.broadcast_to(np.asarray(year, dtype=np.int64), (B,))
        inputs = dict(L["richness_inputs"])
        inputs["drought"] = L["europe"] & np.isin(year_b, DROUGHT_YEARS)[:, None, None]
        log_s = true_log_richness(model=self.rm, **inputs)
        L["log_richness"] = np.where(L["landcover"] == WATER, -np.inf, log_s)
        L["richness_inputs"] = inputs
        return L


def null_world(study: SimulatedStudy, base_year: int = NULL_BASE_YEAR) -> SimulatedStudy:
    """The same study in a world without change (:class:`StaticLandscape`).

    Parks, windows, sensors and richness model are the study's; only the
    landscape is frozen in ``base_year``.
    """
    other = SimulatedStudy(study.config)
    c = study.config
    other.landscape = StaticLandscape(c.seed, c.richness, c.landscape, base_year=base_year)
    return other


def _world_study(study: SimulatedStudy, world: str) -> SimulatedStudy:
    if world not in WORLDS:
        raise ValueError(f"world must be one of {list(WORLDS)}, got {world!r}")
    if world == "changing":
        return study
    cached = study.__dict__.get("_null_world")
    if cached is None:
        cached = study.__dict__["_null_world"] = null_world(study)
    return cached


def park_window(study: SimulatedStudy, park: str, size: int) -> Window:
    """:meth:`SimulatedStudy.park_window`, remembered on the study (choosing one takes seconds)."""
    memo = study.__dict__.setdefault("_park_windows", {})
    key = (park, int(size))
    if key not in memo:
        memo[key] = study.park_window(park, int(size))
    return memo[key]


# --------------------------------------------------------------------------
# polygons
# --------------------------------------------------------------------------


def woodland_stands(study: SimulatedStudy, park: str, size: int, year: int = 2017,
                    min_area_ha: float = 0.25) -> gpd.GeoDataFrame:
    """Woodland polygons of a park window, one per stand, flagged ``ancient`` or ``other``.

    A polygon is a connected set of woodland pixels of one stand and one
    kind in ``year`` (the baseline), traced from the 10 m grid, so
    :func:`fungi_ssl.trends.label_map` reproduces it exactly. Polygons below
    ``min_area_ha`` are dropped.

    Returns
    -------
    geopandas.GeoDataFrame
        ``polygon_id``, ``park``, ``woodland``, ``area_ha``, ``declining``
        (truth: the stand's canopy and richness decline; for the chapter's
        checks only, never a predictor), geometry in the window's UTM CRS.

    Examples
    --------
    >>> from fungi_ssl.simulate import SimulatedStudy
    >>> p = woodland_stands(SimulatedStudy(n_samples=300, n_campaigns=8), "Lake District", 32)
    >>> list(p.columns)[:5], p.crs.to_epsg()
    (['polygon_id', 'park', 'woodland', 'area_ha', 'declining'], 32630)
    """
    import geopandas as gpd
    import rasterio.features
    from affine import Affine
    from pyproj import CRS
    from scipy import ndimage
    from shapely.geometry import shape

    if int(size) < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    w = park_window(study, park, size)
    L = study.landscape.layers(np.array([w.epsg]), w.x[None], w.y[None], int(year))
    lc, ancient = L["landcover"][0], L["ancient"][0]
    stand, declining = L["stand"][0], L["declining"][0]
    wood = np.isin(lc, WOODLAND_CODES)
    key = np.where(wood, stand * 2 + ancient.astype(np.int64), 0)
    _, inv = np.unique(key, return_inverse=True)
    inv = inv.reshape(key.shape).astype(np.int32) + 1
    inv[~wood] = 0
    labels = np.zeros(key.shape, dtype=np.int32)
    n = 0
    for code in np.unique(inv[inv > 0]):            # connected parts of each stand-kind
        part, k = ndimage.label(inv == code)
        labels[part > 0] = part[part > 0] + n
        n += k
    transform = Affine(PIXEL_SIZE, 0.0, w.col0 * PIXEL_SIZE, 0.0, -PIXEL_SIZE, -w.row0 * PIXEL_SIZE)
    geoms: dict[int, list] = {}
    for geom, value in rasterio.features.shapes(labels, mask=labels > 0, transform=transform):
        geoms.setdefault(int(value), []).append(shape(geom))
    from shapely.ops import unary_union

    rows = []
    for value, parts in sorted(geoms.items()):
        pix = labels == value
        rows.append({"woodland": "ancient" if bool(ancient[pix][0]) else "other",
                     "declining": bool(declining[pix].mean() > 0.5),
                     "n_grid_pixels": int(pix.sum()),
                     "geometry": unary_union(parts)})
    gdf = gpd.GeoDataFrame(rows, columns=["woodland", "declining", "n_grid_pixels", "geometry"],
                           geometry="geometry", crs=CRS.from_epsg(w.epsg))
    gdf["area_ha"] = gdf["n_grid_pixels"] * 100.0 / 10_000.0
    gdf = gdf[gdf["area_ha"] >= min_area_ha].drop(columns="n_grid_pixels").reset_index(drop=True)
    gdf.insert(0, "polygon_id", [f"{park[:3].upper()}{i:04d}" for i in range(len(gdf))])
    gdf.insert(1, "park", park)
    return gdf[["polygon_id", "park", "woodland", "area_ha", "declining", "geometry"]]


# --------------------------------------------------------------------------
# the map model
# --------------------------------------------------------------------------


def book_map_model(profile: str = "quick", seed: int = 0, *, trained: TrainedEncoder | None = None,
                   progress: bool = True, root: str | Path | None = None) -> MapModel:
    """Chapter 04's ``ssl`` chain fitted on every sample of the simulated study, cached.

    The predictor table's 3 × 3 patches of the chapter-02 encoder
    (:func:`fungi_ssl.predictors.predictor_table`), the book's LightGBM with
    :data:`fungi_ssl.pipelines.SSL_COMPONENTS` PCA components, early-stopped
    on whole sites and refitted on all rows (:class:`~fungi_ssl.mapmodel.MapModel`).
    Saved under ``data/cache/mapmodel/<key>/model.zip``, keyed by the study,
    the simulator, the encoder and the settings.
    """
    from fungi_ssl.maps.mapmodel import MapModel
    from fungi_ssl.maps.modelspec import encoder_signature
    from fungi_ssl.predictors.tables import predictor_table, pretrained_encoder
    from fungi_ssl.simulate.field_data import open_field_data, simulator_fingerprint

    field_data = open_field_data(None, seed=seed, profile=profile)
    if trained is None:
        trained, _ = pretrained_encoder(field_data, profile, seed, progress=progress)
    params = {"study": field_data.study.config.as_dict(), "simulator": simulator_fingerprint(),
              "encoder": encoder_signature(trained), "profile": profile, "seed": int(seed),
              "model": "lightgbm", "kind": "ssl, all samples"}
    d = cache.cache_dir("mapmodel", params, root=Path(root) if root is not None else None)
    path = d / "model.zip"
    if path.exists():
        return MapModel.load(path)
    table = predictor_table(None, profile=profile, seed=seed, progress=progress)
    model = MapModel("lightgbm", seed=seed).fit(table.frame, encoder=trained)
    model.save(path, overwrite=True)
    return model


# --------------------------------------------------------------------------
# yearly maps and the truth
# --------------------------------------------------------------------------


def _stack(layers: Sequence[np.ndarray], years: Sequence[int], window: Window,
           name: str, attrs: dict[str, Any]) -> xr.DataArray:
    da = xr.DataArray(np.stack(layers).astype(np.float32), dims=("year", "y", "x"),
                      coords={"year": [int(y) for y in years], "y": window.y, "x": window.x},
                      name=name, attrs=attrs)
    return da.rio.write_crs(f"EPSG:{window.epsg}")


def truth_stack(study: SimulatedStudy, park: str, size: int, years: Iterable[int],
                world: str = "changing") -> xr.DataArray:
    """The true ``log1p`` estimand of the maps, ``(year, y, x)``, for one park window.

    ``log1p`` of :func:`~fungi_ssl.simulate.truth.truth_layer`: at each pixel,
    the mean ``log1p(rarefied)`` of a soil core taken there in that year
    (water NaN).
    """
    from fungi_ssl.simulate.truth import truth_layer

    s = _world_study(study, world)
    w = park_window(study, park, size)
    years = [int(y) for y in years]
    layers = [np.log1p(truth_layer(s, w, y).values) for y in years]
    return _stack(layers, years, w, "true_log1p_rarefied",
                  {"world": world, "park": park, "units": "log1p(rarefied richness)"})


def _sim_key(study: SimulatedStudy) -> dict[str, Any]:
    from fungi_ssl.simulate.field_data import simulator_fingerprint

    return {"study": study.config.as_dict(), "simulator": simulator_fingerprint()}


def _null_key() -> str:
    src = Path(__file__).read_bytes()
    start = src.index(b"class StaticLandscape")
    end = src.index(b"def _world_study")
    return f"v{NULL_WORLD_VERSION}-{hashlib.sha256(src[start:end]).hexdigest()[:12]}"


def _simulated_ahead(jobs: Sequence[Any], make: Any) -> Iterator[Any]:
    """``make(*job)`` of each job in order, the next one made in a background thread meanwhile.

    Simulating a cube (NumPy and numba kernels) and embedding one (torch) both
    release the GIL, so the next job's cube is simulated on the second core
    while this one's is embedded. ``make`` must not depend on the order
    (every cube is a function of its window, year and seed).
    """
    from concurrent.futures import ThreadPoolExecutor

    if not jobs:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fungi-ssl-simulate") as pool:
        pending = pool.submit(make, *jobs[0])
        for k in range(len(jobs)):
            result = pending.result()
            if k + 1 < len(jobs):
                pending = pool.submit(make, *jobs[k + 1])
            yield result


def _map_key(study: SimulatedStudy, world: str, park: str, size: int, year: int,
             model: MapModel, seed: int, root: Path | None) -> tuple[str, dict[str, Any], Path]:
    """The world a park-year is simulated in, its cube's cache parameters and its map's cache folder."""
    # 2017 is the same world in both: one embedding and one map serve both
    world_key = "changing" if (world == "null" and int(year) == NULL_BASE_YEAR) else world
    cube_params = {**_sim_key(study), "world": world_key, "park": park, "size": int(size),
                   "year": int(year)}
    if world_key == "null":
        cube_params["null_world"] = _null_key()
    params = {"cube": cube_params, "encoder": model.spec.encoder,
              "model": model.fingerprint, "model_settings": model.settings, "seed": int(seed)}
    return world_key, cube_params, cache.cache_dir("trend_maps", params, root=root)


def _park_cube(study: SimulatedStudy, world_key: str, park: str, size: int,
               year: int) -> xr.Dataset:
    """A park-year's lazy Sentinel cube, in chapter 08's chunks (one window)."""
    chunk = int(np.ceil(int(size) / 16) * 16)
    return _world_study(study, world_key).cube(park_window(study, park, size), int(year),
                                               chunks=chunk)


def _map_one(study: SimulatedStudy, world: str, park: str, size: int, year: int,
             trained: TrainedEncoder, model: MapModel, seed: int,
             root: Path | None, cube: xr.Dataset | None = None) -> tuple[np.ndarray, dict[str, float]]:
    from fungi_ssl.embeddings import embed
    from fungi_ssl.maps.predict import predict_map

    world_key, cube_params, d = _map_key(study, world, park, size, year, model, seed, root)
    path = d / "map.npy"
    if path.exists():
        return np.load(path), {"cached": 1.0}
    t0 = time.perf_counter()
    chunk = int(np.ceil(int(size) / 16) * 16)
    if cube is None:
        cube = _park_cube(study, world_key, park, size, year)
    store = embed.cached_embed_cube(cube, trained, cube_params, chunk=chunk, seed=seed,
                                    root=root, progress=False)
    t1 = time.perf_counter()
    run = predict_map(model, {int(year): store}, int(year), quantity="log_richness",
                      chunk=chunk, window=chunk, scheduler="synchronous", progress=False)
    values = np.asarray(run.map.values, dtype=np.float32)
    tmp = d / "map.tmp.npy"
    np.save(tmp, values)
    tmp.replace(path)
    return values, {"cached": 0.0, "embed_s": t1 - t0, "map_s": time.perf_counter() - t1}


@dataclass
class ParkMaps:
    """Predicted and true yearly maps of the park windows in one world.

    Attributes
    ----------
    world : str
        ``"changing"`` or ``"null"``.
    predicted, truth : dict of str to xarray.DataArray
        Per park, ``(year, y, x)`` stacks of ``log1p(rarefied)``: the map
        model's prediction and the true estimand.
    seconds : float
        Wall time of making them.
    n_cached : int
        Park-years read from the cache.
    """

    world: str
    predicted: dict[str, xr.DataArray] = field(default_factory=dict)
    truth: dict[str, xr.DataArray] = field(default_factory=dict)
    seconds: float = 0.0
    n_cached: int = 0


def park_maps(study: SimulatedStudy, trained: TrainedEncoder, model: MapModel, *,
              world: str = "changing", parks: Sequence[str] | None = None,
              size: int = PARK_WINDOW_PX["quick"], years: Iterable[int] = config.YEARS,
              seed: int = 0, progress: bool = True,
              root: str | Path | None = None) -> ParkMaps:
    """Yearly predicted and true ``log1p(rarefied)`` maps of each park window in one world.

    For each park and year: the year's simulated Sentinel cube (of the
    changing world, or of :func:`null_world`), embedded by ``trained``
    (:func:`~fungi_ssl.embed.cached_embed_cube`), mapped by ``model`` on its
    ``log1p`` scale (:func:`~fungi_ssl.maps.predict_map`), cached per (world,
    park, window, year, encoder, model); and :func:`truth_stack`. Pixels
    without a full 3 × 3 patch of embeddings (the window's outer ring,
    pixels never seen clear) are NaN.

    Parameters
    ----------
    study : SimulatedStudy
        The changing world.
    trained : TrainedEncoder
        The chapter-02 encoder.
    model : MapModel
        A map model fitted on that encoder's embeddings (:func:`book_map_model`).
    world : {"changing", "null"}
    parks : sequence of str, optional
        Default: the three UK parks.
    size : int
        Window side in pixels (:data:`PARK_WINDOW_PX`).
    years : iterable of int
        At least :data:`fungi_ssl.trends.MIN_YEARS` consecutive years.
    seed : int
        Seed of the embedding's timestep draws.
    progress : bool
    root : path, optional
        Cache root (default ``data/cache``).
    """
    from fungi_ssl.simulate.study import UK_PARKS
    from fungi_ssl.trends.polygons import MIN_YEARS

    if world not in WORLDS:
        raise ValueError(f"world must be one of {list(WORLDS)}, got {world!r}")
    parks = list(UK_PARKS) if parks is None else list(parks)
    unknown = [p for p in parks if p not in UK_PARKS]
    if unknown:
        raise ValueError(f"parks: unknown park(s) {unknown}; expected some of {sorted(UK_PARKS)}")
    years = sorted(int(y) for y in years)
    if len(years) < MIN_YEARS:
        raise ValueError(f"years: {years} has fewer than {MIN_YEARS} years, too few for a trend")
    if int(size) < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    root = Path(root) if root is not None else None
    out = ParkMaps(world)
    t0 = time.perf_counter()
    jobs = [(p, y) for p in parks for y in years]
    layers: dict[str, list[np.ndarray]] = {p: [] for p in parks}
    for p in parks:
        park_window(study, p, size)  # chosen here, before the simulating thread starts
    _world_study(study, world)
    todo = {(p, y) for p, y in jobs
            if not (_map_key(study, world, p, size, y, model, seed, root)[2] / "map.npy").exists()}

    def simulate(p: str, y: int) -> xr.Dataset | None:
        if (p, y) not in todo:
            return None
        world_key = _map_key(study, world, p, size, y, model, seed, root)[0]
        return _park_cube(study, world_key, p, size, y).load(scheduler="synchronous")

    cubes = _simulated_ahead(jobs, simulate)
    for (p, y), cube in tqdm(zip(jobs, cubes), total=len(jobs), desc=f"{world} world maps",
                             unit="park-year", disable=not progress):
        values, info = _map_one(study, world, p, size, y, trained, model, seed, root, cube)
        layers[p].append(values)
        out.n_cached += int(info["cached"])
    for p in parks:
        w = park_window(study, p, size)
        out.predicted[p] = _stack(layers[p], years, w, "log1p_rarefied",
                                  {"world": world, "park": p, "units": "log1p(rarefied richness)",
                                   "model": model.fingerprint})
        out.truth[p] = truth_stack(study, p, size, years, world)
    out.seconds = time.perf_counter() - t0
    return out


def reference_offsets(maps: xr.DataArray, reference: np.ndarray) -> pd.Series:
    """Per-year offset of a map stack over a reference area, relative to its mean over years.

    ``offset_t = mean over the reference pixels of (map_t − mean over years of map)``,
    computed on pixels valid in every year. Subtracting it from every pixel
    of year ``t`` removes a shift common to the whole scene (an embedding
    or cloud artefact of the year) as seen where nothing is known to change.

    Parameters
    ----------
    maps : xarray.DataArray
        ``(year, y, x)`` stack.
    reference : numpy.ndarray
        ``(y, x)`` boolean mask of the reference pixels.

    Returns
    -------
    pandas.Series
        Offset per year (indexed by year).

    Examples
    --------
    >>> m = xr.DataArray(np.arange(4.0)[:, None, None] * 0.1 + np.zeros((4, 2, 2)),
    ...                  dims=("year", "y", "x"), coords={"year": range(2017, 2021)})
    >>> reference_offsets(m, np.ones((2, 2), bool)).round(2).tolist()
    [-0.15, -0.05, 0.05, 0.15]
    """
    v = np.asarray(maps.transpose("year", "y", "x").values, dtype=float)
    ref = np.asarray(reference, dtype=bool)
    if ref.shape != v.shape[1:]:
        raise ValueError(f"reference: shape {ref.shape} does not match the maps' {v.shape[1:]}")
    ok = ref & np.isfinite(v).all(axis=0)
    if not ok.any():
        raise ValueError("reference: no pixel of the reference area is valid in every year")
    sel = v[:, ok]
    off = (sel - sel.mean(axis=0, keepdims=True)).mean(axis=1)
    return pd.Series(off, index=pd.Index(np.asarray(maps["year"].values, dtype=int), name="year"),
                     name="offset")


# --------------------------------------------------------------------------
# the whole analysis of chapter 08
# --------------------------------------------------------------------------

#: Tolerance (log richness per year) of a recovered area-weighted slope: 0.01,
#: one percent per year, a quarter of the simulated decline of a declining
#: ancient stand (``RichnessModel.decline_rate`` = 0.04).
SLOPE_TOLERANCE = 0.01
#: The chapter's normalisation of the yearly maps, fixed before any result: none.
#: A per-year offset measured over open land removes every change open land
#: shares with woodland (the 2018 and 2022 droughts: the estimand would become
#: woodland's trend relative to open land's), and a reference found from the
#: truth's land cover is not available to real data; the park-year interval
#: (:func:`fungi_ssl.trends.park_year_contrast`) carries the error the
#: normalisation was meant to remove.
NORMALISATION = "none"
#: A polygon is truly declining when its true slope is below minus this
#: (log richness per year), the same one percent per year.
MIN_DECLINE = 0.01


@dataclass
class TrendAnalysis:
    """Chapter 08's analysis: maps, polygon trends and results of both worlds.

    Attributes
    ----------
    polygons : geopandas.GeoDataFrame
        :func:`woodland_stands` of every park (each in its window's UTM CRS;
        concatenated as a plain table with a ``crs`` column per park).
    polygons_by_park : dict of str to geopandas.GeoDataFrame
    maps : dict of str to ParkMaps
        Per world.
    trends : dict of str to pandas.DataFrame
        :func:`fungi_ssl.trends.polygon_trends` of ``"changing"``,
        ``"changing_true"``, ``"null"`` and ``"null_true"`` (all parks).
    zonal : dict of str to pandas.DataFrame
        Per world, the zonal means of every polygon and year, with ``park``
        and ``woodland`` (:func:`fungi_ssl.trends.park_year_contrast`'s input).
    offsets : None
        Kept for callers of the former normalised analysis; always None.
    normalised : bool
        Always False (:data:`NORMALISATION`).
    results : dict
        :func:`fungi_ssl.trends.trend_results` plus the null world's truth,
        the tolerance checks and the sizes.
    seconds : dict
        Wall time of the maps of each world and of the whole analysis.
    """

    polygons: pd.DataFrame
    polygons_by_park: dict
    maps: dict[str, ParkMaps]
    trends: dict[str, pd.DataFrame]
    zonal: dict[str, pd.DataFrame]
    offsets: pd.DataFrame | None
    normalised: bool
    results: dict[str, Any]
    seconds: dict[str, float]


def _reference_mask(study: SimulatedStudy, park: str, size: int) -> np.ndarray:
    """Open land (not woodland, not water) of the window in the base year: nothing changes there."""
    w = park_window(study, park, size)
    L = study.landscape.layers(np.array([w.epsg]), w.x[None], w.y[None], NULL_BASE_YEAR)
    lc = L["landcover"][0]
    return ~np.isin(lc, WOODLAND_CODES) & (lc != WATER)


def trend_analysis(study: SimulatedStudy, trained: TrainedEncoder, model: MapModel, *,
                   size: int, years: Iterable[int] = config.YEARS,
                   parks: Sequence[str] | None = None, seed: int = 0,
                   n_boot: int = 2000, min_decline: float = MIN_DECLINE,
                   tolerance: float = SLOPE_TOLERANCE, progress: bool = True,
                   maps: dict[str, ParkMaps] | None = None,
                   root: str | Path | None = None,
                   slope_gain_sd: float = 0.0) -> TrendAnalysis:
    """Trends per woodland polygon in the changing and the null world, scored against the truth.

    For each world: the yearly maps of every park (:func:`park_maps`), the
    true estimand on the same pixels (pixels the map leaves NaN are left out
    of the truth too, so both average the same pixels), zonal means per
    stand polygon (:func:`fungi_ssl.trends.zonal_means`) and their trends
    (:func:`fungi_ssl.trends.polygon_trends` with ``log=False``: the maps
    already hold ``log1p(rarefied)``, so slopes are in log richness per
    year). Then :func:`fungi_ssl.trends.trend_results` with the
    ancient-minus-other intervals of
    :func:`fungi_ssl.trends.park_year_contrast` (parks and park-years as the
    units of replication).

    The maps are not normalised (:data:`NORMALISATION`): a per-year shift
    measured over open land would remove any change open land shares with
    woodland (the droughts), and the truth's land cover may not be used to
    find open land; the park-year interval carries the shared error instead.

    Parameters
    ----------
    study, trained, model, size, years, parks, seed, progress, root :
        As :func:`park_maps`.
    n_boot : int
        Bootstrap draws of the ancient-minus-other intervals.
    min_decline : float
        A polygon is truly declining when its true slope is below ``−min_decline``.
    tolerance : float
        Largest accepted |recovered − true| area-weighted slope.
    maps : dict, optional
        Maps of both worlds made before.
    slope_gain_sd : float
        Relative SD of a polygon's map slope about its true slope, carried by
        the intervals (:func:`fungi_ssl.trends.park_year_contrast`;
        :func:`replicate_worlds` measures it).
    """
    from fungi_ssl.trends import polygons as tr

    t0 = time.perf_counter()
    if parks is None:
        from fungi_ssl.simulate.study import UK_PARKS

        parks = list(UK_PARKS)
    years = sorted(int(y) for y in years)
    polys = {p: woodland_stands(study, p, size) for p in parks}
    maps = dict(maps or {})
    seconds = {}
    for world in WORLDS:
        if world not in maps:
            maps[world] = park_maps(study, trained, model, world=world, parks=parks, size=size,
                                    years=years, seed=seed, progress=progress, root=root)
        seconds[f"maps_{world}"] = maps[world].seconds
    tables: dict[str, list[pd.DataFrame]] = {k: [] for k in
                                             ("changing", "changing_true", "null", "null_true")}
    zonal: dict[str, list[pd.DataFrame]] = {w: [] for w in WORLDS}
    for world in WORLDS:
        pm = maps[world]
        for p in parks:
            pred = pm.predicted[p]
            truth = pm.truth[p].where(np.isfinite(pred))
            for key, stack in ((world, pred), (f"{world}_true", truth)):
                z = tr.zonal_means(stack, polys[p], years=years)
                tables[key].append(tr.polygon_trends(z, polys[p], log=False, years=years))
                if key == world:
                    attrs = pd.DataFrame(polys[p])[["polygon_id", "park", "woodland"]]
                    zonal[world].append(z.merge(attrs, on="polygon_id"))
    trends_ = {k: pd.concat(v, ignore_index=True) for k, v in tables.items()}
    zonal_ = {w: pd.concat(v, ignore_index=True) for w, v in zonal.items()}
    trends_["changing"].attrs["years"] = years
    res = tr.trend_results(trends_["changing"], trends_["changing_true"], trends_["null"],
                           min_decline=min_decline, n_boot=n_boot, seed=seed,
                           recovered_zonal=zonal_["changing"], null_zonal=zonal_["null"],
                           slope_gain_sd=slope_gain_sd)
    null_true = tr.area_weighted_slope(trends_["null_true"])
    diff_err = {k: res[f"slope_{k}"] - res[f"true_slope_{k}"]
                for k in ("ancient", "other", "difference")}
    null_ci = res["null_slope_difference_ci"]
    ci = res["slope_difference_ci"]
    res.update({
        "null_true_slope_ancient": float(null_true["ancient"]),
        "null_true_slope_other": float(null_true["other"]),
        "null_true_slope_difference": float(null_true["ancient"] - null_true["other"]),
        "slope_tolerance": float(tolerance),
        "slope_errors": diff_err,
        "slopes_within_tolerance": bool(all(abs(v) <= tolerance for v in diff_err.values())),
        "sign_matches": bool(np.sign(res["slope_difference"])
                             == np.sign(res["true_slope_difference"])),
        "ci_contains_truth": bool(ci[0] <= res["true_slope_difference"] <= ci[1]),
        "null_ci_contains_zero": bool(null_ci[0] <= 0.0 <= null_ci[1]),
        "normalised": False,
        "normalisation": NORMALISATION,
        "window_px": int(size),
        "years": years,
        "parks": list(parks),
        "n_polygons_by_type": {k: int(v) for k, v in
                               trends_["changing"]["woodland"].value_counts().items()},
    })
    seconds["total"] = time.perf_counter() - t0
    flat = pd.concat([pd.DataFrame(g.drop(columns="geometry")).assign(epsg=g.crs.to_epsg())
                      for g in polys.values()], ignore_index=True)
    return TrendAnalysis(polygons=flat, polygons_by_park=polys, maps=maps, trends=trends_,
                         zonal=zonal_, offsets=None, normalised=False, results=res,
                         seconds=seconds)


# --------------------------------------------------------------------------
# replicate worlds: other weather, clouds and sensor noise of the park windows
# --------------------------------------------------------------------------

#: Version of the replicate worlds' definition (part of their cache keys).
REPLICATE_VERSION = 1
#: Changing and null worlds chapter 08 replicates (each kind): 40, so that a coverage near
#: 90% is known to about ±8% (90% binomial interval; ±11% with 20 worlds, wider than the
#: 0.85-0.95 band the interval is held to).
N_REPLICATE_WORLDS = 40
#: Side (pixels) of the park windows of the replicate worlds, in both profiles:
#: 40 worlds × 3 parks × 8 years of simulating, embedding and mapping cost
#: too much at the book windows' size (:data:`PARK_WINDOW_PX`) on two cores.
REPLICATE_WINDOW_PX = 32


class ResensedLandscape:
    """A landscape seen through another draw of weather, clouds and sensor noise.

    The simulator's sensors (:func:`~fungi_ssl.simulate.sensors.sentinel_observations`)
    draw green-up weather, cloud fields, the regional cloud anomaly, haze,
    pixel noise, radar soil moisture (and each stand's spectral
    heterogeneity) from ``landscape.seed`` and read everything else from
    ``landscape.layers``. This wrapper keeps the base landscape's layers
    (land cover, canopy, stands, richness: the truth) and gives the sensors
    ``sensor_seed``: the same world, another realisation of what the
    satellites see. Built here, outside :mod:`fungi_ssl.simulate`, like
    :class:`StaticLandscape`.

    Examples
    --------
    >>> from fungi_ssl.simulate import SimulatedStudy
    >>> s = SimulatedStudy(n_samples=300, n_campaigns=8)
    >>> r = ResensedLandscape(s.landscape, 12345)
    >>> r.seed, r.rm is s.landscape.rm
    (12345, True)
    """

    def __init__(self, base: Landscape, sensor_seed: int):
        self.base = base
        self.seed = int(sensor_seed)

    def layers(self, epsg: np.ndarray, xs: np.ndarray, ys: np.ndarray,
               year: int | np.ndarray) -> dict[str, np.ndarray]:
        """The base landscape's layers (the sensor seed changes none of them)."""
        return self.base.layers(epsg, xs, ys, year)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)


def replicate_seed(seed: int, world: str, k: int) -> int:
    """Sensor seed of replicate ``k`` of ``world``: independent of every other world's.

    Examples
    --------
    >>> replicate_seed(0, "changing", 0) != replicate_seed(0, "null", 0)
    True
    """
    if world not in WORLDS:
        raise ValueError(f"world must be one of {list(WORLDS)}, got {world!r}")
    if int(k) < 0:
        raise ValueError(f"replicate index must be ≥ 0, got {k}")
    ss = np.random.SeedSequence([int(seed), 17, WORLDS.index(world), int(k)])
    return int(ss.generate_state(1, dtype=np.uint32)[0])


def replicate_study(study: SimulatedStudy, world: str, k: int) -> SimulatedStudy:
    """Replicate ``k`` of ``world``: its landscape, with :func:`replicate_seed`'s sensors."""
    base = _world_study(study, world)
    other = SimulatedStudy(study.config)
    other.landscape = ResensedLandscape(base.landscape, replicate_seed(study.config.seed, world, k))
    return other


def _replicate_key() -> str:
    src = Path(__file__).read_bytes()
    start = src.index(b"class ResensedLandscape")
    end = src.index(b"def _replicate_key")
    return f"v{REPLICATE_VERSION}-{hashlib.sha256(src[start:end]).hexdigest()[:12]}"


def _embed_in_memory(cube: xr.Dataset, trained: TrainedEncoder, chunk: int,
                     seed: int) -> xr.Dataset:
    """:func:`~fungi_ssl.embed.embed_cube`'s embeddings, made in memory (no store to write and read back)."""
    from fungi_ssl.embeddings import embed

    return embed.embed_cube_in_memory(cube, trained, chunk=chunk, seed=seed, n_threads=1)


def replicate_maps(study: SimulatedStudy, trained: TrainedEncoder, model: MapModel, *,
                   world: str, k: int, parks: Sequence[str], size: int,
                   years: Sequence[int], seed: int = 0,
                   root: str | Path | None = None) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Predicted ``log1p`` maps ``(year, y, x)`` of every park in replicate ``k`` of ``world``.

    As :func:`park_maps` (the same windows, encoder, model and timestep
    draws), in :func:`replicate_study`. One cache entry per replicate world
    (``data/cache/trend_replicates/<key>/maps.npz``), keyed by the study, the
    simulator, the world, ``k``, its sensor seed, the parks, window, years,
    encoder and model.
    """
    from fungi_ssl.maps.predict import predict_map

    years = [int(y) for y in years]
    cube_params = {**_sim_key(study), "world": world, "replicate": int(k),
                   "sensor_seed": replicate_seed(study.config.seed, world, k),
                   "replicates": _replicate_key(), "parks": list(parks), "size": int(size),
                   "years": years}
    if world == "null":
        cube_params["null_world"] = _null_key()
    params = {"cube": cube_params, "encoder": model.spec.encoder, "model": model.fingerprint,
              "model_settings": model.settings, "seed": int(seed)}
    d = cache.cache_dir("trend_replicates", params, root=Path(root) if root is not None else None)
    path = d / "maps.npz"
    if path.exists():
        with np.load(path) as f:
            return {p: f[f"p{i}"] for i, p in enumerate(parks)}, {"cached": 1.0}
    t0 = time.perf_counter()
    s = replicate_study(study, world, k)
    chunk = int(np.ceil(int(size) / 16) * 16)
    out: dict[str, np.ndarray] = {}
    windows = {p: park_window(study, p, size) for p in parks}
    jobs = [(p, y) for p in parks for y in years]
    layers: dict[str, list[np.ndarray]] = {p: [] for p in parks}

    def simulate(p: str, y: int) -> xr.Dataset:
        return s.cube(windows[p], y, chunks=chunk).load(scheduler="synchronous")

    for (p, y), cube in zip(jobs, _simulated_ahead(jobs, simulate)):
        store = _embed_in_memory(cube, trained, chunk, seed)
        run = predict_map(model, {y: store}, y, quantity="log_richness", chunk=chunk,
                          window=chunk, scheduler="synchronous", progress=False)
        layers[p].append(np.asarray(run.map.values, dtype=np.float32))
    for p in parks:
        out[p] = np.stack(layers[p])
    tmp = d / "maps.tmp.npz"
    with open(tmp, "wb") as fh:
        np.savez(fh, **{f"p{i}": out[p] for i, p in enumerate(parks)})
    tmp.replace(path)
    return out, {"cached": 0.0, "seconds": time.perf_counter() - t0}


@dataclass
class ReplicateWorlds:
    """Chapter 08's interval scored over replicate worlds.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per world: ``world``, ``replicate``, ``sensor_seed``,
        ``slope_ancient``, ``slope_other`` and their truths ``true_slope_*``,
        ``difference``, ``ci_low``, ``ci_high`` (:func:`fungi_ssl.trends.park_year_contrast`
        with the slope-gain SD calibrated on the other changing worlds,
        ``slope_gain_sd``), ``se``, ``se_residual``, ``gain_load``,
        ``residual_ci_low``, ``residual_ci_high`` and ``residual_covers`` (the
        same interval without the slope-gain part),
        ``polygon_ci_low``, ``polygon_ci_high`` (:func:`fungi_ssl.trends.woodland_contrast`,
        polygons as units, for comparison), ``true_difference``, ``covers``
        (the interval holds the true difference), ``excludes_zero``,
        ``polygon_covers``, ``polygon_excludes_zero``, ``false_positive_rate``
        (share of polygons with Mann–Kendall p below the level) and ``cached``.
    summary : dict
        ``n_worlds`` (changing + null), ``n_changing``, ``n_null``,
        ``ci_coverage_90``, ``null_ci_excludes_zero_rate``, the same two for the
        polygon interval and for the residual-only interval
        (``residual_ci_coverage_90``, ``residual_null_ci_excludes_zero_rate``),
        ``slope_gain_sd`` (calibrated on every changing world: the book's
        value), per kind of world (``changing``, ``null``) the diagnostics of
        the estimate against the truth: ``mean_error`` (and its standard
        error ``se_mean_error``; ``mean_error_ancient``, ``mean_error_other``
        of the two types' slopes), ``mean_z`` (mean of
        (estimate − truth) / se), ``sd_z``, ``sd_over_mean_se`` and
        ``sd_over_mean_se_residual`` (SD of the estimates over worlds against
        the mean standard error), ``mean_false_positive_rate`` (null worlds),
        ``window_px``, ``n_parks``, ``n_park_years``, ``df``, ``seconds``.
    """

    table: pd.DataFrame
    summary: dict[str, Any]


def replicate_worlds(study: SimulatedStudy, trained: TrainedEncoder, model: MapModel, *,
                     n_worlds: int = N_REPLICATE_WORLDS, size: int = REPLICATE_WINDOW_PX,
                     years: Iterable[int] = config.YEARS, parks: Sequence[str] | None = None,
                     seed: int = 0, n_boot: int = 1000, alpha: float = 0.05,
                     confidence: float = 0.9, progress: bool = True,
                     root: str | Path | None = None) -> ReplicateWorlds:
    """The ancient-minus-other interval over ``n_worlds`` changing and ``n_worlds`` null worlds.

    Each world has its own weather, clouds and sensor noise
    (:func:`replicate_study`), independent of every other world's and of the
    book's own world; the landscape, polygons and truth are the study's. A
    changing world's interval should hold the true difference (of the same
    polygons, on the pixels its maps cover) at the nominal rate; a null
    world's should exclude zero at one minus it.

    Each interval is :func:`fungi_ssl.trends.park_year_contrast`'s with the
    slope-gain SD (:func:`fungi_ssl.trends.calibrate_slope_gain`) measured
    on the *other* changing worlds' estimates (a null world: on all of them),
    so no interval sees its own world, and no calibration sees any truth.
    """
    from fungi_ssl.trends import polygons as tr

    if int(n_worlds) < 1:
        raise ValueError(f"n_worlds must be at least 1, got {n_worlds}")
    t0 = time.perf_counter()
    if parks is None:
        from fungi_ssl.simulate.study import UK_PARKS

        parks = list(UK_PARKS)
    years = sorted(int(y) for y in years)
    polys = {p: woodland_stands(study, p, size) for p in parks}
    attrs = pd.concat([pd.DataFrame(g.drop(columns="geometry"))[["polygon_id", "park", "woodland"]]
                       for g in polys.values()], ignore_index=True)
    truths = {w: {p: truth_stack(study, p, size, years, w) for p in parks} for w in WORLDS}
    rows = []
    contrasts: list[Any] = []
    jobs = [(w, k) for k in range(int(n_worlds)) for w in WORLDS]
    for w, k in tqdm(jobs, desc="replicate worlds", unit="world", disable=not progress):
        maps, info = replicate_maps(study, trained, model, world=w, k=k, parks=parks, size=size,
                                    years=years, seed=seed, root=root)
        zs, zt = [], []
        for p in parks:
            truth = truths[w][p]
            pred = truth.copy(data=maps[p])
            zs.append(tr.zonal_means(pred, polys[p], years=years))
            zt.append(tr.zonal_means(truth.where(np.isfinite(pred)), polys[p], years=years))
        z = pd.concat(zs, ignore_index=True).merge(attrs, on="polygon_id")
        zt_ = pd.concat(zt, ignore_index=True)
        rec = tr.polygon_trends(z.drop(columns=["park", "woodland"]), attrs, log=False, years=years)
        true = tr.polygon_trends(zt_, attrs, log=False, years=years)
        truth_d = tr.area_weighted_slope(true)
        c = tr.park_year_contrast(z, n_boot=n_boot, confidence=confidence, seed=seed,
                                  years=years)
        pc = tr.woodland_contrast(rec, n_boot=n_boot, confidence=confidence, seed=seed)
        d_true = float(truth_d["ancient"] - truth_d["other"])
        tested = rec["mk_p"].dropna()
        contrasts.append(c)
        rows.append({"world": w, "replicate": k,
                     "sensor_seed": replicate_seed(study.config.seed, w, k),
                     "slope_ancient": c.slope_ancient, "slope_other": c.slope_other,
                     "true_slope_ancient": float(truth_d["ancient"]),
                     "true_slope_other": float(truth_d["other"]),
                     "difference": c.difference, "se_residual": c.se_residual,
                     "gain_load": c.gain_load,
                     "residual_ci_low": c.ci[0], "residual_ci_high": c.ci[1],
                     "polygon_ci_low": pc.ci[0], "polygon_ci_high": pc.ci[1],
                     "true_difference": d_true,
                     "residual_covers": bool(c.ci[0] <= d_true <= c.ci[1]),
                     "residual_excludes_zero": bool(c.ci[0] > 0 or c.ci[1] < 0),
                     "polygon_covers": bool(pc.ci[0] <= d_true <= pc.ci[1]),
                     "polygon_excludes_zero": bool(pc.ci[0] > 0 or pc.ci[1] < 0),
                     "false_positive_rate": float((tested < alpha).mean()) if len(tested) else None,
                     "n_parks": c.n_parks, "n_park_years": c.n_park_years, "df": c.df,
                     "cached": bool(info["cached"])})
    table = pd.DataFrame(rows)
    changing = (table["world"] == "changing").to_numpy()

    def gain_without(i: int | None) -> float:
        use = changing.copy()
        if i is not None:
            use[i] = False
        if use.sum() < 3:
            return 0.0
        t = table[use]
        return tr.calibrate_slope_gain(t["difference"], t["se_residual"], t["gain_load"])

    table[["slope_gain_sd", "se", "ci_low", "ci_high"]] = np.nan
    table[["covers", "excludes_zero"]] = False
    for i, c in enumerate(contrasts):
        g = c.with_slope_gain(gain_without(i if changing[i] else None))
        d_true = table.at[i, "true_difference"]
        table.loc[i, ["slope_gain_sd", "se", "ci_low", "ci_high"]] = [
            g.slope_gain_sd, g.se, g.ci[0], g.ci[1]]
        table.loc[i, "covers"] = bool(g.ci[0] <= d_true <= g.ci[1])
        table.loc[i, "excludes_zero"] = bool(g.ci[0] > 0 or g.ci[1] < 0)
    ch, nu = table[changing], table[~changing]

    def diagnostics(t: pd.DataFrame) -> dict[str, float]:
        err = t["difference"] - t["true_difference"]
        z = err / t["se"]
        sd = float(t["difference"].std(ddof=1)) if len(t) > 1 else float("nan")
        out = {f"mean_error_{k}": float((t[f"slope_{k}"] - t[f"true_slope_{k}"]).mean())
               for k in ("ancient", "other")}
        return {**out, "mean_error": float(err.mean()),
                "se_mean_error": float(err.std(ddof=1) / np.sqrt(len(t))) if len(t) > 1 else float("nan"),
                "mean_z": float(z.mean()),
                "sd_z": float(z.std(ddof=1)) if len(t) > 1 else float("nan"),
                "sd_over_mean_se": sd / float(t["se"].mean()),
                "sd_over_mean_se_residual": sd / float(t["se_residual"].mean())}

    summary = {
        "n_worlds": len(table), "n_changing": len(ch), "n_null": len(nu),
        "ci_coverage_90": float(ch["covers"].mean()),
        "null_ci_excludes_zero_rate": float(nu["excludes_zero"].mean()),
        "residual_ci_coverage_90": float(ch["residual_covers"].mean()),
        "residual_null_ci_excludes_zero_rate": float(nu["residual_excludes_zero"].mean()),
        "polygon_ci_coverage_90": float(ch["polygon_covers"].mean()),
        "polygon_null_ci_excludes_zero_rate": float(nu["polygon_excludes_zero"].mean()),
        "slope_gain_sd": gain_without(None),
        "changing": diagnostics(ch), "null": diagnostics(nu),
        "mean_false_positive_rate": float(nu["false_positive_rate"].mean()),
        "confidence": float(confidence), "window_px": int(size),
        "n_parks": int(table["n_parks"].iloc[0]), "n_park_years": int(table["n_park_years"].iloc[0]),
        "df": int(table["df"].iloc[0]),
        "n_cached": int(table["cached"].sum()), "seconds": time.perf_counter() - t0,
    }
    return ReplicateWorlds(table, summary)
