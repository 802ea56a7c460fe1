"""Chapter 06's regions and their 1 km cells: where the resolution study maps, and the cell arithmetic.

* :func:`regions` (:class:`Region`): the chapter's regions for a profile
  and seed, whole 1 km UTM cells in different landscapes
  (:data:`REGION_LAYOUT`), each with woodland meeting open land
  (:data:`WOOD_RANGE`, :data:`WATER_MAX`); :func:`skip_reason` says why the
  chapter cannot run on a data directory;
* :func:`withheld_rows`: the samples a held-out region's models must not
  see (its own, and its campaigns' within :data:`HOLDOUT_KM`);
  :func:`holdout_groups`: which regions are held out together (one model
  fit without all of them), so that a small profile fits fewer models;
* :func:`region_store`: a region's embedding store (cached), one pixel
  larger than the region on every side (:data:`MARGIN_PX`) so that every
  mapped pixel has its full 3 × 3 patch; :func:`region_truth`: the truth
  layer of a region (NaN on water);
* :func:`edge_zoom`: a window of a region where woodland meets open land,
  for the figures;
* the 1 km cell grid (:data:`CELL_PX` pixels of 10 m a side):
  :func:`cell_means` and :func:`with_within_cell_deviations` (a map with
  one map's cell means and another's pattern inside every cell).

:mod:`fungi_ssl.maps.resolution` fits the models and makes the maps of these
regions; :mod:`fungi_ssl.maps.resolution_scores` scores them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

from fungi_ssl.core import config
from fungi_ssl.simulate.landscape import PIXEL_SIZE, WATER, WOODLAND_CODES, Window

if TYPE_CHECKING:
    from fungi_ssl.embeddings.encoder import TrainedEncoder
    from fungi_ssl.simulate import SimulatedStudy

__all__ = [
    "CELL_PX",
    "HOLDOUT_KM",
    "REGION_LAYOUT",
    "YEAR",
    "Region",
    "cell_means",
    "edge_zoom",
    "holdout_groups",
    "region_store",
    "region_truth",
    "regions",
    "skip_reason",
    "with_within_cell_deviations",
    "withheld_rows",
]


#: Pixels of 10 m along the side of a 1 km cell.
CELL_PX = round(1000.0 / PIXEL_SIZE)
#: The year mapped (one year, as chapter 02's tile).
YEAR = 2020
#: Regions per profile: how many, their side in whole 1 km cells, and in how many groups
#: they are held out (:func:`holdout_groups`).
#: Full: 8 regions of 3 × 3 km (72 cells, 720,000 pixels), each held out alone; quick: 8
#: of 1 × 1 km (80,000 pixels), held out four at a time, so that chapter 06 fits two sets
#: of held-out models instead of eight (each set is 18 tree fits on the whole table).
#: Eight regions at least, so that a bootstrap over regions gives an interval.
REGION_LAYOUT: dict[str, dict[str, int]] = {
    "full": {"n_regions": 8, "side_km": 3, "holdout_groups": 8},
    "quick": {"n_regions": 8, "side_km": 1, "holdout_groups": 2},
}
#: A region's own campaigns lose their samples within this distance (km) of the region
#: when the region is held out (:func:`withheld_rows`).
HOLDOUT_KM = 10.0
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


def holdout_groups(region_list: Sequence[Region], profile: str = "full",
                   n_groups: int | None = None) -> dict[str, tuple[Region, ...]]:
    """The regions held out together with each region: ``{name: (regions of its group)}``.

    A group's models are fitted once, without the samples of every region in
    it (:func:`withheld_rows` of the group), so each
    region is still mapped by models that never saw it or its campaigns'
    samples nearby; they also did not see the other regions of its group.
    Consecutive regions form a group (``R1``–``R4`` and ``R5``–``R8`` in
    two groups of eight regions), so that each group spans both continents.

    Parameters
    ----------
    region_list : sequence of Region
    profile : {"quick", "full"}
        Its :data:`REGION_LAYOUT` gives the number of groups.
    n_groups : int, optional
        Override it; as many groups as regions (or more) holds each region out alone.

    Examples
    --------
    >>> rs = [Region(f"R{i}", Window(32630, 100 * i, 0, 100, 100), "Europe", "forest", i, 2020,
    ...              0.5, 0.0) for i in range(1, 6)]
    >>> [r.name for r in holdout_groups(rs, n_groups=2)["R4"]]
    ['R4', 'R5']
    >>> [len(g) for g in holdout_groups(rs, "full").values()]
    [1, 1, 1, 1, 1]
    """
    n = int(n_groups if n_groups is not None else _check_profile(profile)["holdout_groups"])
    if n < 1:
        raise ValueError(f"holdout_groups: n_groups must be positive, got {n}")
    rs = list(region_list)
    size = -(-len(rs) // n) if rs else 1  # ceil: n groups, the last one smaller
    groups = [tuple(rs[i:i + size]) for i in range(0, len(rs), size)]
    return {r.name: g for g in groups for r in g}


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


def withheld_rows(frame: pd.DataFrame, study: SimulatedStudy,
                  region: Region | Sequence[Region], radius_km: float = HOLDOUT_KM) -> np.ndarray:
    """Rows of a sample table that a model scored on ``region`` must not be fitted on.

    A row is withheld when its site lies inside the region, or when it belongs
    to one of the region's campaigns (a campaign with a site inside the
    region, or the campaign the region is centred on) and its site lies
    within ``radius_km`` of the region's edge. Sites are placed by their true
    pixel (``study.sites``), in the region's UTM zone. Given several regions
    (a hold-out group, :func:`~fungi_ssl.maps.resolution_regions.holdout_groups`),
    the rows withheld for any of them.

    Parameters
    ----------
    frame : pandas.DataFrame
        A sample table with ``site_id`` (the simulated study's).
    study : SimulatedStudy
    region : Region or sequence of Region
    radius_km : float

    Returns
    -------
    numpy.ndarray
        Boolean, one per row of ``frame``.
    """
    if "site_id" not in frame:
        raise ValueError("withheld_rows: the sample table has no 'site_id' column")
    if not isinstance(region, Region):
        group = list(region)
        if not group:
            raise ValueError("withheld_rows: the group of regions is empty")
        return np.logical_or.reduce([withheld_rows(frame, study, r, radius_km) for r in group])
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


def _expand(cells: np.ndarray, f: int = CELL_PX) -> np.ndarray:
    """Each cell repeated ``f × f`` times: a 1 km grid on the 10 m pixels."""
    return np.repeat(np.repeat(np.asarray(cells), f, axis=0), f, axis=1)


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
                                f: int = CELL_PX, weight: float = 1.0) -> np.ndarray:
    """A map with the cell means of ``levels`` and the within-cell deviations of ``pattern``.

    Each pixel gets its cell's mean of ``levels`` plus its own ``pattern``
    value minus its cell's mean of ``pattern`` (means over each map's finite
    pixels, :func:`cell_means`): the 1 km map (``levels`` constant in each
    cell) or the product model's cell means, with the 10 m map's pattern
    inside every cell. NaN where ``pattern`` is NaN. With ``weight`` < 1 a
    cell's level is ``weight`` × its mean of ``levels`` + (1 − ``weight``) ×
    its mean of ``pattern`` (the ``blend`` candidate's 0.5:
    :data:`fungi_ssl.maps.composite.LEVEL_WEIGHTS`), the arithmetic of
    :func:`fungi_ssl.maps.composite.cell_deviation_map`.

    Examples
    --------
    >>> lv = np.array([[5.0, 7.0], [6.0, 6.0]])        # cell mean 6
    >>> pt = np.array([[1.0, 3.0], [2.0, np.nan]])     # cell mean 2
    >>> with_within_cell_deviations(lv, pt, f=2).tolist()
    [[5.0, 7.0], [6.0, nan]]
    >>> with_within_cell_deviations(lv, pt, f=2, weight=0.5).tolist()  # level (6 + 2) / 2
    [[3.0, 5.0], [4.0, nan]]
    """
    lv, pt = np.asarray(levels, float), np.asarray(pattern, float)
    if lv.shape != pt.shape:
        raise ValueError(f"with_within_cell_deviations: levels {lv.shape} and pattern "
                         f"{pt.shape} differ in shape")
    if weight == 1.0:
        return _expand(cell_means(lv, f), f) + pt - _expand(cell_means(pt, f), f)
    return pt + weight * (_expand(cell_means(lv, f), f) - _expand(cell_means(pt, f), f))
