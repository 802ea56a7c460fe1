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

from fungi_ssl.data.coordinates import crs_to_lonlat, lonlat_to_crs, utm_epsg

from .communities import draw_community_counts
from .landscape import (
    LANDCOVER_CLASSES,
    OPEN_CODES,
    PIXEL_SIZE,
    URBAN,
    WATER,
    WOODLAND_CODES,
    GaussianField,
    Landscape,
    on_land,
)

if TYPE_CHECKING:
    from .study_config import StudyConfig

__all__ = ["CONTINENTS", "CONTINENT_SHARE", "ECM_SHARE_CONCENTRATION", "campaign_decimals",
           "core_layers", "draw_campaigns", "observe_cores", "place_plots", "plot_clusters",
           "point_layers",
           "sample_tables", "sequencing_depth", "site_sizes", "sites_of"]

#: Two "continents" as lon/lat boxes; campaigns fall on land inside them.
CONTINENTS: dict[str, tuple[float, float, float, float]] = {
    "Europe": (-10.0, 36.0, 30.0, 66.0),   # lon_min, lat_min, lon_max, lat_max
    "Asia": (100.0, 24.0, 145.0, 50.0),
}
CONTINENT_SHARE = {"Europe": 0.75, "Asia": 0.25}
#: Largest campaign radius (km): national surveys span a few hundred km.
MAX_CAMPAIGN_RADIUS_KM = 300.0
#: Length scale (degrees) over which campaigns share part of their detection bias.
CAMPAIGN_BIAS_LENGTH_DEG = 4.0


def draw_campaigns(config: StudyConfig, rng: np.random.Generator) -> pd.DataFrame:
    """Sampling campaigns: centre, spread, year, habitat focus, depth, bias and
    the decimals their coordinates are recorded with (:func:`campaign_decimals`).

    ``habitat`` is the land-cover class a forest or open-land campaign is about
    (-1 for mixed ones; it matters only with ``campaign_other_class_acceptance``
    below 1) and ``host_campaign`` the earlier campaign whose region it was set
    in (-1 for all with ``campaign_overlap_share`` 0; :func:`_overlapping_centres`).
    The focus is shared regionally with ``campaign_focus_regional_share`` above 0
    (:func:`_regional_focus`).
    """
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
    focus = rng.choice(["forest", "mixed", "open"], size=n, p=list(c.campaign_focus_shares))
    own_bias = rng.standard_normal(n)
    radius = np.clip(rng.lognormal(np.log(c.campaign_radius_km), c.campaign_radius_sdlog, n),
                     0.3, MAX_CAMPAIGN_RADIUS_KM)
    year = rng.choice(np.asarray(c.years), size=n)
    weight = rng.lognormal(0.0, 1.0, n)
    median_reads = c.median_reads * rng.lognormal(0.0, c.reads_sdlog / math.sqrt(2), n)
    # the study-structure levers (neutral in simulator version 6; version 7 shares the
    # habitat focus regionally) draw from a stream of their own, so that switching one
    # on or off leaves every draw above alone
    extra = np.random.default_rng([c.seed, 813])
    lon, lat, host = _overlapping_centres(lon, lat, radius, continent,
                                          c.campaign_overlap_share, extra)
    focus = _regional_focus(lon, lat, focus, c, extra)
    # the one land-cover class a forest or open-land study is about (a beech study, a
    # heath study); mixed studies have none (-1)
    habitat = np.where(focus == "forest", extra.choice(np.asarray(WOODLAND_CODES), size=n),
                       np.where(focus == "open", extra.choice(np.asarray(OPEN_CODES), size=n),
                                -1))
    # a campaign's detection bias: partly shared by the campaigns of a region (one
    # country's labs and primers; at its final centre), partly its own
    rho = float(np.clip(c.campaign_bias_regional_share, 0.0, 1.0))
    regional = GaussianField(c.seed, 811, CAMPAIGN_BIAS_LENGTH_DEG).points(lon, lat)
    bias_z = math.sqrt(rho) * regional + math.sqrt(1.0 - rho) * own_bias
    return pd.DataFrame({
        "campaign": np.arange(n), "continent": continent, "longitude": lon, "latitude": lat,
        "radius_km": radius, "year": year,
        "focus": focus, "habitat": habitat, "host_campaign": host,
        "weight": weight, "median_reads": median_reads,
        "bias": np.exp(c.campaign_bias_sd * bias_z),
    }).pipe(lambda t: t.assign(decimals=campaign_decimals(
        t["weight"].to_numpy(), c.coordinate_decimals, rng)))


