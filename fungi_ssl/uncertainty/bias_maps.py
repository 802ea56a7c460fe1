"""Maps of uncertainty beside the 10 m richness map: interval width and area of applicability.

A richness map (:func:`fungi_ssl.maps.predict.predict_map`) says what the model
predicts at every pixel; this module adds, on the same grid and written the
same way (Cloud-Optimised GeoTIFF, one layer per file), what a user needs to
read it:

* ``interval_width``: the width, in rarefied-richness units, of the 90%
  split-conformal interval at each pixel. The interval is ``prediction ± q``
  on the model's ``log1p`` scale (:class:`fungi_ssl.uncertainty.intervals.ConformalRegressor`),
  its lower end clipped at ``log1p(0) = 0`` because richness is never
  negative, so on the richness scale the width is
  ``expm1(p + q) − expm1(max(p − q, 0))``: wide where the map predicts high
  richness, a fixed ratio of the prediction elsewhere;
* ``dissimilarity``: the dissimilarity index of Meyer & Pebesma (2021) of
  each pixel in the **map model's own predictor space** (the principal
  components of the 3 × 3 embedding patch, weighted by the regressor's gain
  importance), from :class:`fungi_ssl.uncertainty.aoa.AreaOfApplicability`;
* ``aoa``: 1 where that index is at most the threshold learnt from the
  training samples' cross-validated index (inside the area of
  applicability), 0 outside, NaN where the map has no prediction.

:func:`map_aoa` fits the area of applicability of a
:class:`~fungi_ssl.maps.mapmodel.MapModel` on its training table;
:func:`uncertainty_maps` walks a map grid window by window (memory follows the
window, as in :func:`~fungi_ssl.maps.predict.predict_map`), predicts, measures the
index with the nearest-neighbour search of
:class:`~fungi_ssl.uncertainty.aoa.AreaOfApplicability` (a blocked matrix product, not a
loop over training samples) and writes the layers; :func:`map_truth_table`
lines a map up with a truth layer pixel by pixel for the checks of
:mod:`fungi_ssl.uncertainty.bias`.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd
import rioxarray  # noqa: F401 (the .rio accessor)
import xarray as xr
from tqdm import tqdm

from fungi_ssl.maps.mapmodel import MapModel
from fungi_ssl.uncertainty.aoa import AreaOfApplicability, importance_weights
from fungi_ssl.uncertainty.intervals import DEFAULT_CONFIDENCE, AdaptiveConformal

__all__ = [
    "LAYERS",
    "UncertaintyMaps",
    "adaptive_features",
    "cached_map_aoa",
    "draw_cores",
    "interval_width",
    "map_aoa",
    "map_truth_table",
    "uncertainty_maps",
    "validation_folds",
    "window_scores",
]

#: The layers :func:`uncertainty_maps` can write, with their units.
LAYERS: dict[str, str] = {
    "log_richness": "log1p(rarefied ECM richness)",
    "interval_width": "rarefied ECM richness (width of the 90% conformal interval)",
    "dissimilarity": "dissimilarity index (distance to the nearest training sample / mean "
    "distance between training samples)",
    "aoa": "1 inside the area of applicability, 0 outside",
    "lower": "log1p(rarefied ECM richness), lower end of the 90% conformal interval",
    "upper": "log1p(rarefied ECM richness), upper end of the 90% conformal interval",
}


def interval_width(log_pred: Any, quantile: float) -> np.ndarray:
    """Width on the richness scale of the interval ``log_pred ± quantile`` (lower end ≥ 0).

    Parameters
    ----------
    log_pred : array_like
        Predictions of ``log1p(richness)``.
    quantile : float or array_like
        The interval's half-width ``q`` (log units, ≥ 0): one for every pixel
        (a split-conformal quantile) or one per pixel (``q · σ̂(x)`` of
        :class:`fungi_ssl.uncertainty.intervals.AdaptiveConformal`; NaN where unknown).

    Returns
    -------
    numpy.ndarray
        ``expm1(p + q) − expm1(max(p − q, 0))``; NaN where ``p`` or ``q`` is NaN.

    Examples
    --------
    >>> interval_width([np.log1p(9.0), 0.0], np.log(2.0)).round(3).tolist()   # 9 → [4, 19]; 0 → [0, 1]
    [15.0, 1.0]
    """
    q = np.asarray(quantile, dtype=float)
    if np.any(np.isinf(q)) or np.any(q[~np.isnan(q)] < 0) or (q.ndim == 0 and np.isnan(q)):
        raise ValueError(f"quantile must be a finite number ≥ 0 (log units), got {quantile!r}")
    p = np.asarray(log_pred, dtype=float)
    return np.expm1(p + q) - np.expm1(np.maximum(p - q, 0.0))


def _component_names(n: int) -> list[str]:
    return [f"pc{i:02d}" for i in range(n)]


def map_aoa(
    model: MapModel,
    frame: pd.DataFrame,
    folds: Any,
    *,
    weights: Any = "importance",
    n_jobs: int = 2,
) -> AreaOfApplicability:
    """The area of applicability of a map model, in its own predictor space.

    The map model sees a pixel through the principal components of its
    3 × 3 embedding patch; those, weighted by the regressor's gain importance
    (:func:`fungi_ssl.uncertainty.aoa.importance_weights`), are the space the
    dissimilarity index is measured in. The threshold comes from the
    training samples' index under ``folds`` (pass the spatial blocks the
    model was validated with: with random folds, cores of one site sit on
    both sides and the threshold collapses to the within-site spread).

    Parameters
    ----------
    model : MapModel
        A fitted map model.
    frame : pandas.DataFrame
        Its training table (the ``ssl_`` patch columns), one row per sample.
    folds : array_like
        A fold label per row of ``frame`` (e.g. ``BlockKFold.fold_labels()``).
    weights : "importance", array_like or None
        Predictor weights: the regressor's importance (default), one weight per
        component, or None for equal weights (needed for a model without
        importances, such as ridge).
    n_jobs : int
        Threads of the nearest-neighbour search.

    Returns
    -------
    AreaOfApplicability
        Fitted on the components ``pc00`` … (rows without a complete patch
        left out).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(300, 72))
    >>> m = MapModel("rf", n_components=3, model_params={"n_estimators": 20}).fit(
    ...     X, np.expm1(3 + X[:, 0] / 2), encoder="e", embedding_dim=8)
    >>> cols = [f"ssl_{i:04d}" for i in range(72)]
    >>> aoa = map_aoa(m, pd.DataFrame(X, columns=cols), folds=np.arange(300) % 5)
    >>> list(aoa.feature_names_in_), bool(aoa.weights_[0] > aoa.weights_[2])
    (['pc00', 'pc01', 'pc02'], True)
    """
    model._check_fitted()
    Z = model.project_patches(frame)
    labels = np.asarray(folds)
    if labels.shape != (len(Z),):
        raise ValueError(f"folds: expected a fold label per row of frame ({len(Z)}), got shape "
                         f"{labels.shape}")
    ok = np.isfinite(Z).all(axis=1)
    if ok.sum() < 2:
        raise ValueError("frame: fewer than two rows have a complete patch")
    names = _component_names(Z.shape[1])
    if isinstance(weights, str):
        if weights != "importance":
            raise ValueError(f"weights must be 'importance', an array or None, got {weights!r}")
        w = importance_weights(model.regressor_).to_numpy(dtype=float)
        if w.size != Z.shape[1]:
            raise ValueError(
                f"the regressor reports {w.size} importances for {Z.shape[1]} components"
            )
    else:
        w = weights
    aoa = AreaOfApplicability(n_jobs=n_jobs)
    return aoa.fit(pd.DataFrame(Z[ok], columns=names), folds=labels[ok], weights=w)


def adaptive_features(log_pred: Any, dissimilarity: Any) -> np.ndarray:
    """The features of the adaptive interval's scale model: ``[prediction, DI]`` per row.

    The same two numbers at a calibration sample (its held-out prediction and
    its dissimilarity index to its fold's training part) and at a map pixel
    (the map and the pixel's index), so :class:`fungi_ssl.uncertainty.intervals.AdaptiveConformal`
    learns ``σ̂`` at the samples and applies it over the map.

    Examples
    --------
    >>> adaptive_features([1.0, 2.0], [0.1, 0.3]).tolist()
    [[1.0, 0.1], [2.0, 0.3]]
    """
    p = np.asarray(log_pred, dtype=float).ravel()
    d = np.asarray(dissimilarity, dtype=float).ravel()
    if p.shape != d.shape:
        raise ValueError(f"log_pred ({p.size}) and dissimilarity ({d.size}) differ in length")
    return np.column_stack([p, d])


def validation_folds(frame: pd.DataFrame, block_km: float = 50.0, n_splits: int = 5,
                     seed: int = 0) -> tuple[np.ndarray, str]:
    """The validation folds behind every area of applicability: the book's spatial blocks.

    Chapter 04's spatial CV (:func:`fungi_ssl.validation.comparison.spatial_splitter`:
    square blocks of ``block_km``, sites kept whole, ``n_splits`` folds).
    Chapter 07 takes the AOA threshold from these folds and chapter 10
    (:func:`fungi_ssl.region.workflow.area_of_applicability`) from the same, so a
    threshold means one thing: how unlike its training data a sample was
    when a fold of blocks predicted it. Where the samples span fewer blocks
    than folds (a regional study), the splitter takes a smaller block side
    (:func:`fungi_ssl.validation.cv.fitting_block_size`) and the description says so;
    when the samples lie in one 100 m block the folds group whole sites.

    Parameters
    ----------
    frame : pandas.DataFrame
        ``longitude`` and ``latitude`` (WGS84) per training sample.
    block_km : float
    n_splits : int
    seed : int

    Returns
    -------
    (numpy.ndarray, str)
        A fold label per row, and a short description of the folds.

    Examples
    --------
    >>> t = pd.DataFrame({"longitude": np.repeat([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], 3),
    ...                   "latitude": 45.0})
    >>> folds, how = validation_folds(t, 50, n_splits=3)
    >>> len(np.unique(folds)), how
    (3, '50 km spatial blocks, 3 folds')
    """
    from fungi_ssl.validation.comparison import spatial_splitter

    for c in ("longitude", "latitude"):
        if c not in frame.columns:
            raise ValueError(f"validation_folds: the table has no {c!r} column")
    try:
        splitter = spatial_splitter(frame, block_size_m=float(block_km) * 1000.0,
                                    n_splits=n_splits, seed=seed)
    except ValueError:
        from sklearn.model_selection import GroupKFold

        from fungi_ssl.data.sites import site_groups

        sites = site_groups(frame[["longitude", "latitude"]].to_numpy(float), coordinates="lonlat")
        if len(np.unique(sites)) < n_splits:
            raise ValueError(f"validation_folds: the {len(frame)} samples lie at fewer than "
                             f"{n_splits} sites; no {n_splits} validation folds can be made") from None
        labels = np.empty(len(frame), int)
        for i, (_, test) in enumerate(GroupKFold(n_splits=n_splits).split(frame, groups=sites)):
            labels[test] = i
        return labels, (f"{n_splits} site-grouped folds (the samples lie in a single block "
                        "even of 100 m)")
    size = splitter.block_size_m / 1000.0
    how = f"{size:g} km spatial blocks, {splitter.n_splits} folds"
    if size != float(block_km) or splitter.n_splits != n_splits:
        how += f" (the samples span too few {block_km:g} km blocks)"
    return np.asarray(splitter.fold_labels()), how


def draw_cores(study: Any, log_richness: Any, seed: int = 0) -> np.ndarray:
    """One simulated soil core's ``log1p(rarefied)`` per pixel, drawn from the truth.

    The core-to-core distribution of ``log1p(rarefied)`` at a pixel's true
    log richness (:func:`fungi_ssl.simulate.truth.rarefied_curve`, built by
    :func:`~fungi_ssl.simulate.truth.rarefied_response` through the study's
    own sequencing and rarefaction chain): its mean ``log1p_mean`` and
    core-to-core SD ``sd_log1p``, interpolated at the pixel, with a normal
    draw around the mean, floored at 0 (no negative richness). A map interval
    is scored against these cores, the quantity a sample would give there.

    Parameters
    ----------
    study : SimulatedStudy
    log_richness : array_like
        True log richness per pixel (NaN stays NaN).
    seed : int

    Returns
    -------
    numpy.ndarray
        Same shape as ``log_richness``.
    """
    from fungi_ssl.simulate.truth import rarefied_curve

    cv = rarefied_curve(study)
    lr = np.asarray(log_richness, dtype=float)
    mean = np.interp(lr, cv["log_richness"], cv["log1p_mean"])
    sd = np.interp(lr, cv["log_richness"], cv["sd_log1p"])
    z = np.random.default_rng([int(seed), 4242]).standard_normal(lr.shape)
    return np.where(np.isnan(lr), np.nan, np.maximum(mean + sd * z, 0.0))


def cached_map_aoa(model: MapModel, frame: pd.DataFrame, folds: Any, *, n_jobs: int = 2,
                   root: str | Path | None = None) -> AreaOfApplicability:
    """:func:`map_aoa` with importance weights, kept under ``data/cache/map_aoa/<key>/``.

    The key covers the model's training fingerprint and settings, its
    regressor's importances, the patch columns' values at the rows given and
    the fold labels, so another model, table or fold assignment never reuses
    an entry. Chapter 07 fits one per held-out region model; a warm run reads
    them.
    """
    import hashlib

    import joblib

    from fungi_ssl.core import cache

    model._check_fitted()
    labels = np.asarray(folds)
    cols = list(model.spec.predictor_columns)
    h = hashlib.sha1()
    h.update(np.ascontiguousarray(frame[cols].to_numpy(np.float32)).tobytes())
    h.update(np.ascontiguousarray(labels.astype(np.int64)).tobytes())
    h.update(importance_weights(model.regressor_).to_numpy(float).tobytes())
    params = {"model": model.fingerprint, "settings": repr(sorted(model.settings.items())),
              "rows": h.hexdigest(), "layout": 2}  # 2: pickles fungi_ssl.uncertainty.aoa (issue 19)
    path = cache.cache_dir("map_aoa", params, root=Path(root) if root is not None else None
                           ) / "aoa.joblib"
    if path.exists():
        return joblib.load(path)
    aoa = map_aoa(model, frame, labels, n_jobs=n_jobs)
    tmp = cache.temporary_path(path)
    joblib.dump(aoa, tmp)
    tmp.replace(path)
    return aoa


def window_scores(model: MapModel, embedding: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Principal-component scores of every interior pixel's patch in a window with a halo.

    The same projection :meth:`MapModel.predict_window` feeds its regressor,
    returned instead of the prediction.

    Parameters
    ----------
    model : MapModel
    embedding : numpy.ndarray
        ``(H + 2h, W + 2h, dim)`` int8 (or float) values, ``h = k // 2``.
    scale : numpy.ndarray
        ``(H + 2h, W + 2h)``; non-finite means no embedding.

    Returns
    -------
    numpy.ndarray
        ``(H, W, n_components)`` float32; NaN where the patch is incomplete.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> X = rng.normal(size=(200, 72))
    >>> m = MapModel("ridge", n_components=3).fit(X, np.expm1(3 + X[:, 0] / 2), encoder="e",
    ...                                           embedding_dim=8)
    >>> emb = rng.integers(-127, 128, size=(5, 6, 8)).astype(np.int8)
    >>> sc = np.full((5, 6), 0.01, np.float32)
    >>> z = window_scores(m, emb, sc)
    >>> patch = (emb[0:3, 0:3].astype(float) * 0.01).reshape(1, -1)      # pixel (0, 0)
    >>> bool(np.allclose(z[0, 0], m.project_patches(patch)[0], atol=1e-4)), z.shape
    (True, (3, 4, 3))
    """
    return model.window_scores(embedding, scale)


@dataclass
class UncertaintyMaps:
    """What :func:`uncertainty_maps` made.

    Attributes
    ----------
    maps : xarray.Dataset
        One ``(y, x)`` variable per layer, with the grid's CRS (in memory, or
        opened lazily from the files written).
    paths : dict
        Layer → COG written.
    quantile : float
        The conformal ``q`` (log units) of the interval.
    threshold : float
        The area of applicability's threshold.
    n_pixels : int
    seconds : dict
        Wall seconds of ``read``, ``project`` (the patch's principal
        components, computed once per pixel for both uses), ``predict`` (the
        regressor), ``dissimilarity`` (the nearest-neighbour search) and ``write``.
    """

    maps: xr.Dataset
    paths: dict[str, Path]
    quantile: float
    threshold: float
    n_pixels: int
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def di_pixels_per_second(self) -> float:
        """Pixels per wall second of the dissimilarity index."""
        return self.n_pixels / max(self.seconds.get("dissimilarity", 0.0), 1e-9)

    @property
    def predict_pixels_per_second(self) -> float:
        """Pixels per wall second of the regressor (trees) on the components."""
        return self.n_pixels / max(self.seconds.get("predict", 0.0), 1e-9)

    @property
    def project_pixels_per_second(self) -> float:
        """Pixels per wall second of the projection shared by prediction and DI."""
        return self.n_pixels / max(self.seconds.get("project", 0.0), 1e-9)


def uncertainty_maps(
    model: MapModel,
    source: Any,
    year: int,
    bbox: Sequence[float] | None = None,
    *,
    aoa: AreaOfApplicability,
    quantile: float | None = None,
    conformal: AdaptiveConformal | None = None,
    outputs: Mapping[str, str | Path] | None = None,
    overwrite: bool = False,
    confidence: float = DEFAULT_CONFIDENCE,
    bbox_crs: Any = None,
    window: int = 1024,
    num_threads: int = 2,
    progress: bool = True,
    layers: Sequence[str] | None = None,
) -> UncertaintyMaps:
    """Richness, interval width and area of applicability of a map grid, window by window.

    Parameters
    ----------
    model : MapModel
        The fitted map model.
    source : path, Dataset or mapping
        Embeddings, as :func:`fungi_ssl.maps.sources.open_embedding_source` takes them.
    year : int
    bbox : (xmin, ymin, xmax, ymax), optional
        As :func:`fungi_ssl.maps.sources.open_embedding_source` (default: the whole store).
    aoa : AreaOfApplicability
        From :func:`map_aoa` (components ``pc00`` …).
    quantile : float, optional
        The split-conformal ``q`` of the interval (log units), e.g.
        :attr:`fungi_ssl.uncertainty.intervals.ConformalRegressor.quantile_`: the same
        half-width at every pixel.
    conformal : AdaptiveConformal, optional
        A locally adaptive interval instead: half-width ``q · σ̂(x)`` with
        ``σ̂`` from the pixel's prediction and dissimilarity index
        (:func:`adaptive_features`); give this or ``quantile``.
    outputs : mapping, optional
        Layer (see :data:`LAYERS`) → ``.tif`` path; the layers named are
        written as COGs like the richness map. None: all layers in memory
        (small grids only).
    overwrite : bool
        Replace existing outputs.
    confidence : float
        The interval's level (recorded in the files).
    bbox_crs : CRS, optional
    window : int
        Side of the windows computed one after another (pixels).
    num_threads : int
        Threads of the regressor and of the nearest-neighbour search.
    progress : bool
        A tqdm bar over windows.
    layers : sequence of str, optional
        The layers to compute (default: all of :data:`LAYERS`); without
        ``log_richness`` and ``interval_width`` the regressor is not run
        (chapter 10's area of applicability asks for ``dissimilarity`` and
        ``aoa`` only).

    Returns
    -------
    UncertaintyMaps

    Raises
    ------
    ValueError
        Embeddings the model was not fitted for, an AOA fitted on other
        predictors than the model's components, an unknown layer, a bad
        quantile or window.
    FileExistsError
        An existing output without ``overwrite``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(300, 72)).astype(np.float32)
    >>> m = MapModel("ridge", n_components=2).fit(X, np.expm1(3 + X[:, 32] / 2), encoder="demo",
    ...                                           embedding_dim=8)
    >>> aoa = map_aoa(m, pd.DataFrame(X, columns=[f"ssl_{i:04d}" for i in range(72)]),
    ...               np.arange(300) % 5, weights=None)
    >>> ds = xr.Dataset(
    ...     {"embedding": (("y", "x", "dim"), rng.integers(-127, 128, (20, 30, 8)).astype(np.int8)),
    ...      "scale": (("y", "x"), np.full((20, 30), 0.01, np.float32))},
    ...     coords={"y": 6e6 - 10 * np.arange(20) - 5, "x": 5e5 + 10 * np.arange(30) + 5},
    ...     attrs={"encoder": "demo", "year": 2020}).rio.write_crs(32630)
    >>> run = uncertainty_maps(m, ds, 2020, aoa=aoa, quantile=0.5, window=16, progress=False)
    >>> sorted(run.maps.data_vars), run.maps["aoa"].shape
    (['aoa', 'dissimilarity', 'interval_width', 'log_richness', 'lower', 'upper'], (20, 30))
    """
    from fungi_ssl.maps.outputs import open_map
    from fungi_ssl.maps.sources import open_embedding_source

    if (quantile is None) == (conformal is None):
        raise ValueError("give the interval as either quantile (one half-width) or conformal "
                         "(AdaptiveConformal), not both or neither")
    if conformal is not None:
        if not hasattr(conformal, "model_"):
            raise ValueError("conformal: the AdaptiveConformal is not fitted")
        q = float(conformal.quantile_)
    else:
        q = float(quantile)
    if not (np.isfinite(q) and q >= 0):
        raise ValueError(f"quantile must be a finite number ≥ 0 (log units), got {q!r}")
    if int(window) < 16 or int(window) % 16:
        raise ValueError(f"window must be a multiple of 16 pixels (≥ 16), got {window}")
    model._check_fitted()
    n_comp = int(model.pca_.n_components_)
    if list(aoa.feature_names_in_) != _component_names(n_comp):
        raise ValueError(
            "aoa: the area of applicability was trained on other predictors "
            f"({list(aoa.feature_names_in_)[:4]}…) than the map model's {n_comp} components; "
            "fit it with map_aoa(model, ...)"
        )
    wanted = list(LAYERS) if layers is None else list(dict.fromkeys(layers))
    unknown = [k for k in wanted if k not in LAYERS]
    if unknown or not wanted:
        raise ValueError(f"layers: unknown or none {unknown}; choose from {list(LAYERS)}")
    outputs = dict(outputs or {})
    unknown = [k for k in outputs if k not in LAYERS]
    if unknown:
        raise ValueError(f"outputs: unknown layers {unknown}; choose from {list(LAYERS)}")
    unknown = [k for k in outputs if k not in wanted]
    if unknown:
        raise ValueError(f"outputs: layers {unknown} are not computed; choose from {wanted}")
    interval_layers = {"interval_width", "lower", "upper"}
    run_model = "log_richness" in wanted or bool(interval_layers & set(wanted))
    run_di = ("dissimilarity" in wanted or "aoa" in wanted
              or (conformal is not None and bool(interval_layers & set(wanted))))
    paths: dict[str, Path] = {}
    for layer, p in outputs.items():
        path = Path(p)
        if path.suffix.lower() not in (".tif", ".tiff"):
            raise ValueError(f"outputs[{layer!r}]: expected a .tif path (a COG), got {path}")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"output folder {path.parent} does not exist (for {path.name})")
        if path.exists() and not overwrite:
            raise FileExistsError(f"output {path} exists; pass overwrite=True to replace it")
        paths[layer] = path
    src = open_embedding_source(source, year, bbox, bbox_crs=bbox_crs)
    model.check_embeddings(embedding_dim=src.dim, encoder=src.encoder,
                           where=f"embeddings of {src.name} ({src.year})")
    grid = src.grid
    h = model.spec.patch_size // 2
    window = int(window)
    memory = {k: np.full((grid.height, grid.width), np.nan, np.float32)
              for k in wanted if k not in paths}
    tags = {"year": str(int(year)), "model_fingerprint": model.fingerprint,
            "encoder": model.spec.encoder, "confidence": str(confidence),
            "conformal_quantile_log": repr(q), "aoa_threshold": repr(float(aoa.threshold_)),
            "interval": ("adaptive: prediction ± q · sigma(prediction, dissimilarity)"
                         if conformal is not None else "prediction ± q"),
            "software": "fungi_ssl.bias_maps.uncertainty_maps"}
    seconds = dict.fromkeys(("read", "project", "predict", "dissimilarity", "write"), 0.0)
    windows = [(r, min(r + window, grid.height), c, min(c + window, grid.width))
               for r in range(0, grid.height, window) for c in range(0, grid.width, window)]
    with _CogLayers(paths, grid, tags, overwrite) as writer:
        for r0, r1, c0, c1 in tqdm(windows, desc="uncertainty windows", disable=not progress):
            t = time.perf_counter()
            emb, sc = src.read(r0 - h, r1 + h, c0 - h, c1 + h, (r1 - r0 + 2 * h,),
                               (c1 - c0 + 2 * h,))
            emb, sc = np.asarray(emb.compute()), np.asarray(sc.compute())[..., 0]
            seconds["read"] += time.perf_counter() - t
            # one projection feeds both the trees and the nearest-neighbour search
            t = time.perf_counter()
            zz = window_scores(model, emb, sc)
            shape = zz.shape[:2]
            z = zz.reshape(-1, n_comp)
            ok = np.isfinite(z).all(axis=1)
            seconds["project"] += time.perf_counter() - t
            t = time.perf_counter()
            logp = np.full(z.shape[0], np.nan, np.float32)
            if run_model and ok.any():  # the map model's own regressor (predict_window's numbers)
                logp[ok] = model._regress(np.ascontiguousarray(z[ok]), num_threads)
            logp = logp.reshape(shape)
            seconds["predict"] += time.perf_counter() - t
            t = time.perf_counter()
            di = np.full(z.shape[0], np.nan, np.float32)
            if run_di and ok.any():
                di[ok] = aoa.dissimilarity(z[ok])
            di = di.reshape(shape)
            seconds["dissimilarity"] += time.perf_counter() - t
            if conformal is not None:
                half = (q * conformal.sigma(adaptive_features(logp.ravel(), di.ravel()))
                        ).reshape(shape)
            else:
                half = np.where(np.isfinite(logp), q, np.nan)
            with np.errstate(invalid="ignore"):
                computed = {
                    "log_richness": logp,
                    "interval_width": interval_width(logp, half).astype(np.float32),
                    "lower": np.maximum(logp - half, 0.0).astype(np.float32),
                    "upper": (logp + half).astype(np.float32),
                    "dissimilarity": di,
                    "aoa": np.where(np.isfinite(di), (di <= aoa.threshold_).astype(np.float32),
                                    np.float32(np.nan)),
                }
            t = time.perf_counter()
            for k, v in computed.items():
                if k not in wanted:
                    continue
                if k in paths:
                    writer.write(k, r0, r1, c0, c1, v)
                else:
                    memory[k][r0:r1, c0:c1] = v
            seconds["write"] += time.perf_counter() - t
        t = time.perf_counter()
        writer.finish()
        seconds["write"] += time.perf_counter() - t
    coords = {"y": grid.y, "x": grid.x}
    data = {k: xr.DataArray(v, dims=("y", "x"), coords=coords, attrs={"units": LAYERS[k]})
            for k, v in memory.items()}
    for k, p in paths.items():
        data[k] = open_map(p).rename(k)
    maps = xr.Dataset(data, attrs={k: v for k, v in tags.items() if k != "software"})
    maps = maps.rio.write_crs(grid.crs.to_wkt()).rio.write_transform(grid.transform)
    return UncertaintyMaps(maps=maps, paths=paths, quantile=q, threshold=float(aoa.threshold_),
                           n_pixels=grid.n_pixels, seconds=seconds)


