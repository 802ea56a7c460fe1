"""Chapter 04's predictor comparison: the study's Table 1, random and spatial.

:func:`table1` scores every model × predictor set twice on the same rows:

1. **random**: the study's protocol, random 70/10/20 train/validation/test
   splits over ``n_seeds`` seeds (:func:`fungi_ssl.validation.models.evaluate_random_splits`),
   LightGBM and XGBoost stopping early on the validation part;
2. **spatial**: K-fold over ~50 km spatial blocks
   (:func:`fungi_ssl.validation.models.evaluate_cv` with a :class:`fungi_ssl.validation.cv.BlockKFold`,
   see :func:`spatial_splitter` for why blocks and not sites).

The models are the study's random forest, LightGBM and XGBoost, with ridge
regression as the linear reference, each with the book's hyperparameters
(:data:`fungi_ssl.validation.pipelines.BOOK_MODEL_PARAMS`). SSL patch features
(``ssl_0000`` … ``ssl_1151``) are reduced by PCA inside each training part,
once per split for every model and set
(:class:`fungi_ssl.validation.pipelines.MemoPatchReducer`), and the runs go to two
worker threads (:mod:`fungi_ssl.core.worker_threads`).

Then, in the order the chapter reads:

* :func:`comparison_json` turns the tidy result into chapter 04's JSON;
* :func:`paired_tests` compares ``ssl`` with every other set seed by seed (or
  fold by fold): mean difference, t-interval, Wilcoxon p and the corrected
  resampled t-test p (:func:`fungi_ssl.validation.models.paired_comparison`);
* :func:`table1_wide` and :func:`plot_table1` show random against spatial R²;
* :func:`nearest_training_distances` shows why spatial CV scores lower.

Chapter 05 (variance partitioning and SHAP) is :mod:`fungi_ssl.attribution.groups`.
``benchmarks/bench_table1.py`` measures Table 1's wall time.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, Literal

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from tqdm import tqdm

from fungi_ssl.core.worker_threads import single_threaded_workers
from fungi_ssl.predictors.features import select_predictors
from fungi_ssl.validation.cv import BlockKFold, SpatialKFold, fitting_block_size
from fungi_ssl.validation.models import (
    MODEL_NAMES,
    evaluate_cv,
    evaluate_random_splits,
    paired_comparison,
    summarise,
)
from fungi_ssl.validation.pipelines import (
    BOOK_MODEL_PARAMS,
    COMPARED_SETS,
    SSL_COMPONENTS,
    MemoPatchReducer,
    ReductionMemo,
    check_choices,
    check_set_name,
    complete_rows,
    has_ssl,
    predictor_matrix,
)

__all__ = [
    "COMPARED_SETS",
    "DEFAULT_BLOCK_SIZE_M",
    "DEFAULT_SPATIAL_FOLDS",
    "WILCOXON_SETS",
    "best_model",
    "comparison_json",
    "nearest_training_distances",
    "paired_tests",
    "plot_table1",
    "spatial_cv_note",
    "spatial_splitter",
    "table1",
    "table1_wide",
]

#: Sets that ``ssl`` is tested against in ``comparison_json``'s paired tests.
WILCOXON_SETS = ("climate", "soil", "landcover")
#: Side of the spatial CV blocks (metres).
DEFAULT_BLOCK_SIZE_M = 50_000.0
#: Spatial CV folds.
DEFAULT_SPATIAL_FOLDS = 5

Scheme = Literal["random", "spatial"]


# --------------------------------------------------------------------------
# the spatial CV
# --------------------------------------------------------------------------
def spatial_splitter(
    frame: pd.DataFrame,
    block_size_m: float = DEFAULT_BLOCK_SIZE_M,
    n_splits: int = DEFAULT_SPATIAL_FOLDS,
    seed: int = 0,
) -> BlockKFold:
    """The book's spatial CV: K-fold over square blocks of ~50 km, sites kept whole.

    Why blocks of 50 km rather than the study's 25 m site groups: cores of one
    site share a coordinate, hence one SSL patch and one set of 1 km
    covariates, so site groups are the least a spatial CV must do. But
    neighbouring sites a few kilometres apart still share 1 km covariate
    cells, landscape, sampling campaign and spatially correlated richness;
    with site groups alone those neighbours sit in the training folds and
    the 1 km sets look skilful through leakage (the real SPUN table's
    climate set keeps R² ≈ 0.76 under random CV and drops to ≈ 0.03 with 2°
    blocks). Blocks of 50 km hold whole landscapes and campaigns apart while
    leaving enough blocks (about 800 in the simulated study) for balanced
    folds; 2° blocks, as in the design notes' check of the real table, leave
    only a few hundred and very unequal folds. A distance buffer is not added:
    at 50 km the remaining edge neighbours are a small share of each fold.

    A regional study can be smaller than one block. When the requested blocks
    are fewer than the folds, the splitter takes the largest smaller side that
    fills them (:func:`fungi_ssl.validation.cv.fitting_block_size`: 25, 20, 10, 5, 2 or
    1 km, down to 100 m), or one fold per 100 m block; :func:`spatial_cv_note` says so in one
    sentence. ``requested_block_size_m``, ``requested_n_splits`` and
    ``n_blocks`` on the returned splitter record what was asked and used.

    Parameters
    ----------
    frame : pandas.DataFrame
        With ``longitude`` and ``latitude`` (WGS84 degrees), one row per sample.
    block_size_m : float
        Block side in metres.
    n_splits : int
        Folds.
    seed : int
        Seed of the assignment of blocks to folds.

    Returns
    -------
    fungi_ssl.validation.cv.BlockKFold
        Holding the frame's coordinates, so ``split(X)`` needs nothing else.

    Examples
    --------
    >>> t = pd.DataFrame({"longitude": [0.0, 0.1, 5.0, 5.1], "latitude": [45.0] * 4})
    >>> labels = spatial_splitter(t, n_splits=2).fold_labels()
    >>> bool(labels[0] == labels[1] != labels[2] == labels[3])
    True
    """
    missing = [c for c in ("longitude", "latitude") if c not in frame.columns]
    if missing:
        raise ValueError(
            f"frame: needs columns longitude and latitude for spatial CV; missing {missing}"
        )
    lonlat = frame[["longitude", "latitude"]].to_numpy(dtype=float)
    size, folds, n_blocks = fitting_block_size(lonlat, block_size_m, n_splits)
    splitter = BlockKFold(
        block_size_m=size,
        n_splits=folds,
        seed=seed,
        coords=lonlat,
        coordinates="lonlat",
    )
    splitter.requested_block_size_m = float(block_size_m)
    splitter.requested_n_splits = int(n_splits)
    splitter.n_blocks = n_blocks
    return splitter


def spatial_cv_note(splitter: BlockKFold) -> str | None:
    """One sentence when :func:`spatial_splitter` changed the block side or fold count, else None.

    Examples
    --------
    >>> t = pd.DataFrame({"longitude": np.repeat([-3.70, -3.65, -3.60], 4),
    ...                   "latitude": np.tile([57.00, 57.05], 6)})
    >>> print(spatial_cv_note(spatial_splitter(t, n_splits=2)))
    The samples fill only 1 block of 50 km, fewer than the 2 folds, so this run's spatial CV uses 20 km blocks (4 blocks) in 2 folds.
    """
    requested = getattr(splitter, "requested_block_size_m", splitter.block_size_m)
    folds = getattr(splitter, "requested_n_splits", splitter.n_splits)
    if requested == splitter.block_size_m and folds == splitter.n_splits:
        return None
    n_requested = int(splitter.__class__(requested, coordinates=splitter.coordinates)
                      .block_labels(splitter.coords).max()) + 1
    return (
        f"The samples fill only {n_requested} block{'s' if n_requested != 1 else ''} of "
        f"{requested / 1000:g} km, fewer than the {folds} folds, so this run's spatial CV uses "
        f"{splitter.block_size_m / 1000:g} km blocks ({splitter.n_blocks} blocks) in "
        f"{splitter.n_splits} folds.")


def run_options(
    X: pd.DataFrame,
    predictor_set: str,
    model_params: Mapping[str, Any],
    *,
    seed: int,
    memo: ReductionMemo,
    n_components: int = SSL_COMPONENTS,
) -> dict[str, Any]:
    """Options of one Table 1 run (one set × model), shared by :func:`table1` and
    :func:`fungi_ssl.uncertainty.heldout.chapter04_heldout` so both fit exactly the same models.

    The SSL patch is reduced by a PCA fitted in each training part (memoised
    across models), the model runs on one thread, without a progress bar.
    """
    transform = (
        partial(MemoPatchReducer, n_components=n_components, seed=seed, memo=memo)
        if has_ssl(X)
        else None
    )
    return {"feature_transform": transform, "predictor_set": predictor_set,
            "model_params": dict(model_params), "n_jobs": 1, "progress": False}


def _resolve_splitter(splitter: Any, data: pd.DataFrame, lonlat, seed: int):
    """(splitter, groups) for evaluate_cv; (None, None) when spatial CV is skipped."""
    if splitter is False:
        return None, None
    if splitter is None:
        if lonlat is None:
            raise ValueError(
                "frame: spatial CV needs longitude and latitude columns "
                "(or pass spatial_splitter=False)"
            )
        return spatial_splitter(data, seed=seed), None
    if not (hasattr(splitter, "split") and hasattr(splitter, "get_n_splits")):
        raise ValueError(
            f"spatial_splitter must be a scikit-learn splitter, None or False, got {splitter!r}"
        )
    if isinstance(splitter, SpatialKFold):
        if splitter.coords is not None:
            if len(splitter.coords) != len(data):
                raise ValueError(
                    f"spatial_splitter holds {len(splitter.coords)} coordinates but {len(data)} rows "
                    "remain after dropping incomplete ones; build it without coords"
                )
            return splitter, None
        if lonlat is None:
            raise ValueError("frame: the spatial splitter needs longitude and latitude columns")
        return splitter, lonlat
    return splitter, None


# --------------------------------------------------------------------------
# Table 1
# --------------------------------------------------------------------------
def table1(
    frame: pd.DataFrame,
    target: str,
    sets: Sequence[str] = COMPARED_SETS,
    models: Sequence[str] = MODEL_NAMES,
    n_seeds: int = 3,
    seed: int = 0,
    spatial_splitter: Any = None,
    *,
    n_components: int = SSL_COMPONENTS,
    model_params: Mapping[str, Mapping[str, Any]] | None = None,
    n_jobs: int = 2,
    progress: bool = True,
    return_predictions: bool | Sequence[str] = False,
) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Score every model × predictor set under random splits and spatial CV.

    All sets and models are scored on the same rows (rows with a missing
    target or predictor in any requested set are dropped first, with a
    warning), the same random splits (seeds ``seed … seed + n_seeds − 1``)
    and the same spatial folds, so scores are paired by seed and by fold.

    Parameters
    ----------
    frame : pandas.DataFrame
        The predictor table (``predictor_table(...).frame``): one row per
        sample with ``longitude``, ``latitude``, the target and the predictor
        columns (SPUN covariate names, ``ssl_0000`` … ``ssl_1151``).
    target : str
        Target column (``"log_richness"``).
    sets : sequence of str
        Predictor sets (default ``ssl, climate, soil, landcover, all``). A set
        with no column in ``frame`` raises, so drop ``ssl`` for a table
        without embeddings (see :func:`available_sets`).
    models : sequence of {"rf", "lightgbm", "xgboost", "ridge"}
    n_seeds : int
        Random 70/10/20 splits (the study used 50).
    seed : int
        First split seed; also seeds the models, the PCA and the spatial folds.
    spatial_splitter : splitter, optional
        Default :func:`spatial_splitter` (5-fold, 50 km blocks). A
        :mod:`fungi_ssl.validation.cv` splitter built without coordinates receives the
        frame's longitude/latitude; any other scikit-learn splitter is used
        as is. Pass ``False`` to skip the spatial CV.
    n_components : int
        PCA components kept from the SSL patch (fitted in each training part).
    model_params : mapping, optional
        Per-model overrides on top of
        :data:`fungi_ssl.validation.pipelines.BOOK_MODEL_PARAMS`, e.g.
        ``{"rf": {"n_estimators": 300}}``.
    n_jobs : int
        Worker threads (2: both cores of the book machine). Each set × model
        × scheme run is one task; inside it the model, the PCA and BLAS use
        one thread (:mod:`fungi_ssl.core.worker_threads` says why).
    progress : bool
        One tqdm bar over the runs.
    return_predictions : bool or sequence of str
        Also return the test predictions of the runs: True for every set, a
        sequence of set names for those sets only (chapter 04 keeps the set
        chapter 07 checks, and :func:`fungi_ssl.uncertainty.heldout.store_table1_heldout`
        caches them so that chapter 07 need not fit the same models again).
        Keeping them costs no fit: the scores are computed from them anyway.

    Returns
    -------
    pandas.DataFrame
        Tidy, one row per set × model × seed (``scheme="random"``) and per
        set × model × fold plus a pooled row (``scheme="spatial"``): ``scheme,
        set, model, cv, scope ("seed", "fold", "pooled"), seed, fold,
        n_train, n_val, n_test, r2, rmse, mae, medae, me``. ``attrs`` holds
        ``n_dropped``, ``n_rows``, ``target``, ``spatial`` (the splitter's
        repr), ``memo_hits`` (PCA fits reused), ``task_seconds`` (wall
        seconds of each ``scheme/set/model`` run), ``sets``, ``seed``,
        ``n_seeds``, ``n_components`` and ``model_params`` (the parameters
        each model was made with).
    predictions : pandas.DataFrame, only with ``return_predictions``
        One line per test prediction of the kept sets: ``scheme, set, model,
        split`` (seed or fold), ``row`` (position among the complete rows
        scored, i.e. in ``complete_rows(frame, target, sets)``), ``observed,
        predicted``.

    Raises
    ------
    ValueError
        For an unknown or empty ``sets``/``models``, a set without columns,
        a missing ``target`` or ``n_seeds < 1``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> n = 300
    >>> t = pd.DataFrame({"longitude": rng.uniform(0, 10, n), "latitude": rng.uniform(40, 50, n),
    ...                   "CGIAR_PET": rng.normal(size=n), "SG_Sand_Content_005cm": rng.normal(size=n)})
    >>> t["y"] = t["CGIAR_PET"] + rng.normal(0, 0.5, n)
    >>> res = table1(t, "y", sets=["climate", "soil"], models=["ridge"], n_seeds=2, progress=False)
    >>> res.groupby(["scheme", "scope"]).size().to_dict()
    {('random', 'seed'): 4, ('spatial', 'fold'): 10, ('spatial', 'pooled'): 2}
    >>> res2, pred = table1(t, "y", sets=["climate", "soil"], models=["ridge"], n_seeds=2,
    ...                     progress=False, return_predictions=["climate"])
    >>> pred.groupby(["scheme", "set"]).size().to_dict()   # 2 × 20% of 300; every row once
    {('random', 'climate'): 120, ('spatial', 'climate'): 300}
    >>> bool(res2.equals(res))
    True
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"frame must be a pandas DataFrame, got {type(frame).__name__}")
    if isinstance(sets, str):
        sets = [sets]
    sets = list(sets)
    if not sets:
        raise ValueError("sets is empty; give predictor sets such as ['ssl', 'climate']")
    if len(set(sets)) != len(sets):
        raise ValueError(f"sets: names repeat in {sets}")
    for s in sets:
        check_set_name(s)
        try:
            select_predictors(frame, s)
        except ValueError as err:
            raise ValueError(f"sets: {err}") from None
    models = check_choices(models, MODEL_NAMES, "models")
    if isinstance(return_predictions, str):
        return_predictions = [return_predictions]
    keep = set(sets) if return_predictions is True else set(return_predictions or ())
    if keep - set(sets):
        raise ValueError(
            f"return_predictions: sets {sorted(keep - set(sets))} are not among sets {sets}"
        )
    if int(n_seeds) != n_seeds or n_seeds < 1:
        raise ValueError(f"n_seeds must be a positive integer, got {n_seeds!r}")
    params = {m: dict(BOOK_MODEL_PARAMS.get(m, {})) for m in models}
    for m, extra in (model_params or {}).items():
        check_choices([m], MODEL_NAMES, "model_params")
        params.setdefault(m, {}).update(extra)

    data = complete_rows(frame, target, sets)
    y = data[target].to_numpy(dtype=float)
    has_coords = {"longitude", "latitude"} <= set(data.columns)
    lonlat = data[["longitude", "latitude"]].to_numpy(dtype=float) if has_coords else None
    splitter, groups = _resolve_splitter(spatial_splitter, data, lonlat, seed)
    # spatial CV: early stopping holds out whole sites (the random protocol keeps
    # the study's random 70/10/20)
    site_ids = data["site_id"].to_numpy() if "site_id" in data.columns else None

    memo = ReductionMemo()
    matrices = {s: predictor_matrix(data, s) for s in sets}
    tasks = [
        (s, m, scheme)
        for s in sets
        for m in models
        for scheme in (("random", "spatial") if splitter is not None else ("random",))
    ]
    # slowest first, for an even load on the workers: forests, then SSL sets
    cost = {"rf": 0, "lightgbm": 1, "xgboost": 1, "ridge": 2}
    order = sorted(
        range(len(tasks)),
        key=lambda i: (cost.get(tasks[i][1], 3), not has_ssl(matrices[tasks[i][0]])),
    )

    seconds: dict[str, float] = {}
    kept: dict[tuple[str, str, str], pd.DataFrame] = {}

    def run(set_name: str, model: str, scheme: str) -> pd.DataFrame:
        start = time.perf_counter()
        try:
            return _run(set_name, model, scheme)
        finally:
            seconds[f"{scheme}/{set_name}/{model}"] = time.perf_counter() - start

    def _run(set_name: str, model: str, scheme: str) -> pd.DataFrame:
        X = matrices[set_name]
        common = run_options(X, set_name, params[model], seed=seed, memo=memo,
                             n_components=n_components)
        wanted = set_name in keep
        if scheme == "random":
            res = evaluate_random_splits(X, y, model, n_seeds=int(n_seeds), seed=seed,
                                         return_predictions=wanted, **common)
        else:
            res = evaluate_cv(X, y, model, splitter, groups=groups, seed=seed,
                              val_groups=site_ids, return_predictions=wanted, **common)
        if wanted:
            res, pred = res
            kept[(scheme, set_name, model)] = pred.rename(
                columns={"seed": "split", "fold": "split"}
            )
        return _tidy_scores(res, scheme, seed)

    jobs = (delayed(run)(*tasks[i]) for i in order)
    with single_threaded_workers():
        runner = Parallel(n_jobs=n_jobs, backend="threading", return_as="generator")
        done = list(tqdm(runner(jobs), total=len(tasks), desc="Table 1", disable=not progress))
    parts = [done[order.index(i)] for i in range(len(tasks))]
    out = _score_table(parts)
    out.attrs.update(
        n_dropped=int(data.attrs.get("n_dropped", 0)),
        n_rows=len(data),
        target=target,
        spatial=repr(splitter),
        memo_hits=memo.hits,
        task_seconds=dict(sorted(seconds.items())),
        sets=list(sets),
        seed=int(seed),
        n_seeds=int(n_seeds),
        n_components=int(n_components),
        model_params={m: dict(p) for m, p in params.items()},
    )
    if not return_predictions:
        return out
    pred_columns = ["scheme", "set", "model", "split", "row", "observed", "predicted"]
    predictions = pd.concat(
        [kept[k].assign(scheme=k[0], set=k[1], model=k[2])[pred_columns]
         for k in ((scheme, s, m) for s, m, scheme in tasks) if k in kept],
        ignore_index=True,
    ) if kept else pd.DataFrame(columns=pred_columns)
    return out, predictions


#: Columns of :func:`table1`'s result, in order.
SCORE_COLUMNS = ("scheme", "set", "model", "cv", "scope", "seed", "fold", "n_train", "n_val",
                 "n_test", "r2", "rmse", "mae", "medae", "me")


def _tidy_scores(res: pd.DataFrame, scheme: str, seed: int) -> pd.DataFrame:
    """One run's scores (``evaluate_random_splits`` or ``evaluate_cv``) in table1's layout."""
    if scheme == "random":
        return res.assign(scheme="random", scope="seed", fold=pd.NA)
    return res.assign(scheme="spatial", seed=seed)


def _score_table(parts: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Runs tidied by :func:`_tidy_scores`, stacked with table1's columns and types."""
    out = pd.concat(parts, ignore_index=True)
    out = out[list(SCORE_COLUMNS)]
    out["fold"] = out["fold"].astype("Int64")
    out["seed"] = out["seed"].astype("int64")
    return out


