"""Replicate worlds of chapter 08: the park windows seen through other weather, clouds and sensor noise.

Chapter 08's interval for the ancient-against-other contrast is held to its
coverage over many worlds, not one. This module makes them:

* **a resensed landscape** (:class:`ResensedLandscape`): the base
  landscape's layers (land cover, canopy, stands, richness: the truth) with
  another sensor seed (:func:`replicate_seed`), so the sensors draw other
  green-up weather, clouds, haze and pixel noise; :func:`replicate_study`
  gives the study around it, in the changing or the null world
  (:func:`fungi_ssl.trends.trendmaps.null_world`);
* **their yearly maps** (:func:`replicate_maps`): simulated, embedded in
  memory and mapped by the book's map model, one cache entry per replicate
  world (``data/cache/trend_replicates``), on windows of
  :data:`REPLICATE_WINDOW_PX` pixels;
* **the trend analysis of each** (:func:`replicate_worlds`,
  :class:`ReplicateWorlds`): :data:`N_REPLICATE_WORLDS` worlds of each kind,
  the contrast, its interval and the truth in every one.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr
from tqdm import tqdm

from fungi_ssl.core import cache, config
from fungi_ssl.core.worker_threads import made_ahead
from fungi_ssl.simulate import SimulatedStudy
from fungi_ssl.simulate.landscape import Landscape
from fungi_ssl.trends.trendmaps import (
    WORLDS,
    _null_key,
    _sim_key,
    _world_study,
    park_window,
    truth_stack,
    woodland_stands,
)

if TYPE_CHECKING:  # pragma: no cover
    from fungi_ssl.embeddings.encoder import TrainedEncoder
    from fungi_ssl.maps.mapmodel import MapModel

__all__ = [
    "N_REPLICATE_WORLDS",
    "N_REPLICATE_WORLDS_BY_PROFILE",
    "REPLICATE_VERSION",
    "REPLICATE_WINDOW_PX",
    "ReplicateWorlds",
    "ResensedLandscape",
    "prefit_replicate_maps",
    "replicate_maps",
    "replicate_seed",
    "replicate_study",
    "replicate_worlds",
]


# --------------------------------------------------------------------------
# replicate worlds: other weather, clouds and sensor noise of the park windows
# --------------------------------------------------------------------------

#: Version of the replicate worlds' definition (part of their cache keys).
REPLICATE_VERSION = 1
#: Changing and null worlds chapter 08 replicates (each kind): 40, so that a coverage near
#: 90% is known to about ±8% (90% binomial interval; ±11% with 20 worlds, wider than the
#: 0.85-0.95 band the interval is held to).
N_REPLICATE_WORLDS = 40
#: Worlds of each kind per profile: the full book's :data:`N_REPLICATE_WORLDS`; the
#: quick book's 20, the fewest the coverage check is defined on, so that a cold quick
#: book stays within minutes (its coverage is known to about ±11%).
N_REPLICATE_WORLDS_BY_PROFILE = {"full": N_REPLICATE_WORLDS, "quick": 20}
#: Side (pixels) of the park windows of the replicate worlds, in both profiles:
#: 40 worlds × 3 parks × 8 years of simulating, embedding and mapping cost
#: too much at the book windows' size (:data:`PARK_WINDOW_PX`) on two cores.
REPLICATE_WINDOW_PX = 32


class ResensedLandscape:
    """A landscape seen through another draw of weather, clouds and sensor noise.

    The simulator's sensors (:func:`~fungi_ssl.simulate.sensors.sentinel_observations`)
    draw green-up weather, cloud fields, the regional cloud anomaly, haze,
    pixel noise, radar soil moisture (and each stand's spectral
    heterogeneity) from ``landscape.seed`` and read everything else from
    ``landscape.layers``. This wrapper keeps the base landscape's layers
    (land cover, canopy, stands, richness: the truth) and gives the sensors
    ``sensor_seed``: the same world, another realisation of what the
    satellites see. Built here, outside :mod:`fungi_ssl.simulate`, like
    :class:`StaticLandscape`.

    Examples
    --------
    >>> from fungi_ssl.simulate import SimulatedStudy
    >>> s = SimulatedStudy(n_samples=300, n_campaigns=8)
    >>> r = ResensedLandscape(s.landscape, 12345)
    >>> r.seed, r.rm is s.landscape.rm
    (12345, True)
    """

    def __init__(self, base: Landscape, sensor_seed: int):
        self.base = base
        self.seed = int(sensor_seed)

    def layers(self, epsg: np.ndarray, xs: np.ndarray, ys: np.ndarray,
               year: int | np.ndarray) -> dict[str, np.ndarray]:
        """The base landscape's layers (the sensor seed changes none of them)."""
        return self.base.layers(epsg, xs, ys, year)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)


