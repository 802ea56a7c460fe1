"""Layer 2 of the simulated world: what the sensors and the 1 km products see.

* **Sentinel-2 and Sentinel-1** time series (:func:`sentinel_observations`):
  class spectra mixed by canopy, phenology shifted by temperature and host
  composition, stand-level heterogeneity within a class, clouds as coherent
  fields whose frequency follows precipitation (with the thin cloud and
  shadow a mask misses), SAR backscatter from biomass, moisture and speckle.
* **1 km covariates** (:func:`covariates_1km`) with the SPUN table's names and
  units, as a climate/soil/land-cover model would see them.

Observations are deterministic functions of a pixel's place, year and date
(counter-based random numbers, :mod:`fungi_ssl.hashing`), so a chunk equals
the same pixels cut from the whole tile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
import xarray as xr
from pyproj import CRS
from scipy.special import ndtri
from tqdm import tqdm

from fungi_ssl.core.hashing import hash_keys, hash_normal, hash_uniform, splitmix64

from . import kernels
from .landscape import (
    BROADLEAF,
    CROPLAND,
    DROUGHT_YEARS,
    GRASSLAND,
    HEATH,
    LANDCOVER_CLASSES,
    MIXED,
    PIXEL_SIZE,
    WATER,
    WOODLAND_CODES,
    GaussianField,
    Landscape,
    _zone_key,
)

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

S2_REVISIT_DAYS = 5
S1_REVISIT_DAYS = 6


@dataclass(frozen=True)
class SensorModel:
    """Parameters of what the satellites and the 1 km products see.

    Attributes
    ----------
    host_phenology_days : float
        Days by which a broadleaf or mixed canopy of no ECM hosts leafs out
        later than an all-host one (per unit of host fraction): the only
        spectral trace of host identity, and a weak one.
    host_nir_gain : float
        Relative NIR brightness of an all-host against a no-host broadleaf
        canopy (per unit of host fraction).
    phenology_weather_sd : float
        SD (days) of the year's green-up anomaly over a 1 degree cell: spring
        phenology follows the year's weather, not only the mean climate.
    temperature_error_sd : float
        SD (degC) of the error of the 1 km mean annual temperature.
    precipitation_error_sdlog : float
        Log-SD of the error of the 1 km annual precipitation.
    soil_ph_error_sd : float
        SD (pH units) of the error of the 1 km topsoil pH.
    soil_soc_error_sdlog : float
        Log-SD of the error of the 1 km topsoil organic carbon.
    sand_error_sd : float
        SD (percentage points) of the error of the 1 km sand content.
    covariate_error_km : float
        Length scale (km) of the spatially correlated part of those errors.
    covariate_error_correlated_share : float
        Share of each covariate's error variance that is spatially correlated
        (the rest is independent between 1 km cells).
    landcover_accuracy : float
        Overall accuracy of the land-cover map the 1 km class fractions come
        from: a stand is given a wrong class (a confusable one) with
        probability ``1 - landcover_accuracy`` (water with a fifth of that).
    spun_columns : bool
        Whether the climate and soil sets carry all five columns each of the
        SPUN table (:data:`EXTRA_COVARIATES`: potential evapotranspiration,
        warmest-month temperature, precipitation seasonality, depth to
        bedrock, sediment thickness) or only mean temperature and
        precipitation and pH, SOC and sand (simulator version 5).
    """

    host_phenology_days: float = 4.0
    host_nir_gain: float = 0.03
    phenology_weather_sd: float = 6.0
    temperature_error_sd: float = 0.8
    precipitation_error_sdlog: float = 0.2
    soil_ph_error_sd: float = 0.55
    soil_soc_error_sdlog: float = 0.45
    sand_error_sd: float = 10.0
    covariate_error_km: float = 30.0
    covariate_error_correlated_share: float = 0.6
    landcover_accuracy: float = 0.77
    spun_columns: bool = True


#: The SPUN table's other climate and soil columns, each with the SD of its map error (in
#: the column's units; PET as a log-SD). Each is a 1 km map with its own errors, so a
#: sample's climate and soil sets carry five independent readings each, as SPUN's do.
EXTRA_COVARIATES: dict[str, float] = {
    "CGIAR_PET": 0.08,
    "CHELSA_BIO_Max_Temperature_of_Warmest_Month": 0.9,
    "CHELSA_BIO_Precipitation_Seasonality": 6.0,
    "SG_Depth_to_bedrock": 80.0,
    "PelletierEtAl_SoilAndSedimentaryDepositThicknesses": 10.0,
}


#: Classes a land-cover classifier confuses each class with, and how often
#: (rows: true class in :data:`LANDCOVER_CLASSES` order; each row sums to 1).
LANDCOVER_CONFUSION = np.array([
    # broad  conif  mixed  grass  heath  crop   urban  water
    [0.00, 0.15, 0.45, 0.15, 0.15, 0.10, 0.00, 0.00],   # broadleaf
    [0.20, 0.00, 0.45, 0.10, 0.25, 0.00, 0.00, 0.00],   # conifer
    [0.45, 0.35, 0.00, 0.10, 0.10, 0.00, 0.00, 0.00],   # mixed
    [0.10, 0.00, 0.10, 0.00, 0.25, 0.45, 0.10, 0.00],   # grassland
    [0.10, 0.20, 0.10, 0.45, 0.00, 0.15, 0.00, 0.00],   # heath
    [0.10, 0.00, 0.00, 0.70, 0.10, 0.00, 0.10, 0.00],   # cropland
    [0.20, 0.00, 0.00, 0.45, 0.00, 0.35, 0.00, 0.00],   # urban
    [0.00, 0.00, 0.00, 0.40, 0.30, 0.00, 0.30, 0.00],   # water
])
#: splitmix64's increment (2**64 / golden ratio), as in :mod:`fungi_ssl.hashing`.
_GOLD = np.uint64(0x9E3779B97F4A7C15)

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
STAND_BRIGHTNESS_SD = 0.18
STAND_TILT_SD = 0.10
_STAND_PHENO_SHIFT_SD = 10.0
STAND_AMPLITUDE_SD = 0.12
_TILT_NIR = np.array([0, 0, 0, 1, 1, 0, 0.5, 1, 0, 0], dtype=np.float64)
_TILT_SWIR = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1], dtype=np.float64)
# Cloud-mask omissions: the band of the cloud field just below the cloud
# threshold is thin cloud, and the cloud field shifted by this offset (m, to
# the east and south) casts shadow; both pass the mask as valid observations
_THIN_CLOUD_MARGIN = 0.3
SHADOW_OFFSET_M = 1500.0
#: Length scale (m) of each date's coherent cloud field.
CLOUD_LENGTH_M = 2500.0


@lru_cache(maxsize=8)
def _cloud_fields(seed: int) -> list[GaussianField]:
    """One coherent cloud field (:data:`CLOUD_LENGTH_M` length scale) per Sentinel-2 date."""
    return [GaussianField(seed, 10_000 + t, CLOUD_LENGTH_M, 24) for t in range(73)]


#: Cosines held at once when the cloud fields of several dates are evaluated together.
_TRIG_AT_ONCE = 1 << 20


@lru_cache(maxsize=8)
def _cloud_field_stack(seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The cloud fields of :func:`_cloud_fields` stacked: ``w (73, K, 2)``, ``phi (73, K)``, amp."""
    fields = _cloud_fields(seed)
    return (np.stack([f.w for f in fields]), np.stack([f.phi for f in fields]), fields[0].amp)


