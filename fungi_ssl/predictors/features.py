"""Predictor sets: which columns a model sees, and how SSL patches are reduced.

Predictor groups are chosen by **column prefix**, so the same code reads the
simulated study and the real SPUN covariate table (see ``CONTRIBUTING.md``):

============== =========================================================== ==========
group          column prefixes                                             in ``all``
============== =========================================================== ==========
``ssl``        ``ssl_`` (the k×k×128 TESSERA patch, or its reduction)      yes
``climate``    ``CHELSA_``, ``CGIAR_``                                     yes
``soil``       ``SG_``, ``PelletierEtAl_``                                 yes
``landcover``  ``ConsensusLandCover`` (class % cover, human development)   yes
``topography`` ``EarthEnvTopoMed_``                                        yes
``vegetation`` ``EarthEnvTexture_``, ``GlobBiomass_``, ``MODIS_``          yes
``other``      ``EsaCci_``, ``GHS_``, ``GlobPermafrost_``, ``Resolve_``    yes
``coords``     ``longitude``, ``latitude``, ``Pixel_Long``, ``Pixel_Lat``  no
============== =========================================================== ==========

``topography``, ``vegetation`` and ``other`` hold the remaining real SPUN
covariates (elevation and slope; EVI texture, biomass and NPP; burnt area,
population, permafrost and biome code), so that none of them silently joins
another group. Columns that match no prefix (``sample_id``, the target
``ECM_diversity`` or ``rarefied``, ``CV_Fold``) are never predictors.

A *predictor set* is a group name, a ``+``-joined combination
(``"ssl+climate"``), a list of names, or one of the aliases

* ``"all"``: every group present in the table except ``coords`` (the study
  appended coordinates only optionally: ask for ``"all+coords"``);
* ``"covariates"``: every 1 km covariate group, i.e. ``all`` without ``ssl``
  (what the SPUN 1 km maps use).

SSL patch features (``ssl_0000`` … ``ssl_1151``, a 3×3×128 patch in
(row, col, dim) order) are reduced by :class:`PatchReducer`, an sklearn
transformer that must be fitted inside each training fold.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import PCA

#: Group name -> column prefixes (matched case-sensitively, in this order).
PREDICTOR_GROUPS: dict[str, tuple[str, ...]] = {
    "ssl": ("ssl_",),
    "climate": ("CHELSA_", "CGIAR_"),
    "soil": ("SG_", "PelletierEtAl_"),
    "landcover": ("ConsensusLandCover",),
    "topography": ("EarthEnvTopoMed_",),
    "vegetation": ("EarthEnvTexture_", "GlobBiomass_", "MODIS_"),
    "other": ("EsaCci_", "GHS_", "GlobPermafrost_", "Resolve_"),
    "coords": ("longitude", "latitude", "Pixel_Long", "Pixel_Lat"),
}

#: Aliases for several groups at once (see the module docstring).
PREDICTOR_ALIASES: dict[str, tuple[str, ...]] = {
    "all": tuple(g for g in PREDICTOR_GROUPS if g != "coords"),
    "covariates": tuple(g for g in PREDICTOR_GROUPS if g not in ("coords", "ssl")),
}

#: Dimensions of one TESSERA embedding pixel.
EMBEDDING_DIM = 128

#: Prefix of the SSL patch columns.
SSL_PREFIX = "ssl_"

#: Prefix given to land-cover one-hot columns (the SPUN class-fraction prefix).
LANDCOVER_PREFIX = "ConsensusLandCoverClass_"


def group_of(column: str) -> str | None:
    """The predictor group a column belongs to, or ``None`` if it is no predictor.

    Examples
    --------
    >>> group_of("CHELSA_BIO_Annual_Precipitation"), group_of("ssl_0004"), group_of("rarefied")
    ('climate', 'ssl', None)
    """
    for group, prefixes in PREDICTOR_GROUPS.items():
        if column.startswith(prefixes):
            return group
    return None


def group_columns(columns: Sequence[str] | pd.Index, group: str) -> list[str]:
    """Columns of ``columns`` that belong to one predictor group, in their order.

    Parameters
    ----------
    columns : sequence of str
        Column names, e.g. ``table.columns``.
    group : str
        A key of :data:`PREDICTOR_GROUPS`.

    Returns
    -------
    list of str
        The matching columns (possibly empty).

    Examples
    --------
    >>> group_columns(["SG_SOC_Content_005cm", "CHELSA_BIO_Annual_Precipitation", "x"], "soil")
    ['SG_SOC_Content_005cm']
    """
    if group not in PREDICTOR_GROUPS:
        raise ValueError(f"group must be one of {list(PREDICTOR_GROUPS)}, got {group!r}")
    return [str(c) for c in columns if group_of(str(c)) == group]


def column_groups(columns: Sequence[str] | pd.Index) -> dict[str, str]:
    """Map every predictor column to its group; non-predictor columns are left out.

    Examples
    --------
    >>> column_groups(["ssl_pca_00", "SG_Sand_Content_005cm", "sample_id"])
    {'ssl_pca_00': 'ssl', 'SG_Sand_Content_005cm': 'soil'}
    """
    out: dict[str, str] = {}
    for c in columns:
        g = group_of(str(c))
        if g is not None:
            out[str(c)] = g
    return out


def parse_predictor_set(sets: str | Sequence[str]) -> list[str]:
    """Expand a predictor-set name, combination or list into group names.

    Aliases (``all``, ``covariates``) expand to their groups; duplicates are
    dropped and the order of first mention is kept.

    Examples
    --------
    >>> parse_predictor_set("ssl+climate")
    ['ssl', 'climate']
    >>> parse_predictor_set(["soil", "climate+soil"])
    ['soil', 'climate']
    """
    if isinstance(sets, str):
        names = [sets]
    elif isinstance(sets, Sequence) and all(isinstance(s, str) for s in sets):
        names = list(sets)
    else:
        raise ValueError(
            f"sets must be a predictor-set name such as 'ssl+climate' or a list of "
            f"names, got {sets!r}"
        )
    groups: list[str] = []
    for name in names:
        for part in name.split("+"):
            part = part.strip()
            if part in PREDICTOR_ALIASES:
                expanded = PREDICTOR_ALIASES[part]
            elif part in PREDICTOR_GROUPS:
                expanded = (part,)
            else:
                raise ValueError(
                    f"unknown predictor set {part!r} in sets={sets!r}; available groups: "
                    f"{list(PREDICTOR_GROUPS)}, aliases: {list(PREDICTOR_ALIASES)}"
                )
            groups.extend(g for g in expanded if g not in groups)
    if not groups:
        raise ValueError(f"sets={sets!r} names no predictor group")
    return groups


@dataclass
class PredictorSelection:
    """The columns of one predictor set and the group of each.

    Unpacks like a tuple: ``columns, groups = select_predictors(table, "all")``.

    Attributes
    ----------
    columns : list of str
        Predictor columns, grouped in the order the groups were asked for.
    column_groups : dict
        Column name -> group name.
    groups : list of str
        The groups that contributed columns, in order.
    """

    columns: list[str]
    column_groups: dict[str, str]
    groups: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator:
        yield self.columns
        yield self.column_groups

    def split(self, table: pd.DataFrame) -> dict[str, pd.DataFrame]:
        """One DataFrame per group (the ``X_groups`` of commonality analysis).

        Examples
        --------
        >>> t = pd.DataFrame({"SG_SOC_Content_005cm": [1.0], "CGIAR_PET": [2.0]})
        >>> sorted(select_predictors(t, "all").split(t))
        ['climate', 'soil']
        """
        missing = [c for c in self.columns if c not in table.columns]
        if missing:
            raise ValueError(f"table lacks the selected predictor columns {missing[:5]}")
        return {
            g: table[[c for c in self.columns if self.column_groups[c] == g]] for g in self.groups
        }


def select_predictors(table: pd.DataFrame, sets: str | Sequence[str]) -> PredictorSelection:
    """Choose the predictor columns of a set from a table.

    Parameters
    ----------
    table : pandas.DataFrame
        Covariates and/or SSL features (other columns are ignored).
    sets : str or list of str
        A group (``"ssl"``, ``"climate"``, ``"soil"``, ``"landcover"``, …), an
        alias (``"all"``, ``"covariates"``), a ``+`` combination
        (``"ssl+climate"``) or a list of these.

    Returns
    -------
    PredictorSelection
        ``columns`` and ``column_groups`` (unpackable as a pair).

    Raises
    ------
    ValueError
        For an unknown set name, or when a group asked for by name (or a whole
        alias) has no column in the table; the message lists the groups the
        table does have. Groups reached only through an alias may be absent.

    Examples
    --------
    >>> t = pd.DataFrame(columns=["sample_id", "ssl_0000", "ssl_0001", "CGIAR_PET", "SG_Sand_Content_005cm"])
    >>> cols, groups = select_predictors(t, "ssl+climate")
    >>> cols
    ['ssl_0000', 'ssl_0001', 'CGIAR_PET']
    >>> select_predictors(t, "all").groups
    ['ssl', 'climate', 'soil']
    """
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table must be a pandas DataFrame, got {type(table).__name__}")
    requested = parse_predictor_set(sets)
    explicit: set[str] = set()
    for name in [sets] if isinstance(sets, str) else sets:
        explicit.update(p.strip() for p in name.split("+") if p.strip() in PREDICTOR_GROUPS)
    present = {g: group_columns(table.columns, g) for g in PREDICTOR_GROUPS}
    available = [g for g, cols in present.items() if cols]
    for g in requested:
        if g in explicit and not present[g]:
            raise ValueError(
                f"predictor set {g!r} (from sets={sets!r}) has no columns in the table "
                f"(prefixes {PREDICTOR_GROUPS[g]}); groups available: {available}"
            )
    columns: list[str] = []
    mapping: dict[str, str] = {}
    groups: list[str] = []
    for g in requested:
        if present[g]:
            groups.append(g)
            columns.extend(present[g])
            mapping.update({c: g for c in present[g]})
    if not columns:
        raise ValueError(
            f"predictor set {sets!r} has no columns in the table; groups available: {available}"
        )
    return PredictorSelection(columns=columns, column_groups=mapping, groups=groups)


def landcover_one_hot(
    classes: pd.Series,
    categories: Sequence[str] | None = None,
    prefix: str = LANDCOVER_PREFIX,
) -> pd.DataFrame:
    """One-hot encode a land-cover class column into ``landcover`` group columns.

    Use this when a table has one class per sample (e.g. a 10 m class); when
    it already has class fractions (``ConsensusLandCoverClass_*`` % cover),
    use those columns as given: they are the ``landcover`` group already.

    Parameters
    ----------
    classes : pandas.Series
        Class label per sample (str or int); NaN gives an all-NaN row.
    categories : sequence of str, optional
        The full list of classes, so that train and test get the same columns.
        Default: the sorted classes seen in ``classes``.
    prefix : str
        Column prefix; the default puts the columns in the ``landcover`` group.

    Returns
    -------
    pandas.DataFrame
        Float 0/1 indicator columns ``{prefix}{class}``, same index as ``classes``.

    Examples
    --------
    >>> oh = landcover_one_hot(pd.Series(["conifer", "heath"]), categories=["conifer", "grassland", "heath"])
    >>> list(oh.columns)
    ['ConsensusLandCoverClass_conifer', 'ConsensusLandCoverClass_grassland', 'ConsensusLandCoverClass_heath']
    >>> oh.to_numpy().tolist()
    [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    """
    if not isinstance(classes, pd.Series):
        raise TypeError(f"classes must be a pandas Series, got {type(classes).__name__}")
    if group_of(prefix + "x") != "landcover":
        raise ValueError(
            f"prefix {prefix!r} would not put the columns in the landcover group; "
            f"use a prefix starting with {PREDICTOR_GROUPS['landcover']}"
        )
    observed = classes.dropna().astype(str)
    cats = sorted(observed.unique()) if categories is None else [str(c) for c in categories]
    unknown = sorted(set(observed) - set(cats))
    if unknown:
        raise ValueError(f"classes {unknown} of {classes.name!r} are not in categories {cats}")
    labels = classes.astype("string")
    out = pd.DataFrame(
        {f"{prefix}{c}": (labels == c).astype("float64") for c in cats}, index=classes.index
    )
    out.loc[classes.isna()] = np.nan
    return out


# --------------------------------------------------------------------------
# SSL patch reduction
# --------------------------------------------------------------------------

_SSL_NUMBERED = re.compile(rf"^{SSL_PREFIX}(\d+)$")


def patch_layout(n_columns: int, dim: int = EMBEDDING_DIM) -> int:
    """Side ``k`` of the k×k patch behind ``n_columns = k*k*dim`` SSL columns.

    Examples
    --------
    >>> patch_layout(1152)
    3
    """
    k = round(float(np.sqrt(n_columns / dim)))
    if n_columns <= 0 or k * k * dim != n_columns:
        raise ValueError(
            f"expected k*k*{dim} SSL patch columns ({SSL_PREFIX}0000 …), got {n_columns}"
        )
    return k


class PatchReducer(TransformerMixin, BaseEstimator):
    """Reduce the SSL patch columns, leaving every other column untouched.

    Fit it inside each training fold only (put it first in a
    :class:`sklearn.pipeline.Pipeline`, or pass the class, or a
    ``functools.partial`` of it, as a ``feature_transform`` factory), so that
    no test-fold sample shapes the projection.

    Two choices, applied in order:

    1. ``pixels``: which part of the k×k×128 patch to use:
       ``"patch"`` (all k²·128 values), ``"centre"`` (the 128 values of the
       centre pixel) or ``"mean"`` (the 128-d mean over the k² pixels).
    2. ``method``: ``"pca"`` (default), ``"umap"`` (needs the optional
       ``umap-learn``: ``pip install fungi-ssl[umap]``) or ``"none"`` (keep
       the 128 / k²·128 values).

    Output columns keep the ``ssl_`` prefix (``ssl_pca_00``, ``ssl_umap_00``,
    ``ssl_centre_000``, ``ssl_mean_000``, or the input names for
    ``pixels="patch", method="none"``), so that they stay in the ``ssl``
    group. Non-SSL columns come first, in their input order. Rows whose
    embedding is missing (any NaN in the SSL columns) are left out of the fit
    and come out as NaN, which LightGBM handles. A table with no SSL column
    passes through unchanged, so the same pipeline serves every predictor set.

    Parameters
    ----------
    n_components : int
        Components kept by PCA/UMAP (capped by the samples and columns there are).
    method : {"pca", "umap", "none"}
    pixels : {"patch", "centre", "mean"}
    dim : int
        Embedding dimensions per pixel (128 for TESSERA).
    seed : int
        Seed of the randomised PCA solver and of UMAP.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = pd.DataFrame(rng.normal(size=(50, 1152)), columns=[f"ssl_{i:04d}" for i in range(1152)])
    >>> X["CGIAR_PET"] = 1.0
    >>> out = PatchReducer(n_components=4).fit_transform(X)
    >>> list(out.columns)
    ['CGIAR_PET', 'ssl_pca_00', 'ssl_pca_01', 'ssl_pca_02', 'ssl_pca_03']
    """

    def __init__(
        self,
        n_components: int = 32,
        method: Literal["pca", "umap", "none"] = "pca",
        pixels: Literal["patch", "centre", "mean"] = "patch",
        dim: int = EMBEDDING_DIM,
        seed: int = 0,
    ) -> None:
        self.n_components = n_components
        self.method = method
        self.pixels = pixels
        self.dim = dim
        self.seed = seed

    # -- helpers -----------------------------------------------------------
    def _check_params(self) -> None:
        if self.method not in ("pca", "umap", "none"):
            raise ValueError(f"method must be 'pca', 'umap' or 'none', got {self.method!r}")
        if self.pixels not in ("patch", "centre", "mean"):
            raise ValueError(f"pixels must be 'patch', 'centre' or 'mean', got {self.pixels!r}")
        if self.method != "none" and (
            int(self.n_components) != self.n_components or self.n_components < 1
        ):
            raise ValueError(f"n_components must be a positive integer, got {self.n_components!r}")

    @staticmethod
    def _as_frame(X) -> pd.DataFrame:
        if isinstance(X, pd.DataFrame):
            return X
        arr = np.asarray(X, dtype=float)
        if arr.ndim != 2:
            raise ValueError(f"X must be a 2-D table, got shape {arr.shape}")
        # a bare array is taken to be the SSL patch alone, in (row, col, dim) order
        return pd.DataFrame(arr, columns=[f"{SSL_PREFIX}{i:04d}" for i in range(arr.shape[1])])

    def _ssl_columns(self, X: pd.DataFrame) -> list[str]:
        cols = [str(c) for c in X.columns if str(c).startswith(SSL_PREFIX)]
        if not cols:
            return []
        numbered = [_SSL_NUMBERED.match(c) for c in cols]
        if not all(numbered):
            bad = [c for c, m in zip(cols, numbered) if not m][:3]
            raise ValueError(
                f"SSL columns must be numbered {SSL_PREFIX}0000 … in (row, col, dim) order; "
                f"got {bad} (already reduced?)"
            )
        return sorted(cols, key=lambda c: int(c[len(SSL_PREFIX) :]))

    def _pixel_values(self, values: np.ndarray) -> np.ndarray:
        k = patch_layout(values.shape[1], self.dim)
        if self.pixels == "patch":
            return values
        cube = values.reshape(len(values), k * k, self.dim)
        if self.pixels == "centre":
            if k % 2 == 0:
                raise ValueError(f"pixels='centre' needs an odd patch side, got k={k}")
            return cube[:, (k // 2) * k + k // 2, :]
        return cube.mean(axis=1)

    # -- sklearn API -------------------------------------------------------
    def fit(self, X, y=None) -> PatchReducer:
        """Learn the reduction from the training rows of ``X``."""
        self._check_params()
        frame = self._as_frame(X)
        self.feature_names_in_ = np.asarray([str(c) for c in frame.columns], dtype=object)
        self.n_features_in_ = frame.shape[1]
        self.ssl_columns_ = self._ssl_columns(frame)
        self.other_columns_ = [c for c in self.feature_names_in_ if c not in set(self.ssl_columns_)]
        self.reducer_ = None
        if not self.ssl_columns_:
            self.ssl_names_out_ = []
            return self
        values = self._pixel_values(frame[self.ssl_columns_].to_numpy(dtype=float))
        ok = np.isfinite(values).all(axis=1)
        if self.method == "none":
            if self.pixels == "patch":
                self.ssl_names_out_ = list(self.ssl_columns_)
            else:
                self.ssl_names_out_ = [
                    f"{SSL_PREFIX}{self.pixels}_{i:03d}" for i in range(values.shape[1])
                ]
            return self
        train = values[ok]
        n_comp = int(min(self.n_components, values.shape[1], max(train.shape[0] - 1, 1)))
        if train.shape[0] < 2:
            raise ValueError(
                f"PatchReducer needs at least 2 rows with a complete SSL embedding to fit, "
                f"got {train.shape[0]}"
            )
        if self.method == "pca":
            self.reducer_ = PCA(n_components=n_comp, random_state=self.seed).fit(train)
        else:
            umap = _import_umap()
            self.reducer_ = umap.UMAP(n_components=n_comp, random_state=self.seed).fit(train)
        self.ssl_names_out_ = [f"{SSL_PREFIX}{self.method}_{i:02d}" for i in range(n_comp)]
        return self

    def transform(self, X) -> pd.DataFrame:
        """Reduce the SSL columns of ``X`` with the fitted projection."""
        if not hasattr(self, "ssl_names_out_"):
            raise ValueError("PatchReducer is not fitted yet: call fit on the training rows first")
        frame = self._as_frame(X)
        missing = [c for c in self.feature_names_in_ if c not in frame.columns]
        if missing:
            raise ValueError(f"X lacks columns seen in fit: {missing[:5]}")
        out = frame[self.other_columns_].copy()
        if not self.ssl_columns_:
            return out
        values = self._pixel_values(frame[self.ssl_columns_].to_numpy(dtype=float))
        if self.reducer_ is None:
            reduced = values
        else:
            ok = np.isfinite(values).all(axis=1)
            reduced = np.full((len(values), len(self.ssl_names_out_)), np.nan)
            if ok.any():
                reduced[ok] = self.reducer_.transform(values[ok])
        ssl = pd.DataFrame(reduced, index=frame.index, columns=self.ssl_names_out_)
        return pd.concat([out, ssl], axis=1)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """Names of the output columns: other columns, then the reduced SSL ones."""
        if not hasattr(self, "ssl_names_out_"):
            raise ValueError("PatchReducer is not fitted yet")
        return np.asarray(list(self.other_columns_) + list(self.ssl_names_out_), dtype=object)


def _import_umap():
    try:
        import umap
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "PatchReducer(method='umap') needs the optional package umap-learn: "
            "pip install fungi-ssl[umap]  (or use method='pca')"
        ) from err
    return umap


def groups_to_columns(mapping: Mapping[str, str]) -> dict[str, list[str]]:
    """Invert a column -> group mapping into group -> columns (order kept).

    Examples
    --------
    >>> groups_to_columns({"a": "soil", "b": "ssl", "c": "soil"})
    {'soil': ['a', 'c'], 'ssl': ['b']}
    """
    out: dict[str, list[str]] = {}
    for col, g in mapping.items():
        out.setdefault(g, []).append(col)
    return out
