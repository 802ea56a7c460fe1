"""Stage 2, self-supervised embeddings: the encoder, embedding cubes and TESSERA tiles.

Holds :mod:`~fungi_ssl.embeddings.encoder` (the SSL encoder, its training and
band order), :mod:`~fungi_ssl.embeddings.embed` (embedding cubes of satellite
time series, cached) and :mod:`~fungi_ssl.embeddings.tessera` (TESSERA tiles: reading,
writing, dequantising).

The encoder knows nothing of the simulated world, so this stage comes before
:mod:`fungi_ssl.simulate`, whose sensors use the encoder's band order.

May import: :mod:`fungi_ssl.core`, :mod:`fungi_ssl.data`.
"""
