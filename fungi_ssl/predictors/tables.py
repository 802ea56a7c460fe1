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
  them with ``geotessera``, and are absent otherwise. A patch is read at the
  sample's **plot coordinate**, never at the SPUN table's 1 km pixel centre
  (``Pixel_Lat``/``Pixel_Long``): the plot coordinate of the same
  ``sample_id`` in the GlobalFungi table is joined where the directory holds
  one (:func:`plot_coordinates`), and samples without one get no patch and
  are counted (``frame.attrs["ssl_notes"]``). It is read from the embeddings
  of the sampling year by the rule of :func:`embedding_years` (TESSERA starts
  in :data:`FIRST_EMBEDDING_YEAR`; older samples, and samples without a
  year, are read from the first year held), the same rule ``fungi-ssl fit``
  applies.

Both the encoder and the patch features are cached under ``data/cache/``,
keyed by every parameter that made them (study, profile, seed, encoder size,
training schedule), so the chapters after 02 reuse them and a parameter change
recomputes them.

The regression target is ``log_richness = log1p(rarefied)``: rarefied
richness is right-skewed (real European table: median 40, 99th percentile
321), and the SPUN table already ships its target on this scale.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fungi_ssl.core import config
from fungi_ssl.core.cache import cache_dir, temporary_path
from fungi_ssl.embeddings.embed import cached_pretrain, patch_features_frame
from fungi_ssl.embeddings.encoder import EncoderConfig, TrainedEncoder
from fungi_ssl.embeddings.inference import embed_pixels, quantise
from fungi_ssl.embeddings.pixels import PixelTimeSeries
from fungi_ssl.embeddings.tessera import dequantise
from fungi_ssl.simulate.field_data import FieldData, open_field_data, simulator_fingerprint

__all__ = [
    "FIRST_EMBEDDING_YEAR",
    "PATCH_SIZE",
    "SSL_DRAWS",
    "TARGET",
    "EmbeddingYears",
    "PlotCoordinates",
    "PredictorTable",
    "embedding_patches",
    "embedding_years",
    "encoder_config",
    "held_years",
    "is_zarr_store",
    "pixel_series",
    "plot_coordinates",
    "predictor_table",
    "pretrained_encoder",
    "ssl_patch_features",
    "table_kind",
    "table_skip_reason",
]

#: Name of the regression target column, ``log1p(rarefied)``.
TARGET = "log_richness"

#: Timestep draws averaged per pixel embedding in the SSL patch features
#: (:func:`fungi_ssl.embeddings.inference.embed_pixels`). One: ``benchmarks/bench_embedding_draws.py``
#: found (quick profile, simulator 4) that a draw moves an embedding about as far as
#: the step to a neighbouring pixel, but a refitted ssl model scores the same whatever
#: the draw (test R² SD 0.003 between draws) and averaging 4 draws did not raise it;
#: at sites unseen in training, a fixed model's prediction moves by SD 0.13 in log
#: richness between draws (1.2 % of the residual variance; 0.7 % with 4 draws, at 4×
#: the embedding time).
SSL_DRAWS = 1

#: Fields of :class:`fungi_ssl.embeddings.pixels.PixelTimeSeries` in the simulator's arrays.
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
            "for real data use TESSERA tiles (fungi_ssl.embeddings.tessera)"
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
        raise ValueError("ssl_patch_features: use fungi_ssl.embeddings.tessera_patches.sample_patches for real data")
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
        tmp = temporary_path(path)
        np.savez(tmp, site_id=site_ids, patches=patches, n_nan_pixels=n_nan)
        tmp.replace(path)
    by_site = patch_features_frame(patches, site_ids)
    samples = field.samples
    feats = by_site.reindex(samples["site_id"].astype(str).to_numpy())
    feats.index = pd.Index(samples["sample_id"].to_numpy(), name="sample_id")
    feats.attrs["n_nan_pixels"] = n_nan
    return feats