def _regional_focus(lon: np.ndarray, lat: np.ndarray, focus: np.ndarray, config: StudyConfig,
                    rng: np.random.Generator) -> np.ndarray:
    """Each campaign's habitat focus, partly shared by the campaigns of a region.

    A latent normal score mixes a smooth field over
    ``campaign_focus_length_deg`` (weight ``campaign_focus_regional_share``
    of its variance) with the campaign's own draw; its quantiles give
    ``forest``, ``mixed`` and ``open`` in the shares of
    ``campaign_focus_shares``. Research traditions are regional (a country's
    forest-soil surveys, another's grassland monitoring), so campaigns tens to
    a few hundred kilometres apart study the same kind of habitat more often than
    distant ones. With a share of 0 each campaign keeps ``focus``, its independent draw.

    Examples
    --------
    >>> from fungi_ssl.simulate.study_config import StudyConfig
    >>> lon, lat = np.linspace(10.0, 10.1, 400), np.full(400, 50.0)
    >>> f = _regional_focus(lon, lat, np.full(400, "mixed"),
    ...                     StudyConfig(campaign_focus_regional_share=1.0),
    ...                     np.random.default_rng(0))
    >>> len(set(f.tolist()))  # campaigns 7 km apart share one regional score
    1
    """
    from scipy.stats import norm

    c = config
    rho = float(np.clip(c.campaign_focus_regional_share, 0.0, 1.0))
    own = rng.standard_normal(lon.size)
    if rho == 0.0:
        return focus
    field = GaussianField(c.seed, 812, c.campaign_focus_length_deg).points(lon, lat)
    z = math.sqrt(rho) * field + math.sqrt(1.0 - rho) * own
    cuts = norm.ppf(np.clip(np.cumsum(c.campaign_focus_shares)[:-1], 1e-12, 1 - 1e-12))
    return np.asarray(["forest", "mixed", "open"])[np.searchsorted(cuts, z)]


