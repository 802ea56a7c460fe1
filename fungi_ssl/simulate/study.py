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

from dataclasses import asdict, fields, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
import scipy.sparse as sp
import xarray as xr
from pyproj import CRS
from tqdm import tqdm

from .communities import RichnessModel, assign_otus, true_log_richness
from .landscape import (
    LANDCOVER_CLASSES,
    PIXEL_SIZE,
    WATER,
    WOODLAND_CODES,
    Landscape,
    Window,
)
from .sampling import (
    core_layers,
    draw_campaigns,
    observe_cores,
    place_plots,
    sample_tables,
    sites_of,
)
from .sensors import (
    _with_crs,
    covariates_1km,
    s1_doys,
    s1_orbits,
    s2_doys,
    sentinel_observations,
)
from .study_config import StudyConfig

if TYPE_CHECKING:
    import geopandas as gpd

__all__ = ["PARAMETER_LAYERS", "PARAMETER_RATIONALE", "UK_PARKS", "SimulatedStudy", "StudyConfig",
           "parameter_table", "richness_variance", "variance_below_1km"]


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
            unknown = set(overrides) - {f.name for f in fields(StudyConfig)}
            if unknown:
                raise ValueError(f"SimulatedStudy: unknown StudyConfig fields {sorted(unknown)}")
            base = replace(base, **overrides)
        if base.n_samples < 1 or base.n_campaigns < 1:
            raise ValueError("StudyConfig: n_samples and n_campaigns must be positive, got "
                             f"{base.n_samples} and {base.n_campaigns}")
        self.config = base
        self.landscape = Landscape(base.seed, base.richness, base.landscape)

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
                                    window.y[None], year, model=self.config.sensors)
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
        return self._cube_dataset(window, year, arrays)

    def cube_in_memory(self, window: Window, year: int) -> xr.Dataset:
        """The cube of a window-year simulated now, in memory, as one block.

        The values of :meth:`cube` with ``chunks`` at least the window's
        side, bit for bit (the same one block of the same window), without
        dask: for the small windows chapter 08 simulates by the thousand
        (a 32-pixel replicate cube took 40 ms through dask's graph and
        xarray's lazy arrays, 25 ms this way). Memory is the whole window's.

        Examples
        --------
        >>> study = SimulatedStudy()
        >>> w = Window.around(-3.65, 57.08, 16)
        >>> now = study.cube_in_memory(w, 2019)
        >>> lazy = study.cube(w, 2019, chunks=16).load()
        >>> bool((now["s2"].values == lazy["s2"].values).all()), now["s2"].chunks is None
        (True, True)
        """
        return self._cube_dataset(window, year, self._observations_block(window, year))

    def _cube_dataset(self, window: Window, year: int, arrays: dict[str, Any]) -> xr.Dataset:
        """The CONTRIBUTING.md cube of a window-year from its four arrays (numpy or dask)."""
        from fungi_ssl.embeddings import (
            encoder,  # the canonical band order; imports torch, so only here
        )

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
        """Sampling campaigns: centre, spread, year, habitat focus, depth, bias, decimals."""
        return draw_campaigns(self.config, self._rng(11))

    @cached_property
    def plots(self) -> pd.DataFrame:
        """Plots: true locations, cores and recorded coordinates (truth; see :func:`place_plots`)."""
        return place_plots(self.landscape, self.config, self.campaigns, self._rng(12))

    @cached_property
    def sites(self) -> pd.DataFrame:
        """Sites as the data record them: one per recorded coordinate and year.

        ``epsg``, ``col``, ``row`` are the pixel of the *recorded*
        coordinate, where the satellite patch and the 1 km covariates of the
        site's samples are read; the plots' true pixels are in :attr:`plots`.
        """
        return sites_of(self.plots)

    @cached_property
    def _cores(self) -> dict:
        """Core positions and the latent layers there (independent of the richness model)."""
        return core_layers(self.landscape, self.config, self.plots, self._rng(13))

    def with_richness(self, richness: RichnessModel) -> SimulatedStudy:
        """The same study under another richness model, reusing everything that does not depend on it.

        Campaigns, plots, sites, core positions, sequencing depths, 1 km
        covariates and every satellite observation stay the same; only the
        true richness, and what sequencing shows of it, change. The result
        equals ``SimulatedStudy(replace(config, richness=richness))`` bit for
        bit (a test checks this), at the cost of the observation draw only.
        """
        other = SimulatedStudy(replace(self.config, richness=richness))
        for name in ("campaigns", "plots", "sites", "_cores", "covariates"):
            if name in self.__dict__:
                other.__dict__[name] = self.__dict__[name]
        return other

    def core_log_richness(self) -> np.ndarray:
        """True log richness (before micro-habitat noise) at every core."""
        return true_log_richness(model=self.config.richness, **self._cores["inputs"])

    @cached_property
    def _draw(self) -> dict:
        """Observations of the cores and the sample and truth tables."""
        cores = self._cores
        obs = observe_cores(self.core_log_richness(), cores, self.plots, self.campaigns,
                            self.config, self.config.seed)
        plot_log_s = true_log_richness(model=self.config.richness, **cores["plot_inputs"])
        samples, truth = sample_tables(self.plots, cores, obs, plot_log_s)
        return {"samples": samples, "truth": truth, "counts": obs["counts"],
                "n_species": obs["n_species"], "total_reads": obs["total_reads"]}

    @property
    def samples(self) -> pd.DataFrame:
        """The field sample table, in the real GlobalFungi schema (a copy).

        ``longitude``/``latitude`` are the *recorded* coordinates (rounded to
        the campaign's decimals). ``rarefied`` is NaN where sequencing depth
        fell short of ``rarefaction_depth``, as the real table's NA rows;
        analyses drop them.
        """
        return self._draw["samples"].copy()

    @property
    def truth(self) -> pd.DataFrame:
        """What no model may see: true richness, location and latent layers at each core."""
        return self._draw["truth"].copy()

    @cached_property
    def otu_table(self) -> sp.csr_matrix:
        """ECM OTU read counts, samples x OTUs (rows in ``samples`` order)."""
        c = self.config
        return assign_otus(self._draw["counts"], self._draw["n_species"], c.otu_pool,
                           self._rng(14), self._rng(20))

    @cached_property
    def covariates(self) -> pd.DataFrame:
        """1 km climate, soil and land-cover covariates, indexed by ``sample_id``.

        Column names and units follow the real SPUN covariate table, so the
        same predictor sets read both; read at each site's recorded coordinate.
        """
        return covariates_1km(self.landscape, self.sites, self._draw["samples"],
                              self.config.sensors)

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
            obs = sentinel_observations(self.landscape, epsg[sl], xs, ys, year[sl], L,
                                        model=self.config.sensors)
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



