"""The predictor table a chapter models: field samples, 1 km covariates and SSL patches.

This module joins the pieces the earlier chapters make into one table, the
same for both data sources:

* **simulated study**: the book's own encoder (:func:`pretrained_encoder`,
  Barlow Twins on Sentinel-1/2 time series of random pixels of the study
  regions) embeds the 3 × 3 pixel patch around every site in its sampling
  year (:func:`ssl_patch_features`). The embeddings are stored as TESSERA
  stores them (int8 with a per-pixel scale) and read back dequantised, so the
  models see exactly what they would see from real TESSERA tiles.
* **real data**: the SPUN sample table with its 1 km covariates; SSL patches
  come from TESSERA tiles in ``<data_dir>/tessera`` when the user downloaded
  them with ``geotessera``, and are absent otherwise.

Both the encoder and the patch features are cached under ``data/cache/``,
keyed by every parameter that made them (study, profile, seed, encoder size,
training schedule), so the chapters after 02 reuse them and a parameter change
recomputes them.

The regression target is ``log_richness = log1p(rarefied)``: rarefied
richness is right-skewed (real European table: median 40, 99th percentile
321), and the SPUN table already ships its target on this scale.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import config
from .cache import cache_dir
from .embed import cached_pretrain, patch_features_frame
from .encoder import (
    EncoderConfig,
    PixelTimeSeries,
    TrainedEncoder,
    embed_pixels,
    quantise,
)
from .study import FieldData, open_field_data, simulator_fingerprint
from .tessera import dequantise

__all__ = [
    "SSL_DRAWS",
    "TARGET",
    "PredictorTable",
    "encoder_config",
    "pixel_series",
    "predictor_table",
    "pretrained_encoder",
    "ssl_patch_features",
]

#: Name of the regression target column, ``log1p(rarefied)``.
TARGET = "log_richness"

#: Timestep draws averaged per pixel embedding in the SSL patch features
#: (:func:`fungi_ssl.encoder.embed_pixels`). One: ``benchmarks/bench_embedding_draws.py``
#: found (quick profile, simulator 4) that a draw moves an embedding about as far as
#: the step to a neighbouring pixel, but a refitted ssl model scores the same whatever
#: the draw (test R² SD 0.003 between draws) and averaging 4 draws did not raise it;
#: at sites unseen in training, a fixed model's prediction moves by SD 0.13 in log
#: richness between draws (1.2 % of the residual variance; 0.7 % with 4 draws, at 4×
#: the embedding time).
SSL_DRAWS = 1

#: Fields of :class:`fungi_ssl.encoder.PixelTimeSeries` in the simulator's arrays.
_SERIES_FIELDS = ("s2", "s2_valid", "s2_doy", "s1", "s1_valid", "s1_doy")


def encoder_config(profile: str = "quick") -> EncoderConfig:
    """The book's encoder size for a profile.

    Examples
    --------
    >>> encoder_config("quick").embed_dim
    128
    """
    prof = config.get_profile(profile)
    return EncoderConfig(**prof.encoder)


def pixel_series(arrays: dict[str, np.ndarray]) -> PixelTimeSeries:
    """A :class:`PixelTimeSeries` from the simulator's array dictionary.

    Extra entries (``landcover``, ``true_richness``: truth, for probes only)
    are left out, so they can never reach the encoder.
    """
    missing = [f for f in _SERIES_FIELDS if f not in arrays]
    if missing:
        raise ValueError(f"pixel_series: arrays lack {missing}")
    return PixelTimeSeries(**{f: arrays[f] for f in _SERIES_FIELDS})


def _study_params(field: FieldData) -> dict[str, Any]:
    return {"study": field.study.config.as_dict(), "simulator": simulator_fingerprint()}


def pretrained_encoder(
    field: FieldData, profile: str = "quick", seed: int = 0, progress: bool = True,
    n_threads: int | None = None,
) -> tuple[TrainedEncoder, pd.DataFrame]:
    """Pre-train (or load from cache) the book's encoder on the simulated study.

    Training pixels are ``profile.pretrain_pixels`` pixel time series drawn
    by :meth:`fungi_ssl.simulate.SimulatedStudy.random_pixels` across the
    sampled regions and years (with ``seed``); none of them is a probe pixel
    (those use another seed stream, see :func:`probe_pixels`).

    Parameters
    ----------
    field : FieldData
        The simulated study (``open_field_data(None, …)``).
    profile : {"quick", "full"}
        Sets the encoder size, steps and number of training pixels.
    seed : int
        Seed of the pixel draw and of training.
    progress : bool
        Show progress bars.
    n_threads : int, optional
        Torch threads for training (default 2); not part of the cache key.
        One thread avoids OpenMP's busy waiting when other processes share
        the cores.

    Returns
    -------
    trained : TrainedEncoder
    history : pandas.DataFrame
        Per step ``loss, on_diag, off_diag, lr, seconds``.
    """
    if not field.is_simulated:
        raise ValueError(
            "pretrained_encoder: the book trains its encoder on the simulated study only; "
            "for real data use TESSERA tiles (fungi_ssl.tessera)"
        )
    prof = config.get_profile(profile)
    data_params = {**_study_params(field), "pixels": prof.pretrain_pixels, "pixel_seed": seed}
    cfg = encoder_config(profile)

    def pixels() -> PixelTimeSeries:
        arrays, _ = field.study.random_pixels(prof.pretrain_pixels, seed=seed)
        return pixel_series(arrays)

    return cached_pretrain(pixels, cfg, steps=prof.pretrain_steps, batch_size=512, seed=seed,
                           data_params=data_params, progress=progress, n_threads=n_threads,
                           **prof.pretrain_options)


def probe_pixels(field: FieldData, n: int, seed: int = 0) -> tuple[PixelTimeSeries, pd.DataFrame]:
    """Held-out pixels for linear probes, with their true land cover and richness.

    Drawn like the training pixels but from an independent stream
    (``seed + 10_000``), in 8 × 8 clusters.

    Returns
    -------
    pixels : PixelTimeSeries
    labels : pandas.DataFrame
        ``cluster``, ``year``, ``landcover`` (class code) and
        ``true_richness`` (true 10 m richness) per pixel.
    """
    if not field.is_simulated:
        raise ValueError("probe_pixels: probes need the simulated study's truth")
    arrays, index = field.study.random_pixels(n, seed=seed + 10_000)
    labels = index.assign(landcover=arrays["landcover"], true_richness=arrays["true_richness"])
    return pixel_series(arrays), labels


def _embed_quantised(trained: TrainedEncoder, pixels: PixelTimeSeries, seed: int,
                     n_draws: int = SSL_DRAWS) -> np.ndarray:
    """Embed, then store and read back as TESSERA does (int8 + per-pixel scale)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-cloud pixels: counted by caller
        emb = embed_pixels(trained, pixels, seed=seed, n_draws=n_draws)
    ok = np.isfinite(emb).all(axis=1)
    out = np.full(emb.shape, np.nan, np.float32)
    if ok.any():
        q, scale = quantise(emb[ok])
        out[ok] = dequantise(q, scale)
    return out