# --------------------------------------------------------------------------
# the embedding year of a sample, and the coordinate its patch is read at
# --------------------------------------------------------------------------
#: The first year TESSERA embeddings exist for (annual embeddings from 2017 on).
FIRST_EMBEDDING_YEAR = 2017


@dataclass
class EmbeddingYears:
    """Which embedding year each sample is read from (the rule of :func:`embedding_years`).

    Attributes
    ----------
    years : numpy.ndarray
        int64, one embedding year per sample.
    held : list of int
        The years the embeddings hold.
    n_before, n_after, n_gap : int
        Samples from before the first year held, after the last, or from a
        year inside the range that is not held, which took the nearest year.
    n_no_year : int
        Samples without a sampling year, read from the first year held.
    fixed : bool
        True when every sample was given one year (``year=``, ``--year``).
    """

    years: np.ndarray
    held: list[int]
    n_before: int = 0
    n_after: int = 0
    n_gap: int = 0
    fixed: bool = False
    n_no_year: int = 0

    def describe(self) -> str:
        """One line: samples per embedding year, and how many took a nearer year."""
        ys, counts = np.unique(self.years, return_counts=True)
        per = ", ".join(f"{int(y)}: {int(c)}" for y, c in zip(ys, counts))
        text = f"samples per embedding year: {per}"
        if self.fixed:
            return text + " (--year)"
        moved = []
        if self.n_before:
            moved.append(f"{self.n_before} sampled before {self.held[0]} took {self.held[0]}")
        if self.n_after:
            moved.append(f"{self.n_after} sampled after {self.held[-1]} took {self.held[-1]}")
        if self.n_gap:
            moved.append(f"{self.n_gap} sampled in a year not held took the nearest year")
        if self.n_no_year:
            moved.append(f"{self.n_no_year} without a sampling year took {self.held[0]}")
        return text + (f"; {'; '.join(moved)}" if moved else "")


def embedding_years(
    sample_years: Any, held: Any, *, year: int | None = None, source: str = "embeddings",
) -> EmbeddingYears:
    """The embedding year of each sample: its own year, the nearest one held, or ``year``.

    The rule, the same for ``fungi-ssl fit``, chapter 10 and chapters 03–05:
    a sample is read from the embeddings of its sampling year. When that year
    is not held, it takes the nearest year held: the first year for samples
    from before it (TESSERA starts in :data:`FIRST_EMBEDDING_YEAR`, so every
    older sample is read from the first year held, i.e. the land as it was
    then stands in for the land at sampling), the last for samples after it,
    the earlier of two equally near years in a gap. A sample without a year
    is read from the first year held, as an old sample is: GlobalFungi
    records no sampling year for most samples (the real European table has
    no year column) and most of them predate TESSERA. :meth:`EmbeddingYears.describe`
    counts each case. ``year`` instead reads every sample from one year.

    Parameters
    ----------
    sample_years : array_like
        Sampling year per sample (NA where unknown).
    held : sequence of int
        Years the embeddings hold.
    year : int, optional
        Read every sample from this year (must be held).
    source : str
        The embeddings, for messages.

    Raises
    ------
    ValueError
        ``year`` not held; no year held.

    Examples
    --------
    >>> e = embedding_years([2012, 2018, 2020, 2026], [2017, 2018, 2019, 2021, 2022])
    >>> e.years.tolist(), e.n_before, e.n_gap, e.n_after
    ([2017, 2018, 2019, 2022], 1, 1, 1)
    >>> embedding_years([2018, None], [2017, 2018]).years.tolist()
    [2018, 2017]
    >>> embedding_years([2018], [2017, 2018], year=2016)
    Traceback (most recent call last):
    ...
    ValueError: year 2016 is not in the embeddings (years held: [2017, 2018])
    """
    held = sorted(int(h) for h in held)
    if not held:
        raise ValueError(f"the {source} hold no year")
    n = len(sample_years)
    if year is not None:
        if int(year) not in held:
            raise ValueError(f"year {year} is not in the {source} (years held: {held})")
        return EmbeddingYears(np.full(n, int(year), np.int64), held, fixed=True)
    sy = pd.array(sample_years, dtype="Int64")
    no_year = np.asarray(pd.isna(sy))
    h = np.asarray(held, np.int64)
    sy = np.where(no_year, h[0], np.asarray(sy.fillna(h[0]), dtype=np.int64))
    # nearest year held; ties go to the earlier year (argmin takes the first)
    out = h[np.argmin(np.abs(sy[:, None] - h[None, :]), axis=1)]
    before, after = (sy < h[0]) & ~no_year, (sy > h[-1]) & ~no_year
    gap = ~before & ~after & ~no_year & ~np.isin(sy, h)
    return EmbeddingYears(out, held, int(before.sum()), int(after.sum()), int(gap.sum()),
                          n_no_year=int(no_year.sum()))


