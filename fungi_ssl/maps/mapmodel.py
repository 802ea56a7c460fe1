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

It records its :class:`~fungi_ssl.maps.modelspec.FeatureSpec` (embedding dimension, patch size, the
encoder's signature, the predictor columns), the fingerprint of the training
table, the TESSERA dataset version of the embeddings (when they are TESSERA
tiles) and the versions of every library whose objects the file holds:
``fungi_ssl``, scikit-learn (the PCA), the regressor's library (LightGBM,
XGBoost or scikit-learn), skops and numpy (:func:`~fungi_ssl.maps.modelspec.package_versions`).

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
(:class:`~fungi_ssl.maps.flattrees.FlatTrees`) that gives the same numbers as LightGBM's and
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
difference gives a one-line warning (:func:`~fungi_ssl.maps.modelspec.version_check`). Why skops
and not pickle or joblib: unpickling executes whatever code the file names,
so a model file from someone else is a program you run; skops only
reconstructs an allow-list of types and refuses anything else, so loading a
map model shared with you is safe. And because the metadata is plain JSON,
:meth:`MapModel.load` checks versions and the feature spec before it
deserialises any object, so a mismatch gives one message naming both sides
instead of an error deep inside scikit-learn or LightGBM. A
``blend`` or ``product_deviations`` model (:mod:`fungi_ssl.maps.composite`) holds two
such files in one (format 3, :meth:`MapModel.to_bytes`), which
:meth:`MapModel.load` refuses with one line naming
:func:`~fungi_ssl.maps.composite.load_map_model`.
"""

from __future__ import annotations

import json
import math
import os
import uuid
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from fungi_ssl.maps.flattrees import FlatTrees
from fungi_ssl.maps.modelspec import (
    REGRESSOR_LIBRARY,
    FeatureSpec,
    _describe,
    _patch_column_names,
    encoder_signature,
    package_versions,
    table_fingerprint,
    version_check,
)
from fungi_ssl.predictors.features import EMBEDDING_DIM, SSL_PREFIX, PatchReducer, patch_layout
from fungi_ssl.validation.models import MODEL_NAMES, fit_model, make_model
from fungi_ssl.validation.pipelines import BOOK_MODEL_PARAMS, SSL_COMPONENTS

__all__ = [
    "COVARIATE_RULE",
    "FORMAT_VERSION",
    "MapModel",
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
Output = Literal["richness", "log_richness"]
#: How a 10 m pixel gets the 1 km covariates of the product model (as chapter 06 maps it).
COVARIATE_RULE = "the value of the 1 km cell holding the pixel's centre (nearest cell)"


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
            The encoder that made the embeddings (see :func:`~fungi_ssl.maps.modelspec.encoder_signature`);
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
        self._check_fitted()
        path = Path(path)
        if not path.parent.is_dir():
            raise FileNotFoundError(f"MapModel.save: folder {path.parent} does not exist")
        if path.exists() and not overwrite:
            raise FileExistsError(f"MapModel.save: {path} exists; pass overwrite=True to replace it")
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            tmp.write_bytes(self.to_bytes())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path

    def to_bytes(self) -> bytes:
        """The file :meth:`save` writes, as bytes (a composite model holds two of them)."""
        import io

        import skops.io as sio

        self._check_fitted()
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("meta.json", json.dumps(self.metadata(), indent=1))
            zf.writestr("model.skops", sio.dumps({"pca": self.pca_, "regressor": self.regressor_}))
        return buf.getvalue()

    @classmethod
    def read_metadata(cls, path: str | Path) -> dict[str, Any]:
        """``meta.json`` of a saved model, without deserialising any object."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"MapModel.load: no model file at {path}")
        return _zip_metadata(path, path)

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
            on another series of numpy or skops (:func:`~fungi_ssl.maps.modelspec.version_check`). A model refitted under the
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
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"MapModel.load: no model file at {path}")
        return cls.from_bytes(path.read_bytes(), label=path, expect=expect,
                              check_versions=check_versions)

    @classmethod
    def from_bytes(cls, data: bytes, *, label: str | Path = "model", expect: FeatureSpec | None = None,
                   check_versions: bool = True) -> MapModel:
        """:meth:`load` from the bytes of a model file (:meth:`to_bytes`); ``label`` names it in messages."""
        import io

        import skops.io as sio

        path = label
        meta = _zip_metadata(io.BytesIO(data), label)
        if meta.get("kind", "single") != "single":
            raise ValueError(
                f"MapModel.load: {path} is a {meta['kind']} model (two map models in one file); "
                "load it with fungi_ssl.maps.composite.load_map_model"
            )
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
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
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


def _zip_metadata(source: Any, label: str | Path) -> dict[str, Any]:
    """``meta.json`` of a model file (a path or a file object), checked to be one."""
    try:
        with zipfile.ZipFile(source) as zf:
            meta = json.loads(zf.read("meta.json"))
    except (zipfile.BadZipFile, KeyError, ValueError) as err:
        raise ValueError(
            f"MapModel.load: {label} is not a map model saved by MapModel.save ({err})"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != "fungi_ssl.MapModel":
        raise ValueError(f"MapModel.load: {label} is not a map model saved by MapModel.save")
    return meta


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