def replicate_seed(seed: int, world: str, k: int) -> int:
    """Sensor seed of replicate ``k`` of ``world``: independent of every other world's.

    Examples
    --------
    >>> replicate_seed(0, "changing", 0) != replicate_seed(0, "null", 0)
    True
    """
    if world not in WORLDS:
        raise ValueError(f"world must be one of {list(WORLDS)}, got {world!r}")
    if int(k) < 0:
        raise ValueError(f"replicate index must be ≥ 0, got {k}")
    ss = np.random.SeedSequence([int(seed), 17, WORLDS.index(world), int(k)])
    return int(ss.generate_state(1, dtype=np.uint32)[0])


def replicate_study(study: SimulatedStudy, world: str, k: int) -> SimulatedStudy:
    """Replicate ``k`` of ``world``: its landscape, with :func:`replicate_seed`'s sensors."""
    base = _world_study(study, world)
    other = SimulatedStudy(study.config)
    other.landscape = ResensedLandscape(base.landscape, replicate_seed(study.config.seed, world, k))
    return other


def _replicate_key() -> str:
    src = Path(__file__).read_bytes()
    start = src.index(b"class ResensedLandscape")
    end = src.index(b"def _replicate_key")
    return f"v{REPLICATE_VERSION}-{hashlib.sha256(src[start:end]).hexdigest()[:12]}"


def _embed_in_memory(cube: xr.Dataset, trained: TrainedEncoder, chunk: int,
                     seed: int) -> xr.Dataset:
    """:func:`~fungi_ssl.embed.embed_cube`'s embeddings, made in memory (no store to write and read back)."""
    from fungi_ssl.embeddings import embed

    return embed.embed_cube_in_memory(cube, trained, chunk=chunk, seed=seed, n_threads=1)


def replicate_maps(study: SimulatedStudy, trained: TrainedEncoder, model: MapModel, *,
                   world: str, k: int, parks: Sequence[str], size: int,
                   years: Sequence[int], seed: int = 0,
                   root: str | Path | None = None, cached_only: bool = False,
                   ) -> tuple[dict[str, np.ndarray], dict[str, float]] | None:
    """Predicted ``log1p`` maps ``(year, y, x)`` of every park in replicate ``k`` of ``world``.

    As :func:`park_maps` (the same windows, encoder, model and timestep
    draws), in :func:`replicate_study`. One cache entry per replicate world
    (``data/cache/trend_replicates/<key>/maps.npz``), keyed by the study, the
    simulator, the world, ``k``, its sensor seed, the parks, window, years,
    encoder and model. With ``cached_only``, None when they are not cached
    yet. Maps are made on one BLAS thread (:func:`prefit_replicate_maps`
    makes them in worker processes, which have one).
    """
    from threadpoolctl import threadpool_limits

    years = [int(y) for y in years]
    cube_params = {**_sim_key(study), "world": world, "replicate": int(k),
                   "sensor_seed": replicate_seed(study.config.seed, world, k),
                   "replicates": _replicate_key(), "parks": list(parks), "size": int(size),
                   "years": years}
    if world == "null":
        cube_params["null_world"] = _null_key()
    params = {"cube": cube_params, "encoder": model.spec.encoder, "model": model.fingerprint,
              "model_settings": model.settings, "seed": int(seed), "blas_threads": 1}
    d = cache.cache_dir("trend_replicates", params, root=Path(root) if root is not None else None)
    path = d / "maps.npz"
    if path.exists():
        with np.load(path) as f:
            return {p: f[f"p{i}"] for i, p in enumerate(parks)}, {"cached": 1.0}
    if cached_only:
        return None
    with threadpool_limits(1):  # the same maps in a worker process as here, on any machine
        out = _replicate_maps(study, trained, model, world, k, parks, size, years, seed)
    tmp = cache.temporary_path(path)
    with open(tmp, "wb") as fh:
        np.savez(fh, **{f"p{i}": out[p] for i, p in enumerate(parks)})
    tmp.replace(path)
    return out, {"cached": 0.0}


