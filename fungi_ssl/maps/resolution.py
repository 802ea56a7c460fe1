"""Resolution: a 10 m map and a 1 km map of the same regions, both scored against the truth.

Chapter 06 maps simulated regions twice, from the same field samples:

* **the 10 m map**: chapter 04's ``ssl`` chain refitted on every sample
  (:class:`fungi_ssl.mapmodel.MapModel`), applied to each region's stored
  int8 embeddings with :func:`fungi_ssl.maps.predict_map` (a Cloud-Optimised
  GeoTIFF);
* **the 1 km map**, the SPUN-style technique: a model of the same family on
  the 1 km climate, soil and land-cover covariates (chapter 04's
  ``climate``, ``soil`` and ``landcover`` columns), predicted for every
  1 km cell of each region.

* **product maps** that use both scales: :class:`ProductModel`, one model
  on the patch's principal components and the 1 km covariates of the
  pixel's cell; the 1 km map plus the 10 m map's within-cell deviations; the
  product model's 1 km cell means plus the 10 m map's within-cell deviations
  (:func:`with_within_cell_deviations`); and the 1 km map plus
  :class:`ResidualModel`, trees on the patch fitted to the 1 km model's
  out-of-fold residuals.

The book's product map is the candidate that meets most of issue 18's
criteria (:func:`criteria_table`, :func:`pick_product`). Why no map keeps
every held-out region's mean error within a quarter of a log unit is
measured, not argued: :func:`level_shares` (how much of the regions' true
offsets each map's regional means reproduce) and :func:`oracle_1km_biases`
(the 1 km model, and optionally the product model, refitted on noise-free
labels, :func:`estimand_at_samples`).

Every region is **held out**: its maps come from models fitted without its
samples and without its campaigns' samples within :data:`HOLDOUT_KM`
(:func:`withheld_rows`, :func:`heldout_models`), and pooled scores carry a
percentile interval from a bootstrap over regions (:func:`bootstrap_scores`).

All are scored against :func:`fungi_ssl.simulate.truth.truth_layer`, the
quantity a map of ``log1p(rarefied)`` estimates at each pixel (the mean
``log1p`` of the rarefied richness of a core taken there), on the ``log1p``
scale. Water pixels have no truth and are not scored.

API (stable; chapter 07 builds on it)
-------------------------------------
:func:`regions`
    The chapter's regions for a profile and seed: whole 1 km UTM cells in
    different landscapes (:data:`REGION_LAYOUT`).
:func:`region_store`
    A region's embedding store (cached, :func:`fungi_ssl.embed.cached_embed_cube`),
    one pixel larger than the region on every side so that every mapped pixel
    has its full 3 × 3 patch.
:func:`region_truth`
    The truth layer of a region (expected rarefied richness; NaN on water).
:func:`fitted_map_model`
    The 10 m :class:`~fungi_ssl.mapmodel.MapModel`, refitted on every sample
    and cached under ``data/cache/resolution_model``.
:func:`predict_region_map`
    The 10 m map of a region, as a COG (``log1p`` scale by default).
:func:`cell_covariates`, :func:`fit_1km_model`, :func:`predict_1km_map`
    The SPUN-style 1 km model and its map.
:func:`withheld_rows`, :func:`heldout_models`, :func:`fit_product_model`,
:func:`fit_residual_model`, :func:`region_components`
    The held-out models of a region and the patch components they map from.
:func:`region_products`
    All of the above for every region (:class:`RegionProducts`).
Scoring: :func:`r2`, :func:`squared_correlation`, :func:`cell_means`,
:func:`within_cell_r2`, :func:`pixel_ratio`, :func:`score_products`,
:func:`region_scores`, :func:`bootstrap_scores`.
The product map: :func:`with_within_cell_deviations`, :func:`criteria_table`,
:func:`pick_product`; regional levels: :func:`level_shares`,
:func:`estimand_at_samples`, :func:`oracle_1km_biases`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from affine import Affine

from fungi_ssl.core import config
from fungi_ssl.core.cache import cache_dir
from fungi_ssl.simulate.landscape import PIXEL_SIZE, WATER, WOODLAND_CODES, Window

if TYPE_CHECKING:
    from fungi_ssl.embeddings.encoder import TrainedEncoder
    from fungi_ssl.maps.mapmodel import MapModel
    from fungi_ssl.maps.predict import MapRun
    from fungi_ssl.predictors.tables import PredictorTable
    from fungi_ssl.simulate import SimulatedStudy

__all__ = [
    "CANDIDATES",
    "CELL_PX",
    "CRITERIA",
    "HOLDOUT_KM",
    "ONE_KM_SET",
    "PRODUCT_MARGINS",
    "REGION_LAYOUT",
    "SINGLE_SCALE",
    "YEAR",
    "HeldOutModels",
    "ProductModel",
    "Region",
    "RegionProducts",
    "ResidualModel",
    "bootstrap_scores",
    "cell_covariates",
    "cell_means",
    "chapter04_model",
    "criteria_table",
    "edge_zoom",
    "estimand_at_samples",
    "fit_1km_model",
    "fit_product_model",
    "fit_residual_model",
    "fitted_map_model",
    "heldout_models",
    "level_shares",
    "oracle_1km_biases",
    "pick_product",
    "pixel_ratio",
    "predict_1km_map",
    "predict_grid",
    "predict_region_map",
    "r2",
    "region_components",
    "region_products",
    "region_scores",
    "region_store",
    "region_truth",
    "regions",
    "score_products",
    "skip_reason",
    "squared_correlation",
    "with_within_cell_deviations",
    "withheld_rows",
    "within_cell_r2",
]

#: Pixels of 10 m along the side of a 1 km cell.
CELL_PX = round(1000.0 / PIXEL_SIZE)
#: The year mapped (one year, as chapter 02's tile).
YEAR = 2020
#: Regions per profile: how many, and their side in whole 1 km cells.
#: Full: 8 regions of 3 × 3 km (72 cells, 720,000 pixels); quick: 8 of 1 × 1 km (80,000
#: pixels). Eight regions at least, so that a bootstrap over regions gives an interval.
REGION_LAYOUT: dict[str, dict[str, int]] = {
    "full": {"n_regions": 8, "side_km": 3},
    "quick": {"n_regions": 8, "side_km": 1},
}
#: A region's own campaigns lose their samples within this distance (km) of the region
#: when the region is held out (:func:`withheld_rows`).
HOLDOUT_KM = 10.0
#: Confidence of the bootstrap intervals over regions.
CI_LEVEL = 0.9
#: The map candidates chapter 06 scores, with what each is.
CANDIDATES: dict[str, str] = {
    "10m": "the study's 10 m map: ssl chain (PCA of the 3 × 3 embedding patch → trees)",
    "1km": "the SPUN-style 1 km map: trees on the 1 km climate, soil and land-cover covariates",
    "product": ("one tree model on the PCA of the 3 × 3 embedding patch and the 1 km covariates "
                "of the pixel's cell (cell value)"),
    "deviations": ("1 km map + the 10 m map's within-cell deviations (keeps the 1 km map's cell "
                   "means)"),
    "residual": ("1 km map + a residual model: trees on the PCA of the patch fitted to the "
                 "samples' residuals from out-of-fold 1 km predictions"),
    "product_deviations": ("product model's 1 km cell means + the 10 m map's within-cell "
                           "deviations (the level of each cell from the product model, the "
                           "pattern inside it from the 10 m map)"),
}
#: The single-scale maps a product map is measured against (never a product candidate).
SINGLE_SCALE = ("10m", "1km")
#: The issue's criteria for a product map (issue 18): per-pixel R² at least this much above
#: the better single-scale map; R² of 1 km means at most this much below the 1 km map's;
#: within-cell R² at most this much below the 10 m map's; |mean error| of every region at
#: most this many log units.
PRODUCT_MARGINS: dict[str, float] = {"pixel": 0.03, "cell": 0.02, "within": 0.05, "bias": 0.25}
#: The 1 km predictor set of the SPUN-style model (chapter 04's 1 km sets together).
ONE_KM_SET = "climate+soil+landcover"
#: Pixels of margin embedded around a region, so its edge pixels have full 3 × 3 patches.
MARGIN_PX = 1
#: A candidate region is kept if its woodland share (of land) lies in this range and its
#: water share stays below WATER_MAX: woodland must meet open land in every region.
WOOD_RANGE = (0.15, 0.85)
WATER_MAX = 0.2


def skip_reason(data_dir: str | Path | None) -> str | None:
    """Why chapter 06 cannot run on a data directory (one sentence), or None on the simulated study.

    The chapter scores maps against a known 10 m truth, which only the
    simulated study has; real data are never replaced by simulated data.

    Examples
    --------
    >>> skip_reason(None) is None, skip_reason("") is None
    (True, True)
    >>> skip_reason("real").endswith("so this chapter is skipped.")
    True
    """
    if not data_dir:
        return None
    return ("A data directory was given, and real data have neither embeddings of the simulated "
            "regions nor a known 10 m truth to score maps against, so this chapter is skipped.")


# --------------------------------------------------------------------------
# Regions
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Region:
    """A mapped region: a square of whole 1 km UTM cells around a sampling campaign.

    Attributes
    ----------
    name : str
        Short label, e.g. ``"R1"``.
    window : Window
        The mapped pixels (``col0``, ``row0`` multiples of :data:`CELL_PX`).
    continent, focus : str
        The campaign's continent and habitat focus (``forest``, ``mixed``, ``open``).
    campaign : int
        The campaign whose first site the region is centred on.
    year : int
        The year mapped.
    woodland_share, water_share : float
        Shares of the region's pixels (woodland: of land pixels), on a coarse sub-grid.

    Examples
    --------
    >>> r = Region("R1", Window(32630, 500, -6000, 200, 200, "R1"), "Europe", "forest", 7,
    ...            2020, 0.5, 0.0)
    >>> r.n_cells, r.n_pixels, r.bbox[0], r.embed_window.width
    (4, 40000, 5005.0, 202)
    """

    name: str
    window: Window
    continent: str
    focus: str
    campaign: int
    year: int
    woodland_share: float
    water_share: float

    @property
    def label(self) -> str:
        """``"R1: Asia, open (campaign 300)"``."""
        return f"{self.name}: {self.continent}, {self.focus} (campaign {self.campaign})"

    @property
    def side_km(self) -> int:
        return self.window.width // CELL_PX

    @property
    def n_cells(self) -> int:
        """Whole 1 km cells in the region."""
        return (self.window.width // CELL_PX) * (self.window.height // CELL_PX)

    @property
    def n_pixels(self) -> int:
        return self.window.width * self.window.height

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """``(xmin, ymin, xmax, ymax)`` of the pixel centres (the bbox :func:`predict_map` takes)."""
        w = self.window
        return (float(w.x[0]), float(w.y[-1]), float(w.x[-1]), float(w.y[0]))

    @property
    def embed_window(self) -> Window:
        """The region grown by :data:`MARGIN_PX` on every side (what is embedded)."""
        w = self.window
        return Window(w.epsg, w.col0 - MARGIN_PX, w.row0 - MARGIN_PX, w.width + 2 * MARGIN_PX,
                      w.height + 2 * MARGIN_PX, w.name)

    def to_dict(self) -> dict[str, Any]:
        w = self.window
        return {"name": self.name, "epsg": w.epsg, "col0": w.col0, "row0": w.row0,
                "width": w.width, "height": w.height, "continent": self.continent,
                "focus": self.focus, "campaign": self.campaign, "year": self.year}


def _check_profile(profile: str) -> dict[str, int]:
    config.get_profile(profile)  # a clear error for an unknown name
    return REGION_LAYOUT[profile]


def _shares(study: SimulatedStudy, window: Window, year: int, step: int = 10) -> tuple[float, float]:
    L = study.landscape.layers(np.array([window.epsg]), window.x[None, ::step],
                               window.y[None, ::step], year)
    lc = L["landcover"][0]
    land = lc != WATER
    wood = float(np.isin(lc, WOODLAND_CODES)[land].mean()) if land.any() else 0.0
    return wood, float((~land).mean())


def regions(profile: str = "full", seed: int = 0, year: int = YEAR,
            n_regions: int | None = None, side_km: int | None = None) -> list[Region]:
    """The chapter's map regions: squares of whole 1 km cells in different landscapes.

    Candidates are the first sites of the campaigns, largest campaign first.
    Each region is the ``side_km`` × ``side_km`` block of 1 km UTM cells
    centred on the cell of that site. Regions are picked greedily: at each
    step the first candidate on the least-used continent whose
    (continent, habitat focus) pair is not yet taken and whose land holds
    woodland and open land (:data:`WOOD_RANGE`, :data:`WATER_MAX`), with no
    overlap with a region already picked. So the regions span both continents
    and the campaigns' habitat foci.

    Parameters
    ----------
    profile : {"quick", "full"}
        Sets the number and size of regions (:data:`REGION_LAYOUT`).
    seed : int
        Seed of the simulated study.
    year : int
        The year mapped.
    n_regions, side_km : int, optional
        Override the profile's layout (tests use tiny regions).

    Returns
    -------
    list of Region
        Named ``R1``, ``R2`` … in the order picked.
    """
    from fungi_ssl.simulate.field_data import _cached_tables, simulated_study

    layout = _check_profile(profile)
    n = int(n_regions if n_regions is not None else layout["n_regions"])
    side = int(side_km if side_km is not None else layout["side_km"])
    if n < 1 or side < 1:
        raise ValueError(f"regions: n_regions and side_km must be positive, got {n} and {side}")
    if int(year) not in config.YEARS:
        raise ValueError(f"regions: year must be one of {list(config.YEARS)}, got {year}")
    study = simulated_study(profile, seed)
    _cached_tables(study)  # restores the drawn campaigns and sites from the cache
    sites = study.sites
    camps = study.campaigns.set_index("campaign")
    order = sites.groupby("campaign")["n_cores"].sum().sort_values(ascending=False).index
    first = sites.drop_duplicates("campaign").set_index("campaign")
    picked: list[Region] = []
    used_pairs: set[tuple[str, str]] = set()
    rejected: set[int] = set()
    continents = sorted(camps["continent"].unique())
    while len(picked) < n:
        counts = {c: sum(r.continent == c for r in picked) for c in continents}
        found = None
        for want in sorted(continents, key=lambda c: (counts[c], continents.index(c))):
            for cid in order:
                c = camps.loc[cid]
                pair = (str(c["continent"]), str(c["focus"]))
                if cid in rejected or pair in used_pairs or pair[0] != want:
                    continue
                s = first.loc[cid]
                cc, cr = int(s["col"]) // CELL_PX, int(s["row"]) // CELL_PX
                w = Window(int(s["epsg"]), (cc - side // 2) * CELL_PX, (cr - side // 2) * CELL_PX,
                           side * CELL_PX, side * CELL_PX)
                overlap = any(r.window.epsg == w.epsg
                              and abs(r.window.col0 - w.col0) < w.width
                              and abs(r.window.row0 - w.row0) < w.height for r in picked)
                wood, water = _shares(study, w, year)
                if overlap or not (WOOD_RANGE[0] <= wood <= WOOD_RANGE[1]) or water > WATER_MAX:
                    rejected.add(cid)
                    continue
                found = (cid, pair, w, wood, water)
                break
            if found:
                break
        if found is None:
            if not used_pairs:
                raise ValueError("regions: no campaign lies in a landscape where woodland meets "
                                 "open land")
            used_pairs.clear()  # every pair taken: allow repeats of landscape type
            continue
        cid, pair, w, wood, water = found
        used_pairs.add(pair)
        name = f"R{len(picked) + 1}"
        w = Window(w.epsg, w.col0, w.row0, w.width, w.height, name)
        picked.append(Region(name, w, pair[0], pair[1], int(cid), int(year), wood, water))
    return picked


# --------------------------------------------------------------------------
# Embeddings, truth
# --------------------------------------------------------------------------
def region_store(region: Region, trained: TrainedEncoder, profile: str = "full", seed: int = 0,
                 progress: bool = True) -> Path:
    """The embedding store of a region in its year, embedded once and cached.

    The simulated Sentinel-1/2 cube of :attr:`Region.embed_window` (the
    region plus a one-pixel margin) is embedded with ``trained`` (the book's
    chapter-02 encoder, :func:`fungi_ssl.predictors.pretrained_encoder`) by
    :func:`fungi_ssl.embed.cached_embed_cube`, keyed by the study, the
    simulator's fingerprint, the window, the year and the encoder.

    Returns
    -------
    pathlib.Path
        The Zarr store (open it with :func:`fungi_ssl.embed.open_embeddings`;
        pass ``{region.year: path}`` to :func:`fungi_ssl.maps.predict_map`).
    """
    from fungi_ssl.embeddings.embed import cached_embed_cube
    from fungi_ssl.simulate.field_data import simulated_study, simulator_fingerprint

    study = simulated_study(profile, seed)
    w = region.embed_window
    cube = study.cube(w, region.year, chunks=64)
    params = {"study": study.config.as_dict(), "simulator": simulator_fingerprint(),
              "window": [w.epsg, w.col0, w.row0, w.width, w.height], "year": region.year}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no-data pixels are counted by the map
        ds = cached_embed_cube(cube, trained, params, chunk=128, seed=seed, progress=progress)
    src = ds.encoding.get("source")
    if not src:  # pragma: no cover - xarray records the path of a store it opened
        raise ValueError("region_store: cannot tell where the embedding store lies")
    return Path(src)


def region_truth(region: Region, profile: str = "full", seed: int = 0) -> xr.DataArray:
    """The truth of a region: :func:`fungi_ssl.simulate.truth.truth_layer` (expected rarefied
    richness of a core at each pixel, NaN on water), ``(y, x)`` with CRS."""
    from fungi_ssl.simulate.field_data import simulated_study
    from fungi_ssl.simulate.truth import truth_layer

    return truth_layer(simulated_study(profile, seed), region.window, region.year)


def edge_zoom(landcover: np.ndarray, size: int = CELL_PX,
              step: int | None = None) -> tuple[int, int]:
    """Row and column offsets of the ``size``-pixel square where woodland meets open land most.

    Squares on a grid of ``step`` pixels (default ``size // 2``; :data:`CELL_PX`
    keeps the square on one 1 km cell of a region) are scored by the smaller of their
    woodland and open-land shares plus the share of pixels on a
    woodland/open boundary; water does not count as open land.

    Parameters
    ----------
    landcover : numpy.ndarray
        Land-cover codes ``(H, W)`` (:data:`fungi_ssl.simulate.LANDCOVER_CLASSES` order).
    size : int
        Side of the square in pixels.
    step : int, optional
        Spacing of the candidate squares.

    Examples
    --------
    >>> lc = np.full((40, 40), 3)          # grassland
    >>> lc[20:, 25:] = 0                   # broadleaf in the lower right
    >>> edge_zoom(lc, size=20)
    (10, 20)
    """
    lc = np.asarray(landcover)
    if lc.ndim != 2 or size < 1 or size > min(lc.shape):
        raise ValueError(f"edge_zoom: size {size} does not fit a land-cover array of shape "
                         f"{lc.shape}")
    wood = np.isin(lc, WOODLAND_CODES)
    open_ = ~wood & (lc != WATER)
    edge = np.zeros_like(wood)
    edge[:, 1:] |= wood[:, 1:] != wood[:, :-1]
    edge[1:, :] |= wood[1:, :] != wood[:-1, :]
    best, best_score = (0, 0), -np.inf
    step = max(1, size // 2 if step is None else int(step))
    for r in range(0, lc.shape[0] - size + 1, step):
        for c in range(0, lc.shape[1] - size + 1, step):
            sl = (slice(r, r + size), slice(c, c + size))
            score = min(wood[sl].mean(), open_[sl].mean()) + edge[sl].mean()
            if score > best_score:
                best, best_score = (r, c), score
    return best


# --------------------------------------------------------------------------
# The 10 m map
# --------------------------------------------------------------------------
def fitted_map_model(table: PredictorTable, trained: TrainedEncoder, model: str = "lightgbm",
                     seed: int = 0, profile: str = "full") -> MapModel:
    """Chapter 04's ``ssl`` chain refitted on every sample, cached under ``data/cache``.

    :class:`fungi_ssl.mapmodel.MapModel` with the book's settings
    (:data:`fungi_ssl.pipelines.SSL_COMPONENTS` principal components of the
    3 × 3 patch, :data:`fungi_ssl.pipelines.BOOK_MODEL_PARAMS`; LightGBM and
    XGBoost stop early on a site-grouped tenth of the rows, then are refitted
    on all). The fitted model is saved with :meth:`MapModel.save` under
    ``data/cache/resolution_model/<key>/model.zip``, keyed by the study, the
    simulator, the encoder, the model settings and the package versions.
    """
    from fungi_ssl.maps.mapmodel import MapModel
    from fungi_ssl.maps.modelspec import encoder_signature, library_versions
    from fungi_ssl.simulate.field_data import simulator_fingerprint
    from fungi_ssl.validation.pipelines import BOOK_MODEL_PARAMS, SSL_COMPONENTS

    if not table.has_ssl:
        raise ValueError("fitted_map_model: the predictor table has no SSL patch columns")
    study = table.field.study
    params = {"study": None if study is None else study.config.as_dict(),
              "simulator": simulator_fingerprint(), "source": table.source,
              "n_rows": len(table.frame), "encoder": encoder_signature(trained),
              "model": model, "params": BOOK_MODEL_PARAMS.get(model, {}),
              "components": SSL_COMPONENTS, "seed": int(seed), "profile": profile,
              "versions": library_versions()}
    path = cache_dir("resolution_model", params) / "model.zip"
    if path.exists():
        return MapModel.load(path)
    # one thread: two spin-wait in OpenMP when the machine's cores are busy (fit_1km_model)
    m = MapModel(model, seed=seed, n_jobs=1).fit(table.frame, encoder=trained)
    m.save(path, overwrite=True)
    return m


def predict_region_map(model: MapModel, region: Region, store: str | Path,
                       output: str | Path | None = None, quantity: str = "log_richness",
                       progress: bool = False, **kwargs: Any) -> MapRun:
    """The 10 m map of a region from its embedding store, through :func:`fungi_ssl.maps.predict_map`.

    Parameters
    ----------
    model : MapModel
    region : Region
    store : path
        :func:`region_store`.
    output : path, optional
        A ``.tif`` (COG) to write, replaced if it exists; None keeps the map
        in memory.
    quantity : {"log_richness", "richness"}
        ``log1p`` of rarefied richness (the scale maps are scored on) or richness.
    **kwargs
        Passed on (``chunk``, ``window``, ``scheduler``, ``num_workers`` …).

    Returns
    -------
    MapRun
        ``map`` covers exactly the region's pixels; ``pixels_per_second``
        is the throughput of the whole path (read, patch, PCA, trees, write).
    """
    from fungi_ssl.maps.predict import predict_map

    return predict_map(model, {region.year: Path(store)}, region.year, bbox=region.bbox,
                       output=output, overwrite=output is not None, quantity=quantity,
                       progress=progress, cog_blocksize=256, **kwargs)


def chapter04_model(results_dir: str | Path | None = None,
                    default: str = "lightgbm") -> tuple[str, str]:
    """The model family chapter 04 selected, from its results file.

    Chapter 04's best family is the one with the highest random-split R²
    averaged over the predictor sets (:func:`fungi_ssl.comparison.best_model`);
    its ``04_predictor_comparison.json`` holds each set's and family's mean R²,
    from which the same choice follows.

    Returns
    -------
    (str, str)
        The family, and where it came from (``"chapter 04"`` or ``"default:
        chapter 04's results not found"``).
    """
    from fungi_ssl.core.results import read_results

    try:
        summary = read_results("04_predictor_comparison", results_dir)["random"]
    except (FileNotFoundError, KeyError, TypeError):
        return default, "default: chapter 04's results not found"
    per_model: dict[str, list[float]] = {}
    for by_model in summary.values():
        for name, stats in by_model.items():
            if isinstance(stats, dict) and stats.get("r2_mean") is not None:
                per_model.setdefault(name, []).append(float(stats["r2_mean"]))
    if not per_model:
        return default, "default: chapter 04's results hold no R²"
    return max(per_model, key=lambda k: np.mean(per_model[k])), "chapter 04"


# --------------------------------------------------------------------------
# The 1 km map
# --------------------------------------------------------------------------
def cell_covariates(study: SimulatedStudy, region: Region) -> pd.DataFrame:
    """The 1 km covariates of every 1 km cell of a region, as the samples' table has them.

    :func:`fungi_ssl.simulate.sensors.covariates_1km` gives a sample the
    covariates of the 1 km cell holding its site's recorded pixel. Each cell
    is asked for through a stand-in site at its centre pixel, so the values
    are exactly those any sample in that cell gets.

    Returns
    -------
    pandas.DataFrame
        One row per cell (index ``cell_id`` ``"<row>_<col>"``, rows north to
        south then west to east), columns ``cell_row``, ``cell_col`` (offsets
        within the region), ``x``, ``y`` (cell centre, the region's CRS) and
        the SPUN-named covariates.
    """
    from fungi_ssl.simulate.sensors import covariates_1km

    w = region.window
    if w.col0 % CELL_PX or w.row0 % CELL_PX or w.width % CELL_PX or w.height % CELL_PX:
        raise ValueError(f"cell_covariates: region {region.name} is not made of whole 1 km cells")
    nr, nc = w.height // CELL_PX, w.width // CELL_PX
    rr, cc = (a.ravel() for a in np.meshgrid(np.arange(nr), np.arange(nc), indexing="ij"))
    gr, gc = w.row0 // CELL_PX + rr, w.col0 // CELL_PX + cc
    ids = [f"{r}_{c}" for r, c in zip(gr, gc)]
    sites = pd.DataFrame({"site_id": ids, "epsg": w.epsg, "col": gc * CELL_PX + CELL_PX // 2,
                          "row": gr * CELL_PX + CELL_PX // 2})
    samples = pd.DataFrame({"sample_id": ids, "site_id": ids})
    cov = covariates_1km(study.landscape, sites, samples, study.config.sensors)
    cov.index.name = "cell_id"
    cell = 1000.0
    front = pd.DataFrame({"cell_row": rr, "cell_col": cc, "x": (gc + 0.5) * cell,
                          "y": -(gr + 0.5) * cell}, index=cov.index)
    return pd.concat([front, cov], axis=1)


@dataclass
class OneKmModel:
    """The SPUN-style model: a regressor on the 1 km covariates, fitted on every sample.

    Attributes
    ----------
    estimator : estimator
        The fitted regressor (predicts ``log1p(rarefied)``).
    columns : list of str
        Its predictor columns, in order.
    model : str
        Model family.
    n_samples : int
        Rows fitted on.
    n_trees : int or None
        Trees after early stopping (LightGBM, XGBoost).
    """

    estimator: Any
    columns: list[str]
    model: str
    n_samples: int
    n_trees: int | None = None

    def predict(self, covariates: pd.DataFrame) -> np.ndarray:
        """``log1p(rarefied)`` predicted for rows of covariates (e.g. :func:`cell_covariates`)."""
        missing = [c for c in self.columns if c not in covariates.columns]
        if missing:
            raise ValueError(f"OneKmModel.predict: covariates lack {missing}")
        return np.asarray(self.estimator.predict(covariates[self.columns].to_numpy(float)),
                          dtype=float)


def fit_1km_model(frame: pd.DataFrame, model: str = "lightgbm", seed: int = 0,
                  predictor_set: str = ONE_KM_SET, target: str = "log_richness",
                  val_size: float = 0.1, n_jobs: int = 1) -> OneKmModel:
    """Fit the SPUN-style 1 km model on every sample of a predictor table.

    As :class:`fungi_ssl.mapmodel.MapModel` does for the 10 m chain: the
    book's model (:data:`fungi_ssl.pipelines.BOOK_MODEL_PARAMS`); LightGBM and
    XGBoost first stop early on a ``val_size`` share of whole sites, then are
    refitted on every row with the trees found.

    Parameters
    ----------
    frame : pandas.DataFrame
        The predictor table (:func:`fungi_ssl.predictors.predictor_table`).
    model : {"lightgbm", "xgboost", "rf", "ridge"}
    seed : int
    predictor_set : str
        The 1 km columns (default :data:`ONE_KM_SET`).
    target : str
        Target column (``log1p`` of rarefied richness).
    val_size : float
    n_jobs : int
        Threads. One by default: on a dozen thousand rows of a dozen columns
        LightGBM fits in about half a second on one thread, while two
        threads on a machine whose cores are busy spin-wait in OpenMP
        (measured: 15 to 87 s for the same trees).

    Returns
    -------
    OneKmModel
    """
    from sklearn.model_selection import GroupShuffleSplit

    from fungi_ssl.validation.models import MODEL_NAMES, fit_model, make_model
    from fungi_ssl.validation.pipelines import BOOK_MODEL_PARAMS, predictor_matrix

    if model not in MODEL_NAMES:
        raise ValueError(f"model must be one of {list(MODEL_NAMES)}, got {model!r}")
    if target not in frame.columns:
        raise ValueError(f"fit_1km_model: target column {target!r} is not in the table")
    X = predictor_matrix(frame, predictor_set)
    y = frame[target].to_numpy(float)
    ok = np.isfinite(X.to_numpy(float)).all(axis=1) & np.isfinite(y)
    X, y = X.loc[ok], y[ok]
    if len(y) < 10:
        raise ValueError(f"fit_1km_model: only {len(y)} complete rows; need at least 10")
    params = dict(BOOK_MODEL_PARAMS.get(model, {}))
    n_trees = None
    if model in ("lightgbm", "xgboost") and val_size > 0:
        groups = frame.loc[ok, "site_id"].to_numpy() if "site_id" in frame else np.arange(len(y))
        tr, va = next(GroupShuffleSplit(1, test_size=val_size, random_state=seed)
                      .split(X, y, groups))
        probe = fit_model(make_model(model, seed=seed, n_jobs=n_jobs, **params),
                          X.iloc[tr].to_numpy(float), y[tr], X.iloc[va].to_numpy(float), y[va])
        best = probe.best_iteration if model == "xgboost" else probe.best_iteration_
        n_trees = int(best) + (1 if model == "xgboost" else 0) if best else int(probe.n_estimators)
        params["n_estimators"] = n_trees
    est = fit_model(make_model(model, seed=seed, n_jobs=n_jobs, **params), X.to_numpy(float), y)
    return OneKmModel(est, list(X.columns), model, len(y), n_trees)


def predict_1km_map(model: OneKmModel, covariates: pd.DataFrame, region: Region) -> xr.DataArray:
    """The 1 km map of a region: ``log1p(rarefied)`` per cell, ``(y, x)`` on the 1 km grid, with CRS.

    ``covariates`` is :func:`cell_covariates` of the region.
    """
    w = region.window
    nr, nc = w.height // CELL_PX, w.width // CELL_PX
    if len(covariates) != nr * nc:
        raise ValueError(f"predict_1km_map: {len(covariates)} cells given for region "
                         f"{region.name}, which has {nr * nc}")
    grid = np.full((nr, nc), np.nan, np.float32)
    grid[covariates["cell_row"].to_numpy(), covariates["cell_col"].to_numpy()] = \
        model.predict(covariates)
    x = np.sort(covariates["x"].unique())
    y = np.sort(covariates["y"].unique())[::-1]
    da = xr.DataArray(grid, dims=("y", "x"), coords={"y": y, "x": x}, name="log_richness",
                      attrs={"units": "log1p(rarefied richness)", "model": model.model,
                             "cell_size": 1000.0})
    return da.rio.write_crs(w.epsg).rio.write_transform(
        Affine(1000.0, 0, float(x[0]) - 500.0, 0, -1000.0, float(y[0]) + 500.0))


def _expand(cells: np.ndarray, f: int = CELL_PX) -> np.ndarray:
    """Each cell repeated ``f × f`` times: a 1 km grid on the 10 m pixels."""
    return np.repeat(np.repeat(np.asarray(cells), f, axis=0), f, axis=1)


# --------------------------------------------------------------------------
# Held-out regions: which samples a region's models must not see
# --------------------------------------------------------------------------
def _site_xy(sites: pd.DataFrame, epsg: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of sites in the CRS ``epsg`` (exact in their own zone)."""
    from fungi_ssl.data.coordinates import crs_to_lonlat, lonlat_to_crs

    x = (sites["col"].to_numpy(float) + 0.5) * PIXEL_SIZE
    y = -(sites["row"].to_numpy(float) + 0.5) * PIXEL_SIZE
    zone = sites["epsg"].to_numpy(int)
    for z in np.unique(zone[zone != epsg]):
        sel = zone == z
        lon, lat = crs_to_lonlat(x[sel], y[sel], int(z))
        x[sel], y[sel] = lonlat_to_crs(lon, lat, int(epsg))
    return x, y


def withheld_rows(frame: pd.DataFrame, study: SimulatedStudy, region: Region,
                  radius_km: float = HOLDOUT_KM) -> np.ndarray:
    """Rows of a sample table that a model scored on ``region`` must not be fitted on.

    A row is withheld when its site lies inside the region, or when it belongs
    to one of the region's campaigns (a campaign with a site inside the
    region, or the campaign the region is centred on) and its site lies
    within ``radius_km`` of the region's edge. Sites are placed by their true
    pixel (``study.sites``), in the region's UTM zone.

    Parameters
    ----------
    frame : pandas.DataFrame
        A sample table with ``site_id`` (the simulated study's).
    study : SimulatedStudy
    region : Region
    radius_km : float

    Returns
    -------
    numpy.ndarray
        Boolean, one per row of ``frame``.
    """
    if "site_id" not in frame:
        raise ValueError("withheld_rows: the sample table has no 'site_id' column")
    sites = study.sites.drop_duplicates("site_id").set_index("site_id")
    unknown = ~frame["site_id"].isin(sites.index)
    if unknown.any():
        raise ValueError(f"withheld_rows: {int(unknown.sum())} rows name sites the study does not "
                         f"hold (e.g. {frame.loc[unknown, 'site_id'].iloc[0]!r})")
    w = region.window
    x, y = _site_xy(sites, w.epsg)
    xmin, xmax = w.col0 * PIXEL_SIZE, (w.col0 + w.width) * PIXEL_SIZE
    ymax, ymin = -w.row0 * PIXEL_SIZE, -(w.row0 + w.height) * PIXEL_SIZE
    dx = np.maximum.reduce([xmin - x, np.zeros_like(x), x - xmax])
    dy = np.maximum.reduce([ymin - y, np.zeros_like(y), y - ymax])
    dist = np.hypot(dx, dy)
    inside = (sites["epsg"].to_numpy(int) == w.epsg) & (dist == 0)
    camps = set(sites["campaign"].to_numpy()[inside].tolist()) | {region.campaign}
    out = inside | (sites["campaign"].isin(camps).to_numpy() & (dist <= radius_km * 1000.0))
    withheld = pd.Series(out, index=sites.index)
    return withheld.reindex(frame["site_id"]).to_numpy(bool)


# --------------------------------------------------------------------------
# The product model and the residual model
# --------------------------------------------------------------------------
def _fit_trees(X: np.ndarray, y: np.ndarray, groups: np.ndarray | None, model: str, seed: int,
               val_size: float = 0.1, n_jobs: int = 1) -> tuple[Any, int | None]:
    """The book's model on ``X``, ``y``: boosted trees stop early on a ``val_size`` share of
    whole groups, then are refitted on every row with the trees found."""
    from sklearn.model_selection import GroupShuffleSplit

    from fungi_ssl.validation.models import MODEL_NAMES, fit_model, make_model
    from fungi_ssl.validation.pipelines import BOOK_MODEL_PARAMS

    if model not in MODEL_NAMES:
        raise ValueError(f"model must be one of {list(MODEL_NAMES)}, got {model!r}")
    params = dict(BOOK_MODEL_PARAMS.get(model, {}))
    n_trees = None
    if model in ("lightgbm", "xgboost") and val_size > 0:
        g = groups if groups is not None else np.arange(len(y))
        tr, va = next(GroupShuffleSplit(1, test_size=val_size, random_state=seed).split(X, y, g))
        probe = fit_model(make_model(model, seed=seed, n_jobs=n_jobs, **params),
                          X[tr], y[tr], X[va], y[va])
        best = probe.best_iteration if model == "xgboost" else probe.best_iteration_
        n_trees = int(best) + (1 if model == "xgboost" else 0) if best else int(probe.n_estimators)
        params["n_estimators"] = n_trees
    est = fit_model(make_model(model, seed=seed, n_jobs=n_jobs, **params), X, y)
    return est, n_trees


@dataclass
class ProductModel:
    """One tree model on both scales: the PCA of the pixel's 3 × 3 embedding patch and the
    1 km covariates of its cell.

    Attributes
    ----------
    map_model : MapModel
        The ``ssl``-only 10 m model fitted on the same rows; its PCA projects the patch
        (so the product and the 10 m map see the same components).
    estimator : estimator
        Predicts ``log1p(rarefied)`` from ``[components, covariates]``.
    covariate_columns : list of str
    model : str
    n_samples : int
    n_trees : int or None
    """

    map_model: MapModel
    estimator: Any
    covariate_columns: list[str]
    model: str
    n_samples: int
    n_trees: int | None = None

    def predict_components(self, z: np.ndarray, covariates: np.ndarray) -> np.ndarray:
        """``log1p(rarefied)`` from components ``(n, C)`` and covariates ``(n, K)``; NaN where
        either has a missing value."""
        X = np.hstack([np.asarray(z, float), np.asarray(covariates, float)])
        out = np.full(len(X), np.nan)
        ok = np.isfinite(X).all(axis=1)
        if ok.any():
            out[ok] = self.estimator.predict(X[ok])
        return out

    def predict_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """``log1p(rarefied)`` for rows of a predictor table (``ssl_`` columns and covariates)."""
        missing = [c for c in self.covariate_columns if c not in frame.columns]
        if missing:
            raise ValueError(f"ProductModel.predict_frame: the table lacks covariates {missing}")
        return self.predict_components(self.map_model.project_patches(frame),
                                       frame[self.covariate_columns].to_numpy(float))


def fit_product_model(frame: pd.DataFrame, map_model: MapModel, model: str = "lightgbm",
                      seed: int = 0, predictor_set: str = ONE_KM_SET,
                      target: str = "log_richness", n_jobs: int = 1) -> ProductModel:
    """Fit the product model on a predictor table, with ``map_model``'s patch PCA.

    Parameters
    ----------
    frame : pandas.DataFrame
        The rows ``map_model`` was fitted on (``ssl_`` columns, covariates, target, ``site_id``).
    map_model : MapModel
    model : str
    seed : int
    predictor_set : str
        The 1 km covariates (default the 1 km map's, :data:`ONE_KM_SET`).
    target : str
    n_jobs : int

    Returns
    -------
    ProductModel
    """
    from fungi_ssl.validation.pipelines import predictor_matrix

    if target not in frame.columns:
        raise ValueError(f"fit_product_model: target column {target!r} is not in the table")
    cov = predictor_matrix(frame, predictor_set)
    z = map_model.project_patches(frame)
    X = np.hstack([z, cov.to_numpy(float)])
    y = frame[target].to_numpy(float)
    ok = np.isfinite(X).all(axis=1) & np.isfinite(y)
    if ok.sum() < 10:
        raise ValueError(f"fit_product_model: only {int(ok.sum())} complete rows; need 10")
    groups = frame["site_id"].to_numpy()[ok] if "site_id" in frame else None
    est, n_trees = _fit_trees(X[ok], y[ok], groups, model, seed, n_jobs=n_jobs)
    return ProductModel(map_model, est, list(cov.columns), model, int(ok.sum()), n_trees)


@dataclass
class ResidualModel:
    """Trees on the patch's components fitted to the samples' residuals from out-of-fold
    1 km predictions; the map is the 1 km map plus this model's prediction."""

    map_model: MapModel
    estimator: Any
    n_samples: int
    n_trees: int | None = None

    def predict_components(self, z: np.ndarray) -> np.ndarray:
        """The residual (log units) predicted from components ``(n, C)``; NaN where incomplete."""
        z = np.asarray(z, float)
        out = np.full(len(z), np.nan)
        ok = np.isfinite(z).all(axis=1)
        if ok.any():
            out[ok] = self.estimator.predict(z[ok])
        return out


def fit_residual_model(frame: pd.DataFrame, map_model: MapModel, model: str = "lightgbm",
                       seed: int = 0, predictor_set: str = ONE_KM_SET,
                       target: str = "log_richness", n_folds: int = 5,
                       n_jobs: int = 1) -> ResidualModel:
    """Fit the residual model: the 1 km model's out-of-fold residuals (site-grouped folds) on
    the patch's components, so the residuals are those of places the 1 km model did not see."""
    from sklearn.model_selection import GroupKFold

    from fungi_ssl.validation.pipelines import predictor_matrix

    cov = predictor_matrix(frame, predictor_set).to_numpy(float)
    z = map_model.project_patches(frame)
    y = frame[target].to_numpy(float)
    ok = np.isfinite(cov).all(axis=1) & np.isfinite(z).all(axis=1) & np.isfinite(y)
    cov, z, y = cov[ok], z[ok], y[ok]
    groups = frame["site_id"].to_numpy()[ok] if "site_id" in frame else np.arange(len(y))
    oof = np.full(len(y), np.nan)
    for tr, te in GroupKFold(n_splits=n_folds).split(cov, y, groups):
        est, _ = _fit_trees(cov[tr], y[tr], groups[tr], model, seed, n_jobs=n_jobs)
        oof[te] = est.predict(cov[te])
    est, n_trees = _fit_trees(z, y - oof, groups, model, seed, n_jobs=n_jobs)
    return ResidualModel(map_model, est, len(y), n_trees)


@dataclass
class HeldOutModels:
    """Every model of one region, fitted without that region's samples (:func:`withheld_rows`).

    Attributes
    ----------
    map_model : MapModel
        The 10 m ``ssl`` map model.
    model_1km : OneKmModel
    product : ProductModel
    residual : ResidualModel
    n_withheld : int
        Samples withheld.
    campaigns_withheld : int
        Campaigns that lost samples.
    """

    map_model: MapModel
    model_1km: OneKmModel
    product: ProductModel
    residual: ResidualModel
    n_withheld: int
    campaigns_withheld: int


def heldout_models(table: PredictorTable, trained: TrainedEncoder, region: Region,
                   model: str = "lightgbm", seed: int = 0, profile: str = "full",
                   model_1km: str | None = None, radius_km: float = HOLDOUT_KM) -> HeldOutModels:
    """Fit the 10 m, 1 km, product and residual models without ``region``'s samples (cached).

    Cached under ``data/cache/resolution_heldout/<key>/models.joblib``, keyed
    as :func:`fitted_map_model` plus the region's window, the radius and the
    rows withheld.
    """
    import hashlib

    import joblib

    from fungi_ssl.maps.mapmodel import MapModel
    from fungi_ssl.maps.modelspec import encoder_signature, library_versions
    from fungi_ssl.simulate.field_data import simulated_study, simulator_fingerprint
    from fungi_ssl.validation.pipelines import BOOK_MODEL_PARAMS, SSL_COMPONENTS

    study = simulated_study(profile, seed)
    frame = table.frame
    out = withheld_rows(frame, study, region, radius_km)
    w = region.window
    params = {"study": study.config.as_dict(), "simulator": simulator_fingerprint(),
              "source": table.source, "n_rows": len(frame), "encoder": encoder_signature(trained),
              "model": model, "model_1km": model_1km or model,
              "params": BOOK_MODEL_PARAMS.get(model, {}), "components": SSL_COMPONENTS,
              "seed": int(seed), "profile": profile, "versions": library_versions(),
              "window": [w.epsg, w.col0, w.row0, w.width, w.height], "radius_km": radius_km,
              "withheld": hashlib.sha1(np.packbits(out).tobytes()).hexdigest(), "layout": 2}
    # layout 2: the pickled MapModel holds fungi_ssl.maps.modelspec.FeatureSpec and
    # fungi_ssl.maps.flattrees.FlatTrees, moved out of mapmodel (issue 19)
    path = cache_dir("resolution_heldout", params) / "models.joblib"
    if path.exists():
        return joblib.load(path)
    train = frame.loc[~out].reset_index(drop=True)
    m10 = MapModel(model, seed=seed, n_jobs=1).fit(train, encoder=trained)
    m1 = fit_1km_model(train, model_1km or model, seed)
    prod = fit_product_model(train, m10, model, seed)
    resid = fit_residual_model(train, m10, model, seed)
    camps = frame.loc[out, "site_id"].map(study.sites.drop_duplicates("site_id")
                                          .set_index("site_id")["campaign"]).nunique()
    models = HeldOutModels(m10, m1, prod, resid, int(out.sum()), int(camps))
    joblib.dump(models, path)
    return models


def region_components(model: MapModel, store: str | Path, region: Region) -> np.ndarray:
    """The principal components of every pixel's 3 × 3 patch over a region, ``(H, W, C)``
    float32 (NaN where a patch is incomplete), read from the region's store."""
    from fungi_ssl.maps.sources import open_embedding_source

    src = open_embedding_source({region.year: Path(store)}, region.year, region.bbox)
    h = model.spec.patch_size // 2
    H, W = region.window.height, region.window.width
    emb, sc = src.read(-h, H + h, -h, W + h, (H + 2 * h,), (W + 2 * h,))
    return model.window_scores(np.asarray(emb.compute()), np.asarray(sc.compute())[..., 0])


# --------------------------------------------------------------------------
# Everything for every region
# --------------------------------------------------------------------------
@dataclass
class RegionProducts:
    """What chapter 06 shows and scores for one region (values on the ``log1p`` scale).

    Attributes
    ----------
    region : Region
    store : pathlib.Path
        The region's embedding store (:func:`region_store`).
    truth : numpy.ndarray
        ``log1p`` of the truth layer, ``(H, W)``; NaN on water.
    map_10m : numpy.ndarray
        ``log1p`` 10 m map, ``(H, W)``.
    map_1km : numpy.ndarray
        ``log1p`` 1 km map, ``(H / 100, W / 100)``.
    map_path : pathlib.Path or None
        The 10 m COG.
    run : MapRun
        :func:`fungi_ssl.maps.predict_map`'s record (pixels/s, NaN counts).
    covariates : pandas.DataFrame
        :func:`cell_covariates`.
    landcover : numpy.ndarray
        True land-cover codes ``(H, W)`` (for figures).
    extra : dict
        ``true_richness``: the true species count of a core at each pixel
        (before sequencing and rarefaction), to state the offset between it and
        the estimand; ``models`` (:class:`HeldOutModels`, when the region was
        held out); the first region's also ``map_model`` and ``model_1km``.
    map_product : numpy.ndarray or None
        ``log1p`` map of the product model (:class:`ProductModel`), ``(H, W)``.
    alternatives : dict
        Other candidate maps ``(H, W)``, ``log1p``: ``deviations`` (1 km map +
        the 10 m map's within-cell deviations), ``residual`` (1 km map + the
        residual model) and ``product_deviations`` (the product model's cell
        means + the 10 m map's within-cell deviations), see :data:`CANDIDATES`.
    held_out : bool
        Whether every model of the region was fitted without its samples.
    """

    region: Region
    store: Path
    truth: np.ndarray
    map_10m: np.ndarray
    map_1km: np.ndarray
    map_path: Path | None
    run: Any
    covariates: pd.DataFrame
    landcover: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)
    map_product: np.ndarray | None = None
    alternatives: dict[str, np.ndarray] = field(default_factory=dict)
    held_out: bool = False

    @property
    def map_1km_pixels(self) -> np.ndarray:
        """The 1 km map on the 10 m pixels (each cell's value repeated)."""
        return _expand(self.map_1km)

    def dataarray(self, values: np.ndarray, name: str) -> xr.DataArray:
        """A ``(y, x)`` array of this region's pixels as a DataArray with CRS."""
        w = self.region.window
        da = xr.DataArray(values, dims=("y", "x"), coords={"y": w.y, "x": w.x}, name=name)
        return da.rio.write_crs(w.epsg)


def region_products(
    profile: str = "full", seed: int = 0, *, model: str = "lightgbm",
    model_1km: str | None = None, year: int = YEAR, table: PredictorTable | None = None,
    trained: TrainedEncoder | None = None, region_list: Sequence[Region] | None = None,
    output_dir: str | Path | None = None, progress: bool = True, held_out: bool = True,
) -> list[RegionProducts]:
    """Regions, their embeddings, truth and every candidate map, for a profile and seed.

    With ``held_out`` (the default) each region's maps come from models fitted
    without that region's samples and those of its campaigns within
    :data:`HOLDOUT_KM` (:func:`heldout_models`): the 10 m map, the 1 km map, the
    product model and the residual model. Without it the 10 m and 1 km maps come
    from models fitted on every sample (the product and residual maps are then
    not made).

    Parameters
    ----------
    profile : {"quick", "full"}
    seed : int
    model : str
        Model family of the 10 m map (:class:`~fungi_ssl.mapmodel.MapModel`).
    model_1km : str, optional
        Model family of the 1 km map; default the same as ``model``, so the
        two maps differ in predictors and resolution, not in the learner.
    year : int
    table : PredictorTable, optional
        The simulated predictor table (default
        :func:`fungi_ssl.predictors.predictor_table` for the profile and seed).
    trained : TrainedEncoder, optional
        The chapter-02 encoder (default :func:`fungi_ssl.predictors.pretrained_encoder`).
    region_list : sequence of Region, optional
        Default :func:`regions` of the profile.
    output_dir : path, optional
        Folder for the 10 m COGs (default ``data/cache/resolution_maps/<key>``).
    progress : bool
    held_out : bool

    Returns
    -------
    list of RegionProducts
        ``extra`` of the first also holds ``map_model`` (the 10 m
        :class:`~fungi_ssl.mapmodel.MapModel`) and ``model_1km``
        (:class:`OneKmModel`) (the first region's held-out models, with ``held_out``).
    """
    from fungi_ssl.predictors.tables import predictor_table, pretrained_encoder
    from fungi_ssl.simulate.field_data import simulated_study

    if table is None:
        table = predictor_table(None, profile=profile, seed=seed, progress=progress)
    if not table.field.is_simulated:
        raise ValueError("region_products: the regions and their truth exist in the simulated "
                         "study only")
    if trained is None:
        trained, _ = pretrained_encoder(table.field, profile, seed, progress=progress)
    study = simulated_study(profile, seed)
    rs = list(region_list) if region_list is not None else regions(profile, seed, year)
    if not held_out:
        m10_all = fitted_map_model(table, trained, model, seed, profile)
        m1_all = fit_1km_model(table.frame, model_1km or model, seed)
    products = []
    for r in rs:
        if held_out:
            hm = heldout_models(table, trained, r, model, seed, profile, model_1km)
            m10, m1 = hm.map_model, hm.model_1km
        else:
            hm, m10, m1 = None, m10_all, m1_all
        out_dir = Path(output_dir) if output_dir is not None else cache_dir(
            "resolution_maps", {"model": m10.fingerprint, "encoder": m10.spec.encoder})
        out_dir.mkdir(parents=True, exist_ok=True)
        store = region_store(r, trained, profile, seed, progress=progress)
        truth = region_truth(r, profile, seed).values.astype(np.float64)
        path = out_dir / f"{r.name}_{r.year}_log_richness.tif"
        run = predict_region_map(m10, r, store, output=path)
        cov = cell_covariates(study, r)
        layers = study.layers(r.window, r.year)
        map_10m = np.asarray(run.map.values, np.float64)
        map_1km = np.asarray(predict_1km_map(m1, cov, r).values, np.float64)
        p = RegionProducts(
            region=r, store=store, truth=np.log1p(truth), map_10m=map_10m, map_1km=map_1km,
            map_path=path, run=run, covariates=cov, landcover=layers["landcover"].values,
            extra={"true_richness": layers["true_richness"].values, "models": hm},
            held_out=held_out)
        if hm is not None:
            z = region_components(m10, store, r)
            H, W, C = z.shape
            p.map_product = _product_map(hm.product, z, cov, r)
            m1_px = p.map_1km_pixels
            p.alternatives = {
                "deviations": with_within_cell_deviations(m1_px, map_10m),
                "residual": m1_px + hm.residual.predict_components(z.reshape(H * W, C)).reshape(H, W),
                "product_deviations": with_within_cell_deviations(p.map_product, map_10m),
            }
        products.append(p)
    if products:
        first = products[0].extra["models"]
        products[0].extra.update(
            map_model=first.map_model if first is not None else m10_all,
            model_1km=first.model_1km if first is not None else m1_all)
    return products


def _product_map(product: ProductModel, z: np.ndarray, covariates: pd.DataFrame,
                 region: Region) -> np.ndarray:
    """The product model's map of a region from its components ``(H, W, C)`` and the cells'
    covariates (each pixel gets its cell's values)."""
    H, W, C = z.shape
    cov_px = np.stack([_expand(predict_grid(covariates, region, c))
                       for c in product.covariate_columns], axis=-1).reshape(H * W, -1)
    return product.predict_components(z.reshape(H * W, C), cov_px).reshape(H, W)


def predict_grid(covariates: pd.DataFrame, region: Region, column: str) -> np.ndarray:
    """One covariate of :func:`cell_covariates` on the region's 1 km grid ``(rows, cols)``."""
    w = region.window
    grid = np.full((w.height // CELL_PX, w.width // CELL_PX), np.nan)
    grid[covariates["cell_row"].to_numpy(), covariates["cell_col"].to_numpy()] = \
        covariates[column].to_numpy(float)
    return grid


# --------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------
def _pairs(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t, p = np.asarray(truth, float).ravel(), np.asarray(pred, float).ravel()
    if t.shape != p.shape:
        raise ValueError(f"truth and prediction differ in size ({t.size} and {p.size})")
    ok = np.isfinite(t) & np.isfinite(p)
    return t[ok], p[ok]


def r2(truth: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination ``1 − SSE / SST`` over the pairs where both are finite.

    Examples
    --------
    >>> r2([1.0, 2.0, 3.0, np.nan], [1.0, 2.0, 4.0, 5.0])
    0.5
    """
    t, p = _pairs(truth, pred)
    if t.size < 2:
        return float("nan")
    sst = float(((t - t.mean()) ** 2).sum())
    return float(1.0 - ((t - p) ** 2).sum() / sst) if sst > 0 else float("nan")


def squared_correlation(truth: np.ndarray, pred: np.ndarray) -> float:
    """Squared Pearson correlation over the finite pairs (NaN if either is constant).

    Examples
    --------
    >>> round(squared_correlation([1.0, 2.0, 3.0], [2.0, 4.0, 6.5]), 4)
    0.9959
    """
    t, p = _pairs(truth, pred)
    if t.size < 2 or t.std() == 0 or p.std() == 0:
        return float("nan")
    return float(np.corrcoef(t, p)[0, 1] ** 2)


def cell_means(values: np.ndarray, f: int = CELL_PX, min_valid: float = 0.0) -> np.ndarray:
    """Means of ``f × f`` blocks ignoring NaN (NaN where a block's finite share is below
    ``min_valid`` or zero). The array's sides must be multiples of ``f``.

    Examples
    --------
    >>> cell_means(np.array([[1.0, 3.0], [np.nan, 5.0]]), f=2).tolist()
    [[3.0]]
    """
    a = np.asarray(values, float)
    if a.ndim != 2 or a.shape[0] % f or a.shape[1] % f:
        raise ValueError(f"cell_means: expected a 2-D array with sides multiple of {f}, "
                         f"got shape {a.shape}")
    b = a.reshape(a.shape[0] // f, f, a.shape[1] // f, f)
    n = np.isfinite(b).sum(axis=(1, 3))
    s = np.where(np.isfinite(b), b, 0.0).sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        m = s / n
    return np.where((n > 0) & (n / (f * f) >= min_valid), m, np.nan)


def with_within_cell_deviations(levels: np.ndarray, pattern: np.ndarray,
                                f: int = CELL_PX) -> np.ndarray:
    """A map with the cell means of ``levels`` and the within-cell deviations of ``pattern``.

    Each pixel gets its cell's mean of ``levels`` plus its own ``pattern``
    value minus its cell's mean of ``pattern`` (means over each map's finite
    pixels, :func:`cell_means`): the 1 km map (``levels`` constant in each
    cell) or the product model's cell means, with the 10 m map's pattern
    inside every cell. NaN where ``pattern`` is NaN.

    Examples
    --------
    >>> lv = np.array([[5.0, 7.0], [6.0, 6.0]])        # cell mean 6
    >>> pt = np.array([[1.0, 3.0], [2.0, np.nan]])     # cell mean 2
    >>> with_within_cell_deviations(lv, pt, f=2).tolist()
    [[5.0, 7.0], [6.0, nan]]
    """
    lv, pt = np.asarray(levels, float), np.asarray(pattern, float)
    if lv.shape != pt.shape:
        raise ValueError(f"with_within_cell_deviations: levels {lv.shape} and pattern "
                         f"{pt.shape} differ in shape")
    return _expand(cell_means(lv, f), f) + pt - _expand(cell_means(pt, f), f)


def _deviations(values: np.ndarray, mask: np.ndarray, f: int) -> np.ndarray:
    v = np.where(mask, values, np.nan)
    return v - _expand(cell_means(v, f), f)


def within_cell_r2(truth: np.ndarray, pred: np.ndarray, f: int = CELL_PX) -> float:
    """The share of the truth's within-cell variance a map recovers.

    R² of the within-cell deviations: each map's pixels minus its own cell
    mean, over the pixels where both are finite,
    ``1 − Σ (d_truth − d_pred)² / Σ d_truth²``. A map constant within each
    cell (a 1 km map) scores 0; one that reproduces the truth up to a
    per-cell offset scores 1.

    Examples
    --------
    >>> t = np.array([[1.0, 3.0], [2.0, 6.0]])
    >>> within_cell_r2(t, t + 10.0, f=2), within_cell_r2(t, np.full((2, 2), 3.0), f=2)
    (1.0, 0.0)
    """
    t, p = np.asarray(truth, float), np.asarray(pred, float)
    if t.shape != p.shape:
        raise ValueError(f"within_cell_r2: truth {t.shape} and prediction {p.shape} differ")
    mask = np.isfinite(t) & np.isfinite(p)
    dt, dp = _deviations(t, mask, f), _deviations(p, mask, f)
    dt, dp = dt[mask], dp[mask]
    ss = float((dt ** 2).sum())
    return float(1.0 - ((dt - dp) ** 2).sum() / ss) if ss > 0 else float("nan")


def pixel_ratio(n_fine: int, n_coarse: int) -> float:
    """How many fine pixels a map has for each coarse one over the same area.

    Examples
    --------
    >>> pixel_ratio(1_000_000, 100)
    10000.0
    """
    if n_coarse <= 0 or n_fine < 0:
        raise ValueError(f"pixel_ratio: need n_coarse > 0 and n_fine ≥ 0, got {n_coarse}, {n_fine}")
    return float(n_fine) / float(n_coarse)


def _map_layers(p: RegionProducts) -> dict[str, np.ndarray]:
    """Every candidate map of a region on its 10 m pixels (``log1p`` scale)."""
    out = {"10m": p.map_10m, "1km": p.map_1km_pixels}
    if p.map_product is not None:
        out["product"] = p.map_product
    out.update(p.alternatives)
    return out


def _region_sums(p: RegionProducts, min_valid: float) -> dict[str, Any]:
    """Sums from which every score of :func:`score_products` follows, for one region.

    Pixels: land pixels where every candidate map has a value. Cells: cells
    with at least ``min_valid`` of their pixels scored.
    """
    maps = _map_layers(p)
    ok = np.isfinite(p.truth)
    for v in maps.values():
        ok &= np.isfinite(v)
    t = np.where(ok, p.truth, np.nan)
    tc = cell_means(t, min_valid=min_valid)
    keep = np.isfinite(tc)
    dt = _deviations(t, ok, CELL_PX)[ok]
    tv = t[ok]
    out: dict[str, Any] = {"n": int(ok.sum()), "st": tv.sum(), "stt": (tv ** 2).sum(),
                           "nc": int(keep.sum()), "sct": tc[keep].sum(),
                           "sctt": (tc[keep] ** 2).sum(), "sdd_t": (dt ** 2).sum(), "maps": {}}
    for name, v in maps.items():
        pv = v[ok]
        pc = cell_means(np.where(ok, v, np.nan))[keep]
        dp = _deviations(np.asarray(v, float), ok, CELL_PX)[ok]
        out["maps"][name] = {
            "sp": pv.sum(), "spp": (pv ** 2).sum(), "stp": (tv * pv).sum(),
            "scp": pc.sum(), "scpp": (pc ** 2).sum(), "sctp": (tc[keep] * pc).sum(),
            "sdd": ((dt - dp) ** 2).sum(), "bias": float(np.mean(pv - tv)) if pv.size else np.nan}
    return out


def _r2_sums(n, st, stt, sp, spp, stp) -> tuple[float, float]:
    """R² and squared correlation from sums (NaN where undefined)."""
    if n < 2:
        return float("nan"), float("nan")
    sst = stt - st * st / n
    spp_c = spp - sp * sp / n
    stp_c = stp - st * sp / n
    sse = stt - 2 * stp + spp
    r2v = 1.0 - sse / sst if sst > 0 else float("nan")
    corr = stp_c * stp_c / (sst * spp_c) if sst > 0 and spp_c > 1e-12 * max(spp, 1.0) else float("nan")
    return float(r2v), float(corr)


#: Score name templates and the map each applies to, for :func:`_scores_from_sums`.
_NAMES = {"10m": ("r2_10m_vs_truth", "r2corr_10m_vs_truth", "r2_10m_aggregated_vs_truth_1km",
                  "r2corr_10m_aggregated_vs_truth_1km", "within_cell_variance_captured"),
          "1km": ("r2_1km_vs_truth", "r2corr_1km_vs_truth", "r2_1km_vs_truth_1km",
                  "r2corr_1km_vs_truth_1km", "within_cell_variance_captured_1km")}


def _names(name: str) -> tuple[str, ...]:
    return _NAMES.get(name, (f"r2_{name}_vs_truth", f"r2corr_{name}_vs_truth",
                             f"r2_{name}_aggregated_vs_truth_1km",
                             f"r2corr_{name}_aggregated_vs_truth_1km",
                             f"within_cell_variance_captured_{name}"))


def _scores_from_sums(sums: Sequence[dict[str, Any]], weights: np.ndarray | None = None
                      ) -> dict[str, float]:
    """Pooled scores of regions (each counted ``weights`` times) from :func:`_region_sums`."""
    w = np.ones(len(sums)) if weights is None else np.asarray(weights, float)

    def tot(key, name=None):
        return float(sum(wi * (s[key] if name is None else s["maps"][name][key])
                         for wi, s in zip(w, sums)))

    n, st, stt = tot("n"), tot("st"), tot("stt")
    nc, sct, sctt = tot("nc"), tot("sct"), tot("sctt")
    sdd_t = tot("sdd_t")
    out: dict[str, float] = {}
    for name in sums[0]["maps"]:
        a, b, c, d, e = _names(name)
        out[a], out[b] = _r2_sums(n, st, stt, tot("sp", name), tot("spp", name), tot("stp", name))
        out[c], out[d] = _r2_sums(nc, sct, sctt, tot("scp", name), tot("scpp", name),
                                  tot("sctp", name))
        out[e] = 1.0 - tot("sdd", name) / sdd_t if sdd_t > 0 else float("nan")
    sst = stt - st * st / n if n else float("nan")
    out["within_cell_share_of_truth"] = sdd_t / sst if n and sst > 0 else float("nan")
    return out


def bootstrap_scores(products: Sequence[RegionProducts], n_boot: int = 2000, seed: int = 0,
                     level: float = CI_LEVEL, min_valid: float = 0.5) -> dict[str, list[float]]:
    """Percentile intervals of every pooled score from a bootstrap over regions.

    Regions are drawn with replacement ``n_boot`` times; each draw pools the
    drawn regions' pixels (a region drawn twice counts twice) and recomputes
    the scores of :func:`score_products` from per-region sums, so a draw costs
    no pass over the pixels. The regions, not the pixels, are the units of
    replication: the pixels of one region share its level error.

    Returns
    -------
    dict
        ``<score>_ci``: ``[lower, upper]`` for every score of
        :func:`score_products` that depends on the maps, and for
        ``within_cell_share_of_truth``; draws where a score is undefined are
        left out.
    """
    if len(products) < 2:
        raise ValueError(f"bootstrap_scores: need at least 2 regions, got {len(products)}")
    sums = [_region_sums(p, min_valid) for p in products]
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(sums), np.full(len(sums), 1.0 / len(sums)), size=int(n_boot))
    rows = [_scores_from_sums(sums, d) for d in draws]
    tab = pd.DataFrame(rows)
    a = (1.0 - float(level)) / 2
    return {f"{k}_ci": [float(np.nanquantile(tab[k], a)), float(np.nanquantile(tab[k], 1 - a))]
            for k in tab.columns}


def score_products(products: Sequence[RegionProducts], min_valid: float = 0.5,
                   seconds: float | None = None) -> dict[str, Any]:
    """Score the 10 m and the 1 km maps of every region against the truth (``log1p`` scale).

    Every score uses the same pixels: land pixels where every candidate map
    has a value. 1 km scores use the cells with at least ``min_valid`` of their
    pixels scored; a cell's truth and 10 m value are the means of those
    pixels, its 1 km value the 1 km map's. Scores pool the regions' pixels;
    they are computed from per-region sums, which :func:`bootstrap_scores`
    reweights.

    Returns
    -------
    dict
        ``r2_10m_vs_truth``, ``r2_1km_vs_truth`` (every pixel),
        ``r2corr_10m_vs_truth``, ``r2corr_1km_vs_truth`` (squared correlations),
        ``r2_10m_aggregated_vs_truth_1km``, ``r2_1km_vs_truth_1km`` and their
        squared correlations, ``within_cell_variance_captured`` (10 m map;
        the 1 km map scores 0 by construction), ``within_cell_share_of_truth``
        (share of the truth's variance that lies within cells),
        ``pixel_ratio``, ``n_cells_1km`` (whole cells mapped),
        ``n_cells_scored``, ``n_pixels`` (10 m pixels mapped),
        ``n_pixels_scored``, ``n_regions``, ``pixels_per_second``
        (pixels over the seconds of :func:`predict_region_map`, or over
        ``seconds`` if given). For every other candidate map ``c`` present
        (``product``, ``deviations``, ``residual``): ``r2_<c>_vs_truth``,
        ``r2corr_<c>_vs_truth``, ``r2_<c>_aggregated_vs_truth_1km``,
        ``r2corr_<c>_aggregated_vs_truth_1km``, ``within_cell_variance_captured_<c>``.
    """
    if not products:
        raise ValueError("score_products: no regions to score")
    sums = [_region_sums(p, min_valid) for p in products]
    n_pixels = int(sum(p.region.n_pixels for p in products))
    n_cells = int(sum(p.region.n_cells for p in products))
    secs = float(seconds) if seconds is not None else float(sum(p.run.seconds for p in products))
    return {
        **_scores_from_sums(sums),
        "pixel_ratio": pixel_ratio(n_pixels, n_cells),
        "n_cells_1km": n_cells,
        "n_cells_scored": int(sum(s["nc"] for s in sums)),
        "n_pixels": n_pixels,
        "n_pixels_scored": int(sum(s["n"] for s in sums)),
        "n_regions": len(products),
        "pixels_per_second": n_pixels / secs if secs > 0 else float("nan"),
    }


def region_scores(products: Sequence[RegionProducts]) -> pd.DataFrame:
    """:func:`score_products` of each region alone, one row per region (which landscapes
    each map wins in).

    Besides the scores: ``truth_mean`` and ``truth_sd`` of the region's scored
    pixels, and ``bias_<map>`` for every candidate (``bias_10m``, ``bias_1km``,
    ``bias_product`` …), each map's mean error (map − truth) over them: a map
    can follow the pattern inside a region (high r²) and still miss its level
    (negative R²). ``n_withheld``: samples its models were fitted without.
    """
    rows = []
    for p in products:
        sc = score_products([p])
        s = _region_sums(p, 0.5)
        ok = _scored_mask(p)
        row = {"region": p.region.name, "landscape": f"{p.region.continent}, {p.region.focus}",
               "campaign": p.region.campaign, "woodland_share": p.region.woodland_share}
        for name in s["maps"]:
            row.update({k: sc[k] for k in _names(name)})
        row.update({"n_pixels_scored": sc["n_pixels_scored"],
                    "truth_mean": float(np.mean(p.truth[ok])),
                    **{f"bias_{name}": m["bias"] for name, m in s["maps"].items()},
                    "truth_sd": float(np.std(p.truth[ok]))})
        hm = p.extra.get("models")
        if hm is not None:
            row.update(n_withheld=hm.n_withheld, campaigns_withheld=hm.campaigns_withheld)
        rows.append(row)
    return pd.DataFrame(rows).set_index("region")


# --------------------------------------------------------------------------
# The product map: the criteria for every candidate, and the winner
# --------------------------------------------------------------------------
#: The criteria of :func:`criteria_table` as chapter 06 and its JSON name them.
CRITERIA: dict[str, str] = {
    "pixel": "R² every pixel ≥ max(10 m, 1 km) + 0.03",
    "cell": "R² of 1 km means ≥ 1 km map's − 0.02",
    "within": "within-cell R² ≥ 10 m map's − 0.05",
    "bias": "largest |mean error| of a region ≤ 0.25 log units",
}


def criteria_table(scores: dict[str, Any], per_region: pd.DataFrame,
                   candidates: Sequence[str] | None = None,
                   margins: dict[str, float] | None = None) -> pd.DataFrame:
    """The issue's four criteria for a product map, for every candidate map.

    Parameters
    ----------
    scores : dict
        :func:`score_products` of the held-out regions (pooled scores).
    per_region : pandas.DataFrame
        :func:`region_scores` of the same regions (``bias_<map>`` columns).
    candidates : sequence of str, optional
        Maps to check (default every map with scores and a bias column).
    margins : dict, optional
        Default :data:`PRODUCT_MARGINS`.

    Returns
    -------
    pandas.DataFrame
        One row per candidate: ``r2_vs_truth``, ``r2_aggregated_vs_truth_1km``,
        ``within_cell_variance_captured``, ``max_abs_bias`` and ``worst_region``
        (its value), the target each is held to (``target_<criterion>`` for
        ``pixel``, ``cell``, ``within``, ``bias``), ``met_<criterion>`` and
        ``n_met``. Targets come from the 10 m and 1 km maps' own scores.

    Examples
    --------
    >>> sc = {"r2_10m_vs_truth": 0.4, "r2_1km_vs_truth": 0.2, "r2_1km_vs_truth_1km": 0.5,
    ...       "r2_10m_aggregated_vs_truth_1km": 0.4, "within_cell_variance_captured": 0.4,
    ...       "within_cell_variance_captured_1km": 0.0, "r2_x_vs_truth": 0.45,
    ...       "r2_x_aggregated_vs_truth_1km": 0.49, "within_cell_variance_captured_x": 0.36}
    >>> pr = pd.DataFrame({"bias_10m": [0.3, -0.1], "bias_1km": [0.2, 0.1],
    ...                    "bias_x": [0.2, -0.26]}, index=["R1", "R2"])
    >>> t = criteria_table(sc, pr)
    >>> [bool(t.loc["x", f"met_{k}"]) for k in CRITERIA], int(t.loc["x", "n_met"])
    ([True, True, True, False], 3)
    >>> t.loc["x", "worst_region"]
    'R2'
    """
    m = {**PRODUCT_MARGINS, **(margins or {})}
    if candidates is None:
        biased = [c[len("bias_"):] for c in per_region.columns if c.startswith("bias_")]
        candidates = list(dict.fromkeys([*SINGLE_SCALE, *(c for c in biased
                                                          if _names(c)[0] in scores)]))
    targets = {"pixel": max(scores["r2_10m_vs_truth"], scores["r2_1km_vs_truth"]) + m["pixel"],
               "cell": scores["r2_1km_vs_truth_1km"] - m["cell"],
               "within": scores["within_cell_variance_captured"] - m["within"],
               "bias": m["bias"]}
    rows = []
    for c in candidates:
        a, _, agg, _, wc = _names(c)
        missing = [k for k in (a, agg, wc) if k not in scores]
        if missing or f"bias_{c}" not in per_region:
            raise ValueError(f"criteria_table: candidate {c!r} has no scores {missing} or no "
                             f"bias_{c} column")
        bias = per_region[f"bias_{c}"].astype(float)
        row = {"candidate": c, "r2_vs_truth": scores[a], "r2_aggregated_vs_truth_1km": scores[agg],
               "within_cell_variance_captured": scores[wc],
               "max_abs_bias": float(bias.abs().max()), "worst_region": str(bias.abs().idxmax())}
        values = {"pixel": scores[a], "cell": scores[agg], "within": scores[wc],
                  "bias": row["max_abs_bias"]}
        for k, v in values.items():
            row[f"target_{k}"] = targets[k]
            row[f"met_{k}"] = bool(v <= targets[k] if k == "bias" else v >= targets[k])
        row["n_met"] = sum(row[f"met_{k}"] for k in CRITERIA)
        rows.append(row)
    return pd.DataFrame(rows).set_index("candidate")


def pick_product(table: pd.DataFrame) -> str:
    """The book's product map by the issue's criteria: among the maps that use both scales
    (not :data:`SINGLE_SCALE`), the one that meets most criteria of :func:`criteria_table`,
    ties broken by R² over every pixel.

    Examples
    --------
    >>> t = pd.DataFrame({"n_met": [1, 3, 3, 2], "r2_vs_truth": [0.9, 0.5, 0.55, 0.6]},
    ...                  index=["10m", "a", "b", "c"])
    >>> pick_product(t)
    'b'
    """
    cand = table.loc[[c for c in table.index if c not in SINGLE_SCALE]]
    if cand.empty:
        raise ValueError("pick_product: no candidate uses both scales")
    order = cand.sort_values(["n_met", "r2_vs_truth"], ascending=False, kind="stable")
    return str(order.index[0])


# --------------------------------------------------------------------------
# Regional levels: why no map reaches |mean error| ≤ 0.25 in every region
# --------------------------------------------------------------------------
def level_shares(per_region: pd.DataFrame, names: Sequence[str] | None = None) -> pd.DataFrame:
    """How well each map places the regions' levels: its mean errors per region against the
    spread of the regions' true means.

    ``level_r2`` is ``1 − Σ bias² / Σ (truth_mean − mean of truth_means)²``
    over the regions: the share of the regions' true offsets from their
    common mean that a map's regional means reproduce (1: every region's
    level right; 0: no better than giving every region the same level;
    negative: worse).

    Parameters
    ----------
    per_region : pandas.DataFrame
        :func:`region_scores` (``truth_mean`` and ``bias_<map>`` columns), or
        any table with them.
    names : sequence of str, optional
        Maps (default every ``bias_<map>`` column).

    Returns
    -------
    pandas.DataFrame
        One row per map: ``level_r2``, ``rms_bias``, ``max_abs_bias``,
        ``regions_within`` (regions with ``|bias| ≤`` :data:`PRODUCT_MARGINS`'s
        ``bias``) and ``n_regions``.

    Examples
    --------
    >>> pr = pd.DataFrame({"truth_mean": [1.0, 2.0, 3.0], "bias_a": [0.0, 0.5, 0.0]})
    >>> t = level_shares(pr)
    >>> float(t.loc["a", "level_r2"]), int(t.loc["a", "regions_within"])
    (0.875, 2)
    """
    if names is None:
        names = [c[len("bias_"):] for c in per_region.columns if c.startswith("bias_")]
    t = per_region["truth_mean"].to_numpy(float)
    sst = float(((t - t.mean()) ** 2).sum())
    rows = []
    for n in names:
        b = per_region[f"bias_{n}"].to_numpy(float)
        rows.append({"map": n, "level_r2": 1.0 - float((b ** 2).sum()) / sst if sst > 0 else np.nan,
                     "rms_bias": float(np.sqrt(np.mean(b ** 2))),
                     "max_abs_bias": float(np.abs(b).max()),
                     "regions_within": int((np.abs(b) <= PRODUCT_MARGINS["bias"]).sum()),
                     "n_regions": len(b)})
    return pd.DataFrame(rows).set_index("map")


def estimand_at_samples(frame: pd.DataFrame, study: SimulatedStudy) -> np.ndarray:
    """The noise-free label of each sample: the estimand at its plot's pixel in its year.

    The mean ``log1p(rarefied)`` of a core taken at the sample's true pixel
    (:func:`fungi_ssl.simulate.truth.expected_log1p_rarefied` of the pixel's
    true log richness), which is what the truth layer holds at that pixel.
    The sample's own ``log_richness`` differs from it by its core's
    micro-habitat, its reads and its campaign's detection bias, which no
    predictor sees.
    """
    from .simulate.truth import expected_log1p_rarefied

    if "sample_id" not in frame:
        raise ValueError("estimand_at_samples: the sample table has no 'sample_id' column")
    truth = study.truth.set_index("sample_id")["true_richness_pixel"]
    pix = frame["sample_id"].map(truth).to_numpy(float)
    if np.isnan(pix).any():
        raise ValueError(f"estimand_at_samples: {int(np.isnan(pix).sum())} samples are not in "
                         "the study's truth table")
    return expected_log1p_rarefied(study, np.log(pix))


def _scored_mask(p: RegionProducts) -> np.ndarray:
    ok = np.isfinite(p.truth)
    for v in _map_layers(p).values():
        ok &= np.isfinite(v)
    return ok


def oracle_1km_biases(products: Sequence[RegionProducts], table: PredictorTable,
                      study: SimulatedStudy, model: str = "lightgbm", seed: int = 0,
                      radius_km: float = HOLDOUT_KM, nearby_km: float = 300.0,
                      product: bool = False) -> pd.DataFrame:
    """Where the regions' level errors come from: a 1 km model fitted on noise-free labels.

    For each held-out region the SPUN-style 1 km model is refitted on the
    same training rows (:func:`withheld_rows`) with the estimand at each
    sample (:func:`estimand_at_samples`) as the target, instead of the
    sample's own ``log1p(rarefied)``: a model that sees the same covariates
    and the same places, but whose labels carry no core noise and no
    campaign detection bias. Its mean error per region (over the pixels
    :func:`region_scores` scores) is what the 1 km covariates alone leave
    of the region's level; the gap to the real 1 km map's is what the
    labels add. The result is cached under ``data/cache/resolution_oracle``,
    keyed by the study, the table's labels, the model, the regions and their
    withheld rows (and the held-out 10 m models, with ``product``).

    Parameters
    ----------
    products : sequence of RegionProducts
        :func:`region_products` with ``held_out``.
    table : PredictorTable
    study : SimulatedStudy
    model : str
    seed : int
    radius_km : float
        As :func:`withheld_rows`.
    nearby_km : float
        Radius of ``label_offset_nearby``.
    product : bool
        Also refit the region's product model (:func:`fit_product_model`, on
        its held-out 10 m model's patch PCA, ``p.extra["models"]``) on the
        noise-free labels and map it: ``bias_oracle_product``.

    Returns
    -------
    pandas.DataFrame
        Indexed by region: ``bias_oracle_1km`` (and ``bias_oracle_product``);
        ``label_offset_nearby``, the
        mean of ``log_richness − estimand`` over the training samples within
        ``nearby_km`` of the region's centre (the level error the labels
        near it carry), and ``n_nearby``; ``label_offset_training``, the same
        over every training sample.
    """
    import hashlib

    import joblib

    from fungi_ssl.data.coordinates import crs_to_lonlat
    from fungi_ssl.maps.modelspec import library_versions
    from fungi_ssl.simulate.field_data import simulator_fingerprint

    frame = table.frame.reset_index(drop=True)
    keys = []
    for p in products:
        hm = p.extra.get("models")
        w = p.region.window
        out = withheld_rows(frame, study, p.region, radius_km)
        keys.append([w.epsg, w.col0, w.row0, w.width, w.height, p.region.year,
                     hashlib.sha1(np.packbits(out).tobytes()).hexdigest(),
                     None if hm is None or not product else hm.map_model.fingerprint])
    params = {"study": study.config.as_dict(), "simulator": simulator_fingerprint(),
              "source": getattr(table, "source", None), "n_rows": len(frame),
              "frame": pd.util.hash_pandas_object(frame[["sample_id", "log_richness"]],
                                                  index=False).sum().item(),
              "model": model, "seed": int(seed), "versions": library_versions(),
              "regions": keys, "radius_km": radius_km, "nearby_km": nearby_km,
              "product": bool(product), "layout": 1}
    path = cache_dir("resolution_oracle", params) / "biases.joblib"
    if path.exists():
        return joblib.load(path)
    est = estimand_at_samples(frame, study)
    data = frame.assign(estimand=est)
    offset = frame["log_richness"].to_numpy(float) - est
    lon, lat = np.radians(frame["longitude"].to_numpy(float)), np.radians(
        frame["latitude"].to_numpy(float))
    rows = []
    for p in products:
        train = ~withheld_rows(frame, study, p.region, radius_km)
        m = fit_1km_model(data.loc[train].reset_index(drop=True), model, seed, target="estimand")
        grid = np.full(p.map_1km.shape, np.nan)
        grid[p.covariates["cell_row"].to_numpy(), p.covariates["cell_col"].to_numpy()] = \
            m.predict(p.covariates)
        ok = _scored_mask(p)
        w = p.region.window
        clon, clat = crs_to_lonlat(np.array([w.x.mean()]), np.array([w.y.mean()]), w.epsg)
        c0, c1 = np.radians(float(clon[0])), np.radians(float(clat[0]))
        d = 2 * 6371.0 * np.arcsin(np.sqrt(np.sin((lat - c1) / 2) ** 2 + np.cos(lat) * np.cos(c1)
                                           * np.sin((lon - c0) / 2) ** 2))
        near = train & (d <= nearby_km) & np.isfinite(offset)
        extra = {}
        if product:
            hm = p.extra.get("models")
            if hm is None:
                raise ValueError(f"oracle_1km_biases: region {p.region.name} has no held-out "
                                 "models (region_products with held_out)")
            prod = fit_product_model(data.loc[train].reset_index(drop=True), hm.map_model, model,
                                     seed, target="estimand")
            mp = _product_map(prod, region_components(hm.map_model, p.store, p.region),
                              p.covariates, p.region)
            sel = ok & np.isfinite(mp)
            extra["bias_oracle_product"] = float(np.mean(mp[sel] - p.truth[sel]))
        rows.append({"region": p.region.name,
                     "bias_oracle_1km": float(np.mean(_expand(grid)[ok] - p.truth[ok])), **extra,
                     "label_offset_nearby": float(offset[near].mean()) if near.any() else np.nan,
                     "n_nearby": int(near.sum()),
                     "label_offset_training": float(np.nanmean(offset[train]))})
    result = pd.DataFrame(rows).set_index("region")
    joblib.dump(result, path)
    return result


def timed(fn, *args, **kwargs) -> tuple[Any, float]:
    """``(fn(*args, **kwargs), seconds)``."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0
