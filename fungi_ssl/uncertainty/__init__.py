"""Stage 8, uncertainty: errors, calibration, intervals and the area of applicability.

Holds the bias checks of chapter 07: :mod:`~fungi_ssl.uncertainty.errors`
(mean error, calibration, errors against covariates),
:mod:`~fungi_ssl.uncertainty.autocorrelation` (Moran's I of the errors),
:mod:`~fungi_ssl.uncertainty.intervals` (conformal intervals),
:mod:`~fungi_ssl.uncertainty.aoa` (area of applicability) and
:mod:`~fungi_ssl.uncertainty.bias` (the chapter's results; its docstring
describes the held-out table); :mod:`~fungi_ssl.uncertainty.aoa_index` (a fast dissimilarity
index), :mod:`~fungi_ssl.uncertainty.bias_maps` (uncertainty and AOA maps) and
:mod:`~fungi_ssl.uncertainty.heldout` (chapter 04's held-out predictions, for chapter 07).

May import: stages 0 to 7.
"""
