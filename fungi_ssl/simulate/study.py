"""The simulated study: one configuration ties the world's layers together.

:class:`StudyConfig` holds every parameter of a study (the richness model's
coefficients in :class:`~fungi_ssl.simulate.communities.RichnessModel`);
:class:`SimulatedStudy` draws the campaigns, sites and samples of
:mod:`~fungi_ssl.simulate.sampling` in the landscape of
:mod:`~fungi_ssl.simulate.landscape`, and serves the sensors' views of it
(:mod:`~fungi_ssl.simulate.sensors`): cubes of any window, time series at
sites and at random pixels, and the 1 km covariates. It also holds the places
of the book (UK parks, map windows) and the diagnostics chapter 00 shows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import dask
import dask.array as da
import numpy as np
import pandas as pd
import scipy.sparse as sp
import xarray as xr
from pyproj import CRS
from tqdm.auto import tqdm

from .. import config
from .communities import RichnessModel
from .landscape import (
    LANDCOVER_CLASSES,
    PIXEL_SIZE,
    WOODLAND_CODES,
    Landscape,
    Window,
)
from .sampling import draw_campaigns, draw_samples, place_sites
from .sensors import _with_crs, covariates_1km, s1_doys, s1_orbits, s2_doys, sentinel_observations

if TYPE_CHECKING:
    import geopandas as gpd

__all__ = ["PARAMETER_RATIONALE", "UK_PARKS", "SimulatedStudy", "StudyConfig",
           "parameter_table", "realism_report", "variance_below_1km"]


@dataclass(frozen=True)
class StudyConfig:
    """Parameters of a simulated study. Same config, same study, bit for bit.

    Attributes
    ----------
    seed : int
        Master seed.
    n_samples : int
        Soil samples (cores) to draw before the sequencing-depth filter.
    n_campaigns : int
        Sampling campaigns (studies); each has its own region, year,
        habitat focus, sequencing depth and primer bias.
    mean_cores_per_site : float
        Mean cores per site (the real European table has 2.3).
    singleton_share : float
        Share of sites with one core (real: 2,035 of 3,650 = 0.56).
    max_cores_per_site : int
        Largest site (real: 215).
    core_spread_px : int
        Cores lie within this many pixels of the recorded plot coordinate.
    core_sd : float
        Log-SD of core-to-core richness within a pixel (micro-habitat).
    campaign_bias_sd : float
        Log-SD of campaign detection bias (primers, extraction, bioinformatics).
    median_reads : float
        Median total fungal reads per sample.
    reads_sdlog : float
        Log-SD of total reads per sample; half its variance lies between
        campaigns (each campaign's median depth) and half within them.
    rarefaction_depth : int
        Total reads to which every sample is rarefied; shallower samples get
        ``rarefied = NaN`` as in GlobalFungi.
    otu_pool : int
        ECM OTUs in the regional pool.
    sad_sdlog : float
        Log-SD of the lognormal species-abundance distribution.
    years : tuple of int
        Years with satellite observations and possible sampling.
    richness : RichnessModel
        Coefficients of true richness.
    """

    seed: int = 0
    n_samples: int = 14_000
    n_campaigns: int = 320
    mean_cores_per_site: float = 2.3
    singleton_share: float = 0.56
    max_cores_per_site: int = 215
    core_spread_px: int = 2
    core_sd: float = 0.30
    campaign_bias_sd: float = 0.25
    median_reads: float = 12_000.0
    reads_sdlog: float = 0.85
    rarefaction_depth: int = 4_000
    otu_pool: int = 3_000
    sad_sdlog: float = 1.6
    years: tuple[int, ...] = config.YEARS
    richness: RichnessModel = field(default_factory=RichnessModel)

    def as_dict(self) -> dict:
        """Plain-dict form, used as a cache key and in the book."""
        return asdict(self)



#: The three UK national parks of the trend chapter (name: lon, lat of centre).
UK_PARKS: dict[str, tuple[float, float]] = {
    "Cairngorms": (-3.65, 57.08),
    "Lake District": (-3.08, 54.48),
    "Yorkshire Dales": (-2.15, 54.25),
}


# --------------------------------------------------------------------------- #
# The study
# --------------------------------------------------------------------------- #

class SimulatedStudy:
    """A whole simulated study: landscapes, satellites, campaigns and samples.

    Everything is drawn lazily and cached on the instance; the same
    :class:`StudyConfig` gives the same study, bit for bit.

    Parameters
    ----------
    config : StudyConfig, optional
        Parameters; keyword overrides are applied on top (``seed=3``).

    Examples
    --------
    >>> study = SimulatedStudy(n_samples=300, n_campaigns=12)
    >>> list(study.samples.columns)[:6]
    ['sample_id', 'longitude', 'latitude', 'continent', 'raw_obs_div', 'rarefied']
    >>> bool((study.samples["rarefied"].dropna() >= 0).all())
    True
    """

    def __init__(self, config: StudyConfig | None = None, **overrides):
        base = config or StudyConfig()
        if overrides:
            base = StudyConfig(**{**asdict(base), **overrides,
                                  "richness": overrides.get("richness", base.richness)})
        if base.n_samples < 1 or base.n_campaigns < 1:
            raise ValueError("StudyConfig: n_samples and n_campaigns must be positive, got "
                             f"{base.n_samples} and {base.n_campaigns}")
        self.config = base
        self.landscape = Landscape(base.seed, base.richness)

    def __repr__(self) -> str:
        c = self.config
        return f"SimulatedStudy(seed={c.seed}, n_samples={c.n_samples}, n_campaigns={c.n_campaigns})"

    def _rng(self, *keys: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, *keys])

    # ---- layers and cubes on windows ---------------------------------- #
    def layers(self, window: Window, year: int) -> xr.Dataset:
        """Latent 10 m layers and true richness of a window, as a Dataset with a CRS.

        ``true_richness`` is the expected ECM species count of a soil core at
        each pixel (0 on water). It is the truth for evaluation only.
        """
        L = self.landscape.layers(np.array([window.epsg]), window.x[None], window.y[None], year)
        coords = {"y": window.y, "x": window.x}
        keep = ["landcover", "canopy", "host_fraction", "stand_age", "ancient", "declining",
                "soil_ph", "soil_soc", "elevation", "temperature", "precipitation", "nitrogen"]
        ds = xr.Dataset({k: (("y", "x"), L[k][0]) for k in keep}, coords=coords)
        ds["true_richness"] = (("y", "x"), np.exp(L["log_richness"][0]).astype(np.float32))
        ds["landcover"].attrs["classes"] = list(LANDCOVER_CLASSES)
        ds.attrs.update(year=int(year), window=window.name)
        return _with_crs(ds, window.epsg)

    def _observations_block(self, window: Window, year: int) -> dict[str, np.ndarray]:
        obs = sentinel_observations(self.landscape, np.array([window.epsg]), window.x[None],
                                    window.y[None], year)
        return {"s2": obs["s2"][:, :, 0], "s2_valid": obs["s2_valid"][:, 0],
                "s1": obs["s1"][:, :, 0], "s1_valid": obs["s1_valid"][:, 0]}

    def cube(self, window: Window, year: int, chunks: int = 64) -> xr.Dataset:
        """Lazy Sentinel-2/Sentinel-1 cube of a window-year (CONTRIBUTING.md format).

        Each ``chunks`` x ``chunks`` block is generated on its own when dask
        computes it, so memory is bounded by the chunk, not the window.

        Examples
        --------
        >>> study = SimulatedStudy()
        >>> cube = study.cube(Window.around(-3.65, 57.08, 32), 2019, chunks=16)
        >>> dict(cube["s2"].sizes)
        {'time_s2': 73, 'band_s2': 10, 'y': 32, 'x': 32}
        """
        from .. import encoder  # the canonical band order; imports torch, so only here

        if chunks < 1:
            raise ValueError(f"chunks must be a positive number of pixels, got {chunks}")
        T2, T1 = len(s2_doys(window.epsg)), len(s1_doys(window.epsg))
        shapes = {"s2": (T2, 10), "s2_valid": (T2,), "s1": (T1, 2), "s1_valid": (T1,)}
        dtypes = {"s2": np.float32, "s2_valid": bool, "s1": np.float32, "s1_valid": bool}
        rows = []
        for r0 in range(0, window.height, chunks):
            cols = []
            for c0 in range(0, window.width, chunks):
                sub = window.sub(c0, r0, min(chunks, window.width - c0),
                                 min(chunks, window.height - r0))
                blk = dask.delayed(self._observations_block, pure=True)(sub, year)
                cols.append({k: da.from_delayed(blk[k], (*shapes[k], sub.height, sub.width),
                                                dtype=dtypes[k]) for k in shapes})
            rows.append(cols)
        arrays = {k: da.block([[c[k] for c in row] for row in rows]) for k in shapes}
        doy2, doy1 = s2_doys(window.epsg), s1_doys(window.epsg)
        t0 = np.datetime64(f"{int(year)}-01-01")
        ds = xr.Dataset(
            {"s2": (("time_s2", "band_s2", "y", "x"), arrays["s2"]),
             "s2_valid": (("time_s2", "y", "x"), arrays["s2_valid"]),
             "s1": (("time_s1", "band_s1", "y", "x"), arrays["s1"]),
             "s1_valid": (("time_s1", "y", "x"), arrays["s1_valid"])},
            coords={"time_s2": t0 + (doy2 - 1).astype("timedelta64[D]"),
                    "time_s1": t0 + (doy1 - 1).astype("timedelta64[D]"),
                    "doy_s2": ("time_s2", doy2.astype(np.int16)),
                    "doy_s1": ("time_s1", doy1.astype(np.int16)),
                    "orbit": ("time_s1", s1_orbits(len(doy1))),
                    "band_s2": list(encoder.S2_BANDS), "band_s1": list(encoder.S1_BANDS),
                    "y": window.y, "x": window.x})
        ds["s2"].attrs.update(units="reflectance x 10000")
        ds["s1"].attrs.update(units="dB")
        ds.attrs.update(year=int(year), window=window.name, source="fungi_ssl.simulate")
        return _with_crs(ds, window.epsg)

    # ---- campaigns, sites and samples --------------------------------- #
    @cached_property
    def campaigns(self) -> pd.DataFrame:
        """Sampling campaigns: centre, spread, year, habitat focus, depth and bias."""
        return draw_campaigns(self.config, self._rng(11))

    @cached_property
    def sites(self) -> pd.DataFrame:
        """Sites: one plot coordinate each (the pixel centre), campaign and year."""
        return place_sites(self.landscape, self.config, self.campaigns, self._rng(12))

    @cached_property
    def _draw(self) -> dict:
        """Cores, their truth, OTU tables and rarefied richness (drawn together)."""
        return draw_samples(self.landscape, self.config, self.sites, self.campaigns,
                            self._rng(13), self._rng(14))

    @property
    def samples(self) -> pd.DataFrame:
        """The field sample table, in the real GlobalFungi schema (a copy).

        ``rarefied`` is NaN where sequencing depth fell short of
        ``rarefaction_depth``, as the real table's NA rows; analyses drop them.
        """
        return self._draw["samples"].copy()

    @property
    def truth(self) -> pd.DataFrame:
        """What no model may see: true richness and latent layers at each core."""
        return self._draw["truth"].copy()

    @property
    def otu_table(self) -> sp.csr_matrix:
        """ECM OTU read counts, samples x OTUs (rows in ``samples`` order)."""
        return self._draw["otu"]

    @cached_property
    def covariates(self) -> pd.DataFrame:
        """1 km climate, soil and land-cover covariates, indexed by ``sample_id``.

        Column names and units follow the real SPUN covariate table, so the
        same predictor sets read both.
        """
        return covariates_1km(self.landscape, self.sites, self._draw["samples"])

    # ---- satellite time series at samples and for pretraining ------------ #
    def _patch_series(self, epsg, col, row, year, k: int, batch: int, desc: str):
        """Time series of k x k patches centred on pixels (col, row), batched."""
        half = k // 2
        parts = []
        n = len(epsg)
        for b0 in tqdm(range(0, n, batch), desc=desc, leave=False, disable=n <= batch):
            sl = slice(b0, b0 + batch)
            offs = np.arange(k) - half
            xs = (col[sl, None] + offs[None] + 0.5) * PIXEL_SIZE
            ys = -(row[sl, None] + offs[None] + 0.5) * PIXEL_SIZE
            L = self.landscape.layers(epsg[sl], xs, ys, year[sl])
            obs = sentinel_observations(self.landscape, epsg[sl], xs, ys, year[sl], L)
            m = xs.shape[0] * k * k
            parts.append({
                "s2": np.moveaxis(obs["s2"], (0, 1), (-2, -1)).reshape(m, -1, 10),
                "s2_valid": np.moveaxis(obs["s2_valid"], 0, -1).reshape(m, -1),
                "s2_doy": np.repeat(obs["s2_doy"], k * k, axis=0).astype(np.int16),
                "s1": np.moveaxis(obs["s1"], (0, 1), (-2, -1)).reshape(m, -1, 2),
                "s1_valid": np.moveaxis(obs["s1_valid"], 0, -1).reshape(m, -1),
                "s1_doy": np.repeat(obs["s1_doy"], k * k, axis=0).astype(np.int16),
                "landcover": L["landcover"].reshape(m),
                "true_richness": np.exp(L["log_richness"]).reshape(m).astype(np.float32),
            })
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}

    def site_patch_series(self, k: int = 3, batch: int = 512) -> tuple[dict, pd.DataFrame]:
        """Sentinel time series of the k x k patch around every site, in its sampling year.

        Cores of a site share the plot coordinate, hence one patch.

        Returns
        -------
        arrays : dict
            ``PixelTimeSeries`` fields (``s2 (n, 73, 10)``, ``s2_valid``, ``s2_doy``,
            ``s1 (n, 60, 2)``, ``s1_valid``, ``s1_doy``) for ``n = n_sites * k * k``
            pixels, plus ``landcover`` and ``true_richness`` (truth, for probes only).
        index : pandas.DataFrame
            ``site_id``, ``year``, ``patch_row``, ``patch_col`` of every pixel, in
            (site, row, col) order.
        """
        if k < 1 or k % 2 == 0:
            raise ValueError(f"k must be a positive odd patch size, got {k}")
        s = self.sites
        arrays = self._patch_series(s["epsg"].to_numpy(), s["col"].to_numpy(),
                                    s["row"].to_numpy(), s["year"].to_numpy(), k, batch,
                                    "site time series")
        index = pd.DataFrame({
            "site_id": np.repeat(s["site_id"].to_numpy(), k * k),
            "year": np.repeat(s["year"].to_numpy(), k * k),
            "patch_row": np.tile(np.repeat(np.arange(k), k), len(s)),
            "patch_col": np.tile(np.arange(k), k * len(s)),
        })
        return arrays, index

    def random_pixels(self, n: int, seed: int, batch: int = 4096) -> tuple[dict, pd.DataFrame]:
        """Time series of ``n`` pixels drawn across the sampled regions and years.

        Pixels are drawn in 8 x 8 clusters (so neighbours appear together)
        around random sites' campaigns, in random years: the training set for
        the encoder and, with another seed, held-out pixels for probes.
        """
        if n < 1:
            raise ValueError(f"n must be a positive number of pixels, got {n}")
        rng = self._rng(21, seed)
        s = self.sites
        n_clusters = int(np.ceil(n / 64))
        pick = rng.integers(0, len(s), n_clusters)
        dcol = rng.integers(-300, 301, n_clusters)
        drow = rng.integers(-300, 301, n_clusters)
        epsg = np.repeat(s["epsg"].to_numpy()[pick], 1)
        col = s["col"].to_numpy()[pick] + dcol
        row = s["row"].to_numpy()[pick] + drow
        year = rng.choice(np.asarray(self.config.years), n_clusters)
        arrays = self._patch_series(epsg, col, row, year, 8, max(1, batch // 64),
                                    "pixel time series")
        arrays = {k: v[:n] for k, v in arrays.items()}
        index = pd.DataFrame({"cluster": np.repeat(np.arange(n_clusters), 64)[:n],
                              "year": np.repeat(year, 64)[:n]})
        return arrays, index

    # ---- places: UK parks and map tiles -------------------------------- #
    def park_window(self, name: str, size: int) -> Window:
        """The ``size``-pixel square mapped in a UK national park.

        Candidate squares on a 3 km lattice (within 15 km) around the park centre are scored
        on a coarse sub-grid, and the most wooded one with ancient woodland in
        it is chosen, so every park's trend has woodland of both kinds.
        """
        if name not in UK_PARKS:
            raise ValueError(f"park must be one of {sorted(UK_PARKS)}, got {name!r}")
        lon0, lat0 = UK_PARKS[name]
        best, best_score = None, -np.inf
        for dx in range(-5, 6):
            for dy in range(-5, 6):
                lon = lon0 + dx * 3000 / (111_320 * np.cos(np.radians(lat0)))
                lat = lat0 + dy * 3000 / 111_320
                w = Window.around(lon, lat, size, name)
                step = max(1, size // 24)
                L = self.landscape.layers(np.array([w.epsg]), w.x[None, ::step],
                                          w.y[None, ::step], 2017)
                wood = np.isin(L["landcover"], WOODLAND_CODES).mean()
                anc = L["ancient"].mean()
                score = min(wood, 0.6) + 2.0 * min(anc, 0.2) + 0.5 * min(wood - anc, 0.2)
                if score > best_score:
                    best, best_score = w, score
        return best

    def parks(self, size: int) -> gpd.GeoDataFrame:
        """The three UK park windows as a GeoDataFrame (lon/lat polygons)."""
        import geopandas as gpd
        from shapely.geometry import box

        rows = []
        for name in UK_PARKS:
            w = self.park_window(name, size)
            rows.append({"park": name, "epsg": w.epsg, "col0": w.col0, "row0": w.row0,
                         "size_px": size, "geometry": box(*w.bounds_lonlat())})
        return gpd.GeoDataFrame(rows, crs="EPSG:4326")

    def park_woodland(self, name: str, size: int, year: int = 2017,
                      min_area_ha: float = 0.25) -> gpd.GeoDataFrame:
        """Woodland polygons of a park window, flagged ``ancient`` or ``other``.

        Polygons are connected woodland areas of one kind in ``year`` (the
        baseline of the trend), like an ancient-woodland inventory.
        """
        import geopandas as gpd
        import rasterio.features
        from scipy import ndimage
        from shapely.geometry import shape

        w = self.park_window(name, size)
        lay = self.layers(w, year)
        wood = np.isin(lay["landcover"].values, WOODLAND_CODES)
        ancient = lay["ancient"].values & wood
        other = wood & ~ancient
        labels = np.zeros(wood.shape, dtype=np.int32)
        la, na = ndimage.label(ancient)
        lo, _ = ndimage.label(other)
        labels[ancient] = la[ancient]
        labels[other] = lo[other] + na
        transform = lay.rio.transform()
        rows = []
        for geom, value in rasterio.features.shapes(labels, mask=labels > 0,
                                                    transform=transform):
            poly = shape(geom)
            rows.append({"label": int(value), "woodland": "ancient" if value <= na else "other",
                         "geometry": poly})
        gdf = gpd.GeoDataFrame(rows, crs=CRS.from_epsg(w.epsg))
        gdf = gdf.dissolve(by="label", aggfunc="first").reset_index(drop=True)
        gdf["area_ha"] = gdf.area / 10_000.0
        gdf = gdf[gdf["area_ha"] >= min_area_ha].reset_index(drop=True)
        gdf.insert(0, "polygon_id", [f"{name[:3].upper()}{i:04d}" for i in range(len(gdf))])
        gdf.insert(1, "park", name)
        return gdf

    def map_window(self, index: int = 0, size: int = 128) -> Window:
        """A mixed-landscape window for maps: around the site of the ``index``-th
        largest campaign, where woodland and open land meet."""
        s = self.sites
        order = s.groupby("campaign")["n_cores"].sum().sort_values(ascending=False).index
        site = s[s["campaign"] == order[index % len(order)]].iloc[0]
        return Window(int(site["epsg"]), int(site["col"]) - size // 2,
                      int(site["row"]) - size // 2, size, size, f"map{index}")

    @property
    def total_reads(self) -> np.ndarray:
        """Total fungal reads per sample (the community the ECM reads sit in)."""
        return self._draw["total_reads"]



def variance_below_1km(study: SimulatedStudy, n_cells: int = 300, seed: int = 0,
                       step_px: int = 2) -> dict[str, float]:
    """Share of the variance of true log richness that lies within 1 km cells.

    Cells are the 1 km UTM cells of randomly chosen sites (the landscapes the
    study samples), evaluated on a sub-grid every ``step_px`` pixels in 2017.
    Water is excluded.

    Returns
    -------
    dict
        ``within`` (mean within-cell variance), ``total`` (variance over all
        pixels) and ``share_below_1km`` (their ratio).
    """
    rng = np.random.default_rng([study.config.seed, 31, seed])
    s = study.sites.iloc[rng.choice(len(study.sites), size=min(n_cells, len(study.sites)),
                                    replace=False)]
    cc = np.floor(s["col"].to_numpy() / 100).astype(np.int64)
    cr = np.floor(s["row"].to_numpy() / 100).astype(np.int64)
    k = np.arange(0, 100, step_px)
    xs = (cc[:, None] * 100 + k[None] + 0.5) * PIXEL_SIZE
    ys = -(cr[:, None] * 100 + k[None] + 0.5) * PIXEL_SIZE
    L = study.landscape.layers(s["epsg"].to_numpy(), xs, ys, 2017)
    v = L["log_richness"].reshape(len(s), -1)
    v = np.where(np.isfinite(v), v, np.nan)
    within = float(np.nanmean(np.nanvar(v, axis=1)))
    total = float(np.nanvar(v))
    return {"within": within, "total": total, "share_below_1km": within / total}


#: Why each parameter has its value: shown beside the values in chapter 00.
PARAMETER_RATIONALE: dict[str, str] = {
    "n_samples": "cores drawn; ~10% fall short of the rarefaction depth, as GlobalFungi's 9% NA rows",
    "n_campaigns": "studies in GlobalFungi each contribute tens of samples; campaign effects are real",
    "mean_cores_per_site": "real European table: 8,321 samples at 3,650 coordinates = 2.3",
    "singleton_share": "real table: 2,035 of 3,650 sites have one sample",
    "max_cores_per_site": "real table: up to 215 samples share one coordinate",
    "core_spread_px": "cores lie within ~20 m of the recorded plot coordinate",
    "core_sd": "micro-habitat variation between cores of one plot; gives ~14% within-site variance",
    "campaign_bias_sd": "primer, extraction and pipeline differences between studies (~25%)",
    "median_reads": "typical Illumina ITS libraries: 10^4 fungal reads",
    "reads_sdlog": "sequencing depth varies ~10-fold between samples; half of its log-variance between campaigns",
    "rarefaction_depth": "every sample is rarefied to the same fungal read depth",
    "otu_pool": "ECM OTUs in a continental pool (GlobalFungi: thousands)",
    "sad_sdlog": "lognormal species abundances, as typical for soil fungi",
    "s_max": "ECM OTUs in an old all-host stand at optimum; real 99th percentile ~320 after rarefaction",
    "floor": "ECM fungi persist at low richness without hosts (spores, hedgerow roots)",
    "host_exponent": "diminishing returns of host basal area",
    "age_floor": "young stands hold about a third of the mature ECM community",
    "age_scale": "ECM communities mature over decades",
    "continuity": "ancient woodland holds ~40% more ECM species (continuity of hosts and soil)",
    "ph_optimum": "ECM diversity peaks on moderately acid soils",
    "ph_width": "broad unimodal pH response",
    "ph_curvature": "pH is among the strongest soil predictors",
    "temp_optimum": "temperate-boreal optimum of ECM richness",
    "temp_width": "broad unimodal temperature response",
    "temp_curvature": "climate matters, but mostly through hosts",
    "precip_slope": "wetter sites hold slightly more ECM species",
    "nitrogen_slope": "N deposition depresses ECM diversity (~1.5% per kg N/ha/yr)",
    "regional_sd": "regional anomaly that no covariate explains (history, dispersal)",
    "fine_sd": "fine-scale (~40 m) variation no layer explains",
    "decline_rate": "true trend: -4%/yr in declining ancient stands",
    "drought_effect": "2018 and 2022 drought years: -5% in Europe",
}


def parameter_table(study_config: StudyConfig) -> pd.DataFrame:
    """Every parameter of a study with its value and the reason for it.

    Examples
    --------
    >>> t = parameter_table(StudyConfig())
    >>> t.loc["s_max", "value"]
    400.0
    """
    flat = {k: v for k, v in asdict(study_config).items() if k not in ("richness", "years", "seed")}
    flat.update(asdict(study_config.richness))
    table = pd.DataFrame({"value": pd.Series(flat, dtype=object)})
    table["why"] = [PARAMETER_RATIONALE.get(k, "") for k in table.index]
    table.index.name = "parameter"
    return table


def realism_report(samples: pd.DataFrame, script: Path | None = None,
                   workdir: Path | None = None) -> pd.DataFrame:
    """Run the shared ``realism_report.py`` on a sample table, beside the real one.

    Parameters
    ----------
    samples : pandas.DataFrame
        Sample table in the GlobalFungi schema.
    script : pathlib.Path, optional
        The report script; default :data:`fungi_ssl.config.REALISM_REPORT`.
    workdir : pathlib.Path, optional
        Where the table is written for the script (default: the cache dir).

    Returns
    -------
    pandas.DataFrame
        One row per statistic, columns ``simulated`` and ``real``.
    """
    import subprocess
    import sys

    script = Path(script) if script is not None else config.REALISM_REPORT
    if not script.exists():
        raise FileNotFoundError(f"{script}: the realism report script is not there "
                                "(it ships in ../shared/tools beside the repository)")
    workdir = Path(workdir) if workdir is not None else config.CACHE_DIR / "realism"
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "simulated_samples.csv"
    samples.to_csv(path, index=False)
    out = subprocess.run([sys.executable, str(script), str(path)], capture_output=True,
                         text=True, check=True).stdout
    rows = []
    for line in out.splitlines()[1:]:
        parts = line.rsplit(None, 2)
        if len(parts) == 3:
            rows.append((parts[0].strip(), float(parts[1]), float(parts[2])))
    return pd.DataFrame(rows, columns=["statistic", "simulated", "real"]).set_index("statistic")

