"""Stage 7, maps: the map model, wall-to-wall prediction and the resolution study.

Holds :mod:`~fungi_ssl.maps.mapmodel` (the saved map model), with
:mod:`~fungi_ssl.maps.modelspec` (what a model file records: feature spec,
fingerprints, library versions) and :mod:`~fungi_ssl.maps.flattrees` (the
numba walker of its tree ensembles); :mod:`~fungi_ssl.maps.composite` (the
product model's cell means with the 10 m map's within-cell deviations, two
models in one file, mapped in three passes); :mod:`~fungi_ssl.maps.sources` (the map
grid, embedding stores and tiles read block by block),
:mod:`~fungi_ssl.maps.predict` (windows and blocks predicted on threads or a
dask cluster), :mod:`~fungi_ssl.maps.outputs` (COG and Zarr writers, reading
maps back, 1 km aggregation) and chapter 06's study of 10 m against 1 km:
:mod:`~fungi_ssl.maps.resolution` (the models and maps),
:mod:`~fungi_ssl.maps.resolution_regions` (the regions and the 1 km cell
arithmetic), :mod:`~fungi_ssl.maps.resolution_scores` (scores, the product
map's criteria, regional levels) and :mod:`~fungi_ssl.maps.resolution_oracle`
(refits on noise-free labels).

May import: stages 0 to 6.
"""
