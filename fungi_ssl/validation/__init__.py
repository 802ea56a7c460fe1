"""Stage 5, models and validation: the regressors, their pipelines and how they are scored.

Holds :mod:`~fungi_ssl.validation.models` (regressors and metrics),
:mod:`~fungi_ssl.validation.pipelines` (design matrices and the book's model
pipelines), :mod:`~fungi_ssl.validation.cv` (random and spatial splitters),
:mod:`~fungi_ssl.validation.knndm`, :mod:`~fungi_ssl.validation.knndm_gap`,
:mod:`~fungi_ssl.validation.buffered_loo`, chapter 09's comparison of
validation schemes (:mod:`~fungi_ssl.validation.cv_schemes`, its results and
figures in :mod:`~fungi_ssl.validation.cv_schemes_results`), :mod:`~fungi_ssl.validation.comparison` (chapter 04's predictor
comparison) and :mod:`~fungi_ssl.validation.sensitivity` (when satellite features
win, chapters 00 and 11).

May import: stages 0 to 4 (``core``, ``data``, ``embeddings``, ``simulate``,
``predictors``).
"""
