"""Resolution: a 10 m map and a 1 km map of the same regions, both scored against the truth.

Chapter 06 maps simulated regions twice, from the same field samples:

* **the 10 m map**: chapter 04's ``ssl`` chain refitted on every sample
  (:class:`fungi_ssl.mapmodel.MapModel`), applied to each region's stored
  int8 embeddings with :func:`fungi_ssl.maps.predict_map` (a Cloud-Optimised
  GeoTIFF);
* **the 1 km map**, the SPUN-style technique: a model of the same family on
  the 1 km climate, soil and land-cover covariates (chapter 04's
  ``climate``, ``soil`` and ``landcover`` columns), predicted for every
  1 km cell of each region.

* **product maps** that use both scales: :class:`ProductModel`, one model
  on the patch's principal components and the 1 km covariates of the
  pixel's cell; the 1 km map plus the 10 m map's within-cell deviations; the
  product model's 1 km cell means plus the 10 m map's within-cell deviations
  (:func:`~fungi_ssl.maps.resolution_regions.with_within_cell_deviations`);
  the same with each cell's level the mean of the product model's and the
  10 m map's cell means (``blend``, equal weights fixed before scoring);
  and the 1 km map plus :class:`ResidualModel`, trees on the patch fitted to the 1 km model's
  out-of-fold residuals.

The book's product map is the candidate that meets most of issue 18's
criteria (:func:`~fungi_ssl.maps.resolution_scores.criteria_table`,
:func:`~fungi_ssl.maps.resolution_scores.pick_product`). Why no map keeps
every held-out region's mean error within a quarter of a log unit is
measured, not argued: :func:`~fungi_ssl.maps.resolution_scores.level_shares`
(how much of the regions' true offsets each map's regional means reproduce)
and :func:`~fungi_ssl.maps.resolution_oracle.oracle_1km_biases` (the 1 km
model, and optionally the product model, refitted on noise-free labels,
:func:`~fungi_ssl.maps.resolution_oracle.estimand_at_samples`).

Every region is **held out**: its maps come from models fitted without its
samples and without its campaigns' samples within :data:`HOLDOUT_KM`
(:func:`withheld_rows`, :func:`heldout_models`), and pooled scores carry a
percentile interval from a bootstrap over regions
(:func:`~fungi_ssl.maps.resolution_scores.bootstrap_scores`).

All are scored against :func:`fungi_ssl.simulate.truth.truth_layer`, the
quantity a map of ``log1p(rarefied)`` estimates at each pixel (the mean
``log1p`` of the rarefied richness of a core taken there), on the ``log1p``
scale. Water pixels have no truth and are not scored.

API (stable; chapter 07 builds on it)
-------------------------------------
Four modules: this one (the models and the maps),
:mod:`fungi_ssl.maps.resolution_regions` (the regions, their stores and
truth, the 1 km cell arithmetic), :mod:`fungi_ssl.maps.resolution_scores`
(scores, the product map's criteria, regional levels) and
:mod:`fungi_ssl.maps.resolution_oracle` (refits on noise-free labels).

:func:`~fungi_ssl.maps.resolution_regions.regions`
    The chapter's regions for a profile and seed: whole 1 km UTM cells in
    different landscapes
    (:data:`~fungi_ssl.maps.resolution_regions.REGION_LAYOUT`).
:func:`~fungi_ssl.maps.resolution_regions.region_store`
    A region's embedding store (cached, :func:`fungi_ssl.embed.cached_embed_cube`),
    one pixel larger than the region on every side so that every mapped pixel
    has its full 3 × 3 patch.
:func:`~fungi_ssl.maps.resolution_regions.region_truth`
    The truth layer of a region (expected rarefied richness; NaN on water).
:func:`fitted_map_model`
    The 10 m :class:`~fungi_ssl.mapmodel.MapModel`, refitted on every sample
    and cached under ``data/cache/resolution_model``.
:func:`predict_region_map`
    The 10 m map of a region, as a COG (``log1p`` scale by default).
:func:`cell_covariates`, :func:`fit_1km_model`, :func:`predict_1km_map`
    The SPUN-style 1 km model and its map.
:func:`withheld_rows`, :func:`heldout_models`, :func:`fit_product_model`,
:func:`fit_residual_model`, :func:`region_components`
    The held-out models of a region and the patch components they map from.
:func:`region_products`
    All of the above for every region (:class:`RegionProducts`).
In :mod:`~fungi_ssl.maps.resolution_scores`, scoring: ``r2``,
``squared_correlation``, ``within_cell_r2``, ``pixel_ratio``,
``score_products``, ``region_scores``, ``bootstrap_scores``; the product
map: ``criteria_table``, ``pick_product``; regional levels:
``level_shares``. In :mod:`~fungi_ssl.maps.resolution_regions`:
``cell_means``, ``with_within_cell_deviations``. In
:mod:`~fungi_ssl.maps.resolution_oracle`: ``estimand_at_samples``,
``oracle_1km_biases``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from affine import Affine

from fungi_ssl.core.cache import cache_dir
from fungi_ssl.maps.composite import LEVEL_WEIGHTS
from fungi_ssl.maps.resolution_regions import (
    CELL_PX,
    HOLDOUT_KM,
    YEAR,
    Region,
    _expand,
    holdout_groups,
    region_store,
    region_truth,
    regions,
    with_within_cell_deviations,
    withheld_rows,
)

if TYPE_CHECKING:
    from fungi_ssl.embeddings.encoder import TrainedEncoder
    from fungi_ssl.maps.mapmodel import MapModel
    from fungi_ssl.maps.predict import MapRun
    from fungi_ssl.predictors.tables import PredictorTable
    from fungi_ssl.simulate import SimulatedStudy

__all__ = [
    "CANDIDATES",
    "HOLDOUT_KM",
    "ONE_KM_SET",
    "HeldOutModels",
    "ProductModel",
    "RegionProducts",
    "ResidualModel",
    "cell_covariates",
    "chapter04_model",
    "fit_1km_model",
    "fit_product_model",
    "fit_residual_model",
    "fitted_map_model",
    "heldout_models",
    "predict_1km_map",
    "predict_grid",
    "predict_region_map",
    "region_components",
    "region_products",
    "withheld_rows",
]

#: The map candidates chapter 06 scores, with what each is.
CANDIDATES: dict[str, str] = {
    "10m": "the study's 10 m map: ssl chain (PCA of the 3 × 3 embedding patch → trees)",
    "1km": "the SPUN-style 1 km map: trees on the 1 km climate, soil and land-cover covariates",
    "product": ("one tree model on the PCA of the 3 × 3 embedding patch and the 1 km covariates "
                "of the pixel's cell (cell value)"),
    "deviations": ("1 km map + the 10 m map's within-cell deviations (keeps the 1 km map's cell "
                   "means)"),
    "residual": ("1 km map + a residual model: trees on the PCA of the patch fitted to the "
                 "samples' residuals from out-of-fold 1 km predictions"),
    "product_deviations": ("product model's 1 km cell means + the 10 m map's within-cell "
                           "deviations (the level of each cell from the product model, the "
                           "pattern inside it from the 10 m map)"),
    "blend": ("the mean of the product model's and the 10 m map's 1 km cell means + the 10 m "
              "map's within-cell deviations (each cell's level averaged from two estimates "
              "with equal weights, fixed before scoring; the pattern inside it from the 10 m "
              "map)"),
}
#: The 1 km predictor set of the SPUN-style model (chapter 04's 1 km sets together).
ONE_KM_SET = "climate+soil+landcover"
# --------------------------------------------------------------------------
# The 10 m map
# --------------------------------------------------------------------------

def fitted_map_model(table: PredictorTable, trained: TrainedEncoder, model: str = "lightgbm",
                     seed: int = 0, profile: str = "full") -> MapModel:
    """Chapter 04's ``ssl`` chain refitted on every sample, cached under ``data/cache``.

    :class:`fungi_ssl.mapmodel.MapModel` with the book's settings
    (:data:`fungi_ssl.pipelines.SSL_COMPONENTS` principal components of the
    3 × 3 patch, :data:`fungi_ssl.pipelines.BOOK_MODEL_PARAMS`; LightGBM and
    XGBoost stop early on a site-grouped tenth of the rows, then are refitted
    on all). The fitted model is saved with :meth:`MapModel.save` under
    ``data/cache/resolution_model/<key>/model.zip``, keyed by the study, the
    simulator, the encoder, the model settings and the package versions.
    """
    from fungi_ssl.maps.mapmodel import MapModel
    from fungi_ssl.maps.modelspec import encoder_signature, library_versions
    from fungi_ssl.simulate.field_data import simulator_fingerprint
    from fungi_ssl.validation.pipelines import BOOK_MODEL_PARAMS, SSL_COMPONENTS

    if not table.has_ssl:
        raise ValueError("fitted_map_model: the predictor table has no SSL patch columns")
    study = table.field.study
    params = {"study": None if study is None else study.config.as_dict(),
              "simulator": simulator_fingerprint(), "source": table.source,
              "n_rows": len(table.frame), "encoder": encoder_signature(trained),
              "model": model, "params": BOOK_MODEL_PARAMS.get(model, {}),
              "components": SSL_COMPONENTS, "seed": int(seed), "profile": profile,
              "versions": library_versions()}
    path = cache_dir("resolution_model", params) / "model.zip"
    if path.exists():
        return MapModel.load(path)
    # one thread: two spin-wait in OpenMP when the machine's cores are busy (fit_1km_model)
    m = MapModel(model, seed=seed, n_jobs=1).fit(table.frame, encoder=trained)
    m.save(path, overwrite=True)
    return m


def predict_region_map(model: MapModel, region: Region, store: str | Path,
                       output: str | Path | None = None, quantity: str = "log_richness",
                       progress: bool = False, **kwargs: Any) -> MapRun:
    """The 10 m map of a region from its embedding store, through :func:`fungi_ssl.maps.predict_map`.

    Parameters
    ----------
    model : MapModel
    region : Region
    store : path
        :func:`region_store`.
    output : path, optional
        A ``.tif`` (COG) to write, replaced if it exists; None keeps the map
        in memory.
    quantity : {"log_richness", "richness"}
        ``log1p`` of rarefied richness (the scale maps are scored on) or richness.
    **kwargs
        Passed on (``chunk``, ``window``, ``scheduler``, ``num_workers`` …).

    Returns
    -------
    MapRun
        ``map`` covers exactly the region's pixels; ``pixels_per_second``
        is the throughput of the whole path (read, patch, PCA, trees, write).
    """
    from fungi_ssl.maps.predict import predict_map

    return predict_map(model, {region.year: Path(store)}, region.year, bbox=region.bbox,
                       output=output, overwrite=output is not None, quantity=quantity,
                       progress=progress, cog_blocksize=256, **kwargs)


def chapter04_model(results_dir: str | Path | None = None,
                    default: str = "lightgbm") -> tuple[str, str]:
    """The model family chapter 04 selected, from its results file.

    Chapter 04's best family is the one with the highest random-split R²
    averaged over the predictor sets (:func:`fungi_ssl.comparison.best_model`);
    its ``04_predictor_comparison.json`` holds each set's and family's mean R²,
    from which the same choice follows.

    Returns
    -------
    (str, str)
        The family, and where it came from (``"chapter 04"`` or ``"default:
        chapter 04's results not found"``).
    """
    from fungi_ssl.core.results import read_results

    try:
        summary = read_results("04_predictor_comparison", results_dir)["random"]
    except (FileNotFoundError, KeyError, TypeError):
        return default, "default: chapter 04's results not found"
    per_model: dict[str, list[float]] = {}
    for by_model in summary.values():
        for name, stats in by_model.items():
            if isinstance(stats, dict) and stats.get("r2_mean") is not None:
                per_model.setdefault(name, []).append(float(stats["r2_mean"]))
    if not per_model:
        return default, "default: chapter 04's results hold no R²"
    return max(per_model, key=lambda k: np.mean(per_model[k])), "chapter 04"


# --------------------------------------------------------------------------
# The 1 km map
# --------------------------------------------------------------------------

def cell_covariates(study: SimulatedStudy, region: Region) -> pd.DataFrame:
    """The 1 km covariates of every 1 km cell of a region, as the samples' table has them.

    :func:`fungi_ssl.simulate.sensors.covariates_1km` gives a sample the
    covariates of the 1 km cell holding its site's recorded pixel. Each cell
    is asked for through a stand-in site at its centre pixel, so the values
    are exactly those any sample in that cell gets.

    Returns
    -------
    pandas.DataFrame
        One row per cell (index ``cell_id`` ``"<row>_<col>"``, rows north to
        south then west to east), columns ``cell_row``, ``cell_col`` (offsets
        within the region), ``x``, ``y`` (cell centre, the region's CRS) and
        the SPUN-named covariates.
    """
    from fungi_ssl.simulate.sensors import covariates_1km

    w = region.window
    if w.col0 % CELL_PX or w.row0 % CELL_PX or w.width % CELL_PX or w.height % CELL_PX:
        raise ValueError(f"cell_covariates: region {region.name} is not made of whole 1 km cells")
    nr, nc = w.height // CELL_PX, w.width // CELL_PX
    rr, cc = (a.ravel() for a in np.meshgrid(np.arange(nr), np.arange(nc), indexing="ij"))
    gr, gc = w.row0 // CELL_PX + rr, w.col0 // CELL_PX + cc
    ids = [f"{r}_{c}" for r, c in zip(gr, gc)]
    sites = pd.DataFrame({"site_id": ids, "epsg": w.epsg, "col": gc * CELL_PX + CELL_PX // 2,
                          "row": gr * CELL_PX + CELL_PX // 2})
    samples = pd.DataFrame({"sample_id": ids, "site_id": ids})
    cov = covariates_1km(study.landscape, sites, samples, study.config.sensors)
    cov.index.name = "cell_id"
    cell = 1000.0
    front = pd.DataFrame({"cell_row": rr, "cell_col": cc, "x": (gc + 0.5) * cell,
                          "y": -(gr + 0.5) * cell}, index=cov.index)
    return pd.concat([front, cov], axis=1)


@dataclass
class OneKmModel:
    """The SPUN-style model: a regressor on the 1 km covariates, fitted on every sample.

    Attributes
    ----------
    estimator : estimator
        The fitted regressor (predicts ``log1p(rarefied)``).
    columns : list of str
        Its predictor columns, in order.
    model : str
        Model family.
    n_samples : int
        Rows fitted on.
    n_trees : int or None
        Trees after early stopping (LightGBM, XGBoost).
    """

    estimator: Any
    columns: list[str]
    model: str
    n_samples: int
    n_trees: int | None = None

    def predict(self, covariates: pd.DataFrame) -> np.ndarray:
        """``log1p(rarefied)`` predicted for rows of covariates (e.g. :func:`cell_covariates`)."""
        missing = [c for c in self.columns if c not in covariates.columns]
        if missing:
            raise ValueError(f"OneKmModel.predict: covariates lack {missing}")
        return np.asarray(self.estimator.predict(covariates[self.columns].to_numpy(float)),
                          dtype=float)


def fit_1km_model(frame: pd.DataFrame, model: str = "lightgbm", seed: int = 0,
                  predictor_set: str = ONE_KM_SET, target: str = "log_richness",
                  val_size: float = 0.1, n_jobs: int = 1) -> OneKmModel:
    """Fit the SPUN-style 1 km model on every sample of a predictor table.

    As :class:`fungi_ssl.mapmodel.MapModel` does for the 10 m chain: the
    book's model (:data:`fungi_ssl.pipelines.BOOK_MODEL_PARAMS`); LightGBM and
    XGBoost first stop early on a ``val_size`` share of whole sites, then are
    refitted on every row with the trees found.

    Parameters
    ----------
    frame : pandas.DataFrame
        The predictor table (:func:`fungi_ssl.predictors.predictor_table`).
    model : {"lightgbm", "xgboost", "rf", "ridge"}
    seed : int
    predictor_set : str
        The 1 km columns (default :data:`ONE_KM_SET`).
    target : str
        Target column (``log1p`` of rarefied richness).
    val_size : float
    n_jobs : int
        Threads. One by default: on a dozen thousand rows of a dozen columns
        LightGBM fits in about half a second on one thread, while two
        threads on a machine whose cores are busy spin-wait in OpenMP
        (measured: 15 to 87 s for the same trees).

    Returns
    -------
    OneKmModel
    """
    from sklearn.model_selection import GroupShuffleSplit

    from fungi_ssl.validation.models import MODEL_NAMES, fit_model, make_model
    from fungi_ssl.validation.pipelines import BOOK_MODEL_PARAMS, predictor_matrix

    if model not in MODEL_NAMES:
        raise ValueError(f"model must be one of {list(MODEL_NAMES)}, got {model!r}")
    if target not in frame.columns:
        raise ValueError(f"fit_1km_model: target column {target!r} is not in the table")
    X = predictor_matrix(frame, predictor_set)
    y = frame[target].to_numpy(float)
    ok = np.isfinite(X.to_numpy(float)).all(axis=1) & np.isfinite(y)
    X, y = X.loc[ok], y[ok]
    if len(y) < 10:
        raise ValueError(f"fit_1km_model: only {len(y)} complete rows; need at least 10")
    params = dict(BOOK_MODEL_PARAMS.get(model, {}))
    n_trees = None
    if model in ("lightgbm", "xgboost") and val_size > 0:
        groups = frame.loc[ok, "site_id"].to_numpy() if "site_id" in frame else np.arange(len(y))
        tr, va = next(GroupShuffleSplit(1, test_size=val_size, random_state=seed)
                      .split(X, y, groups))
        probe = fit_model(make_model(model, seed=seed, n_jobs=n_jobs, **params),
                          X.iloc[tr].to_numpy(float), y[tr], X.iloc[va].to_numpy(float), y[va])
        best = probe.best_iteration if model == "xgboost" else probe.best_iteration_
        n_trees = int(best) + (1 if model == "xgboost" else 0) if best else int(probe.n_estimators)
        params["n_estimators"] = n_trees
    est = fit_model(make_model(model, seed=seed, n_jobs=n_jobs, **params), X.to_numpy(float), y)
    return OneKmModel(est, list(X.columns), model, len(y), n_trees)


def predict_1km_map(model: OneKmModel, covariates: pd.DataFrame, region: Region) -> xr.DataArray:
    """The 1 km map of a region: ``log1p(rarefied)`` per cell, ``(y, x)`` on the 1 km grid, with CRS.

    ``covariates`` is :func:`cell_covariates` of the region.
    """
    w = region.window
    nr, nc = w.height // CELL_PX, w.width // CELL_PX
    if len(covariates) != nr * nc:
        raise ValueError(f"predict_1km_map: {len(covariates)} cells given for region "
                         f"{region.name}, which has {nr * nc}")
    grid = np.full((nr, nc), np.nan, np.float32)
    grid[covariates["cell_row"].to_numpy(), covariates["cell_col"].to_numpy()] = \
        model.predict(covariates)
    x = np.sort(covariates["x"].unique())
    y = np.sort(covariates["y"].unique())[::-1]
    da = xr.DataArray(grid, dims=("y", "x"), coords={"y": y, "x": x}, name="log_richness",
                      attrs={"units": "log1p(rarefied richness)", "model": model.model,
                             "cell_size": 1000.0})
    return da.rio.write_crs(w.epsg).rio.write_transform(
        Affine(1000.0, 0, float(x[0]) - 500.0, 0, -1000.0, float(y[0]) + 500.0))


# --------------------------------------------------------------------------
# The product model and the residual model
# --------------------------------------------------------------------------

def _fit_trees(X: np.ndarray, y: np.ndarray, groups: np.ndarray | None, model: str, seed: int,
               val_size: float = 0.1, n_jobs: int = 1) -> tuple[Any, int | None]:
    """The book's model on ``X``, ``y``: boosted trees stop early on a ``val_size`` share of
    whole groups, then are refitted on every row with the trees found."""
    from sklearn.model_selection import GroupShuffleSplit

    from fungi_ssl.validation.models import MODEL_NAMES, fit_model, make_model
    from fungi_ssl.validation.pipelines import BOOK_MODEL_PARAMS

    if model not in MODEL_NAMES:
        raise ValueError(f"model must be one of {list(MODEL_NAMES)}, got {model!r}")
    params = dict(BOOK_MODEL_PARAMS.get(model, {}))
    n_trees = None
    if model in ("lightgbm", "xgboost") and val_size > 0:
        g = groups if groups is not None else np.arange(len(y))
        tr, va = next(GroupShuffleSplit(1, test_size=val_size, random_state=seed).split(X, y, g))
        probe = fit_model(make_model(model, seed=seed, n_jobs=n_jobs, **params),
                          X[tr], y[tr], X[va], y[va])
        best = probe.best_iteration if model == "xgboost" else probe.best_iteration_
        n_trees = int(best) + (1 if model == "xgboost" else 0) if best else int(probe.n_estimators)
        params["n_estimators"] = n_trees
    est = fit_model(make_model(model, seed=seed, n_jobs=n_jobs, **params), X, y)
    return est, n_trees


@dataclass
class ProductModel:
    """One tree model on both scales: the PCA of the pixel's 3 × 3 embedding patch and the
    1 km covariates of its cell.

    Attributes
    ----------
    map_model : MapModel
        The ``ssl``-only 10 m model fitted on the same rows; its PCA projects the patch
        (so the product and the 10 m map see the same components).
    estimator : estimator
        Predicts ``log1p(rarefied)`` from ``[components, covariates]``.
    covariate_columns : list of str
    model : str
    n_samples : int
    n_trees : int or None
    """

    map_model: MapModel
    estimator: Any
    covariate_columns: list[str]
    model: str
    n_samples: int
    n_trees: int | None = None

    def predict_components(self, z: np.ndarray, covariates: np.ndarray) -> np.ndarray:
        """``log1p(rarefied)`` from components ``(n, C)`` and covariates ``(n, K)``; NaN where
        either has a missing value."""
        X = np.hstack([np.asarray(z, float), np.asarray(covariates, float)])
        out = np.full(len(X), np.nan)
        ok = np.isfinite(X).all(axis=1)
        if ok.any():
            out[ok] = self.estimator.predict(X[ok])
        return out

    def predict_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """``log1p(rarefied)`` for rows of a predictor table (``ssl_`` columns and covariates)."""
        missing = [c for c in self.covariate_columns if c not in frame.columns]
        if missing:
            raise ValueError(f"ProductModel.predict_frame: the table lacks covariates {missing}")
        return self.predict_components(self.map_model.project_patches(frame),
                                       frame[self.covariate_columns].to_numpy(float))


def fit_product_model(frame: pd.DataFrame, map_model: MapModel, model: str = "lightgbm",
                      seed: int = 0, predictor_set: str = ONE_KM_SET,
                      target: str = "log_richness", n_jobs: int = 1) -> ProductModel:
    """Fit the product model on a predictor table, with ``map_model``'s patch PCA.

    Parameters
    ----------
    frame : pandas.DataFrame
        The rows ``map_model`` was fitted on (``ssl_`` columns, covariates, target, ``site_id``).
    map_model : MapModel
    model : str
    seed : int
    predictor_set : str
        The 1 km covariates (default the 1 km map's, :data:`ONE_KM_SET`).
    target : str
    n_jobs : int

    Returns
    -------
    ProductModel
    """
    from fungi_ssl.validation.pipelines import predictor_matrix

    if target not in frame.columns:
        raise ValueError(f"fit_product_model: target column {target!r} is not in the table")
    cov = predictor_matrix(frame, predictor_set)
    z = map_model.project_patches(frame)
    X = np.hstack([z, cov.to_numpy(float)])
    y = frame[target].to_numpy(float)
    ok = np.isfinite(X).all(axis=1) & np.isfinite(y)
    if ok.sum() < 10:
        raise ValueError(f"fit_product_model: only {int(ok.sum())} complete rows; need 10")
    groups = frame["site_id"].to_numpy()[ok] if "site_id" in frame else None
    est, n_trees = _fit_trees(X[ok], y[ok], groups, model, seed, n_jobs=n_jobs)
    return ProductModel(map_model, est, list(cov.columns), model, int(ok.sum()), n_trees)


@dataclass
class ResidualModel:
    """Trees on the patch's components fitted to the samples' residuals from out-of-fold
    1 km predictions; the map is the 1 km map plus this model's prediction."""

    map_model: MapModel
    estimator: Any
    n_samples: int
    n_trees: int | None = None

    def predict_components(self, z: np.ndarray) -> np.ndarray:
        """The residual (log units) predicted from components ``(n, C)``; NaN where incomplete."""
        z = np.asarray(z, float)
        out = np.full(len(z), np.nan)
        ok = np.isfinite(z).all(axis=1)
        if ok.any():
            out[ok] = self.estimator.predict(z[ok])
        return out


def fit_residual_model(frame: pd.DataFrame, map_model: MapModel, model: str = "lightgbm",
                       seed: int = 0, predictor_set: str = ONE_KM_SET,
                       target: str = "log_richness", n_folds: int = 5,
                       n_jobs: int = 1) -> ResidualModel:
    """Fit the residual model: the 1 km model's out-of-fold residuals (site-grouped folds) on
    the patch's components, so the residuals are those of places the 1 km model did not see."""
    from sklearn.model_selection import GroupKFold

    from fungi_ssl.validation.pipelines import predictor_matrix

    cov = predictor_matrix(frame, predictor_set).to_numpy(float)
    z = map_model.project_patches(frame)
    y = frame[target].to_numpy(float)
    ok = np.isfinite(cov).all(axis=1) & np.isfinite(z).all(axis=1) & np.isfinite(y)
    cov, z, y = cov[ok], z[ok], y[ok]
    groups = frame["site_id"].to_numpy()[ok] if "site_id" in frame else np.arange(len(y))
    oof = np.full(len(y), np.nan)
    for tr, te in GroupKFold(n_splits=n_folds).split(cov, y, groups):
        est, _ = _fit_trees(cov[tr], y[tr], groups[tr], model, seed, n_jobs=n_jobs)
        oof[te] = est.predict(cov[te])
    est, n_trees = _fit_trees(z, y - oof, groups, model, seed, n_jobs=n_jobs)
    return ResidualModel(map_model, est, len(y), n_trees)


@dataclass
class HeldOutModels:
    """Every model of one region, fitted without that region's samples (:func:`withheld_rows`).

    Attributes
    ----------
    map_model : MapModel
        The 10 m ``ssl`` map model.
    model_1km : OneKmModel
    product : ProductModel
    residual : ResidualModel
    n_withheld : int
        Samples withheld.
    campaigns_withheld : int
        Campaigns that lost samples.
    """

    map_model: MapModel
    model_1km: OneKmModel
    product: ProductModel
    residual: ResidualModel
    n_withheld: int
    campaigns_withheld: int


def heldout_models(table: PredictorTable, trained: TrainedEncoder, region: Region,
                   model: str = "lightgbm", seed: int = 0, profile: str = "full",
                   model_1km: str | None = None, radius_km: float = HOLDOUT_KM,
                   cached_only: bool = False,
                   group: Sequence[Region] | None = None) -> HeldOutModels | None:
    """Fit the 10 m, 1 km, product and residual models without ``region``'s samples (cached).

    Cached under ``data/cache/resolution_heldout/<key>/models.joblib``, keyed
    as :func:`fitted_map_model` plus the region's window, the radius and the
    rows withheld. With ``cached_only``, None when they are not cached yet.
    Every model is fitted on one thread (LightGBM and BLAS), so the models
    do not depend on the machine's cores or on :func:`prefit_heldout_models`
    fitting regions side by side.

    ``group``, the regions held out together with ``region``
    (:func:`~fungi_ssl.maps.resolution_regions.holdout_groups`; it holds
    ``region``), withholds the samples of all of them: every region of a
    group gets the same models, fitted once. Default: ``region`` alone.
    """
    import hashlib

    import joblib
    from threadpoolctl import threadpool_limits

    from fungi_ssl.maps.mapmodel import MapModel
    from fungi_ssl.maps.modelspec import encoder_signature, library_versions
    from fungi_ssl.simulate.field_data import simulated_study, simulator_fingerprint
    from fungi_ssl.validation.pipelines import BOOK_MODEL_PARAMS, SSL_COMPONENTS

    study = simulated_study(profile, seed)
    frame = table.frame
    members = _group_of(region, group)
    out = withheld_rows(frame, study, members, radius_km)
    w = region.window
    params = {"study": study.config.as_dict(), "simulator": simulator_fingerprint(),
              "source": table.source, "n_rows": len(frame), "encoder": encoder_signature(trained),
              "model": model, "model_1km": model_1km or model,
              "params": BOOK_MODEL_PARAMS.get(model, {}), "components": SSL_COMPONENTS,
              "seed": int(seed), "profile": profile, "versions": library_versions(),
              "window": [w.epsg, w.col0, w.row0, w.width, w.height], "radius_km": radius_km,
              "withheld": hashlib.sha1(np.packbits(out).tobytes()).hexdigest(), "layout": 3}
    if len(members) > 1:  # one entry per group, whichever of its regions asks (a lone region
        # keeps the key it always had)
        params["window"] = sorted([r.window.epsg, r.window.col0, r.window.row0, r.window.width,
                                   r.window.height] for r in members)
    # layout 2: the pickled MapModel holds fungi_ssl.maps.modelspec.FeatureSpec and
    # fungi_ssl.maps.flattrees.FlatTrees, moved out of mapmodel (issue 19); 3: fitted on
    # one BLAS thread
    path = cache_dir("resolution_heldout", params) / "models.joblib"
    if path.exists():
        return joblib.load(path)
    if cached_only:
        return None
    train = frame.loc[~out].reset_index(drop=True)
    # one BLAS thread too: a multi-threaded product sums in another order, which moves the
    # patch components in their last bits and so the trees' thresholds
    with threadpool_limits(1):
        m10 = MapModel(model, seed=seed, n_jobs=1).fit(train, encoder=trained)
        m1 = fit_1km_model(train, model_1km or model, seed)
        prod = fit_product_model(train, m10, model, seed)
        resid = fit_residual_model(train, m10, model, seed)
    camps = frame.loc[out, "site_id"].map(study.sites.drop_duplicates("site_id")
                                          .set_index("site_id")["campaign"]).nunique()
    models = HeldOutModels(m10, m1, prod, resid, int(out.sum()), int(camps))
    joblib.dump(models, path)
    return models


def _group_of(region: Region, group: Sequence[Region] | None) -> tuple[Region, ...]:
    """``group`` as a tuple holding ``region`` (``(region,)`` when None); a ValueError when
    ``region`` is not in it."""
    if group is None:
        return (region,)
    members = tuple(group)
    if region not in members:
        raise ValueError(f"heldout_models: region {region.name} is not in its hold-out group "
                         f"{[r.name for r in members]}")
    return members


#: Worker processes of :func:`prefit_heldout_models` (each fits on one thread).
HELDOUT_WORKERS = 2


def _fit_heldout(table: PredictorTable, trained: TrainedEncoder, region: Region, model: str,
                 seed: int, profile: str, model_1km: str | None,
                 group: Sequence[Region] | None = None) -> None:
    heldout_models(table, trained, region, model, seed, profile, model_1km,
                   group=group)  # writes the cache


def prefit_heldout_models(table: PredictorTable, trained: TrainedEncoder,
                          regions: Sequence[Region], model: str = "lightgbm", seed: int = 0,
                          profile: str = "full", model_1km: str | None = None,
                          n_workers: int | None = None,
                          groups: dict[str, tuple[Region, ...]] | None = None) -> int:
    """Fit the held-out models of the regions not yet cached, regions side by side.

    :func:`heldout_models` of one region is single-threaded (LightGBM and the
    PCA on one thread: about 15 s a region in the quick profile), so
    ``n_workers`` processes (joblib's loky) fit that many regions at once and
    write the cache that :func:`region_products` then reads. The models are
    the same as fitted one after another (one thread each either way). With
    ``groups`` (:func:`~fungi_ssl.maps.resolution_regions.holdout_groups`), one
    set of models per group.

    Returns
    -------
    int
        Sets of models fitted.
    """
    import joblib

    # one region per group: any of its regions asks for the group's one cache entry
    by_group = {(groups or {}).get(r.name, (r,)): r for r in regions}
    missing = [(g, r) for g, r in by_group.items()
               if heldout_models(table, trained, r, model, seed, profile, model_1km,
                                 cached_only=True, group=g) is None]
    n_workers = HELDOUT_WORKERS if n_workers is None else n_workers
    workers = max(1, min(int(n_workers), len(missing), os.cpu_count() or 1))
    if workers < 2:
        return 0
    joblib.Parallel(n_jobs=workers, backend="loky")(
        joblib.delayed(_fit_heldout)(table, trained, r, model, seed, profile, model_1km, g)
        for g, r in missing)
    return len(missing)


def region_components(model: MapModel, store: str | Path, region: Region) -> np.ndarray:
    """The principal components of every pixel's 3 × 3 patch over a region, ``(H, W, C)``
    float32 (NaN where a patch is incomplete), read from the region's store."""
    from fungi_ssl.maps.sources import open_embedding_source

    src = open_embedding_source({region.year: Path(store)}, region.year, region.bbox)
    h = model.spec.patch_size // 2
    H, W = region.window.height, region.window.width
    emb, sc = src.read(-h, H + h, -h, W + h, (H + 2 * h,), (W + 2 * h,))
    return model.window_scores(np.asarray(emb.compute()), np.asarray(sc.compute())[..., 0])


# --------------------------------------------------------------------------
# Everything for every region
# --------------------------------------------------------------------------

@dataclass
class RegionProducts:
    """What chapter 06 shows and scores for one region (values on the ``log1p`` scale).

    Attributes
    ----------
    region : Region
    store : pathlib.Path
        The region's embedding store (:func:`region_store`).
    truth : numpy.ndarray
        ``log1p`` of the truth layer, ``(H, W)``; NaN on water.
    map_10m : numpy.ndarray
        ``log1p`` 10 m map, ``(H, W)``.
    map_1km : numpy.ndarray
        ``log1p`` 1 km map, ``(H / 100, W / 100)``.
    map_path : pathlib.Path or None
        The 10 m COG.
    run : MapRun
        :func:`fungi_ssl.maps.predict_map`'s record (pixels/s, NaN counts).
    covariates : pandas.DataFrame
        :func:`cell_covariates`.
    landcover : numpy.ndarray
        True land-cover codes ``(H, W)`` (for figures).
    extra : dict
        ``true_richness``: the true species count of a core at each pixel
        (before sequencing and rarefaction), to state the offset between it and
        the estimand; ``models`` (:class:`HeldOutModels`, when the region was
        held out); the first region's also ``map_model`` and ``model_1km``.
    map_product : numpy.ndarray or None
        ``log1p`` map of the product model (:class:`ProductModel`), ``(H, W)``.
    alternatives : dict
        Other candidate maps ``(H, W)``, ``log1p``: ``deviations`` (1 km map +
        the 10 m map's within-cell deviations), ``residual`` (1 km map + the
        residual model) and ``product_deviations`` (the product model's cell
        means + the 10 m map's within-cell deviations), see :data:`CANDIDATES`.
    held_out : bool
        Whether every model of the region was fitted without its samples.
    """

    region: Region
    store: Path
    truth: np.ndarray
    map_10m: np.ndarray
    map_1km: np.ndarray
    map_path: Path | None
    run: Any
    covariates: pd.DataFrame
    landcover: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)
    map_product: np.ndarray | None = None
    alternatives: dict[str, np.ndarray] = field(default_factory=dict)
    held_out: bool = False

    @property
    def map_1km_pixels(self) -> np.ndarray:
        """The 1 km map on the 10 m pixels (each cell's value repeated)."""
        return _expand(self.map_1km)

    def dataarray(self, values: np.ndarray, name: str) -> xr.DataArray:
        """A ``(y, x)`` array of this region's pixels as a DataArray with CRS."""
        w = self.region.window
        da = xr.DataArray(values, dims=("y", "x"), coords={"y": w.y, "x": w.x}, name=name)
        return da.rio.write_crs(w.epsg)


def region_products(
    profile: str = "full", seed: int = 0, *, model: str = "lightgbm",
    model_1km: str | None = None, year: int = YEAR, table: PredictorTable | None = None,
    trained: TrainedEncoder | None = None, region_list: Sequence[Region] | None = None,
    output_dir: str | Path | None = None, progress: bool = True, held_out: bool = True,
) -> list[RegionProducts]:
    """Regions, their embeddings, truth and every candidate map, for a profile and seed.

    With ``held_out`` (the default) each region's maps come from models fitted
    without that region's samples and those of its campaigns within
    :data:`HOLDOUT_KM` (:func:`heldout_models`): the 10 m map, the 1 km map, the
    product model and the residual model. The profile's hold-out groups
    (:func:`~fungi_ssl.maps.resolution_regions.holdout_groups`) withhold
    several regions from one set of models (``extra["holdout_group"]``). Without
    ``held_out`` the 10 m and 1 km maps come from models fitted on every sample
    (the product and residual maps are then not made).

    Parameters
    ----------
    profile : {"quick", "full"}
    seed : int
    model : str
        Model family of the 10 m map (:class:`~fungi_ssl.mapmodel.MapModel`).
    model_1km : str, optional
        Model family of the 1 km map; default the same as ``model``, so the
        two maps differ in predictors and resolution, not in the learner.
    year : int
    table : PredictorTable, optional
        The simulated predictor table (default
        :func:`fungi_ssl.predictors.predictor_table` for the profile and seed).
    trained : TrainedEncoder, optional
        The chapter-02 encoder (default :func:`fungi_ssl.predictors.pretrained_encoder`).
    region_list : sequence of Region, optional
        Default :func:`regions` of the profile.
    output_dir : path, optional
        Folder for the 10 m COGs (default ``data/cache/resolution_maps/<key>``).
    progress : bool
    held_out : bool

    Returns
    -------
    list of RegionProducts
        ``extra`` of the first also holds ``map_model`` (the 10 m
        :class:`~fungi_ssl.mapmodel.MapModel`) and ``model_1km``
        (:class:`OneKmModel`) (the first region's held-out models, with ``held_out``).
    """
    from fungi_ssl.predictors.tables import predictor_table, pretrained_encoder
    from fungi_ssl.simulate.field_data import simulated_study

    if table is None:
        table = predictor_table(None, profile=profile, seed=seed, progress=progress)
    if not table.field.is_simulated:
        raise ValueError("region_products: the regions and their truth exist in the simulated "
                         "study only")
    if trained is None:
        trained, _ = pretrained_encoder(table.field, profile, seed, progress=progress)
    study = simulated_study(profile, seed)
    rs = list(region_list) if region_list is not None else regions(profile, seed, year)
    if not held_out:
        m10_all = fitted_map_model(table, trained, model, seed, profile)
        m1_all = fit_1km_model(table.frame, model_1km or model, seed)
    groups = holdout_groups(rs, profile)
    if held_out:
        prefit_heldout_models(table, trained, rs, model, seed, profile, model_1km, groups=groups)
    products = []
    for r in rs:
        if held_out:
            hm = heldout_models(table, trained, r, model, seed, profile, model_1km,
                                group=groups[r.name])
            m10, m1 = hm.map_model, hm.model_1km
        else:
            hm, m10, m1 = None, m10_all, m1_all
        out_dir = Path(output_dir) if output_dir is not None else cache_dir(
            "resolution_maps", {"model": m10.fingerprint, "encoder": m10.spec.encoder})
        out_dir.mkdir(parents=True, exist_ok=True)
        store = region_store(r, trained, profile, seed, progress=progress)
        truth = region_truth(r, profile, seed).values.astype(np.float64)
        path = out_dir / f"{r.name}_{r.year}_log_richness.tif"
        run = predict_region_map(m10, r, store, output=path)
        cov = cell_covariates(study, r)
        layers = study.layers(r.window, r.year)
        map_10m = np.asarray(run.map.values, np.float64)
        map_1km = np.asarray(predict_1km_map(m1, cov, r).values, np.float64)
        p = RegionProducts(
            region=r, store=store, truth=np.log1p(truth), map_10m=map_10m, map_1km=map_1km,
            map_path=path, run=run, covariates=cov, landcover=layers["landcover"].values,
            extra={"true_richness": layers["true_richness"].values, "models": hm,
                   "holdout_group": groups[r.name] if held_out else None},
            held_out=held_out)
        if hm is not None:
            z = region_components(m10, store, r)
            H, W, C = z.shape
            p.map_product = _product_map(hm.product, z, cov, r)
            m1_px = p.map_1km_pixels
            p.alternatives = {
                "deviations": with_within_cell_deviations(m1_px, map_10m),
                "residual": m1_px + hm.residual.predict_components(z.reshape(H * W, C)).reshape(H, W),
                "product_deviations": with_within_cell_deviations(p.map_product, map_10m),
                "blend": with_within_cell_deviations(p.map_product, map_10m,
                                                     weight=LEVEL_WEIGHTS["blend"]),
            }
        products.append(p)
    if products:
        first = products[0].extra["models"]
        products[0].extra.update(
            map_model=first.map_model if first is not None else m10_all,
            model_1km=first.model_1km if first is not None else m1_all)
    return products


def _product_map(product: ProductModel, z: np.ndarray, covariates: pd.DataFrame,
                 region: Region) -> np.ndarray:
    """The product model's map of a region from its components ``(H, W, C)`` and the cells'
    covariates (each pixel gets its cell's values)."""
    H, W, C = z.shape
    cov_px = np.stack([_expand(predict_grid(covariates, region, c))
                       for c in product.covariate_columns], axis=-1).reshape(H * W, -1)
    return product.predict_components(z.reshape(H * W, C), cov_px).reshape(H, W)


def predict_grid(covariates: pd.DataFrame, region: Region, column: str) -> np.ndarray:
    """One covariate of :func:`cell_covariates` on the region's 1 km grid ``(rows, cols)``."""
    w = region.window
    grid = np.full((w.height // CELL_PX, w.width // CELL_PX), np.nan)
    grid[covariates["cell_row"].to_numpy(), covariates["cell_col"].to_numpy()] = \
        covariates[column].to_numpy(float)
    return grid


def timed(fn, *args, **kwargs) -> tuple[Any, float]:
    """``(fn(*args, **kwargs), seconds)``."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0
