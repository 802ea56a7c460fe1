"""Stage 2, self-supervised embeddings: the encoder, embedding cubes and TESSERA tiles.

Holds :mod:`~fungi_ssl.embeddings.pixels` (pixel time series of a satellite
cube, the band order, timestep draws), :mod:`~fungi_ssl.embeddings.encoder` (the
SSL encoder and its training), :mod:`~fungi_ssl.embeddings.inference` (embedding
pixels, quantising, saving an encoder), :mod:`~fungi_ssl.embeddings.embed`
(embedding cubes to Zarr stores, cached) and TESSERA tiles:
:mod:`~fungi_ssl.embeddings.tessera` (reading, dequantising),
:mod:`~fungi_ssl.embeddings.tessera_patches` (patches at points) and
:mod:`~fungi_ssl.embeddings.tessera_write` (tiles written in the same layout).

The encoder knows nothing of the simulated world, so this stage comes before
:mod:`fungi_ssl.simulate`, whose sensors use the encoder's band order.

May import: :mod:`fungi_ssl.core`, :mod:`fungi_ssl.data`.
"""
