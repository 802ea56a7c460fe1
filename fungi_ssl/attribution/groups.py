"""Chapter 05's attribution: variance partitioning and SHAP over the predictor groups.

Two questions about the groups of chapter 04 (``ssl``, ``climate``,
``soil``, ``landcover``), asked through the book's pipelines
(:mod:`fungi_ssl.validation.pipelines`: SSL patch reduced by PCA in each training fold):

1. what each group *could* explain, alone and shared with the others:
   :func:`partition_groups` runs the cross-validated commonality analysis of
   :mod:`fungi_ssl.attribution.partition` over every subset of groups, on site-group
   folds by default (:func:`partition_splitter` says why);
2. what one fitted model *did* use: :func:`shap_attribution` fits the book's
   LightGBM on all groups and explains it with Tree SHAP, summed by group
   (:mod:`fungi_ssl.attribution.explain`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import pandas as pd
from threadpoolctl import threadpool_limits

from fungi_ssl.core.worker_threads import single_threaded_workers
from fungi_ssl.validation.comparison import (
    DEFAULT_BLOCK_SIZE_M,
    DEFAULT_SPATIAL_FOLDS,
    spatial_splitter,
)
from fungi_ssl.validation.cv import SiteGroupKFold, SpatialKFold
from fungi_ssl.validation.models import MODEL_NAMES
from fungi_ssl.validation.pipelines import (
    SSL_COMPONENTS,
    ReductionMemo,
    available_sets,
    check_choices,
    complete_rows,
    predictor_matrix,
    reduced_model,
)

__all__ = [
    "PARTITION_GROUPS",
    "PARTITION_LIGHTGBM",
    "partition_groups",
    "partition_splitter",
    "shap_attribution",
]

#: The groups chapter 05 partitions the explained variance over.
PARTITION_GROUPS = ("ssl", "climate", "soil", "landcover")
#: LightGBM for the partition and SHAP fits: no validation part there, so a
#: fixed number of rounds (about what early stopping chose in Table 1).
PARTITION_LIGHTGBM: dict[str, Any] = {"n_estimators": 200, "learning_rate": 0.08}


def partition_splitter(
    frame: pd.DataFrame,
    scheme: Literal["site", "block"] = "site",
    n_splits: int = DEFAULT_SPATIAL_FOLDS,
    seed: int = 0,
    block_size_m: float = DEFAULT_BLOCK_SIZE_M,
) -> SpatialKFold:
    """The folds of chapter 05's commonality analysis.

    ``"site"`` (default): :class:`fungi_ssl.validation.cv.SiteGroupKFold`, cores within
    25 m in one fold. That removes the leak of cores sharing one pixel and
    one set of covariates, but lets a model learn how richness follows
    climate, soil and land cover across neighbouring sites, which is the
    information the partition asks about (how much of it SSL also carries).
    Under ``"block"`` folds (:func:`spatial_splitter`) the 1 km sets alone
    often score R² ≤ 0 because their relation to richness does not transfer
    to unseen regions; their fractions then measure transfer, not content.

    Examples
    --------
    >>> t = pd.DataFrame({"longitude": [0.0, 0.0, 5.0, 5.1], "latitude": [45.0] * 4})
    >>> type(partition_splitter(t, n_splits=2)).__name__
    'SiteGroupKFold'
    """
    if scheme == "block":
        return spatial_splitter(frame, block_size_m=block_size_m, n_splits=n_splits, seed=seed)
    if scheme != "site":
        raise ValueError(f"scheme must be 'site' or 'block', got {scheme!r}")
    missing = [c for c in ("longitude", "latitude") if c not in frame.columns]
    if missing:
        raise ValueError(f"frame: needs longitude and latitude for site folds; missing {missing}")
    return SiteGroupKFold(
        n_splits=n_splits,
        seed=seed,
        coords=frame[["longitude", "latitude"]].to_numpy(dtype=float),
    )


def partition_groups(
    frame: pd.DataFrame,
    target: str,
    groups: Sequence[str] = PARTITION_GROUPS,
    cv: Any = "site",
    *,
    model: str = "lightgbm",
    seed: int = 0,
    n_components: int = SSL_COMPONENTS,
    model_params: Mapping[str, Any] | None = None,
    n_jobs: int = 2,
    progress: bool = True,
):
    """Cross-validated commonality analysis of the predictor groups present in ``frame``.

    Runs :func:`fungi_ssl.attribution.partition.commonality_partition` with one
    ``Pipeline(MemoPatchReducer, model)`` per subset of groups (2^k − 1
    subsets, all on the same folds), on two threads that share the SSL PCA
    fitted in each training fold.

    Parameters
    ----------
    frame : pandas.DataFrame
        The predictor table.
    target : str
        Target column.
    groups : sequence of str
        Candidate groups; those without columns in ``frame`` (``ssl`` for the
        real SPUN table) are left out.
    cv : {"site", "block"} or splitter
        A scheme of :func:`partition_splitter` (default ``"site"``: site-group
        5-fold, seeded by ``seed``), built on the complete rows; or any
        splitter (a :mod:`fungi_ssl.validation.cv` one without coordinates receives the
        rows' longitude/latitude).
    model : {"lightgbm", "rf", "xgboost", "ridge"}
        The regressor (LightGBM with :data:`PARTITION_LIGHTGBM` by default).
    seed, n_components, n_jobs, progress
        As in :func:`fungi_ssl.validation.comparison.table1`.
    model_params : mapping, optional
        Model overrides.

    Returns
    -------
    fungi_ssl.attribution.partition.CommonalityResult
        Over the rows complete for every group (``attrs``-like counts are in
        ``result.n_folds``; dropped rows are warned about).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> n = 200
    >>> t = pd.DataFrame({"longitude": rng.uniform(0, 5, n), "latitude": rng.uniform(45, 50, n),
    ...                   "CGIAR_PET": rng.normal(size=n), "SG_Sand_Content_005cm": rng.normal(size=n)})
    >>> t["y"] = t["CGIAR_PET"] + t["SG_Sand_Content_005cm"] + rng.normal(0, 0.5, n)
    >>> res = partition_groups(t, "y", model="ridge", progress=False)
    >>> res.groups, bool(abs(sum(res.fractions.values()) - res.full_r2) < 1e-9)
    (['climate', 'soil'], True)
    """
    from fungi_ssl.attribution.partition import commonality_partition

    present = [g for g in groups if g in available_sets(frame, [g])]
    if not present:
        raise ValueError(f"groups: none of {list(groups)} has columns in the frame")
    check_choices([model], MODEL_NAMES, "model")
    data = complete_rows(frame, target, present)
    X_groups = {g: predictor_matrix(data, g) for g in present}
    y = data[target].to_numpy(dtype=float)
    splitter = partition_splitter(data, cv, seed=seed) if isinstance(cv, str) else cv
    params = dict(PARTITION_LIGHTGBM) if model == "lightgbm" else {}
    params.update(model_params or {})
    factory = reduced_model(
        model, seed, n_components=n_components, memo=ReductionMemo(), n_jobs=1, **params
    )
    groups_arg = None
    if isinstance(splitter, SpatialKFold) and splitter.coords is None:
        groups_arg = data[["longitude", "latitude"]].to_numpy(dtype=float)
    with single_threaded_workers():
        return commonality_partition(
            X_groups,
            y,
            factory,
            splitter,
            cv_groups=groups_arg,
            n_jobs=n_jobs,
            seed=seed,
            progress=progress,
        )


def shap_attribution(
    frame: pd.DataFrame,
    target: str,
    groups: Sequence[str] = PARTITION_GROUPS,
    *,
    seed: int = 0,
    n_components: int = SSL_COMPONENTS,
    max_samples: int = 2000,
    model_params: Mapping[str, Any] | None = None,
    n_jobs: int = 1,
    progress: bool = True,
):
    """Fit the book's LightGBM on all groups present and explain it with Tree SHAP.

    The model (``Pipeline(PatchReducer, LightGBM)`` with
    :data:`PARTITION_LIGHTGBM`) is fitted on every complete row; SHAP values
    are computed for ``max_samples`` of them (seeded) on the reduced
    features, so SSL appears as ``ssl_pca_00`` … and
    :func:`fungi_ssl.attribution.explain.shap_by_group` sums it into one group.

    ``n_jobs`` sets LightGBM's threads. It defaults to 1: one fit takes a
    couple of seconds, and a multi-threaded LightGBM slows down many times
    over when another process holds one of the two cores (its OpenMP threads
    spin-wait for each other at every tree).

    Returns
    -------
    model : sklearn.pipeline.Pipeline
        The fitted pipeline.
    shap_values : fungi_ssl.attribution.explain.ShapValues
    group_table : pandas.DataFrame
        :func:`fungi_ssl.attribution.explain.shap_by_group` of the SHAP values.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> n = 300
    >>> t = pd.DataFrame({"CGIAR_PET": rng.normal(size=n), "SG_Sand_Content_005cm": rng.normal(size=n)})
    >>> t["y"] = 2 * t["CGIAR_PET"] + rng.normal(0, 0.5, n)
    >>> _, sv, table = shap_attribution(t, "y", max_samples=100, progress=False)
    >>> table.index[0], len(sv.values)
    ('climate', 100)
    """
    from fungi_ssl.attribution.explain import shap_by_group, tree_shap

    present = [g for g in groups if g in available_sets(frame, [g])]
    if not present:
        raise ValueError(f"groups: none of {list(groups)} has columns in the frame")
    data = complete_rows(frame, target, present)
    X = pd.concat([predictor_matrix(data, g) for g in present], axis=1)
    y = data[target].to_numpy(dtype=float)
    params = {**PARTITION_LIGHTGBM, **dict(model_params or {})}
    model = reduced_model("lightgbm", seed, n_components=n_components, n_jobs=n_jobs, **params)()
    with threadpool_limits(limits=n_jobs):
        model.fit(X, y)
        sv = tree_shap(model, X, max_samples=max_samples, seed=seed, progress=progress)
    return model, sv, shap_by_group(sv)