# --------------------------------------------------------------------------
# the one reader of patches at samples: geotessera tiles or Zarr embedding stores
# --------------------------------------------------------------------------
#: The study's patch (3 × 3 pixels), the one :func:`fungi_ssl.maps.predict.predict_map` maps with.
PATCH_SIZE = 3


def is_zarr_store(path: Path) -> bool:
    """Whether ``path`` is a Zarr group (v2 or v3) on disk."""
    return path.is_dir() and any((path / f).exists() for f in ("zarr.json", ".zgroup", ".zattrs"))


def held_years(embeddings: str | os.PathLike) -> dict[int, Path]:
    """The years an embeddings folder holds, each with what to read it from.

    Parameters
    ----------
    embeddings : path
        A geotessera download folder, a Zarr embedding store with a ``year``
        attribute, or a folder of ``<year>.zarr`` stores.

    Returns
    -------
    dict
        ``{year: path}``: the geotessera folder itself for every year it
        holds tiles of, or the Zarr store of that year; sorted by year.

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    ValueError
        A folder that holds none of the three, a geotessera folder without
        any year, or a store that records no year.

    Examples
    --------
    >>> import tempfile
    >>> from affine import Affine
    >>> from fungi_ssl.embeddings import tessera_write
    >>> root = tempfile.mkdtemp()
    >>> _ = tessera_write.write_tile(root, 2021, 0.15, 52.05, np.zeros((3, 3, 8), np.int8),
    ...                        np.ones((3, 3), np.float32),
    ...                        transform=Affine(10, 0, 303_000, 0, -10, 5_772_000))
    >>> list(held_years(root))
    [2021]
    """
    import re

    from fungi_ssl.embeddings.tessera import EMBEDDINGS_DIR_NAME

    path = Path(embeddings)
    if not path.exists():
        raise FileNotFoundError(f"embeddings folder {path} does not exist")
    if (path / EMBEDDINGS_DIR_NAME).is_dir():
        years = sorted(
            int(p.name)
            for p in (path / EMBEDDINGS_DIR_NAME).iterdir()
            if p.is_dir() and re.fullmatch(r"\d{4}", p.name) and any(p.iterdir())
        )
        if not years:
            raise ValueError(
                f"the geotessera folder {path} holds no tiles: {path / EMBEDDINGS_DIR_NAME} has "
                "no non-empty <year>/ folder"
            )
        return {y: path for y in years}
    if is_zarr_store(path):
        from fungi_ssl.embeddings.embed import open_embeddings

        year = open_embeddings(path).attrs.get("year")
        if year is None:
            raise ValueError(
                f"embedding store {path} records no year (attribute 'year'); put it in a folder "
                "as <year>.zarr"
            )
        return {int(year): path}
    if path.is_dir():
        stores = {int(p.stem): p for p in path.glob("*.zarr") if re.fullmatch(r"\d{4}", p.stem)}
        if stores:
            return dict(sorted(stores.items()))
    raise ValueError(
        f"{path} holds no embeddings: expected a geotessera download folder (with "
        f"{EMBEDDINGS_DIR_NAME}/), a Zarr embedding store or a folder of <year>.zarr stores"
    )


