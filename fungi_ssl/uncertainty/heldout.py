"""Chapter 04's held-out predictions, one row per test prediction, for chapter 07.

:func:`fungi_ssl.validation.comparison.table1` keeps only the scores of each split.
Chapter 07 checks the predictions themselves (their bias, calibration,
residual structure and area of applicability), so :func:`chapter04_heldout`
re-runs one model × predictor set of Table 1 with **exactly chapter 04's
settings** and keeps every test prediction:

* the same rows (complete in every set chapter 04 compares, so a sample
  dropped there is dropped here);
* ``random``: the study's random 70/10/20 splits, seeds ``seed … seed +
  n_seeds − 1`` (:func:`fungi_ssl.validation.models.evaluate_random_splits`), early
  stopping on the validation part;
* ``spatial``: K-fold over square blocks (:func:`fungi_ssl.validation.comparison.spatial_splitter`,
  50 km, 5 folds), early stopping on whole sites carved out of each training
  fold (:func:`fungi_ssl.validation.models.evaluate_cv` with ``val_groups=site_id``);
* the SSL patch reduced to :data:`~fungi_ssl.validation.pipelines.SSL_COMPONENTS`
  principal components inside each training part
  (:class:`~fungi_ssl.validation.pipelines.MemoPatchReducer`), the book's
  hyperparameters (:data:`~fungi_ssl.validation.pipelines.BOOK_MODEL_PARAMS`).

The two protocols are returned in one long table with a ``scheme`` column and
are never pooled (:mod:`fungi_ssl.uncertainty.bias` keeps them apart everywhere). The
per-split scores come back too, in :func:`fungi_ssl.validation.comparison.table1`'s
layout, and the tests check that they equal chapter 04's for the same split.

Chapter 04 has fitted exactly these models already: :func:`store_table1_heldout`
takes the predictions ``table1(..., return_predictions=...)`` kept and writes
them where :func:`cached_heldout` looks (the same key), so after chapter 04 has
run, chapter 07's held-out step reads them instead of fitting the models again.
The tests check that what is stored equals :func:`chapter04_heldout`'s.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from fungi_ssl.core.cache import temporary_path
from fungi_ssl.core.worker_threads import single_threaded_workers
from fungi_ssl.uncertainty.aoa import AreaOfApplicability
from fungi_ssl.uncertainty.errors import heldout_table
from fungi_ssl.validation.comparison import (
    DEFAULT_BLOCK_SIZE_M,
    DEFAULT_SPATIAL_FOLDS,
    _score_table,
    _tidy_scores,
    run_options,
    spatial_splitter,
)
from fungi_ssl.validation.models import MODEL_NAMES, evaluate_cv, evaluate_random_splits
from fungi_ssl.validation.pipelines import (
    BOOK_MODEL_PARAMS,
    SSL_COMPONENTS,
    ReductionMemo,
    available_sets,
    check_set_name,
    complete_rows,
    has_ssl,
    predictor_matrix,
)

__all__ = [
    "HeldOut",
    "cached_conformal",
    "cached_heldout",
    "chapter04_heldout",
    "heldout_aoa",
    "skip_reason",
    "store_table1_heldout",
]


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
    model_params : dict
        The model's parameters (keywords of
        :func:`~fungi_ssl.validation.models.make_model`): the book's unless asked otherwise.
        Later fits on the same rows (:func:`cached_conformal`, :func:`heldout_aoa`) use them.
    """

    table: pd.DataFrame
    scores: pd.DataFrame
    data: pd.DataFrame
    fold: np.ndarray
    predictor_set: str
    model: str
    seconds: dict[str, float] = field(default_factory=dict)
    model_params: dict[str, Any] = field(default_factory=dict)


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
    model_params: Mapping[str, Any] | None = None,
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
        Worker threads: the spatial folds are one task and every random seed
        another, each model single-threaded.
    model_params : mapping, optional
        The model's parameters (default: the book's,
        :data:`~fungi_ssl.validation.pipelines.BOOK_MODEL_PARAMS`; chapter 04 fits
        :func:`~fungi_ssl.validation.pipelines.profile_model_params`).

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
    data, X, y, splitter = _prepare(frame, target, predictor_set, row_sets, block_size_m,
                                    n_splits, seed)
    site_ids = data["site_id"].to_numpy() if "site_id" in data.columns else None
    params = _model_params(model, model_params)
    common = run_options(X, predictor_set, params, seed=seed, memo=ReductionMemo())
    seconds: dict[str, float] = {}

    def run(task: tuple[str, int]) -> tuple[pd.DataFrame, pd.DataFrame]:
        scheme, s = task
        start = time.perf_counter()
        try:
            if scheme == "random":
                # seed s alone draws the same split as seed s of chapter 04's n_seeds run
                scores, preds = evaluate_random_splits(
                    X, y, model, n_seeds=1, seed=s, return_predictions=True, **common,
                )
                return _tidy_scores(scores, "random", seed), preds.rename(columns={"seed": "split"})
            scores, preds = evaluate_cv(
                X, y, model, splitter, seed=seed, val_groups=site_ids, return_predictions=True,
                **common,
            )
            return _tidy_scores(scores, "spatial", seed), preds.rename(columns={"fold": "split"})
        finally:
            seconds[f"{scheme}/{s}"] = time.perf_counter() - start

    # the spatial run (all folds, the longest task) first, then one task per random seed
    tasks = [("spatial", seed)] + [("random", seed + i) for i in range(int(n_seeds))]
    with single_threaded_workers():
        done = Parallel(n_jobs=max(1, int(n_jobs)), backend="threading")(
            delayed(run)(t) for t in tasks
        )
    done = done[1:] + done[:1]  # random seeds first, in order
    scores = _score_table([d[0] for d in done])
    table = _heldout_rows(pd.concat(d[1] for d in done[:-1]), done[-1][1], data)
    return HeldOut(
        table=table,
        scores=scores,
        data=data,
        fold=splitter.fold_labels(),
        predictor_set=predictor_set,
        model=model,
        seconds=seconds,
        model_params=params,
    )


