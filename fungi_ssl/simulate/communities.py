"""Layer 3 of the simulated world: the fungal communities.

The true ECM richness at every 10 m pixel is a documented function of the
landscape's layers (:func:`true_log_richness`, coefficients in
:class:`RichnessModel`). What a soil core then yields (species present, their
abundances, the reads that sequencing gives them) is drawn in
:mod:`fungi_ssl.simulate.sampling`, which calls the community draws here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

__all__ = ["COARSE_TERMS", "INVISIBLE_TERMS", "RICHNESS_INPUTS", "TERM_COEFFICIENTS",
           "RichnessModel", "assign_otus", "draw_community_counts", "richness_terms",
           "true_log_richness"]


@dataclass(frozen=True)
class RichnessModel:
    """Coefficients of the true log ECM richness at 10 m.

    ``log S = log(s_max) + log(floor + (1 - floor) * H**host_exponent)
    + continuity * ancient - ph_curvature * ((pH - ph_optimum) / ph_width)**2
    - temp_curvature * ((T - temp_optimum) / temp_width)**2
    + precip_slope * (P - 900) / 400 - nitrogen_slope * (N - 12)
    + regional_sd * z_regional + fine_sd * z_fine
    + hidden_host_sd * z_host + fine_nitrogen_sd * z_nitrogen + change``

    where ``H = host_fraction * canopy * (age_floor + (1 - age_floor) *
    (1 - exp(-age / age_scale)))`` is the ECM host basal-area index and the
    ``z`` are unit-variance fields (:func:`richness_terms` names every term).

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
    hidden_host_sd : float
        SD, between broadleaf and mixed stands, of the effect of which hosts
        they hold (ECM oak, beech, birch against arbuscular-mycorrhizal ash,
        maple, sycamore beyond the host fraction): a stand property whose
        spectral signature is too weak to see. Its shape is
        :func:`fungi_ssl.simulate.landscape.hidden_host_deficit` (skewed to
        the low side: a few stands are dominated by AM trees); about 0.5 is
        a stand of only AM trees keeping a tenth of its ECM species.
    fine_nitrogen_sd : float
        SD of the effect of fine-scale (~30 m) soil nitrogen availability,
        which no sensor and no 1 km map observes.
    decline_rate : float
        Log decline per year in declining ancient stands (true trend).
    drought_effect : float
        Log change in a drought year (2018, 2022) in the European continent.
    """

    s_max: float = 380.0
    floor: float = 0.015
    host_exponent: float = 0.8
    age_floor: float = 0.35
    age_scale: float = 30.0
    continuity: float = 0.35
    ph_optimum: float = 5.0
    ph_width: float = 1.4
    ph_curvature: float = 0.5
    temp_optimum: float = 7.0
    temp_width: float = 5.0
    temp_curvature: float = 0.4
    precip_slope: float = 0.10
    nitrogen_slope: float = 0.015
    regional_sd: float = 0.15
    fine_sd: float = 0.2
    hidden_host_sd: float = 0.4
    fine_nitrogen_sd: float = 0.3
    decline_rate: float = 0.04
    drought_effect: float = -0.05


#: Inputs of :func:`true_log_richness`: the latent layers it reads at each pixel.
RICHNESS_INPUTS: tuple[str, ...] = (
    "host", "canopy", "age", "ancient", "ph", "temperature", "precipitation", "nitrogen",
    "regional", "fine", "hidden_host", "fine_nitrogen", "declining", "years_since_2017",
    "drought",
)

#: Terms of the richness that vary over tens to hundreds of km and that the
#: coefficients ``temp_curvature``, ``precip_slope`` and ``nitrogen_slope`` scale.
COARSE_TERMS: tuple[str, ...] = ("temperature", "precipitation", "nitrogen")
#: Terms that neither the satellites nor the 1 km covariates observe, scaled by
#: ``regional_sd``, ``fine_sd``, ``hidden_host_sd`` and ``fine_nitrogen_sd``.
INVISIBLE_TERMS: tuple[str, ...] = ("regional", "fine", "hidden_host", "fine_nitrogen")
#: The coefficient of each coarse and invisible term (the knobs of chapter 11).
TERM_COEFFICIENTS: dict[str, str] = {
    "temperature": "temp_curvature", "precipitation": "precip_slope",
    "nitrogen": "nitrogen_slope", "regional": "regional_sd", "fine": "fine_sd",
    "hidden_host": "hidden_host_sd", "fine_nitrogen": "fine_nitrogen_sd",
}


def richness_terms(*, host, canopy, age, ancient, ph, temperature, precipitation, nitrogen,
                   regional, fine, hidden_host, fine_nitrogen, declining, years_since_2017,
                   drought, model: RichnessModel) -> dict[str, np.ndarray]:
    """Every additive term of the true log ECM richness (see :class:`RichnessModel`).

    All inputs are arrays of one shape (:data:`RICHNESS_INPUTS`);
    ``regional``, ``fine``, ``hidden_host`` and ``fine_nitrogen`` are
    unit-variance fields that this function scales (``hidden_host`` is zero
    outside broadleaf and mixed woodland).

    Returns
    -------
    dict
        Term name to array, in the order they are summed: ``s_max``, ``host``,
        ``continuity``, ``soil_ph``, ``temperature``, ``precipitation``,
        ``nitrogen``, ``regional``, ``fine``, ``hidden_host``,
        ``fine_nitrogen``, ``decline``, ``drought``.
    """
    m = model
    H = np.asarray(host) * np.asarray(canopy) * (
        m.age_floor + (1 - m.age_floor) * (1.0 - np.exp(-np.asarray(age) / m.age_scale)))
    shape = np.broadcast(np.asarray(host), np.asarray(ph)).shape
    return {
        "s_max": np.full(shape, np.log(m.s_max)),
        "host": np.log(m.floor + (1 - m.floor) * np.clip(H, 0, 1) ** m.host_exponent),
        "continuity": m.continuity * np.asarray(ancient, float),
        "soil_ph": -m.ph_curvature * ((np.asarray(ph) - m.ph_optimum) / m.ph_width) ** 2,
        "temperature": -m.temp_curvature * (
            (np.asarray(temperature) - m.temp_optimum) / m.temp_width) ** 2,
        "precipitation": m.precip_slope * (np.asarray(precipitation) - 900.0) / 400.0,
        "nitrogen": -m.nitrogen_slope * (np.asarray(nitrogen) - 12.0),
        "regional": m.regional_sd * np.asarray(regional),
        "fine": m.fine_sd * np.asarray(fine),
        "hidden_host": m.hidden_host_sd * np.asarray(hidden_host),
        "fine_nitrogen": m.fine_nitrogen_sd * np.asarray(fine_nitrogen),
        "decline": -m.decline_rate * np.asarray(declining, float) * np.asarray(years_since_2017),
        "drought": m.drought_effect * np.asarray(drought, float),
    }


def true_log_richness(*, model: RichnessModel, **inputs) -> np.ndarray:
    """The documented formula of true log ECM richness: the sum of :func:`richness_terms`.

    Examples
    --------
    >>> rm = RichnessModel()
    >>> kw = dict(ph=5.0, temperature=7.0, precipitation=900.0, nitrogen=12.0, regional=0.0,
    ...           fine=0.0, hidden_host=0.0, fine_nitrogen=0.0, declining=False,
    ...           years_since_2017=0.0, drought=False, model=rm)
    >>> old_wood = true_log_richness(host=1.0, canopy=1.0, age=1e9, ancient=False, **kw)
    >>> round(float(np.exp(old_wood)), 1)
    380.0
    >>> meadow = true_log_richness(host=0.0, canopy=0.0, age=0.0, ancient=False, **kw)
    >>> round(float(np.exp(meadow)), 1)
    5.7
    """
    missing = [k for k in RICHNESS_INPUTS if k not in inputs]
    if missing:
        raise ValueError(f"true_log_richness: missing inputs {missing}")
    terms = richness_terms(model=model, **{k: inputs[k] for k in RICHNESS_INPUTS})
    total = np.zeros(np.broadcast(*terms.values()).shape)
    for value in terms.values():
        total = total + value
    return total


def draw_community_counts(expected_species: np.ndarray, ecm_reads: np.ndarray, otu_pool: int,
                          sad_sdlog: float, species_rng: np.random.Generator,
                          reads_rng: np.random.Generator) -> tuple[sp.csr_matrix, np.ndarray]:
    """ECM read counts of each core's species.

    A core holds ``Poisson(expected_species)`` species (at most ``otu_pool``),
    with log-normal relative abundances (``sad_sdlog``); its ``ecm_reads``
    ECM reads fall on them multinomially, so rare species may get none.

    Returns
    -------
    counts : scipy.sparse.csr_matrix
        Cores x species *slots*: row ``i`` lists core ``i``'s species that
        got reads, in columns ``0 .. n_species[i] - 1`` (which OTUs of the
        pool they are is drawn separately, by :func:`assign_otus`).
    n_species : numpy.ndarray
        Species present in each core (with or without reads).

    Examples
    --------
    >>> rng = np.random.default_rng
    >>> counts, k = draw_community_counts(np.array([50.0, 0.0]), np.array([1000, 1000]),
    ...                                   3000, 1.6, rng(0), rng(1))
    >>> counts.shape[0], int(k[1]), int(counts[0].sum())
    (2, 0, 1000)
    """
    n = len(expected_species)
    n_species = np.minimum(species_rng.poisson(expected_species), otu_pool)
    live = (n_species > 0) & (np.asarray(ecm_reads) > 0)
    k = np.where(live, n_species, 0)
    abundance = reads_rng.lognormal(0.0, sad_sdlog, int(k.sum()))
    starts = np.concatenate([[0], np.cumsum(k)])
    indptr = np.zeros(n + 1, dtype=np.int64)
    indices, data = [], []
    for i in tqdm(np.flatnonzero(live), desc="community counts", leave=False,
                  disable=n < 20_000):
        p = abundance[starts[i]:starts[i + 1]]
        cnt = reads_rng.multinomial(int(ecm_reads[i]), p / p.sum())
        nz = np.flatnonzero(cnt)
        indices.append(nz)
        data.append(cnt[nz])
        indptr[i + 1] = nz.size
    indptr = np.cumsum(indptr)
    counts = sp.csr_matrix(
        (np.concatenate(data) if data else np.zeros(0, np.int64),
         np.concatenate(indices) if indices else np.zeros(0, np.int64), indptr),
        shape=(n, int(max(otu_pool, 1))))
    return counts, n_species


def assign_otus(counts: sp.csr_matrix, n_species: np.ndarray, otu_pool: int,
                pool_rng: np.random.Generator, rng: np.random.Generator) -> sp.csr_matrix:
    """Which OTUs of the regional pool each core's species are.

    The pool's OTUs have log-normal prevalence weights (``pool_rng``); a core
    with ``k`` species holds ``k`` of them drawn without replacement in
    proportion to those weights (Gumbel top-k), and species slot ``j`` is the
    ``j``-th of them. Rarefaction does not depend on the identities, so only
    the OTU table needs them.

    Returns
    -------
    scipy.sparse.csr_matrix
        Cores x OTUs read counts.
    """
    pool_logw = pool_rng.normal(0.0, 1.0, otu_pool)
    counts = counts.tocsr()
    cols = np.empty_like(counts.indices)
    n = counts.shape[0]
    for i in tqdm(range(n), desc="OTU identities", leave=False, disable=n < 2000):
        a, b = counts.indptr[i], counts.indptr[i + 1]
        if a == b:
            continue
        k = int(n_species[i])
        g = pool_logw + rng.gumbel(size=otu_pool)
        otus = np.sort(np.argpartition(-g, k - 1)[:k])
        cols[a:b] = otus[counts.indices[a:b]]
    out = sp.csr_matrix((counts.data, cols, counts.indptr), shape=(n, otu_pool))
    out.sort_indices()
    return out
