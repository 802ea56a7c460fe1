"""Stage 10, your region: the whole pipeline applied to a user's bounding box (chapter 10).

Holds :mod:`~fungi_ssl.region.workflow`: tiles, the map model, the map, the
area of applicability and trends for one region; the ``fungi-ssl`` command calls it.

May import: stages 0 to 9.
"""
