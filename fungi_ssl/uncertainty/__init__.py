"""Stage 8, uncertainty: errors, calibration, intervals and the area of applicability.

Holds the bias and uncertainty analysis of chapter 07 (errors and
calibration, spatial autocorrelation of residuals, conformal intervals, area of
applicability), :mod:`~fungi_ssl.uncertainty.aoa_index` (a fast dissimilarity
index), :mod:`~fungi_ssl.uncertainty.bias_maps` (uncertainty and AOA maps) and
:mod:`~fungi_ssl.uncertainty.heldout` (chapter 04's held-out predictions, for chapter 07).

May import: stages 0 to 7.
"""
