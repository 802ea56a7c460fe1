"""Stage 7, maps: the map model, wall-to-wall prediction and the resolution study.

Holds :mod:`~fungi_ssl.maps.mapmodel` (the saved map model),
:mod:`~fungi_ssl.maps.sources` (the map grid, embedding stores and tiles read
block by block), :mod:`~fungi_ssl.maps.predict` (windows and blocks predicted
on threads or a dask cluster), :mod:`~fungi_ssl.maps.outputs` (COG and Zarr
writers, reading maps back, 1 km aggregation) and
:mod:`~fungi_ssl.maps.resolution` (chapter 06: 10 m against 1 km).

May import: stages 0 to 6.
"""