def _replicate_maps(study: SimulatedStudy, trained: TrainedEncoder, model: MapModel, world: str,
                    k: int, parks: Sequence[str], size: int, years: list[int],
                    seed: int) -> dict[str, np.ndarray]:
    """Simulate, embed and map every park-year of one replicate world (no cache)."""
    from fungi_ssl.maps.predict import predict_map

    s = replicate_study(study, world, k)
    chunk = int(np.ceil(int(size) / 16) * 16)
    out: dict[str, np.ndarray] = {}
    windows = {p: park_window(study, p, size) for p in parks}
    jobs = [(p, y) for p in parks for y in years]
    layers: dict[str, list[np.ndarray]] = {p: [] for p in parks}

    def simulate(p: str, y: int) -> xr.Dataset:
        return s.cube_in_memory(windows[p], y)  # one block: cube(..., chunks=chunk)'s values

    for (p, y), cube in zip(jobs, made_ahead(jobs, simulate)):
        store = _embed_in_memory(cube, trained, chunk, seed)
        run = predict_map(model, {y: store}, y, quantity="log_richness", chunk=chunk,
                          window=chunk, scheduler="synchronous", progress=False,
                          warn_nan=False)  # the window's one-pixel ring has no full patch
        layers[p].append(np.asarray(run.map.values, dtype=np.float32))
    for p in parks:
        out[p] = np.stack(layers[p])
    return out


#: Worker processes that simulate, embed and map replicate worlds side by side.
REPLICATE_WORKERS = 2


def prefit_replicate_maps(study: SimulatedStudy, trained: TrainedEncoder, model: MapModel,
                          jobs: Sequence[tuple[str, int]], *, n_workers: int | None = None,
                          progress: bool = True, **kwargs: Any) -> list[tuple[str, int]]:
    """Make the maps of the replicate worlds ``jobs`` (``(world, k)``) not cached yet, side by side.

    One world is simulated, embedded (one torch thread) and mapped (one
    thread) in about a second and a half, so ``n_workers`` processes (default
    :data:`REPLICATE_WORKERS`)
    (joblib's loky) make that many worlds at once and write the cache that
    :func:`replicate_maps` then reads; the maps are those made one after
    another. ``kwargs`` are :func:`replicate_maps`'s ``parks``, ``size``,
    ``years``, ``seed`` and ``root``.

    Returns
    -------
    list of (str, int)
        The worlds made here (none with one worker: :func:`replicate_maps`
        then makes them one after another).
    """
    import joblib

    missing = [(w, k) for w, k in jobs
               if replicate_maps(study, trained, model, world=w, k=k, cached_only=True,
                                 **kwargs) is None]
    n_workers = REPLICATE_WORKERS if n_workers is None else n_workers
    workers = max(1, min(int(n_workers), len(missing), os.cpu_count() or 1))
    if workers < 2:
        return []
    tasks = (joblib.delayed(_make_replicate)(study, trained, model, w, k, kwargs)
             for w, k in missing)
    for _ in tqdm(joblib.Parallel(n_jobs=workers, backend="loky", return_as="generator")(tasks),
                  total=len(missing), desc="replicate worlds", unit="world",
                  disable=not progress):
        pass
    return missing


def _make_replicate(study: SimulatedStudy, trained: TrainedEncoder, model: MapModel, world: str,
                    k: int, kwargs: dict[str, Any]) -> None:
    replicate_maps(study, trained, model, world=world, k=k, **kwargs)  # writes the cache


@dataclass
class ReplicateWorlds:
    """Chapter 08's interval scored over replicate worlds.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per world: ``world``, ``replicate``, ``sensor_seed``,
        ``slope_ancient``, ``slope_other`` and their truths ``true_slope_*``,
        ``difference``, ``ci_low``, ``ci_high`` (:func:`fungi_ssl.trends.contrasts.park_year_contrast`
        with the slope-gain SD calibrated on the other changing worlds,
        ``slope_gain_sd``), ``se``, ``se_residual``, ``gain_load``,
        ``residual_ci_low``, ``residual_ci_high`` and ``residual_covers`` (the
        same interval without the slope-gain part),
        ``polygon_ci_low``, ``polygon_ci_high`` (:func:`fungi_ssl.trends.contrasts.woodland_contrast`,
        polygons as units, for comparison), ``true_difference``, ``covers``
        (the interval holds the true difference), ``excludes_zero``,
        ``polygon_covers``, ``polygon_excludes_zero``, ``false_positive_rate``
        (share of polygons with Mann–Kendall p below the level) and ``cached``.
    summary : dict
        ``n_worlds`` (changing + null), ``n_changing``, ``n_null``,
        ``ci_coverage_90``, ``null_ci_excludes_zero_rate``, the same two for the
        polygon interval and for the residual-only interval
        (``residual_ci_coverage_90``, ``residual_null_ci_excludes_zero_rate``),
        ``slope_gain_sd`` (calibrated on every changing world: the book's
        value), per kind of world (``changing``, ``null``) the diagnostics of
        the estimate against the truth: ``mean_error`` (and its standard
        error ``se_mean_error``; ``mean_error_ancient``, ``mean_error_other``
        of the two types' slopes), ``mean_z`` (mean of
        (estimate − truth) / se), ``sd_z``, ``sd_over_mean_se`` and
        ``sd_over_mean_se_residual`` (SD of the estimates over worlds against
        the mean standard error), ``mean_false_positive_rate`` (null worlds),
        ``window_px``, ``n_parks``, ``n_park_years``, ``df``, ``seconds``.
    """

    table: pd.DataFrame
    summary: dict[str, Any]