class _CogLayers:
    """Several one-band layers of one grid, written window by window, then copied to COGs.

    The same files as :func:`fungi_ssl.maps.predict.predict_map` writes (a tiled
    float32 GeoTIFF under a temporary name, then GDAL's COG driver with
    512-pixel tiles, DEFLATE, overviews; NaN as nodata; renamed when
    complete), for several layers at once inside one GDAL environment.
    """

    def __init__(self, paths: Mapping[str, Path], grid: Any, tags: Mapping[str, str],
                 overwrite: bool) -> None:
        self.paths, self.grid, self.tags, self.overwrite = dict(paths), grid, dict(tags), overwrite
        self.parts: dict[str, Path] = {}
        self.open: dict[str, Any] = {}

    def __enter__(self) -> Self:
        import rasterio

        self.env = rasterio.Env(GDAL_CACHEMAX=64, GDAL_NUM_THREADS=1)
        self.env.__enter__()
        g = self.grid
        for k, path in self.paths.items():
            part = path.with_name(f".{path.name}.part-{uuid.uuid4().hex[:8]}.tif")
            self.parts[k] = part
            self.open[k] = rasterio.open(
                part, "w", driver="GTiff", width=g.width, height=g.height, count=1,
                dtype="float32", crs=g.crs.to_wkt(), transform=g.transform, nodata=np.nan,
                tiled=True, blockxsize=256, blockysize=256, compress="ZSTD", BIGTIFF="IF_SAFER",
            )
            self.open[k].update_tags(**self.tags, quantity=k, units=LAYERS[k])
        return self

    def write(self, layer: str, r0: int, r1: int, c0: int, c1: int, values: np.ndarray) -> None:
        from rasterio.windows import Window

        self.open[layer].write(values, 1, window=Window(c0, r0, c1 - c0, r1 - r0))

    def finish(self) -> None:
        import rasterio.shutil

        for k, path in self.paths.items():
            self.open.pop(k).close()
            cog = path.with_name(f".{path.name}.cog-{uuid.uuid4().hex[:8]}.tif")
            try:
                rasterio.shutil.copy(
                    self.parts[k], cog, driver="COG", BLOCKSIZE=512, COMPRESS="DEFLATE",
                    PREDICTOR="YES", OVERVIEWS="IGNORE_EXISTING", OVERVIEW_RESAMPLING="AVERAGE",
                    BIGTIFF="IF_SAFER",
                )
                if path.exists() and not self.overwrite:
                    raise FileExistsError(f"output {path} exists; pass overwrite=True to replace it")
                os.replace(cog, path)
            finally:
                for f in (cog, self.parts[k]):
                    f.unlink(missing_ok=True)

    def __exit__(self, *exc: object) -> None:
        try:
            for f in self.open.values():
                f.close()
            for part in self.parts.values():
                part.unlink(missing_ok=True)
        finally:
            self.env.__exit__(None, None, None)


