"""A fitted 10 m map model: chapter 04's ``ssl`` chain as one object you can save and load.

:class:`MapModel` holds the whole chain that chapter 04 fits for the ``ssl``
predictor set, refitted on all samples for mapping:

1. **patch features**: the k × k × 128 patch of dequantised int8 embeddings
   around a pixel (``value = int8 * scale``), flattened in (row, col, dim)
   order as the ``ssl_0000`` … ``ssl_1151`` columns of
   :mod:`fungi_ssl.predictors`;
2. **the PCA** of those features (:class:`fungi_ssl.features.PatchReducer`,
   ``n_components`` = :data:`fungi_ssl.pipelines.SSL_COMPONENTS`), fitted on
   the training rows;
3. **the regressor** (:func:`fungi_ssl.models.make_model` with the book's
   :data:`fungi_ssl.pipelines.BOOK_MODEL_PARAMS`). LightGBM and XGBoost first
   stop early on a site-grouped hold-out of ``val_size`` of the rows, as in
   chapter 04, then are refitted on every row with the number of trees found;
4. **the target transform**: the model predicts
   :data:`fungi_ssl.predictors.TARGET`, ``log_richness = log1p(rarefied)``;
   :meth:`MapModel.inverse_target` (``expm1``) turns it back into rarefied
   richness. ``expm1`` of a mean of logs is a median-like value, below the
   mean richness when the spread is large.

It records its :class:`FeatureSpec` (embedding dimension, patch size, the
encoder's signature, the predictor columns), the fingerprint of the training
table, the TESSERA dataset version of the embeddings (when they are TESSERA
tiles) and the versions of every library whose objects the file holds:
``fungi_ssl``, scikit-learn (the PCA), the regressor's library (LightGBM,
XGBoost or scikit-learn), skops and numpy (:func:`package_versions`).

**The product model.** Fitted with ``covariates`` (the 1 km climate, soil
and land-cover columns, SPUN-named), the regressor sees the patch's
principal components *and* the 1 km covariates of the sample's cell: chapter
06's :class:`fungi_ssl.resolution.ProductModel`, fitted by the same rule
(the PCA on every row with a complete patch, then the trees on the rows
complete in both, stopping early on a site-grouped ``val_size`` share), so
the two give the same numbers on the same rows. The spec then lists the
covariates (``covariate_columns``), a map needs them for every pixel (the
value of the 1 km cell holding the pixel's centre,
:mod:`fungi_ssl.covariate_stack`), and the file is written as format 2,
which older versions refuse instead of misreading.

Map prediction does not build the 1,152 patch features: PCA is linear, so
the patch projection is one matmul of each pixel's 128 int8 values with a
128 × (k²·n_components) matrix, times the pixel's scale, followed by a sum of
k² shifted slices (:meth:`MapModel.predict_window`). The trees of a LightGBM
model or random forest are then walked by a small numba kernel
(:class:`FlatTrees`) that gives the same numbers as LightGBM's and
scikit-learn's own prediction (the thresholds are compared exactly as they
compare them) about two to three times faster, because it walks eight pixels
through a tree at once without branches; models it cannot read (categorical
or linear trees, zero-as-missing splits) and XGBoost (whose own predict is
as fast) use the library's predict, single-threaded per block.

File format
-----------
:meth:`MapModel.save` writes one zip file holding ``meta.json`` (plain JSON:
format version, feature spec, fingerprint, versions, settings) and
``model.skops`` (the PCA and the regressor, serialised with skops). A file
loads under the same major version (``0.y`` for a ``0.y`` release) of
``fungi_ssl`` and of the libraries whose estimators it rebuilds; a minor
difference gives a one-line warning (:func:`version_check`). Why skops
and not pickle or joblib: unpickling executes whatever code the file names,
so a model file from someone else is a program you run; skops only
reconstructs an allow-list of types and refuses anything else, so loading a
map model shared with you is safe. And because the metadata is plain JSON,
:meth:`MapModel.load` checks versions and the feature spec before it
deserialises any object, so a mismatch gives one message naming both sides
instead of an error deep inside scikit-learn or LightGBM.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import uuid
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from fungi_ssl.predictors.features import EMBEDDING_DIM, SSL_PREFIX, PatchReducer, patch_layout
from fungi_ssl.validation.models import MODEL_NAMES, fit_model, make_model
from fungi_ssl.validation.pipelines import BOOK_MODEL_PARAMS, SSL_COMPONENTS

__all__ = [
    "CACHE_KEY_LIBRARIES",
    "COVARIATE_RULE",
    "FORMAT_VERSION",
    "REGRESSOR_LIBRARY",
    "FeatureSpec",
    "FlatTrees",
    "MapModel",
    "compatible_series",
    "encoder_signature",
    "library_versions",
    "package_versions",
    "table_fingerprint",
    "version_check",
]

#: The model's target, :data:`fungi_ssl.predictors.TARGET` (``log1p(rarefied)``); repeated
#: here so that loading a map model does not import the encoder (torch).
TARGET = "log_richness"
#: Version of the file layout written by :meth:`MapModel.save` (2 for a model with
#: covariates, which a reader of version 1 must refuse; 1 otherwise).
FORMAT_VERSION = 2
#: File layouts :meth:`MapModel.load` reads.
READABLE_FORMATS = (1, 2)
#: Types that :meth:`MapModel.load` lets skops rebuild beyond scikit-learn's own.
_TRUSTED_TYPES = frozenset(
    {
        "collections.OrderedDict",
        "lightgbm.basic.Booster",
        "lightgbm.sklearn.LGBMRegressor",
        "sklearn.tree._tree.Tree",
        "xgboost.core.Booster",
        "xgboost.sklearn.XGBRegressor",
    }
)
#: Libraries whose objects every model file holds: the package, the PCA's scikit-learn,
#: skops (the file format of the objects) and numpy (their arrays).
_ALWAYS_HELD = ("fungi_ssl", "scikit-learn", "skops", "numpy")
#: The library of each regressor (the one whose objects it adds to the file).
REGRESSOR_LIBRARY = {"lightgbm": "lightgbm", "xgboost": "xgboost", "rf": "scikit-learn",
                     "ridge": "scikit-learn"}
#: Libraries a model must share the compatible version of (:func:`compatible_series`) to be
#: loaded: the package and the libraries whose estimators it rebuilds. numpy and skops keep
#: their formats across versions (skops reads older files; arrays are .npy), so a different
#: series of them is a warning only.
_MUST_MATCH = ("fungi_ssl", "scikit-learn", "lightgbm", "xgboost")

Output = Literal["richness", "log_richness"]
#: How a 10 m pixel gets the 1 km covariates of the product model (as chapter 06 maps it).
COVARIATE_RULE = "the value of the 1 km cell holding the pixel's centre (nearest cell)"


def package_versions(model: str | None = None) -> dict[str, str]:
    """Installed versions of the libraries whose objects a model file holds.

    Parameters
    ----------
    model : {"lightgbm", "xgboost", "rf", "ridge"}, optional
        The regressor: its library (:data:`REGRESSOR_LIBRARY`) is added to
        ``fungi_ssl``, scikit-learn, skops and numpy.

    Examples
    --------
    >>> sorted(package_versions("xgboost"))
    ['fungi_ssl', 'numpy', 'scikit-learn', 'skops', 'xgboost']
    >>> sorted(package_versions("rf"))
    ['fungi_ssl', 'numpy', 'scikit-learn', 'skops']
    """
    names = list(_ALWAYS_HELD)
    if model is not None:
        lib = REGRESSOR_LIBRARY[model]
        if lib not in names:
            names.append(lib)
    return library_versions(names)


#: The libraries whose versions key the book's cached models (:mod:`fungi_ssl.resolution`,
#: :mod:`fungi_ssl.heldout`); unchanged so that existing caches stay valid.
CACHE_KEY_LIBRARIES = ("fungi_ssl", "scikit-learn", "lightgbm")


def library_versions(names: Sequence[str] = CACHE_KEY_LIBRARIES) -> dict[str, str]:
    """Installed versions of the named distributions, in that order (``"unknown"`` if absent).

    Examples
    --------
    >>> list(library_versions(["numpy", "fungi_ssl"]))
    ['numpy', 'fungi_ssl']
    """
    out = {}
    for name in names:
        out[name] = "unknown"  # an uninstalled checkout
        for dist in _DISTRIBUTIONS.get(name, (name,)):
            try:
                out[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


#: Distributions that install a library under another name (XGBoost's CPU-only wheel).
_DISTRIBUTIONS = {"fungi_ssl": ("fungi-ssl",), "xgboost": ("xgboost", "xgboost-cpu")}


def compatible_series(version: str) -> tuple[int, ...] | None:
    """The part of a version that must match for a saved model to load: its compatible series.

    The major version; for a ``0.y`` version (semantic versioning's initial
    development, where any minor release may break) the major and minor
    version. None for a version that cannot be read.

    Examples
    --------
    >>> compatible_series("4.5.0"), compatible_series("0.1.0"), compatible_series("2.1rc1")
    ((4,), (0, 1), (2,))
    >>> compatible_series("unknown") is None
    True
    """
    m = re.match(r"\s*(\d+)(?:\.(\d+))?", str(version))
    if m is None:
        return None
    major, minor = int(m.group(1)), int(m.group(2) or 0)
    return (0, minor) if major == 0 else (major,)


def _minor(version: str) -> tuple[int, ...] | None:
    m = re.match(r"\s*(\d+)(?:\.(\d+))?", str(version))
    return None if m is None else (int(m.group(1)), int(m.group(2) or 0))


def version_check(saved: Mapping[str, str], installed: Mapping[str, str]) -> tuple[str, str]:
    """Compare a model file's library versions with the installed ones.

    Parameters
    ----------
    saved : mapping
        ``versions`` of the model file (:func:`package_versions` at fit time).
    installed : mapping
        :func:`package_versions` here, for the same regressor.

    Returns
    -------
    refuse : str
        Empty when the model can be loaded; else the libraries whose
        compatible series (:func:`compatible_series`) differ, each with both
        versions: ``fungi_ssl`` and the libraries whose estimators the file
        holds (scikit-learn's PCA, the regressor's library).
    warn : str
        Empty, or the other differences worth one line: another minor
        version of those libraries, another series of numpy or skops. A
        library the file records no version of (an older file) is not compared.

    Examples
    --------
    >>> version_check({"lightgbm": "4.5.0"}, {"lightgbm": "4.6.0"})
    ('', "lightgbm: saved with '4.5.0', installed '4.6.0'")
    >>> version_check({"lightgbm": "3.3.5"}, {"lightgbm": "4.6.0"})[0]
    "lightgbm: saved with '3.3.5', installed '4.6.0'"
    """
    refuse, warn = {}, {}
    for lib, here in installed.items():
        there = saved.get(lib)
        if there is None or there == here:
            # files written before this library was recorded (numpy, skops, xgboost) say
            # nothing about it; their estimators' own libraries were checked as before
            continue
        a, b = compatible_series(there), compatible_series(here)
        if lib in _MUST_MATCH and (a is None or a != b):
            refuse[lib] = (there, here)
            continue
        # a compatible library's other minor version; numpy's or skops's other series
        worth_saying = _minor(there) != _minor(here) if lib in _MUST_MATCH else a != b
        if worth_saying:
            warn[lib] = (there, here)
    return _describe(refuse, "saved with", "installed"), _describe(warn, "saved with", "installed")


def encoder_signature(source: Any) -> str:
    """The signature of the encoder behind some embeddings, as a string.

    Parameters
    ----------
    source : str, TrainedEncoder or xarray.Dataset
        A signature already (returned as is); a
        :class:`fungi_ssl.encoder.TrainedEncoder` (hash of its configuration,
        normaliser and weights, as :func:`fungi_ssl.embed.embed_cube` records
        it); an embedding store opened with
        :func:`fungi_ssl.embed.open_embeddings` (its ``encoder`` attribute); or
        a TESSERA tile from :func:`fungi_ssl.tessera.open_tile`
        (``"tessera:<dataset_version>"``, ``"tessera:unknown-version"`` when
        the download records none: :func:`fungi_ssl.tessera.version_signature`).

    Examples
    --------
    >>> encoder_signature("abc123")
    'abc123'
    """
    import xarray as xr

    if isinstance(source, str):
        if not source:
            raise ValueError("encoder signature must be a non-empty string")
        return source
    if isinstance(source, xr.Dataset):
        if "encoder" in source.attrs:
            return str(source.attrs["encoder"])
        if "tile" in source.attrs:  # a TESSERA tile (fungi_ssl.tessera.open_tile)
            from fungi_ssl.embeddings.tessera import version_signature

            return version_signature(source.attrs.get("tessera_dataset_version"))
        raise ValueError(
            "encoder_signature: the Dataset records no encoder (no 'encoder' attribute as "
            "fungi_ssl.embed stores write, and not a TESSERA tile)"
        )
    from fungi_ssl.embeddings.encoder import TrainedEncoder

    if isinstance(source, TrainedEncoder):
        from fungi_ssl.embeddings.embed import _encoder_signature

        return _encoder_signature(source)
    raise ValueError(
        f"encoder_signature: expected a str, a TrainedEncoder or an embedding Dataset, "
        f"got {type(source).__name__}"
    )


def table_fingerprint(X: np.ndarray, y: np.ndarray, columns: tuple[str, ...]) -> str:
    """A short sha256 of the training features, target and column names.

    Examples
    --------
    >>> a = table_fingerprint(np.zeros((2, 2)), np.zeros(2), ("ssl_0000", "ssl_0001"))
    >>> b = table_fingerprint(np.ones((2, 2)), np.zeros(2), ("ssl_0000", "ssl_0001"))
    >>> len(a), a == b
    (16, False)
    """
    h = hashlib.sha256()
    h.update(json.dumps(list(columns)).encode())
    x = np.ascontiguousarray(np.asarray(X, dtype=np.float64))
    h.update(str(x.shape).encode())
    h.update(x.tobytes())
    h.update(np.ascontiguousarray(np.asarray(y, dtype=np.float64)).tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class FeatureSpec:
    """What a map model expects of the embeddings it is given.

    Attributes
    ----------
    embedding_dim : int
        Dimensions per pixel (128 for TESSERA).
    patch_size : int
        Side ``k`` of the k × k pixel patch (3 in the study).
    encoder : str
        Signature of the encoder that made the training embeddings
        (:func:`encoder_signature`).
    predictor_columns : tuple of str
        The patch columns, ``ssl_0000`` … in (row, col, dim) order.
    covariate_columns : tuple of str
        The 1 km covariates the regressor also sees (the product model), in
        order; empty for the ``ssl``-only model.
    """

    embedding_dim: int
    patch_size: int
    encoder: str
    predictor_columns: tuple[str, ...] = field(repr=False)
    covariate_columns: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (``covariate_columns`` only when there are any)."""
        d = asdict(self)
        d["predictor_columns"] = list(self.predictor_columns)
        d["covariate_columns"] = list(self.covariate_columns)
        if not self.covariate_columns:
            del d["covariate_columns"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(
            embedding_dim=int(d["embedding_dim"]),
            patch_size=int(d["patch_size"]),
            encoder=str(d["encoder"]),
            predictor_columns=tuple(str(c) for c in d["predictor_columns"]),
            covariate_columns=tuple(str(c) for c in d.get("covariate_columns", ())),
        )

    def differences(self, other: FeatureSpec) -> dict[str, tuple[Any, Any]]:
        """Fields that differ: ``{field: (self's value, other's value)}``.

        Examples
        --------
        >>> a = FeatureSpec(128, 3, "enc-a", ("ssl_0000",))
        >>> a.differences(FeatureSpec(128, 5, "enc-a", ("ssl_0000",)))
        {'patch_size': (3, 5)}
        """
        out: dict[str, tuple[Any, Any]] = {}
        for name in ("embedding_dim", "patch_size", "encoder"):
            if getattr(self, name) != getattr(other, name):
                out[name] = (getattr(self, name), getattr(other, name))
        if self.predictor_columns != other.predictor_columns:
            out["predictor_columns"] = (
                _columns_summary(self.predictor_columns),
                _columns_summary(other.predictor_columns),
            )
        if self.covariate_columns != other.covariate_columns:
            out["covariate_columns"] = (list(self.covariate_columns),
                                        list(other.covariate_columns))
        return out


def _columns_summary(cols: tuple[str, ...]) -> str:
    if not cols:
        return "no columns"
    return f"{len(cols)} columns {cols[0]} … {cols[-1]}"


def _describe(diffs: Mapping[str, tuple[Any, Any]], left: str, right: str) -> str:
    return "; ".join(f"{k}: {left} {a!r}, {right} {b!r}" for k, (a, b) in diffs.items())


def _patch_column_names(n: int) -> tuple[str, ...]:
    return tuple(f"{SSL_PREFIX}{i:04d}" for i in range(n))


class MapModel:
    """Patch features → PCA → regressor → richness, fitted on all samples, savable.

    Parameters
    ----------
    model : {"lightgbm", "xgboost", "rf", "ridge"}
        The regressor (chapter 04's best model; :func:`fungi_ssl.comparison.best_model`).
    n_components : int
        PCA components of the patch (chapter 04: ``SSL_COMPONENTS`` = 32).
    seed : int
        Seed of the PCA, the early-stopping hold-out and the model.
    model_params : mapping, optional
        Overrides on top of :data:`fungi_ssl.pipelines.BOOK_MODEL_PARAMS`.
        Giving ``n_estimators`` for LightGBM or XGBoost switches early
        stopping off.
    val_size : float
        Share of the rows (whole sites, when groups are known) that LightGBM
        and XGBoost stop early on before the final refit on every row; 0 for none.
    n_jobs : int
        Threads for fitting.

    Attributes (after :meth:`fit` or :meth:`load`)
    ----------------------------------------------
    spec : FeatureSpec
    fingerprint : str
        :func:`table_fingerprint` of the training table.
    versions : dict
        Package versions at fit time.
    n_samples, n_dropped : int
        Rows fitted on; rows left out for a missing embedding or target.
    settings : dict
        Model name, components, seed, parameters, trees used.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(300, 3 * 3 * 8)).astype(np.float32)
    >>> richness = np.expm1(2 + X[:, :8].sum(axis=1) / 4)
    >>> m = MapModel("ridge", n_components=4).fit(X, richness, encoder="enc-demo", embedding_dim=8)
    >>> m.spec.patch_size, m.spec.embedding_dim, len(m.spec.predictor_columns)
    (3, 8, 72)
    >>> m.predict_patches(X[:2], output="log_richness").shape
    (2,)
    """

    def __init__(
        self,
        model: str = "lightgbm",
        *,
        n_components: int = SSL_COMPONENTS,
        seed: int = 0,
        model_params: Mapping[str, Any] | None = None,
        val_size: float = 0.1,
        n_jobs: int = 2,
    ) -> None:
        if model not in MODEL_NAMES:
            raise ValueError(f"model must be one of {list(MODEL_NAMES)}, got {model!r}")
        if not (isinstance(n_components, (int, np.integer)) and n_components >= 1):
            raise ValueError(f"n_components must be a positive integer, got {n_components!r}")
        if not 0 <= val_size < 1:
            raise ValueError(f"val_size must lie in [0, 1), got {val_size}")
        self.model = model
        self.n_components = int(n_components)
        self.seed = int(seed)
        self.model_params = dict(model_params or {})
        self.val_size = float(val_size)
        self.n_jobs = int(n_jobs)

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        data: pd.DataFrame | np.ndarray,
        y: np.ndarray | pd.Series | None = None,
        *,
        encoder: Any,
        groups: np.ndarray | pd.Series | None = None,
        embedding_dim: int = EMBEDDING_DIM,
        covariates: pd.DataFrame | Sequence[str] | None = None,
    ) -> MapModel:
        """Fit the chain on every sample with a complete patch and a target.

        Parameters
        ----------
        data : pandas.DataFrame or numpy.ndarray
            A predictor table (:func:`fungi_ssl.predictors.predictor_table`'s
            ``frame``) with ``ssl_0000`` … columns and either
            :data:`~fungi_ssl.predictors.TARGET` (``log_richness``) or
            ``rarefied``; or an array of patches, ``(n, k·k·dim)`` in
            (row, col, dim) order or ``(n, k, k, dim)``.
        y : array_like, optional
            Rarefied richness (≥ 0, not its log) per row; required with an
            array, optional with a table (default: the table's target).
        encoder : str, TrainedEncoder or xarray.Dataset
            The encoder that made the embeddings (see :func:`encoder_signature`);
            maps refuse embeddings from another one.
        groups : array_like, optional
            Site label per row for the early-stopping hold-out (default: the
            table's ``site_id`` column if it has one).
        embedding_dim : int
            Dimensions per pixel, to read the patch layout.
        covariates : pandas.DataFrame or sequence of str, optional
            The 1 km covariates of each row, named (a DataFrame in the rows'
            order), or the names of columns of ``data`` that hold them: the
            product model (see the module docstring). Rows with a missing
            covariate still shape the PCA but not the regressor.

        Returns
        -------
        MapModel
            ``self``, fitted.
        """
        X, target, cols, grp = self._training_arrays(data, y, groups, embedding_dim)
        cov, cov_cols = self._training_covariates(data, covariates, len(X))
        k = patch_layout(X.shape[1], embedding_dim)
        self.spec = FeatureSpec(
            embedding_dim=int(embedding_dim),
            patch_size=k,
            encoder=encoder_signature(encoder),
            predictor_columns=cols,
            covariate_columns=cov_cols,
        )
        self.fingerprint = table_fingerprint(
            X if cov is None else np.hstack([X, cov]), target, cols + cov_cols)
        self.versions = package_versions(self.model)
        ok = np.isfinite(X).all(axis=1) & np.isfinite(target)
        fitted = ok if cov is None else ok & np.isfinite(cov).all(axis=1)
        self.n_dropped = int((~fitted).sum())
        self.n_samples = int(fitted.sum())
        if self.n_samples < 10:
            raise ValueError(
                f"MapModel.fit: only {self.n_samples} rows have a complete patch"
                + ("" if cov is None else ", every covariate") + " and a target; need at least 10"
            )
        params = {**BOOK_MODEL_PARAMS.get(self.model, {}), **self.model_params}
        n_trees = None
        boosted = self.model in ("lightgbm", "xgboost")
        early = boosted and self.val_size > 0 and "n_estimators" not in self.model_params
        if cov is None:
            X, target = X[ok], target[ok]
            grp = None if grp is None else grp[ok]
            if early:
                n_trees = self._early_stopped_trees(X, target, grp, params)
                params["n_estimators"] = n_trees
            self.pca_ = self._reducer().fit(X).reducer_
            z = self._project(X)
        else:
            # chapter 06's product model: the PCA of every complete patch, then the trees on
            # [components, covariates] of the rows complete in both (resolution._fit_trees)
            self.pca_ = self._reducer().fit(X[ok]).reducer_
            z = np.hstack([self._project(X[fitted]), cov[fitted]])
            target = target[fitted]
            if early:
                g = grp[fitted] if grp is not None else np.arange(len(target))
                n_trees = self._early_stopped_product_trees(z, target, g, params)
                params["n_estimators"] = n_trees
        self.regressor_ = fit_model(
            make_model(self.model, seed=self.seed, n_jobs=self.n_jobs, **params), z, target
        )
        self.settings = {
            "model": self.model,
            "n_components": int(self.pca_.n_components_),
            "seed": self.seed,
            "model_params": {k: _plain(v) for k, v in params.items()},
            "val_size": self.val_size,
            "early_stopped_trees": n_trees,
            "target": TARGET,
            "target_transform": "log1p",
        }
        if cov_cols:
            self.settings.update(map_model="product", covariates=list(cov_cols),
                                 covariate_rule=COVARIATE_RULE)
        self._prepare()
        return self

    @property
    def covariate_columns(self) -> tuple[str, ...]:
        """The 1 km covariates the model needs (empty for the ``ssl``-only model)."""
        spec = getattr(self, "spec", None)
        return spec.covariate_columns if spec is not None else ()

    @staticmethod
    def _training_covariates(data, covariates, n: int) -> tuple[np.ndarray | None, tuple[str, ...]]:
        if covariates is None:
            return None, ()
        if isinstance(covariates, pd.DataFrame):
            frame = covariates
        else:
            names = [str(c) for c in covariates]
            if not isinstance(data, pd.DataFrame):
                raise ValueError(  # noqa: TRY004 - bad input is a ValueError here
                    "MapModel.fit: covariates given by name need a table as data; "
                    "pass a DataFrame of covariates with an array of patches")
            missing = [c for c in names if c not in data.columns]
            if missing:
                raise ValueError(f"MapModel.fit: the table lacks the covariate columns {missing}")
            frame = data[names]
        if frame.shape[1] == 0:
            raise ValueError("MapModel.fit: covariates has no column")
        if len(frame) != n:
            raise ValueError(f"MapModel.fit: covariates has {len(frame)} rows for {n} patches")
        bad = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
        if bad:
            raise ValueError(f"MapModel.fit: covariate columns {bad} are not numeric")
        return frame.to_numpy(dtype=np.float64), tuple(str(c) for c in frame.columns)

    def _early_stopped_product_trees(self, X, target, groups, params) -> int:
        """Trees of the product model: resolution._fit_trees' rule (whole groups held out)."""
        from sklearn.model_selection import GroupShuffleSplit

        split = GroupShuffleSplit(1, test_size=self.val_size, random_state=self.seed)
        train, val = next(split.split(X, target, groups))
        model = make_model(self.model, seed=self.seed, n_jobs=self.n_jobs, **params)
        fit_model(model, X[train], target[train], X[val], target[val])
        best = model.best_iteration if self.model == "xgboost" else model.best_iteration_
        if not best:
            return int(model.n_estimators)
        return int(best) + (1 if self.model == "xgboost" else 0)

    def _reducer(self) -> PatchReducer:
        return PatchReducer(n_components=self.n_components, method="pca", pixels="patch",
                            dim=self.spec.embedding_dim, seed=self.seed)

    def _training_arrays(self, data, y, groups, dim):
        if isinstance(data, pd.DataFrame):
            cols = PatchReducer(dim=dim)._ssl_columns(data)
            if not cols:
                raise ValueError(
                    f"MapModel.fit: the table has no SSL patch columns ({SSL_PREFIX}0000 …); "
                    "build it with predictor_table(with_ssl=True)"
                )
            X = data[cols].to_numpy(dtype=np.float64)
            if y is None:
                if TARGET in data:
                    target = data[TARGET].to_numpy(dtype=np.float64)
                elif "rarefied" in data:
                    target = self.target_transform(data["rarefied"].to_numpy(dtype=np.float64))
                else:
                    raise ValueError(
                        f"MapModel.fit: the table has neither {TARGET!r} nor 'rarefied'; "
                        "pass y (rarefied richness)"
                    )
            else:
                target = self._checked_richness(y, len(X))
            if groups is None and "site_id" in data:
                groups = data["site_id"].to_numpy()
            names = tuple(cols)
        else:
            X = np.asarray(data, dtype=np.float64)
            if X.ndim == 4:
                X = X.reshape(len(X), -1)
            if X.ndim != 2:
                raise ValueError(
                    f"MapModel.fit: patches must be (n, k*k*dim) or (n, k, k, dim), got {X.shape}"
                )
            if y is None:
                raise ValueError("MapModel.fit: with an array of patches, pass y (rarefied richness)")
            target = self._checked_richness(y, len(X))
            names = _patch_column_names(X.shape[1])
        grp = None if groups is None else np.asarray(groups)
        if grp is not None and len(grp) != len(X):
            raise ValueError(f"MapModel.fit: groups has {len(grp)} labels for {len(X)} rows")
        return X, target, names, grp

    def _checked_richness(self, y, n: int) -> np.ndarray:
        r = np.asarray(y, dtype=np.float64).ravel()
        if len(r) != n:
            raise ValueError(f"MapModel.fit: y has {len(r)} values for {n} rows")
        if np.any(r[np.isfinite(r)] < 0):
            raise ValueError(
                "MapModel.fit: y must be rarefied richness (≥ 0), not its log; "
                f"pass a table with a {TARGET!r} column to give log values"
            )
        return self.target_transform(r)

    def _early_stopped_trees(self, X, target, grp, params) -> int:
        from sklearn.model_selection import GroupShuffleSplit, ShuffleSplit

        if grp is not None and len(np.unique(grp)) >= 2:
            split = GroupShuffleSplit(1, test_size=self.val_size, random_state=self.seed)
            train, val = next(split.split(X, target, grp))
        else:
            split = ShuffleSplit(1, test_size=self.val_size, random_state=self.seed)
            train, val = next(split.split(X, target))
        pca = self._reducer().fit(X[train]).reducer_
        model = make_model(self.model, seed=self.seed, n_jobs=self.n_jobs, **params)
        fit_model(model, pca.transform(X[train]), target[train], pca.transform(X[val]), target[val])
        if self.model == "xgboost":
            best = getattr(model, "best_iteration", None)
            return int(best) + 1 if best is not None else int(model.n_estimators)
        return int(model.best_iteration_ or model.n_estimators)

    # ------------------------------------------------------------ internals
    def _check_fitted(self) -> None:
        if not hasattr(self, "regressor_"):
            raise ValueError("MapModel is not fitted: call fit(...) or MapModel.load(path)")

    def _prepare(self) -> None:
        """Precompute the window projection: W (dim, k·k·C) and the centring bias (C,)."""
        comp = np.asarray(self.pca_.components_, dtype=np.float64)
        c = comp.shape[0]
        k, d = self.spec.patch_size, self.spec.embedding_dim
        w = comp.reshape(c, k, k, d).transpose(3, 1, 2, 0).reshape(d, k * k * c)
        self._window_w = np.ascontiguousarray(w, dtype=np.float32)
        self._bias = (np.asarray(self.pca_.mean_, np.float64) @ comp.T).astype(np.float32)
        self._components = comp
        self._flat = FlatTrees.from_model(self.regressor_)

    def _project(self, X: np.ndarray) -> np.ndarray:
        return (np.asarray(X, np.float64) - self.pca_.mean_) @ np.asarray(
            self.pca_.components_, np.float64
        ).T

    def _regress(self, z: np.ndarray, num_threads: int | None) -> np.ndarray:
        reg = self.regressor_
        if getattr(self, "_flat", None) is not None:
            return self._flat.predict(z)
        if self.model == "lightgbm":
            nt = self.n_jobs if num_threads is None else int(num_threads)
            return reg.booster_.predict(z, num_threads=nt)
        if self.model in ("rf", "xgboost") and num_threads is not None:
            reg.set_params(n_jobs=int(num_threads))
        return reg.predict(z)

    # ----------------------------------------------------------- transforms
    @staticmethod
    def target_transform(richness) -> np.ndarray:
        """Rarefied richness → the model's target, ``log1p``.

        Examples
        --------
        >>> MapModel.target_transform([0.0, np.e - 1]).tolist()
        [0.0, 1.0]
        """
        return np.log1p(np.asarray(richness, dtype=np.float64))

    @staticmethod
    def inverse_target(log_richness) -> np.ndarray:
        """The model's target → rarefied richness, ``expm1``.

        Examples
        --------
        >>> MapModel.inverse_target([0.0, 1.0]).round(4).tolist()
        [0.0, 1.7183]
        """
        return np.expm1(np.asarray(log_richness))

    # -------------------------------------------------------------- predict
    def project_patches(self, patches) -> np.ndarray:
        """PCA scores ``(n, n_components)`` of patches; NaN rows where a patch is incomplete."""
        self._check_fitted()
        X = self._patch_array(patches)
        out = np.full((len(X), self._components.shape[0]), np.nan)
        ok = np.isfinite(X).all(axis=1)
        if ok.any():
            out[ok] = self._project(X[ok])
        return out

    def predict_patches(
        self, patches, *, output: Output = "richness", num_threads: int | None = None,
        covariates: pd.DataFrame | np.ndarray | None = None,
    ) -> np.ndarray:
        """Predict from patches: ``(n, k·k·dim)``, ``(n, k, k, dim)`` or a table of ``ssl_`` columns.

        Parameters
        ----------
        patches : array_like or pandas.DataFrame
            Dequantised patches in (row, col, dim) order.
        output : {"richness", "log_richness"}
            Rarefied richness (``expm1`` of the model) or the model's log scale.
        num_threads : int, optional
            Threads of the regressor's prediction (default: ``n_jobs``).
        covariates : pandas.DataFrame or numpy.ndarray, optional
            The product model's 1 km covariates per row: a table holding
            :attr:`covariate_columns` (``patches`` itself, when it is a table
            that holds them, is used by default), or an ``(n, K)`` array in
            that order. Required by a model fitted with covariates.

        Returns
        -------
        numpy.ndarray
            ``(n,)`` float64; NaN where a patch or a covariate has a missing value.
        """
        z = self.project_patches(patches)
        if self.covariate_columns:
            if covariates is None and isinstance(patches, pd.DataFrame):
                covariates = patches
            z = np.hstack([z, self._covariate_array(covariates, len(z))])
        elif covariates is not None:
            raise ValueError("covariates: this map model was fitted without 1 km covariates")
        out = np.full(len(z), np.nan)
        ok = np.isfinite(z).all(axis=1)
        if ok.any():
            out[ok] = self._regress(z[ok], num_threads)
        return self._output(out, output)

    def _covariate_array(self, covariates, n: int) -> np.ndarray:
        """The product model's covariates as ``(n, K)`` float64 in the model's order."""
        cols = list(self.covariate_columns)
        if covariates is None:
            raise ValueError(
                f"covariates: this map model was fitted with the 1 km covariates {cols}; "
                "give them for every row"
            )
        if isinstance(covariates, pd.DataFrame):
            missing = [c for c in cols if c not in covariates.columns]
            if missing:
                raise ValueError(f"covariates: the table lacks {missing}, which the model needs")
            c = covariates[cols].to_numpy(dtype=np.float64)
        else:
            c = np.asarray(covariates, dtype=np.float64)
            if c.ndim == 1 and len(cols) == 1:
                c = c[:, None]
        if c.shape != (n, len(cols)):
            raise ValueError(f"covariates: shape {c.shape}, expected ({n}, {len(cols)}) for the "
                             f"model's covariates {cols}")
        return c

    def _output(self, log_values: np.ndarray, output: str) -> np.ndarray:
        if output == "log_richness":
            return log_values
        if output == "richness":
            return self.inverse_target(log_values)
        raise ValueError(f"output must be 'richness' or 'log_richness', got {output!r}")

    def _patch_array(self, patches) -> np.ndarray:
        n_cols = len(self.spec.predictor_columns)
        if isinstance(patches, pd.DataFrame):
            missing = [c for c in self.spec.predictor_columns if c not in patches.columns]
            if missing:
                raise ValueError(
                    f"patches: the table lacks {len(missing)} of the model's {n_cols} patch "
                    f"columns, e.g. {missing[:3]}"
                )
            return patches[list(self.spec.predictor_columns)].to_numpy(dtype=np.float64)
        X = np.asarray(patches, dtype=np.float64)
        if X.ndim == 4:
            X = X.reshape(len(X), -1)
        if X.ndim != 2 or X.shape[1] != n_cols:
            k, d = self.spec.patch_size, self.spec.embedding_dim
            raise ValueError(
                f"patches: shape {np.shape(patches)} does not match the model's {k}×{k}×{d} "
                f"patch ({n_cols} values per row)"
            )
        return X

    def predict_window(
        self,
        embedding: np.ndarray,
        scale: np.ndarray,
        *,
        output: Output = "richness",
        num_threads: int = 1,
        strip_pixels: int = 16_384,
        covariates: np.ndarray | None = None,
    ) -> np.ndarray:
        """Predict every interior pixel of an int8 embedding window with a halo.

        The window carries ``h = k // 2`` extra rows and columns on each side
        (the halo), so that every interior pixel has its full k × k patch.
        The patch's PCA scores are computed without building the patch:
        ``z = Σ_(a,b) s[i+a, j+b] · (e[i+a, j+b] @ W_ab) − mean @ componentsᵀ``,
        one matmul per pixel, done in strips of about ``strip_pixels`` pixels
        so memory stays small.

        Parameters
        ----------
        embedding : numpy.ndarray
            ``(H + 2h, W + 2h, dim)`` int8 (or float) values, rows north to south.
        scale : numpy.ndarray
            ``(H + 2h, W + 2h)`` per-pixel scale; non-finite means no embedding.
        output : {"richness", "log_richness"}
        num_threads : int
            Threads of the regressor (1 when blocks run in parallel).
        strip_pixels : int
            Output pixels per strip.
        covariates : numpy.ndarray, optional
            ``(H, W, K)``: the product model's 1 km covariates of every
            interior pixel, in :attr:`covariate_columns` order (required by a
            model fitted with covariates); NaN gives a NaN pixel.

        Returns
        -------
        numpy.ndarray
            ``(H, W)`` float32; NaN where the pixel or a neighbour in its
            patch has no embedding, or a covariate is missing.

        Examples
        --------
        >>> rng = np.random.default_rng(1)
        >>> X = rng.normal(size=(200, 72)).astype(np.float32)
        >>> m = MapModel("ridge", n_components=3).fit(X, np.expm1(3 + X[:, 0] / 2), encoder="e", embedding_dim=8)
        >>> emb = rng.integers(-127, 128, size=(6, 7, 8)).astype(np.int8)
        >>> sc = np.full((6, 7), 0.01, np.float32)
        >>> m.predict_window(emb, sc).shape
        (4, 5)
        """
        emb, sc = self._checked_window(embedding, scale)
        h = self.spec.patch_size // 2
        n_rows, n_cols = emb.shape[0] - 2 * h, emb.shape[1] - 2 * h
        out = np.full((max(n_rows, 0), max(n_cols, 0)), np.nan, np.float32)
        if n_rows <= 0 or n_cols <= 0:
            return out
        c = self._bias.shape[0]
        cov = None
        if self.covariate_columns:
            k = len(self.covariate_columns)
            if covariates is None:
                raise ValueError(
                    f"covariates: this map model was fitted with the 1 km covariates "
                    f"{list(self.covariate_columns)}; give them for every pixel"
                )
            cov = np.asarray(covariates, dtype=np.float32)
            if cov.shape != (n_rows, n_cols, k):
                raise ValueError(f"covariates: shape {cov.shape}, expected "
                                 f"({n_rows}, {n_cols}, {k}) for this window")
        elif covariates is not None:
            raise ValueError("covariates: this map model was fitted without 1 km covariates")
        step = max(1, int(strip_pixels) // n_cols)
        for r0 in range(0, n_rows, step):
            r1 = min(n_rows, r0 + step)
            zf = self._strip_scores(emb, sc, r0, r1).reshape(-1, c)
            if cov is not None:
                zf = np.concatenate([zf, cov[r0:r1].reshape(-1, cov.shape[2])], axis=1)
            ok = np.isfinite(zf).all(axis=1)
            if ok.any():
                pred = self._regress(np.ascontiguousarray(zf[ok]), num_threads)
                strip = out[r0:r1].reshape(-1)
                strip[ok] = self._output(pred, output)
        return out

    def window_scores(self, embedding: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """PCA scores ``(H, W, n_components)`` of every interior pixel's patch in a window.

        The projection :meth:`predict_window` feeds its regressor, returned
        instead of the prediction (the area of applicability measures
        distances in it). Float32; NaN where the patch is incomplete.
        """
        emb, sc = self._checked_window(embedding, scale)
        h = self.spec.patch_size // 2
        n_rows, n_cols = emb.shape[0] - 2 * h, emb.shape[1] - 2 * h
        if n_rows <= 0 or n_cols <= 0:
            return np.full((max(n_rows, 0), max(n_cols, 0), self._bias.shape[0]), np.nan,
                           np.float32)
        return self._strip_scores(emb, sc, 0, n_rows)

    def _checked_window(self, embedding: np.ndarray, scale: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
        """The window's embedding and float32 scale, checked against the model."""
        self._check_fitted()
        d = self.spec.embedding_dim
        emb = np.asarray(embedding)
        sc = np.asarray(scale, dtype=np.float32)
        if emb.ndim != 3 or emb.shape[2] != d:
            raise ValueError(
                f"embedding: expected (rows, cols, {d}) for this model's {d}-dimensional "
                f"embeddings, got shape {emb.shape}"
            )
        if sc.shape != emb.shape[:2]:
            raise ValueError(f"scale: shape {sc.shape} does not match the embedding's {emb.shape[:2]}")
        return emb, sc

    def _strip_scores(self, emb: np.ndarray, sc: np.ndarray, r0: int, r1: int) -> np.ndarray:
        """PCA scores ``(r1 - r0, W, C)`` of output rows ``r0:r1`` (the shift-and-add projection)."""
        k, d = self.spec.patch_size, self.spec.embedding_dim
        h = k // 2
        wp = emb.shape[1]
        n_cols, nr = wp - 2 * h, r1 - r0
        c = self._bias.shape[0]
        e = emb[r0 : r1 + 2 * h].reshape(-1, d)
        s = sc[r0 : r1 + 2 * h]
        s = np.where(np.isfinite(s), s, np.float32(np.nan))
        q = (e.astype(np.float32) @ self._window_w).reshape(nr + 2 * h, wp, k * k, c)
        q *= s[:, :, None, None]
        z = q[0:nr, 0:n_cols, 0].copy()
        for a in range(k):
            for b in range(k):
                if a or b:
                    z += q[a : a + nr, b : b + n_cols, a * k + b]
        z -= self._bias
        return z

    # ------------------------------------------------------------- checks
    def check_embeddings(
        self, *, embedding_dim: int, encoder: str | None = None, patch_size: int | None = None,
        where: str = "embeddings",
    ) -> None:
        """Refuse embeddings this model was not fitted for, naming both sides.

        Examples
        --------
        >>> rng = np.random.default_rng(0)
        >>> m = MapModel("ridge", n_components=2).fit(rng.normal(size=(50, 72)), np.ones(50) + rng.random(50),
        ...                                           encoder="enc-a", embedding_dim=8)
        >>> m.check_embeddings(embedding_dim=16, encoder="enc-a")
        Traceback (most recent call last):
        ...
        ValueError: embeddings do not match the map model: embedding_dim: model 8, embeddings 16
        """
        self._check_fitted()
        theirs = {"embedding_dim": int(embedding_dim)}
        if encoder is not None:
            theirs["encoder"] = str(encoder)
        if patch_size is not None:
            theirs["patch_size"] = int(patch_size)
        diffs = {
            k: (getattr(self.spec, k), v) for k, v in theirs.items() if getattr(self.spec, k) != v
        }
        if diffs:
            raise ValueError(
                f"{where} do not match the map model: {_describe(diffs, 'model', where)}"
            )

    # ------------------------------------------------------------ save/load
    def metadata(self) -> dict[str, Any]:
        """Everything :meth:`save` writes to ``meta.json``."""
        self._check_fitted()
        return {
            "format": "fungi_ssl.MapModel",
            "format_version": FORMAT_VERSION if self.covariate_columns else 1,
            "spec": self.spec.to_dict(),
            "fingerprint": self.fingerprint,
            "versions": dict(self.versions),
            "embeddings": {"encoder": self.spec.encoder,
                           "tessera_dataset_version": self.tessera_dataset_version},
            "n_samples": self.n_samples,
            "n_dropped": self.n_dropped,
            "settings": self.settings,
            "init": {"model": self.model, "n_components": self.n_components, "seed": self.seed,
                     "model_params": {k: _plain(v) for k, v in self.model_params.items()},
                     "val_size": self.val_size, "n_jobs": self.n_jobs},
        }

    @property
    def tessera_dataset_version(self) -> str | None:
        """The TESSERA dataset version of the embeddings the model was fitted on.

        ``"v1"`` for a model fitted on a geotessera download that records
        ``dataset_version: v1``; None for the book's own encoder, or for
        tiles that record no version (their encoder is then
        ``"tessera:unknown-version"``, :func:`fungi_ssl.tessera.version_signature`).
        ``meta.json`` holds it under ``embeddings``.
        """
        self._check_fitted()
        enc = self.spec.encoder
        if not enc.startswith("tessera:"):
            return None
        version = enc.split(":", 1)[1]
        return None if version == "unknown-version" else version

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the model to one file (see the module docstring), atomically.

        Raises
        ------
        FileNotFoundError
            If the folder of ``path`` does not exist.
        FileExistsError
            If ``path`` exists and ``overwrite`` is False.
        """
        import skops.io as sio

        self._check_fitted()
        path = Path(path)
        if not path.parent.is_dir():
            raise FileNotFoundError(f"MapModel.save: folder {path.parent} does not exist")
        if path.exists() and not overwrite:
            raise FileExistsError(f"MapModel.save: {path} exists; pass overwrite=True to replace it")
        blob = sio.dumps({"pca": self.pca_, "regressor": self.regressor_})
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                zf.writestr("meta.json", json.dumps(self.metadata(), indent=1))
                zf.writestr("model.skops", blob)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path

    @classmethod
    def read_metadata(cls, path: str | Path) -> dict[str, Any]:
        """``meta.json`` of a saved model, without deserialising any object."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"MapModel.load: no model file at {path}")
        try:
            with zipfile.ZipFile(path) as zf:
                meta = json.loads(zf.read("meta.json"))
        except (zipfile.BadZipFile, KeyError, ValueError) as err:
            raise ValueError(
                f"MapModel.load: {path} is not a map model saved by MapModel.save ({err})"
            ) from None
        if meta.get("format") != "fungi_ssl.MapModel":
            raise ValueError(f"MapModel.load: {path} is not a map model saved by MapModel.save")
        return meta

    @classmethod
    def load(
        cls, path: str | Path, *, expect: FeatureSpec | None = None, check_versions: bool = True
    ) -> MapModel:
        """Load a model saved by :meth:`save`, checking versions and feature spec first.

        Parameters
        ----------
        path : str or Path
        expect : FeatureSpec, optional
            The feature spec the caller's embeddings have; a difference raises.
        check_versions : bool
            Refuse a model saved under another compatible series
            (:func:`compatible_series`: the major version, or ``0.y``) of
            fungi_ssl, scikit-learn or the regressor's library (LightGBM,
            XGBoost); warn in one line on another minor version of them, or
            on another series of numpy or skops (:func:`version_check`). A model refitted under the
            current versions is the safe fix; pass False to load it anyway,
            at your own risk.

        Raises
        ------
        ValueError
            One message naming both sides of every mismatch (versions, then
            feature spec), or a file that is not a map model.

        Warns
        -----
        UserWarning
            One line naming the versions that differ but are compatible.
        """
        import skops.io as sio

        path = Path(path)
        meta = cls.read_metadata(path)
        if int(meta.get("format_version", -1)) not in READABLE_FORMATS:
            raise ValueError(
                f"MapModel.load: {path} has file format version {meta.get('format_version')}, "
                f"this fungi_ssl reads versions {', '.join(map(str, READABLE_FORMATS))}"
            )
        problems = []
        minor_note = ""
        if check_versions:
            model_name = meta.get("init", {}).get("model")
            here = package_versions(model_name if model_name in REGRESSOR_LIBRARY else None)
            refuse, minor_note = version_check(meta.get("versions", {}), here)
            if refuse:
                problems.append("versions differ (a model loads under the same major version, "
                                "or the same 0.y): " + refuse)
        spec = FeatureSpec.from_dict(meta["spec"])
        if expect is not None:
            diffs = spec.differences(expect)
            if diffs:
                problems.append("feature spec differs: " + _describe(diffs, "model", "expected"))
        if problems:
            raise ValueError(
                f"MapModel.load: {path} cannot be used here: " + "; and ".join(problems)
                + (". Refit the model here, or pass check_versions=False to load it anyway"
                   if check_versions and any(p.startswith("versions") for p in problems) else "")
            )
        if minor_note:
            warnings.warn(f"MapModel.load: {path} was saved under other compatible versions "
                          f"({minor_note}); its predictions should be unchanged, and a refit "
                          "here makes sure", UserWarning, stacklevel=2)
        with zipfile.ZipFile(path) as zf:
            blob = zf.read("model.skops")
        untrusted = set(sio.get_untrusted_types(data=blob))
        unknown = sorted(untrusted - _TRUSTED_TYPES)
        if unknown:
            raise ValueError(
                f"MapModel.load: {path} holds types outside the allow-list: {unknown}; "
                "refusing to load them"
            )
        objs = sio.loads(blob, trusted=sorted(untrusted))
        init = meta["init"]
        self = cls(init["model"], n_components=init["n_components"], seed=init["seed"],
                   model_params=init["model_params"], val_size=init["val_size"],
                   n_jobs=init["n_jobs"])
        self.spec = spec
        self.fingerprint = meta["fingerprint"]
        self.versions = dict(meta["versions"])
        self.n_samples = int(meta["n_samples"])
        self.n_dropped = int(meta["n_dropped"])
        self.settings = meta["settings"]
        self.pca_ = objs["pca"]
        self.regressor_ = objs["regressor"]
        self._prepare()
        return self

    def __repr__(self) -> str:
        if not hasattr(self, "regressor_"):
            return f"MapModel({self.model!r}, unfitted)"
        cov = (f" + {len(self.covariate_columns)} 1 km covariates" if self.covariate_columns
               else "")
        return (
            f"MapModel({self.model!r}, {self.spec.patch_size}×{self.spec.patch_size}×"
            f"{self.spec.embedding_dim} → PCA {self.pca_.n_components_}{cov}, "
            f"{self.n_samples} samples, encoder {self.spec.encoder[:12]})"
        )


# --------------------------------------------------------------------------
# A fast, exact walker of tree ensembles
# --------------------------------------------------------------------------
_ROWS_AT_ONCE = 8


def _walk_trees(X, feature, threshold, child, value, roots, depths, out):  # pragma: no cover - jitted
    """Add each tree's leaf value to ``out`` (numba kernel; see :class:`FlatTrees`)."""
    n = X.shape[0]
    b = 8  # _ROWS_AT_ONCE (a literal, so numba unrolls)
    nodes = np.empty(b, np.int64)
    for t in range(roots.shape[0]):
        root = roots[t]
        depth = depths[t]
        for i0 in range(0, n - b + 1, b):
            for k in range(b):
                nodes[k] = root
            for _ in range(depth):
                for k in range(b):
                    nd = nodes[k]
                    nodes[k] = child[2 * nd + (X[i0 + k, feature[nd]] > threshold[nd])]
            for k in range(b):
                out[i0 + k] += value[nodes[k]]
        for i in range(n - n % b, n):
            nd = root
            for _ in range(depth):
                nd = child[2 * nd + (X[i, feature[nd]] > threshold[nd])]
            out[i] += value[nd]
    return out


_KERNEL: Any = None


def _kernel() -> Any:
    global _KERNEL
    if _KERNEL is None:
        import numba

        _KERNEL = numba.njit(nogil=True, cache=True)(_walk_trees)
    return _KERNEL


class FlatTrees:
    """A tree ensemble as flat arrays, walked by a numba kernel.

    Every tree becomes nodes with a feature, a threshold and two children;
    leaves point to themselves, so each row takes exactly ``depth`` steps
    through its tree and the step ``node = child[2·node + (x > threshold)]``
    needs no branch. Eight rows go through a tree together.

    Exactness: LightGBM sends a row left when ``double(x) <= threshold``
    (a double). For float32 rows the kernel compares with the largest
    float32 not above the threshold, which gives the same decision for
    every float32 ``x``; float64 rows use the double thresholds.
    scikit-learn's trees first cast every row to float32 and then compare
    with their double threshold, so a forest (``float32_input=True``) casts
    float64 rows to float32 as well: a float64 value one ULP above a
    threshold that rounds down to it goes left there, as in scikit-learn.
    Rows must be finite (the map code never passes NaN).

    Build with :meth:`from_model`, which returns None for what it cannot
    read: categorical or linear trees, zero-as-missing splits, multi-output
    forests.

    Examples
    --------
    >>> import lightgbm
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(500, 4)); y = X[:, 0] + np.sin(X[:, 1])
    >>> m = lightgbm.LGBMRegressor(n_estimators=30, verbose=-1).fit(X, y)
    >>> flat = FlatTrees.from_model(m)
    >>> Z = rng.normal(size=(100, 4)).astype(np.float32)
    >>> bool(np.array_equal(flat.predict(Z), m.booster_.predict(Z)))
    True
    """

    def __init__(self, feature, threshold, child, value, roots, depths, *, mean: bool,
                 base: float = 0.0, float32_input: bool = False) -> None:
        self.feature = np.ascontiguousarray(feature, np.int64)
        self.threshold64 = np.ascontiguousarray(threshold, np.float64)
        t32 = self.threshold64.astype(np.float32)
        over = t32.astype(np.float64) > self.threshold64
        t32[over] = np.nextafter(t32[over], np.float32(-np.inf))
        self.threshold32 = t32
        self.child = np.ascontiguousarray(child, np.int64)
        self.value = np.ascontiguousarray(value, np.float64)
        self.roots = np.ascontiguousarray(roots, np.int64)
        self.depths = np.ascontiguousarray(depths, np.int64)
        self.mean = bool(mean)
        self.base = float(base)
        self.float32_input = bool(float32_input)

    @property
    def n_trees(self) -> int:
        return int(self.roots.shape[0])

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predictions for finite rows ``X`` (float32 or float64; float32 for a forest)."""
        X = np.asarray(X)
        if self.float32_input:  # scikit-learn's trees see float32 rows
            X = X.astype(np.float32, copy=False)
        elif X.dtype != np.float32:
            X = X.astype(np.float64, copy=False)
        X = np.ascontiguousarray(X)
        thr = self.threshold32 if X.dtype == np.float32 else self.threshold64
        out = np.zeros(X.shape[0], np.float64)
        _kernel()(X, self.feature, thr, self.child, self.value, self.roots, self.depths, out)
        if self.mean and self.n_trees:
            out /= self.n_trees
        return out + self.base if self.base else out

    @classmethod
    def from_model(cls, model: Any) -> FlatTrees | None:
        """Flatten a fitted ``LGBMRegressor`` or ``RandomForestRegressor`` (else None)."""
        try:
            import lightgbm

            if isinstance(model, lightgbm.LGBMRegressor):
                return cls._from_lightgbm(model.booster_)
        except ImportError:  # pragma: no cover
            pass
        from sklearn.ensemble import RandomForestRegressor

        if isinstance(model, RandomForestRegressor):
            return cls._from_forest(model)
        return None

    @classmethod
    def _from_lightgbm(cls, booster: Any) -> FlatTrees | None:
        dump = booster.dump_model()
        if dump.get("num_class", 1) != 1:
            return None
        feat: list[int] = []
        thr: list[float] = []
        kids: list[int] = []
        val: list[float] = []
        roots: list[int] = []
        depths: list[int] = []
        for tree in dump["tree_info"]:
            if tree.get("is_linear"):
                return None
            root = len(feat)
            stack = [(tree["tree_structure"], len(feat), 0)]
            feat.append(0), thr.append(0.0), kids.extend((0, 0)), val.append(0.0)
            depth = 0
            while stack:
                node, idx, d = stack.pop()
                if "leaf_value" in node:
                    thr[idx] = math.inf
                    kids[2 * idx] = kids[2 * idx + 1] = idx
                    val[idx] = float(node["leaf_value"])
                    depth = max(depth, d)
                    continue
                if node.get("decision_type") != "<=" or node.get("missing_type") == "Zero":
                    return None
                feat[idx] = int(node["split_feature"])
                thr[idx] = float(node["threshold"])
                for side, key in ((0, "left_child"), (1, "right_child")):
                    j = len(feat)
                    feat.append(0), thr.append(0.0), kids.extend((0, 0)), val.append(0.0)
                    kids[2 * idx + side] = j
                    stack.append((node[key], j, d + 1))
            roots.append(root)
            depths.append(depth)
        return cls(feat, thr, kids, val, roots, depths, mean=bool(dump.get("average_output")))

    @classmethod
    def _from_forest(cls, forest: Any) -> FlatTrees | None:
        if getattr(forest, "n_outputs_", 1) != 1:
            return None
        feat, thr, kids, val, roots, depths = [], [], [], [], [], []
        offset = 0
        for est in forest.estimators_:
            t = est.tree_
            n = t.node_count
            left, right = t.children_left.astype(np.int64), t.children_right.astype(np.int64)
            leaf = left < 0
            idx = np.arange(n, dtype=np.int64)
            f = np.where(leaf, 0, t.feature).astype(np.int64)
            th = np.where(leaf, np.inf, t.threshold)
            lc = np.where(leaf, idx, left) + offset
            rc = np.where(leaf, idx, right) + offset
            feat.append(f), thr.append(th), val.append(t.value[:, 0, 0].astype(np.float64))
            kids.append(np.stack([lc, rc], axis=1).reshape(-1))
            roots.append(offset)
            depths.append(int(t.max_depth))
            offset += n
        if not feat:
            return None
        return cls(np.concatenate(feat), np.concatenate(thr), np.concatenate(kids),
                   np.concatenate(val), roots, depths, mean=True, float32_input=True)


def _plain(v: Any) -> Any:
    """A JSON-safe version of a parameter value."""
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v