def _random_cell_layers(study: SimulatedStudy, n_cells: int, seed: int,
                        step_px: int) -> tuple[pd.DataFrame, dict]:
    """The 2017 layers on every ``step_px``-th pixel row and column of the 1 km cells of random sites."""
    rng = np.random.default_rng([study.config.seed, 31, seed])
    s = study.sites.iloc[rng.choice(len(study.sites), size=min(n_cells, len(study.sites)),
                                    replace=False)]
    cc = np.floor(s["col"].to_numpy() / 100).astype(np.int64)
    cr = np.floor(s["row"].to_numpy() / 100).astype(np.int64)
    k = np.arange(0, 100, step_px)
    xs = (cc[:, None] * 100 + k[None] + 0.5) * PIXEL_SIZE
    ys = -(cr[:, None] * 100 + k[None] + 0.5) * PIXEL_SIZE
    return s, study.landscape.layers(s["epsg"].to_numpy(), xs, ys, 2017)


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
    s, L = _random_cell_layers(study, n_cells, seed, step_px)
    v = L["log_richness"].reshape(len(s), -1)
    v = np.where(np.isfinite(v), v, np.nan)
    within = float(np.nanmean(np.nanvar(v, axis=1)))
    total = float(np.nanvar(v))
    return {"within": within, "total": total, "share_below_1km": within / total}


