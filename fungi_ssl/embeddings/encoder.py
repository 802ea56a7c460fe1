"""TESSERA-style per-pixel self-supervised encoder (Barlow Twins).

The encoder follows the shape of TESSERA v1 (``ucam-eo/tessera``): each pixel's
year of Sentinel-2 and Sentinel-1 observations goes through two separate
branches. A branch

1. draws ``T`` timesteps at random from the pixel's *valid* (cloud-free,
   acquired) observations, sorted in time (with replacement when fewer than
   ``T`` are valid), as TESSERA's "d-pixel" sampling does;
2. embeds the bands with a small MLP (Linear-ReLU-Linear, as TESSERA) and adds
   a sinusoidal encoding of the day of year (TESSERA uses the Transformer's
   sinusoidal position code evaluated at the day of year);
3. runs a Transformer encoder over time;
4. pools over time with attention pooling (a learned linear query and a softmax
   over timesteps). TESSERA's release pools with a GRU-contextualised query
   ("temporal-aware pooling"); ``EncoderConfig(pooling="temporal")`` selects that.

The two pooled vectors are concatenated and a linear layer maps them to the
128-d embedding. Pre-training uses Barlow Twins (Zbontar et al. 2021): two
views of the same pixel are two independent random draws of its valid
observations, and a projector MLP plus the cross-correlation loss make the
embedding invariant to which dates were seen (clouds, acquisition gaps).

Missing data rule. A pixel with no valid S2 *and* no valid S1 observation gets
a NaN embedding and is counted. When only one sensor has no valid
observation, that branch's pooled vector is replaced by a learned "missing
sensor" vector; pre-training drops each sensor of each view with probability
``EncoderConfig.sensor_dropout`` so that this vector is trained and the
embedding stays meaningful from the other sensor alone.

Embeddings are stored as TESSERA stores them: int8 values with a float32
per-pixel scale, ``scale = max|x| / 127`` (:func:`quantise`). The inverse,
``dequantise``, is :func:`fungi_ssl.embeddings.tessera.dequantise` (the reader of
TESSERA's storage format), importable from here too.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from fungi_ssl.core.hashing import hash_uniform_rows
from fungi_ssl.embeddings.tessera import dequantise  # noqa: F401  (re-exported: the inverse of quantise)

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
            a = np.asarray(ds[var].values)
            if a.ndim == 4:  # (t, b, y, x) -> (y, x, t, b)
                a = a.transpose(2, 3, 0, 1)
                return a.reshape(-1, a.shape[2], a.shape[3])
            a = a.transpose(1, 2, 0)  # (t, y, x) -> (y, x, t)
            return a.reshape(-1, a.shape[2])

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
# model
# --------------------------------------------------------------------------


@dataclass
class EncoderConfig:
    """Size of a :class:`TesseraEncoder` and its pre-training head.

    The default is sized for the simulated signal and this 2-core CPU: it
    embeds ≥ 10,000 pixels/s (see ``benchmarks/bench_encoder.py``).
    :meth:`tessera_v1` gives TESSERA v1's size.

    Attributes
    ----------
    d_model : int
        Width of each branch's token embedding and Transformer.
    n_layers, n_heads, d_ff : int
        Transformer layers, attention heads and feed-forward width per branch.
    n_timesteps : int
        ``T``, timesteps drawn per pixel and sensor.
    embed_dim : int
        Output embedding size (128, as TESSERA).
    projector_dims : tuple of int
        Hidden and output widths of the Barlow Twins projector.
    dropout : float
        Dropout inside the Transformer during pre-training.
    pooling : str
        ``"attention"`` (linear query, softmax over time) or ``"temporal"``
        (GRU-contextualised query, TESSERA's release).
    sensor_dropout : float
        Probability that pre-training hides one sensor of a view, which
        trains the "missing sensor" vectors.

    Examples
    --------
    >>> EncoderConfig.tessera_v1().d_model
    512
    >>> EncoderConfig().embed_dim
    128
    """

    d_model: int = 32
    n_layers: int = 1
    n_heads: int = 2
    d_ff: int = 64
    n_timesteps: int = 16
    embed_dim: int = 128
    projector_dims: tuple[int, ...] = (256, 256)
    dropout: float = 0.0
    pooling: str = "attention"
    sensor_dropout: float = 0.05

    def __post_init__(self) -> None:
        self.projector_dims = tuple(int(d) for d in self.projector_dims)
        if self.d_model % self.n_heads:
            raise ValueError(
                f"EncoderConfig: d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.pooling not in ("attention", "temporal"):
            raise ValueError(f"EncoderConfig.pooling must be 'attention' or 'temporal', got {self.pooling!r}")
        for name in ("d_model", "n_layers", "n_heads", "d_ff", "n_timesteps", "embed_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"EncoderConfig.{name} must be ≥ 1, got {getattr(self, name)}")
        if not self.projector_dims:
            raise ValueError("EncoderConfig.projector_dims must name at least one layer")

    @classmethod
    def tessera_v1(cls) -> EncoderConfig:
        """TESSERA v1's size: d_model 512, 4 layers, 4 heads, feed-forward 4096, T = 40."""
        return cls(
            d_model=512, n_layers=4, n_heads=4, d_ff=4096, n_timesteps=40,
            projector_dims=(2048, 2048), dropout=0.1,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["projector_dims"] = list(self.projector_dims)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EncoderConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"EncoderConfig.from_dict: unknown field(s) {sorted(unknown)}")
        return cls(**d)


class DayOfYearEncoding(nn.Module):
    """Sinusoidal code of the day of year (Transformer position code at ``doy``)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        half = torch.arange(0, d_model, 2, dtype=torch.float32)
        self.register_buffer("inv_freq", torch.exp(half * (-math.log(10000.0) / d_model)))
        self.d_model = d_model

    def forward(self, doy: torch.Tensor) -> torch.Tensor:
        angle = doy.to(self.inv_freq.dtype)[..., None] * self.inv_freq
        pe = torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(-2)
        return pe[..., : self.d_model]


class AttentionPooling(nn.Module):
    """Softmax-weighted mean over time with a learned linear query."""

    def __init__(self, d_model: int, temporal: bool = False) -> None:
        super().__init__()
        self.query = nn.Linear(d_model, 1)
        self.context = nn.GRU(d_model, d_model, batch_first=True) if temporal else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ctx = self.context(x)[0] if self.context is not None else x
        w = torch.softmax(self.query(ctx), dim=1)
        return (w * x).sum(dim=1)


class SensorBranch(nn.Module):
    """Band embedding + day-of-year code + Transformer + attention pooling."""

    def __init__(self, n_bands: int, config: EncoderConfig) -> None:
        super().__init__()
        d = config.d_model
        self.band_embedding = nn.Sequential(nn.Linear(n_bands, d), nn.ReLU(), nn.Linear(d, d))
        self.doy_encoding = DayOfYearEncoding(d)
        layer = nn.TransformerEncoderLayer(
            d, config.n_heads, config.d_ff, config.dropout, activation="relu", batch_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)
        self.pool = AttentionPooling(d, temporal=config.pooling == "temporal")

    def forward(self, values: torch.Tensor, doy: torch.Tensor) -> torch.Tensor:
        x = self.band_embedding(values) + self.doy_encoding(doy).to(values.dtype)
        return self.pool(self.transformer(x))


class TesseraEncoder(nn.Module):
    """Two-branch (S2, S1) per-pixel encoder to a 128-d embedding.

    Inputs are *normalised*, already-sampled series; band statistics live in
    buffers (``s2_mean`` …) so a saved model carries its normaliser.

    Examples
    --------
    >>> import torch
    >>> m = TesseraEncoder(EncoderConfig()).eval()
    >>> z = m(torch.zeros(3, 16, 10), torch.ones(3, 16), torch.zeros(3, 16, 2), torch.ones(3, 16))
    >>> tuple(z.shape)
    (3, 128)
    """

    def __init__(self, config: EncoderConfig, normaliser: BandNormaliser | None = None) -> None:
        super().__init__()
        self.config = config
        self.s2_branch = SensorBranch(len(S2_BANDS), config)
        self.s1_branch = SensorBranch(len(S1_BANDS), config)
        self.s2_missing = nn.Parameter(torch.zeros(config.d_model))
        self.s1_missing = nn.Parameter(torch.zeros(config.d_model))
        self.to_embedding = nn.Linear(2 * config.d_model, config.embed_dim)
        norm = normaliser or BandNormaliser(
            np.zeros(len(S2_BANDS), np.float32), np.ones(len(S2_BANDS), np.float32),
            np.zeros(len(S1_BANDS), np.float32), np.ones(len(S1_BANDS), np.float32),
        )
        self.set_normaliser(norm)

    def set_normaliser(self, norm: BandNormaliser) -> None:
        for name in ("s2_mean", "s2_std", "s1_mean", "s1_std"):
            self.register_buffer(name, torch.as_tensor(np.asarray(getattr(norm, name), np.float32)))

    @property
    def normaliser(self) -> BandNormaliser:
        return BandNormaliser(
            *(getattr(self, n).detach().cpu().numpy().copy() for n in ("s2_mean", "s2_std", "s1_mean", "s1_std"))
        )

    def forward(
        self,
        s2: torch.Tensor,
        s2_doy: torch.Tensor,
        s1: torch.Tensor,
        s1_doy: torch.Tensor,
        s2_missing: torch.Tensor | None = None,
        s1_missing: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h2 = self.s2_branch(s2, s2_doy)
        h1 = self.s1_branch(s1, s1_doy)
        if s2_missing is not None:
            h2 = torch.where(s2_missing[:, None], self.s2_missing.to(h2.dtype), h2)
        if s1_missing is not None:
            h1 = torch.where(s1_missing[:, None], self.s1_missing.to(h1.dtype), h1)
        return self.to_embedding(torch.cat([h2, h1], dim=-1))

    def encode(
        self,
        s2: torch.Tensor,
        s2_valid: torch.Tensor,
        s2_doy: torch.Tensor,
        s1: torch.Tensor,
        s1_valid: torch.Tensor,
        s1_doy: torch.Tensor,
        n_timesteps: int | None = None,
        generator: torch.Generator | None = None,
        uniforms: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
        drop: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample, normalise and encode raw series; returns ``(z, no_data)``.

        ``no_data`` flags pixels with no valid observation from either sensor.
        ``drop`` optionally hides a sensor per pixel (sensor dropout).
        """
        T = n_timesteps or self.config.n_timesteps
        u = uniforms or {}
        x2, d2, e2 = sample_timesteps(s2, s2_valid, s2_doy, T, generator, uniforms=u.get("s2"))
        x1, d1, e1 = sample_timesteps(s1, s1_valid, s1_doy, T, generator, uniforms=u.get("s1"))
        x2 = (x2 - self.s2_mean) / self.s2_std
        x1 = (x1 - self.s1_mean) / self.s1_std
        m2, m1 = e2, e1
        if drop is not None:
            m2, m1 = e2 | drop[0], e1 | drop[1]
        z = self(x2, d2, x1, d1, m2, m1)
        return z, e2 & e1


class BarlowTwinsProjector(nn.Module):
    """Projector MLP: (Linear, BatchNorm, ReLU) × (L−1), then Linear.

    Examples
    --------
    >>> import torch
    >>> p = BarlowTwinsProjector(128, (64, 32))
    >>> tuple(p(torch.randn(5, 128)).shape)
    (5, 32)
    """

    def __init__(self, in_dim: int, dims: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_dim
        for d in dims[:-1]:
            layers += [nn.Linear(prev, d, bias=False), nn.BatchNorm1d(d), nn.ReLU(inplace=True)]
            prev = d
        layers.append(nn.Linear(prev, dims[-1], bias=False))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def barlow_twins_loss(
    z1: torch.Tensor, z2: torch.Tensor, lambd: float = 5e-3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Barlow Twins loss of two batches of projections.

    Each projection is standardised over the batch (biased std, as
    ``BatchNorm1d(affine=False)``); ``C = z1ᵀ z2 / N`` is their
    cross-correlation, and

    ``loss = Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²``.

    Returns
    -------
    total, on_diag, off_diag : torch.Tensor
        Scalars; ``off_diag`` is the unweighted Σ_{i≠j} C_ij².

    Examples
    --------
    >>> import torch
    >>> z = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    >>> total, on, off = barlow_twins_loss(z, z)
    >>> round(float(on), 6)
    0.0
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"barlow_twins_loss: z1 and z2 must be equal (N, D) shapes, got {tuple(z1.shape)}, {tuple(z2.shape)}")
    n = z1.shape[0]
    if n < 2:
        raise ValueError("barlow_twins_loss needs a batch of at least 2")

    def standardise(z: torch.Tensor) -> torch.Tensor:
        z = z.float()
        return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5)

    c = standardise(z1).T @ standardise(z2) / n
    diag = torch.diagonal(c)
    on = (diag - 1).pow(2).sum()
    off = c.pow(2).sum() - diag.pow(2).sum()
    return on + lambd * off, on, off


# --------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------


@dataclass
class TrainedEncoder:
    """A pre-trained encoder with what made it.

    Attributes
    ----------
    model : TesseraEncoder
        In eval mode; carries its band normaliser.
    config : EncoderConfig
    normaliser : BandNormaliser
    steps, batch_size, seed : int
    meta : dict
        Anything else worth recording (data fingerprint, lr, …).
    """

    model: TesseraEncoder
    config: EncoderConfig
    normaliser: BandNormaliser
    steps: int = 0
    batch_size: int = 0
    seed: int = 0
    meta: dict[str, Any] = field(default_factory=dict)


#: Environment variable fixing the torch threads of training and embedding.
TORCH_THREADS_ENV = "FUNGI_SSL_TORCH_THREADS"
#: Most intra-op threads the book's small encoder gains from.
MAX_TORCH_THREADS = 2


def free_cores(cap: int = MAX_TORCH_THREADS) -> int:
    """Cores this process can use that other work is not already using, at most ``cap``.

    The cores allowed to the process (its CPU affinity) less the one-minute
    load average, rounded, never below one. Intra-op threads wait for each
    other at every operation, so a thread on a busy core slows all of them:
    on a 2-core machine with one core taken, two torch threads ran chapter 02
    three times slower than one. ``FUNGI_SSL_TORCH_THREADS`` overrides it.

    Examples
    --------
    >>> 1 <= free_cores() <= MAX_TORCH_THREADS
    True
    """
    fixed = os.environ.get(TORCH_THREADS_ENV)
    if fixed:
        try:
            return max(1, int(fixed))
        except ValueError:
            raise ValueError(
                f"{TORCH_THREADS_ENV}={fixed!r}: expected a whole number of threads") from None
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        busy = int(os.getloadavg()[0] + 0.5)
    except (AttributeError, OSError):
        busy = 0
    return max(1, min(cap, cores - busy))


@contextlib.contextmanager
def torch_threads(n: int | None = None) -> Iterator[int]:
    """Run torch with ``n`` intra-op threads (default: :func:`free_cores`), then restore.

    Examples
    --------
    >>> with torch_threads(1) as n:
    ...     n
    1
    """
    old = torch.get_num_threads()
    n = int(n) if n else free_cores()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(old)


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _as_tensors(pixels: PixelTimeSeries) -> dict[str, torch.Tensor]:
    return {f.name: torch.from_numpy(np.require(getattr(pixels, f.name), requirements=["C", "W"]))
            for f in fields(pixels)}


def pretrain(
    pixels: PixelTimeSeries,
    config: EncoderConfig | None = None,
    steps: int = 300,
    batch_size: int = 512,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    lr: float = 2e-3,
    warmup: int = 30,
    weight_decay: float = 1e-4,
    lambd: float = 5e-3,
    checkpoint_every: int = 100,
    n_threads: int | None = None,
    progress: bool = True,
) -> tuple[TrainedEncoder, pd.DataFrame]:
    """Pre-train a :class:`TesseraEncoder` with Barlow Twins.

    The two views of a pixel are two independent random draws of ``T`` of its
    valid S2 and S1 observations. AdamW with a linear warm-up over ``warmup``
    steps then cosine decay to zero. Pixels without any valid observation are
    left out of training.

    Parameters
    ----------
    pixels : PixelTimeSeries
        Training pixels (raw values; the band normaliser is fitted here).
    config : EncoderConfig, optional
        Model size; default :class:`EncoderConfig()`.
    steps, batch_size, seed : int
        Optimisation steps, pixels per batch, and the seed of everything random.
    checkpoint_dir : path, optional
        Where ``checkpoint.pt`` (model, optimiser, scheduler, normaliser, step,
        RNG states, history) is written every ``checkpoint_every`` steps and at
        the end. With ``resume=True`` an existing checkpoint there is resumed;
        the result equals an uninterrupted run.
    lr, warmup, weight_decay, lambd : float
        Peak learning rate, warm-up steps, AdamW weight decay, Barlow Twins λ.
    n_threads : int, optional
        Torch threads (default min(2, cores)).

    Returns
    -------
    trained : TrainedEncoder
    history : pandas.DataFrame
        Columns ``step, loss, on_diag, off_diag, lr`` and ``seconds``, the
        wall time of optimisation so far (summed over resumed runs).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> n = 64
    >>> p = PixelTimeSeries(rng.normal(size=(n, 8, 10)), rng.random((n, 8)) > .3,
    ...                     np.tile(np.arange(8) * 40 + 5, (n, 1)), rng.normal(size=(n, 6, 2)),
    ...                     np.ones((n, 6)), np.tile(np.arange(6) * 60 + 3, (n, 1)))
    >>> cfg = EncoderConfig(d_model=8, d_ff=16, n_timesteps=4, projector_dims=(16,))
    >>> trained, hist = pretrain(p, cfg, steps=3, batch_size=16, warmup=1, progress=False)
    >>> list(hist.columns), len(hist)
    (['step', 'loss', 'on_diag', 'off_diag', 'lr', 'seconds'], 3)
    """
    config = config or EncoderConfig()
    if steps < 1:
        raise ValueError(f"pretrain: steps must be ≥ 1, got {steps}")
    if batch_size < 2:
        raise ValueError(f"pretrain: batch_size must be ≥ 2, got {batch_size}")
    if checkpoint_every < 1:
        raise ValueError(f"pretrain: checkpoint_every must be ≥ 1, got {checkpoint_every}")
    usable = pixels.s2_valid.any(axis=1) | pixels.s1_valid.any(axis=1)
    if usable.sum() < 2:
        raise ValueError("pretrain: fewer than 2 pixels have any valid observation")
    train_px = pixels[np.flatnonzero(usable)] if not usable.all() else pixels
    normaliser = BandNormaliser.fit(train_px)
    data = _as_tensors(train_px)
    n = len(train_px)
    bs = min(batch_size, n)

    with torch_threads(n_threads):
        torch.manual_seed(seed)
        model = TesseraEncoder(config, normaliser)
        projector = BarlowTwinsProjector(config.embed_dim, config.projector_dims)
        params = list(model.parameters()) + list(projector.parameters())
        optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda s: _lr_factor(s, steps, warmup)
        )
        generator = torch.Generator().manual_seed(seed)
        history: list[dict[str, float]] = []
        start = 0
        ckpt = Path(checkpoint_dir) / "checkpoint.pt" if checkpoint_dir is not None else None
        run_meta = {"config": config.to_dict(), "steps": steps, "batch_size": batch_size,
                    "seed": seed, "lr": lr, "warmup": warmup, "weight_decay": weight_decay,
                    "lambd": lambd, "data": train_px.fingerprint() if ckpt else None}
        if ckpt is not None and resume and ckpt.exists():
            state = torch.load(ckpt, weights_only=False)
            if state["run"] != run_meta:
                raise ValueError(
                    f"pretrain: checkpoint {ckpt} was made with different parameters or data; "
                    "use another checkpoint_dir or resume=False"
                )
            model.load_state_dict(state["model"])
            projector.load_state_dict(state["projector"])
            optimiser.load_state_dict(state["optimiser"])
            scheduler.load_state_dict(state["scheduler"])
            generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            history = list(state["history"])
            start = int(state["step"])

        def save(step: int) -> None:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            tmp = ckpt.with_suffix(".tmp")
            torch.save({
                "run": run_meta, "step": step, "model": model.state_dict(),
                "projector": projector.state_dict(), "optimiser": optimiser.state_dict(),
                "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(), "history": history,
                "normaliser": normaliser.to_dict(),
            }, tmp)
            os.replace(tmp, ckpt)

        model.train()
        projector.train()
        bar = tqdm(range(start, steps), total=steps, initial=start, desc="Barlow Twins",
                   disable=not progress, leave=False)
        clock0 = time.perf_counter() - (history[-1]["seconds"] if history else 0.0)
        for step in bar:
            idx = torch.randint(0, n, (bs,), generator=generator)
            batch = {k: v[idx] for k, v in data.items()}
            views = []
            for _ in range(2):
                drop = torch.rand(2, bs, generator=generator) < config.sensor_dropout
                drop[1] &= ~drop[0]  # never hide both sensors
                z, _ = model.encode(batch["s2"], batch["s2_valid"], batch["s2_doy"], batch["s1"],
                                    batch["s1_valid"], batch["s1_doy"], generator=generator,
                                    drop=(drop[0], drop[1]))
                views.append(projector(z))
            loss, on, off = barlow_twins_loss(views[0], views[1], lambd)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            rate = optimiser.param_groups[0]["lr"]
            scheduler.step()
            loss_v, on_v, off_v = (float(v.detach()) for v in (loss, on, off))
            history.append({"step": step + 1, "loss": loss_v, "on_diag": on_v,
                            "off_diag": off_v, "lr": float(rate),
                            "seconds": time.perf_counter() - clock0})
            bar.set_postfix(loss=f"{loss_v:.2f}")
            if ckpt is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
                save(step + 1)
        bar.close()
    model.eval()
    trained = TrainedEncoder(model, config, normaliser, steps, batch_size, seed,
                             {k: v for k, v in run_meta.items() if k not in ("config",)})
    return trained, pd.DataFrame(history, columns=["step", "loss", "on_diag", "off_diag", "lr", "seconds"])