def _store_encoder(ds: Any, path: Path) -> str:
    """The encoder signature a Zarr embedding store records (as ``maps.modelspec.encoder_signature``)."""
    sig = ds.attrs.get("encoder")
    if not sig:
        raise ValueError(
            f"embedding store {path} records no encoder (attribute 'encoder', as "
            "fungi_ssl.embeddings.embed stores write)"
        )
    return str(sig)


def embedding_patches(
    samples: pd.DataFrame,
    embeddings: str | os.PathLike,
    *,
    year: int | None = None,
    k: int = PATCH_SIZE,
    progress: bool = True,
) -> tuple[np.ndarray, str, EmbeddingYears]:
    """Dequantised k × k patches at each sample's plot coordinate, from its embedding year.

    The one reader of patches at samples: ``fungi-ssl fit``, chapter 10
    (:func:`fungi_ssl.region.workflow.fit_from_samples`) and chapters 03–05
    (:func:`predictor_table` on real data) all call it, so one table gives
    the same patches everywhere. Tiles are read by
    :func:`fungi_ssl.embeddings.tessera_patches.sample_patches`, Zarr stores by
    :func:`fungi_ssl.embeddings.embed.raster_patches`; the year is
    :func:`embedding_years`'s rule.

    Parameters
    ----------
    samples : pandas.DataFrame
        The sample-table schema (:func:`fungi_ssl.data.io.read_samples`):
        ``longitude``, ``latitude`` (the plot coordinate) and optionally
        ``year`` (a sample without one is read from the first year held).
    embeddings : path
        See :func:`held_years`.
    year : int, optional
        Read every sample from this year.
    k : int
        Patch side in pixels.
    progress : bool
        Progress bars over tiles.

    Returns
    -------
    patches : numpy.ndarray
        float32 ``(n, k, k, dim)`` in the samples' order; NaN where a sample
        or a pixel of its patch has no embedding.
    encoder : str
        Signature of the embeddings' encoder (a store's ``encoder``
        attribute; :func:`fungi_ssl.embeddings.tessera.embeddings_signature` for
        tiles), which a map model records.
    years : EmbeddingYears
        The year each sample was read from.

    Raises
    ------
    FileNotFoundError, ValueError
        As :func:`held_years` and :func:`embedding_years`; an empty sample
        table; embeddings of different dimensions or encoders in different years.
    """
    held = held_years(embeddings)
    path = Path(embeddings)
    if not len(samples):
        raise ValueError(f"no samples to read patches for from the embeddings under {path}")
    sample_years = samples["year"] if "year" in samples.columns else [pd.NA] * len(samples)
    which = embedding_years(sample_years, list(held), year=year, source=f"embeddings under {path}")
    lon = samples["longitude"].to_numpy(dtype=float)
    lat = samples["latitude"].to_numpy(dtype=float)
    parts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    encoders: dict[int, str] = {}
    for y in np.unique(which.years):
        rows = np.flatnonzero(which.years == y)
        src = held[int(y)]
        if is_zarr_store(src):
            from fungi_ssl.embeddings.embed import open_embeddings, raster_patches

            ds = open_embeddings(src)
            p = raster_patches(ds, longitude=lon[rows], latitude=lat[rows], k=k)
            encoders[int(y)] = _store_encoder(ds, src)
        else:
            from fungi_ssl.embeddings import tessera, tessera_patches

            p = tessera_patches.sample_patches(src, int(y), lon[rows], lat[rows], k=k, progress=progress)
            # one download, one signature (its tessera_metadata.json); said once, not per year
            encoders[int(y)] = tessera.embeddings_signature(src, warn=not encoders)
        parts[int(y)] = (rows, np.asarray(p.transpose("sample", "row", "col", "dim").values))
    dims = {int(y): v[1].shape[-1] for y, v in parts.items()}
    if len(set(dims.values())) > 1:
        raise ValueError(f"the embeddings under {path} differ in dimension between years: {dims}")
    if len(set(encoders.values())) > 1:
        raise ValueError(f"the embeddings under {path} come from different encoders: {encoders}")
    dim = next(iter(dims.values()))
    out = np.full((len(samples), k, k, dim), np.nan, np.float32)
    for rows, values in parts.values():
        out[rows] = values
    return out, next(iter(encoders.values())), which