def richness_variance(study: SimulatedStudy, n_cells: int = 300, seed: int = 0,
                      step_px: int = 2) -> dict:
    """How the variance of true log richness splits by scale and by visibility.

    Evaluated like :func:`variance_below_1km` (1 km cells of random sites,
    every ``step_px`` pixels, 2017, water excluded). The log richness is the
    sum of three groups of :func:`~fungi_ssl.simulate.communities.richness_terms`:
    ``coarse`` (:data:`~fungi_ssl.simulate.communities.COARSE_TERMS`: climate
    and nitrogen deposition), ``invisible``
    (:data:`~fungi_ssl.simulate.communities.INVISIBLE_TERMS`: what neither
    the satellites nor the 1 km covariates observe) and ``visible`` (the
    rest: hosts, stand age and continuity, soil pH, change).

    Returns
    -------
    dict
        ``share_below_1km`` and ``invisible_share`` (variance of the
        invisible terms over the total); ``groups`` (the three names);
        ``cov_total`` and ``cov_within`` (3 x 3 covariance matrices of the
        groups over all pixels and, averaged, within cells), from which the
        shares under rescaled groups follow (chapter 11); ``mean`` (the
        groups' means); ``n_cells``.
    """
    from .communities import COARSE_TERMS, INVISIBLE_TERMS, richness_terms

    s, L = _random_cell_layers(study, n_cells, seed, step_px)
    terms = richness_terms(model=study.config.richness, **L["richness_inputs"])
    land = (L["landcover"] != WATER).reshape(len(s), -1)
    groups = {"visible": 0.0, "coarse": 0.0, "invisible": 0.0}
    for name, value in terms.items():
        g = "coarse" if name in COARSE_TERMS else "invisible" if name in INVISIBLE_TERMS \
            else "visible"
        groups[g] = groups[g] + value
    G = np.stack([np.broadcast_to(groups[g], L["landcover"].shape).reshape(len(s), -1)
                  for g in groups])                                    # (3, cells, px)
    keep = land.any(axis=1)
    G, land = G[:, keep], land[keep]
    w = land / land.sum(axis=1, keepdims=True)                          # weights per cell
    cell_mean = (G * w).sum(axis=2, keepdims=True)
    dev_w = (G - cell_mean) * np.sqrt(w)
    cov_within = np.einsum("icp,jcp->ij", dev_w, dev_w) / G.shape[1]
    flat = G[:, land]
    cov_total = np.cov(flat, bias=True)
    total = cov_total.sum()
    return {"share_below_1km": float(cov_within.sum() / total),
            "invisible_share": float(cov_total[2, 2] / total),
            "groups": list(groups), "cov_total": cov_total, "cov_within": cov_within,
            "mean": flat.mean(axis=1), "n_cells": int(keep.sum())}