def _pheno(doy, sos, eos, gmin, gmax):
    rise = 1.0 / (1.0 + np.exp(-(doy - sos) / 8.0))
    fall = 1.0 / (1.0 + np.exp(-(doy - eos) / 10.0))
    return gmin + (gmax - gmin) * np.clip(rise - fall, 0.0, 1.0)


def _pixel_keys(epsg: np.ndarray, xs: np.ndarray, ys: np.ndarray, seed: int) -> np.ndarray:
    """One uint64 key per pixel from its zone and global pixel index, (B, H, W)."""
    col = np.rint(xs / PIXEL_SIZE - 0.5).astype(np.int64)
    row = np.rint(-ys / PIXEL_SIZE - 0.5).astype(np.int64)
    zone = _zone_key(epsg)
    return hash_keys(seed, 301, zone[:, None, None], row[:, :, None], col[:, None, :])


def _key_uniform(key: np.ndarray, *more) -> np.ndarray:
    h = key
    for k in more:
        with np.errstate(over="ignore"):
            h = splitmix64(h ^ (np.asarray(k).astype(np.int64).astype(np.uint64) + _GOLD
                          + (h << np.uint64(6))))
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def sentinel_observations(landscape: Landscape, epsg: np.ndarray, xs: np.ndarray,
                          ys: np.ndarray, year: int | np.ndarray,
                          layers: dict[str, np.ndarray] | None = None,
                          model: SensorModel | None = None) -> dict[str, np.ndarray]:
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
    model : SensorModel, optional
        Sensor parameters (default :class:`SensorModel`).

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
    m = model or SensorModel()
    # spring comes earlier where it is warm, and in a warm spring: the year's
    # weather shifts green-up over a 1 degree cell, whatever the mean climate
    weather = m.phenology_weather_sd * hash_normal(
        seed, 421, year_b[:, None, None], np.floor(L["longitude"]).astype(np.int64),
        np.floor(L["latitude"]).astype(np.int64))
    sos_t = _SOS[tree_cls] + 4.0 * dt + weather + broadish * m.host_phenology_days * (0.6 - h)
    eos_t = _EOS[tree_cls] - 3.0 * dt
    stand = L["stand"]
    crop_shift = 25.0 * (hash_uniform(seed, 401, stand) - 0.5)
    # stand-level heterogeneity within a class: species mix, understorey and
    # soil background change brightness, the visible/NIR/SWIR balance, the
    # timing and the depth of the season from one stand (or field) to the next
    het = [hash_normal(seed, 411 + i, stand) for i in range(5)]
    stand_gain = np.exp(STAND_BRIGHTNESS_SD * het[0][..., None]
                        + STAND_TILT_SD * het[1][..., None] * _TILT_NIR
                        + STAND_TILT_SD * het[2][..., None] * _TILT_SWIR)
    stand_shift = _STAND_PHENO_SHIFT_SD * het[3]
    stand_depth = np.clip(1.0 + STAND_AMPLITUDE_SD * het[4], 0.5, 1.3)
    sos_t = sos_t + stand_shift
    eos_t = eos_t - 0.5 * stand_shift
    sos_g = (_SOS[ground_cls] + 4.0 * dt + weather + (ground_cls == CROPLAND) * crop_shift
             + stand_shift)
    eos_g = _EOS[ground_cls] - 3.0 * dt + (ground_cls == CROPLAND) * crop_shift - 0.5 * stand_shift
    nir_gain = 1.0 + broadish * m.host_nir_gain * (h - 0.5)
    drought = (L["europe"] & np.isin(year_b, DROUGHT_YEARS)[:, None, None])
    zone = _zone_key(epsg)
    keys = _pixel_keys(epsg, xs, ys, seed)
    lat_cell = np.floor(L["latitude"] / 2.0).astype(np.int64)
    xo = xs + 1.0e7 * zone[:, None]
    theta = -math.sqrt(1 + _CLOUD_DATE_SD ** 2) * ndtri(_cloud_share(L["precipitation"]))

    # The dates' loops run compiled (:mod:`.kernels`), on pixels flattened to
    # ``N = B * H * W``: the same operations in the same order as the numpy
    # they replace, so every value is bit for bit what it was; exp, ndtri and
    # the cloud fields' cos and sin stay numpy calls, one per date.
    shape = lc.shape
    n_px, hw = lc.size, shape[1] * shape[2]

    def flat(a: np.ndarray, dtype=np.float64) -> np.ndarray:
        return np.ascontiguousarray(np.broadcast_to(a, shape), dtype=dtype).reshape(n_px)

    def per_band(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.broadcast_to(a, (*shape, 10)),
                                    dtype=np.float64).reshape(n_px, 10)

    # every date shares the pixel key with the year folded in (``_key_uniform``'s first step)
    with np.errstate(over="ignore"):
        h_year = flat(splitmix64(keys ^ (year_b[:, None, None].astype(np.uint64) + _GOLD
                                         + (keys << np.uint64(6)))), np.uint64)
    # the regional draws (cloud anomaly, soil moisture) are keyed by year, zone and
    # 2-degree latitude cell: drawn once per distinct key, then spread to the pixels
    regional = np.stack([np.broadcast_to(year_b[:, None, None], shape),
                         np.broadcast_to(zone[:, None, None], shape), lat_cell], -1).reshape(-1, 3)
    regions, region_of = np.unique(regional, axis=0, return_inverse=True)
    region_of = region_of.reshape(n_px)
    sos_t_f, eos_t_f, sos_g_f, eos_g_f = (flat(a) for a in (sos_t, eos_t, sos_g, eos_g))
    c_f = flat(c)
    gmin_t = flat(_GMIN[tree_cls])
    gdiff_t = flat(_GMAX[tree_cls] - _GMIN[tree_cls])   # float32 difference, as _pheno takes it
    gmin_g = flat(_GMIN[ground_cls])
    gdiff_g = flat(_GMAX[ground_cls] - _GMIN[ground_cls])

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
    cloud_colour = np.array([1.0, 1.05, 1.02, 0.95, 0.95, 0.98, 0.96, 0.95, 0.7, 0.55])
    s2_static = (flat(theta), flat(theta - _THIN_CLOUD_MARGIN), flat(drought, np.bool_), c_f,
                 flat(stand_depth), gmin_t, gdiff_t, gmin_g, gdiff_g, per_band(Gt), per_band(Ot),
                 per_band(Gg), per_band(Og), per_band(gain), per_band(stand_gain), tilt_load,
                 haze_add, cloud_colour)
    doy2_f = doy2.astype(np.float64)
    # the year shifts the cloud field far along x, which for a stationary field is a
    # fresh realisation, so one field per date serves every year and zone; cloud
    # shadow is the field cast SHADOW_OFFSET_M to the east and south
    x_year = xo + 1.0e5 * (year_b[:, None] - 2000)
    x_shadow, y_shadow = x_year + SHADOW_OFFSET_M, ys - SHADOW_OFFSET_M
    # every date's regional cloudiness anomaly, (T2, regions)
    anomalies = _CLOUD_DATE_SD * hash_normal(seed, 501, regions[None, :, 0],
                                             np.arange(T2)[:, None], regions[None, :, 1],
                                             regions[None, :, 2])
    # the cloud fields' cosines and sines, for a group of dates at a time
    w_all, phi_all, amp = _cloud_field_stack(seed)
    group = max(1, min(T2, _TRIG_AT_ONCE // (w_all.shape[1] * B * (xs.shape[1] + ys.shape[1]))))
    for t in range(T2):
        if t % group == 0:
            g = slice(t, t + group)
            wx, wy = w_all[g, :, 0][..., None, None], w_all[g, :, 1][..., None, None]
            ph = phi_all[g][..., None, None]
            ax, ay = wx * x_year[None, None] + ph, wy * ys[None, None]
            bx, by = wx * x_shadow[None, None] + ph, wy * y_shadow[None, None]
            trig = [np.cos(ay), np.cos(ax), np.sin(ay), np.sin(ax)]
            trig_shadow = [np.cos(by), np.cos(bx), np.sin(by), np.sin(bx)]
        e = np.exp(kernels.pheno_arguments(doy2_f, hw, t, sos_t_f, eos_t_f, sos_g_f, eos_g_f))
        u = kernels.key_uniforms(h_year, t)
        normals = ndtri(u[:2])
        cf = kernels.fourier_grid_sum(*(a[t % group] for a in trig), amp).reshape(n_px)
        cs = kernels.fourier_grid_sum(*(a[t % group] for a in trig_shadow), amp).reshape(n_px)
        anomaly = anomalies[t][region_of]
        kernels.sentinel2_date(doy2_f, hw, t, e, normals, u, cf, cs, anomaly, *s2_static,
                               s2[t].reshape(10, n_px), s2_valid[t].reshape(n_px))

    doy1 = np.stack([s1_doys(e) for e in epsg])
    T1 = doy1.shape[1]
    s1 = np.empty((T1, 2, *lc.shape), dtype=np.float32)
    s1_valid = np.empty((T1, *lc.shape), dtype=bool)
    biomass = c * (1.0 - np.exp(-L["stand_age"].astype(np.float64) / 40.0)) * is_wood
    ground_db = _S1_GROUND[lc].astype(np.float64)          # (B, H, W, 2)
    open_veg = np.isin(lc, (GRASSLAND, HEATH, CROPLAND))
    s1_static = (c_f, flat(biomass), flat(broadish), flat(lc == CROPLAND), flat(open_veg),
                 gmin_t, gdiff_t, flat(ground_db[..., 0]), flat(ground_db[..., 1]),
                 float(_S1_WOOD[0]), float(_S1_WOOD[1]))
    doy1_f = doy1.astype(np.float64)
    # every date's regional soil moisture, (T1, regions)
    moisture = hash_normal(seed, 601, regions[None, :, 0], np.arange(T1)[:, None],
                           regions[None, :, 1], regions[None, :, 2])
    for t in range(T1):
        e = np.exp(kernels.pheno_arguments(doy1_f, hw, t, sos_t_f, eos_t_f, sos_g_f, eos_g_f))
        u = kernels.key_uniforms(h_year, 1000 + t)
        normals = ndtri(u[:2])
        moist = moisture[t][region_of]
        orbit = 0.5 if t % 2 == 0 else -0.5
        kernels.sentinel1_date(doy1_f, hw, t, e, normals, u, moist, orbit, *s1_static,
                               s1[t].reshape(2, n_px), s1_valid[t].reshape(n_px))
    return {"s2": s2, "s2_valid": s2_valid, "s2_doy": doy2, "s1": s1, "s1_valid": s1_valid,
            "s1_doy": doy1}



def _with_crs(ds: xr.Dataset, epsg: int) -> xr.Dataset:
    """Attach the CRS (rioxarray ``spatial_ref``) and the affine transform, in place.

    ``ds`` is a dataset its caller has just built: rioxarray's default copy
    (``inplace=False`` copies every array deeply) took a sixth of a
    simulated cube's time.
    """
    import rioxarray  # noqa: F401  (registers the .rio accessor)

    ds.rio.write_crs(CRS.from_epsg(int(epsg)), inplace=True)
    return ds.rio.write_transform(ds.rio.transform(recalc=True), inplace=True)


def _extra_covariates(L: dict, lon: np.ndarray, err_of, n: int) -> dict[str, np.ndarray]:
    """The SPUN table's other climate and soil columns of ``n`` cells (:data:`EXTRA_COVARIATES`).

    Each follows the cell's 10 m layers as the real map follows climate and
    terrain (PET rises with temperature; the warmest month lies half an annual
    range above the mean, the range growing with continentality eastwards;
    rain is less seasonal where it is plentiful; soils are shallower on rough
    and high ground), plus its own map error ``err_of(j, sd)``.
    """
    temp = L["temperature"].reshape(n, -1).mean(axis=1)
    precip = L["precipitation"].reshape(n, -1).mean(axis=1)
    elev = L["elevation"].reshape(n, -1)
    rough, elev = elev.std(axis=1), elev.mean(axis=1)
    sds = list(EXTRA_COVARIATES.values())
    half_range = np.where(lon > 60.0, 13.0, np.clip(7.0 + 0.12 * (lon + 10.0), 7.0, 13.0))
    return {
        "CGIAR_PET": np.clip(450.0 + 40.0 * temp, 200.0, None) * np.exp(err_of(0, sds[0])),
        "CHELSA_BIO_Max_Temperature_of_Warmest_Month": 10.0 * (temp + half_range
                                                               + err_of(1, sds[1])),
        "CHELSA_BIO_Precipitation_Seasonality": np.clip(
            35.0 - 0.01 * (precip - 800.0) + err_of(2, sds[2]), 5.0, 100.0),
        "SG_Depth_to_bedrock": np.clip(250.0 - 2.0 * rough - 0.1 * (elev - 350.0)
                                       + err_of(3, sds[3]), 20.0, 600.0),
        "PelletierEtAl_SoilAndSedimentaryDepositThicknesses": np.clip(
            25.0 - 0.03 * (elev - 350.0) + err_of(4, sds[4]), 0.0, 50.0),
    }


@lru_cache(maxsize=8)
def _covariate_error_fields(seed: int, length_km: float) -> list[GaussianField]:
    """One spatially correlated error field per 1 km covariate (lon/lat degrees)."""
    return [GaussianField(seed, 820 + j, length_km / 111.0, 48)
            for j in range(5 + len(EXTRA_COVARIATES))]


def classified_landcover(seed: int, landcover: np.ndarray, stand: np.ndarray,
                         accuracy: float) -> np.ndarray:
    """The land-cover class a map with the given overall accuracy shows.

    A classifier errs by object: a whole stand gets a wrong class with
    probability ``1 - accuracy`` (water, which maps easily, with a fifth of
    that), drawn from :data:`LANDCOVER_CONFUSION`.

    Examples
    --------
    >>> lc = np.zeros(20_000, dtype=np.int8)                 # broadleaf everywhere
    >>> mapped = classified_landcover(0, lc, np.arange(20_000), accuracy=0.77)
    >>> round(float((mapped == lc).mean()), 2), int(mapped.max()) <= 7
    (0.77, True)
    """
    if not 0.0 < accuracy <= 1.0:
        raise ValueError(f"landcover accuracy must lie in (0, 1], got {accuracy}")
    lc = np.asarray(landcover).astype(np.int64)
    p_err = np.where(lc == WATER, (1.0 - accuracy) / 5.0, 1.0 - accuracy)
    wrong = hash_uniform(seed, 811, stand) < p_err
    cum = np.cumsum(LANDCOVER_CONFUSION, axis=1)[lc]           # (..., 8)
    pick = hash_uniform(seed, 812, stand)[..., None]
    other = np.minimum((pick > cum).sum(axis=-1), len(LANDCOVER_CLASSES) - 1)
    return np.where(wrong, other, lc).astype(np.int8)


def covariates_1km(landscape: Landscape, sites: pd.DataFrame, samples: pd.DataFrame,
                   model: SensorModel | None = None) -> pd.DataFrame:
    """1 km covariates of every sample, with the SPUN table's names and units.

    Each sample's 1 km cell is the 1,000 m UTM cell holding its site's
    recorded pixel (``sites`` columns ``epsg``, ``col``, ``row``), as the
    SPUN table samples its maps at the recorded coordinate.

    * Climate and soil are cell means of the 10 m layers plus the error of a
      downscaled or predicted map: a spatially correlated part (a field of
      ``covariate_error_km`` length scale) and a part independent between
      cells, with the SDs of :class:`SensorModel`.
    * Land cover is the share of each class on a 20 x 20 (50 m) sub-grid of
      the cell of the 2017 map *as a classifier maps it*
      (:func:`classified_landcover`, ``landcover_accuracy``).
    * Elevation is the cell mean.
    """
    m = model or SensorModel()
    seed = landscape.seed
    cell_col = np.floor(sites["col"].to_numpy() / 100).astype(np.int64)
    cell_row = np.floor(sites["row"].to_numpy() / 100).astype(np.int64)
    cells = pd.DataFrame({"epsg": sites["epsg"], "cc": cell_col, "cr": cell_row})
    uniq, inverse = np.unique(cells.to_numpy(), axis=0, return_inverse=True)
    n = len(uniq)
    k = np.arange(20)
    fields = _covariate_error_fields(seed, float(m.covariate_error_km))
    rho = float(np.clip(m.covariate_error_correlated_share, 0.0, 1.0))
    sds = (m.temperature_error_sd, m.precipitation_error_sdlog, m.soil_ph_error_sd,
           m.soil_soc_error_sdlog, m.sand_error_sd)
    out = []
    for start in tqdm(range(0, n, 500), desc="1 km covariates", leave=False, disable=n < 1000):
        u = uniq[start:start + 500]
        epsg = u[:, 0]
        xs = u[:, 1:2] * 1000.0 + 25.0 + 50.0 * k[None]
        ys = -(u[:, 2:3] * 1000.0 + 25.0 + 50.0 * k[None])
        L = landscape.layers(epsg, xs, ys, 2017)
        key = (seed, 801, _zone_key(epsg), u[:, 1], u[:, 2])

        def mean(a: np.ndarray, n: int = len(u)) -> np.ndarray:
            return a.reshape(n, -1).mean(axis=1)

        lon, lat = mean(L["longitude"]), mean(L["latitude"])
        err = [sd * (math.sqrt(rho) * f.points(lon, lat)
                     + math.sqrt(1.0 - rho) * hash_normal(*key, j + 1))
               for j, (sd, f) in enumerate(zip(sds, fields))]
        mapped = classified_landcover(seed, L["landcover"], L["stand"], m.landcover_accuracy)
        lc = mapped.reshape(len(u), -1)
        frac = {CONSENSUS_CLASS[name]: 100.0 * (lc == code).mean(axis=1)
                for code, name in enumerate(LANDCOVER_CLASSES)}
        out.append(pd.DataFrame({
            "CHELSA_BIO_Annual_Mean_Temperature": 10.0 * (mean(L["temperature"]) + err[0]),
            "CHELSA_BIO_Annual_Precipitation": mean(L["precipitation"]) * np.exp(err[1]),
            "SG_Soil_pH_H2O_005cm": 10.0 * np.clip(mean(L["soil_ph"]) + err[2], 3.5, 9.0),
            "SG_SOC_Content_005cm": mean(L["soil_soc"]) * np.exp(err[3]),
            "SG_Sand_Content_005cm": np.clip(mean(L["sand"]) + err[4], 1.0, 95.0),
            **frac,
            "EarthEnvTopoMed_Elevation": mean(L["elevation"]),
            **(_extra_covariates(L, lon, err_of=lambda j, sd, lon=lon, lat=lat, key=key: sd * (
                math.sqrt(rho) * fields[5 + j].points(lon, lat)
                + math.sqrt(1.0 - rho) * hash_normal(*key, 6 + j)), n=len(u))
               if m.spun_columns else {}),
        }))
    per_cell = pd.concat(out, ignore_index=True)
    per_site = per_cell.iloc[inverse.ravel()].set_index(sites["site_id"].to_numpy())
    cov = per_site.loc[samples["site_id"].to_numpy()].set_index(
        pd.Index(samples["sample_id"].to_numpy(), name="sample_id"))
    return cov.astype(np.float32)