# --------------------------------------------------------------------------
# paired tests, JSON, table and figure
# --------------------------------------------------------------------------
def _scheme_rows(results: pd.DataFrame, scheme: Scheme) -> pd.DataFrame:
    if scheme not in ("random", "spatial"):
        raise ValueError(f"scheme must be 'random' or 'spatial', got {scheme!r}")
    need = {"scheme", "set", "model", "scope", "r2"}
    missing = sorted(need - set(results.columns))
    if missing:
        raise ValueError(f"results: missing columns {missing}; pass the output of table1")
    return results[(results["scheme"] == scheme) & (results["scope"] != "pooled")]


def best_model(results: pd.DataFrame, scheme: Scheme = "random") -> str:
    """The model with the highest R², averaged over every set, under ``scheme``.

    Averaging over sets, rather than taking the best model for ``ssl``, keeps
    the choice neutral between the sets that are then compared.

    Examples
    --------
    >>> r = pd.DataFrame({"scheme": "random", "scope": "seed", "set": ["a", "a", "b", "b"],
    ...                   "model": ["rf", "ridge"] * 2, "r2": [0.5, 0.4, 0.3, 0.35]})
    >>> best_model(r)
    'rf'
    """
    rows = _scheme_rows(results, scheme)
    if rows.empty:
        raise ValueError(f"results: no {scheme!r} rows")
    per = rows.groupby(["model", "set"])["r2"].mean().groupby("model").mean()
    return str(per.idxmax())