# --------------------------------------------------------------------------
# inference
# --------------------------------------------------------------------------


@dataclass
class EmbeddingFlags:
    """Per-pixel data gaps found while embedding.

    Attributes
    ----------
    no_data : numpy.ndarray
        bool ``(n,)``: no valid S2 and no valid S1 observation (NaN embedding).
    s2_missing, s1_missing : numpy.ndarray
        bool ``(n,)``: that sensor alone had no valid observation (embedded
        from the other sensor with the learned missing-sensor vector).
    """

    no_data: np.ndarray
    s2_missing: np.ndarray
    s1_missing: np.ndarray

    @property
    def n_nan(self) -> int:
        return int(self.no_data.sum())


def _encoder_of(model: TrainedEncoder | TesseraEncoder) -> TesseraEncoder:
    if isinstance(model, TrainedEncoder):
        return model.model
    if isinstance(model, TesseraEncoder):
        return model
    raise ValueError(f"expected a TrainedEncoder or TesseraEncoder, got {type(model).__name__}")


def embed_pixels(
    model: TrainedEncoder | TesseraEncoder,
    pixels: PixelTimeSeries,
    batch_size: int = 8192,
    seed: int = 0,
    pixel_ids: np.ndarray | None = None,
    bf16: bool = False,
    n_threads: int | None = None,
    return_flags: bool = False,
    progress: bool = False,
    n_draws: int = 1,
) -> np.ndarray | tuple[np.ndarray, EmbeddingFlags]:
    """Embed pixels to float32 ``(n, 128)``.

    Timesteps are drawn with counter-based randomness keyed by ``(seed,
    pixel id)``, so a pixel's embedding does not depend on which batch or chunk
    it is in. Pixels with no valid observation from either sensor get a NaN
    row (counted; a warning is issued unless ``return_flags``). Runs under
    ``torch.inference_mode()``.

    Each embedding sees one random draw of ``T`` dates per sensor, so two
    draws give two (close) embeddings. With ``n_draws > 1`` the embedding is
    the mean over ``n_draws`` independent draws, which costs ``n_draws``
    times the time; draw ``j`` uses the hash streams ``2j`` (S2) and ``2j + 1``
    (S1), so draw 0 is the single-draw embedding. How much a draw moves an
    embedding and a prediction is measured by
    ``benchmarks/bench_embedding_draws.py``.

    Parameters
    ----------
    model : TrainedEncoder or TesseraEncoder
    pixels : PixelTimeSeries
    batch_size : int
        Pixels per forward pass (large batches amortise overhead).
    seed : int
        Seed of the timestep draws.
    pixel_ids : numpy.ndarray, optional
        Global integer id per pixel (default ``0 … n−1``); chunked callers
        pass ids in the whole raster so results match a whole-array run.
    bf16 : bool
        bf16 autocast. Off by default: it is slower than fp32 for the default
        model on this CPU, and ``tests/test_encoder.py`` checks how far it
        moves the embeddings (cosine similarity ≥ 0.99).
    return_flags : bool
        Also return :class:`EmbeddingFlags`.
    n_draws : int
        Timestep draws averaged per pixel (≥ 1).

    Examples
    --------
    >>> import numpy as np
    >>> p = PixelTimeSeries(np.ones((3, 5, 10)), [[1] * 5, [0] * 5, [0] * 5], np.ones((3, 5)),
    ...                     np.ones((3, 4, 2)), [[1] * 4, [1] * 4, [0] * 4], np.ones((3, 4)))
    >>> emb, flags = embed_pixels(TesseraEncoder(EncoderConfig()), p, return_flags=True)
    >>> emb.shape, np.isnan(emb[:, 0]).tolist(), flags.s2_missing.tolist()
    ((3, 128), [False, False, True], [False, True, False])
    """
    enc = _encoder_of(model)
    n = len(pixels)
    if batch_size < 1:
        raise ValueError(f"embed_pixels: batch_size must be ≥ 1, got {batch_size}")
    if isinstance(n_draws, bool) or not isinstance(n_draws, (int, np.integer)) or n_draws < 1:
        raise ValueError(f"embed_pixels: n_draws must be an integer ≥ 1, got {n_draws!r}")
    ids = np.arange(n, dtype=np.int64) if pixel_ids is None else np.asarray(pixel_ids, np.int64)
    if ids.shape != (n,):
        raise ValueError(f"embed_pixels: pixel_ids must have shape ({n},), got {ids.shape}")
    T = enc.config.n_timesteps
    out = np.empty((n, enc.config.embed_dim), np.float32)
    s2_any = pixels.s2_valid.any(axis=1)
    s1_any = pixels.s1_valid.any(axis=1)
    was_training = enc.training
    enc.eval()
    try:
        with torch_threads(n_threads), torch.inference_mode():
            for a in tqdm(range(0, n, batch_size), disable=not progress, desc="embedding", leave=False):
                b = min(n, a + batch_size)
                sl = slice(a, b)
                t = {f.name: torch.from_numpy(np.require(getattr(pixels, f.name)[sl], requirements=["C", "W"]))
                     for f in fields(pixels)}
                total = None
                for draw in range(int(n_draws)):
                    u = {}
                    for sensor, (name, valid) in enumerate((("s2", pixels.s2_valid), ("s1", pixels.s1_valid))):
                        t_all = valid.shape[1]
                        uu = hash_uniform_rows(seed, ids[sl], 2 * draw + sensor, t_all + T)
                        u[name] = (torch.from_numpy(uu[:, :t_all]), torch.from_numpy(np.ascontiguousarray(uu[:, t_all:])))
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                        z, no_data = enc.encode(t["s2"], t["s2_valid"], t["s2_doy"], t["s1"],
                                                t["s1_valid"], t["s1_doy"], uniforms=u)
                    z = z.float()
                    total = z if total is None else total + z
                z = total if n_draws == 1 else total / n_draws
                z[no_data] = float("nan")
                out[sl] = z.numpy()
    finally:
        enc.train(was_training)
    flags = EmbeddingFlags(~s2_any & ~s1_any, ~s2_any & s1_any, s2_any & ~s1_any)
    if return_flags:
        return out, flags
    if flags.n_nan:
        warnings.warn(
            f"embed_pixels: {flags.n_nan} of {n} pixels have no valid S2 or S1 observation; "
            "their embeddings are NaN", stacklevel=2,
        )
    return out


