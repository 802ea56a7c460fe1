"""Layer 4 of the simulated world: how the field study samples it.

* **Campaigns** (studies): a region, a year, a habitat focus, a sequencing
  depth and a primer/extraction bias each (:func:`draw_campaigns`).
* **Sites** inside a campaign's region, on land, accepted by the campaign's
  habitat focus; one plot coordinate each (:func:`place_sites`), with as many
  cores as :func:`site_sizes` gives them.
* **Cores** a few pixels around the plot coordinate, each with its own
  micro-habitat richness, an OTU table drawn at that richness within a fungal
  community of its sequencing depth, and ``rarefied`` from
  :func:`fungi_ssl.richness.rarefied_richness`, exactly as for real reads
  (:func:`draw_samples`).

Every function takes its random generator from the caller, so the same
study configuration gives the same samples, bit for bit.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm.auto import tqdm

from ..coordinates import crs_to_lonlat, lonlat_to_crs, utm_epsg
from .landscape import (
    LANDCOVER_CLASSES,
    PIXEL_SIZE,
    URBAN,
    WATER,
    WOODLAND_CODES,
    Landscape,
    on_land,
)

if TYPE_CHECKING:
    from .study import StudyConfig

__all__ = ["CONTINENTS", "CONTINENT_SHARE", "draw_campaigns", "draw_samples", "place_sites",
           "point_layers", "site_sizes"]

#: Two "continents" as lon/lat boxes; campaigns fall on land inside them.
CONTINENTS: dict[str, tuple[float, float, float, float]] = {
    "Europe": (-10.0, 36.0, 30.0, 66.0),   # lon_min, lat_min, lon_max, lat_max
    "Asia": (100.0, 24.0, 145.0, 50.0),
}
CONTINENT_SHARE = {"Europe": 0.75, "Asia": 0.25}


def draw_campaigns(config: StudyConfig, rng: np.random.Generator) -> pd.DataFrame:
    """Sampling campaigns: centre, spread, year, habitat focus, depth and bias."""
    c = config
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


def site_sizes(config: StudyConfig, rng: np.random.Generator) -> np.ndarray:
    """Cores per site until ``n_samples`` cores: singletons plus a lognormal tail."""
    c = config
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


def point_layers(landscape: Landscape, lon, lat, year, keys) -> dict[str, np.ndarray]:
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
    L = landscape.layers(epsg, xs, ys, np.asarray(year))
    return {k: L[k][:, 0, 0] for k in keys}


def place_sites(landscape: Landscape, config: StudyConfig, campaigns: pd.DataFrame,
                rng: np.random.Generator) -> pd.DataFrame:
    """Sites: one plot coordinate each (the pixel centre), campaign and year."""
    camp = campaigns
    sizes = site_sizes(config, rng)
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
        lc = point_layers(landscape, cand_lon, cand_lat, c["year"].to_numpy(),
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


def draw_samples(landscape: Landscape, config: StudyConfig, sites: pd.DataFrame,
                 campaigns: pd.DataFrame, rng: np.random.Generator,
                 pool_rng: np.random.Generator) -> dict:
    """Cores, their truth, OTU tables and rarefied richness (drawn together).

    Returns
    -------
    dict
        ``samples`` (GlobalFungi schema), ``truth`` (what no model may see),
        ``otu`` (samples x OTUs read counts, CSR) and ``total_reads``.
    """
    from ..richness import rarefied_richness

    c = config
    camp = campaigns.set_index("campaign")
    site_idx = np.repeat(np.arange(len(sites)), sites["n_cores"].to_numpy())
    n = site_idx.size
    s = sites.iloc[site_idx]
    dcol = rng.integers(-c.core_spread_px, c.core_spread_px + 1, n)
    drow = rng.integers(-c.core_spread_px, c.core_spread_px + 1, n)
    epsg = s["epsg"].to_numpy()
    xs = ((s["col"].to_numpy() + dcol + 0.5) * PIXEL_SIZE)[:, None]
    ys = (-(s["row"].to_numpy() + drow + 0.5) * PIXEL_SIZE)[:, None]
    year = s["year"].to_numpy()
    L = {k: v[:, 0, 0] for k, v in landscape.layers(epsg, xs, ys, year).items()}
    site_x = ((sites["col"].to_numpy() + 0.5) * PIXEL_SIZE)[:, None]
    site_y = (-(sites["row"].to_numpy() + 0.5) * PIXEL_SIZE)[:, None]
    site_log_s = landscape.layers(sites["epsg"].to_numpy(), site_x, site_y,
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
    pool_logw = pool_rng.normal(0.0, 1.0, c.otu_pool)
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