@dataclass
class PlotCoordinates:
    """Where each sample's SSL patch is read: its plot coordinate, where one is known.

    Attributes
    ----------
    longitude, latitude : numpy.ndarray
        The plot coordinate per sample; NaN where none is known (those
        samples get no patch).
    year : numpy.ndarray
        float sampling year per sample (NaN where unknown).
    source : numpy.ndarray
        Per sample: ``"plot"`` (the table's own plot coordinate),
        ``"joined"`` (a pixel-centre table's sample given its GlobalFungi
        plot coordinate by ``sample_id``) or ``"none"`` (left out).
    n_plot, n_joined, n_missing : int
    """

    longitude: np.ndarray
    latitude: np.ndarray
    year: np.ndarray
    source: np.ndarray
    n_plot: int = 0
    n_joined: int = 0
    n_missing: int = 0

    def describe(self) -> str:
        """One sentence: how many samples have a plot coordinate, and how many were left out."""
        n = len(self.source)
        if self.n_joined or self.n_missing:
            return (f"{self.n_joined:,} of {n:,} samples were given their GlobalFungi plot "
                    f"coordinate by sample_id; {self.n_missing:,} have none and get no SSL patch "
                    "(their 1 km pixel centre is not where they were taken)")
        return f"all {n:,} samples have a plot coordinate"


def plot_coordinates(samples: pd.DataFrame, plots: pd.DataFrame | None = None, *,
                     pixel_centres: bool = False) -> PlotCoordinates:
    """The coordinate and year each sample's patch is read at, never a 1 km pixel centre.

    Parameters
    ----------
    samples : pandas.DataFrame
        ``sample_id``, ``longitude``, ``latitude`` and optionally ``year``.
    plots : pandas.DataFrame, optional
        A GlobalFungi-style sample table (plot coordinates) to join by
        ``sample_id``; its ``year`` is used where ``samples`` has none.
    pixel_centres : bool
        True when ``samples``' coordinates are 1 km pixel centres (the SPUN
        table's ``Pixel_Lat``/``Pixel_Long``): they are then never used, and
        a sample without a joined plot coordinate is left out.

    Examples
    --------
    >>> spun = pd.DataFrame({"sample_id": ["a", "b"], "longitude": [5.0, 6.0],
    ...                      "latitude": [50.0, 51.0]})
    >>> gf = pd.DataFrame({"sample_id": ["a"], "longitude": [5.0042], "latitude": [50.0031]})
    >>> pc = plot_coordinates(spun, gf, pixel_centres=True)
    >>> pc.longitude.tolist()[0], bool(np.isnan(pc.longitude[1])), pc.n_joined, pc.n_missing
    (5.0042, True, 1, 1)
    """
    n = len(samples)
    ids = samples["sample_id"].astype(str).to_numpy()
    year = (pd.to_numeric(samples["year"], errors="coerce").to_numpy(dtype=float)
            if "year" in samples.columns else np.full(n, np.nan))
    if not pixel_centres:
        lon = samples["longitude"].to_numpy(dtype=float)
        lat = samples["latitude"].to_numpy(dtype=float)
        return PlotCoordinates(lon, lat, year, np.full(n, "plot", dtype=object), n_plot=n)
    lon = np.full(n, np.nan)
    lat = np.full(n, np.nan)
    if plots is not None and len(plots):
        p = (plots.assign(sample_id=plots["sample_id"].astype(str))
             .drop_duplicates("sample_id").set_index("sample_id").reindex(ids))
        lon = p["longitude"].to_numpy(dtype=float)
        lat = p["latitude"].to_numpy(dtype=float)
        if "year" in p.columns:
            py = pd.to_numeric(p["year"], errors="coerce").to_numpy(dtype=float)
            year = np.where(np.isnan(year), py, year)
    ok = np.isfinite(lon) & np.isfinite(lat)
    source = np.where(ok, "joined", "none").astype(object)
    return PlotCoordinates(lon, lat, year, source, n_joined=int(ok.sum()),
                           n_missing=int((~ok).sum()))


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
    def ssl_note(self) -> str:
        """Real data: where and from which year the SSL patches were read, as a sentence.

        Empty for the simulated study or without patches. Says how many
        samples were given their GlobalFungi plot coordinate, how many were
        left out, and the samples per embedding year.
        """
        notes = self.frame.attrs.get("ssl_notes")
        if not notes:
            return ""
        return (f"SSL patches: {notes['coordinates']}; {notes['years']}; "
                f"{notes['n_complete_patch']:,} of {notes['n_samples']:,} samples have a complete "
                "patch.")

    @property
    def ssl_columns(self) -> list[str]:
        """The SSL patch columns (empty without embeddings)."""
        return [c for c in self.frame.columns if c.startswith("ssl_")]


