"""Tests of the counter-based random numbers in fungi_ssl.core.hashing.

The expected values below were computed with the implementations that
``simulate`` (``_mix``, ``_hash``, ``hash_uniform``, ``hash_normal``) and
``encoder`` (``_hash_uniform``) had before they moved here: cached
simulations and embeddings depend on them, so they must not change by a bit.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fungi_ssl.core.hashing import (
    hash_keys,
    hash_normal,
    hash_uniform,
    hash_uniform_rows,
    splitmix64,
)


def test_splitmix64_reference_values():
    z = np.array([0, 1, 2, 2**63, 2**64 - 1], np.uint64)
    expected = [0x0, 0x5692161D100B05E5, 0xDBD238973A2B148A, 0x25C26EA579CEA98A, 0xB4D055FCF2CBBD7B]
    assert [int(v) for v in splitmix64(z)] == expected
    assert isinstance(splitmix64(np.uint64(1)), np.uint64)
    z_copy = z.copy()
    splitmix64(z)
    np.testing.assert_array_equal(z, z_copy)  # input untouched
    with pytest.raises(ValueError, match="uint64"):
        splitmix64(np.arange(3))


def test_hash_keys_bit_for_bit_with_the_simulator_scheme():
    h = hash_keys(0, np.array([0, 1, 2, -3, 10**12]), 7)
    assert h.dtype == np.uint64
    assert [int(v) for v in h] == [
        0x9E7B0B60A7EA0E74, 0x41C1FDA2F3F3442E, 0x8F0885E926A1253D, 0xD738794852A8542B,
        0x5AEA5AE747186E28,
    ]
    assert isinstance(hash_keys(1, 2), np.uint64)  # scalars in, scalar out
    assert hash_keys(1, 2) != hash_keys(2, 1)       # order matters
    assert hash_keys(0, 1) != hash_keys(0, 1, 0)    # so does the number of keys


def test_hash_uniform_and_normal_bit_for_bit():
    u = hash_uniform(4, 301, np.array([0, 1, 2]), 5)
    assert [float(v).hex() for v in u] == [
        "0x1.08be31b92f702p-1", "0x1.e18eb7ba5bbe6p-3", "0x1.83d8091efe748p-1",
    ]
    z = hash_normal(4, 411, np.array([0, 1, 2]))
    ref = [float.fromhex(s) for s in
           ("-0x1.6e1b2bbf6835bp+1", "0x1.1f4f92e7e9aa0p+0", "0x1.b3519cd1283ccp-3")]
    np.testing.assert_allclose(z, ref, rtol=1e-14)  # ndtri may differ in the last ulp


def test_hash_uniform_rows_bit_for_bit_with_the_encoder_scheme():
    u = hash_uniform_rows(3, np.array([0, 1, 10**9]), stream=1, width=4)
    assert u.dtype == np.float32 and u.shape == (3, 4)
    ticks = (u.astype(np.float64) * (1 << 24)).astype(np.int64).tolist()
    assert ticks == [
        [7950088, 2908751, 3018561, 604888],
        [3100613, 169421, 5289675, 11402698],
        [9699099, 6428277, 12424537, 10445118],
    ]
    assert np.array_equal(u, ticks / np.float32(1 << 24))  # exactly on the 2**-24 grid


def test_values_depend_only_on_their_keys():
    ids = np.arange(1000)
    whole = hash_uniform_rows(5, ids, 0, 20)
    parts = np.concatenate([hash_uniform_rows(5, ids[a:a + 137], 0, 20) for a in range(0, 1000, 137)])
    np.testing.assert_array_equal(whole, parts)
    np.testing.assert_array_equal(hash_uniform_rows(5, ids[::-1], 0, 20), whole[::-1])
    np.testing.assert_array_equal(hash_uniform(1, ids)[500:], hash_uniform(1, ids[500:]))


def test_uniforms_are_uniform_and_streams_independent():
    n = 200_000
    u = hash_uniform(11, np.arange(n))
    assert 0 < u.min() and u.max() < 1
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    r = hash_uniform_rows(11, np.arange(n // 20), 0, 20).ravel()
    assert r.min() >= 0 and r.max() < 1
    assert stats.kstest(r, "uniform").pvalue > 1e-3
    # neighbouring keys, seeds and streams are uncorrelated (|r| < 5 / sqrt(n))
    tol = 5 / np.sqrt(n)
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < tol
    assert abs(np.corrcoef(u, hash_uniform(12, np.arange(n)))[0, 1]) < tol
    a = hash_uniform_rows(11, np.arange(n // 20), 0, 20).ravel()
    b = hash_uniform_rows(11, np.arange(n // 20), 1, 20).ravel()
    assert abs(np.corrcoef(a, b)[0, 1]) < tol
    z = hash_normal(11, np.arange(n))
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02 and np.isfinite(z).all()


def test_hash_uniform_rows_rejects_bad_input():
    with pytest.raises(ValueError, match="width"):
        hash_uniform_rows(0, np.arange(3), 0, -1)
    with pytest.raises(ValueError, match="one-dimensional"):
        hash_uniform_rows(0, np.zeros((2, 2), np.int64), 0, 3)
    assert hash_uniform_rows(0, np.arange(3), 0, 0).shape == (3, 0)
