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

The generative model has four layers, one module each, tied together by a
study configuration; book chapter 00 reads in the same order:

1. :mod:`~fungi_ssl.simulate.landscape`: coarse fields (climate, soil,
   nitrogen deposition, regional propensities), stands with their land cover,
   age, continuity and change 2017–2024, fine fields, and the true richness
   at every pixel.
2. :mod:`~fungi_ssl.simulate.sensors`: Sentinel-2 and Sentinel-1 time series,
   and the 1 km covariates a climate/soil/land-cover model sees.
3. :mod:`~fungi_ssl.simulate.communities`: the documented formula of true
   ECM richness (:class:`RichnessModel`) and the fungal communities of cores.
4. :mod:`~fungi_ssl.simulate.sampling`: campaigns, sites, cores, sequencing
   and rarefaction.
5. :mod:`~fungi_ssl.simulate.study`: :class:`StudyConfig` and
   :class:`SimulatedStudy`, which ties the layers together, plus the
   parameter table and diagnostics of chapter 00.

The public names of all five are importable from here
(``from fungi_ssl.simulate import SimulatedStudy``).
"""

from __future__ import annotations

from fungi_ssl.core.hashing import hash_normal, hash_uniform

from .communities import (
    COARSE_TERMS,
    INVISIBLE_TERMS,
    RichnessModel,
    richness_terms,
    true_log_richness,
)
from .landscape import (
    BROADLEAF,
    CONIFER,
    CROPLAND,
    DROUGHT_YEARS,
    GRASSLAND,
    HEATH,
    LANDCOVER_CLASSES,
    MIXED,
    PIXEL_SIZE,
    STAND_BLOCK_SPACING,
    URBAN,
    WATER,
    WOODLAND_CODES,
    GaussianField,
    Landscape,
    LandscapeModel,
    Window,
    on_land,
)
from .sampling import CONTINENT_SHARE, CONTINENTS
from .sensors import (
    CONSENSUS_CLASS,
    LANDCOVER_CONFUSION,
    S1_REVISIT_DAYS,
    S2_REVISIT_DAYS,
    SensorModel,
    classified_landcover,
    covariates_1km,
    s1_doys,
    s1_orbits,
    s2_doys,
    sentinel_observations,
)
from .study import (
    PARAMETER_LAYERS,
    PARAMETER_RATIONALE,
    UK_PARKS,
    SimulatedStudy,
    StudyConfig,
    parameter_table,
    richness_variance,
    variance_below_1km,
)

__all__ = [
    "BROADLEAF", "COARSE_TERMS", "CONIFER", "CONSENSUS_CLASS", "CONTINENTS", "CONTINENT_SHARE",
    "CROPLAND", "DROUGHT_YEARS", "GRASSLAND", "HEATH", "INVISIBLE_TERMS", "LANDCOVER_CLASSES",
    "LANDCOVER_CONFUSION", "MIXED", "PARAMETER_LAYERS", "PARAMETER_RATIONALE", "PIXEL_SIZE",
    "S1_BANDS", "S1_REVISIT_DAYS", "S2_BANDS", "S2_REVISIT_DAYS", "STAND_BLOCK_SPACING",
    "UK_PARKS", "URBAN", "WATER", "WOODLAND_CODES", "GaussianField", "Landscape",
    "LandscapeModel", "RichnessModel", "SensorModel", "SimulatedStudy", "StudyConfig", "Window",
    "classified_landcover", "covariates_1km", "hash_normal", "hash_uniform", "on_land",
    "parameter_table", "richness_terms", "richness_variance", "s1_doys",
    "s1_orbits", "s2_doys", "sentinel_observations", "true_log_richness", "variance_below_1km",
]


def __getattr__(name: str):
    """``S2_BANDS`` and ``S1_BANDS`` are the encoder's (one definition in the
    package); they are imported on first use because the encoder imports torch."""
    if name in ("S2_BANDS", "S1_BANDS"):
        from fungi_ssl.embeddings import encoder

        return getattr(encoder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