def _model_params(model: str, model_params: Mapping[str, Any] | None) -> dict[str, Any]:
    """``model_params``, or the book's parameters of ``model`` when none are given."""
    return dict(BOOK_MODEL_PARAMS.get(model, {}) if model_params is None else model_params)



def _heldout_rows(random: pd.DataFrame, spatial: pd.DataFrame, data: pd.DataFrame) -> pd.DataFrame:
    """HeldOut.table from raw predictions (``row, split, observed, predicted``) of both schemes."""
    tabs = [
        heldout_table(p, data, scheme, "split").assign(row=p["row"].to_numpy())
        for scheme, p in (("random", random), ("spatial", spatial))
    ]
    table = pd.concat(tabs, ignore_index=True)
    if "site_id" in data.columns:
        table.insert(1, "site_id", data["site_id"].to_numpy()[table["row"].to_numpy()])
    return table


def _prepare(
    frame: pd.DataFrame,
    target: str,
    predictor_set: str,
    row_sets: Sequence[str] | None,
    block_size_m: float,
    n_splits: int,
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray, Any]:
    """Chapter 04's rows, the set's design matrix, the target and the spatial splitter."""
    if row_sets is None:
        row_sets = available_sets(frame)
    row_sets = list(dict.fromkeys([*row_sets, predictor_set]))
    data = complete_rows(frame, target, row_sets)
    X = predictor_matrix(data, predictor_set)
    y = data[target].to_numpy(dtype=float)
    splitter = spatial_splitter(data, block_size_m=block_size_m, n_splits=n_splits, seed=seed)
    return data, X, y, splitter


def _fingerprint(data: pd.DataFrame, X: pd.DataFrame, y: np.ndarray) -> str:
    from fungi_ssl.maps.modelspec import table_fingerprint

    ids = data["sample_id"].astype(str).to_numpy() if "sample_id" in data else np.arange(len(data))
    coords = data[["longitude", "latitude"]].to_numpy(dtype=float)
    return table_fingerprint(np.column_stack([X.to_numpy(dtype=float), coords]), y,
                             (*map(str, X.columns), *map(str, ids)))


def _versions() -> dict[str, str]:
    from fungi_ssl.maps.modelspec import library_versions

    v = library_versions()
    return {k: v[k] for k in sorted(v) if k in ("lightgbm", "xgboost", "scikit-learn", "numpy")}


