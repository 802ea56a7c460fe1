"""Regressors, metrics, the study's evaluation protocol and paired tests.

The study (Kiers et al. 2026) compared predictor sets by training RandomForest,
LightGBM and XGBoost on 50 random 70/10/20 train/validation/test splits, with
early stopping on the validation part, and compared the per-seed test scores
with paired Wilcoxon tests. This module holds that protocol
(:func:`evaluate_random_splits`), its spatial counterpart for the splitters of
:mod:`fungi_ssl.validation.cv` (:func:`evaluate_cv`), the metrics, the paired comparison
(Wilcoxon and the corrected resampled t-test, :func:`paired_comparison`) and
the summary that chapter 04 writes to JSON.

Models (:func:`make_model`):

``"rf"``
    :class:`~sklearn.ensemble.RandomForestRegressor`, 200 trees, ``max_features=1/3``
    (Breiman's regression default), ``min_samples_leaf=5``, each tree on a
    bootstrap of half the rows (``max_samples=0.5``) to halve the time.
``"lightgbm"``
    :class:`lightgbm.LGBMRegressor`, up to 1,000 trees at learning rate 0.05,
    31 leaves, row and column subsampling 0.8; :func:`fit_model` stops early
    (50 rounds without improvement of the validation L2) when it is given a
    validation part.
``"xgboost"``
    :class:`xgboost.XGBRegressor` (the CPU-only ``xgboost-cpu`` wheel), the
    same schedule as LightGBM: up to 1,000 trees at learning rate 0.05, row
    subsampling 0.8, L2 penalty 1, at least 20 samples' weight per leaf
    (``min_child_weight``, LightGBM's ``min_child_samples``), trees grown
    depth-wise to XGBoost's default depth 6 with the ``hist`` method;
    :func:`fit_model` stops it early by the same rule as LightGBM. Columns
    are subsampled per split (``colsample_bynode=0.8``), not per tree:
    XGBoost rounds ``0.8 × 2`` columns down to one, so with per-tree sampling
    every tree of a two-column set (the simulated climate) would see a
    single column and no tree could model how the two act together (R² 0.01
    against LightGBM's 0.83 on y = x₁x₂ in ``tests/test_models.py``).
``"ridge"``
    Standardised :class:`~sklearn.linear_model.RidgeCV` (alpha chosen by
    efficient leave-one-out over 10⁻³ … 10⁵), the linear baseline.

Every model is seeded and uses ``n_jobs=2`` (the two cores) unless told otherwise.
Keyword ``params`` override the defaults. Measured on 7,000 × 100 features on
the book machine (2 cores shared with other work): ridge < 1 s, LightGBM
about 1 s (≈ 300 rounds before early stopping), XGBoost about the same
(≈ 200 rounds), RF about 10–15 s per fit. For the 1,152 raw patch features,
reduce them in-fold first (``feature_transform``) or lower ``max_features``
for RF.

Missing values
--------------
A row with NaN (or ±inf) in ``X`` or ``y`` raises a ValueError that counts
them (``nan_policy="raise"``, the default). With ``nan_policy="drop"`` those
rows are dropped before splitting, a warning gives the count, and the result's
``n_dropped`` column records it. With ``nan_policy="allow"`` NaN in ``X`` is
passed on to the transform and the model (LightGBM, XGBoost and
scikit-learn's random forest split on missing values; ridge does not), e.g.
for samples whose embedding is missing; a NaN or inf in ``y``, or an inf in
``X``, still raises.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import lightgbm
import numpy as np
import pandas as pd
import xgboost
from scipy import stats
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from fungi_ssl.validation.cv import RandomTrainValTest

__all__ = [
    "METRIC_NAMES",
    "MODEL_NAMES",
    "PairedComparison",
    "corrected_resampled_ttest",
    "evaluate_cv",
    "evaluate_random_splits",
    "fit_model",
    "make_model",
    "paired_comparison",
    "regression_metrics",
    "summarise",
]

MODEL_NAMES = ("rf", "lightgbm", "xgboost", "ridge")
METRIC_NAMES = ("r2", "rmse", "mae", "medae", "me")
#: Rounds without improvement of the validation loss before LightGBM or XGBoost stops.
EARLY_STOPPING_ROUNDS = 50

NanPolicy = Literal["raise", "drop", "allow"]
TransformFactory = Callable[[], TransformerMixin] | TransformerMixin


# --------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------
def make_model(name: str, seed: int = 0, n_jobs: int = 2, **params: Any) -> BaseEstimator:
    """An unfitted regressor with the book's defaults.

    Parameters
    ----------
    name : {"rf", "lightgbm", "xgboost", "ridge"}
        Model family (see the module docstring for the defaults).
    seed : int
        ``random_state`` of the model (ridge has no randomness).
    n_jobs : int
        Threads (default 2, both cores of the book machine).
    **params
        Override defaults, e.g. ``n_estimators=100``. For ridge they go to
        :class:`~sklearn.linear_model.RidgeCV` (e.g. ``alphas``).

    Returns
    -------
    sklearn.base.BaseEstimator

    Examples
    --------
    >>> make_model("lightgbm", seed=1, n_estimators=10).get_params()["n_estimators"]
    10
    >>> make_model("xgboost", seed=1).get_params()["max_depth"]
    6
    >>> make_model("ridge").steps[-1][0]
    'ridgecv'
    """
    if name == "rf":
        defaults: dict[str, Any] = {
            "n_estimators": 200,
            "max_features": 1 / 3,
            "min_samples_leaf": 5,
            "max_samples": 0.5,
            "n_jobs": n_jobs,
            "random_state": seed,
            "verbose": 0,
        }
        return RandomForestRegressor(**{**defaults, **params})
    if name == "lightgbm":
        defaults = {
            "n_estimators": 1000,
            "learning_rate": 0.05,
            "num_leaves": 31,
            "min_child_samples": 20,
            "subsample": 0.8,
            "subsample_freq": 1,
            "colsample_bytree": 0.8,
            "reg_lambda": 1.0,
            "random_state": seed,
            "n_jobs": n_jobs,
            "deterministic": True,
            "force_col_wise": True,
            "verbose": -1,
        }
        return lightgbm.LGBMRegressor(**{**defaults, **params})
    if name == "xgboost":
        defaults = {
            "n_estimators": 1000,
            "learning_rate": 0.05,
            "max_depth": 6,
            "min_child_weight": 20,
            "subsample": 0.8,
            "colsample_bynode": 0.8,
            "reg_lambda": 1.0,
            "tree_method": "hist",
            "random_state": seed,
            "n_jobs": n_jobs,
            "verbosity": 0,
        }
        return xgboost.XGBRegressor(**{**defaults, **params})
    if name == "ridge":
        defaults = {"alphas": np.logspace(-3, 5, 33)}
        return make_pipeline(StandardScaler(), RidgeCV(**{**defaults, **params}))
    raise ValueError(f"model name must be one of {list(MODEL_NAMES)}, got {name!r}")


def fit_model(
    model: BaseEstimator,
    X_train,
    y_train,
    X_val=None,
    y_val=None,
    early_stopping_rounds: int = EARLY_STOPPING_ROUNDS,
) -> BaseEstimator:
    """Fit ``model``, with early stopping on the validation part where it applies.

    LightGBM and XGBoost given ``X_val``/``y_val`` stop when the validation
    L2 (XGBoost: its square root, lowest at the same round) has not
    improved for ``early_stopping_rounds`` rounds and predict with the best
    iteration (LightGBM's ``model.best_iteration_``, XGBoost's
    ``model.best_iteration``). Other models ignore the validation part: they are
    fitted on the training part only, so every model sees the same training
    data.

    Parameters
    ----------
    model : estimator
        From :func:`make_model` (or any scikit-learn regressor).
    X_train, y_train : array_like
        Training part.
    X_val, y_val : array_like, optional
        Validation part (both or neither).
    early_stopping_rounds : int
        Patience of the early stopping.

    Returns
    -------
    estimator
        ``model``, fitted (it is fitted in place, as scikit-learn does).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(300, 4)); y = X[:, 0] + rng.normal(0, 0.1, 300)
    >>> m = fit_model(make_model("lightgbm", n_estimators=500), X[:200], y[:200], X[200:], y[200:])
    >>> m.best_iteration_ < 500
    True
    >>> x = fit_model(make_model("xgboost", n_estimators=500), X[:200], y[:200], X[200:], y[200:])
    >>> x.best_iteration < 499
    True
    """
    if (X_val is None) != (y_val is None):
        raise ValueError("X_val and y_val must be given together (or neither)")
    if isinstance(model, lightgbm.LGBMRegressor) and X_val is not None:
        model.fit(
            X_train,
            y_train,
            eval_X=(X_val,),
            eval_y=(y_val,),
            callbacks=[lightgbm.early_stopping(early_stopping_rounds, verbose=False)],
        )
        return model
    if isinstance(model, xgboost.XGBRegressor):
        # XGBoost takes the patience as a model parameter; without a validation
        # part it must be None, or fit refuses to run
        rounds = early_stopping_rounds if X_val is not None else None
        model.set_params(early_stopping_rounds=rounds)
        if X_val is not None:
            model.fit(X_train, y_train, eval_set=[(X_val, y_val)], verbose=False)
            return model
    model.fit(X_train, y_train)
    return model


# --------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------
def regression_metrics(y_true, y_pred) -> dict[str, float]:
    """R², RMSE, MAE, median absolute error and mean signed error.

    Parameters
    ----------
    y_true, y_pred : array_like
        Observed and predicted values, same length (≥ 2), finite.

    Returns
    -------
    dict
        ``r2`` (1 − SS_res / SS_tot about the mean of ``y_true``; NaN when
        ``y_true`` is constant), ``rmse``, ``mae``, ``medae`` and ``me``, the
        mean signed error **predicted − observed**: positive means the model
        over-predicts on average.

    Examples
    --------
    >>> m = regression_metrics([1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 3.0, 5.0])
    >>> {k: round(v, 3) for k, v in m.items()}
    {'r2': 0.6, 'rmse': 0.707, 'mae': 0.5, 'medae': 0.5, 'me': 0.5}
    """
    t = np.asarray(y_true, dtype=float).ravel()
    p = np.asarray(y_pred, dtype=float).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.size} and {p.size}")
    if t.size < 2:
        raise ValueError(f"y_true: need at least 2 values for R², got {t.size}")
    if not (np.isfinite(t).all() and np.isfinite(p).all()):
        raise ValueError("y_true and y_pred must be finite (no NaN or inf)")
    err = p - t
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    ss_res = float(np.sum(err**2))
    return {
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan,
        "rmse": math.sqrt(ss_res / t.size),
        "mae": float(np.mean(np.abs(err))),
        "medae": float(np.median(np.abs(err))),
        "me": float(np.mean(err)),
    }


# --------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------
def _finite_rows(X, y, allow_nan_x: bool = False) -> tuple[np.ndarray, int, int]:
    if isinstance(X, pd.DataFrame):
        nonnum = [c for c in X.columns if not pd.api.types.is_numeric_dtype(X[c])]
        if nonnum:
            raise ValueError(f"X: columns must be numeric; not numeric: {nonnum[:5]}")
        xv = X.to_numpy(dtype=float)
    else:
        xv = np.asarray(X, dtype=float)
    if xv.ndim != 2:
        raise ValueError(f"X: expected a 2-D table (samples × features), got shape {xv.shape}")
    yv = np.asarray(y, dtype=float)
    if yv.ndim != 1 or len(yv) != len(xv):
        raise ValueError(f"y: expected shape ({len(xv)},) to match X, got {yv.shape}")
    bad_x = (np.isinf(xv) if allow_nan_x else ~np.isfinite(xv)).any(axis=1)
    bad_y = ~np.isfinite(yv)
    return ~(bad_x | bad_y), int(bad_x.sum()), int(bad_y.sum())


def _check_rows(X, y, nan_policy: NanPolicy) -> tuple[Any, np.ndarray, np.ndarray, int]:
    """Validate X, y; return (X, y as float array, kept row positions, n dropped)."""
    if nan_policy not in ("raise", "drop", "allow"):
        raise ValueError(f"nan_policy must be 'raise', 'drop' or 'allow', got {nan_policy!r}")
    keep, n_bad_x, n_bad_y = _finite_rows(X, y, allow_nan_x=nan_policy == "allow")
    n_drop = int((~keep).sum())
    yv = np.asarray(y, dtype=float)
    if n_drop and nan_policy in ("raise", "allow"):
        what = "inf in X or NaN/inf in y" if nan_policy == "allow" else "NaN or inf"
        raise ValueError(
            f"{n_drop} of {len(keep)} rows have {what} ({n_bad_x} in X, {n_bad_y} in y); "
            "fill them or pass nan_policy='drop'"
        )
    rows = np.flatnonzero(keep)
    if n_drop:
        warnings.warn(
            f"dropped {n_drop} of {len(keep)} rows with NaN or inf "
            f"({n_bad_x} in X, {n_bad_y} in y)",
            stacklevel=3,
        )
    if len(rows) < 10:
        raise ValueError(f"X: only {len(rows)} complete rows; need at least 10 to evaluate")
    return _take(X, rows), yv[rows], rows, n_drop


def _take(X, idx: np.ndarray):
    return X.iloc[idx] if isinstance(X, (pd.DataFrame, pd.Series)) else np.asarray(X)[idx]


def _new_transform(feature_transform: TransformFactory | None):
    if feature_transform is None:
        return None
    if hasattr(feature_transform, "fit"):
        return clone(feature_transform)
    if callable(feature_transform):
        out = feature_transform()
        if not (hasattr(out, "fit") and hasattr(out, "transform")):
            raise ValueError(
                f"feature_transform must return a transformer with fit/transform, got {type(out)}"
            )
        return out
    raise ValueError(
        f"feature_transform must be a transformer or a factory of one, got {type(feature_transform)}"
    )


def _fit_predict(
    model_name: str,
    seed: int,
    X,
    y: np.ndarray,
    train: np.ndarray,
    val: np.ndarray | None,
    test: np.ndarray,
    feature_transform: TransformFactory | None,
    model_params: Mapping[str, Any] | None,
    n_jobs: int,
) -> np.ndarray:
    """Fit the transform on ``train`` only, the model on ``train`` (early stop on ``val``)."""
    X_tr, X_te = _take(X, train), _take(X, test)
    X_va = _take(X, val) if val is not None and len(val) else None
    tf = _new_transform(feature_transform)
    if tf is not None:
        X_tr = tf.fit_transform(X_tr, y[train])
        X_te = tf.transform(X_te)
        if X_va is not None:
            X_va = tf.transform(X_va)
    model = make_model(model_name, seed=seed, n_jobs=n_jobs, **dict(model_params or {}))
    y_va = y[val] if X_va is not None else None
    fit_model(model, X_tr, y[train], X_va, y_va)
    return np.asarray(model.predict(X_te), dtype=float)


def evaluate_random_splits(
    X,
    y,
    model_name: str,
    n_seeds: int = 10,
    seed: int = 0,
    feature_transform: TransformFactory | None = None,
    *,
    predictor_set: str = "all",
    model_params: Mapping[str, Any] | None = None,
    n_jobs: int = 2,
    val_size: float = 0.1,
    test_size: float = 0.2,
    nan_policy: NanPolicy = "raise",
    progress: bool = True,
    return_predictions: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """The study's protocol: random 70/10/20 splits, one model per seed, test metrics.

    For each seed ``s`` in ``seed … seed + n_seeds - 1``
    (:class:`fungi_ssl.validation.cv.RandomTrainValTest`): fit ``feature_transform`` on
    the training part only and apply it to validation and test; fit the model
    (seeded with ``s``) on the training part, with early stopping on the
    validation part for LightGBM; score it on the test part. The same seed
    gives the same split for every predictor set, so per-seed scores are paired.

    Parameters
    ----------
    X : DataFrame or array_like of shape (n, p)
        Predictors (kept a DataFrame when given one, for transformers that
        select columns by name).
    y : array_like of shape (n,)
        Target.
    model_name : {"rf", "lightgbm", "ridge"}
        See :func:`make_model`.
    n_seeds, seed : int
        Number of splits and the first seed.
    feature_transform : transformer or callable returning one, optional
        In-fold feature reduction, e.g. ``lambda: PCA(20)`` or a
        :class:`fungi_ssl.predictors.features.PatchReducer`. A transformer instance is
        cloned for each split; a factory is called once per split.
    predictor_set : str
        Label for the ``set`` column (the predictor set's name).
    model_params : mapping, optional
        Overrides passed to :func:`make_model`.
    n_jobs : int
        Model threads.
    val_size, test_size : float
        Validation and test fractions (0.1, 0.2).
    nan_policy : {"raise", "drop", "allow"}
        What to do with rows holding NaN/inf (see the module docstring).
    progress : bool
        Show a tqdm bar.
    return_predictions : bool
        Also return the test predictions of every seed (chapter 07 checks
        their bias).

    Returns
    -------
    pandas.DataFrame
        One row per seed: ``set, model, cv ("random"), seed, n_train, n_val,
        n_test, n_dropped, r2, rmse, mae, medae, me``.
    predictions : pandas.DataFrame, only with ``return_predictions``
        ``row`` (position in the original ``X``), ``seed``, ``observed``,
        ``predicted``: one line per test prediction (a sample appears once
        per seed that tests it).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 3)); y = X @ [1.0, 2.0, 0.0] + rng.normal(0, 1, 200)
    >>> res = evaluate_random_splits(X, y, "ridge", n_seeds=2, progress=False)
    >>> res[["seed", "n_train", "n_val", "n_test"]].values.tolist()
    [[0, 140, 20, 40], [1, 140, 20, 40]]
    >>> bool(res["r2"].between(0.6, 0.95).all())   # true R² = 5/6
    True
    >>> _, pred = evaluate_random_splits(X, y, "ridge", n_seeds=2, progress=False,
    ...                                  return_predictions=True)
    >>> pred.groupby("seed").size().tolist(), bool((y[pred["row"]] == pred["observed"]).all())
    ([40, 40], True)
    """
    X, yv, kept, n_drop = _check_rows(X, y, nan_policy)
    make_model(model_name)  # fail early on a bad name
    splitter = RandomTrainValTest(n_seeds, seed, val_size=val_size, test_size=test_size)
    rows, preds = [], []
    splits = zip(splitter.seeds, splitter.split_train_val_test(yv), strict=True)
    for s, (train, val, test) in tqdm(
        splits, total=n_seeds, desc=f"{model_name} · {predictor_set}", disable=not progress
    ):
        pred = _fit_predict(
            model_name, s, X, yv, train, val, test, feature_transform, model_params, n_jobs
        )
        if return_predictions:
            preds.append(
                pd.DataFrame(
                    {"row": kept[test], "seed": s, "observed": yv[test], "predicted": pred}
                )
            )
        rows.append(
            dict(
                set=predictor_set,
                model=model_name,
                cv="random",
                seed=s,
                n_train=len(train),
                n_val=len(val),
                n_test=len(test),
                n_dropped=n_drop,
                **regression_metrics(yv[test], pred),
            )
        )
    out = pd.DataFrame(rows)
    if return_predictions:
        return out, pd.concat(preds, ignore_index=True)
    return out


def _group_holdout(
    train: np.ndarray, labels: np.ndarray, n_val: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out whole groups of ``train`` until at least ``n_val`` rows (seeded).

    Examples
    --------
    >>> val, rest = _group_holdout(np.arange(10), np.repeat([0, 1, 2, 3, 4], 2), 3, 0)
    >>> len(val), set(np.repeat([0, 1, 2, 3, 4], 2)[val]) & set(np.repeat([0, 1, 2, 3, 4], 2)[rest])
    (4, set())
    """
    uniq, inverse = np.unique(labels, return_inverse=True)
    order = np.random.default_rng(seed).permutation(len(uniq))
    sizes = np.bincount(inverse)[order]
    n_groups = int(np.searchsorted(np.cumsum(sizes), n_val) + 1)
    if n_groups >= len(uniq):  # too few groups to hold any out and keep some to train on
        n_groups = max(len(uniq) - 1, 0)
    held = np.zeros(len(uniq), bool)
    held[order[:n_groups]] = True
    mask = held[inverse]
    return np.sort(train[mask]), np.sort(train[~mask])


