"""Chapter 04's predictor comparison: the study's Table 1, random and spatial.

:func:`table1` scores every model × predictor set twice on the same rows:

1. **random**: the study's protocol, random 70/10/20 train/validation/test
   splits over ``n_seeds`` seeds (:func:`fungi_ssl.models.evaluate_random_splits`),
   LightGBM stopping early on the validation part;
2. **spatial**: K-fold over ~50 km spatial blocks
   (:func:`fungi_ssl.models.evaluate_cv` with a :class:`fungi_ssl.cv.BlockKFold`,
   see :func:`spatial_splitter` for why blocks and not sites).

SSL patch features (``ssl_0000`` … ``ssl_1151``) are reduced inside each
training part by :class:`fungi_ssl.features.PatchReducer` (PCA), so no test
sample shapes the projection. Because the PCA depends only on the training
rows, :class:`MemoPatchReducer` fits it once per split and reuses it for every
model and for both the ``ssl`` and ``all`` sets: same numbers, a fraction of
the time.

:func:`comparison_json` turns the tidy result into chapter 04's JSON,
:func:`paired_tests` compares ``ssl`` with every other set seed by seed,
:func:`plot_table1` draws random against spatial R² for every set and model,
and :func:`nearest_training_distances` shows why spatial CV scores lower.

Chapter 05 uses the same pipelines: :func:`partition_groups` runs the
commonality analysis of :mod:`fungi_ssl.partition` over the predictor groups
(site-group folds by default, see :func:`partition_splitter`), and
:func:`shap_attribution` fits one LightGBM on all groups and explains it with
Tree SHAP (:mod:`fungi_ssl.explain`).

Book hyperparameters (:data:`BOOK_MODEL_PARAMS`) are the defaults of
:func:`fungi_ssl.models.make_model` except that the random forest grows 100
trees instead of 200, which keeps Table 1 inside the book's time budget; see
``benchmarks/bench_table1.py`` for the measured wall times.
"""

from __future__ import annotations

import hashlib
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, Literal

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from fungi_ssl.cv import BlockKFold, SiteGroupKFold, SpatialKFold
from fungi_ssl.features import (
    EMBEDDING_DIM,
    PREDICTOR_GROUPS,
    PatchReducer,
    parse_predictor_set,
    select_predictors,
)
from fungi_ssl.models import (
    MODEL_NAMES,
    evaluate_cv,
    evaluate_random_splits,
    make_model,
    paired_comparison,
    summarise,
)

__all__ = [
    "BOOK_MODEL_PARAMS",
    "COMPARED_SETS",
    "DEFAULT_BLOCK_SIZE_M",
    "PARTITION_GROUPS",
    "PARTITION_LIGHTGBM",
    "SSL_COMPONENTS",
    "MemoPatchReducer",
    "ReductionMemo",
    "available_sets",
    "best_model",
    "comparison_json",
    "nearest_training_distances",
    "paired_tests",
    "partition_groups",
    "partition_splitter",
    "plot_table1",
    "predictor_matrix",
    "reduced_model",
    "shap_attribution",
    "spatial_splitter",
    "table1",
    "table1_wide",
]

#: The predictor sets of Table 1, in the order the book shows them.
COMPARED_SETS = ("ssl", "climate", "soil", "landcover", "all")
#: Sets that ``ssl`` is tested against in ``comparison_json``'s ``wilcoxon_p``.
WILCOXON_SETS = ("climate", "soil", "landcover")
#: Side of the spatial CV blocks (metres).
DEFAULT_BLOCK_SIZE_M = 50_000.0
#: Spatial CV folds.
DEFAULT_SPATIAL_FOLDS = 5
#: PCA components kept from the 1,152 SSL patch features.
SSL_COMPONENTS = 32
#: Overrides of :func:`fungi_ssl.models.make_model`'s defaults used by the book.
BOOK_MODEL_PARAMS: dict[str, dict[str, Any]] = {
    "rf": {"n_estimators": 100},
    "lightgbm": {},
    "ridge": {},
}

