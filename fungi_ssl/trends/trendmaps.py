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

The replicate worlds that score chapter 08's interval over other weather,
clouds and sensor noise of the same parks are in
:mod:`fungi_ssl.trends.replicates`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence
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
    "PARK_WINDOW_PX",
    "SLOPE_TOLERANCE",
    "WORLDS",
    "ParkMaps",
    "StaticLandscape",
    "TrendAnalysis",
    "book_map_model",
    "null_world",
    "park_maps",
    "park_window",
    "reference_offsets",
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
    """A park-year's Sentinel cube, simulated now, in memory.

    Chapter 08's chunk rule (the window's side rounded up to 16 pixels) makes
    the whole window one block, so this is :meth:`SimulatedStudy.cube`'s cube
    value for value, without dask's graph (:meth:`SimulatedStudy.cube_in_memory`).
    """
    return _world_study(study, world_key).cube_in_memory(park_window(study, park, size),
                                                         int(year))


def _map_one(study: SimulatedStudy, world: str, park: str, size: int, year: int,
             trained: TrainedEncoder, model: MapModel, seed: int,
             root: Path | None, cube: xr.Dataset | None = None,
             n_threads: int | None = None) -> tuple[np.ndarray, dict[str, float]]:
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
                                    root=root, progress=False, n_threads=n_threads)
    t1 = time.perf_counter()
    run = predict_map(model, {int(year): store}, int(year), quantity="log_richness",
                      chunk=chunk, window=chunk, scheduler="synchronous", progress=False,
                      warn_nan=False)  # the window's one-pixel ring has no full patch
    values = np.asarray(run.map.values, dtype=np.float32)
    tmp = cache.temporary_path(path)
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

    def make(p: str, y: int) -> tuple[np.ndarray, dict[str, float]]:
        # a lane: simulated, embedded on one torch thread and mapped on one thread
        cube = None
        if (p, y) in todo:
            cube = _park_cube(study, _map_key(study, world, p, size, y, model, seed, root)[0],
                              p, size, y)
        return _map_one(study, world, p, size, y, trained, model, seed, root, cube, n_threads=1)

    from fungi_ssl.core.worker_threads import in_lanes
    from fungi_ssl.embeddings.encoder import free_cores

    # lanes, one per free core (cached park-years only load: one lane). One encoder on
    # every core beside a simulating thread lost a core to it at every operation: a
    # park's eight years were simulated and embedded at 0.59-0.67 of the encoder's own
    # speed that way, 0.62-0.84 in lanes (benchmarks/bench_embedding_path.py)
    made = in_lanes(jobs, make, free_cores() if todo else 1)
    for (p, y), (values, info) in tqdm(zip(jobs, made), total=len(jobs),
                                       desc=f"{world} world maps", unit="park-year",
                                       disable=not progress):
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
#: (:func:`fungi_ssl.trends.contrasts.park_year_contrast`) carries the error the
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
        and ``woodland`` (:func:`fungi_ssl.trends.contrasts.park_year_contrast`'s input).
    offsets : None
        Kept for callers of the former normalised analysis; always None.
    normalised : bool
        Always False (:data:`NORMALISATION`).
    results : dict
        :func:`fungi_ssl.trends.summaries.trend_results` plus the null world's truth,
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
    year). Then :func:`fungi_ssl.trends.summaries.trend_results` with the
    ancient-minus-other intervals of
    :func:`fungi_ssl.trends.contrasts.park_year_contrast` (parks and park-years as the
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
        the intervals (:func:`fungi_ssl.trends.contrasts.park_year_contrast`;
        :func:`~fungi_ssl.trends.replicates.replicate_worlds` measures it).
    """
    from fungi_ssl.trends import contrasts, summaries
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
    res = summaries.trend_results(trends_["changing"], trends_["changing_true"], trends_["null"],
                           min_decline=min_decline, n_boot=n_boot, seed=seed,
                           recovered_zonal=zonal_["changing"], null_zonal=zonal_["null"],
                           slope_gain_sd=slope_gain_sd)
    null_true = contrasts.area_weighted_slope(trends_["null_true"])
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
