"""Inference with a trained encoder: embeddings of pixel time series, quantised and saved as TESSERA stores them.

:func:`embed_pixels` embeds a :class:`~fungi_ssl.embeddings.pixels.PixelTimeSeries`
with a trained encoder (:mod:`fungi_ssl.embeddings.encoder` describes the model
and the missing-data rule); :func:`quantise` turns embeddings into int8 values
and a per-pixel scale; :func:`save_encoder` and :func:`load_encoder` keep a
trained encoder on disk.
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fungi_ssl.core.cache import temporary_path
from fungi_ssl.core.hashing import hash_uniform_rows
from fungi_ssl.embeddings.encoder import (
    EncoderConfig,
    TesseraEncoder,
    TrainedEncoder,
    torch_threads,
)
from fungi_ssl.embeddings.pixels import BandNormaliser, PixelTimeSeries

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
    >>> from fungi_ssl.embeddings.tessera import dequantise
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
    tmp = temporary_path(path)
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