def ssl_patch_features(
    field: FieldData, trained: TrainedEncoder, profile: str = "quick", seed: int = 0,
    k: int = 3, n_draws: int = SSL_DRAWS,
) -> pd.DataFrame:
    """SSL features of every sample: the k × k × 128 embedding patch at its site.

    Cores of one site share the plot coordinate and the sampling year, so one
    patch per site is embedded and joined to its samples. Each pixel's
    embedding is the mean over ``n_draws`` random draws of its dates
    (:data:`SSL_DRAWS`). Cached under ``data/cache/ssl_patches/<key>``
    (study, encoder, k, seed, n_draws).

    Returns
    -------
    pandas.DataFrame
        Indexed by ``sample_id`` in the order of ``field.samples``, columns
        ``ssl_0000`` … (row, col, dim order). Samples whose patch had no
        valid observation are NaN (``attrs["n_nan_pixels"]`` counts pixels).
    """
    if not field.is_simulated:
        raise ValueError("ssl_patch_features: use fungi_ssl.tessera.sample_patches for real data")
    if k < 1 or k % 2 == 0:
        raise ValueError(f"ssl_patch_features: k must be a positive odd patch size, got {k}")
    params = {**_study_params(field), "encoder": trained.meta, "encoder_config":
              trained.config.to_dict(), "k": k, "seed": seed, "n_draws": int(n_draws)}
    path = cache_dir("ssl_patches", params) / "patches.npz"
    if path.exists():
        z = np.load(path, allow_pickle=False)
        site_ids, patches, n_nan = z["site_id"], z["patches"], int(z["n_nan_pixels"])
    else:
        arrays, index = field.study.site_patch_series(k=k)
        emb = _embed_quantised(trained, pixel_series(arrays), seed, n_draws)
        n_nan = int((~np.isfinite(emb).all(axis=1)).sum())
        dim = emb.shape[1]
        patches = emb.reshape(-1, k, k, dim)
        site_ids = index["site_id"].to_numpy()[:: k * k].astype(str)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, site_id=site_ids, patches=patches, n_nan_pixels=n_nan)
        tmp.replace(path)
    by_site = patch_features_frame(patches, site_ids)
    samples = field.samples
    feats = by_site.reindex(samples["site_id"].astype(str).to_numpy())
    feats.index = pd.Index(samples["sample_id"].to_numpy(), name="sample_id")
    feats.attrs["n_nan_pixels"] = n_nan
    return feats


