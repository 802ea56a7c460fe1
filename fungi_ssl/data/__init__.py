"""Stage 1, field data: reading, checking and describing sample tables and covariates.

Holds :mod:`~fungi_ssl.data.io` (sample tables and SPUN covariates),
:mod:`~fungi_ssl.data.download` (the real tables), :mod:`~fungi_ssl.data.coordinates`
(CRS, UTM zones, geodesic distances), :mod:`~fungi_ssl.data.sites` (samples within
25 m are one site), :mod:`~fungi_ssl.data.richness` (rarefied richness),
:mod:`~fungi_ssl.data.guild` (the guild and target a chapter speaks about),
:mod:`~fungi_ssl.data.realism`, :mod:`~fungi_ssl.data.variogram` and
:mod:`~fungi_ssl.data.reference` (the real tables' summaries that the simulated
study is held against) and :mod:`~fungi_ssl.data.covariate_stack` (1 km covariate
rasters).

May import: :mod:`fungi_ssl.core`.
"""
