"""What the encoder reads: pixel time series of a satellite cube, normalised, with timesteps drawn.

:func:`check_cube` checks a cube's layout, :class:`PixelTimeSeries` holds the
pixels' Sentinel-2 and Sentinel-1 observations, :class:`BandNormaliser`
standardises the bands and :func:`sample_timesteps` draws ``T`` valid timesteps
per pixel, as TESSERA's "d-pixel" sampling does (:mod:`fungi_ssl.embeddings.encoder`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

#: Sentinel-2 bands in TESSERA's order.
S2_BANDS: tuple[str, ...] = ("B4", "B2", "B3", "B8", "B8A", "B5", "B6", "B7", "B11", "B12")
#: Sentinel-1 polarisations in TESSERA's order.
S1_BANDS: tuple[str, ...] = ("VV", "VH")


_CUBE_DIMS = {
    "s2": ("time_s2", "band_s2", "y", "x"),
    "s2_valid": ("time_s2", "y", "x"),
    "s1": ("time_s1", "band_s1", "y", "x"),
    "s1_valid": ("time_s1", "y", "x"),
}


# --------------------------------------------------------------------------
# pixel time series
# --------------------------------------------------------------------------


def _check_bands(ds: Any, coord: str, expected: tuple[str, ...]) -> None:
    if coord not in ds.coords:
        raise ValueError(
            f"cube has no '{coord}' coordinate; expected band names {list(expected)}"
        )
    got = [str(b) for b in np.asarray(ds[coord].values)]
    missing = [b for b in expected if b not in got]
    if missing:
        raise ValueError(
            f"cube coordinate '{coord}' is missing band(s) {missing}; "
            f"expected {list(expected)} (TESSERA order), got {got}"
        )
    if got != list(expected):
        raise ValueError(
            f"cube coordinate '{coord}' has bands {got}; expected exactly "
            f"{list(expected)} in TESSERA order"
        )


def example_cube(ny: int = 4, nx: int = 5, seed: int = 0) -> Any:
    """A small random cube in the CONTRIBUTING.md format (6 S2 dates, 5 S1 dates, UTM 30N).

    For examples and tests of the functions that take a cube; its values mean nothing.

    Examples
    --------
    >>> cube = example_cube()
    >>> check_cube(cube)
    >>> dict(cube.sizes)["y"], dict(cube.sizes)["x"], cube.rio.crs.to_epsg()
    (4, 5, 32630)
    """
    import rioxarray  # noqa: F401  (registers the .rio accessor)
    import xarray as xr

    rng = np.random.default_rng(seed)
    return xr.Dataset(
        {"s2": (("time_s2", "band_s2", "y", "x"), rng.random((6, 10, ny, nx), np.float32)),
         "s2_valid": (("time_s2", "y", "x"), np.ones((6, ny, nx), bool)),
         "s1": (("time_s1", "band_s1", "y", "x"), rng.random((5, 2, ny, nx), np.float32)),
         "s1_valid": (("time_s1", "y", "x"), np.ones((5, ny, nx), bool))},
        coords={"band_s2": list(S2_BANDS), "band_s1": list(S1_BANDS),
                "doy_s2": ("time_s2", np.arange(6) * 60 + 1),
                "doy_s1": ("time_s1", np.arange(5) * 70 + 1),
                "y": 6e6 - 10 * np.arange(ny) - 5, "x": 5e5 + 10 * np.arange(nx) + 5},
    ).rio.write_crs(32630)


def check_cube(ds: Any) -> None:
    """Check that a Dataset is a satellite cube in the CONTRIBUTING.md format.

    Raises a ``ValueError`` naming the variable, dimension, band or coordinate
    that is missing or out of order.

    Examples
    --------
    >>> import xarray as xr
    >>> try:
    ...     check_cube(xr.Dataset())
    ... except ValueError as err:
    ...     print(str(err)[:25])
    cube is missing variable(
    """
    missing = [v for v in _CUBE_DIMS if v not in ds.data_vars]
    if missing:
        raise ValueError(
            f"cube is missing variable(s) {missing}; expected {list(_CUBE_DIMS)}"
        )
    for var, dims in _CUBE_DIMS.items():
        if tuple(ds[var].dims) != dims:
            raise ValueError(
                f"cube variable '{var}' has dims {tuple(ds[var].dims)}; expected {dims}"
            )
    for coord, dim in (("doy_s2", "time_s2"), ("doy_s1", "time_s1")):
        if coord not in ds.coords or ds[coord].dims != (dim,):
            raise ValueError(f"cube needs a day-of-year coordinate '{coord}' along '{dim}'")
    _check_bands(ds, "band_s2", S2_BANDS)
    _check_bands(ds, "band_s1", S1_BANDS)


@dataclass
class PixelTimeSeries:
    """A set of pixels' yearly Sentinel-2 and Sentinel-1 time series.

    Attributes
    ----------
    s2 : numpy.ndarray
        ``(n, T2, 10)`` float32 reflectance × 10,000, bands in :data:`S2_BANDS` order.
    s2_valid : numpy.ndarray
        ``(n, T2)`` bool, False where cloud or shadow.
    s2_doy : numpy.ndarray
        ``(n, T2)`` day of year (1–366) of each S2 date.
    s1 : numpy.ndarray
        ``(n, T1, 2)`` float32 backscatter in dB, bands ``VV VH``.
    s1_valid, s1_doy : numpy.ndarray
        ``(n, T1)`` validity and day of year of each S1 date.

    Examples
    --------
    >>> import numpy as np
    >>> p = PixelTimeSeries(
    ...     s2=np.zeros((4, 3, 10), np.float32), s2_valid=np.ones((4, 3), bool),
    ...     s2_doy=np.tile([10, 20, 30], (4, 1)), s1=np.zeros((4, 2, 2), np.float32),
    ...     s1_valid=np.ones((4, 2), bool), s1_doy=np.tile([5, 15], (4, 1)))
    >>> len(p), len(p[1:3])
    (4, 2)
    """

    s2: np.ndarray
    s2_valid: np.ndarray
    s2_doy: np.ndarray
    s1: np.ndarray
    s1_valid: np.ndarray
    s1_doy: np.ndarray

    def __post_init__(self) -> None:
        self.s2 = np.asarray(self.s2, dtype=np.float32)
        self.s1 = np.asarray(self.s1, dtype=np.float32)
        self.s2_valid = np.asarray(self.s2_valid, dtype=bool)
        self.s1_valid = np.asarray(self.s1_valid, dtype=bool)
        self.s2_doy = np.asarray(self.s2_doy, dtype=np.float32)
        self.s1_doy = np.asarray(self.s1_doy, dtype=np.float32)
        for name, arr, nb in (("s2", self.s2, len(S2_BANDS)), ("s1", self.s1, len(S1_BANDS))):
            if arr.ndim != 3 or arr.shape[2] != nb:
                raise ValueError(f"PixelTimeSeries.{name} must be (n, T, {nb}), got {arr.shape}")
            for suffix in ("valid", "doy"):
                other = getattr(self, f"{name}_{suffix}")
                if other.shape != arr.shape[:2]:
                    raise ValueError(
                        f"PixelTimeSeries.{name}_{suffix} must be {arr.shape[:2]}, "
                        f"got {other.shape}"
                    )
        if self.s1.shape[0] != self.s2.shape[0]:
            raise ValueError(
                f"PixelTimeSeries: s2 has {self.s2.shape[0]} pixels but s1 has {self.s1.shape[0]}"
            )

    def __len__(self) -> int:
        return int(self.s2.shape[0])

    def __getitem__(self, index: Any) -> PixelTimeSeries:
        if isinstance(index, (int, np.integer)):
            index = slice(int(index), int(index) + 1)
        return PixelTimeSeries(
            **{f.name: getattr(self, f.name)[index] for f in fields(self)}
        )

    @classmethod
    def from_cube(cls, ds: Any) -> PixelTimeSeries:
        """Flatten a cube Dataset to pixels, in row-major ``(y, x)`` order.

        Pixel ``i`` is ``(y index i // nx, x index i % nx)``. Dask-backed cubes
        are computed here, so pass a window, not a whole region.

        Examples
        --------
        >>> import numpy as np, xarray as xr
        >>> ds = xr.Dataset(
        ...     {"s2": (("time_s2", "band_s2", "y", "x"), np.zeros((3, 10, 2, 2), np.float32)),
        ...      "s2_valid": (("time_s2", "y", "x"), np.ones((3, 2, 2), bool)),
        ...      "s1": (("time_s1", "band_s1", "y", "x"), np.zeros((2, 2, 2, 2), np.float32)),
        ...      "s1_valid": (("time_s1", "y", "x"), np.ones((2, 2, 2), bool))},
        ...     coords={"band_s2": list(S2_BANDS), "band_s1": list(S1_BANDS),
        ...             "doy_s2": ("time_s2", [10, 20, 30]), "doy_s1": ("time_s1", [5, 15])})
        >>> PixelTimeSeries.from_cube(ds).s2.shape
        (4, 3, 10)
        """
        check_cube(ds)

        def flat(var: str) -> np.ndarray:
            # (t, b, y, x) -> (y, x, t, b) and (t, y, x) -> (y, x, t), made contiguous here:
            # torch's blocked, threaded transpose is about 1.7x numpy's strided copy, which
            # the encoder's batches would otherwise make one batch at a time
            a = np.asarray(ds[var].values)
            order = (2, 3, 0, 1) if a.ndim == 4 else (1, 2, 0)
            if a.dtype == np.bool_ or not a.flags.writeable:
                a = np.ascontiguousarray(a.transpose(order))
            else:
                a = torch.from_numpy(a).permute(order).contiguous().numpy()
            return a.reshape(-1, *a.shape[2:])

        s2, s2_valid = flat("s2"), flat("s2_valid")
        s1, s1_valid = flat("s1"), flat("s1_valid")
        n = s2.shape[0]
        doy2 = np.broadcast_to(np.asarray(ds["doy_s2"].values, np.float32), (n, s2.shape[1]))
        doy1 = np.broadcast_to(np.asarray(ds["doy_s1"].values, np.float32), (n, s1.shape[1]))
        return cls(s2, s2_valid, np.ascontiguousarray(doy2), s1, s1_valid, np.ascontiguousarray(doy1))

    def fingerprint(self) -> str:
        """sha256 (16 hex digits) of all arrays: a cache key for the training data.

        Examples
        --------
        >>> import numpy as np
        >>> p = PixelTimeSeries(np.zeros((1, 1, 10)), np.ones((1, 1)), np.ones((1, 1)),
        ...                     np.zeros((1, 1, 2)), np.ones((1, 1)), np.ones((1, 1)))
        >>> len(p.fingerprint())
        16
        """
        h = hashlib.sha256()
        for f in fields(self):
            a = np.ascontiguousarray(getattr(self, f.name))
            h.update(f"{f.name}{a.shape}{a.dtype}".encode())
            h.update(a.tobytes())
        return h.hexdigest()[:16]


# --------------------------------------------------------------------------
# normalisation
# --------------------------------------------------------------------------


@dataclass
class BandNormaliser:
    """Per-band mean and standard deviation of valid observations.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> p = PixelTimeSeries(rng.normal(5, 2, (50, 4, 10)), np.ones((50, 4)), np.ones((50, 4)),
    ...                     rng.normal(-10, 3, (50, 4, 2)), np.ones((50, 4)), np.ones((50, 4)))
    >>> norm = BandNormaliser.fit(p)
    >>> bool(abs(norm.s2_mean[0] - 5) < 0.3), bool(abs(norm.s1_std[0] - 3) < 0.3)
    (True, True)
    >>> BandNormaliser.from_dict(norm.to_dict()) == norm
    True
    """

    s2_mean: np.ndarray
    s2_std: np.ndarray
    s1_mean: np.ndarray
    s1_std: np.ndarray

    @classmethod
    def fit(cls, pixels: PixelTimeSeries) -> BandNormaliser:
        """Statistics from the valid observations of ``pixels`` only."""

        def stats(values: np.ndarray, valid: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
            obs = values[valid].astype(np.float64)
            if obs.shape[0] < 2:
                raise ValueError(
                    f"BandNormaliser.fit: fewer than 2 valid {name} observations in the pixels"
                )
            std = obs.std(axis=0)
            return obs.mean(axis=0).astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)

        m2, s2 = stats(pixels.s2, pixels.s2_valid, "S2")
        m1, s1 = stats(pixels.s1, pixels.s1_valid, "S1")
        return cls(m2, s2, m1, s1)

    def to_dict(self) -> dict[str, list[float]]:
        return {f.name: [float(v) for v in getattr(self, f.name)] for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, list[float]]) -> BandNormaliser:
        return cls(**{f.name: np.asarray(d[f.name], np.float32) for f in fields(cls)})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BandNormaliser) and all(
            np.array_equal(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)
        )

    def apply_s2(self, values: np.ndarray) -> np.ndarray:
        """Normalised copy of S2 values ``(..., 10)``."""
        return (np.asarray(values, np.float32) - self.s2_mean) / self.s2_std

    def apply_s1(self, values: np.ndarray) -> np.ndarray:
        """Normalised copy of S1 values ``(..., 2)``."""
        return (np.asarray(values, np.float32) - self.s1_mean) / self.s1_std


# --------------------------------------------------------------------------
# timestep sampling
# --------------------------------------------------------------------------


def sample_timesteps(
    values: torch.Tensor,
    valid: torch.Tensor,
    doy: torch.Tensor,
    n_timesteps: int,
    generator: torch.Generator | None = None,
    *,
    uniforms: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw ``n_timesteps`` of each pixel's valid observations, sorted in time.

    A pixel with at least ``n_timesteps`` valid observations gets a random
    subset without replacement; one with fewer gets draws with replacement
    from its valid observations. Vectorised over pixels.

    Parameters
    ----------
    values : torch.Tensor
        ``(n, T_all, B)`` observations, ordered in time.
    valid : torch.Tensor
        ``(n, T_all)`` bool.
    doy : torch.Tensor
        ``(n, T_all)`` day of year.
    n_timesteps : int
        ``T``, the number of timesteps drawn per pixel.
    generator : torch.Generator, optional
        Source of randomness (training).
    uniforms : (torch.Tensor, torch.Tensor), optional
        Precomputed uniforms in [0, 1) of shapes ``(n, T_all)`` and ``(n, T)``
        used instead of ``generator`` (per-pixel reproducible inference).

    Returns
    -------
    sampled : torch.Tensor
        ``(n, T, B)``.
    sampled_doy : torch.Tensor
        ``(n, T)``.
    empty : torch.Tensor
        ``(n,)`` bool, True for pixels with no valid observation (their
        ``sampled`` rows are meaningless and must be masked by the caller).

    Examples
    --------
    >>> import torch
    >>> v = torch.arange(6.).reshape(1, 6, 1)
    >>> ok = torch.tensor([[True, False, True, True, False, True]])
    >>> s, d, empty = sample_timesteps(v, ok, torch.arange(6.)[None], 4, torch.Generator().manual_seed(0))
    >>> s[0, :, 0].tolist(), bool(empty[0])
    ([0.0, 2.0, 3.0, 5.0], False)
    """
    if n_timesteps < 1:
        raise ValueError(f"n_timesteps must be ≥ 1, got {n_timesteps}")
    n, t_all = valid.shape
    if t_all == 0:
        raise ValueError("sample_timesteps: the time axis is empty")
    if uniforms is None:
        scores = torch.rand(n, t_all, generator=generator)
        draws = torch.rand(n, n_timesteps, generator=generator)
    else:
        scores, draws = uniforms
    valid = valid.bool()
    k = valid.sum(dim=1)
    empty = k == 0
    # valid time indices first, in time order (stable sort of the invalid flag)
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)
    # with replacement: ranks into the k valid observations, sorted
    ranks = (draws * k.clamp(min=1)[:, None].to(draws.dtype)).long()
    ranks = torch.minimum(ranks, (k - 1).clamp(min=0)[:, None])
    idx = order.gather(1, ranks.sort(dim=1).values)
    if n_timesteps <= t_all:
        # without replacement: the T lowest random scores among valid dates
        masked = torch.where(valid, scores, torch.full_like(scores, 2.0))
        subset = masked.topk(n_timesteps, dim=1, largest=False).indices.sort(dim=1).values
        idx = torch.where((k >= n_timesteps)[:, None], subset, idx)
    sampled = values.gather(1, idx[:, :, None].expand(-1, -1, values.shape[2]))
    return sampled, doy.gather(1, idx), empty


# --------------------------------------------------------------------------
