"""Chapter 04's held-out predictions, one row per test prediction, for chapter 07.

:func:`fungi_ssl.comparison.table1` keeps only the scores of each split.
Chapter 07 checks the predictions themselves (their bias, calibration,
residual structure and area of applicability), so :func:`chapter04_heldout`
re-runs one model × predictor set of Table 1 with **exactly chapter 04's
settings** and keeps every test prediction:

* the same rows (complete in every set chapter 04 compares, so a sample
  dropped there is dropped here);
* ``random``: the study's random 70/10/20 splits, seeds ``seed … seed +
  n_seeds − 1`` (:func:`fungi_ssl.models.evaluate_random_splits`), early
  stopping on the validation part;
* ``spatial``: K-fold over square blocks (:func:`fungi_ssl.comparison.spatial_splitter`,
  50 km, 5 folds), early stopping on whole sites carved out of each training
  fold (:func:`fungi_ssl.models.evaluate_cv` with ``val_groups=site_id``);
* the SSL patch reduced to :data:`~fungi_ssl.pipelines.SSL_COMPONENTS`
  principal components inside each training part
  (:class:`~fungi_ssl.pipelines.MemoPatchReducer`), the book's
  hyperparameters (:data:`~fungi_ssl.pipelines.BOOK_MODEL_PARAMS`).

The two protocols are returned in one long table with a ``scheme`` column and
are never pooled (:mod:`fungi_ssl.bias` keeps them apart everywhere). The
per-split scores come back too, and the tests check that they equal chapter
04's for the same split.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from fungi_ssl.bias import heldout_table
from fungi_ssl.comparison import DEFAULT_BLOCK_SIZE_M, DEFAULT_SPATIAL_FOLDS, spatial_splitter
from fungi_ssl.models import MODEL_NAMES, evaluate_cv, evaluate_random_splits
from fungi_ssl.pipelines import (
    BOOK_MODEL_PARAMS,
    SSL_COMPONENTS,
    MemoPatchReducer,
    ReductionMemo,
    available_sets,
    check_set_name,
    complete_rows,
    has_ssl,
    predictor_matrix,
)
from fungi_ssl.worker_threads import single_threaded_workers

__all__ = ["HeldOut", "chapter04_heldout"]


@dataclass
class HeldOut:
    """Held-out predictions of one model × predictor set under both protocols.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per test prediction: ``sample_id, site_id, scheme
        ("random"/"spatial"), split`` (seed or fold), ``y_true, y_pred,
        longitude, latitude`` and ``row`` (position in ``data``).
    scores : pandas.DataFrame
        Chapter 04's per-seed and per-fold scores of the same runs.
    data : pandas.DataFrame
        The rows the model was evaluated on (index reset), with every column
        of the input frame: covariates for the residual checks.
    fold : numpy.ndarray
        Spatial fold of each row of ``data`` (the area of applicability takes
        its threshold from these folds).
    predictor_set, model : str
    seconds : dict
        Wall seconds of each protocol.
    """

    table: pd.DataFrame
    scores: pd.DataFrame
    data: pd.DataFrame
    fold: np.ndarray
    predictor_set: str
    model: str
    seconds: dict[str, float] = field(default_factory=dict)


def chapter04_heldout(
    frame: pd.DataFrame,
    target: str,
    predictor_set: str = "ssl",
    model: str = "lightgbm",
    *,
    n_seeds: int = 3,
    seed: int = 0,
    block_size_m: float = DEFAULT_BLOCK_SIZE_M,
    n_splits: int = DEFAULT_SPATIAL_FOLDS,
    row_sets: Sequence[str] | None = None,
    n_jobs: int = 2,
) -> HeldOut:
    """Re-run one model × set of chapter 04's Table 1 and keep every test prediction.

    Parameters
    ----------
    frame : pandas.DataFrame
        The predictor table (``predictor_table(...).frame``) with
        ``sample_id``, ``longitude``, ``latitude``, the target and the
        predictor columns.
    target : str
        Target column (``"log_richness"``).
    predictor_set : str
        The set (``"ssl"``; ``"all"`` where a table has no embeddings).
    model : {"lightgbm", "xgboost", "rf", "ridge"}
    n_seeds : int
        Random splits (chapter 04 uses the profile's number).
    seed : int
        First split seed; also seeds the models, the PCA and the folds.
    block_size_m, n_splits : float, int
        Spatial blocks and folds (chapter 04: 50 km, 5).
    row_sets : sequence of str, optional
        Sets whose complete rows are kept, as chapter 04 keeps them
        (default: every set of Table 1 the frame has).
    n_jobs : int
        The two protocols run on this many threads (2: one each), each model
        single-threaded.

    Returns
    -------
    HeldOut

    Raises
    ------
    ValueError
        An unknown model or set, a set without columns, a missing target or
        coordinates, ``n_seeds < 1``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> n = 300
    >>> t = pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)],
    ...                   "longitude": rng.uniform(0, 10, n), "latitude": rng.uniform(40, 50, n),
    ...                   "CGIAR_PET": rng.normal(size=n)})
    >>> t["y"] = t["CGIAR_PET"] + rng.normal(0, 0.5, n)
    >>> h = chapter04_heldout(t, "y", "climate", "ridge", n_seeds=2)
    >>> h.table.groupby("scheme").size().to_dict()      # 2 × 20% of 300; every sample once
    {'random': 120, 'spatial': 300}
    """
    if model not in MODEL_NAMES:
        raise ValueError(f"model must be one of {list(MODEL_NAMES)}, got {model!r}")
    check_set_name(predictor_set)
    if int(n_seeds) != n_seeds or n_seeds < 1:
        raise ValueError(f"n_seeds must be a positive integer, got {n_seeds!r}")
    missing = [c for c in ("longitude", "latitude") if c not in frame.columns]
    if missing:
        raise ValueError(f"frame: needs columns {missing} for the spatial blocks")
    if row_sets is None:
        row_sets = available_sets(frame)
    row_sets = list(dict.fromkeys([*row_sets, predictor_set]))
    data = complete_rows(frame, target, row_sets)
    X = predictor_matrix(data, predictor_set)
    y = data[target].to_numpy(dtype=float)
    splitter = spatial_splitter(data, block_size_m=block_size_m, n_splits=n_splits, seed=seed)
    site_ids = data["site_id"].to_numpy() if "site_id" in data.columns else None
    memo = ReductionMemo()
    transform = (
        partial(MemoPatchReducer, n_components=SSL_COMPONENTS, seed=seed, memo=memo)
        if has_ssl(X)
        else None
    )
    common: dict[str, Any] = {
        "feature_transform": transform,
        "predictor_set": predictor_set,
        "model_params": dict(BOOK_MODEL_PARAMS.get(model, {})),
        "n_jobs": 1,
        "progress": False,
    }
    seconds: dict[str, float] = {}

    def run(scheme: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        start = time.perf_counter()
        try:
            if scheme == "random":
                scores, preds = evaluate_random_splits(
                    X, y, model, n_seeds=int(n_seeds), seed=seed, return_predictions=True,
                    **common,
                )
                tab = heldout_table(preds, data, "random", "seed")
                return scores.assign(scheme="random"), tab.assign(row=preds["row"].to_numpy())
            scores, preds = evaluate_cv(
                X, y, model, splitter, seed=seed, val_groups=site_ids, return_predictions=True,
                **common,
            )
            tab = heldout_table(preds, data, "spatial", "fold")
            return scores.assign(scheme="spatial"), tab.assign(row=preds["row"].to_numpy())
        finally:
            seconds[scheme] = time.perf_counter() - start

    with single_threaded_workers():
        done = Parallel(n_jobs=max(1, min(int(n_jobs), 2)), backend="threading")(
            delayed(run)(s) for s in ("random", "spatial")
        )
    table = pd.concat([d[1] for d in done], ignore_index=True)
    if site_ids is not None:
        table.insert(1, "site_id", site_ids[table["row"].to_numpy()])
    scores = pd.concat([d[0] for d in done], ignore_index=True)
    return HeldOut(
        table=table,
        scores=scores,
        data=data,
        fold=splitter.fold_labels(),
        predictor_set=predictor_set,
        model=model,
        seconds=seconds,
    )