def replicate_worlds(study: SimulatedStudy, trained: TrainedEncoder, model: MapModel, *,
                     n_worlds: int = N_REPLICATE_WORLDS, size: int = REPLICATE_WINDOW_PX,
                     years: Iterable[int] = config.YEARS, parks: Sequence[str] | None = None,
                     seed: int = 0, n_boot: int = 1000, alpha: float = 0.05,
                     confidence: float = 0.9, progress: bool = True,
                     root: str | Path | None = None) -> ReplicateWorlds:
    """The ancient-minus-other interval over ``n_worlds`` changing and ``n_worlds`` null worlds.

    Each world has its own weather, clouds and sensor noise
    (:func:`replicate_study`), independent of every other world's and of the
    book's own world; the landscape, polygons and truth are the study's. A
    changing world's interval should hold the true difference (of the same
    polygons, on the pixels its maps cover) at the nominal rate; a null
    world's should exclude zero at one minus it.

    Each interval is :func:`fungi_ssl.trends.contrasts.park_year_contrast`'s with the
    slope-gain SD (:func:`fungi_ssl.trends.contrasts.calibrate_slope_gain`) measured
    on the *other* changing worlds' estimates (a null world: on all of them),
    so no interval sees its own world, and no calibration sees any truth.
    """
    from fungi_ssl.trends import contrasts as tc
    from fungi_ssl.trends import polygons as tr

    if int(n_worlds) < 1:
        raise ValueError(f"n_worlds must be at least 1, got {n_worlds}")
    t0 = time.perf_counter()
    if parks is None:
        from fungi_ssl.simulate.study import UK_PARKS

        parks = list(UK_PARKS)
    years = sorted(int(y) for y in years)
    polys = {p: woodland_stands(study, p, size) for p in parks}
    attrs = pd.concat([pd.DataFrame(g.drop(columns="geometry"))[["polygon_id", "park", "woodland"]]
                       for g in polys.values()], ignore_index=True)
    truths = {w: {p: truth_stack(study, p, size, years, w) for p in parks} for w in WORLDS}
    rows = []
    contrasts: list[Any] = []
    jobs = [(w, k) for k in range(int(n_worlds)) for w in WORLDS]
    made_now = set(prefit_replicate_maps(study, trained, model, jobs, progress=progress,
                                         parks=parks, size=size, years=years, seed=seed,
                                         root=root))
    for w, k in tqdm(jobs, desc="scoring worlds", unit="world", disable=not progress):
        maps, info = replicate_maps(study, trained, model, world=w, k=k, parks=parks, size=size,
                                    years=years, seed=seed, root=root)
        zs, zt = [], []
        for p in parks:
            truth = truths[w][p]
            pred = truth.copy(data=maps[p])
            zs.append(tr.zonal_means(pred, polys[p], years=years))
            zt.append(tr.zonal_means(truth.where(np.isfinite(pred)), polys[p], years=years))
        z = pd.concat(zs, ignore_index=True).merge(attrs, on="polygon_id")
        zt_ = pd.concat(zt, ignore_index=True)
        rec = tr.polygon_trends(z.drop(columns=["park", "woodland"]), attrs, log=False, years=years)
        true = tr.polygon_trends(zt_, attrs, log=False, years=years)
        truth_d = tc.area_weighted_slope(true)
        c = tc.park_year_contrast(z, n_boot=n_boot, confidence=confidence, seed=seed,
                                  years=years)
        pc = tc.woodland_contrast(rec, n_boot=n_boot, confidence=confidence, seed=seed)
        d_true = float(truth_d["ancient"] - truth_d["other"])
        tested = rec["mk_p"].dropna()
        contrasts.append(c)
        rows.append({"world": w, "replicate": k,
                     "sensor_seed": replicate_seed(study.config.seed, w, k),
                     "slope_ancient": c.slope_ancient, "slope_other": c.slope_other,
                     "true_slope_ancient": float(truth_d["ancient"]),
                     "true_slope_other": float(truth_d["other"]),
                     "difference": c.difference, "se_residual": c.se_residual,
                     "gain_load": c.gain_load,
                     "residual_ci_low": c.ci[0], "residual_ci_high": c.ci[1],
                     "polygon_ci_low": pc.ci[0], "polygon_ci_high": pc.ci[1],
                     "true_difference": d_true,
                     "residual_covers": bool(c.ci[0] <= d_true <= c.ci[1]),
                     "residual_excludes_zero": bool(c.ci[0] > 0 or c.ci[1] < 0),
                     "polygon_covers": bool(pc.ci[0] <= d_true <= pc.ci[1]),
                     "polygon_excludes_zero": bool(pc.ci[0] > 0 or pc.ci[1] < 0),
                     "false_positive_rate": float((tested < alpha).mean()) if len(tested) else None,
                     "n_parks": c.n_parks, "n_park_years": c.n_park_years, "df": c.df,
                     "cached": bool(info["cached"]) and (w, k) not in made_now})
    table = pd.DataFrame(rows)
    changing = (table["world"] == "changing").to_numpy()

    def gain_without(i: int | None) -> float:
        use = changing.copy()
        if i is not None:
            use[i] = False
        if use.sum() < 3:
            return 0.0
        t = table[use]
        return tc.calibrate_slope_gain(t["difference"], t["se_residual"], t["gain_load"])

    table[["slope_gain_sd", "se", "ci_low", "ci_high"]] = np.nan
    table[["covers", "excludes_zero"]] = False
    for i, c in enumerate(contrasts):
        g = c.with_slope_gain(gain_without(i if changing[i] else None))
        d_true = table.at[i, "true_difference"]
        table.loc[i, ["slope_gain_sd", "se", "ci_low", "ci_high"]] = [
            g.slope_gain_sd, g.se, g.ci[0], g.ci[1]]
        table.loc[i, "covers"] = bool(g.ci[0] <= d_true <= g.ci[1])
        table.loc[i, "excludes_zero"] = bool(g.ci[0] > 0 or g.ci[1] < 0)
    ch, nu = table[changing], table[~changing]

    def diagnostics(t: pd.DataFrame) -> dict[str, float]:
        err = t["difference"] - t["true_difference"]
        z = err / t["se"]
        sd = float(t["difference"].std(ddof=1)) if len(t) > 1 else float("nan")
        out = {f"mean_error_{k}": float((t[f"slope_{k}"] - t[f"true_slope_{k}"]).mean())
               for k in ("ancient", "other")}
        return {**out, "mean_error": float(err.mean()),
                "se_mean_error": float(err.std(ddof=1) / np.sqrt(len(t))) if len(t) > 1 else float("nan"),
                "mean_z": float(z.mean()),
                "sd_z": float(z.std(ddof=1)) if len(t) > 1 else float("nan"),
                "sd_over_mean_se": sd / float(t["se"].mean()),
                "sd_over_mean_se_residual": sd / float(t["se_residual"].mean())}

    summary = {
        "n_worlds": len(table), "n_changing": len(ch), "n_null": len(nu),
        "ci_coverage_90": float(ch["covers"].mean()),
        "null_ci_excludes_zero_rate": float(nu["excludes_zero"].mean()),
        "residual_ci_coverage_90": float(ch["residual_covers"].mean()),
        "residual_null_ci_excludes_zero_rate": float(nu["residual_excludes_zero"].mean()),
        "polygon_ci_coverage_90": float(ch["polygon_covers"].mean()),
        "polygon_null_ci_excludes_zero_rate": float(nu["polygon_excludes_zero"].mean()),
        "slope_gain_sd": gain_without(None),
        "changing": diagnostics(ch), "null": diagnostics(nu),
        "mean_false_positive_rate": float(nu["false_positive_rate"].mean()),
        "confidence": float(confidence), "window_px": int(size),
        "n_parks": int(table["n_parks"].iloc[0]), "n_park_years": int(table["n_park_years"].iloc[0]),
        "df": int(table["df"].iloc[0]),
        "n_cached": int(table["cached"].sum()), "seconds": time.perf_counter() - t0,
    }
    return ReplicateWorlds(table, summary)
