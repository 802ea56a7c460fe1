"""Stage 4, predictors: the table of predictors at the field samples.

Holds :mod:`~fungi_ssl.predictors.tables` (the predictor table of a chapter:
SSL patches, 1 km covariates, simulated or real), :mod:`~fungi_ssl.predictors.features`
(predictor sets, the in-fold PCA of the patches) and
:mod:`~fungi_ssl.predictors.probes` (what the embeddings know: principal
components and linear probes).

May import: :mod:`fungi_ssl.core`, :mod:`fungi_ssl.data`, :mod:`fungi_ssl.embeddings`,
:mod:`fungi_ssl.simulate`.
"""