Scheme = Literal["random", "spatial"]


# --------------------------------------------------------------------------
# in-fold SSL reduction, fitted once per training part
# --------------------------------------------------------------------------
class ReductionMemo:
    """A small store of fitted SSL projections, shared by :class:`MemoPatchReducer`.

    Keys identify the training rows (their index labels and a sample of their
    SSL values) and the reducer's parameters, so a projection is reused only
    for the same rows of the same table. Keep one memo per analysis of one
    table; it holds at most ``maxsize`` projections (least recently used
    dropped first).

    Copies (``copy.deepcopy``, as :func:`sklearn.base.clone` makes of
    parameters) return the memo itself, so cloned reducers still share it.

    Parameters
    ----------
    maxsize : int
        Projections kept.

    Examples
    --------
    >>> memo = ReductionMemo()
    >>> len(memo), memo.hits, memo.misses
    (0, 0, 0)
    """

    def __init__(self, maxsize: int = 256) -> None:
        if int(maxsize) < 1:
            raise ValueError(f"maxsize must be a positive integer, got {maxsize!r}")
        self.maxsize = int(maxsize)
        self._store: OrderedDict[tuple, tuple[Any, list[str]]] = OrderedDict()
        self._lock = threading.Lock()
        self._fitting: dict[tuple, threading.Lock] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def __deepcopy__(self, memo: dict) -> ReductionMemo:
        return self

    def __copy__(self) -> ReductionMemo:
        return self

    def get_or_fit(self, key: tuple, fit: Any) -> tuple[Any, list[str]]:
        """The stored ``(reducer_, ssl_names_out_)`` for ``key``, fitting it with ``fit()`` once.

        Thread-safe: a second thread asking for a key being fitted waits for
        that fit instead of repeating it.
        """
        with self._lock:
            found = self._store.get(key)
            if found is not None:
                self.hits += 1
                self._store.move_to_end(key)
                return found
            key_lock = self._fitting.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                found = self._store.get(key)
                if found is not None:
                    self.hits += 1
                    return found
            value = fit()
            with self._lock:
                self.misses += 1
                self._store[key] = value
                self._store.move_to_end(key)
                while len(self._store) > self.maxsize:
                    self._store.popitem(last=False)
                self._fitting.pop(key, None)
            return value


