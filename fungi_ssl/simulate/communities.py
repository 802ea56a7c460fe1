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

__all__ = ["RichnessModel", "true_log_richness"]


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