def cached_heldout(
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
    root: str | Path | None = None,
    model_params: Mapping[str, Any] | None = None,
) -> HeldOut:
    """:func:`chapter04_heldout`, its predictions kept in ``data/cache/heldout/<key>/``.

    The key covers a hash of the rows evaluated (every predictor value, the
    target, the coordinates and the sample ids), every setting and the
    versions of the model libraries, so a changed table or setting never
    reuses old predictions. ``HeldOut.seconds`` is empty on a cache hit.

    Parameters
    ----------
    frame, target, predictor_set, model, n_seeds, seed, block_size_m, n_splits, row_sets, n_jobs
        As :func:`chapter04_heldout`.
    model_params : mapping, optional
        As :func:`chapter04_heldout`; part of the key.
    root : path, optional
        Cache root (default :data:`fungi_ssl.core.config.CACHE_DIR`).

    Returns
    -------
    HeldOut
    """
    data, X, y, splitter = _prepare(frame, target, predictor_set, row_sets, block_size_m,
                                    n_splits, seed)
    params = _model_params(model, model_params)
    d = _heldout_dir(data, X, y, predictor_set, model, n_seeds, seed, block_size_m, n_splits,
                     root, params)
    if (d / "scores.csv").exists() and (d / "table.csv.gz").exists():
        table = pd.read_csv(d / "table.csv.gz", dtype={"sample_id": str, "site_id": str})
        scores = pd.read_csv(d / "scores.csv")
        if "sample_id" in data:
            table["sample_id"] = data["sample_id"].to_numpy()[table["row"].to_numpy()]
        if "site_id" in data and "site_id" in table:
            table["site_id"] = data["site_id"].to_numpy()[table["row"].to_numpy()]
        return HeldOut(table=table, scores=scores, data=data, fold=splitter.fold_labels(),
                       predictor_set=predictor_set, model=model, model_params=params)
    out = chapter04_heldout(frame, target, predictor_set, model, n_seeds=n_seeds, seed=seed,
                            block_size_m=block_size_m, n_splits=n_splits, row_sets=row_sets,
                            n_jobs=n_jobs, model_params=params)
    _write_csv(out.table, d / "table.csv.gz")
    _write_csv(out.scores, d / "scores.csv")
    return out


def _heldout_dir(data: pd.DataFrame, X: pd.DataFrame, y: np.ndarray, predictor_set: str,
                 model: str, n_seeds: int, seed: int, block_size_m: float, n_splits: int,
                 root: str | Path | None, model_params: Mapping[str, Any]) -> Path:
    """The cache entry of one model × set's held-out predictions (what :func:`cached_heldout` reads)."""
    from fungi_ssl.core import cache

    params = {"fingerprint": _fingerprint(data, X, y), "predictor_set": predictor_set,
              "model": model, "n_seeds": int(n_seeds), "seed": int(seed),
              "block_size_m": float(block_size_m), "n_splits": int(n_splits),
              "model_params": dict(model_params), "versions": _versions(),
              "layout": 2}  # 2: scores in table1's columns
    return cache.cache_dir("heldout", params, root=Path(root) if root is not None else None)