def _rows_fingerprint(frame: pd.DataFrame, columns: list[str]) -> str:
    """Hash of the row labels and of every 50th row's values (first and last included)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(pd.util.hash_array(np.asarray(frame.index)).tobytes())
    n = len(frame)
    rows = np.unique(np.r_[np.arange(0, n, 50), n - 1]) if n else np.arange(0)
    sample = frame.iloc[rows][columns].to_numpy(dtype=np.float64)
    h.update(np.ascontiguousarray(sample).tobytes())
    h.update(repr((n, tuple(columns))).encode())
    return h.hexdigest()


class MemoPatchReducer(PatchReducer):
    """A :class:`~fungi_ssl.features.PatchReducer` that reuses fits for identical training rows.

    Table 1 fits the SSL projection on each split's training part once per
    model and per set (``ssl`` and ``all``); all of those fits see the same
    rows and give the same projection. With a shared :class:`ReductionMemo`
    the first fit is stored and the others reuse it. Without a memo it is a
    plain ``PatchReducer``.

    Parameters
    ----------
    n_components, method, pixels, dim, seed
        As in :class:`~fungi_ssl.features.PatchReducer`.
    memo : ReductionMemo, optional
        The shared store.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = pd.DataFrame(rng.normal(size=(60, 1152)), columns=[f"ssl_{i:04d}" for i in range(1152)])
    >>> memo = ReductionMemo()
    >>> a = MemoPatchReducer(4, memo=memo).fit_transform(X)
    >>> b = MemoPatchReducer(4, memo=memo).fit_transform(X.assign(CGIAR_PET=1.0))
    >>> memo.hits, bool(np.allclose(a, b[a.columns]))
    (1, True)
    """

    def __init__(
        self,
        n_components: int = SSL_COMPONENTS,
        method: Literal["pca", "umap", "none"] = "pca",
        pixels: Literal["patch", "centre", "mean"] = "patch",
        dim: int = EMBEDDING_DIM,
        seed: int = 0,
        memo: ReductionMemo | None = None,
    ) -> None:
        super().__init__(
            n_components=n_components, method=method, pixels=pixels, dim=dim, seed=seed
        )
        self.memo = memo

    def fit(self, X, y=None) -> MemoPatchReducer:
        """Fit the projection on the rows of ``X``, or reuse the stored one."""
        self._check_params()
        frame = self._as_frame(X)
        ssl = self._ssl_columns(frame)
        if self.memo is None or not ssl or self.method == "none":
            return super().fit(frame, y)
        key = (
            self.method,
            self.pixels,
            int(self.n_components),
            int(self.dim),
            int(self.seed),
            _rows_fingerprint(frame, ssl),
        )

        def fit_projection() -> tuple[Any, list[str]]:
            plain = PatchReducer(self.n_components, self.method, self.pixels, self.dim, self.seed)
            plain.fit(frame[ssl], y)
            return plain.reducer_, list(plain.ssl_names_out_)

        reducer, names = self.memo.get_or_fit(key, fit_projection)
        self.reducer_, self.ssl_names_out_ = reducer, list(names)
        # what PatchReducer.fit records about the input, for the whole of X
        self.feature_names_in_ = np.asarray([str(c) for c in frame.columns], dtype=object)
        self.n_features_in_ = frame.shape[1]
        self.ssl_columns_ = ssl
        self.other_columns_ = [c for c in self.feature_names_in_ if c not in set(ssl)]
        return self


def reduced_model(
    model_name: str,
    seed: int = 0,
    *,
    n_components: int = SSL_COMPONENTS,
    memo: ReductionMemo | None = None,
    n_jobs: int = 2,
    **params: Any,
):
    """A factory of ``Pipeline(MemoPatchReducer, model)`` for analyses that take one.

    For :func:`fungi_ssl.partition.commonality_partition` and for SHAP fits:
    the SSL patch is reduced by PCA inside each fit, every other column is
    passed through, then the book's model (with :data:`BOOK_MODEL_PARAMS`
    and ``params`` on top) is fitted.

    Parameters
    ----------
    model_name : {"rf", "lightgbm", "ridge"}
    seed : int
        Seed of the PCA and the model.
    n_components : int
        PCA components of the SSL patch.
    memo : ReductionMemo, optional
        Share PCA fits between pipelines trained on the same rows.
    n_jobs : int
        Model threads.
    **params
        Model overrides, e.g. ``n_estimators=300``.

    Returns
    -------
    callable
        Each call returns a fresh, unfitted pipeline.

    Examples
    --------
    >>> make = reduced_model("ridge")
    >>> [name for name, _ in make().steps]
    ['memopatchreducer', 'pipeline']
    """
    from sklearn.pipeline import make_pipeline

    _check_names([model_name], MODEL_NAMES, "model_name")

    def factory():
        return make_pipeline(
            MemoPatchReducer(n_components=n_components, seed=seed, memo=memo),
            make_model(
                model_name,
                seed=seed,
                n_jobs=n_jobs,
                **{**BOOK_MODEL_PARAMS.get(model_name, {}), **params},
            ),
        )

    return factory


# --------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------
def _check_names(values: Sequence[str], allowed: Sequence[str], parameter: str) -> list[str]:
    if isinstance(values, str):
        values = [values]
    values = list(values)
    if not values:
        raise ValueError(f"{parameter} is empty; choose from {list(allowed)}")
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ValueError(f"{parameter}: unknown {unknown}; choose from {list(allowed)}")
    if len(set(values)) != len(values):
        raise ValueError(f"{parameter}: names repeat in {values}")
    return values


def _check_set_name(name: str) -> None:
    """Raise a ``sets:`` error for a name that is no predictor set."""
    try:
        parse_predictor_set(name)
    except ValueError as err:
        raise ValueError(f"sets: {err}") from None


def available_sets(frame: pd.DataFrame, sets: Sequence[str] = COMPARED_SETS) -> list[str]:
    """The sets of ``sets`` that have columns in ``frame`` (``ssl`` absent without embeddings).

    Parameters
    ----------
    frame : pandas.DataFrame
        The predictor table.
    sets : sequence of str
        Predictor-set names (see :func:`fungi_ssl.features.parse_predictor_set`).

    Returns
    -------
    list of str
        The sets, in order, that select at least one column of ``frame``;
        an alias such as ``all`` is kept when any of its groups is present.

    Raises
    ------
    ValueError
        For a name that is no predictor set.

    Examples
    --------
    >>> t = pd.DataFrame(columns=["CGIAR_PET", "SG_Sand_Content_005cm"])
    >>> available_sets(t)
    ['climate', 'soil', 'all']
    """
    out = []
    for s in sets:
        _check_set_name(s)
        try:
            select_predictors(frame, s)
        except ValueError:
            continue
        out.append(s)
    return out


def predictor_matrix(frame: pd.DataFrame, predictor_set: str) -> pd.DataFrame:
    """The numeric predictor columns of one set, categorical columns one-hot encoded.

    Categorical covariates (the real SPUN table's ``Resolve_Biome`` code) get
    one 0/1 column per level, named ``<column>_<level>`` so that the
    column keeps its group prefix.

    Parameters
    ----------
    frame : pandas.DataFrame
        The predictor table.
    predictor_set : str
        A set name (``"ssl"``, ``"climate"``, ``"all"``, ``"ssl+soil"`` …).

    Returns
    -------
    pandas.DataFrame
        Float columns, same index as ``frame``.

    Examples
    --------
    >>> t = pd.DataFrame({"CGIAR_PET": [1.0, 2.0],
    ...                   "Resolve_Biome": pd.Categorical([4, 12])})
    >>> list(predictor_matrix(t, "all").columns)
    ['CGIAR_PET', 'Resolve_Biome_4', 'Resolve_Biome_12']
    """
    columns = select_predictors(frame, predictor_set).columns
    block = frame[columns]
    categorical = [
        c
        for c in columns
        if isinstance(block[c].dtype, pd.CategoricalDtype)
        or pd.api.types.is_object_dtype(block[c])
        or pd.api.types.is_string_dtype(block[c])
    ]
    if not categorical:
        return block.astype("float64")
    parts = []
    for c in columns:
        if c in categorical:
            levels = block[c].astype("category")
            dummies = pd.get_dummies(levels, prefix=c, prefix_sep="_", dtype="float64")
            dummies.loc[levels.isna()] = np.nan
            parts.append(dummies)
        else:
            parts.append(block[[c]].astype("float64"))
    return pd.concat(parts, axis=1)


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
    fungi_ssl.cv.BlockKFold
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
    return BlockKFold(
        block_size_m=block_size_m,
        n_splits=n_splits,
        seed=seed,
        coords=frame[["longitude", "latitude"]].to_numpy(dtype=float),
        coordinates="lonlat",
    )


def _complete_rows(frame: pd.DataFrame, target: str, sets: Sequence[str]) -> pd.DataFrame:
    if target not in frame.columns:
        raise ValueError(f"target: column {target!r} is not in the frame")
    y = pd.to_numeric(frame[target], errors="coerce")
    ok = np.isfinite(y.to_numpy(dtype=float))
    for s in sets:
        X = predictor_matrix(frame, s)
        vals = X.to_numpy(dtype=float)
        ok &= np.isfinite(vals).all(axis=1)
    n_drop = int((~ok).sum())
    if n_drop:
        warnings.warn(
            f"table1: dropped {n_drop} of {len(frame)} rows with a missing target or "
            f"predictor in sets {list(sets)}, so every set is scored on the same rows",
            stacklevel=3,
        )
    out = frame.loc[ok].reset_index(drop=True)
    out.attrs["n_dropped"] = n_drop
    return out


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
) -> pd.DataFrame:
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
    models : sequence of {"rf", "lightgbm", "ridge"}
    n_seeds : int
        Random 70/10/20 splits (the study used 50).
    seed : int
        First split seed; also seeds the models, the PCA and the spatial folds.
    spatial_splitter : splitter, optional
        Default :func:`spatial_splitter` (5-fold, 50 km blocks). A
        :mod:`fungi_ssl.cv` splitter built without coordinates receives the
        frame's longitude/latitude; any other scikit-learn splitter is used
        as is. Pass ``False`` to skip the spatial CV.
    n_components : int
        PCA components kept from the SSL patch (fitted in each training part).
    model_params : mapping, optional
        Per-model overrides on top of :data:`BOOK_MODEL_PARAMS`, e.g.
        ``{"rf": {"n_estimators": 300}}``.
    n_jobs : int
        Worker threads (2: both cores of the book machine). Each set × model
        × scheme run is one task; inside it the model, the PCA and BLAS use
        one thread. Parallel runs, rather than multi-threaded models, keep
        both cores busy without the OpenMP spin-waits that slow LightGBM
        down many times over when another process shares the cores.
    progress : bool
        One tqdm bar over the runs.

    Returns
    -------
    pandas.DataFrame
        Tidy, one row per set × model × seed (``scheme="random"``) and per
        set × model × fold plus a pooled row (``scheme="spatial"``): ``scheme,
        set, model, cv, scope ("seed", "fold", "pooled"), seed, fold,
        n_train, n_val, n_test, r2, rmse, mae, medae, me``. ``attrs`` holds
        ``n_dropped``, ``n_rows``, ``target``, ``spatial`` (the splitter's
        repr), ``memo_hits`` (PCA fits reused) and ``task_seconds`` (wall
        seconds of each ``scheme/set/model`` run).

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
        _check_set_name(s)
        try:
            select_predictors(frame, s)
        except ValueError as err:
            raise ValueError(f"sets: {err}") from None
    models = _check_names(models, MODEL_NAMES, "models")
    if int(n_seeds) != n_seeds or n_seeds < 1:
        raise ValueError(f"n_seeds must be a positive integer, got {n_seeds!r}")
    params = {m: dict(BOOK_MODEL_PARAMS.get(m, {})) for m in models}
    for m, extra in (model_params or {}).items():
        _check_names([m], MODEL_NAMES, "model_params")
        params.setdefault(m, {}).update(extra)

    data = _complete_rows(frame, target, sets)
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
    cost = {"rf": 0, "lightgbm": 1, "ridge": 2}
    order = sorted(
        range(len(tasks)),
        key=lambda i: (cost.get(tasks[i][1], 3), not _has_ssl(matrices[tasks[i][0]])),
    )

    seconds: dict[str, float] = {}

    def run(set_name: str, model: str, scheme: str) -> pd.DataFrame:
        start = time.perf_counter()
        try:
            return _run(set_name, model, scheme)
        finally:
            seconds[f"{scheme}/{set_name}/{model}"] = time.perf_counter() - start

    def _run(set_name: str, model: str, scheme: str) -> pd.DataFrame:
        X = matrices[set_name]
        transform = (
            partial(MemoPatchReducer, n_components=n_components, seed=seed, memo=memo)
            if _has_ssl(X)
            else None
        )
        common: dict[str, Any] = {
            "feature_transform": transform,
            "predictor_set": set_name,
            "model_params": params[model],
            "n_jobs": 1,
            "progress": False,
        }
        if scheme == "random":
            res = evaluate_random_splits(X, y, model, n_seeds=int(n_seeds), seed=seed, **common)
            return res.assign(scheme="random", scope="seed", fold=pd.NA)
        res = evaluate_cv(X, y, model, splitter, groups=groups, seed=seed,
                          val_groups=site_ids, **common)
        return res.assign(scheme="spatial", seed=seed)

    jobs = (delayed(run)(*tasks[i]) for i in order)
    with threadpool_limits(limits=1), _thread_warnings():
        runner = Parallel(n_jobs=n_jobs, backend="threading", return_as="generator")
        done = list(tqdm(runner(jobs), total=len(tasks), desc="Table 1", disable=not progress))
    parts = [done[order.index(i)] for i in range(len(tasks))]
    out = pd.concat(parts, ignore_index=True)
    columns = ["scheme", "set", "model", "cv", "scope", "seed", "fold"]
    columns += ["n_train", "n_val", "n_test", "r2", "rmse", "mae", "medae", "me"]
    out = out[columns]
    out["fold"] = out["fold"].astype("Int64")
    out["seed"] = out["seed"].astype("int64")
    out.attrs.update(
        n_dropped=int(data.attrs.get("n_dropped", 0)),
        n_rows=len(data),
        target=target,
        spatial=repr(splitter),
        memo_hits=memo.hits,
        task_seconds=dict(sorted(seconds.items())),
    )
    return out


#: scikit-learn's complaint when two threads race on ``warnings.filters``.
_SKLEARN_RACE = "`sklearn.utils.parallel.delayed` should be used with"


@contextmanager
def _thread_warnings() -> Iterator[None]:
    """Collect the warnings of worker threads and re-issue them once each, afterwards.

    scikit-learn's forests run their trees through ``sklearn.utils.parallel``,
    whose task wrapper clears ``warnings.filters`` and rebuilds it for every
    task. With two forests on two threads, one thread can find the filter list
    empty in the middle of the other's rebuild, and scikit-learn then warns
    that its ``delayed`` was used without its ``Parallel`` (it was not). That
    race says nothing about the analysis, so its warning is dropped; every
    other warning is re-issued, once per message, from the calling thread.
    """
    with warnings.catch_warnings(record=True) as caught:
        yield
    seen = set()
    for w in caught:
        key = (w.category, str(w.message))
        if _SKLEARN_RACE in str(w.message) or key in seen:
            continue
        seen.add(key)
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _has_ssl(X: pd.DataFrame) -> bool:
    return any(str(c).startswith(PREDICTOR_GROUPS["ssl"]) for c in X.columns)


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
        if getattr(splitter, "_xy", None) is not None:
            if len(splitter._xy) != len(data):
                raise ValueError(
                    f"spatial_splitter holds {len(splitter._xy)} coordinates but {len(data)} rows "
                    "remain after dropping incomplete ones; build it without coords"
                )
            return splitter, None
        if lonlat is None:
            raise ValueError("frame: the spatial splitter needs longitude and latitude columns")
        return splitter, lonlat
    return splitter, None


def nearest_training_distances(
    frame: pd.DataFrame,
    n_seeds: int = 1,
    seed: int = 0,
    splitter: Any = None,
) -> pd.DataFrame:
    """Distance from every test sample to its nearest training sample, random against spatial.

    Explains why spatial CV scores lower: under random 70/10/20 splits most
    test cores have a core of the same site (same coordinate, so the same
    SSL patch and covariates) in the training part, at 0 m.

    Parameters
    ----------
    frame : pandas.DataFrame
        With ``longitude`` and ``latitude``.
    n_seeds, seed : int
        Random splits measured (the training part is the 70%; validation
        samples are not counted as training).
    splitter : splitter, optional
        The spatial CV; default :func:`spatial_splitter` of ``frame``. A
        :mod:`fungi_ssl.cv` splitter without coordinates gets the frame's.

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
    >>> float(med["random"]), bool(med["spatial"] > 10_000)   # sites 25 km apart
    (0.0, True)
    """
    from scipy.spatial import cKDTree

    from fungi_ssl.cv import RandomTrainValTest, as_metres

    xy = as_metres(frame[["longitude", "latitude"]].to_numpy(dtype=float), "lonlat", "frame")
    splitter = spatial_splitter(frame, seed=seed) if splitter is None else splitter
    parts = []
    random_splits = RandomTrainValTest(n_seeds, seed).split_train_val_test(np.zeros(len(xy)))
    for s, (train, _, test) in zip(range(seed, seed + n_seeds), random_splits, strict=True):
        dist, _ = cKDTree(xy[train]).query(xy[test])
        parts.append(pd.DataFrame({"scheme": "random", "split": s, "distance_m": dist}))
    groups = None
    if isinstance(splitter, SpatialKFold) and getattr(splitter, "_xy", None) is None:
        groups = frame[["longitude", "latitude"]].to_numpy(dtype=float)
    for k, (train, test) in enumerate(splitter.split(xy, groups=groups)):
        dist, _ = cKDTree(xy[train]).query(xy[test])
        parts.append(pd.DataFrame({"scheme": "spatial", "split": k, "distance_m": dist}))
    return pd.concat(parts, ignore_index=True)


# --------------------------------------------------------------------------
# summaries
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
        (95% t-interval) and ``wilcoxon_p`` (two-sided), from
        :func:`fungi_ssl.models.paired_comparison`.

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
    out = {}
    for other in others:
        comp = m[m["set"] == other].set_index(pair_key)["r2"]
        res = paired_comparison(ref, comp)
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
        The model whose per-seed R² the Wilcoxon tests compare; default
        :func:`best_model` under random splits.

    Returns
    -------
    dict
        Exactly ``{"random": {SET: {MODEL: {"r2_mean", "r2_sd", "rmse_mean",
        "me_mean"}}}, "spatial": {…}, "wilcoxon_p": {"ssl_vs_climate",
        "ssl_vs_soil", "ssl_vs_landcover"}}``. ``spatial`` summarises the
        folds (not the pooled predictions). Each p is the two-sided Wilcoxon
        signed-rank test of the per-seed R² of ``ssl`` against the other set
        (random splits); it is None when either set is missing, e.g. for the
        real SPUN table, which has no SSL embeddings. ``me_mean`` is
        predicted − observed.

    Examples
    --------
    >>> r = pd.DataFrame({"scheme": "random", "scope": "seed", "model": "rf",
    ...                   "set": ["climate"] * 3, "seed": [0, 1, 2], "fold": pd.NA,
    ...                   "cv": "random", "r2": [.5, .6, .7], "rmse": 1.0, "me": 0.0})
    >>> out = comparison_json(r)
    >>> sorted(out), out["wilcoxon_p"]["ssl_vs_climate"] is None
    (['random', 'spatial', 'wilcoxon_p'], True)
    """
    out: dict[str, Any] = {}
    for scheme in ("random", "spatial"):
        rows = _scheme_rows(results, scheme)
        out[scheme] = summarise(rows.drop(columns=["cv"], errors="ignore")) if len(rows) else {}
    rows = _scheme_rows(results, "random")
    sets = set(rows["set"])
    wilcoxon: dict[str, float | None] = {f"ssl_vs_{s}": None for s in WILCOXON_SETS}
    others = [s for s in WILCOXON_SETS if s in sets]
    if "ssl" in sets and others:
        tests = paired_tests(results, "ssl", model=model, scheme="random", others=others)
        for name, p in tests["wilcoxon_p"].items():
            wilcoxon[str(name)] = float(p)
    out["wilcoxon_p"] = wilcoxon
    return out


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
# chapter 05: commonality analysis and SHAP over the predictor groups
# --------------------------------------------------------------------------
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

    ``"site"`` (default): :class:`fungi_ssl.cv.SiteGroupKFold`, cores within
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

    Runs :func:`fungi_ssl.partition.commonality_partition` with one
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
        splitter (a :mod:`fungi_ssl.cv` one without coordinates receives the
        rows' longitude/latitude).
    model : {"lightgbm", "rf", "ridge"}
        The regressor (LightGBM with :data:`PARTITION_LIGHTGBM` by default).
    seed, n_components, n_jobs, progress
        As in :func:`table1`.
    model_params : mapping, optional
        Model overrides.

    Returns
    -------
    fungi_ssl.partition.CommonalityResult
        Over the rows complete for every group (``attrs``-like counts are in
        ``result.n_folds``; dropped rows are warned about).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> n = 200
    >>> t = pd.DataFrame({"longitude": rng.uniform(0, 5, n), "latitude": rng.uniform(45, 50, n),
    ...                   "CGIAR_PET": rng.normal(size=n), "SG_Sand_Content_005cm": rng.normal(size=n)})
    >>> t["y"] = t["CGIAR_PET"] + t["SG_Sand_Content_005cm"] + rng.normal(0, 0.5, n)
    >>> res = partition_groups(t, "y", model="ridge", progress=False)
    >>> res.groups, bool(abs(sum(res.fractions.values()) - res.full_r2) < 1e-9)
    (['climate', 'soil'], True)
    """
    from joblib import parallel_config

    from fungi_ssl.partition import commonality_partition

    present = [g for g in groups if g in available_sets(frame, [g])]
    if not present:
        raise ValueError(f"groups: none of {list(groups)} has columns in the frame")
    _check_names([model], MODEL_NAMES, "model")
    data = _complete_rows(frame, target, present)
    X_groups = {g: predictor_matrix(data, g) for g in present}
    y = data[target].to_numpy(dtype=float)
    splitter = partition_splitter(data, cv, seed=seed) if isinstance(cv, str) else cv
    params = dict(PARTITION_LIGHTGBM) if model == "lightgbm" else {}
    params.update(model_params or {})
    factory = reduced_model(
        model, seed, n_components=n_components, memo=ReductionMemo(), n_jobs=1, **params
    )
    groups_arg = None
    if isinstance(splitter, SpatialKFold) and getattr(splitter, "_xy", None) is None:
        groups_arg = data[["longitude", "latitude"]].to_numpy(dtype=float)
    with threadpool_limits(limits=1), parallel_config(backend="threading"), _thread_warnings():
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
    :func:`fungi_ssl.explain.shap_by_group` sums it into one group.

    ``n_jobs`` sets LightGBM's threads. It defaults to 1: one fit takes a
    couple of seconds, and a multi-threaded LightGBM slows down many times
    over when another process holds one of the two cores (its OpenMP threads
    spin-wait for each other at every tree).

    Returns
    -------
    model : sklearn.pipeline.Pipeline
        The fitted pipeline.
    shap_values : fungi_ssl.explain.ShapValues
    group_table : pandas.DataFrame
        :func:`fungi_ssl.explain.shap_by_group` of the SHAP values.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> n = 300
    >>> t = pd.DataFrame({"CGIAR_PET": rng.normal(size=n), "SG_Sand_Content_005cm": rng.normal(size=n)})
    >>> t["y"] = 2 * t["CGIAR_PET"] + rng.normal(0, 0.5, n)
    >>> _, sv, table = shap_attribution(t, "y", max_samples=100, progress=False)
    >>> table.index[0], len(sv.values)
    ('climate', 100)
    """
    from fungi_ssl.explain import shap_by_group, tree_shap

    present = [g for g in groups if g in available_sets(frame, [g])]
    if not present:
        raise ValueError(f"groups: none of {list(groups)} has columns in the frame")
    data = _complete_rows(frame, target, present)
    X = pd.concat([predictor_matrix(data, g) for g in present], axis=1)
    y = data[target].to_numpy(dtype=float)
    params = {**PARTITION_LIGHTGBM, **dict(model_params or {})}
    model = reduced_model("lightgbm", seed, n_components=n_components, n_jobs=n_jobs, **params)()
    with threadpool_limits(limits=n_jobs):
        model.fit(X, y)
        sv = tree_shap(model, X, max_samples=max_samples, seed=seed, progress=progress)
    return model, sv, shap_by_group(sv)
