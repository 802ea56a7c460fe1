"""Chapter 10, your region: tiles, model, map, area of applicability and trends.

The chapter is a template: a bounding box, one or more years, a folder of
embeddings (geotessera tiles or the project's Zarr stores), a saved map model
(:class:`fungi_ssl.maps.mapmodel.MapModel`) and, optionally, woodland polygons.
This module holds what the chapter does with them, so the notebook only tells
the story:

* :func:`write_simulated_tiles` makes the default input: the simulated study
  over a bounding box, embedded by the book's own encoder (chapter 02),
  quantised as TESSERA quantises (int8 plus a per-pixel scale) and written in
  **geotessera's tile layout** with :func:`fungi_ssl.embeddings.tessera_write.write_tile`, one
  raster per 0.1° cell the box touches, each in the UTM zone of its cell. So
  the map is read back by the same reader as real tiles. The download's
  ``tessera_metadata.json`` names the encoder (``dataset_version =
  "simulated-<encoder signature>"``), and :func:`tiles_encoder` gives the
  signature a map model must record to be allowed to map them.
* :func:`write_simulated_covariates` writes the simulated study's 1 km
  covariates over the box as a raster stack (GeoTIFF with named bands, or
  Zarr; :mod:`fungi_ssl.data.covariate_stack`), the input a real region's product
  map needs beside its tiles, so ``--covariates`` runs end to end.
* :func:`simulated_woodland` draws woodland polygons (ancient or other) from
  the simulator's land cover over the box, as an inventory would give them.
* :func:`fit_region_model` fits the map model on a predictor table's SSL
  patches (the simulated study's samples by default).
* :func:`area_of_applicability` is Meyer & Pebesma's area of applicability
  (:class:`fungi_ssl.uncertainty.aoa.AreaOfApplicability`) in the model's own predictor
  space (the PCA scores of the 3 × 3 patch, weighted by the regressor's gain),
  with site-grouped folds, computed for every map pixel window by window and
  written as a GeoTIFF of the dissimilarity index; the fit and the map pass
  are chapter 07's (:func:`fungi_ssl.uncertainty.bias_maps.map_aoa`,
  :func:`fungi_ssl.uncertainty.bias_maps.uncertainty_maps`), so the logic exists once.
* :func:`trend_summary` condenses the per-polygon trend table
  (:func:`fungi_ssl.trends.trend_table.polygon_trend_table`).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fungi_ssl.core.cache import cache_dir
from fungi_ssl.data.coordinates import lonlat_to_crs, utm_epsg
from fungi_ssl.embeddings import tessera, tessera_write

__all__ = [
    "AOARun",
    "RegionInputs",
    "SimulatedCovariates",
    "SimulatedTiles",
    "area_of_applicability",
    "check_bbox",
    "default_bbox",
    "fit_from_samples",
    "fit_region_model",
    "guild_units",
    "product_covariates",
    "region_inputs",
    "simulated_woodland",
    "tiles_encoder",
    "trend_summary",
    "write_simulated_covariates",
    "write_simulated_tiles",
]

#: Pixels added around the box on each side of a simulated tile, so that
#: 3 × 3 patches at the box's edge are complete.
TILE_MARGIN_PX = 2
#: The box's side in pixels when none is given (about 1.3 km).
DEFAULT_BOX_PX = 128
#: Smallest woodland polygon kept (hectares).
MIN_POLYGON_HA = 0.25


def guild_units(guild: str = "ECM", quantity: str = "richness") -> str:
    """The unit of a map of ``guild`` richness.

    Examples
    --------
    >>> guild_units("AM")
    'rarefied AM richness'
    >>> guild_units("ECM", "log_richness")
    'log1p(rarefied ECM richness)'
    """
    base = f"rarefied {guild} richness"
    return base if quantity == "richness" else f"log1p({base})"


def check_bbox(bbox: Sequence[float], name: str = "bbox") -> tuple[float, float, float, float]:
    """A lon/lat box ``(west, south, east, north)`` as floats, or one clear error.

    Examples
    --------
    >>> check_bbox([1, 2, 1.01, 2.01])
    (1.0, 2.0, 1.01, 2.01)
    >>> check_bbox([1, 2, 0.5, 3])
    Traceback (most recent call last):
    ...
    ValueError: bbox (1.0, 2.0, 0.5, 3.0): west must be < east and south < north (degrees)
    """
    try:
        b = tuple(float(v) for v in bbox)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be four numbers (west, south, east, north), got {bbox!r}") from None
    if len(b) != 4 or not all(math.isfinite(v) for v in b):
        raise ValueError(f"{name} must be four finite numbers (west, south, east, north), got {bbox!r}")
    if not (b[0] < b[2] and b[1] < b[3]):
        raise ValueError(f"{name} {b}: west must be < east and south < north (degrees)")
    if not (-180 <= b[0] and b[2] <= 180 and -90 <= b[1] and b[3] <= 90):
        raise ValueError(f"{name} {b}: not WGS84 longitude/latitude degrees")
    return b  # type: ignore[return-value]


def default_bbox(study: Any, size_px: int = DEFAULT_BOX_PX) -> tuple[float, float, float, float]:
    """A lon/lat box of about ``size_px`` × 10 m around the study's largest campaign.

    The simulated study samples there, so the map model has seen its
    landscape (:meth:`fungi_ssl.simulate.SimulatedStudy.map_window`).
    """
    return tuple(round(v, 6) for v in study.map_window(0, size_px).bounds_lonlat())  # type: ignore[return-value]


# --------------------------------------------------------------------------
# simulated tiles in geotessera's layout
# --------------------------------------------------------------------------
@dataclass
class SimulatedTiles:
    """Tiles :func:`write_simulated_tiles` wrote (or found in its cache).

    Attributes
    ----------
    root : pathlib.Path
        The geotessera-layout folder (give it as the embeddings folder).
    bbox : tuple of float
    years : list of int
    tiles : list of str
        Grid names written per year.
    n_pixels : int
        Pixels embedded (all tiles, all years).
    encoder : str
        The signature a map model must record (:func:`tiles_encoder`).
    seconds : float
        Time spent simulating and embedding (0 when cached).
    """

    root: Path
    bbox: tuple[float, float, float, float]
    years: list[int]
    tiles: list[str]
    n_pixels: int
    encoder: str
    seconds: float = 0.0


def tiles_encoder(trained: Any) -> str:
    """The encoder signature of tiles written from ``trained`` (what maps compare).

    The tile reader names a download's encoder ``"tessera:<dataset_version>"``
    (:func:`fungi_ssl.maps.modelspec.encoder_signature`); simulated tiles record
    ``simulated-<signature of the trained encoder>`` as their version.
    """
    from fungi_ssl.maps.modelspec import encoder_signature

    return f"tessera:simulated-{encoder_signature(trained)}"


def _cell_windows(bbox: tuple[float, float, float, float], margin: int) -> list[tuple[float, float, Any]]:
    """``(cell_lon, cell_lat, Window)`` for every 0.1° cell the box touches."""
    from fungi_ssl.simulate import Window

    out = []
    i0, i1 = math.floor(bbox[0] * 10), math.floor(bbox[2] * 10)
    j0, j1 = math.floor(bbox[1] * 10), math.floor(bbox[3] * 10)
    for i in range(i0, i1 + 1):
        for j in range(j0, j1 + 1):
            c_lon, c_lat = round(i / 10 + 0.05, 2), round(j / 10 + 0.05, 2)
            west, east = max(bbox[0], i / 10), min(bbox[2], (i + 1) / 10)
            south, north = max(bbox[1], j / 10), min(bbox[3], (j + 1) / 10)
            if west >= east or south >= north:
                continue
            epsg = utm_epsg(c_lon, c_lat)
            lons = np.linspace(west, east, 11)
            lats = np.linspace(south, north, 11)
            glon, glat = np.meshgrid(lons, lats)
            x, y = lonlat_to_crs(glon.ravel(), glat.ravel(), epsg)
            col0 = math.floor(x.min() / 10) - margin
            col1 = math.ceil(x.max() / 10) + margin
            row0 = math.floor(-y.max() / 10) - margin
            row1 = math.ceil(-y.min() / 10) + margin
            out.append((c_lon, c_lat, Window(epsg, col0, row0, col1 - col0, row1 - row0,
                                              f"grid_{c_lon:.2f}_{c_lat:.2f}")))
    return out


def write_simulated_tiles(
    study: Any,
    trained: Any,
    bbox: Sequence[float],
    years: Sequence[int],
    root: str | Path | None = None,
    *,
    seed: int = 0,
    progress: bool = True,
) -> SimulatedTiles:
    """Embed the simulated study over a box and write it in geotessera's tile layout.

    For every year and every 0.1° cell the box touches, the simulator's
    Sentinel-1/2 cube over the part of the box in that cell (plus
    :data:`TILE_MARGIN_PX` pixels) is embedded with ``trained``
    (:func:`fungi_ssl.embeddings.embed.embed_cube`: int8 plus per-pixel scale, as TESSERA
    stores them) and written with :func:`fungi_ssl.embeddings.tessera_write.write_tile` in the
    cell centre's UTM zone, on the simulator's 10 m grid. ``root`` then reads
    back through :mod:`fungi_ssl.embeddings.tessera` and :func:`fungi_ssl.maps.predict.predict_map`
    like a geotessera download.

    Parameters
    ----------
    study : fungi_ssl.simulate.SimulatedStudy
    trained : fungi_ssl.embeddings.encoder.TrainedEncoder
        The book's encoder (chapter 02).
    bbox : (west, south, east, north)
        WGS84 degrees.
    years : sequence of int
    root : path, optional
        Output folder; default a cache folder under ``data/cache/region_tiles``
        keyed by the study, encoder, box, years and seed (a second call
        returns the finished tiles at once).
    seed : int
        Seed of the embedding's timestep draws.
    progress : bool

    Returns
    -------
    SimulatedTiles

    Raises
    ------
    ValueError
        A bad box or an empty list of years.
    """
    import time

    from tqdm import tqdm

    from fungi_ssl.embeddings.embed import embed_cube_in_memory
    from fungi_ssl.simulate.field_data import simulator_fingerprint

    b = check_bbox(bbox)
    years = sorted({int(y) for y in years})
    if not years:
        raise ValueError("years: give at least one year")
    sig = tiles_encoder(trained)
    if root is None:
        params = {"study": study.config.as_dict(), "simulator": simulator_fingerprint(),
                  "encoder": sig, "bbox": list(b), "years": years, "seed": int(seed),
                  "margin": TILE_MARGIN_PX}
        root = cache_dir("region_tiles", params) / "tiles"
    root = Path(root)
    done = root / "complete.json"
    if done.is_file():
        info = json.loads(done.read_text())
        if info.get("encoder") == sig and info.get("years") == years and info.get("bbox") == list(b):
            return SimulatedTiles(root, b, years, info["tiles"], info["n_pixels"], sig, 0.0)
    t0 = time.perf_counter()
    cells = _cell_windows(b, TILE_MARGIN_PX)
    names, n_pixels = [], 0
    jobs = [(y, c) for y in years for c in cells]
    for year, (c_lon, c_lat, win) in tqdm(jobs, desc="simulated tiles", unit="tile",
                                          disable=not progress):
        cube = study.cube(win, year, chunks=64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pixels without a clear observation: no-data scale
            ds = embed_cube_in_memory(cube, trained, chunk=64, seed=seed)
        emb = np.asarray(ds["embedding"].values, dtype=np.int8)
        scale = np.asarray(ds["scale"].values, dtype=np.float32)
        if scale.ndim == 3:
            scale = scale[..., 0]
        from affine import Affine

        transform = Affine(10.0, 0.0, win.col0 * 10.0, 0.0, -10.0, -win.row0 * 10.0)
        tessera_write.write_tile(root, year, c_lon, c_lat, emb, scale, crs=win.epsg,
                           transform=transform, overwrite=True)
        names.append(win.name)
        n_pixels += emb.shape[0] * emb.shape[1]
    meta = {"dataset_version": sig.split(":", 1)[1], "dataset_variant": "fungi_ssl.simulate",
            "note": "simulated embeddings written by fungi_ssl.region.workflow.write_simulated_tiles"}
    (root / tessera.METADATA_FILENAME).write_text(json.dumps(meta, indent=1) + "\n")
    seconds = time.perf_counter() - t0
    names = sorted(set(names))
    done.write_text(json.dumps({"encoder": sig, "years": years, "bbox": list(b), "tiles": names,
                                "n_pixels": n_pixels}))
    return SimulatedTiles(root, b, years, names, n_pixels, sig, seconds)


@dataclass
class SimulatedCovariates:
    """A stack :func:`write_simulated_covariates` wrote.

    Attributes
    ----------
    path : pathlib.Path
    columns : list of str
        Its bands: the SPUN-named 1 km covariates.
    epsg : int
        Its CRS: the UTM zone of the box's centre (the map's).
    n_cells : int
        1 km cells (rows × columns).
    """

    path: Path
    columns: list[str]
    epsg: int
    n_cells: int


def write_simulated_covariates(
    study: Any, bbox: Sequence[float], path: str | Path, *, margin_cells: int = 1,
    overwrite: bool = True,
) -> SimulatedCovariates:
    """Write the simulated study's 1 km covariates over a box as a raster stack.

    The cells are the 1 km cells of the UTM zone of the box's centre (the
    zone :func:`fungi_ssl.maps.predict.predict_map` maps the box in) that the box
    touches, plus ``margin_cells`` on each side. Each cell's values are
    :func:`fungi_ssl.simulate.sensors.covariates_1km` of a stand-in site at its
    centre pixel, so they are exactly the covariates every sample in that
    cell carries in the study's table (as :func:`fungi_ssl.maps.resolution.cell_covariates`
    asks for them). Bands are named as the table's columns.

    Parameters
    ----------
    study : fungi_ssl.simulate.SimulatedStudy
    bbox : (west, south, east, north)
        WGS84 degrees.
    path : path
        ``.tif`` (a GeoTIFF whose band descriptions name the covariates) or
        ``.zarr`` (one variable per covariate).
    margin_cells : int
    overwrite : bool

    Returns
    -------
    SimulatedCovariates
    """
    from pyproj import Transformer

    from fungi_ssl.data.covariate_stack import cells_to_stack, write_covariate_stack
    from fungi_ssl.simulate.sensors import covariates_1km

    b = check_bbox(bbox)
    epsg = utm_epsg((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
    tr = Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True)
    xmin, ymin, xmax, ymax = tr.transform_bounds(*b, densify_pts=21)
    m = int(margin_cells)
    cc = np.arange(math.floor(xmin / 1000) - m, math.floor(xmax / 1000) + m + 1)
    cr = np.arange(math.floor(-ymax / 1000) - m, math.floor(-ymin / 1000) + m + 1)
    gc, gr = (a.ravel() for a in np.meshgrid(cc, cr))
    ids = [f"{epsg}_{r}_{c}" for r, c in zip(gr, gc)]
    sites = pd.DataFrame({"site_id": ids, "epsg": epsg, "col": gc * 100 + 50,
                          "row": gr * 100 + 50})
    cov = covariates_1km(study.landscape, sites, pd.DataFrame({"sample_id": ids, "site_id": ids}),
                         study.config.sensors)
    cells = pd.concat([pd.DataFrame({"x": (gc + 0.5) * 1000.0, "y": -(gr + 0.5) * 1000.0}),
                       cov.reset_index(drop=True)], axis=1)
    out = write_covariate_stack(cells_to_stack(cells, epsg), path, overwrite=overwrite)
    return SimulatedCovariates(out, [str(c) for c in cov.columns], int(epsg), len(ids))


def simulated_woodland(
    study: Any, bbox: Sequence[float], year: int, out: str | Path | None = None,
    min_area_ha: float = MIN_POLYGON_HA,
) -> Any:
    """Woodland polygons over a box from the simulator's land cover in ``year``.

    Connected woodland of one kind (``ancient`` or ``other``), as an
    ancient-woodland inventory delineates it, in the UTM zone of the box
    centre; polygons under ``min_area_ha`` are dropped. Written to ``out``
    (a GeoPackage) when given.

    Returns
    -------
    geopandas.GeoDataFrame
        ``polygon_id``, ``woodland``, ``area_ha``, geometry.
    """
    import geopandas as gpd
    import rasterio.features
    from pyproj import CRS
    from scipy import ndimage
    from shapely.geometry import shape

    from fungi_ssl.simulate import WOODLAND_CODES, Window

    b = check_bbox(bbox)
    epsg = utm_epsg((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
    glon, glat = np.meshgrid(np.linspace(b[0], b[2], 11), np.linspace(b[1], b[3], 11))
    x, y = lonlat_to_crs(glon.ravel(), glat.ravel(), epsg)
    col0, col1 = math.floor(x.min() / 10), math.ceil(x.max() / 10)
    row0, row1 = math.floor(-y.max() / 10), math.ceil(-y.min() / 10)
    win = Window(epsg, col0, row0, col1 - col0, row1 - row0, "woodland")
    lay = study.layers(win, int(year))
    wood = np.isin(lay["landcover"].values, WOODLAND_CODES)
    ancient = lay["ancient"].values.astype(bool) & wood
    other = wood & ~ancient
    labels = np.zeros(wood.shape, dtype=np.int32)
    la, na = ndimage.label(ancient)
    lo, _ = ndimage.label(other)
    labels[ancient] = la[ancient]
    labels[other] = lo[other] + na
    shapes = list(rasterio.features.shapes(labels, mask=labels > 0,
                                           transform=lay.rio.transform()))
    # built column by column, so a box without woodland gives an empty table, not an error
    gdf = gpd.GeoDataFrame(
        {"label": [int(v) for _, v in shapes],
         "woodland": ["ancient" if v <= na else "other" for _, v in shapes]},
        geometry=[shape(g) for g, _ in shapes], crs=CRS.from_epsg(epsg))
    if len(gdf):
        gdf = gdf.dissolve(by="label", aggfunc="first").reset_index(drop=True)
    gdf["area_ha"] = gdf.area / 10_000.0 if len(gdf) else []
    gdf = gdf[gdf["area_ha"] >= min_area_ha].reset_index(drop=True)
    gdf.insert(0, "polygon_id", [f"W{i:04d}" for i in range(len(gdf))])
    if out is not None:
        out = Path(out)
        if out.exists():
            out.unlink()
        gdf.to_file(out, driver="GPKG")
    return gdf


# --------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------
def fit_region_model(
    frame: pd.DataFrame, encoder: str, *, guild: str = "ECM", target_column: str = "rarefied",
    model: str = "lightgbm", n_components: int = 32, seed: int = 0,
    covariates: Sequence[str] | None = None,
) -> Any:
    """Fit the map model on a predictor table's SSL patches.

    Parameters
    ----------
    frame : pandas.DataFrame
        :func:`fungi_ssl.predictors.tables.predictor_table`'s frame (``ssl_`` columns,
        ``site_id`` and the target).
    encoder : str
        Signature of the embeddings the model will map (:func:`tiles_encoder`).
    guild, target_column : str
        Recorded in the model's settings; the map's units follow the guild.
    model, n_components, seed
        As :class:`fungi_ssl.maps.mapmodel.MapModel`.
    covariates : sequence of str, optional
        Columns of the table holding 1 km covariates: fits the product model
        (chapter 06's map model) on the patch and these; default the
        ``ssl``-only model.
    """
    from fungi_ssl.maps.mapmodel import MapModel

    if not any(c.startswith("ssl_") for c in frame.columns):
        raise ValueError("fit_region_model: the table has no ssl_ patch columns to fit on")
    y = None
    if target_column in frame.columns:
        y = pd.to_numeric(frame[target_column], errors="coerce").to_numpy(dtype=float)
    m = MapModel(model, n_components=n_components, seed=seed)
    m.fit(frame, y, encoder=encoder, covariates=None if not covariates else list(covariates))
    m.settings.update({"target_column": target_column, "guild": guild,
                       "map_model": "product" if covariates else "ssl"})
    return m


def product_covariates(frame: pd.DataFrame) -> list[str]:
    """The 1 km covariates of a predictor table that the product model sees: chapter 06's
    (:data:`fungi_ssl.maps.resolution.ONE_KM_SET`, climate, soil and land cover)."""
    from fungi_ssl.validation.pipelines import predictor_matrix

    return [str(c) for c in predictor_matrix(frame, "climate+soil+landcover").columns]


# --------------------------------------------------------------------------
# area of applicability over a map grid
# --------------------------------------------------------------------------
@dataclass
class AOARun:
    """The area of applicability over a map.

    Attributes
    ----------
    di : xarray.DataArray
        Dissimilarity index per pixel (NaN without a complete patch).
    inside : xarray.DataArray
        float32: 1 inside the area of applicability, 0 outside, NaN without DI.
    threshold : float
    share_inside : float
        Of the pixels with a DI, the share inside.
    n_pixels : int
    train_di : numpy.ndarray
    path : pathlib.Path or None
    """

    di: Any
    inside: Any
    threshold: float
    share_inside: float
    n_pixels: int
    train_di: np.ndarray
    path: Path | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _weights(est: Any, Z: np.ndarray, importance_weights: Any) -> np.ndarray:
    """Predictor weights: tree importance (gain), else |coefficient| × SD for linear models.

    Only the first ``Z.shape[1]`` predictors (the patch's components) are
    weighted: a product model's regressor also sees the 1 km covariates,
    which lie outside the space the area of applicability is measured in.
    """
    n = Z.shape[1]
    try:
        return importance_weights(est).to_numpy(dtype=float)[:n]
    except ValueError:
        steps = [s for _, s in est.steps] if hasattr(est, "steps") else [est]
        coef = getattr(steps[-1], "coef_", None)
        if coef is None:
            return np.ones(n)
        # one SD of a predictor moves the prediction by |coef| × SD (÷ a scaler's own scale)
        w = np.abs(np.ravel(coef)[:n]) * Z.std(axis=0, ddof=1)
        for step in steps[:-1]:
            if getattr(step, "scale_", None) is not None:
                w = w / np.asarray(step.scale_, dtype=float)[:n]
        return w


def area_of_applicability(
    model: Any,
    train_patches: np.ndarray,
    groups: Any,
    embeddings: str | Path,
    year: int,
    bbox: Sequence[float],
    *,
    out: str | Path | None = None,
    n_folds: int = 5,
    rows_per_block: int = 64,
    progress: bool = True,
    coordinates: Any = None,
    block_km: float = 50.0,
    seed: int = 0,
) -> AOARun:
    """Area of applicability of a map model over a box, in its own predictor space.

    The model's predictors are the PCA scores of the 3 × 3 patch, so the
    training samples and every map pixel are projected with the model's PCA
    and compared there, weighted by the regressor's importance (gain). The
    training DI and the threshold come from the validation folds chapter 07
    uses too (:func:`fungi_ssl.uncertainty.bias_maps.validation_folds`: ``block_km``
    spatial blocks, ``n_folds`` folds) when ``coordinates`` are given, so
    both chapters' thresholds mean the same; without coordinates, from
    ``n_folds`` site-grouped folds (``groups``), and ``details["folds"]``
    says so (:class:`fungi_ssl.uncertainty.aoa.AreaOfApplicability`). Pixels are read on the
    map's grid (:func:`fungi_ssl.maps.sources.open_embedding_source`), so the result
    lines up with the map pixel for pixel.

    Parameters
    ----------
    model : MapModel
    train_patches : numpy.ndarray
        The training patches ``(n, k·k·D)`` the model was fitted on.
    groups : array_like
        Site of each training patch (folds never split a site).
    embeddings : path
        geotessera folder or Zarr store(s), as for the map.
    year : int
    bbox : (west, south, east, north)
    out : path, optional
        GeoTIFF to write the DI to (band 1) with the threshold as a tag.
    n_folds : int
    coordinates : DataFrame or (n, 2) array, optional
        ``longitude``, ``latitude`` (WGS84) of each training patch: spatial-block folds.
    block_km : float
        Block side of those folds (chapter 04's 50 km).
    seed : int
        Seed of the assignment of blocks to folds.
    rows_per_block : int
        Side of the map windows computed at a time, rounded up to a multiple
        of 16 (memory follows the window).
    progress : bool

    Returns
    -------
    AOARun
    """
    import xarray as xr
    from sklearn.model_selection import GroupKFold

    from fungi_ssl.uncertainty.aoa import importance_weights
    from fungi_ssl.uncertainty.bias_maps import map_aoa, uncertainty_maps

    X = np.asarray(train_patches, dtype=np.float32)
    g = np.asarray(groups)
    ok = np.isfinite(X).all(axis=1)
    folds = np.full(len(X), -1)
    if coordinates is not None:
        from fungi_ssl.uncertainty.bias_maps import validation_folds

        ll = (coordinates if isinstance(coordinates, pd.DataFrame)
              else pd.DataFrame(np.asarray(coordinates, float), columns=["longitude", "latitude"]))
        if len(ll) != len(X):
            raise ValueError(f"coordinates: {len(ll)} rows for {len(X)} training patches")
        labels, folds_how = validation_folds(ll.reset_index(drop=True), block_km, n_folds, seed)
        folds[ok] = labels[ok]
    else:
        for i, (_, test) in enumerate(GroupKFold(n_splits=n_folds).split(X[ok], groups=g[ok])):
            folds[np.flatnonzero(ok)[test]] = i
        folds_how = f"{n_folds} site-grouped folds"
    w = _weights(model.regressor_, model.project_patches(X[ok]), importance_weights)
    # chapter 07's AOA of a map model and its window-by-window map, computed once for both
    aoa = map_aoa(model, X, folds, weights=w)
    window = max(16, -(-int(rows_per_block) // 16) * 16)
    run = uncertainty_maps(model, embeddings, int(year), bbox, aoa=aoa, quantile=0.0,
                           layers=("dissimilarity",), window=window, progress=progress)
    grid_da = run.maps["dissimilarity"]
    di = grid_da.values.astype(np.float32)
    inside = np.where(np.isfinite(di), (di <= aoa.threshold_).astype(np.float32), np.nan)
    coords = {"y": grid_da["y"].values, "x": grid_da["x"].values}
    crs, transform = run.maps.rio.crs, run.maps.rio.transform()
    di_da = xr.DataArray(di, dims=("y", "x"), coords=coords, name="dissimilarity_index")
    di_da = di_da.rio.write_crs(crs.to_wkt()).rio.write_transform(transform)
    in_da = xr.DataArray(inside.astype(np.float32), dims=("y", "x"), coords=coords, name="aoa")
    in_da = in_da.rio.write_crs(crs.to_wkt()).rio.write_transform(transform)
    n_di = int(np.isfinite(di).sum())
    share = float(np.nansum(inside) / n_di) if n_di else float("nan")
    path = None
    if out is not None:
        path = Path(out)
        di_da.attrs.update(threshold=float(aoa.threshold_), year=int(year),
                           description="dissimilarity index; inside the area of applicability "
                           "where DI <= threshold",
                           long_name="dissimilarity index",  # the band's description
                           units="1 (distance to the nearest training sample / mean "
                           "distance between training samples)")
        di_da.rio.to_raster(path, driver="COG")
    return AOARun(di_da, in_da, float(aoa.threshold_), share, run.n_pixels, aoa.train_di_,
                  path, {"n_folds": n_folds, "n_train": int(ok.sum()), "folds": folds_how})


# --------------------------------------------------------------------------
# trends per polygon
# --------------------------------------------------------------------------
def trend_summary(table: Any) -> dict[str, Any]:
    """Counts and medians of a :class:`fungi_ssl.trends.trend_table.TrendTable` for the results file.

    Returns
    -------
    dict
        ``n_polygons``, ``n_with_trend``, ``median_percent_per_year`` overall
        and per woodland type, ``n_significant`` and, when the polygons say
        which woodland is ancient, the ancient-minus-other contrast.
    """
    t = table.trends
    slope_col = "percent_per_year" if "percent_per_year" in t.columns else "slope"
    ok = t[t[slope_col].notna()]
    out: dict[str, Any] = {
        "years": list(table.years),
        "n_polygons": len(t),
        "n_with_trend": len(ok),
        "slope_column": slope_col,
        "median_slope": float(ok[slope_col].median()) if len(ok) else None,
    }
    if "mk_p" in ok.columns:
        out["n_significant_5pct"] = int((ok["mk_p"] < 0.05).sum())
    if "woodland" in ok.columns:
        out["median_slope_by_woodland"] = {
            str(kind): float(v) for kind, v in ok.groupby("woodland")[slope_col].median().items()
        }
    if table.contrast is not None:
        c = table.contrast
        out["contrast"] = {
            "slope_ancient": float(c.slope_ancient), "slope_other": float(c.slope_other),
            "difference": float(c.difference), "ci": [float(v) for v in c.ci],
            "confidence": float(c.confidence), "n_ancient": int(c.n_ancient),
            "n_other": int(c.n_other),
        }
    out["notes"] = list(table.notes)
    return out


# --------------------------------------------------------------------------
# what the chapter runs on
# --------------------------------------------------------------------------
@dataclass
class RegionInputs:
    """What chapter 10 found to run on, or why it cannot run.

    Attributes
    ----------
    simulated : bool
        No ``data_dir``: the chapter writes simulated tiles itself.
    embeddings : pathlib.Path or None
        The embeddings folder or store (None for the simulated region, whose
        tiles are written later).
    samples : pathlib.Path or None
        A real GlobalFungi-style sample table (to fit a model and for the
        area of applicability).
    skip_reason : str or None
        One sentence why the chapter cannot run, else None.
    """

    simulated: bool
    embeddings: Path | None
    samples: Path | None
    skip_reason: str | None


def region_inputs(
    data_dir: str | Path | None, embeddings_dir: str | Path | None = None,
    bbox: Sequence[float] | None = None, model_path: str | Path | None = None,
) -> RegionInputs:
    """Decide what chapter 10 runs on, with one sentence when it cannot run.

    Without ``data_dir`` the chapter maps the simulated region (and
    ``embeddings_dir``, if given, replaces the simulated tiles). With a real
    ``data_dir`` it needs embeddings (``embeddings_dir`` or
    ``<data_dir>/tessera``), a ``bbox``, and either a saved model or a sample
    table to fit one on.

    Examples
    --------
    >>> import tempfile
    >>> region_inputs(tempfile.mkdtemp()).skip_reason[:60]
    'This chapter maps a region from satellite embeddings, and th'
    """
    from fungi_ssl.data.io import find_real_tables

    if not data_dir:
        emb = Path(embeddings_dir) if embeddings_dir else None
        if emb is not None and not emb.exists():
            raise FileNotFoundError(f"embeddings_dir {emb} does not exist")
        return RegionInputs(True, emb, None, None)
    data = Path(data_dir)
    emb = Path(embeddings_dir) if embeddings_dir else data / "tessera"
    if not emb.exists():
        return RegionInputs(False, None, None, (
            "This chapter maps a region from satellite embeddings, and the data directory holds "
            "none (no `tessera/` folder of geotessera tiles and no `embeddings_dir` given), so "
            "it is skipped."))
    try:
        samples = find_real_tables(data).samples
    except FileNotFoundError:  # a folder of embeddings without tables
        samples = None
    if bbox is None:
        return RegionInputs(False, emb, samples, (
            "This chapter maps the region given by the `bbox` parameter, and none was given for "
            "the real data, so it is skipped."))
    if not model_path and samples is None:
        return RegionInputs(False, emb, None, (
            "This chapter needs a saved map model (`model_path`) or a GlobalFungi-style sample "
            "table to fit one on, and the data directory has neither, so it is skipped."))
    return RegionInputs(False, emb, samples, None)


def fit_from_samples(
    samples: pd.DataFrame, embeddings: str | Path, *, target_column: str = "rarefied",
    guild: str = "ECM", model: str = "lightgbm", seed: int = 0, progress: bool = True,
    covariates: str | Path | None = None,
) -> tuple[Any, np.ndarray, np.ndarray, str]:
    """Fit the map model on a real sample table, as ``fungi-ssl fit`` does.

    Patches are read by :func:`fungi_ssl.predictors.tables.embedding_patches`, the
    reader ``fungi-ssl fit`` and chapters 03–05 use: at each sample's plot
    coordinate, from the embeddings of its sampling year by the rule of
    :func:`fungi_ssl.predictors.tables.embedding_years`. With ``covariates`` (a
    stack, :mod:`fungi_ssl.data.covariate_stack`) every band is sampled at the plot
    coordinates and the product model is fitted, as ``fungi-ssl fit
    --covariates`` does.

    Returns
    -------
    model : MapModel
    patches : numpy.ndarray
        ``(n, k·k·D)`` training patches (NaN where incomplete).
    groups : numpy.ndarray
        Site of each sample.
    years_note : str
        Samples per embedding year, and how many took a nearer year.
    """
    from fungi_ssl.data.io import target_values
    from fungi_ssl.maps.mapmodel import MapModel
    from fungi_ssl.predictors.tables import PATCH_SIZE, embedding_patches

    richness = target_values(samples, target_column)
    patches, encoder, which = embedding_patches(samples, embeddings, k=PATCH_SIZE,
                                                progress=progress)
    X = patches.reshape(len(patches), -1)
    groups = samples["site_id"].to_numpy() if "site_id" in samples else np.arange(len(samples))
    cov = None
    if covariates is not None:
        from fungi_ssl.data.covariate_stack import open_covariate_stack

        cov = open_covariate_stack(covariates, where="covariates").at_lonlat(
            samples["longitude"].to_numpy(float), samples["latitude"].to_numpy(float))
    m = MapModel(model, seed=seed).fit(X, richness, encoder=encoder, groups=groups,
                                       embedding_dim=patches.shape[-1], covariates=cov)
    m.settings.update({"target_column": target_column, "guild": guild,
                       "map_model": "ssl" if cov is None else "product"})
    return m, X, groups, which.describe()


# --------------------------------------------------------------------------
# the map model's cross-validated skill (fungi-ssl fit)
# --------------------------------------------------------------------------
def map_model_skill(
    patches: np.ndarray, richness: np.ndarray, lonlat: np.ndarray, *, model: str = "lightgbm",
    n_components: int = 32, seed: int = 0, n_splits: int = 5,
    block_size_m: float = 50_000.0, embedding_dim: int | None = None,
    covariates: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Cross-validated skill of the map model: site-grouped folds and spatial blocks.

    The same chain as :class:`fungi_ssl.maps.mapmodel.MapModel` (patch → PCA →
    regressor) is refitted in each training part and scored on the held-out
    part, on ``log1p`` richness: by 25 m site groups (no core of a test site
    trains the model) and by blocks of ``block_size_m`` (50 km; smaller when the
    samples fill too few, :func:`fungi_ssl.validation.comparison.spatial_splitter`).

    Parameters
    ----------
    patches : numpy.ndarray
        ``(n, k·k·D)`` patches; rows with NaN, or without a richness, are left out.
    richness : numpy.ndarray
        Rarefied richness (≥ 0) per row.
    lonlat : numpy.ndarray
        ``(n, 2)`` longitude and latitude of each sample.
    model, n_components, seed
        As :class:`~fungi_ssl.maps.mapmodel.MapModel`.
    n_splits : int
        Folds of each scheme.
    block_size_m : float
        Side of the spatial blocks asked for.
    embedding_dim : int, optional
        Dimensions per pixel (default: ``patches.shape[1] / 9``).
    covariates : pandas.DataFrame, optional
        The 1 km covariates of each row: the skill is then the product
        model's (:class:`~fungi_ssl.maps.mapmodel.MapModel` fitted with
        ``covariates``), on the rows that have every covariate.

    Returns
    -------
    dict
        ``{"site": {...}, "block": {...}}``, each with ``r2``, ``rmse`` (log1p
        units), ``n_folds``, ``n_samples``; ``block`` also ``block_km``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 9 * 4)) * np.r_[5.0, np.ones(35)]   # dimension 0 leads the PCA
    >>> rich = np.expm1(3 + 0.1 * X[:, 0])
    >>> ll = np.column_stack([rng.uniform(0, 5, 200), rng.uniform(45, 50, 200)])
    >>> skill = map_model_skill(X, rich, ll, model="ridge", n_components=4)
    >>> skill["site"]["r2"] > 0.5, skill["block"]["block_km"]
    (True, 50.0)
    """
    from sklearn.metrics import mean_squared_error, r2_score

    from fungi_ssl.maps.mapmodel import MapModel
    from fungi_ssl.validation.comparison import spatial_splitter
    from fungi_ssl.validation.cv import SiteGroupKFold

    X = np.asarray(patches, dtype=np.float64)
    r = np.asarray(richness, dtype=np.float64)
    xy = np.asarray(lonlat, dtype=np.float64)
    ok = np.isfinite(X).all(axis=1) & np.isfinite(r) & np.isfinite(xy).all(axis=1)
    cov = None
    if covariates is not None:
        cov = covariates.reset_index(drop=True)
        ok &= np.isfinite(cov.to_numpy(dtype=float)).all(axis=1)
        cov = cov.loc[ok].reset_index(drop=True)
    X, r, xy = X[ok], r[ok], xy[ok]
    dim = int(embedding_dim or X.shape[1] // 9)
    y = np.log1p(r)
    frame = pd.DataFrame({"longitude": xy[:, 0], "latitude": xy[:, 1]})
    schemes = {
        "site": SiteGroupKFold(n_splits=n_splits, coords=xy, coordinates="lonlat"),
        "block": spatial_splitter(frame, block_size_m=block_size_m, n_splits=n_splits, seed=seed),
    }
    out: dict[str, Any] = {}
    for name, cv in schemes.items():
        pred = np.full(len(y), np.nan)
        for train, test in cv.split(X):
            m = MapModel(model, n_components=min(n_components, len(train) - 1), seed=seed,
                         n_jobs=1)
            if cov is None:
                m.fit(X[train], r[train], encoder="cv", embedding_dim=dim)
                pred[test] = m.predict_patches(X[test], output="log_richness")
            else:
                m.fit(X[train], r[train], encoder="cv", embedding_dim=dim,
                      covariates=cov.iloc[train])
                pred[test] = m.predict_patches(X[test], output="log_richness",
                                               covariates=cov.iloc[test])
        done = np.isfinite(pred)
        out[name] = {"r2": float(r2_score(y[done], pred[done])),
                     "rmse": float(np.sqrt(mean_squared_error(y[done], pred[done]))),
                     "n_folds": int(cv.get_n_splits()), "n_samples": int(done.sum())}
    out["block"]["block_km"] = schemes["block"].block_size_m / 1000.0
    return out


def held_map_years(embeddings: str | Path, years: Sequence[int]) -> tuple[list[int], str | None]:
    """The asked years that the embeddings hold, and one sentence when some are not held.

    Raises
    ------
    ValueError
        When the embeddings hold none of the years, naming those they do hold.

    Examples
    --------
    >>> import tempfile
    >>> from affine import Affine
    >>> from fungi_ssl.embeddings import tessera_write
    >>> root = tempfile.mkdtemp()
    >>> _ = tessera_write.write_tile(root, 2018, 0.15, 52.05, np.zeros((3, 3, 8), np.int8),
    ...                        np.ones((3, 3), np.float32),
    ...                        transform=Affine(10, 0, 303_000, 0, -10, 5_772_000))
    >>> held_map_years(root, [2018, 2024])
    ([2018], 'The embeddings hold no year 2024 (they hold 2018), so this run maps 2018 only.')
    """
    from fungi_ssl.predictors.tables import held_years

    held = sorted(held_years(embeddings))
    kept = [int(y) for y in years if int(y) in held]
    missing = [int(y) for y in years if int(y) not in held]
    shown = ", ".join(map(str, held))
    if not kept:
        raise ValueError(
            f"years {', '.join(map(str, missing))}: the embeddings under {embeddings} hold "
            f"{shown or 'no year'}; set years to some of those")
    if not missing:
        return kept, None
    return kept, (f"The embeddings hold no year {', '.join(map(str, missing))} (they hold "
                  f"{shown}), so this run maps {', '.join(map(str, kept))} only.")
