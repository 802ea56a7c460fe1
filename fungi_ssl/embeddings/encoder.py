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
per-pixel scale, ``scale = max|x| / 127`` (:func:`fungi_ssl.embeddings.inference.quantise`). The inverse,
``dequantise``, is :func:`fungi_ssl.embeddings.tessera.dequantise` (the reader of
TESSERA's storage format), importable from here too.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from fungi_ssl.core.cache import temporary_path
from fungi_ssl.embeddings.pixels import (
    S1_BANDS,
    S2_BANDS,
    BandNormaliser,
    PixelTimeSeries,
    sample_timesteps,
)
from fungi_ssl.embeddings.tessera import dequantise  # noqa: F401  (re-exported: the inverse of quantise)

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
        inputs, no_data = self.sample_inputs(s2, s2_valid, s2_doy, s1, s1_valid, s1_doy,
                                             n_timesteps, generator, uniforms, drop)
        return self(*inputs), no_data

    def sample_inputs(
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
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """:meth:`encode`'s first half: the sampled, normalised inputs of :meth:`forward`.

        Returns ``((s2, s2_doy, s1, s1_doy, s2_missing, s1_missing), no_data)``;
        ``self(*inputs)`` is :meth:`encode`'s embedding. All of ``generator``'s
        draws happen here, none in :meth:`forward`.
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
        return (x2, d2, x1, d1, m2, m1), e2 & e1


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
#: Torch threads of :func:`pretrain` unless told otherwise: fixed, because the
#: trained weights depend on the thread count (inference does not).
TRAIN_THREADS = 1
#: Threads :func:`pretrain` runs a step's two views in: each view's encoder pass, forward
#: and backward, in a thread of its own (one torch thread each), while the next step's
#: batch is drawn. Every parameter of the encoder (with attention pooling) enters each
#: view once, so it receives one gradient per view, and a sum of two numbers does not
#: depend on their order: the weights are those of one view after the other, bit for bit
#: (``tests/test_encoder.py``), in 0.56 of the time (64.7 against 115 ms a step, full
#: profile, idle 2-core machine, 2026-12-07).
VIEW_THREADS = 2
#: Seconds over which :func:`busy_cores` measures what other work uses.
BUSY_SAMPLE_S = 0.25
#: Seconds for which :func:`free_cores` reuses its last measurement. Measuring
#: sleeps :data:`BUSY_SAMPLE_S`, and callers that embed many small cubes
#: (chapter 08's replicate worlds, a region's windows) ask hundreds of times:
#: measured on every call, the sleep was 0.25 s of a 0.45 s park-cube embedding.
FREE_CORES_TTL_S = 10.0
_free_cores_seen: dict[str, float] = {}


def _cpu_times() -> tuple[float, float] | None:
    """Busy and total jiffies of all CPUs from ``/proc/stat``; None where it is missing."""
    try:
        with open("/proc/stat") as fh:
            fields = [float(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(sample_s: float = BUSY_SAMPLE_S) -> float:
    """Cores that other work keeps busy now, measured over ``sample_s`` seconds.

    Reads ``/proc/stat`` before and after a short sleep, so that the caller
    itself, asleep meanwhile, does not count. The one-minute load average is
    the fallback where ``/proc/stat`` is missing; it lags, so that a notebook
    kernel that has just been computing would count its own past work as a
    busy core (chapter 02 of a book run then trained on one thread: 320 s
    instead of about 170 s).

    Examples
    --------
    >>> 0.0 <= busy_cores(0.05) <= (os.cpu_count() or 1)
    True
    """
    first = _cpu_times()
    if first is None:
        try:
            return float(os.getloadavg()[0])
        except (AttributeError, OSError):
            return 0.0
    time.sleep(sample_s)
    second = _cpu_times()
    total = second[1] - first[1] if second else 0.0
    if total <= 0:
        return 0.0
    return (second[0] - first[0]) / total * (os.cpu_count() or 1)


def free_cores(cap: int = MAX_TORCH_THREADS) -> int:
    """Cores this process can use that other work is not already using, at most ``cap``.

    The cores allowed to the process (its CPU affinity) less the cores other
    work keeps busy now (:func:`busy_cores`), rounded, never below one.
    Intra-op threads wait for each other at every operation, so a thread on
    a busy core slows all of them: on a 2-core machine with one core taken,
    two torch threads ran chapter 02 three times slower than one.
    ``FUNGI_SSL_TORCH_THREADS`` overrides it. A measurement is reused for
    :data:`FREE_CORES_TTL_S` seconds (inference gives the same embeddings
    whatever the thread count, so only speed depends on it).

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
    now = time.monotonic()
    if now - _free_cores_seen.get("at", -np.inf) > FREE_CORES_TTL_S:
        _free_cores_seen.update(at=now, busy=busy_cores())
    busy = int(_free_cores_seen["busy"] + 0.5)
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
    view_threads: int | None = None,
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
        Torch threads (default :data:`TRAIN_THREADS`, one). Training's
        floating-point sums depend on the thread count, so the default does
        not follow the machine or its load: the same seed gives the same
        encoder anywhere. Two threads trained the full profile's encoder in
        263 s on the idle 2-core machine against 320 s on one, with weights
        that differ in the last bits from the first step on.
    view_threads : {1, 2}, optional
        Threads for a step's two views (default :data:`VIEW_THREADS`): with 2,
        each view's encoder pass, forward and backward, runs in its own thread
        and the next step's batch is drawn meanwhile. The weights are the same
        bit for bit as with 1. The GRU of ``pooling="temporal"`` uses its
        weights at every timestep, and ``n_threads`` above one already keeps
        the cores busy, so there the views run one after the other.

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
    threads = VIEW_THREADS if view_threads is None else int(view_threads)
    if threads not in (1, 2):
        raise ValueError(f"pretrain: view_threads must be 1 or 2, got {view_threads}")
    usable = pixels.s2_valid.any(axis=1) | pixels.s1_valid.any(axis=1)
    if usable.sum() < 2:
        raise ValueError("pretrain: fewer than 2 pixels have any valid observation")
    train_px = pixels[np.flatnonzero(usable)] if not usable.all() else pixels
    normaliser = BandNormaliser.fit(train_px)
    data = _as_tensors(train_px)
    n = len(train_px)
    bs = min(batch_size, n)

    with torch_threads(n_threads or TRAIN_THREADS):
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

        def save(step: int, generator_state: torch.Tensor) -> None:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            tmp = temporary_path(ckpt)
            torch.save({
                "run": run_meta, "step": step, "model": model.state_dict(),
                "projector": projector.state_dict(), "optimiser": optimiser.state_dict(),
                "scheduler": scheduler.state_dict(), "generator": generator_state,
                "torch_rng": torch.get_rng_state(), "history": history,
                "normaliser": normaliser.to_dict(),
            }, tmp)
            os.replace(tmp, ckpt)

        model.train()
        projector.train()
        bar = tqdm(range(start, steps), total=steps, initial=start, desc="Barlow Twins",
                   disable=not progress, leave=False)
        clock0 = time.perf_counter() - (history[-1]["seconds"] if history else 0.0)

        def draw() -> tuple[list[tuple[torch.Tensor, ...]], torch.Tensor]:
            """One step's batch and both views' inputs (every random draw of the step), and
            the generator's state after them."""
            idx = torch.randint(0, n, (bs,), generator=generator)
            batch = {k: v[idx] for k, v in data.items()}
            inputs = []
            for _ in range(2):
                drop = torch.rand(2, bs, generator=generator) < config.sensor_dropout
                drop[1] &= ~drop[0]  # never hide both sensors
                inputs.append(model.sample_inputs(
                    batch["s2"], batch["s2_valid"], batch["s2_doy"], batch["s1"],
                    batch["s1_valid"], batch["s1_doy"], generator=generator,
                    drop=(drop[0], drop[1]))[0])
            return inputs, generator.get_state()

        pool = (ThreadPoolExecutor(1, thread_name_prefix="view") if threads == 2
                and config.pooling == "attention" and torch.get_num_threads() == 1 else None)
        ahead = pool.submit(draw) if pool is not None and start < steps else None
        try:
            for step in bar:
                inputs, generator_state = ahead.result() if ahead is not None else draw()
                if pool is None:
                    z = [model(*v) for v in inputs]
                    views = [projector(v) for v in z]
                else:  # view 1 in the pool's thread, view 0 here; then the next step's draws
                    second = pool.submit(model, *inputs[1])
                    z = [model(*inputs[0]), second.result()]
                    ahead = pool.submit(draw) if step + 1 < steps else None
                    cut = [v.detach().requires_grad_() for v in z]
                    views = [projector(v) for v in cut]
                loss, on, off = barlow_twins_loss(views[0], views[1], lambd)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                if pool is not None:  # each view's encoder gradients, side by side
                    back = pool.submit(z[1].backward, cut[1].grad)
                    z[0].backward(cut[0].grad)
                    back.result()
                optimiser.step()
                rate = optimiser.param_groups[0]["lr"]
                scheduler.step()
                loss_v, on_v, off_v = (float(v.detach()) for v in (loss, on, off))
                history.append({"step": step + 1, "loss": loss_v, "on_diag": on_v,
                                "off_diag": off_v, "lr": float(rate),
                                "seconds": time.perf_counter() - clock0})
                bar.set_postfix(loss=f"{loss_v:.2f}")
                if ckpt is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
                    save(step + 1, generator_state)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    model.eval()
    trained = TrainedEncoder(model, config, normaliser, steps, batch_size, seed,
                             {k: v for k, v in run_meta.items() if k not in ("config",)})
    return trained, pd.DataFrame(history, columns=["step", "loss", "on_diag", "off_diag", "lr", "seconds"])


# --------------------------------------------------------------------------