# --------------------------------------------------------------------------
# quantisation and persistence
# --------------------------------------------------------------------------


def quantise(emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 values and float32 per-pixel scale, ``scale = max|x| / 127`` (TESSERA).

    NaN rows give int8 zeros and a NaN scale; all-zero rows a zero scale.

    Examples
    --------
    >>> import numpy as np
    >>> q, s = quantise(np.array([[0.5, -1.27, 0.0]], np.float32))
    >>> q.tolist(), round(float(s[0]), 4)
    ([[50, -127, 0]], 0.01)
    >>> np.allclose(dequantise(q, s), [[0.5, -1.27, 0.0]])
    True
    """
    x = np.asarray(emb, np.float32)
    amax = np.max(np.abs(x), axis=-1)  # NaN propagates
    scale = (amax / 127.0).astype(np.float32)
    safe = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0).astype(np.float32)
    q = np.rint(np.nan_to_num(x / safe[..., None], nan=0.0))
    return np.clip(q, -127, 127).astype(np.int8), scale


def save_encoder(trained: TrainedEncoder, path: str | Path) -> Path:
    """Write a trained encoder (weights, config, normaliser, meta) to ``path``.

    Examples
    --------
    >>> import tempfile, os
    >>> t = TrainedEncoder(TesseraEncoder(EncoderConfig()), EncoderConfig(), TesseraEncoder(EncoderConfig()).normaliser)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = save_encoder(t, os.path.join(d, "enc.pt"))
    ...     load_encoder(p).config == t.config
    True
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({
        "format": "fungi_ssl.encoder/1",
        "config": trained.config.to_dict(),
        "normaliser": trained.normaliser.to_dict(),
        "state_dict": trained.model.state_dict(),
        "steps": trained.steps, "batch_size": trained.batch_size, "seed": trained.seed,
        "meta": copy.deepcopy(trained.meta),
    }, tmp)
    os.replace(tmp, path)
    return path


def load_encoder(path: str | Path) -> TrainedEncoder:
    """Read an encoder written by :func:`save_encoder` (model in eval mode)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"load_encoder: no encoder file at {path}")
    state = torch.load(path, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != "fungi_ssl.encoder/1":
        raise ValueError(f"load_encoder: {path} is not a fungi_ssl encoder file")
    config = EncoderConfig.from_dict(state["config"])
    norm = BandNormaliser.from_dict(state["normaliser"])
    model = TesseraEncoder(config, norm)
    model.load_state_dict(state["state_dict"])
    model.eval()
    return TrainedEncoder(model, config, norm, int(state["steps"]), int(state["batch_size"]),
                          int(state["seed"]), dict(state["meta"]))