#: Why each parameter has its value, with its source: shown beside the values in chapter 00.
PARAMETER_RATIONALE: dict[str, str] = {
    # landscape
    "stand_area_median_ha": "forest stands and fields of Europe: typically 1-3 ha (e.g. median "
                            "field sizes of a few ha, Lesiv et al. 2019 Glob Change Biol)",
    "stand_area_sdlog": "stands from a fraction of a hectare to tens of hectares (95% between "
                        "~0.2 and ~13 ha)",
    "mosaic_length_m": "issue 15: wooded and open tracts alternate over kilometres, so the real "
                       "semivariogram climbs between 1 and 10 km (450 m put the contrast below 1 km)",
    "patch_length_m": "smaller woods and clearings inside the mosaic",
    "forest_propensity_weight": "regions differ in how wooded they are",
    "geology_ph_sd": "issue 15 (v6): parent material (bedrock, drift, alluvium) changes over "
                     "kilometres, and topsoil pH with it; raises the semivariance at 3-10 km, "
                     "where the real curve has climbed and v5's had not",
    "geology_length_m": "soil maps change unit every kilometre or two in most European "
                        "landscapes",
    # sensors
    "host_phenology_days": "AM (ash, maple) and ECM (oak, beech, birch) broadleaves overlap in "
                           "leaf-out; tree species maps from Sentinel-2 confuse broadleaves "
                           "(e.g. Grabska et al. 2019 Remote Sens 11:1197)",
    "host_nir_gain": "only a weak spectral difference between AM and ECM broadleaf canopies",
    "phenology_weather_sd": "year-to-year SD of spring leaf-out in Europe is about a week "
                            "(Menzel et al. 2006 Glob Change Biol 12:1969)",
    "temperature_error_sd": "downscaled climatologies (CHELSA) differ from station normals by "
                            "about 1 degC in mean temperature (Karger et al. 2017 Sci Data 4:170122)",
    "precipitation_error_sdlog": "and by about 20% in annual precipitation (Karger et al. 2017)",
    "soil_ph_error_sd": "SoilGrids 2.0 topsoil pH: cross-validated error of about half a pH unit "
                        "(Poggio et al. 2021 SOIL 7:217)",
    "soil_soc_error_sdlog": "SoilGrids 2.0 explains well under half of topsoil SOC variance "
                            "(Poggio et al. 2021)",
    "sand_error_sd": "SoilGrids 2.0 sand: errors of about 10 percentage points (Poggio et al. 2021)",
    "covariate_error_km": "errors of interpolated maps are correlated over tens of km (station "
                          "and profile density, terrain)",
    "covariate_error_correlated_share": "most map error is regional bias rather than cell noise",
    "spun_columns": "issue 15 (v6): the SPUN table's climate and soil sets have five columns each "
                    "(PET, warmest-month temperature, precipitation seasonality; depth to bedrock, "
                    "sediment thickness besides pH, SOC, sand), each a map with its own errors; "
                    "with two and three columns a simulated 1 km cell was told apart less well "
                    "than a real one under random folds",
    "landcover_accuracy": "ESA WorldCover overall accuracy: 74.4% (2020) and 76.7% (2021) "
                          "(Zanaga et al. 2021, 2022)",
    # communities
    "s_max": "ECM OTUs in an old all-host stand at optimum; sets the real table's upper "
             "quartile (~110 after rarefaction)",
    "floor": "ECM fungi persist at low richness without hosts (spores, hedgerow roots); "
             "with campaign bias gives the real table's lower quartile (~10)",
    "host_exponent": "diminishing returns of host basal area",
    "age_floor": "young stands hold about a third of the mature ECM community",
    "age_scale": "ECM communities mature over decades",
    "continuity": "ancient woodland holds ~40% more ECM species (continuity of hosts and soil)",
    "ph_optimum": "ECM diversity peaks on moderately acid soils",
    "ph_width": "broad unimodal pH response",
    "ph_curvature": "pH is among the strongest soil predictors",
    "temp_optimum": "temperate-boreal optimum of ECM richness",
    "temp_width": "broad unimodal temperature response",
    "temp_curvature": "climate matters, but mostly through hosts; strong enough that 1 km "
                      "climate keeps the small spatial-block skill it has on the SPUN table",
    "precip_slope": "wetter sites hold slightly more ECM species",
    "nitrogen_slope": "N deposition depresses ECM diversity (~1.5% per kg N/ha/yr)",
    "regional_sd": "regional anomaly that no covariate explains (history, dispersal)",
    "fine_sd": "fine-scale (~40 m) variation no layer explains; issue 15: kept small, as real "
               "samples 100-300 m apart differ little more than cores of one plot",
    "hidden_host_sd": "which hosts a broadleaf stand holds (ECM oak/beech/birch or AM ash/maple) "
                      "changes its ECM richness; satellites barely see it (issue 15: weaker "
                      "between-stand contrasts, 0.6 before)",
    "fine_nitrogen_sd": "fine-scale soil nitrogen depresses ECM richness (Lilleskov et al. 2019 "
                        "Environ Pollut 246:148) and no map resolves it",
    "decline_rate": "true trend: -4%/yr in declining ancient stands",
    "drought_effect": "2018 and 2022 drought years: -5% in Europe",
    # sampling
    "n_samples": "cores drawn; ~10% fall short of the rarefaction depth, as GlobalFungi's 9% NA rows",
    "n_campaigns": "issue 15 (version 7): the real European table holds about 830 studies "
                   "(inferred from its ids and gaps), most of a few samples; 960 campaigns put "
                   "about 720 in Europe, and a few giant campaigns no longer decide a draw's "
                   "semivariogram (320 before)",
    "mean_cores_per_site": "real European table: 8,321 samples at 3,650 coordinates = 2.3",
    "singleton_share": "real table: 2,035 of 3,650 sites have one sample",
    "max_cores_per_site": "real table: up to 215 samples share one coordinate",
    "site_size_sdlog": "issue 15: 15% of real samples sit at coordinates holding 20 or more",
    "plot_cluster_share": "issue 15: real campaigns place many plots within 1 km of each other "
                          "(10,281 real pairs 1-100 m apart against 71 in the old world)",
    "plot_cluster_radius_m": "plots of one cluster lie 10 m to 1 km apart (transects, gradients)",
    "plot_cluster_other_class_acceptance": "issue 15 (version 7): a group of plots lies in one "
                                           "forest or one grassland; real samples 100-300 m "
                                           "apart differ little more than cores of one plot "
                                           "(1 before: any class the campaign takes)",
    "campaign_bias_regional_share": "issue 15: labs, primers and pipelines are shared by a "
                                    "country's studies, so far-apart samples still share part of "
                                    "their bias (real gamma 0.82 at 100-300 km, not 1)",
    "campaign_focus_shares": "most ECM studies sample forest; some sample open land",
    "forest_campaign_open_acceptance": "forest studies take some plots in clearings and at edges",
    "open_campaign_woodland_acceptance": "open-land studies take some plots under trees and at "
                                         "woodland edges",
    "campaign_other_class_acceptance": "1: a forest study takes any woodland, an open-land study "
                                       "any open land (benchmarks/campaign_structure.py measures "
                                       "studies of one class)",
    "campaign_focus_regional_share": "issue 15 (version 7): research traditions are "
                                     "national (one country's forest-soil surveys, another's "
                                     "grassland monitoring), so nearby studies sample the same "
                                     "kind of habitat; this brings the 30-100 km band of the "
                                     "mean over draws from 0.91 to 0.72 (real 0.62; 0 before)",
    "campaign_focus_length_deg": "about a country's width (1 before, when the share was 0)",
    "campaign_overlap_share": "0: studies are placed on their own (benchmarks/"
                              "campaign_structure.py measures studies that return to others' "
                              "regions)",
    "campaign_radius_km": "typical campaign regions of tens of km (version 7: 8, with three "
                          "times as many, smaller campaigns; 12 before)",
    "campaign_radius_sdlog": "from one forest to a national survey",
    "core_spread_px": "cores lie within ~20 m of the plot",
    "core_sd": "micro-habitat variation between cores of one plot; with coarse coordinates "
               "gives the real table's ~15% within-site variance",
    "campaign_bias_sd": "primer, extraction and pipeline differences between studies change "
                        "ECM richness estimates by factors of about two (Tedersoo et al. 2015 "
                        "MycoKeys 10:1); gives the real table's long lower tail",
    "median_reads": "typical Illumina ITS libraries: 10^4 fungal reads",
    "reads_sdlog": "sequencing depth varies ~10-fold between samples; half of its log-variance "
                   "between campaigns",
    "rarefaction_depth": "every sample is rarefied to the same fungal read depth",
    "otu_pool": "ECM OTUs in a continental pool (GlobalFungi: thousands)",
    "sad_sdlog": "lognormal species abundances, as typical for soil fungi",
    "years": "Sentinel-1/2 years of the study",
    "coordinate_decimals": "real European table: 3.4% of samples with at most 1 decimal, "
                           "18.3% with 2, 3.5% with 3, 9.8% with 4, 23.3% with 5, 41.7% with more",
    "ecm_read_share": "ECM fungi make a few tens of percent of soil fungal reads; the same mean "
                      "in every habitat, so host cover is not counted twice (issue 8)",
}

