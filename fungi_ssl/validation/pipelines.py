"""The book's model pipelines over the predictor table, shared by chapters 04 and 05.

Three pieces, in the order a fit needs them:

1. **design matrices**: :func:`available_sets` (the predictor sets a table
   has columns for), :func:`predictor_matrix` (the numeric columns of one
   set, categorical covariates one-hot) and :func:`complete_rows` (the rows
   every requested set can be scored on, so scores pair);
2. **the in-fold SSL reduction, fitted once per training part**: the 1,152
   SSL patch features are reduced by PCA
   (:class:`fungi_ssl.predictors.features.PatchReducer`) inside each training part, so
   no test sample shapes the projection. Table 1 and the commonality
   analysis fit many models on the same training rows (every model, the
   ``ssl`` and ``all`` sets, every subset of groups); because the PCA
   depends only on those rows, :class:`MemoPatchReducer` with a shared
   :class:`ReductionMemo` fits it once per training part and reuses it:
   same numbers, a fraction of the time;
3. **the book's regressors**: :data:`BOOK_MODEL_PARAMS` on top of the
   defaults of :func:`fungi_ssl.validation.models.make_model`, and
   :func:`reduced_model`, a factory of ``Pipeline(MemoPatchReducer, model)``.

How the chapters run those fits side by side is :mod:`fungi_ssl.core.worker_threads`.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from fungi_ssl.predictors.features import (
    EMBEDDING_DIM,
    PREDICTOR_GROUPS,
    PatchReducer,
    parse_predictor_set,
    select_predictors,
)
from fungi_ssl.validation.models import MODEL_NAMES, make_model

__all__ = [
    "BOOK_MODEL_PARAMS",
    "COMPARED_SETS",
    "MODEL_LABELS",
    "SSL_COMPONENTS",
    "MemoPatchReducer",
    "ReductionMemo",
    "available_sets",
    "check_choices",
    "complete_rows",
    "has_ssl",
    "predictor_matrix",
    "profile_model_changes",
    "profile_model_params",
    "reduced_model",
]

#: The predictor sets the book compares (Table 1), in the order it shows them.
COMPARED_SETS = ("ssl", "climate", "soil", "landcover", "all")
#: PCA components kept from the 1,152 SSL patch features.
SSL_COMPONENTS = 32
#: Overrides of :func:`fungi_ssl.validation.models.make_model`'s defaults used by the book:
#: the random forest grows 100 trees instead of 200, which keeps Table 1 inside
#: the book's time budget (``benchmarks/bench_table1.py`` measures it). A profile may
#: override them for Table 1 (:func:`profile_model_params`; quick: 50 trees).
BOOK_MODEL_PARAMS: dict[str, dict[str, Any]] = {
    "rf": {"n_estimators": 100},
    "lightgbm": {},
    "xgboost": {},
    "ridge": {},
}


def profile_model_params(profile: str) -> dict[str, dict[str, Any]]:
    """Each model family's parameters in a profile's Table 1: the book's, with the profile's overrides.

    Chapter 04 fits Table 1 with them and chapter 07 asks for the held-out
    predictions of the same models (:func:`fungi_ssl.uncertainty.heldout.cached_heldout`'s
    ``model_params``). Every other chapter keeps :data:`BOOK_MODEL_PARAMS`.

    Parameters
    ----------
    profile : str
        A profile of :data:`fungi_ssl.core.config.PROFILES`.

    Returns
    -------
    dict
        Family → keyword arguments of :func:`fungi_ssl.validation.models.make_model`.

    Examples
    --------
    >>> profile_model_params("full")["rf"]
    {'n_estimators': 100}
    >>> profile_model_params("quick")["rf"]
    {'n_estimators': 50}
    """
    from fungi_ssl.core.config import get_profile

    overrides = get_profile(profile).model_params
    return {m: {**BOOK_MODEL_PARAMS.get(m, {}), **overrides.get(m, {})} for m in MODEL_NAMES}


#: How chapter texts name the model families.
MODEL_LABELS = {"rf": "random forest", "lightgbm": "LightGBM", "xgboost": "XGBoost",
                "ridge": "ridge regression"}


def profile_model_changes(profile: str) -> list[tuple[str, str, Any, Any]]:
    """Where a profile's Table 1 models differ from the book's: ``(family, parameter, profile's, book's)``.

    Examples
    --------
    >>> profile_model_changes("full")
    []
    >>> profile_model_changes("quick")[0]
    ('rf', 'n_estimators', 50, 100)
    """
    out = []
    for m, params in profile_model_params(profile).items():
        book = make_model(m, **BOOK_MODEL_PARAMS.get(m, {})).get_params()
        out += [(m, k, v, book.get(k)) for k, v in params.items() if book.get(k) != v]
    return out


# --------------------------------------------------------------------------
# design matrices
# --------------------------------------------------------------------------
def check_choices(values: Sequence[str], allowed: Sequence[str], parameter: str) -> list[str]:
    """``values`` as a list, or a ValueError naming ``parameter`` for an empty, unknown or repeated name.

    Examples
    --------
    >>> check_choices("rf", MODEL_NAMES, "models")
    ['rf']
    """
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


def check_set_name(name: str) -> None:
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
        Predictor-set names (see :func:`fungi_ssl.predictors.features.parse_predictor_set`).

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
        check_set_name(s)
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


def complete_rows(frame: pd.DataFrame, target: str, sets: Sequence[str]) -> pd.DataFrame:
    """The rows of ``frame`` with a finite target and every predictor of ``sets``.

    Every set is then scored on the same rows, so scores pair. Dropped rows
    are warned about and counted in ``attrs["n_dropped"]``; the index is reset.

    Examples
    --------
    >>> t = pd.DataFrame({"CGIAR_PET": [1.0, np.nan, 3.0], "y": [1.0, 2.0, 3.0]})
    >>> import warnings
    >>> with warnings.catch_warnings(record=True):
    ...     out = complete_rows(t, "y", ["climate"])
    >>> len(out), out.attrs["n_dropped"]
    (2, 1)
    """
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
            f"dropped {n_drop} of {len(frame)} rows with a missing target or "
            f"predictor in sets {list(sets)}, so every set is scored on the same rows",
            stacklevel=3,
        )
    out = frame.loc[ok].reset_index(drop=True)
    out.attrs["n_dropped"] = n_drop
    return out


def has_ssl(X: pd.DataFrame) -> bool:
    """Whether ``X`` holds SSL columns (``ssl_…``), which the pipelines reduce in-fold."""
    return any(str(c).startswith(PREDICTOR_GROUPS["ssl"]) for c in X.columns)


# --------------------------------------------------------------------------
# the in-fold SSL reduction, fitted once per training part
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
    """A :class:`~fungi_ssl.predictors.features.PatchReducer` that reuses fits for identical training rows.

    Table 1 fits the SSL projection on each split's training part once per
    model and per set (``ssl`` and ``all``); all of those fits see the same
    rows and give the same projection. With a shared :class:`ReductionMemo`
    the first fit is stored and the others reuse it. Without a memo it is a
    plain ``PatchReducer``.

    Parameters
    ----------
    n_components, method, pixels, dim, seed
        As in :class:`~fungi_ssl.predictors.features.PatchReducer`.
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


# --------------------------------------------------------------------------
# the book's regressors
# --------------------------------------------------------------------------
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

    For :func:`fungi_ssl.attribution.partition.commonality_partition` and for SHAP fits:
    the SSL patch is reduced by PCA inside each fit, every other column is
    passed through, then the book's model (with :data:`BOOK_MODEL_PARAMS`
    and ``params`` on top) is fitted.

    Parameters
    ----------
    model_name : {"rf", "lightgbm", "xgboost", "ridge"}
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

    check_choices([model_name], MODEL_NAMES, "model_name")

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
