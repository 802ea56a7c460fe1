"""The truth a map is scored against: what a sample would show at each pixel.

The simulated world knows every pixel's true ECM species count, but a map
cannot estimate that. The samples it is trained on are *rarefied* richness
(the expected number of species in a random subsample of
``rarefaction_depth`` fungal reads, of which only an ECM share are ECM), and
the map model regresses ``log1p(rarefied)``. At a pixel the map therefore
estimates the mean of ``log1p(rarefied)`` over the soil cores one could take
there. This module computes that estimand through the simulator's own
observation chain, so a map is scored like against like (chapters 06-08).

This module draws nothing that a cache holds (its text is left out of
:func:`fungi_ssl.study.simulator_fingerprint`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from .communities import draw_community_counts
from .landscape import WATER, Window
from .sampling import ECM_SHARE_CONCENTRATION
from .sensors import _with_crs

if TYPE_CHECKING:
    from .study import SimulatedStudy, StudyConfig

__all__ = ["TRUTH_GRID", "expected_log1p_rarefied", "rarefied_curve", "rarefied_response",
           "truth_layer"]

#: True log richness range of the lookup table (lowest: a core holds almost no
#: species; highest: the OTU pool caps it) and its number of values.
TRUTH_GRID = (math.log(0.05), math.log(3_000.0), 64)


def rarefied_response(config: StudyConfig, log_richness: np.ndarray, n_cores: int = 400,
                      seed: int = 0) -> dict[str, np.ndarray]:
    """What a sample's ``rarefied`` is expected to be, given the true log richness of its pixel.

    Monte Carlo through the same chain as
    :func:`~fungi_ssl.simulate.sampling.observe_cores`: micro-habitat noise
    (``core_sd``), a campaign's detection bias and median depth drawn as
    :func:`~fungi_ssl.simulate.sampling.draw_campaigns` draws them, the core's
    depth and ECM share as
    :func:`~fungi_ssl.simulate.sampling.sequencing_depth`, its species and
    reads as :func:`~fungi_ssl.simulate.communities.draw_community_counts`,
    then rarefaction. Cores below ``rarefaction_depth`` are left out, as the
    sample table leaves them out. The same random numbers serve every input
    value (common random numbers), so the response is smooth in
    ``log_richness``.

    Parameters
    ----------
    config : StudyConfig
        The study whose observation chain is followed.
    log_richness : numpy.ndarray
        True log richness values (1-D), e.g. a grid to interpolate on.
    n_cores : int
        Simulated cores per value (400 gives a Monte Carlo standard error of
        about 0.03 in ``log1p(rarefied)``).
    seed : int
        Seed of the Monte Carlo draws.

    Returns
    -------
    dict
        ``log1p_mean``: mean ``log1p(rarefied)`` per value (the estimand of a
        log-scale map); ``mean``: mean ``rarefied``; ``sd_log1p``: the
        core-to-core standard deviation of ``log1p(rarefied)`` (noise no
        model can predict).

    Examples
    --------
    >>> from fungi_ssl.simulate import StudyConfig
    >>> r = rarefied_response(StudyConfig(), np.log([20.0, 200.0]), n_cores=100)
    >>> bool(r["log1p_mean"][0] < r["log1p_mean"][1])
    True
    """
    from fungi_ssl.data.richness import rarefied_richness

    c = config
    log_richness = np.atleast_1d(np.asarray(log_richness, dtype=float))
    if log_richness.ndim != 1 or not np.isfinite(log_richness).all():
        raise ValueError("rarefied_response: log_richness must be a 1-D array of finite values")
    if n_cores < 10:
        raise ValueError(f"rarefied_response: n_cores must be at least 10, got {n_cores}")
    rng = np.random.default_rng([seed, 7301])
    sdl = c.reads_sdlog / math.sqrt(2)
    # depths of cores from as many campaigns; the first n_cores deep enough are kept
    m = 4 * n_cores
    total = np.maximum(1, np.round(c.median_reads * rng.lognormal(0, sdl, m)
                                   * rng.lognormal(0, sdl, m))).astype(np.int64)
    deep = np.flatnonzero(total >= c.rarefaction_depth)[:n_cores]
    if deep.size < 10:
        raise ValueError("rarefied_response: almost no simulated core reaches rarefaction_depth")
    n = deep.size
    total = total[deep]
    share = rng.beta(c.ecm_read_share * ECM_SHARE_CONCENTRATION,
                     (1.0 - c.ecm_read_share) * ECM_SHARE_CONCENTRATION, n)
    ecm = rng.binomial(total, share)
    # micro-habitat noise and the campaign's multiplicative detection bias, in log units
    noise = c.core_sd * rng.standard_normal(n) + rng.normal(0.0, c.campaign_bias_sd, n)
    species_seed, reads_seed = (int(v) for v in rng.integers(0, 2**63 - 1, 2))
    out = {k: np.empty(log_richness.size) for k in ("log1p_mean", "mean", "sd_log1p")}
    for i, lr in enumerate(log_richness):
        expected = np.minimum(np.exp(lr + noise), c.otu_pool)
        counts, _ = draw_community_counts(expected, ecm, c.otu_pool, c.sad_sdlog,
                                          np.random.default_rng(species_seed),
                                          np.random.default_rng(reads_seed))
        r = np.asarray(rarefied_richness(counts, depth=c.rarefaction_depth, total_reads=total),
                       dtype=float)
        lg = np.log1p(r)
        out["log1p_mean"][i], out["mean"][i], out["sd_log1p"][i] = lg.mean(), r.mean(), lg.std()
    return out


def rarefied_curve(study: SimulatedStudy) -> dict[str, np.ndarray]:
    """Lookup table from true log richness to the expected ``log1p(rarefied)`` of a study.

    :func:`rarefied_response` on :data:`TRUTH_GRID` (64 values, 400
    simulated cores each; about 2 s), with the mean forced monotone, kept on
    the study object. Keys: ``log_richness``, ``log1p_mean``, ``mean``,
    ``sd_log1p``.
    """
    cached = study.__dict__.get("_rarefied_curve")
    if cached is None:
        lo, hi, n = TRUTH_GRID
        grid = np.linspace(lo, hi, n)
        r = rarefied_response(study.config, grid, seed=study.config.seed)
        r["log1p_mean"] = np.maximum.accumulate(r["log1p_mean"])
        cached = study.__dict__["_rarefied_curve"] = {"log_richness": grid, **r}
    return cached


def expected_log1p_rarefied(study: SimulatedStudy, log_richness: np.ndarray) -> np.ndarray:
    """The mean ``log1p(rarefied)`` of a core at pixels of the given true log richness.

    Interpolated in :func:`rarefied_curve` (clamped at its ends); NaN stays NaN.
    """
    cv = rarefied_curve(study)
    lr = np.asarray(log_richness, dtype=float)
    out = np.interp(lr, cv["log_richness"], cv["log1p_mean"])
    return np.where(np.isnan(lr), np.nan, out)


def truth_layer(study: SimulatedStudy, window: Window, year: int) -> xr.DataArray:
    """The truth a 10 m richness map is scored against: the map's own estimand.

    ``expm1`` of the mean ``log1p(rarefied)`` of a core taken at each pixel
    (:func:`expected_log1p_rarefied` of the pixel's true log richness in
    ``year``), in rarefied-richness units, so ``log1p(truth)`` is scored
    against ``log1p(map)``. It lies far below ``study.layers(...)["true_richness"]``,
    the species a core holds before rarefaction. Water pixels are NaN (no
    soil core, no map).

    Examples
    --------
    >>> from fungi_ssl.simulate import SimulatedStudy
    >>> study = SimulatedStudy(n_samples=300, n_campaigns=8)
    >>> t = truth_layer(study, study.map_window(0, 8), 2019)
    >>> t.shape, t.attrs["units"]
    ((8, 8), 'expected rarefied richness')
    """
    L = study.landscape.layers(np.array([window.epsg]), window.x[None], window.y[None], year)
    log1p = expected_log1p_rarefied(study, L["log_richness"][0])
    log1p = np.where(L["landcover"][0] == WATER, np.nan, log1p)
    ds = xr.Dataset({"expected_rarefied": (("y", "x"), np.expm1(log1p).astype(np.float32))},
                    coords={"y": window.y, "x": window.x})
    out = _with_crs(ds, window.epsg)["expected_rarefied"]
    out.attrs.update(units="expected rarefied richness", year=int(year), window=window.name,
                     estimand="expm1 of the mean log1p(rarefied) of a core taken at the pixel")
    return out