#: The generative layer each parameter group belongs to, in the order chapter 00 reads them.
PARAMETER_LAYERS = ("landscape", "sensors", "communities", "sampling")


def parameter_table(study_config: StudyConfig) -> pd.DataFrame:
    """Every parameter of a study with its layer, value and the reason for it.

    Rows come in the order of the generative model (:data:`PARAMETER_LAYERS`):
    the landscape's, the sensors', the richness model's, then the sampling's.

    Examples
    --------
    >>> t = parameter_table(StudyConfig())
    >>> t.loc["s_max", "value"], t.loc["s_max", "layer"]
    (380.0, 'communities')
    >>> list(dict.fromkeys(t["layer"]))
    ['landscape', 'sensors', 'communities', 'sampling']
    """
    rows = []
    for layer, record in (("landscape", study_config.landscape),
                          ("sensors", study_config.sensors),
                          ("communities", study_config.richness)):
        rows += [(k, layer, v) for k, v in asdict(record).items()]
    rows += [(k, "sampling", v) for k, v in asdict(study_config).items()
             if k not in ("landscape", "sensors", "richness", "seed")]
    table = pd.DataFrame(rows, columns=["parameter", "layer", "value"]).set_index("parameter")
    table["value"] = table["value"].astype(object)
    table["why"] = [PARAMETER_RATIONALE.get(k, "") for k in table.index]
    return table