_ID_COLUMNS = ("sample_id", "site_id", "longitude", "latitude", "year", "rarefied")


def _real_ssl_features(data_dir: Path, samples: pd.DataFrame, progress: bool,
                       pixel_centres: bool = True) -> tuple[pd.DataFrame, dict[str, Any]]:
    """SSL patches of real samples from ``<data_dir>/tessera``, at plot coordinates and years.

    The SPUN table's coordinates are 1 km pixel centres, so its samples get
    the plot coordinate (and year, if any) of the same ``sample_id`` in the
    GlobalFungi sample table when the directory holds one, and no patch
    otherwise. The patches are :func:`embedding_patches`'s, the reader that
    ``fungi-ssl fit`` and chapter 10 use: each sample is read from its
    embedding year (:func:`embedding_years`: a sample without a year is read
    from the first year held, like one from before it). ``<data_dir>/tessera``
    may hold geotessera tiles or Zarr embedding stores.
    """
    from fungi_ssl.data.io import find_real_tables, read_samples

    root = data_dir / "tessera"
    plots = None
    if pixel_centres:  # the SPUN table's 1 km pixel centres are never used here
        gf = find_real_tables(data_dir).samples
        plots = read_samples(gf) if gf is not None else None
    where = plot_coordinates(samples, plots, pixel_centres=pixel_centres)
    ok = np.isfinite(where.longitude) & np.isfinite(where.latitude)
    n, k = len(samples), PATCH_SIZE
    out = np.full((n, k, k, 128), np.nan, np.float32)
    if ok.any():
        located = pd.DataFrame({"longitude": where.longitude[ok], "latitude": where.latitude[ok],
                                "year": pd.array(where.year[ok], dtype="Int64")})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # counted below
            patches, _, which = embedding_patches(located, root, k=k, progress=progress)
        out = np.full((n, *patches.shape[1:]), np.nan, np.float32)
        out[ok] = patches
        years_note = which.describe()
    else:
        years_note = "no sample has a plot coordinate to read a patch at"
    ssl = patch_features_frame(out, samples["sample_id"].to_numpy())
    complete = np.isfinite(out).all(axis=(1, 2, 3))
    notes = {"coordinates": where.describe(), "years": years_note,
             "n_joined": where.n_joined, "n_no_coordinate": where.n_missing,
             "n_complete_patch": int(complete.sum()), "n_samples": n}
    return ssl, notes