@dataclass
class PredictorTable:
    """Everything a model of richness sees, one row per sample.

    Attributes
    ----------
    frame : pandas.DataFrame
        ``sample_id, site_id, longitude, latitude, year, rarefied,`` the target
        :data:`TARGET`, every 1 km covariate (SPUN names) and, where there are
        embeddings, ``ssl_0000`` … ``ssl_1151``.
    target : str
        Name of the target column.
    has_ssl : bool
        Whether SSL patch columns are present.
    source : str
        ``"simulated"`` or the file read.
    field : FieldData
        The field data the table was built from (truth included, if simulated).
    encoder_history : pandas.DataFrame or None
        Pre-training history of the encoder that made the SSL features.
    """

    frame: pd.DataFrame
    target: str
    has_ssl: bool
    source: str
    field: FieldData
    encoder_history: pd.DataFrame | None = None

    @property
    def ssl_columns(self) -> list[str]:
        """The SSL patch columns (empty without embeddings)."""
        return [c for c in self.frame.columns if c.startswith("ssl_")]


_ID_COLUMNS = ("sample_id", "site_id", "longitude", "latitude", "year", "rarefied")


def predictor_table(
    data_dir: str | Path | None = None, *, profile: str = "quick", seed: int = 0,
    with_ssl: bool = True, progress: bool = True,
) -> PredictorTable:
    """The table chapters 03–05 model, from the simulated study or real data.

    Parameters
    ----------
    data_dir : str or Path, optional
        Real data directory; empty or None for the simulated study. Real mode
        reads the SPUN table with 1 km covariates and, if
        ``<data_dir>/tessera`` holds geotessera tiles, SSL patches from them.
    profile : {"quick", "full"}
    seed : int
    with_ssl : bool
        Build the SSL patch features (pre-training the encoder if no cached
        one exists). False gives covariates only.
    progress : bool
        Show progress bars for long steps.

    Returns
    -------
    PredictorTable
    """
    t0 = time.perf_counter()
    field = open_field_data(data_dir or None, seed=seed, profile=profile, table="covariates")
    samples = field.samples
    base = pd.DataFrame({c: samples[c].to_numpy() for c in _ID_COLUMNS if c in samples})
    if "year" not in base:
        base["year"] = np.nan
    base[TARGET] = np.log1p(samples["rarefied"].to_numpy(dtype=float))
    cov = field.covariates.reset_index(drop=True)
    cov = cov.drop(columns=[c for c in cov.columns if c in base.columns])
    parts = [base, cov]
    history = None
    has_ssl = False
    if with_ssl and field.is_simulated:
        trained, history = pretrained_encoder(field, profile, seed, progress=progress)
        ssl = ssl_patch_features(field, trained, profile, seed)
        parts.append(ssl.reset_index(drop=True))
        has_ssl = True
    elif with_ssl and data_dir and (Path(data_dir) / "tessera").is_dir():
        from .tessera import sample_patches

        years = samples.get("year")
        year = int(np.nanmedian(years)) if years is not None and years.notna().any() else 2024
        da = sample_patches(Path(data_dir) / "tessera", year, samples["longitude"].to_numpy(),
                            samples["latitude"].to_numpy(), k=3, progress=progress)
        ssl = patch_features_frame(da, samples["sample_id"].to_numpy())
        parts.append(ssl.reset_index(drop=True))
        has_ssl = True
    frame = pd.concat(parts, axis=1)
    frame.attrs["seconds"] = time.perf_counter() - t0
    return PredictorTable(frame=frame, target=TARGET, has_ssl=has_ssl, source=field.source,
                          field=field, encoder_history=history)