def store_table1_heldout(
    frame: pd.DataFrame,
    target: str,
    results: pd.DataFrame,
    predictions: pd.DataFrame,
    *,
    predictor_set: str | None = None,
    models: Sequence[str] | None = None,
    block_size_m: float = DEFAULT_BLOCK_SIZE_M,
    n_splits: int = DEFAULT_SPATIAL_FOLDS,
    root: str | Path | None = None,
) -> dict[str, Path]:
    """Cache the held-out predictions chapter 04's Table 1 kept, where :func:`cached_heldout` reads.

    :func:`fungi_ssl.validation.comparison.table1` fits every model of chapter 07's
    :func:`chapter04_heldout` already. With ``return_predictions`` it keeps
    their test predictions; this writes them, with the runs' scores, into
    the cache entry :func:`cached_heldout` would compute for the same
    frame, target and settings, so that chapter 07 reads them and fits
    nothing. The settings are taken from ``results`` (seed, number of seeds,
    the sets whose complete rows were scored, each model's parameters) and
    checked against what :func:`chapter04_heldout` would run:
    :data:`~fungi_ssl.validation.pipelines.SSL_COMPONENTS` components and spatial folds
    equal to :func:`~fungi_ssl.validation.comparison.spatial_splitter`'s with
    ``block_size_m`` and ``n_splits``. Each model's parameters are part of the
    key: chapter 07 reads the entry by asking for the same ones (a profile's,
    :func:`~fungi_ssl.validation.pipelines.profile_model_params`).

    Parameters
    ----------
    frame : pandas.DataFrame
        The frame passed to ``table1``.
    target : str
        The target passed to ``table1``.
    results, predictions : pandas.DataFrame
        ``table1(frame, target, ..., return_predictions=...)``'s two outputs.
    predictor_set : str, optional
        The set to store (default ``"ssl"`` when its predictions were kept,
        else ``"all"``, as chapter 07 chooses).
    models : sequence of str, optional
        Models to store (default: every model kept for that set).
    block_size_m, n_splits : float, int
        The spatial blocks chapter 07 asks for (chapter 04's: 50 km, 5 folds).
    root : path, optional
        Cache root (default :data:`fungi_ssl.core.config.CACHE_DIR`).

    Returns
    -------
    dict
        Model → cache folder written.

    Raises
    ------
    ValueError
        Predictions not kept for the set or a model, components other than
        chapter 07's, or spatial folds that are not ``spatial_splitter``'s.

    Examples
    --------
    >>> import tempfile
    >>> from fungi_ssl.validation.comparison import table1
    >>> rng = np.random.default_rng(0)
    >>> n = 300
    >>> t = pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)],
    ...                   "longitude": rng.uniform(0, 10, n), "latitude": rng.uniform(40, 50, n),
    ...                   "CGIAR_PET": rng.normal(size=n)})
    >>> t["y"] = t["CGIAR_PET"] + rng.normal(0, 0.5, n)
    >>> res, pred = table1(t, "y", sets=["climate"], models=["ridge"], n_seeds=2, progress=False,
    ...                    return_predictions=True)
    >>> root = tempfile.mkdtemp()
    >>> _ = store_table1_heldout(t, "y", res, pred, predictor_set="climate", root=root)
    >>> h = cached_heldout(t, "y", "climate", "ridge", n_seeds=2, root=root)
    >>> h.seconds, len(h.table)          # read back: nothing fitted
    ({}, 420)
    """
    need = ["seed", "n_seeds", "sets", "model_params", "n_components"]
    missing = [k for k in need if k not in results.attrs]
    if missing:
        raise ValueError(f"results: not table1's output (attrs lack {missing})")
    pred_columns = ["scheme", "set", "model", "split", "row", "observed", "predicted"]
    missing = [c for c in pred_columns if c not in predictions.columns]
    if missing:
        raise ValueError(f"predictions: missing columns {missing}; pass table1's predictions")
    kept_sets = list(dict.fromkeys(predictions["set"]))
    if predictor_set is None:
        predictor_set = "ssl" if "ssl" in kept_sets else "all"
    if predictor_set not in kept_sets:
        raise ValueError(f"predictor_set: no predictions kept for {predictor_set!r}; kept "
                         f"{kept_sets} (table1's return_predictions)")
    mine = predictions[predictions["set"] == predictor_set]
    kept_models = list(dict.fromkeys(mine["model"]))
    models = kept_models if models is None else list(models)
    absent = [m for m in models if m not in kept_models]
    if absent:
        raise ValueError(f"models: no predictions kept for {absent} on {predictor_set!r}")
    seed, n_seeds = int(results.attrs["seed"]), int(results.attrs["n_seeds"])
    data, X, y, splitter = _prepare(frame, target, predictor_set, results.attrs["sets"],
                                    block_size_m, n_splits, seed)
    if len(data) != int(results.attrs.get("n_rows", len(data))):
        raise ValueError(f"frame: {len(data)} complete rows, but table1 scored "
                         f"{results.attrs['n_rows']}; pass the frame table1 was given")
    if has_ssl(X) and int(results.attrs["n_components"]) != SSL_COMPONENTS:
        raise ValueError(f"results: table1 kept {results.attrs['n_components']} components, "
                         f"chapter 07's runs keep {SSL_COMPONENTS}")
    folds = splitter.fold_labels()
    written = {}
    for m in models:
        params = dict(results.attrs["model_params"].get(m, {}))  # part of the key
        p = mine[mine["model"] == m]
        rnd = p[p["scheme"] == "random"].drop(columns=["scheme", "set", "model"])
        spa = p[p["scheme"] == "spatial"].drop(columns=["scheme", "set", "model"])
        seeds = sorted(rnd["split"].unique().tolist())
        if seeds != list(range(seed, seed + n_seeds)):
            raise ValueError(f"predictions: random seeds {seeds} of {m} are not {seed} … "
                             f"{seed + n_seeds - 1}")
        if len(spa) != len(data) or not np.array_equal(folds[spa["row"].to_numpy()],
                                                       spa["split"].to_numpy()):
            raise ValueError(
                f"predictions: the spatial folds of {m} are not spatial_splitter's "
                f"({block_size_m:g} m blocks, {n_splits} folds, seed {seed}); "
                "chapter 07 would refit them")
        if not np.array_equal(y[p["row"].to_numpy()], p["observed"].to_numpy()):
            raise ValueError("predictions: observed values differ from the frame's target")
        scores = results[(results["set"] == predictor_set) & (results["model"] == m)]
        table = _heldout_rows(rnd, spa, data)
        d = _heldout_dir(data, X, y, predictor_set, m, n_seeds, seed, block_size_m, n_splits,
                         root, params)
        _write_csv(table, d / "table.csv.gz")
        _write_csv(scores.reset_index(drop=True), d / "scores.csv")
        written[m] = d
    return written


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    """Write under a temporary name and rename, so a half-written file never counts."""
    tmp = temporary_path(path)
    # gzip level 1: a third of the default's time, the same exact numbers
    df.to_csv(tmp, index=False, float_format="%.17g",
              compression={"method": "gzip", "compresslevel": 1} if path.suffix == ".gz" else None)
    tmp.replace(path)