def table_kind(data_dir: str | Path) -> str | None:
    """Which table :func:`predictor_table` builds from a real data directory.

    ``"covariates"``: the SPUN table with its 1 km covariates (and SSL
    patches where ``tessera/`` holds tiles); ``"samples"``: no SPUN table,
    but a GlobalFungi-style sample table and TESSERA tiles, so SSL patches
    only; None: neither, and chapters that model richness from predictors
    cannot run (:func:`table_skip_reason` says why).

    Examples
    --------
    >>> import tempfile
    >>> table_kind(tempfile.mkdtemp()) is None
    True
    """
    from fungi_ssl.data.io import find_real_tables

    try:
        tables = find_real_tables(data_dir)
    except FileNotFoundError:
        return None
    if tables.spun_covariates is not None:
        return "covariates"
    if tables.samples is not None and (Path(data_dir) / "tessera").is_dir():
        return "samples"
    return None


def table_skip_reason(data_dir: str | Path | None, *, covariates: bool = False) -> str | None:
    """One sentence saying why a chapter that models richness cannot run, or None.

    ``covariates=True``: the chapter needs the 1 km covariates (chapter 03
    compares the patches with them), so a directory with a sample table and
    TESSERA tiles but no SPUN table is not enough.

    Examples
    --------
    >>> table_skip_reason(None) is None
    True
    >>> import tempfile
    >>> table_skip_reason(tempfile.mkdtemp())[:40]
    'This chapter models richness from predic'
    """
    if not data_dir:
        return None
    kind = table_kind(data_dir)
    if kind == "samples" and covariates:
        return ("This chapter compares the satellite patches with the 1 km covariates, and the "
                "data directory has no covariate table (only a sample table and TESSERA tiles), "
                "so it is skipped.")
    if kind is not None:
        return None
    return ("This chapter models richness from predictors, and the data directory holds neither "
            "the SPUN table of 1 km covariates nor TESSERA tiles (a `tessera/` folder) beside "
            "its sample table, so it is skipped.")


def predictor_table(
    data_dir: str | Path | None = None, *, profile: str = "quick", seed: int = 0,
    with_ssl: bool = True, progress: bool = True, target: str = "rarefied",
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
    target : str
        A real sample table's column of rarefied richness (another guild's,
        say), used when the directory has no SPUN table (see :func:`table_kind`).

    Returns
    -------
    PredictorTable

    Raises
    ------
    FileNotFoundError
        A real directory with neither the SPUN table nor a sample table with
        TESSERA tiles (the message is :func:`table_skip_reason`'s sentence).
    """
    t0 = time.perf_counter()
    kind = "simulated" if not data_dir else table_kind(data_dir)
    if kind is None:
        raise FileNotFoundError(table_skip_reason(data_dir))
    table = "samples" if kind == "samples" else "covariates"
    field = open_field_data(data_dir or None, seed=seed, profile=profile, table=table,
                           target=target)
    samples = field.samples
    base = pd.DataFrame({c: samples[c].to_numpy() for c in _ID_COLUMNS if c in samples})
    if "year" not in base:
        base["year"] = np.nan
    base[TARGET] = np.log1p(samples["rarefied"].to_numpy(dtype=float))
    parts = [base]
    if field.covariates is not None:
        cov = field.covariates.reset_index(drop=True)
        parts.append(cov.drop(columns=[c for c in cov.columns if c in base.columns]))
    history = None
    has_ssl = False
    notes: dict[str, Any] = {}
    if with_ssl and field.is_simulated:
        trained, history = pretrained_encoder(field, profile, seed, progress=progress)
        ssl = ssl_patch_features(field, trained, profile, seed)
        parts.append(ssl.reset_index(drop=True))
        has_ssl = True
    elif with_ssl and data_dir and (Path(data_dir) / "tessera").is_dir():
        ssl, notes = _real_ssl_features(Path(data_dir), samples, progress,
                                        pixel_centres=kind == "covariates")
        parts.append(ssl.reset_index(drop=True))
        has_ssl = True
    frame = pd.concat(parts, axis=1)
    if notes:
        frame.attrs["ssl_notes"] = notes
    frame.attrs["seconds"] = time.perf_counter() - t0
    return PredictorTable(frame=frame, target=TARGET, has_ssl=has_ssl, source=field.source,
                          field=field, encoder_history=history)
