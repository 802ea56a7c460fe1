"""Compiled inner loops of the simulator (numba), bit for bit the numpy they replace.

Each kernel performs the same IEEE-754 double operations, in the same order,
as the numpy expression it stands for, so the simulator's values do not
change by one bit (``tests/test_simulate_pinned.py`` pins them). The rules
that keep it so:

* only ``+ - * /``, comparisons and integer arithmetic run compiled;
  transcendental functions (``exp``, ``cos``, ``sin``, ``ndtri``) stay numpy
  or scipy calls on whole arrays, since a compiled ``exp`` is another
  implementation that may round differently;
* no ``fastmath``: the compiler may neither reassociate nor contract a
  multiply and an add into one fused multiply-add (numba's default; the
  kernels contain no FMA instruction);
* a sum keeps its order: a running sum starts from ``0.0`` and adds the
  terms one by one, as ``out += term`` does.

Kernels are compiled on first use and cached on disk (``cache=True``), as
:mod:`fungi_ssl.mapmodel`'s tree walk is.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

__all__ = ["fourier_grid", "fourier_grid_sum", "fourier_points", "key_uniforms", "pheno_arguments", "sentinel1_date", "sentinel2_date"]


def _fourier_grid_sum(cy, cx, sy, sx, amp, out):  # pragma: no cover - jitted
    """``out[b, i, j] = amp * sum_k (cy[k,b,i] cx[k,b,j] - sy[k,b,i] sx[k,b,j])``, summed in k order."""
    n_k, n_b, n_h = cy.shape
    n_w = cx.shape[2]
    row = np.empty(n_w)
    for b in range(n_b):
        for i in range(n_h):
            for j in range(n_w):
                row[j] = 0.0
            for k in range(n_k):
                c = cy[k, b, i]
                s = sy[k, b, i]
                for j in range(n_w):
                    row[j] += c * cx[k, b, j] - s * sx[k, b, j]
            for j in range(n_w):
                out[b, i, j] = row[j] * amp


def _fourier_points_sum(cy, cx, sy, sx, amp, out):  # pragma: no cover - jitted
    """``out[p] = amp * sum_k (cy[k,p] cx[k,p] - sy[k,p] sx[k,p])``, summed in k order."""
    n_k, n_p = cy.shape
    for p in range(n_p):
        acc = 0.0
        for k in range(n_k):
            acc += cy[k, p] * cx[k, p] - sy[k, p] * sx[k, p]
        out[p] = acc * amp


_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(z):  # pragma: no cover - jitted
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _fold(h, k):  # pragma: no cover - jitted
    """One key of ``sensors._key_uniform``: ``splitmix64(h ^ (k + GOLD + (h << 6)))``."""
    return _splitmix64(h ^ (k + _GOLD + (h << np.uint64(6))))


def _key_uniforms(h_year, date_key, u):  # pragma: no cover - jitted
    """``u[i - 1, p]`` = ``sensors._key_uniform(keys, year, date_key, i)`` for i = 1, 2, 3.

    ``h_year`` is the pixel key with the year already folded in.
    """
    for p in range(h_year.shape[0]):
        h = _fold(h_year[p], np.uint64(date_key))
        for i in range(3):
            v = _fold(h, np.uint64(i + 1))
            u[i, p] = (np.float64(v >> np.uint64(11)) + 0.5) / 9007199254740992.0  # 2**53


def _pheno_arguments(doy, hw, t, sos_t, eos_t, sos_g, eos_g, out):  # pragma: no cover - jitted
    """The four ``exp`` arguments of ``sensors._pheno`` (tree rise, fall; ground rise, fall)."""
    for p in range(sos_t.shape[0]):
        d = doy[p // hw, t]
        out[0, p] = -(d - sos_t[p]) / 8.0
        out[1, p] = -(d - eos_t[p]) / 10.0
        out[2, p] = -(d - sos_g[p]) / 8.0
        out[3, p] = -(d - eos_g[p]) / 10.0


def _clip(x, lo, hi):  # pragma: no cover - jitted
    """``numpy.clip`` of a number that is not NaN."""
    if x < lo:  # noqa: PLR1730 (the comparison numpy.clip makes, spelled out)
        x = lo
    if x > hi:  # noqa: PLR1730
        x = hi
    return x


def _pheno(e_rise, e_fall, gmin, gdiff):  # pragma: no cover - jitted
    """``sensors._pheno`` from its two ``exp`` values."""
    rise = 1.0 / (1.0 + e_rise)
    fall = 1.0 / (1.0 + e_fall)
    return gmin + gdiff * _clip(rise - fall, 0.0, 1.0)


def _sentinel2_date(doy, hw, t, e, normals, u, cf, cs, anomaly, theta, theta_thin,
                    drought, c, stand_depth, gmin_t, gdiff_t, gmin_g, gdiff_g,
                    green_t, off_t, green_g, off_g, gain, stand_gain, tilt_load,
                    haze_add, cloud_colour, s2, s2_valid):  # pragma: no cover - jitted
    """One Sentinel-2 date of every pixel: ``sensors.sentinel_observations``'s loop body."""
    n_bands = s2.shape[0]
    for p in range(c.shape[0]):
        d = doy[p // hw, t]
        dry = drought[p] and d >= 170.0 and d <= 250.0
        gt = _pheno(e[0, p], e[1, p], gmin_t[p], gdiff_t[p]) * (0.93 if dry else 1.0)
        gg = _pheno(e[2, p], e[3, p], gmin_g[p], gdiff_g[p]) * (0.8 if dry else 1.0)
        gt = _clip(gt * stand_depth[p], 0.0, 1.0)
        gg = _clip(gg * stand_depth[p], 0.0, 1.0)
        n1, n2 = normals[0, p], normals[1, p]
        u2, u3 = u[1, p], u[2, p]
        level = cf[p] + anomaly[p]
        cloudy = level > theta[p]
        thin = 1.0 if (not cloudy and level > theta_thin[p]) else 0.0
        shadow = not cloudy and cs[p] + anomaly[p] > theta[p]
        hazy = 1.0 if u3 < 0.06 else 0.0
        cp = c[p]
        for b in range(n_bands):
            if cloudy:
                refl = (4800.0 + 1400.0 * n1) * cloud_colour[b]
            else:
                refl = (cp * (gt * green_t[p, b] + (1 - gt) * off_t[p, b]) * gain[p, b]
                        + (1 - cp) * (gg * green_g[p, b] + (1 - gg) * off_g[p, b]))
                refl = refl * stand_gain[p, b]
                refl = refl * (1.0 + 0.035 * n1 + 0.025 * n2 * tilt_load[b])
                refl = refl + hazy * haze_add[b] * (0.5 + u3 / 0.12)
                refl = refl + thin * haze_add[b] * (2.0 + 4.0 * u3)
                if shadow:
                    refl = refl * (0.35 + 0.2 * u2)
            s2[b, p] = np.float32(_clip(refl, 1.0, 15000.0))
        s2_valid[p] = not cloudy


def _sentinel1_date(doy, hw, t, e, normals, u, moist, orbit, c, biomass, broadish,
                    cropland, open_veg, gmin_t, gdiff_t, ground_vv, ground_vh,
                    wood_vv, wood_vh, s1, s1_valid):  # pragma: no cover - jitted
    """One Sentinel-1 date of every pixel: ``sensors.sentinel_observations``'s loop body."""
    for p in range(c.shape[0]):
        leaf = c[p] * _pheno(e[0, p], e[1, p], gmin_t[p], gdiff_t[p]) * broadish[p]
        crop = cropland[p] * _pheno(e[2, p], e[3, p], 0.0, 1.0)
        bm = biomass[p]
        wet = (1.0 - bm) * 1.6 * moist[p] * open_veg[p]
        vv = ((1 - bm) * ground_vv[p] + bm * wood_vv + wet + orbit + 1.5 * crop
              + 1.3 * normals[0, p])
        vh = ((1 - bm) * ground_vh[p] + bm * wood_vh + 0.8 * wet + orbit + 0.8 * leaf
              + 2.0 * crop + 1.3 * normals[1, p])
        s1[0, p] = np.float32(vv)
        s1[1, p] = np.float32(vh)
        s1_valid[p] = u[2, p] > 0.03


_KERNELS: dict[str, Any] = {}


#: Functions the kernels call, compiled (in place of the Python ones) before any kernel.
_CALLED = ("_splitmix64", "_fold", "_clip", "_pheno")


_JIT_LOCK = threading.Lock()  # a cube may first be simulated in a background thread


def _jit(name: str, func: Any) -> Any:
    kernel = _KERNELS.get(name)
    if kernel is None:
        import numba

        with _JIT_LOCK:
            g = globals()
            for called in _CALLED:
                if not isinstance(g[called], numba.core.dispatcher.Dispatcher):
                    g[called] = numba.njit(cache=True)(g[called])
            kernel = _KERNELS.setdefault(name, numba.njit(nogil=True, cache=True)(func))
    return kernel


def fourier_grid(w: np.ndarray, phi: np.ndarray, amp: float, xs: np.ndarray,
                 ys: np.ndarray) -> np.ndarray:
    """A random Fourier field on ``B`` separable grids, ``(B, H, W)`` float64.

    The value of :meth:`fungi_ssl.simulate.landscape.GaussianField.grid`
    (``amp * sum_k cos(wy_k y) cos(wx_k x + phi_k) - sin(wy_k y) sin(wx_k x + phi_k)``),
    with every feature's cosines and sines taken in one numpy call and the
    sum over features compiled.

    Parameters
    ----------
    w : numpy.ndarray
        ``(K, 2)`` frequencies ``(wx, wy)``.
    phi : numpy.ndarray
        ``(K,)`` phases.
    amp : float
        Amplitude ``sqrt(2 / K)``.
    xs, ys : numpy.ndarray
        ``(B, W)`` and ``(B, H)`` coordinates.

    Examples
    --------
    >>> w, phi = np.array([[0.1, 0.2]]), np.array([0.3])
    >>> g = fourier_grid(w, phi, 1.0, np.array([[0.0, 1.0]]), np.array([[2.0]]))
    >>> bool(np.isclose(g[0, 0, 1], np.cos(0.1 + 0.3 + 0.4)))
    True
    """
    xs = np.asarray(xs, dtype=np.float64)
    ys = np.asarray(ys, dtype=np.float64)
    ax = w[:, 0][:, None, None] * xs[None] + phi[:, None, None]   # (K, B, W)
    ay = w[:, 1][:, None, None] * ys[None]                        # (K, B, H)
    return fourier_grid_sum(np.cos(ay), np.cos(ax), np.sin(ay), np.sin(ax), amp)


def fourier_grid_sum(cy: np.ndarray, cx: np.ndarray, sy: np.ndarray, sx: np.ndarray,
                     amp: float) -> np.ndarray:
    """:func:`fourier_grid` from its features' cosines and sines.

    ``cy``, ``sy`` are ``(K, B, H)`` (``cos``, ``sin`` of ``wy y``), ``cx``,
    ``sx`` are ``(K, B, W)`` (of ``wx x + phi``); returns ``(B, H, W)``.
    """
    out = np.empty((cx.shape[1], cy.shape[2], cx.shape[2]))
    _jit("fourier_grid", _fourier_grid_sum)(cy, cx, sy, sx, float(amp), out)
    return out


#: Points whose features' cosines are held at once by :func:`fourier_points`.
_POINTS_AT_ONCE = 8192


def fourier_points(w: np.ndarray, phi: np.ndarray, amp: float, x: np.ndarray,
                   y: np.ndarray) -> np.ndarray:
    """A random Fourier field at scattered points (the shape of ``x``), float64.

    The value of :meth:`fungi_ssl.simulate.landscape.GaussianField.points`,
    with the features' cosines and sines taken in one numpy call per block of
    points and the sum over features compiled.

    Examples
    --------
    >>> w, phi = np.array([[0.1, 0.2]]), np.array([0.3])
    >>> v = fourier_points(w, phi, 1.0, np.array([1.0]), np.array([2.0]))
    >>> bool(np.isclose(v[0], np.cos(0.1 + 0.3 + 0.4)))
    True
    """
    x, y = np.broadcast_arrays(np.asarray(x, float), np.asarray(y, float))
    shape = x.shape
    x, y = x.reshape(-1), y.reshape(-1)
    out = np.empty(x.shape[0])
    kernel = _jit("fourier_points", _fourier_points_sum)
    wx, wy, ph = w[:, 0][:, None], w[:, 1][:, None], phi[:, None]
    for a in range(0, x.shape[0], _POINTS_AT_ONCE):
        xb, yb = x[a:a + _POINTS_AT_ONCE], y[a:a + _POINTS_AT_ONCE]
        ax = wx * xb[None] + ph
        ay = wy * yb[None]
        kernel(np.cos(ay), np.cos(ax), np.sin(ay), np.sin(ax), float(amp), out[a:a + xb.shape[0]])
    return out.reshape(shape)


def key_uniforms(h_year: np.ndarray, date_key: int) -> np.ndarray:
    """``(3, N)`` uniforms of one date: ``sensors._key_uniform(keys, year, date_key, i)``, i = 1, 2, 3.

    ``h_year`` (``(N,)`` uint64) is each pixel key with its year folded in,
    which every date shares.
    """
    u = np.empty((3, h_year.shape[0]))
    _jit("key_uniforms", _key_uniforms)(h_year, int(date_key), u)
    return u


def pheno_arguments(doy: np.ndarray, hw: int, t: int, sos_t: np.ndarray, eos_t: np.ndarray,
                    sos_g: np.ndarray, eos_g: np.ndarray) -> np.ndarray:
    """``(4, N)`` arguments of the ``exp`` calls of one date's tree and ground phenology.

    ``doy`` is ``(B, T)`` float64 (pixel ``p`` belongs to grid ``p // hw``).
    """
    out = np.empty((4, sos_t.shape[0]))
    _jit("pheno_arguments", _pheno_arguments)(doy, int(hw), int(t), sos_t, eos_t, sos_g, eos_g,
                                               out)
    return out


def sentinel2_date(*args: Any) -> None:
    """Run the compiled body of one Sentinel-2 date (arguments as ``_sentinel2_date``)."""
    _jit("sentinel2_date", _sentinel2_date)(*args)


def sentinel1_date(*args: Any) -> None:
    """Run the compiled body of one Sentinel-1 date (arguments as ``_sentinel1_date``)."""
    _jit("sentinel1_date", _sentinel1_date)(*args)