def paired_tests(
    results: pd.DataFrame,
    reference: str = "ssl",
    model: str | None = None,
    scheme: Scheme = "random",
    others: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Compare ``reference`` with every other set, paired by seed (or by fold).

    Parameters
    ----------
    results : pandas.DataFrame
        The output of :func:`table1`.
    reference : str
        The set compared against the others (``"ssl"``).
    model : str, optional
        The model whose scores are compared; default :func:`best_model`.
    scheme : {"random", "spatial"}
        Pairs are seeds (random) or folds (spatial).
    others : sequence of str, optional
        Sets to compare with; default every other set in ``results``.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``comparison`` (``"ssl_vs_climate"`` …): ``model, n,
        mean_diff`` (R² of ``reference`` minus the other's), ``ci_low, ci_high``
        (95% t-interval), ``wilcoxon_p`` (two-sided) and ``corrected_t_p``
        (two-sided corrected resampled t-test, Nadeau & Bengio 2003, with
        n_test / n_train taken from the compared rows; missing when the
        results lack ``n_train``/``n_test``), from
        :func:`fungi_ssl.validation.models.paired_comparison`. Random splits overlap, so
        their pairs are not independent: lean on ``corrected_t_p`` there.
        Spatial folds have disjoint test parts but overlapping training
        parts; the same correction with n_test / n_train ≈ 1 / (K − 1) is
        Bouckaert & Frank's (2004) for cross-validation.

    Examples
    --------
    >>> r = pd.DataFrame({"scheme": "random", "scope": "seed", "model": "rf",
    ...                   "set": ["ssl"] * 6 + ["soil"] * 6, "seed": list(range(6)) * 2,
    ...                   "fold": pd.NA,
    ...                   "r2": [.6, .62, .58, .61, .63, .6, .5, .51, .49, .52, .5, .48]})
    >>> t = paired_tests(r)
    >>> t.index.tolist(), round(float(t.loc["ssl_vs_soil", "mean_diff"]), 3)
    (['ssl_vs_soil'], 0.107)
    """
    rows = _scheme_rows(results, scheme)
    present = list(dict.fromkeys(rows["set"]))
    if reference not in present:
        raise ValueError(f"reference: set {reference!r} is not in the results; sets: {present}")
    model = best_model(results, scheme) if model is None else model
    if model not in set(rows["model"]):
        raise ValueError(
            f"model: {model!r} is not in the results; models: {sorted(set(rows['model']))}"
        )
    others = [s for s in present if s != reference] if others is None else list(others)
    unknown = [s for s in others if s not in present]
    if unknown:
        raise ValueError(f"others: sets {unknown} are not in the results; sets: {present}")
    pair_key = "seed" if scheme == "random" else "fold"
    m = rows[rows["model"] == model]
    ref = m[m["set"] == reference].set_index(pair_key)["r2"]
    ratio = _test_train_ratio(m)
    out = {}
    for other in others:
        comp = m[m["set"] == other].set_index(pair_key)["r2"]
        res = paired_comparison(ref, comp, test_train_ratio=ratio)
        out[f"{reference}_vs_{other}"] = {"model": model, **res.to_dict()}
    table = pd.DataFrame.from_dict(out, orient="index")
    table.index.name = "comparison"
    return table


def comparison_json(results: pd.DataFrame, model: str | None = None) -> dict[str, Any]:
    """Chapter 04's results in the book's fixed shape.

    Parameters
    ----------
    results : pandas.DataFrame
        The output of :func:`table1`.
    model : str, optional
        The model whose per-seed (per-fold) R² the paired tests compare;
        default :func:`best_model` under random splits, for both schemes.

    Returns
    -------
    dict
        ``{"random": {SET: {MODEL: {"r2_mean", "r2_sd", "rmse_mean",
        "me_mean"}}}, "spatial": {…}, "wilcoxon_p": {COMPARISON: p},
        "wilcoxon_p_spatial": {…}, "corrected_t_p": {…}}``, each test keyed
        ``ssl_vs_climate``, ``ssl_vs_soil``, ``ssl_vs_landcover``.
        ``spatial`` summarises the folds (not the pooled predictions).
        ``wilcoxon_p`` is the two-sided Wilcoxon signed-rank test of the
        per-seed R² of ``ssl`` against the other set under random splits,
        ``wilcoxon_p_spatial`` the same over the spatial folds, and
        ``corrected_t_p`` the corrected resampled t-test (Nadeau & Bengio
        2003) of the random splits, which allows for their overlap. A p is
        None when either set (or the spatial CV) is missing, e.g. for the real
        SPUN table, which has no SSL embeddings, or when there are fewer
        than two pairs. ``me_mean`` is predicted − observed.

    Examples
    --------
    >>> r = pd.DataFrame({"scheme": "random", "scope": "seed", "model": "rf",
    ...                   "set": ["climate"] * 3, "seed": [0, 1, 2], "fold": pd.NA,
    ...                   "cv": "random", "r2": [.5, .6, .7], "rmse": 1.0, "me": 0.0})
    >>> out = comparison_json(r)
    >>> sorted(out), out["corrected_t_p"]["ssl_vs_climate"] is None
    (['corrected_t_p', 'random', 'spatial', 'wilcoxon_p', 'wilcoxon_p_spatial'], True)
    """
    out: dict[str, Any] = {}
    for scheme in ("random", "spatial"):
        rows = _scheme_rows(results, scheme)
        out[scheme] = summarise(rows.drop(columns=["cv"], errors="ignore")) if len(rows) else {}
    if model is None and len(_scheme_rows(results, "random")):
        model = best_model(results, "random")
    tests = {
        "wilcoxon_p": ("random", "wilcoxon_p"),
        "wilcoxon_p_spatial": ("spatial", "wilcoxon_p"),
        "corrected_t_p": ("random", "corrected_t_p"),
    }
    for key, (scheme, column) in tests.items():
        values: dict[str, float | None] = {f"ssl_vs_{s}": None for s in WILCOXON_SETS}
        rows = _scheme_rows(results, scheme)
        sets = set(rows["set"])
        others = [s for s in WILCOXON_SETS if s in sets]
        pairs = rows[rows["model"] == model].groupby("set").size()  # seeds or folds per set
        if "ssl" in sets and others and len(pairs) and pairs.min() >= 2:
            table = paired_tests(results, "ssl", model=model, scheme=scheme, others=others)
            for name, p in table[column].items():
                values[str(name)] = None if p is None or pd.isna(p) else float(p)
        out[key] = values
    return out


def _test_train_ratio(rows: pd.DataFrame) -> float | None:
    """Mean n_test / mean n_train of table1 rows, None when the columns are absent."""
    if not {"n_train", "n_test"} <= set(rows.columns):
        return None
    n_train = pd.to_numeric(rows["n_train"], errors="coerce").astype(float).mean()
    n_test = pd.to_numeric(rows["n_test"], errors="coerce").astype(float).mean()
    if not (np.isfinite(n_train) and np.isfinite(n_test)) or n_train <= 0:
        return None
    return float(n_test / n_train)


def table1_wide(results: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """Table 1 for reading: R² mean ± SD per set (rows) and scheme × model (columns).

    Examples
    --------
    >>> r = pd.DataFrame({"scheme": ["random", "random", "spatial"], "scope": ["seed", "seed", "fold"],
    ...                   "set": "soil", "model": "rf", "r2": [0.5, 0.7, 0.2]})
    >>> table1_wide(r).iloc[0].tolist()
    ['0.60 ± 0.14', '0.20']
    """
    rows = results[results["scope"] != "pooled"]
    set_order = list(dict.fromkeys(rows["set"]))
    cells = {}
    for (scheme, model, set_name), g in rows.groupby(["scheme", "model", "set"], sort=False):
        mean = g["r2"].mean()
        text = f"{mean:.{digits}f}"
        if len(g) > 1:
            text += f" ± {g['r2'].std(ddof=1):.{digits}f}"
        cells.setdefault((scheme, model), {})[set_name] = text
    table = pd.DataFrame(cells).reindex(set_order)
    model_order = list(dict.fromkeys(rows["model"]))
    cols = [(s, m) for s in ("random", "spatial") for m in model_order if (s, m) in table.columns]
    table = table[cols]
    table.columns = pd.MultiIndex.from_tuples(cols, names=["CV", "model"])
    table.index.name = "predictor set"
    return table


def plot_table1(results: pd.DataFrame, ax: Any = None) -> Any:
    """R² of every set and model: random splits (filled) joined to spatial CV (open).

    One row per predictor set, one colour per model; the line from the filled
    to the open marker is the R² lost when test samples come from other
    places. Error bars are ±1 SD over seeds (random) and folds (spatial).

    Parameters
    ----------
    results : pandas.DataFrame
        The output of :func:`table1`.
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> r = pd.DataFrame({"scheme": ["random", "spatial"], "scope": ["seed", "fold"],
    ...                   "set": "soil", "model": "rf", "r2": [0.5, 0.2]})
    >>> plot_table1(r).get_xlabel()
    'test R² (log richness)'
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    rows = results[results["scope"] != "pooled"]
    set_order = list(dict.fromkeys(rows["set"]))
    model_order = list(dict.fromkeys(rows["model"]))
    if ax is None:
        _, ax = plt.subplots(figsize=(7.0, 1.2 + 0.75 * len(set_order)), layout="constrained")
    stats = rows.groupby(["scheme", "set", "model"])["r2"].agg(["mean", "std"])
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    offsets = np.linspace(-0.25, 0.25, len(model_order)) if len(model_order) > 1 else [0.0]
    for mi, model in enumerate(model_order):
        colour = colours[mi % len(colours)]
        for si, set_name in enumerate(set_order):
            yy = len(set_order) - 1 - si + offsets[mi]
            pts = {}
            for scheme in ("random", "spatial"):
                if (scheme, set_name, model) in stats.index:
                    mean, sd = stats.loc[(scheme, set_name, model)]
                    pts[scheme] = mean
                    ax.errorbar(
                        mean,
                        yy,
                        xerr=0 if not np.isfinite(sd) else sd,
                        fmt="o",
                        color=colour,
                        mfc=colour if scheme == "random" else "white",
                        ms=6,
                        capsize=0,
                        lw=1,
                        zorder=3,
                    )
            if len(pts) == 2:
                ax.plot([pts["random"], pts["spatial"]], [yy, yy], color=colour, lw=1, alpha=0.6)
    ax.set_yticks(range(len(set_order)), list(reversed(set_order)))
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("test R² (log richness)")
    handles = [
        Line2D([], [], color=colours[i % len(colours)], marker="o", lw=0, label=m)
        for i, m in enumerate(model_order)
    ] + [
        Line2D([], [], color="grey", marker="o", lw=0, label="random 70/10/20"),
        Line2D([], [], color="grey", marker="o", mfc="white", lw=0, label="spatial blocks"),
    ]
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.12 - 0.06 * (len(set_order) < 4)),
        ncol=len(handles),
        fontsize=8,
        frameon=False,
    )
    ax.set_title("Table 1: R² by predictor set and model, random against spatial CV")
    return ax


