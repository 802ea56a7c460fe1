"""Stage 6, attribution: which predictor groups explain richness.

Holds :mod:`~fungi_ssl.attribution.partition` (commonality analysis),
:mod:`~fungi_ssl.attribution.explain` (SHAP per feature and group) and
:mod:`~fungi_ssl.attribution.groups` (chapter 05's analysis over the predictor groups).

May import: stages 0 to 5.
"""