def cached_conformal(
    held: HeldOut,
    target: str,
    *,
    n_seeds: int = 3,
    calibrations: Sequence[str] = ("matched", "random"),
    seed: int = 0,
    block_size_m: float = DEFAULT_BLOCK_SIZE_M,
    n_splits: int = DEFAULT_SPATIAL_FOLDS,
    confidence: float = 0.9,
    n_jobs: int = 2,
    root: str | Path | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Held-out split-conformal intervals on ``held``'s rows, random and spatial, cached.

    :func:`fungi_ssl.uncertainty.intervals.conformal_holdout` with ``held``'s model and set,
    once per calibration: ``"matched"`` (random calibration rows for random
    test parts, whole 50 km blocks for spatial folds) and ``"random"``
    (random calibration rows for the spatial folds too: the naive practice,
    whose spatial shortfall chapter 07 discusses). Random test parts with
    random calibration are the same under both, so they are run once.

    Parameters
    ----------
    held : HeldOut
        From :func:`chapter04_heldout` or :func:`cached_heldout`.
    target : str
    n_seeds : int
        Random splits (seeds ``seed …``).
    calibrations : sequence of {"matched", "random", "site", "block"}
    seed, block_size_m, n_splits, confidence, n_jobs, progress
        As :func:`fungi_ssl.uncertainty.intervals.conformal_holdout`.
    root : path, optional
        Cache root.

    Returns
    -------
    pandas.DataFrame
        :func:`fungi_ssl.uncertainty.intervals.conformal_holdout` rows of every calibration,
        with ``calibration`` (the kind used) and ``requested`` (the name asked for).
    """
    from fungi_ssl.core import cache
    from fungi_ssl.uncertainty.intervals import conformal_holdout

    X = predictor_matrix(held.data, held.predictor_set)
    y = held.data[target].to_numpy(dtype=float)
    params = {"fingerprint": _fingerprint(held.data, X, y), "predictor_set": held.predictor_set,
              "model": held.model, "n_seeds": int(n_seeds), "seed": int(seed),
              "calibrations": list(calibrations), "block_size_m": float(block_size_m),
              "n_splits": int(n_splits), "confidence": float(confidence),
              "model_params": held.model_params, "versions": _versions()}
    d = cache.cache_dir("conformal", params, root=Path(root) if root is not None else None)
    path = d / "intervals.csv.gz"
    if path.exists():
        return pd.read_csv(path, dtype={"sample_id": str})
    parts = []
    for c in calibrations:
        schemes = ["random", "spatial"]
        if c == "random" and "matched" in calibrations:
            schemes = ["spatial"]  # random/random is the matched run's random part
        iv = conformal_holdout(
            X, y, held.data[["longitude", "latitude"]], schemes=schemes, calibration=c,
            confidence=confidence, n_seeds=n_seeds, block_size_m=block_size_m,
            n_splits=n_splits, sample_id=held.data["sample_id"].astype(str).to_numpy()
            if "sample_id" in held.data else None,
            model=held.model, model_params=held.model_params, seed=seed,
            n_jobs=n_jobs, progress=progress,
        )
        parts.append(iv.assign(requested=c))
    out = pd.concat(parts, ignore_index=True)
    _write_csv(out, path)
    return out


def heldout_aoa(
    held: HeldOut, target: str, *, seed: int = 0, val_size: float = 0.1, n_jobs: int = 2
) -> tuple[AreaOfApplicability, pd.DataFrame]:
    """The area of applicability of ``held``'s model at its samples, with spatial-fold DI.

    The model is fitted on every row (the SSL patch reduced to
    :data:`~fungi_ssl.validation.pipelines.SSL_COMPONENTS` components first, LightGBM
    and XGBoost stopping early on whole sites); its gain importance weights
    the predictors; the threshold comes from each sample's DI to the training
    part of its own spatial fold (``held.fold``). That DI is how unlike its
    training data a sample was when the spatial CV predicted it, so the
    spatial held-out errors can be split by it.

    Parameters
    ----------
    held : HeldOut
    target : str
    seed : int
        Seeds the PCA, the early-stopping hold-out and the model.
    val_size : float
        Share of the sites held out for early stopping.
    n_jobs : int
        Threads.

    Returns
    -------
    aoa : AreaOfApplicability
        Fitted on the model's own predictors.
    samples : pandas.DataFrame
        Per row of ``held.data``: ``row, fold, di, inside``.
    """
    from fungi_ssl.predictors.features import PatchReducer
    from fungi_ssl.uncertainty.aoa import importance_weights
    from fungi_ssl.validation.models import _group_holdout, fit_model, make_model

    X = predictor_matrix(held.data, held.predictor_set)
    y = held.data[target].to_numpy(dtype=float)
    rows = np.arange(len(y))
    groups = held.data["site_id"].to_numpy() if "site_id" in held.data else rows
    val, train = _group_holdout(rows, groups, round(val_size * len(rows)), seed)
    if has_ssl(X):
        Z = PatchReducer(n_components=SSL_COMPONENTS, seed=seed).fit(X.iloc[train]).transform(X)
    else:
        Z = X
    model = make_model(held.model, seed=seed, n_jobs=n_jobs, **held.model_params)
    if held.model in ("lightgbm", "xgboost") and len(val):
        fit_model(model, Z.iloc[train], y[train], Z.iloc[val], y[val])
    else:
        fit_model(model, Z, y)
    weights = importance_weights(model)
    weights.index = list(Z.columns)
    aoa = AreaOfApplicability(n_jobs=n_jobs).fit(Z, folds=held.fold, weights=weights)
    di = aoa.train_di_
    with np.errstate(invalid="ignore"):
        inside = di <= aoa.threshold_
    return aoa, pd.DataFrame({"row": rows, "fold": held.fold, "di": di, "inside": inside})


def skip_reason(data_dir: str | Path | None, n_rows: int | None = None,
                min_rows: int = 50) -> str | None:
    """Chapter 07's one sentence on why it cannot check a data directory, or None.

    Parameters
    ----------
    data_dir : path or None
        The chapter's ``data_dir`` (None or empty: the simulated study).
    n_rows : int, optional
        Samples with richness in the table, once it is read: fewer than
        ``min_rows`` are too few to check.
    min_rows : int

    Examples
    --------
    >>> skip_reason(None) is None
    True
    >>> import tempfile
    >>> skip_reason(tempfile.mkdtemp())[:48]
    'This chapter checks the bias, calibration and in'
    >>> skip_reason(None, n_rows=12)
    'This chapter checks the bias, calibration and intervals of held-out predictions, and the table holds only 12 samples with richness (at least 50 are needed), so it is skipped.'
    """
    head = ("This chapter checks the bias, calibration and intervals of held-out predictions, "
            "and ")
    if n_rows is not None and n_rows < min_rows:
        return (head + f"the table holds only {n_rows} samples with richness (at least "
                f"{min_rows} are needed), so it is skipped.")
    if not data_dir:
        return None
    from fungi_ssl.predictors.tables import table_kind

    if table_kind(data_dir) is not None:
        return None
    return (head + "the data directory holds neither the SPUN table of 1 km covariates nor "
            "TESSERA tiles (a `tessera/` folder) beside its sample table to predict from, so it "
            "is skipped.")
