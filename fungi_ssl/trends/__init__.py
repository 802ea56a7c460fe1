"""Stage 9, trends: richness change per woodland polygon and trend maps.

Holds :mod:`~fungi_ssl.trends.polygons` (zonal means, Theil–Sen slopes,
Mann–Kendall tests) and :mod:`~fungi_ssl.trends.trendmaps` (chapter 08's maps of change).

May import: stages 0 to 8.
"""
