"""Stage 7, maps: the map model, wall-to-wall prediction and the resolution study.

Holds :mod:`~fungi_ssl.maps.mapmodel` (the saved map model), the map
prediction (``predict*``: windows, COG output, dask) and
:mod:`~fungi_ssl.maps.resolution` (chapter 06: 10 m against 1 km).

May import: stages 0 to 6.
"""
