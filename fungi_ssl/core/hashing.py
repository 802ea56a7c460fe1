"""Counter-based random numbers: stateless draws from integer keys.

A counter-based generator maps a key (seed, stream, pixel index, date …) to a
random number with a hash instead of advancing a state. A value therefore
depends only on its key, never on what else is drawn, in which order, or in
which chunk: a pixel gets the same numbers whether a raster is processed
whole or window by window. Both the simulator (:mod:`fungi_ssl.simulate`) and
the encoder's inference-time timestep draws (:mod:`fungi_ssl.embeddings.encoder`) rely on
this.

The mixing function is the finaliser of splitmix64 (Steele, Lea and Flood
2014, *Fast splittable pseudorandom number generators*, OOPSLA; constants of
Vigna's reference ``splitmix64.c``), applied with wrapping ``uint64``
arithmetic. Two key schemes are built on it:

* :func:`hash_keys` folds any number of integer keys into one ``uint64``
  (boost ``hash_combine`` style); :func:`hash_uniform` and
  :func:`hash_normal` turn it into float64 ``Uniform(0, 1)`` (53 bits) and
  standard normal numbers. The simulator's scheme.
* :func:`hash_uniform_rows` gives a ``(n, width)`` float32 table of uniforms
  in ``[0, 1)`` (24 bits) for ``n`` ids, one key per ``(seed, id, stream,
  column)``, in one multiply-add per value: the encoder's scheme, cheaper per
  value, for drawing ``width`` timesteps of millions of pixels.

The two schemes give different numbers for the same integers; each is kept
bit for bit as it was, since cached simulations and embeddings depend on it.

Examples
--------
>>> import numpy as np
>>> u = hash_uniform(0, np.arange(3), 7)          # seed 0, keys 0..2, stream 7
>>> bool(((u > 0) & (u < 1)).all()), bool((u == hash_uniform(0, np.arange(3), 7)).all())
(True, True)
>>> hash_uniform_rows(0, np.array([5, 6]), stream=1, width=4).shape
(2, 4)
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtri

__all__ = ["hash_keys", "hash_normal", "hash_uniform", "hash_uniform_rows", "splitmix64"]

#: splitmix64's first and second finaliser multipliers.
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
#: 2**64 / golden ratio, splitmix64's increment.
_GOLD = np.uint64(0x9E3779B97F4A7C15)
#: Start value of :func:`hash_keys`.
_HASH_START = np.uint64(0x2545F4914F6CDD1D)


def splitmix64(z: np.ndarray | np.uint64) -> np.ndarray | np.uint64:
    """The splitmix64 finaliser of ``uint64`` values (wrapping arithmetic).

    ``z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27; z *= 0x94D049BB133111EB;
    z ^= z >> 31``. A bijection of 64-bit integers in which every input bit
    affects every output bit.

    Parameters
    ----------
    z : numpy.ndarray or numpy.uint64
        ``uint64`` values (any shape).

    Returns
    -------
    numpy.ndarray
        ``uint64`` of the same shape (a scalar for a scalar); the input is
        not modified.

    Examples
    --------
    >>> import numpy as np
    >>> hex(int(splitmix64(np.uint64(1))))
    '0x5692161d100b05e5'
    >>> splitmix64(np.zeros(2, np.uint64)).tolist()     # 0 is a fixed point
    [0, 0]
    """
    z = np.asarray(z)
    if z.dtype != np.uint64:
        raise ValueError(f"splitmix64: z must be uint64, got {z.dtype}")
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def hash_keys(*keys: int | np.ndarray) -> np.ndarray | np.uint64:
    """Hash integer keys (scalars or broadcastable arrays) to ``uint64``.

    Starting from a fixed value ``h``, each key ``k`` (as int64, reinterpreted
    as uint64) is folded in as ``h = splitmix64(h ^ (k + GOLD + (h << 6) + (h >> 2)))``,
    so the result depends on every key and on their order.

    Parameters
    ----------
    *keys : int or numpy.ndarray
        Integer keys; arrays broadcast against each other. Floats are
        truncated to integers, so pass integers.

    Returns
    -------
    numpy.ndarray
        ``uint64`` of the broadcast shape of the keys (a ``numpy.uint64``
        scalar when every key is a scalar).

    Examples
    --------
    >>> import numpy as np
    >>> h = hash_keys(0, np.arange(3)[:, None], np.arange(2))
    >>> h.shape, h.dtype
    ((3, 2), dtype('uint64'))
    >>> bool(hash_keys(1, 2) != hash_keys(2, 1))
    True
    """
    h = _HASH_START
    with np.errstate(over="ignore"):
        for k in keys:
            k = np.asarray(k).astype(np.int64).astype(np.uint64)
            h = splitmix64(h ^ (k + _GOLD + (h << np.uint64(6)) + (h >> np.uint64(2))))
    return h


def hash_uniform(*keys: int | np.ndarray) -> np.ndarray:
    """Uniform(0, 1) float64 numbers that depend only on integer keys.

    The top 53 bits of :func:`hash_keys` plus one half, over ``2**53``: values
    lie strictly inside ``(0, 1)``, so :func:`hash_normal` stays finite.

    Parameters
    ----------
    *keys : int or numpy.ndarray
        As :func:`hash_keys`.

    Returns
    -------
    numpy.ndarray
        float64 of the broadcast shape of the keys.

    Examples
    --------
    >>> import numpy as np
    >>> u = hash_uniform(0, np.arange(4), 7)
    >>> bool(((u > 0) & (u < 1)).all()), bool((u == hash_uniform(0, np.arange(4), 7)).all())
    (True, True)
    """
    return ((hash_keys(*keys) >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def hash_normal(*keys: int | np.ndarray) -> np.ndarray:
    """Standard normal float64 numbers that depend only on integer keys.

    The normal quantile (``scipy.special.ndtri``) of :func:`hash_uniform`.

    Examples
    --------
    >>> import numpy as np
    >>> z = hash_normal(3, np.arange(100_000))
    >>> round(float(z.mean()), 2), round(float(z.std()), 2)
    (0.0, 1.0)
    """
    return ndtri(hash_uniform(*keys))


def hash_uniform_rows(seed: int, ids: np.ndarray, stream: int, width: int) -> np.ndarray:
    """A ``(len(ids), width)`` float32 table of uniforms in ``[0, 1)``, one row per id.

    Value ``[i, j]`` is ``splitmix64(ids[i] * GOLD + j * M1 + c) >> 40`` over
    ``2**24``, with ``c = (seed * 1_000_003 + stream * 7919) mod 2**63``: it
    depends only on ``(seed, ids[i], stream, j)``, so an id gets the same row
    whichever batch it is in. ``stream`` separates independent uses of one
    seed (the encoder draws S2 dates from stream 0 and S1 dates from stream 1).

    Parameters
    ----------
    seed : int
        Seed.
    ids : numpy.ndarray
        Non-negative integer ids ``(n,)`` (e.g. global pixel indices).
    stream : int
        Stream number.
    width : int
        Uniforms per id (≥ 0).

    Returns
    -------
    numpy.ndarray
        float32 ``(n, width)`` on the grid ``k / 2**24``.

    Examples
    --------
    >>> import numpy as np
    >>> u = hash_uniform_rows(0, np.arange(3), stream=0, width=5)
    >>> u.shape, u.dtype, bool(((u >= 0) & (u < 1)).all())
    ((3, 5), dtype('float32'), True)
    >>> bool((hash_uniform_rows(0, np.array([2]), 0, 5) == u[2]).all())   # batch-independent
    True
    """
    if int(width) < 0:
        raise ValueError(f"hash_uniform_rows: width must be ≥ 0, got {width}")
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"hash_uniform_rows: ids must be one-dimensional, got shape {ids.shape}")
    with np.errstate(over="ignore"):
        x = (
            ids.astype(np.uint64)[:, None] * _GOLD
            + np.arange(int(width), dtype=np.uint64)[None, :] * _M1
            + np.uint64((int(seed) * 1_000_003 + int(stream) * 7919) % (1 << 63))
        )
    return (splitmix64(x) >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / (1 << 24))