def map_truth_table(
    log_pred: xr.DataArray,
    truth: xr.DataArray,
    *,
    inside: xr.DataArray | None = None,
    landcover: xr.DataArray | None = None,
    classes: Sequence[str] | None = None,
    region: str | None = None,
) -> pd.DataFrame:
    """Map and truth lined up pixel by pixel, for the checks of :mod:`fungi_ssl.uncertainty.bias`.

    Parameters
    ----------
    log_pred : xarray.DataArray
        The map on the ``log1p`` scale, ``(y, x)``.
    truth : xarray.DataArray
        The truth layer in richness units (e.g.
        :func:`fungi_ssl.simulate.truth.truth_layer`, the map's estimand), on
        the same pixel centres.
    inside : xarray.DataArray, optional
        The AOA mask (1/0/NaN) on the same grid.
    landcover : xarray.DataArray, optional
        Land-cover class codes on the same grid.
    classes : sequence of str, optional
        Names of the class codes (``classes[code]``).
    region : str, optional
        A label for every row.

    Returns
    -------
    pandas.DataFrame
        One row per pixel where both the map and the truth are finite:
        ``y_true`` (``log1p`` of the truth), ``y_pred``, and ``inside``
        (bool), ``landcover``, ``region`` when given.

    Examples
    --------
    >>> g = {"y": [15.0, 5.0], "x": [5.0, 15.0]}
    >>> p = xr.DataArray([[1.0, 2.0], [np.nan, 3.0]], dims=("y", "x"), coords=g)
    >>> t = xr.DataArray(np.expm1([[1.0, 2.5], [1.0, np.nan]]), dims=("y", "x"), coords=g)
    >>> map_truth_table(p, t)[["y_true", "y_pred"]].round(6).values.tolist()
    [[1.0, 1.0], [2.5, 2.0]]
    """
    def aligned(a: xr.DataArray, name: str) -> np.ndarray:
        if a.dims != log_pred.dims or a.shape != log_pred.shape:
            raise ValueError(f"{name}: dims {a.dims} shape {a.shape} differ from the map's "
                             f"{log_pred.dims} {log_pred.shape}")
        for c in ("x", "y"):
            if c in a.coords and c in log_pred.coords and not np.allclose(
                a[c].values, log_pred[c].values, atol=1e-6
            ):
                raise ValueError(f"{name}: its {c} coordinates are not the map's pixel centres")
        return np.asarray(a.values, dtype=float).ravel()

    if log_pred.ndim != 2:
        raise ValueError(f"log_pred: expected a (y, x) map, got dims {log_pred.dims}")
    p = np.asarray(log_pred.values, dtype=float).ravel()
    t = aligned(truth, "truth")
    with np.errstate(invalid="ignore"):
        yt = np.log1p(t)
    ok = np.isfinite(p) & np.isfinite(yt)
    out = pd.DataFrame({"y_true": yt[ok], "y_pred": p[ok]})
    if inside is not None:
        m = aligned(inside, "inside")[ok]
        out["inside"] = np.nan_to_num(m, nan=0.0) > 0.5
    if landcover is not None:
        codes = aligned(landcover, "landcover")[ok]
        if classes is not None:
            names = np.asarray(list(classes), dtype=object)
            idx = codes.astype(int)
            if (idx < 0).any() or (idx >= len(names)).any():
                raise ValueError(f"landcover: codes outside 0 … {len(names) - 1}")
            out["landcover"] = names[idx]
        else:
            out["landcover"] = codes.astype(int)
    if region is not None:
        out["region"] = region
    return out