# --------------------------------------------------------------------------
# why spatial CV scores lower
# --------------------------------------------------------------------------
def nearest_training_distances(
    frame: pd.DataFrame,
    n_seeds: int = 1,
    seed: int = 0,
    splitter: Any = None,
) -> pd.DataFrame:
    """Distance from every test sample to its nearest training sample, random against spatial.

    Explains why spatial CV scores lower: under random 70/10/20 splits most
    test cores have a core of the same site (same coordinate, so the same
    SSL patch and covariates) in the training part, at 0 m. Distances are
    geodesic (:func:`fungi_ssl.data.coordinates.nearest_distance_m`), so they mean
    the same on every continent.

    Parameters
    ----------
    frame : pandas.DataFrame
        With ``longitude`` and ``latitude`` (WGS84 degrees).
    n_seeds, seed : int
        Random splits measured (the training part is the 70%; validation
        samples are not counted as training).
    splitter : splitter, optional
        The spatial CV; default :func:`spatial_splitter` of ``frame``. A
        :mod:`fungi_ssl.validation.cv` splitter without coordinates gets the frame's.

    Returns
    -------
    pandas.DataFrame
        ``scheme`` ("random" / "spatial"), ``split`` (seed or fold) and
        ``distance_m`` per test sample.

    Examples
    --------
    >>> t = pd.DataFrame({"longitude": np.repeat(np.linspace(0, 9, 40), 3),
    ...                   "latitude": 45.0})
    >>> d = nearest_training_distances(t)
    >>> med = d.groupby("scheme")["distance_m"].median()
    >>> float(med["random"]), bool(med["spatial"] > 10_000)   # sites ~18 km apart
    (0.0, True)
    """
    from fungi_ssl.data.coordinates import nearest_distance_m
    from fungi_ssl.validation.cv import RandomTrainValTest

    missing = [c for c in ("longitude", "latitude") if c not in frame.columns]
    if missing:
        raise ValueError(f"frame: needs columns longitude and latitude; missing {missing}")
    lon = frame["longitude"].to_numpy(dtype=float)
    lat = frame["latitude"].to_numpy(dtype=float)
    splitter = spatial_splitter(frame, seed=seed) if splitter is None else splitter
    parts = []
    random_splits = RandomTrainValTest(n_seeds, seed).split_train_val_test(np.zeros(len(lon)))
    for s, (train, _, test) in zip(range(seed, seed + n_seeds), random_splits, strict=True):
        dist = nearest_distance_m(lon[test], lat[test], lon[train], lat[train])
        parts.append(pd.DataFrame({"scheme": "random", "split": s, "distance_m": dist}))
    groups = None
    if isinstance(splitter, SpatialKFold) and splitter.coords is None:
        groups = np.column_stack([lon, lat])
    for k, (train, test) in enumerate(splitter.split(np.zeros((len(lon), 1)), groups=groups)):
        dist = nearest_distance_m(lon[test], lat[test], lon[train], lat[train])
        parts.append(pd.DataFrame({"scheme": "spatial", "split": k, "distance_m": dist}))
    return pd.concat(parts, ignore_index=True)