def evaluate_cv(
    X,
    y,
    model_name: str,
    splitter,
    *,
    groups=None,
    seed: int = 0,
    val_size: float = 0.1,
    feature_transform: TransformFactory | None = None,
    predictor_set: str = "all",
    model_params: Mapping[str, Any] | None = None,
    n_jobs: int = 2,
    nan_policy: NanPolicy = "raise",
    progress: bool = True,
    return_predictions: bool = False,
    val_groups=None,
) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Out-of-fold evaluation with any splitter, per fold and pooled.

    For each ``(train, test)`` of ``splitter.split(X, y, groups)``: a random
    ``val_size`` share of the training fold is held out for early stopping
    (seeded; LightGBM uses it, the other models train on the rest too, so all
    models see the same data), ``feature_transform`` is fitted on the rest
    of the training fold only, and the model is scored on the test fold.

    Parameters
    ----------
    X, y, model_name, feature_transform, predictor_set, model_params, n_jobs, nan_policy, progress
        As in :func:`evaluate_random_splits`.
    splitter : scikit-learn splitter
        E.g. :class:`fungi_ssl.validation.cv.SiteGroupKFold`, ``BlockKFold``,
        ``BufferedKFold``, or ``sklearn.model_selection.KFold``.
    groups : array_like, optional
        Passed to ``splitter.split``; for the spatial splitters of
        :mod:`fungi_ssl.validation.cv` these are the ``(n, 2)`` coordinates when the
        splitter was built without them. Rows dropped for NaN are dropped
        here too (and from coordinates held by a :mod:`fungi_ssl.validation.cv` splitter).
    seed : int
        Seed of the validation hold-out (fold ``k`` uses ``seed + k``) and of
        the models.
    val_size : float
        Share of each training fold held out for early stopping (0 for none).
    val_groups : array_like, optional
        A group label per row (e.g. ``site_id``). When given, the early-stopping
        hold-out takes whole groups, so cores of one site are never split
        between the rows a model is fitted on and the rows that stop it; a
        random hold-out would let site information steer early stopping.
    return_predictions : bool
        Also return the out-of-fold predictions.

    Returns
    -------
    pandas.DataFrame
        One row per fold (``scope="fold"``, ``fold`` 0 … k−1) and one pooled
        row (``scope="pooled"``, ``fold`` missing) over all test predictions:
        ``set, model, cv, scope, fold, n_train, n_val, n_test, n_dropped,
        r2, rmse, mae, medae, me``.
    predictions : pandas.DataFrame, only with ``return_predictions``
        ``row`` (position in the original ``X``), ``fold``, ``observed``,
        ``predicted``: one line per test prediction.

    Examples
    --------
    >>> from fungi_ssl.validation.cv import BlockKFold
    >>> rng = np.random.default_rng(0)
    >>> xy = rng.uniform(0, 10_000, size=(300, 2))
    >>> X = np.column_stack([rng.normal(size=300), xy[:, 0] / 10_000])
    >>> y = X[:, 0] + rng.normal(0, 0.5, 300)
    >>> cv = BlockKFold(2_000, n_splits=4, coords=xy, coordinates="metres")
    >>> res = evaluate_cv(X, y, "ridge", cv, progress=False)
    >>> res[["scope", "n_test"]].values.tolist()[-1]
    ['pooled', 300]
    """
    X, yv, rows, n_drop = _check_rows(X, y, nan_policy)
    make_model(model_name)
    if not 0 <= val_size < 1:
        raise ValueError(f"val_size must lie in [0, 1), got {val_size}")
    if val_groups is not None:
        val_groups = np.asarray(val_groups)
        if len(val_groups) != len(rows) + n_drop:
            raise ValueError(
                f"val_groups has {len(val_groups)} labels for {len(rows) + n_drop} rows of X"
            )
        val_groups = val_groups[rows]
    if n_drop:
        if groups is not None:
            groups = _take(groups, rows)
        if getattr(splitter, "coords", None) is not None and hasattr(splitter, "with_coords"):
            splitter = splitter.with_coords(_take(splitter.coords, rows))
    cv_name = type(splitter).__name__
    n_splits = splitter.get_n_splits(X, yv, groups)
    table, preds = [], []
    folds = splitter.split(X, yv, groups)
    for k, (train, test) in enumerate(
        tqdm(
            folds,
            total=n_splits,
            desc=f"{model_name} · {predictor_set} · {cv_name}",
            disable=not progress,
        )
    ):
        train = np.asarray(train)
        val = None
        n_val = round(val_size * len(train))
        if n_val >= 1 and val_groups is not None:
            val, train = _group_holdout(train, val_groups[train], n_val, seed + k)
        elif n_val >= 1:
            perm = np.random.default_rng(seed + k).permutation(len(train))
            val, train = np.sort(train[perm[:n_val]]), np.sort(train[perm[n_val:]])
        pred = _fit_predict(
            model_name, seed + k, X, yv, train, val, test, feature_transform, model_params, n_jobs
        )
        table.append(
            dict(
                set=predictor_set,
                model=model_name,
                cv=cv_name,
                scope="fold",
                fold=k,
                n_train=len(train),
                n_val=0 if val is None else len(val),
                n_test=len(test),
                n_dropped=n_drop,
                **regression_metrics(yv[test], pred),
            )
        )
        preds.append(
            pd.DataFrame({"row": rows[test], "fold": k, "observed": yv[test], "predicted": pred})
        )
    if not preds:
        raise ValueError(f"splitter {cv_name} yielded no folds")
    pooled = pd.concat(preds, ignore_index=True)
    table.append(
        dict(
            set=predictor_set,
            model=model_name,
            cv=cv_name,
            scope="pooled",
            fold=pd.NA,
            n_train=np.nan,
            n_val=np.nan,
            n_test=len(pooled),
            n_dropped=n_drop,
            **regression_metrics(pooled["observed"], pooled["predicted"]),
        )
    )
    out = pd.DataFrame(table)
    out["fold"] = out["fold"].astype("Int64")
    for c in ("n_train", "n_val"):
        out[c] = out[c].astype("Int64")
    return (out, pooled) if return_predictions else out


# --------------------------------------------------------------------------
# comparison and summary
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class PairedComparison:
    """A paired comparison of per-seed scores ``a − b``.

    Attributes
    ----------
    n : int
        Number of pairs.
    mean_diff : float
        Mean of ``a − b``.
    ci_low, ci_high : float
        t-interval for the mean difference (``confidence``, default 95%),
        treating the pairs as independent.
    wilcoxon_p : float
        Two-sided Wilcoxon signed-rank p-value (1.0 when all differences are 0).
    corrected_t_p : float or None
        Two-sided p of the corrected resampled t-test
        (:func:`corrected_resampled_ttest`); None when no test/train ratio
        was given.
    """

    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    wilcoxon_p: float
    corrected_t_p: float | None = None

    def to_dict(self) -> dict[str, float | int]:
        """The fields as a plain dict (for JSON)."""
        return asdict(self)


def corrected_resampled_ttest(differences, test_train_ratio: float) -> tuple[float, float]:
    """The corrected resampled t-test of Nadeau & Bengio (2003), two-sided.

    Scores from J random train/test splits of one data set are not
    independent: the training parts overlap (two 70% parts share about half
    their rows) and so do the test parts, so the J differences vary less
    than J independent replications would, and the plain paired t-test (and
    the Wilcoxon test, which also assumes independent pairs) calls
    differences significant far too often. Nadeau & Bengio inflate the
    variance of the mean difference from σ²/J to

    .. math:: \\left(\\frac{1}{J} + \\frac{n_\\text{test}}{n_\\text{train}}\\right) \\hat\\sigma^2,

    with σ̂² the sample variance (ddof 1) of the J differences, and refer
    t = mean / √(that) to Student's t with J − 1 degrees of freedom.

    Parameters
    ----------
    differences : array_like
        Per-split differences of a score (e.g. R² of set A − R² of set B),
        at least 2.
    test_train_ratio : float
        n_test / n_train of one split (0.2 / 0.7 for the study's 70/10/20
        splits, counting as training the part a model is fitted on).

    Returns
    -------
    t, p : float
        The statistic and its two-sided p-value. All differences equal to
        zero give ``(0.0, 1.0)``; equal non-zero differences (no variance)
        give ``(±inf, 0.0)``.

    References
    ----------
    Nadeau, C. & Bengio, Y. (2003) Inference for the generalization error.
    Machine Learning 52:239-281.

    Examples
    --------
    Three splits with differences 0.02, 0.04, 0.06 (mean 0.04, variance
    0.0004) and n_test / n_train = 2 / 7: t² = 0.04² / ((1/3 + 2/7) × 0.0004)
    = 84 / 13, and with 2 degrees of freedom p = 1 − |t| / √(t² + 2) = 1 − √(42/55):

    >>> t, p = corrected_resampled_ttest([0.02, 0.04, 0.06], 2 / 7)
    >>> round(t ** 2, 4), round(p, 4), round(1 - (42 / 55) ** 0.5, 4)
    (6.4615, 0.1261, 0.1261)
    """
    d = np.asarray(differences, dtype=float).ravel()
    if d.size < 2:
        raise ValueError(f"differences: need at least 2 splits, got {d.size}")
    if not np.isfinite(d).all():
        raise ValueError("differences must be finite (no NaN or inf)")
    ratio = float(test_train_ratio)
    if not (math.isfinite(ratio) and ratio > 0):
        raise ValueError(f"test_train_ratio must be a positive number, got {test_train_ratio!r}")
    n = d.size
    mean = float(d.mean())
    var = float(d.var(ddof=1))
    if var == 0.0:
        if mean == 0.0:
            return 0.0, 1.0
        return math.copysign(math.inf, mean), 0.0
    t = mean / math.sqrt((1.0 / n + ratio) * var)
    p = float(2.0 * stats.t.sf(abs(t), df=n - 1))
    return t, p


def paired_comparison(
    a, b, confidence: float = 0.95, test_train_ratio: float | None = None
) -> PairedComparison:
    """Compare paired per-seed scores: mean difference, t-interval, Wilcoxon p, corrected t p.

    Pairs are per seed: ``a[i]`` and ``b[i]`` come from the same split. When
    both are :class:`pandas.Series` they are paired by index (e.g. seed),
    which must hold the same labels.

    The Wilcoxon signed-rank test (:func:`scipy.stats.wilcoxon`, two-sided,
    exact for small ``n`` without ties) cannot go below ``2 / 2**n``: 0.25 for
    3 seeds, 0.0625 for 5, 0.002 for 10, about 2e-15 for 50. With fewer than 6
    pairs no difference can reach p < 0.05, so read the interval, not just p.

    Both the Wilcoxon test and the t-interval treat the pairs as independent.
    Random splits of one data set are not: their training and test parts
    overlap, so given ``test_train_ratio`` (n_test / n_train) the result also
    holds the corrected resampled t-test (:func:`corrected_resampled_ttest`),
    which allows for that overlap and is the one to lean on for random splits.

    Parameters
    ----------
    a, b : array_like or Series
        Scores of the two predictor sets or models (e.g. test R² per seed).
    confidence : float
        Level of the t-interval.
    test_train_ratio : float, optional
        n_test / n_train of one split; when given, ``corrected_t_p`` is set.

    Returns
    -------
    PairedComparison

    Examples
    --------
    >>> r = paired_comparison([0.61, 0.58, 0.63, 0.60, 0.59, 0.62],
    ...                       [0.50, 0.49, 0.55, 0.50, 0.47, 0.52])
    >>> round(r.mean_diff, 3), r.n, round(r.wilcoxon_p, 4), r.corrected_t_p is None
    (0.1, 6, 0.0312, True)
    """
    if isinstance(a, pd.Series) and isinstance(b, pd.Series):
        if set(a.index) != set(b.index) or a.index.has_duplicates:
            raise ValueError("a and b: Series must share the same unique index (the seeds)")
        b = b.loc[a.index]
    av = np.asarray(a, dtype=float).ravel()
    bv = np.asarray(b, dtype=float).ravel()
    if av.shape != bv.shape:
        raise ValueError(f"a and b must be paired: lengths {av.size} and {bv.size}")
    if not (np.isfinite(av).all() and np.isfinite(bv).all()):
        raise ValueError("a and b must be finite (a NaN score has no pair)")
    if av.size < 2:
        raise ValueError(f"a and b: need at least 2 pairs, got {av.size}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    d = av - bv
    n = d.size
    mean = float(d.mean())
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * d.std(ddof=1) / math.sqrt(n))
    if np.all(d == 0):
        p = 1.0
    else:
        p = float(stats.wilcoxon(av, bv, alternative="two-sided").pvalue)
    corrected = None
    if test_train_ratio is not None:
        corrected = corrected_resampled_ttest(d, test_train_ratio)[1]
    return PairedComparison(
        n=n,
        mean_diff=mean,
        ci_low=mean - half,
        ci_high=mean + half,
        wilcoxon_p=p,
        corrected_t_p=corrected,
    )


def summarise(results: pd.DataFrame) -> dict[str, dict[str, dict[str, float | None]]]:
    """Summarise per-seed (or per-fold) results as chapter 04's nested dict.

    Parameters
    ----------
    results : pandas.DataFrame
        Rows from :func:`evaluate_random_splits` or :func:`evaluate_cv`
        (concatenated over predictor sets and models) for **one** CV scheme.
        Pooled rows of :func:`evaluate_cv` are left out: the summary is over
        folds.

    Returns
    -------
    dict
        ``{set: {model: {"r2_mean", "r2_sd", "rmse_mean", "me_mean"}}}`` as
        plain floats; ``r2_sd`` is the sample SD (ddof 1), None for one row.

    Examples
    --------
    >>> df = pd.DataFrame({"set": ["ssl"] * 3, "model": ["rf"] * 3,
    ...                    "r2": [0.5, 0.6, 0.7], "rmse": [1.0, 1.0, 1.0],
    ...                    "me": [0.1, -0.1, 0.0]})
    >>> summarise(df)
    {'ssl': {'rf': {'r2_mean': 0.6, 'r2_sd': 0.1, 'rmse_mean': 1.0, 'me_mean': 0.0}}}
    """
    need = ["set", "model", "r2", "rmse", "me"]
    missing = [c for c in need if c not in results.columns]
    if missing:
        raise ValueError(f"results: missing columns {missing}; expected {need}")
    df = results
    if "scope" in df.columns:
        df = df[df["scope"] != "pooled"]
    if "cv" in df.columns and df["cv"].nunique() > 1:
        raise ValueError(
            f"results: mixes CV schemes {sorted(df['cv'].unique())}; summarise one at a time"
        )
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for (set_name, model), g in df.groupby(["set", "model"], sort=True):
        sd = float(g["r2"].std(ddof=1)) if len(g) > 1 else None
        out.setdefault(str(set_name), {})[str(model)] = {
            "r2_mean": _clean(g["r2"].mean()),
            "r2_sd": None if sd is None else _clean(sd),
            "rmse_mean": _clean(g["rmse"].mean()),
            "me_mean": _clean(g["me"].mean()),
        }
    return out


def _clean(v: float) -> float:
    """A plain float, rounded to 12 significant digits to hide float noise in JSON."""
    v = float(v)
    return float(f"{v:.12g}") if math.isfinite(v) else v