def _overlapping_centres(lon: np.ndarray, lat: np.ndarray, radius_km: np.ndarray,
                         continent: np.ndarray, share: float, rng: np.random.Generator,
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Campaign centres where studies return to places studied before.

    Each campaign in turn, with probability ``share``, is set in the region of
    an earlier campaign of its continent (its *host*, drawn uniformly): its
    centre lies a uniform fraction of the host's radius from the host's centre
    (the host's own centre where that point is not on land). Real field studies
    return to research forests, national parks and long-term plots, so samples
    of different studies lie a few kilometres apart far more often than
    independent centres would place them. The random numbers are drawn whatever
    ``share`` is, so a study with another share keeps every other draw.

    Returns
    -------
    lon, lat : numpy.ndarray
        The centres.
    host : numpy.ndarray
        Each campaign's host campaign, -1 for those placed on their own.

    Examples
    --------
    >>> lon, lat, host = _overlapping_centres(np.array([10.0, 20.0]), np.array([50.0, 50.0]),
    ...     np.array([5.0, 5.0]), np.array(["Europe", "Europe"]), 1.0, np.random.default_rng(0))
    >>> host.tolist(), bool(abs(lon[1] - 10.0) < 0.1)
    ([-1, 0], True)
    """
    n = lon.size
    follow = rng.random(n) < share
    pick, frac, ang = rng.random(n), rng.random(n), rng.uniform(0.0, 2.0 * np.pi, n)
    lon, lat = lon.copy(), lat.copy()
    host = np.full(n, -1, dtype=np.int64)
    for i in np.flatnonzero(follow):
        earlier = np.flatnonzero(continent[:i] == continent[i])
        if not earlier.size:
            continue
        j = int(earlier[int(pick[i] * earlier.size)])
        dist = frac[i] * radius_km[j] * 1000.0
        cand_lat = lat[j] + dist * np.sin(ang[i]) / 111_320.0
        cand_lon = lon[j] + dist * np.cos(ang[i]) / (111_320.0 * np.cos(np.radians(cand_lat)))
        if not on_land(np.array([cand_lon]), np.array([cand_lat]))[0]:
            cand_lon, cand_lat = lon[j], lat[j]
        lon[i], lat[i], host[i] = cand_lon, cand_lat, j
    return lon, lat, host


def site_sizes(config: StudyConfig, rng: np.random.Generator) -> np.ndarray:
    """Cores per site until ``n_samples`` cores: singletons plus a lognormal tail."""
    c = config
    non_single_mean = (c.mean_cores_per_site - c.singleton_share) / (1 - c.singleton_share)
    sigma = c.site_size_sdlog
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


def campaign_decimals(weights: np.ndarray, shares: tuple[float, ...],
                      rng: np.random.Generator) -> np.ndarray:
    """Decimals each campaign records its coordinates with.

    A study reports all its plots at one precision. Campaigns are put in a
    random order and the precision classes laid along their cumulative share
    of the expected samples (systematic sampling), so the share of *samples*
    at each precision matches ``shares`` to within one campaign's weight,
    whatever the campaign sizes.

    Parameters
    ----------
    weights : numpy.ndarray
        Each campaign's expected share of the samples (any positive scale).
    shares : tuple of float
        Share of samples recorded with 1, 2, ... decimals (sums to 1).

    Examples
    --------
    >>> d = campaign_decimals(np.ones(1000), (0.2, 0.3, 0.5), np.random.default_rng(0))
    >>> [round(float(np.mean(d == k)), 2) for k in (1, 2, 3)]
    [0.2, 0.3, 0.5]
    """
    shares = np.asarray(shares, float)
    if shares.ndim != 1 or (shares < 0).any() or abs(shares.sum() - 1.0) > 1e-6:
        raise ValueError(f"coordinate_decimals must be shares that sum to 1, got {tuple(shares)}")
    w = np.asarray(weights, float)
    order = rng.permutation(w.size)
    cum = np.cumsum(w[order]) / w.sum()
    mid = cum - w[order] / w.sum() / 2
    cls = np.searchsorted(np.cumsum(shares), mid, side="right")
    out = np.empty(w.size, dtype=np.int64)
    out[order] = np.minimum(cls, shares.size - 1) + 1
    return out


def place_plots(landscape: Landscape, config: StudyConfig, campaigns: pd.DataFrame,
                rng: np.random.Generator) -> pd.DataFrame:
    """Plots: where each campaign's sites really are, and how their coordinate is recorded.

    A plot is sampled around its campaign's centre, on land, accepted by the
    campaign's habitat focus, and snapped to a 10 m pixel centre (its true
    location). Its *recorded* coordinate is that location rounded to the
    campaign's number of decimals (``campaigns["decimals"]``), as field
    studies report them; two decimals move a point by up to ~550 m. The
    recorded coordinate's own pixel (``rec_epsg``, ``rec_col``, ``rec_row``)
    is where a satellite patch or a 1 km map is read for the plot.

    Plots with the same recorded coordinate and year are one *site*
    (``site_id``), as the real table's samples at one coordinate are.
    """
    camp = campaigns
    sizes = site_sizes(config, rng)
    n = sizes.size
    w = camp["weight"].to_numpy()
    cid = rng.choice(len(camp), size=n, p=w / w.sum())
    lead = plot_clusters(cid, config.plot_cluster_share, rng)
    lon = np.full(n, np.nan)
    lat = np.full(n, np.nan)
    # first the plots that open a cluster, around their campaign's centre
    first = np.flatnonzero(lead == np.arange(n))
    c = camp.iloc[cid[first]]
    lon[first], lat[first] = _accept_around(
        landscape, c, c["longitude"].to_numpy(), c["latitude"].to_numpy(),
        c["radius_km"].to_numpy() * 1000.0, False,
        config.forest_campaign_open_acceptance, rng, config.open_campaign_woodland_acceptance,
        config.campaign_other_class_acceptance)
    # then the others, within plot_cluster_radius_m of their cluster's first plot
    # (around the campaign's centre where that plot found no place)
    rest = np.flatnonzero(lead != np.arange(n))
    if rest.size:
        c = camp.iloc[cid[rest]]
        near = ~np.isnan(lon[lead[rest]])
        clon = np.where(near, lon[lead[rest]], c["longitude"].to_numpy())
        clat = np.where(near, lat[lead[rest]], c["latitude"].to_numpy())
        radius = np.where(near, config.plot_cluster_radius_m, c["radius_km"].to_numpy() * 1000.0)
        # a plot near its cluster's first plot keeps that plot's land-cover class, or takes
        # another with probability plot_cluster_other_class_acceptance
        lead_class = np.full(rest.size, -1, dtype=np.int64)
        if config.plot_cluster_other_class_acceptance < 1.0 and near.any():
            lead_class[near] = point_layers(landscape, clon[near], clat[near],
                                            c["year"].to_numpy()[near], ["landcover"])["landcover"]
        lon[rest], lat[rest] = _accept_around(
            landscape, c, clon, clat, radius, near, config.forest_campaign_open_acceptance, rng,
            config.open_campaign_woodland_acceptance, config.campaign_other_class_acceptance,
            lead_class, config.plot_cluster_other_class_acceptance)
    keep = ~np.isnan(lon)
    epsg, col, row = _pixel_of(lon[keep], lat[keep])
    tlon, tlat = _pixel_centre(epsg, col, row)
    chosen = camp.iloc[cid[keep]]
    decimals = chosen["decimals"].to_numpy()
    rlon = np.array([round(float(v), int(k)) for v, k in zip(tlon, decimals)])
    rlat = np.array([round(float(v), int(k)) for v, k in zip(tlat, decimals)])
    rec_epsg, rec_col, rec_row = _pixel_of(rlon, rlat)
    year = chosen["year"].to_numpy()
    site_key = pd.MultiIndex.from_arrays([np.round(rlon, 6), np.round(rlat, 6), year])
    site_code = pd.factorize(site_key)[0]
    return pd.DataFrame({
        "plot_id": [f"SIMP{i:05d}" for i in range(col.size)],
        "site_id": [f"SIMS{i:05d}" for i in site_code],
        "campaign": chosen["campaign"].to_numpy(),
        "continent": chosen["continent"].to_numpy(),
        "year": year,
        "n_cores": sizes[keep],
        "epsg": epsg, "col": col, "row": row,
        "true_longitude": np.round(tlon, 6), "true_latitude": np.round(tlat, 6),
        "decimals": decimals,
        "longitude": rlon, "latitude": rlat,
        "rec_epsg": rec_epsg, "rec_col": rec_col, "rec_row": rec_row,
    })


def plot_clusters(campaign: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """Which plot each plot is placed near: itself, or an earlier plot of its campaign.

    Field campaigns sample groups of plots (a transect, a forest and its
    edge, a gradient of stands) a few hundred metres apart. Each plot, in
    order, joins the cluster of the last plot of its campaign that opened one
    with probability ``share``, and opens its own otherwise, so clusters hold
    ``1 / (1 - share)`` plots on average.

    Returns
    -------
    numpy.ndarray
        Index of each plot's cluster-opening plot (its own index for those).

    Examples
    --------
    >>> plot_clusters(np.array([0, 0, 1, 0]), 1.0, np.random.default_rng(0)).tolist()
    [0, 0, 2, 0]
    """
    if not 0.0 <= share < 1.0 + 1e-12:
        raise ValueError(f"plot_cluster_share must be between 0 and 1, got {share}")
    joins = rng.random(campaign.size) < share
    lead = np.arange(campaign.size)
    last: dict[int, int] = {}
    for i, (k, j) in enumerate(zip(campaign.tolist(), joins.tolist())):
        if j and k in last:
            lead[i] = last[k]
        else:
            last[k] = i
    return lead


def _accept_around(landscape: Landscape, camp: pd.DataFrame, lon0: np.ndarray, lat0: np.ndarray,
                   radius_m: np.ndarray, log_uniform: np.ndarray | bool, open_in_forest: float,
                   rng: np.random.Generator, woodland_in_open: float = 0.2,
                   other_class: float = 1.0, cluster_class: np.ndarray | None = None,
                   other_than_cluster: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Plot locations around centres, on land and accepted by each campaign's habitat focus.

    Distances are uniform over the disc of ``radius_m``, or, where
    ``log_uniform``, log-uniform between 10 m and ``radius_m`` (plots of one
    cluster lie at every distance from a few metres to the radius). The
    radius grows by a third at each of 12 attempts; plots never accepted are NaN.
    A forest campaign accepts a plot on open land with probability
    ``open_in_forest`` (its woodland edges, clearings and neighbouring fields),
    an open-land campaign one in woodland with probability ``woodland_in_open``.
    A campaign about one class (``camp["habitat"]``: a woodland class for a
    forest study, an open class for an open-land study) accepts a plot of
    another class of the same kind with probability ``other_class``. A plot with a
    ``cluster_class`` (its cluster's first plot's land-cover class; -1 for none)
    accepts a plot of another class with probability ``other_than_cluster``.
    """
    n = lon0.size
    log_uniform = np.broadcast_to(np.asarray(log_uniform, bool), (n,))
    accept = {"forest": (1.0, open_in_forest), "mixed": (1.0, 1.0),
              "open": (woodland_in_open, 1.0)}
    habitat = camp["habitat"].to_numpy()
    lon = np.full(n, np.nan)
    lat = np.full(n, np.nan)
    todo = np.arange(n)
    for attempt in range(12):
        if not todo.size:
            break
        c = camp.iloc[todo]
        r = radius_m[todo] * (1.0 + attempt / 3)
        ang = rng.uniform(0, 2 * np.pi, todo.size)
        u = rng.random(todo.size)
        dist = np.where(log_uniform[todo], 10.0 * (np.maximum(r, 10.0) / 10.0) ** u,
                        r * np.sqrt(u))
        cand_lat = lat0[todo] + dist * np.sin(ang) / 111_320.0
        cand_lon = lon0[todo] + dist * np.cos(ang) / (
            111_320.0 * np.cos(np.radians(cand_lat)))
        ok = on_land(cand_lon, cand_lat)
        lc = point_layers(landscape, cand_lon, cand_lat, c["year"].to_numpy(),
                          ["landcover"])["landcover"]
        wood = np.isin(lc, WOODLAND_CODES)
        p_w = np.array([accept[f][0] for f in c["focus"]])
        p_o = np.array([accept[f][1] for f in c["focus"]])
        p = np.where(wood, p_w, p_o) * np.select([lc == WATER, lc == URBAN], [0.0, 0.1], 1.0)
        # a study of one class takes plots of its kind's other classes less often
        h = habitat[todo]
        p *= np.where((h >= 0) & (lc != h) & (np.isin(h, WOODLAND_CODES) == wood),
                      other_class, 1.0)
        if cluster_class is not None:
            k = cluster_class[todo]
            p *= np.where((k >= 0) & (lc != k), other_than_cluster, 1.0)
        ok &= rng.random(todo.size) < p
        lon[todo[ok]], lat[todo[ok]] = cand_lon[ok], cand_lat[ok]
        todo = todo[~ok]
    return lon, lat


def sites_of(plots: pd.DataFrame) -> pd.DataFrame:
    """Sites as the data record them: one row per recorded coordinate and year.

    ``epsg``, ``col`` and ``row`` are the recorded coordinate's pixel;
    ``n_cores`` sums the cores of the plots recorded there.
    """
    g = plots.groupby("site_id", sort=True)
    first = g.first()
    return pd.DataFrame({
        "site_id": first.index.to_numpy(),
        "campaign": first["campaign"].to_numpy(),
        "continent": first["continent"].to_numpy(),
        "year": first["year"].to_numpy(),
        "n_cores": g["n_cores"].sum().to_numpy(),
        "n_plots": g.size().to_numpy(),
        "epsg": first["rec_epsg"].to_numpy(), "col": first["rec_col"].to_numpy(),
        "row": first["rec_row"].to_numpy(),
        "longitude": first["longitude"].to_numpy(), "latitude": first["latitude"].to_numpy(),
        "decimals": first["decimals"].to_numpy(),
    })


def _pixel_of(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """UTM zone and 10 m pixel (col, row) holding each lon/lat point."""
    lon, lat = np.asarray(lon, float), np.asarray(lat, float)
    epsg = np.array([utm_epsg(a, b) for a, b in zip(lon, lat)], dtype=np.int64)
    col = np.empty(lon.size, dtype=np.int64)
    row = np.empty(lon.size, dtype=np.int64)
    for code in np.unique(epsg):
        m = epsg == code
        x, y = lonlat_to_crs(lon[m], lat[m], int(code))
        col[m] = np.floor(x / PIXEL_SIZE).astype(np.int64)
        row[m] = np.floor(-y / PIXEL_SIZE).astype(np.int64)
    return epsg, col, row


def _pixel_centre(epsg: np.ndarray, col: np.ndarray, row: np.ndarray) -> tuple[np.ndarray, ...]:
    """Lon/lat of pixel centres."""
    cx, cy = (col + 0.5) * PIXEL_SIZE, -(row + 0.5) * PIXEL_SIZE
    lon, lat = np.empty(col.size), np.empty(col.size)
    for code in np.unique(epsg):
        m = epsg == code
        lon[m], lat[m] = crs_to_lonlat(cx[m], cy[m], int(code))
    return lon, lat


def core_layers(landscape: Landscape, config: StudyConfig, plots: pd.DataFrame,
                rng: np.random.Generator) -> dict:
    """Where each core lies and the latent layers there (nothing about fungi yet).

    Cores lie up to ``core_spread_px`` pixels from their plot's true pixel.
    A core on water takes the plot pixel's layers (soil cores are not taken
    in lakes).

    Returns
    -------
    dict
        ``plot_index``, ``dcol``, ``drow`` per core; ``layers`` (dict of 1-D
        arrays: land cover, canopy, ... at each core) and ``inputs`` (the
        inputs of :func:`~fungi_ssl.simulate.communities.true_log_richness`
        at each core); ``plot_inputs`` (the same at each plot's own pixel).
    """
    c = config
    plot_idx = np.repeat(np.arange(len(plots)), plots["n_cores"].to_numpy())
    n = plot_idx.size
    p = plots.iloc[plot_idx]
    dcol = rng.integers(-c.core_spread_px, c.core_spread_px + 1, n)
    drow = rng.integers(-c.core_spread_px, c.core_spread_px + 1, n)
    xs = ((p["col"].to_numpy() + dcol + 0.5) * PIXEL_SIZE)[:, None]
    ys = (-(p["row"].to_numpy() + drow + 0.5) * PIXEL_SIZE)[:, None]
    L = landscape.layers(p["epsg"].to_numpy(), xs, ys, p["year"].to_numpy())
    px = ((plots["col"].to_numpy() + 0.5) * PIXEL_SIZE)[:, None]
    py = (-(plots["row"].to_numpy() + 0.5) * PIXEL_SIZE)[:, None]
    P = landscape.layers(plots["epsg"].to_numpy(), px, py, plots["year"].to_numpy())
    on_water = L["landcover"][:, 0, 0] == WATER
    flat = {k: v[:, 0, 0] for k, v in L.items() if k != "richness_inputs"}
    plot_flat = {k: v[:, 0, 0] for k, v in P.items() if k != "richness_inputs"}
    flat = {k: np.where(on_water, plot_flat[k][plot_idx], v) for k, v in flat.items()}
    inputs = {k: np.where(on_water, P["richness_inputs"][k][:, 0, 0][plot_idx], v[:, 0, 0])
              for k, v in L["richness_inputs"].items()}
    plot_inputs = {k: v[:, 0, 0] for k, v in P["richness_inputs"].items()}
    return {"plot_index": plot_idx, "dcol": dcol, "drow": drow, "layers": flat,
            "inputs": inputs, "plot_inputs": plot_inputs}


def sequencing_depth(config: StudyConfig, campaigns: pd.DataFrame, campaign: np.ndarray,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Total fungal reads of each core, and how many of them are ECM reads.

    Total reads are log-normal around the campaign's median depth
    (``reads_sdlog``, half of its variance within campaigns). The ECM share
    of the reads is Beta-distributed around ``ecm_read_share``, the same in
    every habitat: the host effect on ECM fungi is in the true richness, and
    is not counted a second time through the reads.
    """
    c = config
    camp = campaigns.set_index("campaign").loc[campaign]
    n = len(campaign)
    total = np.maximum(1, np.round(camp["median_reads"].to_numpy() * rng.lognormal(
        0.0, c.reads_sdlog / math.sqrt(2), n))).astype(np.int64)
    share = rng.beta(c.ecm_read_share * ECM_SHARE_CONCENTRATION,
                     (1.0 - c.ecm_read_share) * ECM_SHARE_CONCENTRATION, n)
    return total, rng.binomial(total, share)


#: Concentration (alpha + beta) of the Beta distribution of the ECM share of reads.
ECM_SHARE_CONCENTRATION = 8.0


def observe_cores(log_richness: np.ndarray, cores: dict, plots: pd.DataFrame,
                  campaigns: pd.DataFrame, config: StudyConfig, seed: int) -> dict:
    """What sequencing a core shows, given the true log richness at each core.

    Every random draw has its own stream, keyed by the study seed, so the
    sequencing depth and ECM reads of a core do not depend on its richness:
    a study that differs only in its richness model keeps its depths, its
    too-shallow samples and its micro-habitat noise.

    Returns
    -------
    dict
        ``true_core`` (micro-habitat richness of the core), ``n_species``
        (species present after the campaign's detection bias), ``counts``
        (CSR, cores x species slots), ``total_reads``, ``ecm_reads`` and
        ``rarefied`` (NaN below ``rarefaction_depth``).
    """
    from fungi_ssl.data.richness import rarefied_richness

    c = config

    def rng(stream: int) -> np.random.Generator:
        return np.random.default_rng([seed, stream])

    n = log_richness.size
    campaign = plots["campaign"].to_numpy()[cores["plot_index"]]
    bias = campaigns.set_index("campaign").loc[campaign, "bias"].to_numpy()
    true_core = np.exp(log_richness + c.core_sd * rng(16).standard_normal(n))
    total_reads, ecm_reads = sequencing_depth(c, campaigns, campaign, rng(18))
    # a core cannot hold more species than the pool, whatever the richness model says
    expected = np.minimum(true_core * bias, c.otu_pool)
    counts, n_species = draw_community_counts(expected, ecm_reads, c.otu_pool,
                                              c.sad_sdlog, rng(17), rng(19))
    deep = total_reads >= c.rarefaction_depth
    rarefied = np.full(n, np.nan)
    rarefied[deep] = rarefied_richness(counts[deep], depth=c.rarefaction_depth,
                                       total_reads=total_reads[deep])
    return {"true_core": true_core, "n_species": n_species, "counts": counts,
            "total_reads": total_reads, "ecm_reads": ecm_reads, "rarefied": rarefied,
            "bias": bias}


def sample_tables(plots: pd.DataFrame, cores: dict, obs: dict, log_richness_plot: np.ndarray,
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The sample table (GlobalFungi schema) and the truth table of the cores."""
    p = plots.iloc[cores["plot_index"]]
    n = len(p)
    L = cores["layers"]
    sample_id = np.array([f"SIM{i:06d}" for i in range(n)])
    samples = pd.DataFrame({
        "sample_id": sample_id,
        "longitude": p["longitude"].to_numpy(), "latitude": p["latitude"].to_numpy(),
        "continent": p["continent"].to_numpy(),
        "raw_obs_div": np.diff(obs["counts"].indptr).astype(float),
        "rarefied": obs["rarefied"],
        "year": pd.array(p["year"].to_numpy(), dtype="Int64"),
        "site_id": p["site_id"].to_numpy(),
    })
    truth = pd.DataFrame({
        "sample_id": sample_id, "site_id": p["site_id"].to_numpy(),
        "plot_id": p["plot_id"].to_numpy(),
        "campaign": p["campaign"].to_numpy(),
        "true_richness": obs["true_core"],
        "true_richness_pixel": np.exp(log_richness_plot[cores["plot_index"]]),
        "landcover": np.asarray(LANDCOVER_CLASSES)[L["landcover"].astype(int)],
        "canopy": L["canopy"], "host_fraction": L["host_fraction"],
        "stand_age": L["stand_age"], "ancient": L["ancient"], "soil_ph": L["soil_ph"],
        "temperature": L["temperature"], "precipitation": L["precipitation"],
        "campaign_bias": obs["bias"],
        "total_reads": obs["total_reads"], "ecm_reads": obs["ecm_reads"],
        "core_dcol": cores["dcol"], "core_drow": cores["drow"],
        "true_longitude": p["true_longitude"].to_numpy(),
        "true_latitude": p["true_latitude"].to_numpy(),
        "coordinate_decimals": p["decimals"].to_numpy(),
        "coordinate_offset_m": _offset_m(p),
    })
    return samples, truth


def _offset_m(p: pd.DataFrame) -> np.ndarray:
    """Distance (m) from a plot's true location to its recorded coordinate."""
    lat0 = np.radians(p["true_latitude"].to_numpy())
    dx = (p["longitude"].to_numpy() - p["true_longitude"].to_numpy()) * 111_320.0 * np.cos(lat0)
    dy = (p["latitude"].to_numpy() - p["true_latitude"].to_numpy()) * 110_574.0
    return np.hypot(dx, dy)
