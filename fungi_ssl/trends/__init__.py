"""Stage 9, trends: richness change per woodland polygon and trend maps.

Holds :mod:`~fungi_ssl.trends.polygons` (the yearly stack, zonal means,
Theil–Sen slopes, Mann–Kendall tests), :mod:`~fungi_ssl.trends.contrasts`
(ancient against other woodland: area-weighted slopes, the park-year interval
and its slope-gain calibration), :mod:`~fungi_ssl.trends.summaries` (chapter
08's figures and results keys), :mod:`~fungi_ssl.trends.trend_table` (the
per-polygon trend table of yearly map files: ``fungi-ssl trend``, chapter 10),
:mod:`~fungi_ssl.trends.trendmaps` (chapter 08's maps of change in a changing
and a null world) and :mod:`~fungi_ssl.trends.replicates` (the replicate
worlds that score its interval).

May import: stages 0 to 8.
"""
