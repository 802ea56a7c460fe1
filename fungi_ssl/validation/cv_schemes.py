"""Chapter 09's question: how much of a model's skill survives each kind of cross-validation.

One table of samples with 1 km covariates (the SPUN table, or any table in
its schema) is scored by the same models, on the same rows, under four
cross-validation (CV) schemes that differ only in how they deal the samples
to folds:

``random``
    random K-fold over samples (:class:`sklearn.model_selection.KFold`,
    shuffled): what a "random CV" R² means, and what the SPUN maps' about
    0.63 means;
``site_grouped``
    K-fold over sites (:class:`fungi_ssl.validation.cv.SiteGroupKFold`): the package's
    one definition of a site, samples joined by 25 m geodesic single linkage
    (:func:`fungi_ssl.data.sites.site_groups`), never split between folds;
``spatial_block``
    K-fold over 50 km squares in each site's UTM zone
    (:class:`fungi_ssl.validation.cv.BlockKFold`), sites kept whole;
``knndm``
    k-fold nearest-neighbour distance matching
    (:class:`fungi_ssl.validation.knndm.KNNDMKFold`, Linnenbrink et al. 2024), folds
    chosen so that test → train distances match the distances from the
    map's prediction locations to the samples; SPUN's about 0.29.

The folds are drawn once per scheme (:func:`scheme_folds`) and every model
and predictor set is scored on them (:func:`compare_cv_schemes`), so two
schemes' scores differ only by their folds. Each model has a fixed number of
trees (no early stopping), so nothing about the model changes between
schemes either. Scores are the R² of the pooled out-of-fold predictions,
as kNNDM's authors recommend for folds of unequal size (see
:mod:`fungi_ssl.validation.knndm`).

Why random CV flatters a model when samples share a site:
:func:`same_site_share` counts the test samples that have a sample of their
own site in the training folds, and :func:`site_lookup_r2` scores a "model"
that knows nothing but the site: it predicts each test sample by the mean of
its site-mates in training.

Where a map predicts: :func:`prediction_grid` lays a regular grid of about
equal spacing on the ground over the samples' extent, kept on land (Natural
Earth, offline), as kNNDM's prediction locations.

:func:`chapter_inputs` says which of the chapter's inputs a data directory
holds; :func:`chapter_results` and :func:`skipped_results` build its JSON.
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
from sklearn.model_selection import KFold, PredefinedSplit
from tqdm import tqdm

from fungi_ssl.core.config import get_profile
from fungi_ssl.core.worker_threads import single_threaded_workers
from fungi_ssl.data.coordinates import EARTH_RADIUS_M, check_lonlat
from fungi_ssl.data.sites import site_groups
from fungi_ssl.predictors.features import select_predictors
from fungi_ssl.validation.cv import BlockKFold, SiteGroupKFold
from fungi_ssl.validation.knndm import KNNDMKFold, KNNDMResult, fold_nearest_distances
from fungi_ssl.validation.models import MODEL_NAMES, evaluate_cv

__all__ = [
    "COVARIATE_TABLE_GUILD",
    "DEFAULT_BLOCK_SIZE_M",
    "DEFAULT_GRID_SPACING_KM",
    "DEFAULT_RUNS",
    "SCHEMES",
    "SCHEME_LABELS",
    "SPUN_PUBLISHED",
    "CVSchemeComparison",
    "CVSizes",
    "ChapterInputs",
    "chapter_inputs",
    "compare_cv_schemes",
    "cv_sizes",
    "design_matrix",
    "pixel_and_plot_sites",
    "prediction_grid",
    "same_site_share",
    "scheme_folds",
    "site_lookup_r2",
]

#: The four CV schemes, in the order the chapter shows them (also the JSON's ``r2_<scheme>``).
SCHEMES = ("random", "site_grouped", "spatial_block", "knndm")
#: How the chapter names each scheme.
SCHEME_LABELS = {
    "random": "random K-fold",
    "site_grouped": "site-grouped",
    "spatial_block": "spatial blocks",
    "knndm": "kNNDM",
}
#: The guild whose richness the SPUN covariate table holds (its ``ECM_diversity``).
COVARIATE_TABLE_GUILD = "ECM"
#: Side of the spatial blocks (metres), as chapter 04's spatial CV.
DEFAULT_BLOCK_SIZE_M = 50_000.0
#: Spacing of the prediction grid on the ground (km).
DEFAULT_GRID_SPACING_KM = 100.0
#: (model, predictor set) pairs the chapter scores: LightGBM on each 1 km set and
#: on all covariates together; a random forest (the SPUN maps' model) on all.
DEFAULT_RUNS: tuple[tuple[str, str], ...] = (
    ("lightgbm", "climate"),
    ("lightgbm", "soil"),
    ("lightgbm", "landcover"),
    ("lightgbm", "all"),
    ("rf", "all"),
)
#: SPUN's published cross-validated R² of the 1 km ECM richness map (Van Nuland et
#: al. 2025, Nature 645:414; the figures of its repository's output files, as the
#: design notes cite them): a random forest on the 1 km covariates.
SPUN_PUBLISHED: dict[str, Any] = {
    "r2_random": 0.63,
    "r2_knndm": 0.29,
    "model": "random forest on the 1 km covariates",
    "source": "Van Nuland et al. 2025, Nature 645:414; SPUN richness_maps output files",
}


# --------------------------------------------------------------------------
# sizes and inputs
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class CVSizes:
    """How large the chapter's runs are in one book profile.

    Attributes
    ----------
    n_splits : int
        Folds of every scheme (kNNDM may use fewer; see :class:`fungi_ssl.validation.knndm.KNNDMKFold`).
    trees : dict
        Trees per model (fixed: no early stopping, so the model is the same in every scheme).
    sloo_n_test, sloo_reps : int
        Test samples per draw and draws of the buffered leave-one-out curve
        (:func:`fungi_ssl.validation.buffered_loo.sloo_curve`).
    sub_km_boot : int
        Bootstrap replicates of the sub-km index's interval
        (:func:`fungi_ssl.data.variogram.sub_km_index_interval`).
    """

    n_splits: int
    trees: dict[str, int] = field(default_factory=dict)
    sloo_n_test: int = 100
    sloo_reps: int = 2
    sub_km_boot: int = 200

    def model_params(self) -> dict[str, dict[str, int]]:
        """``model_params`` for :func:`compare_cv_schemes`.

        Examples
        --------
        >>> cv_sizes("quick").model_params()["lightgbm"]
        {'n_estimators': 300}
        """
        return {m: {"n_estimators": n} for m, n in self.trees.items()}


_SIZES = {
    "quick": CVSizes(n_splits=5, trees={"lightgbm": 300, "rf": 100}, sloo_n_test=100,
                     sloo_reps=2, sub_km_boot=200),
    "full": CVSizes(n_splits=10, trees={"lightgbm": 500, "rf": 200}, sloo_n_test=120,
                    sloo_reps=3, sub_km_boot=400),
}


def cv_sizes(profile: str) -> CVSizes:
    """The chapter's fold and tree counts for a book profile.

    ``quick``: 5 folds, 300 LightGBM trees, 100 forest trees, a buffered
    leave-one-out curve of 2 draws of 100 test samples, 200 bootstrap
    replicates of the sub-km index; ``full``: 10 folds (CAST's kNNDM
    default), 500 and 200 trees, 3 draws of 120, 400 replicates.

    Examples
    --------
    >>> cv_sizes("full").n_splits
    10
    >>> cv_sizes("huge")
    Traceback (most recent call last):
    ...
    ValueError: profile must be one of ['full', 'quick'], got 'huge'
    """
    return _SIZES[get_profile(profile).name]


@dataclass(frozen=True)
class ChapterInputs:
    """What a data directory offers the chapter.

    Attributes
    ----------
    data_dir : str
        The directory ("" for the simulated default).
    samples : pathlib.Path or None
        The GlobalFungi-style sample table (richness and sites).
    covariates : pathlib.Path or None
        The SPUN 1 km covariate table (the CV comparison).
    """

    data_dir: str
    samples: Path | None
    covariates: Path | None

    @property
    def has_any(self) -> bool:
        """A real table to describe."""
        return self.samples is not None or self.covariates is not None

    @property
    def skip_reason(self) -> str | None:
        """Why the CV comparison cannot run (None when it can)."""
        if not self.data_dir:
            return (
                "This chapter needs a real data directory (the `data_dir` parameter, e.g. "
                "`make book DATA=../shared/data/real`): it is about real field tables, so on "
                "the simulated study it skips its analysis."
            )
        if self.covariates is None:
            return (
                f"The data directory `{Path(self.data_dir).name}` holds no table of 1 km "
                "covariates (the SPUN covariate table's schema), so the cross-validation "
                "comparison is skipped; only the field table is described."
            )
        return None

    def guild_skip_reason(self, guild: str) -> str | None:
        """Why the CV comparison cannot run for ``guild`` (None when it can).

        The SPUN covariate table holds the richness of :data:`COVARIATE_TABLE_GUILD`;
        a chapter about another guild does not score it.

        Examples
        --------
        >>> ChapterInputs("d", None, Path("c.csv")).guild_skip_reason("AM")[:40]
        'The 1 km covariate table `c.csv` holds t'
        >>> ChapterInputs("d", None, Path("c.csv")).guild_skip_reason(COVARIATE_TABLE_GUILD) is None
        True
        """
        reason = self.skip_reason
        if reason is None and guild != COVARIATE_TABLE_GUILD:
            return (
                f"The 1 km covariate table `{self.covariates.name}` holds the richness of "
                f"another guild than {guild}, so the cross-validation comparison is skipped; "
                "only the field table is described."
            )
        return reason


def chapter_inputs(data_dir: str | Path | None) -> ChapterInputs:
    """Find the chapter's real tables in ``data_dir`` ("" or None: none, the simulated default).

    Raises
    ------
    FileNotFoundError
        If ``data_dir`` is given but does not exist or holds no known table
        (:func:`fungi_ssl.data.io.find_real_tables`).

    Examples
    --------
    >>> chapter_inputs("").skip_reason.startswith("This chapter needs a real data directory")
    True
    """
    if not data_dir:
        return ChapterInputs("", None, None)
    from fungi_ssl.data.io import find_real_tables

    found = find_real_tables(data_dir)
    return ChapterInputs(str(data_dir), found.samples, found.spun_covariates)


# --------------------------------------------------------------------------
# prediction locations
# --------------------------------------------------------------------------
def _land_geometry():
    """Natural Earth 1:110m land, from the offline data (:mod:`fungi_ssl.core.plotting`)."""
    import cartopy.io.shapereader as shpreader
    import shapely
    from shapely.ops import unary_union

    from fungi_ssl.core.plotting import use_offline_natural_earth

    use_offline_natural_earth()
    path = shpreader.natural_earth(resolution="110m", category="physical", name="land")
    land = unary_union(list(shpreader.Reader(path).geometries()))
    shapely.prepare(land)
    return land


def prediction_grid(
    longitude: Any,
    latitude: Any,
    spacing_km: float = DEFAULT_GRID_SPACING_KM,
    land_only: bool = True,
) -> pd.DataFrame:
    """A regular grid of prediction locations over the samples' extent, on land.

    Rows of points every ``spacing_km`` of latitude from the southernmost to
    the northernmost sample; along each row, points every ``spacing_km`` of
    longitude on the ground (on a sphere of radius
    :data:`fungi_ssl.data.coordinates.EARTH_RADIUS_M`, so ``spacing_km / cos(lat)``
    in degrees) from the westernmost to the easternmost sample. Each point
    stands for about ``spacing_km²`` of ground, at any latitude. With
    ``land_only``, points off Natural Earth's 1:110m land are dropped (offline
    data, :func:`fungi_ssl.core.plotting.use_offline_natural_earth`). The extent
    does not wrap across the antimeridian.

    Parameters
    ----------
    longitude, latitude : array_like
        Sample coordinates, WGS84 degrees.
    spacing_km : float
        Distance between neighbouring points (km).
    land_only : bool
        Keep only points on land.

    Returns
    -------
    pandas.DataFrame
        ``longitude``, ``latitude`` of each point. ``attrs``: ``spacing_km``,
        ``land_only``, ``extent`` (lon min, lon max, lat min, lat max).

    Raises
    ------
    ValueError
        Bad coordinates or spacing, or no point left (e.g. all at sea).

    Examples
    --------
    Central Europe, a point every 200 km: 6 rows, of 4 points in the south and
    3 in the north (a degree of longitude shortens northwards); the North
    Sea and the Baltic take 2 of the 21.

    >>> len(prediction_grid([5.0, 15.0], [45.0, 55.0], spacing_km=200, land_only=False))
    21
    >>> g = prediction_grid([5.0, 15.0], [45.0, 55.0], spacing_km=200)
    >>> len(g), bool(g["latitude"].between(45, 55).all())
    (19, True)
    """
    lon = np.asarray(longitude, dtype=float).ravel()
    lat = np.asarray(latitude, dtype=float).ravel()
    check_lonlat(lon, lat, "prediction_grid")
    if lon.size == 0:
        raise ValueError("prediction_grid: no sample coordinates")
    if not (np.isfinite(spacing_km) and spacing_km > 0):
        raise ValueError(f"spacing_km must be a positive distance in km, got {spacing_km}")
    deg = np.degrees(spacing_km * 1000.0 / EARTH_RADIUS_M)  # degrees of latitude per step
    west, east, south, north = lon.min(), lon.max(), lat.min(), lat.max()
    rows = (
        np.arange(south + deg / 2, north, deg)
        if north - south > deg
        else np.array([(south + north) / 2])
    )
    parts = []
    for la in rows:
        step = deg / max(np.cos(np.radians(la)), 1e-6)
        lo = (
            np.arange(west + step / 2, east, step)
            if east - west > step
            else np.array([(west + east) / 2])
        )
        parts.append(np.column_stack([lo, np.full(len(lo), la)]))
    points = np.vstack(parts)
    if land_only:
        import shapely

        points = points[shapely.contains_xy(_land_geometry(), points[:, 0], points[:, 1])]
    if len(points) == 0:
        raise ValueError(
            f"prediction_grid: no grid point at {spacing_km:g} km spacing over the samples' "
            f"extent{' is on land' if land_only else ''}; use a smaller spacing_km"
        )
    grid = pd.DataFrame(points, columns=["longitude", "latitude"])
    grid.attrs = {
        "spacing_km": float(spacing_km),
        "land_only": bool(land_only),
        "extent": [float(west), float(east), float(south), float(north)],
    }
    return grid


# --------------------------------------------------------------------------
# folds and leakage
# --------------------------------------------------------------------------
def _site_codes(samples: pd.DataFrame) -> np.ndarray:
    if "site_id" in samples.columns:
        return pd.factorize(samples["site_id"])[0]
    return site_groups(samples[["longitude", "latitude"]].to_numpy(dtype=float))


def scheme_folds(
    samples: pd.DataFrame,
    scheme: str,
    n_splits: int,
    seed: int = 0,
    prediction_points: Any = None,
    block_size_m: float = DEFAULT_BLOCK_SIZE_M,
) -> tuple[np.ndarray, KNNDMResult | None]:
    """Test-fold number of every sample under one CV scheme.

    Parameters
    ----------
    samples : pandas.DataFrame
        ``longitude``, ``latitude`` (WGS84 degrees), one row per sample.
    scheme : {"random", "site_grouped", "spatial_block", "knndm"}
    n_splits : int
        Folds (kNNDM may return fewer non-empty ones).
    seed : int
        Seed of the shuffle (random), of the site and block assignment, and
        of kNNDM's fallback.
    prediction_points : array_like of shape (m, 2) or DataFrame, optional
        Where the map predicts (lon/lat); kNNDM only, where it is required.
    block_size_m : float
        Side of the spatial blocks.

    Returns
    -------
    folds : numpy.ndarray
        ``(n,)`` fold numbers ``0 … k - 1``.
    knndm : KNNDMResult or None
        kNNDM's distances and choice, for ``scheme="knndm"``.

    Examples
    --------
    >>> t = pd.DataFrame({"longitude": [0.0, 0.0, 3.0, 3.0], "latitude": [45.0] * 4})
    >>> scheme_folds(t, "site_grouped", 2)[0].tolist()
    [0, 0, 1, 1]
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {list(SCHEMES)}, got {scheme!r}")
    missing = [c for c in ("longitude", "latitude") if c not in samples.columns]
    if missing:
        raise ValueError(f"samples: needs columns longitude and latitude; missing {missing}")
    xy = samples[["longitude", "latitude"]].to_numpy(dtype=float)
    if scheme == "random":
        folds = np.empty(len(xy), dtype=np.int64)
        for k, (_, test) in enumerate(KFold(n_splits, shuffle=True, random_state=seed).split(xy)):
            folds[test] = k
        return folds, None
    if scheme == "site_grouped":
        return SiteGroupKFold(n_splits, seed=seed, coords=xy).fold_labels(), None
    if scheme == "spatial_block":
        return BlockKFold(block_size_m, n_splits, seed=seed, coords=xy).fold_labels(), None
    if prediction_points is None:
        raise ValueError("scheme='knndm' needs prediction_points (where the map predicts)")
    cv = KNNDMKFold(prediction_points, n_splits=n_splits, seed=seed, coords=xy).fit()
    return cv.fold_labels(), cv.result_


def _check_folds(site_ids: Any, folds: Any) -> tuple[np.ndarray, np.ndarray]:
    sites = pd.factorize(pd.Series(np.asarray(site_ids).ravel()))[0]
    fold = pd.factorize(pd.Series(np.asarray(folds).ravel()))[0]
    if len(sites) != len(fold):
        raise ValueError(f"site_ids and folds: {len(sites)} sites for {len(fold)} fold labels")
    if (sites < 0).any() or (fold < 0).any():
        raise ValueError("site_ids and folds must not hold missing values")
    return sites, fold


def same_site_share(site_ids: Any, folds: Any) -> float:
    """Share of samples that have a sample of their own site in another fold.

    Under K-fold CV a sample is tested by a model trained on every other
    fold, so this is the share of test samples whose site the model has
    already seen in training (through a site-mate): for them the model can
    score by recognising the site. Schemes that keep sites whole give 0.

    Parameters
    ----------
    site_ids : array_like of shape (n,)
        Site of every sample (any labels).
    folds : array_like of shape (n,)
        Test fold of every sample (any labels).

    Examples
    --------
    Site ``a`` is split between two folds, ``b`` and ``c`` are not:

    >>> same_site_share(["a", "a", "b", "b", "c"], [0, 1, 0, 0, 1])
    0.4
    """
    sites, fold = _check_folds(site_ids, folds)
    n_folds_of_site = pd.Series(fold).groupby(sites).nunique().to_numpy()
    return float(np.mean(n_folds_of_site[sites] > 1))


def site_lookup_r2(y: Any, site_ids: Any, folds: Any) -> float:
    """R² of a "model" that only recognises sites: out-of-fold, pooled.

    Each test sample is predicted by the mean target of its site-mates in
    the training folds, or by the training folds' mean when its site has no
    sample there. It knows nothing about the environment, so whatever R² it
    reaches is what a CV scheme hands out for recognising sites.

    Parameters
    ----------
    y : array_like of shape (n,)
        Target.
    site_ids, folds : array_like of shape (n,)
        Site and test fold of every sample.

    Examples
    --------
    Two sites of two samples each, each site split over the two folds: every
    sample is predicted by its site-mate.

    >>> site_lookup_r2([1.0, 2.0, 9.0, 10.0], ["a", "a", "b", "b"], [0, 1, 0, 1]) == 1 - 4 / 65
    True
    """
    y = np.asarray(y, dtype=float).ravel()
    sites, fold = _check_folds(site_ids, folds)
    if len(y) != len(sites):
        raise ValueError(f"y: {len(y)} values for {len(sites)} samples")
    if not np.isfinite(y).all():
        raise ValueError("y: values must be finite")
    n_sites, n_folds = sites.max() + 1, fold.max() + 1
    if n_folds < 2:
        raise ValueError("folds: need at least two folds")
    cell = sites * n_folds + fold
    cell_sum = np.bincount(cell, weights=y, minlength=n_sites * n_folds)
    cell_n = np.bincount(cell, minlength=n_sites * n_folds)
    site_sum = np.bincount(sites, weights=y, minlength=n_sites)
    site_n = np.bincount(sites, minlength=n_sites)
    fold_sum = np.bincount(fold, weights=y, minlength=n_folds)
    fold_n = np.bincount(fold, minlength=n_folds)
    mates_n = site_n[sites] - cell_n[cell]
    mates_sum = site_sum[sites] - cell_sum[cell]
    train_mean = (y.sum() - fold_sum[fold]) / (len(y) - fold_n[fold])
    pred = np.where(mates_n > 0, mates_sum / np.maximum(mates_n, 1), train_mean)
    total = np.sum((y - y.mean()) ** 2)
    if total == 0:
        return float("nan")
    return float(1.0 - np.sum((y - pred) ** 2) / total)


def pixel_and_plot_sites(pixel_samples: pd.DataFrame, plot_samples: pd.DataFrame) -> dict[str, int]:
    """Sites of the samples two tables share: by 1 km pixel centre and by plot coordinate.

    The SPUN table gives each sample the centre of its 1 km pixel, so its
    sites (:func:`fungi_ssl.data.sites.site_groups`, 25 m) are whole pixels; the
    GlobalFungi table gives the plot coordinate. Joined by ``sample_id``,
    the two counts show how many plots a pixel site holds.

    Parameters
    ----------
    pixel_samples, plot_samples : pandas.DataFrame
        ``sample_id``, ``longitude``, ``latitude``.

    Returns
    -------
    dict
        ``n_shared`` (samples in both), ``n_pixel_sites`` and ``n_plot_sites``
        (sites among them, by each table's coordinates); 0 sites when none is shared.

    Examples
    --------
    Three cores from two plots 300 m apart in one pixel:

    >>> pix = pd.DataFrame({"sample_id": ["a", "b", "c"], "longitude": [6.004] * 3,
    ...                     "latitude": [52.004] * 3})
    >>> plot = pd.DataFrame({"sample_id": ["a", "b", "c", "d"], "longitude": [6.0, 6.0, 6.0044, 9.0],
    ...                      "latitude": [52.0] * 4})
    >>> pixel_and_plot_sites(pix, plot)
    {'n_shared': 3, 'n_pixel_sites': 1, 'n_plot_sites': 2}
    """
    cols = ["sample_id", "longitude", "latitude"]
    for name, t in (("pixel_samples", pixel_samples), ("plot_samples", plot_samples)):
        missing = [c for c in cols if c not in t.columns]
        if missing:
            raise ValueError(f"{name}: missing column(s) {missing}")
    both = pixel_samples[cols].merge(plot_samples[cols], on="sample_id", suffixes=("_px", "_pl"))
    if both.empty:
        return {"n_shared": 0, "n_pixel_sites": 0, "n_plot_sites": 0}
    n_sites = {
        k: int(site_groups(both[[f"longitude_{k}", f"latitude_{k}"]].to_numpy(float)).max() + 1)
        for k in ("px", "pl")
    }
    return {"n_shared": len(both), "n_pixel_sites": n_sites["px"], "n_plot_sites": n_sites["pl"]}


# --------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------
def design_matrix(covariates: pd.DataFrame, predictor_set: str) -> pd.DataFrame:
    """The float columns of one predictor set; categorical covariates one-hot.

    Columns are chosen by :func:`fungi_ssl.predictors.features.select_predictors`. A
    categorical column (the SPUN table's ``Resolve_Biome`` code) becomes one
    0/1 column per level, ``<column>_<level>``, so it keeps its group's prefix.

    Examples
    --------
    >>> t = pd.DataFrame({"CGIAR_PET": [1.0, 2.0], "Resolve_Biome": pd.Categorical([4, 12]),
    ...                   "sample_id": ["a", "b"]})
    >>> list(design_matrix(t, "all").columns)
    ['CGIAR_PET', 'Resolve_Biome_4', 'Resolve_Biome_12']
    """
    block = covariates[select_predictors(covariates, predictor_set).columns]
    parts = []
    for c in block.columns:
        col = block[c]
        if pd.api.types.is_numeric_dtype(col) and not isinstance(col.dtype, pd.CategoricalDtype):
            parts.append(col.astype("float64").to_frame())
        else:
            levels = col.astype("category")
            dummies = pd.get_dummies(levels, prefix=c, prefix_sep="_", dtype="float64")
            dummies.loc[levels.isna()] = np.nan
            parts.append(dummies)
    return pd.concat(parts, axis=1)


@dataclass
class CVSchemeComparison:
    """Scores of every run under every scheme, and the folds behind them.

    Attributes
    ----------
    scores : pandas.DataFrame
        Tidy: ``scheme, set, model, scope ("fold" or "pooled"), fold, n_train,
        n_test, r2, rmse, mae, medae, me``.
    folds : dict
        Scheme -> ``(n,)`` test-fold numbers.
    knndm : KNNDMResult or None
        kNNDM's choice and distances (None when kNNDM was not run).
    test_train_m : dict
        Scheme -> ``(n,)`` distance from each sample to its nearest sample in
        another fold (metres, geodesic; kNNDM's ``Gjstar`` for every scheme).
    y : numpy.ndarray
        The target.
    site_ids : numpy.ndarray
        Site of every sample.
    target : str
    seconds : float
        Wall time of the model fits.
    """

    scores: pd.DataFrame
    folds: dict[str, np.ndarray]
    knndm: KNNDMResult | None
    test_train_m: dict[str, np.ndarray]
    y: np.ndarray
    site_ids: np.ndarray
    target: str
    seconds: float

    @property
    def schemes(self) -> list[str]:
        """The schemes run, in :data:`SCHEMES` order."""
        return [s for s in SCHEMES if s in self.folds]

    def r2(self, model: str = "lightgbm", predictor_set: str = "all") -> dict[str, float]:
        """Pooled out-of-fold R² of one run, by scheme.

        Raises
        ------
        ValueError
            For a (model, set) that was not run.
        """
        rows = self.scores[
            (self.scores["model"] == model)
            & (self.scores["set"] == predictor_set)
            & (self.scores["scope"] == "pooled")
        ]
        if rows.empty:
            runs = sorted(set(zip(self.scores["model"], self.scores["set"])))
            raise ValueError(f"no run of model {model!r} on set {predictor_set!r}; runs: {runs}")
        return {s: float(rows.loc[rows["scheme"] == s, "r2"].iloc[0]) for s in self.schemes}

    def r2_table(self) -> pd.DataFrame:
        """Pooled R²: one row per (model, set), one column per scheme."""
        pooled = self.scores[self.scores["scope"] == "pooled"]
        table = pooled.pivot_table(
            index=["model", "set"], columns="scheme", values="r2", sort=False
        )
        return table[self.schemes]

    def leakage(self) -> pd.DataFrame:
        """Per scheme: folds, same-site share, site-lookup R², test → train distances.

        Columns ``n_folds``, ``same_site_share`` (:func:`same_site_share`),
        ``site_lookup_r2`` (:func:`site_lookup_r2`), ``share_test_train_0m``
        (test samples with a training sample at their very coordinate) and
        ``median_test_train_km`` (median distance to the nearest training
        sample).
        """
        rows = {}
        for s in self.schemes:
            folds, dist = self.folds[s], self.test_train_m[s]
            rows[s] = {
                "n_folds": len(np.unique(folds)),
                "same_site_share": same_site_share(self.site_ids, folds),
                "site_lookup_r2": site_lookup_r2(self.y, self.site_ids, folds),
                "share_test_train_0m": float(np.mean(dist == 0)),
                "median_test_train_km": float(np.median(dist) / 1000.0),
            }
        return pd.DataFrame.from_dict(rows, orient="index")


def compare_cv_schemes(
    samples: pd.DataFrame,
    covariates: pd.DataFrame,
    target: str = "log_richness",
    runs: Sequence[tuple[str, str]] = DEFAULT_RUNS,
    schemes: Sequence[str] = SCHEMES,
    n_splits: int = 5,
    prediction_points: Any = None,
    seed: int = 0,
    model_params: Mapping[str, Mapping[str, Any]] | None = None,
    block_size_m: float = DEFAULT_BLOCK_SIZE_M,
    n_jobs: int = 2,
    progress: bool = True,
) -> CVSchemeComparison:
    """Score every (model, predictor set) run under every CV scheme, on one set of folds each.

    The folds of each scheme are drawn once (:func:`scheme_folds`); every run
    uses them. Models are fitted on the whole training part with a fixed
    number of trees (``model_params``; no early stopping), single-threaded,
    on ``n_jobs`` worker threads (:mod:`fungi_ssl.core.worker_threads`).

    Parameters
    ----------
    samples : pandas.DataFrame
        Sample table: ``longitude``, ``latitude``, ``target`` and ideally
        ``site_id`` (else sites are derived with :func:`fungi_ssl.data.sites.site_groups`).
    covariates : pandas.DataFrame
        1 km covariates, one row per sample in the order of ``samples``
        (SPUN column names; :func:`fungi_ssl.simulate.field_data.open_field_data` gives both).
    target : str
        Column of ``samples`` to predict (the SPUN table's ``log_richness``).
    runs : sequence of (model, set)
        Models of :data:`fungi_ssl.validation.models.MODEL_NAMES` and predictor sets of
        :mod:`fungi_ssl.predictors.features`.
    schemes : sequence of str
        Of :data:`SCHEMES`.
    n_splits : int
        Folds.
    prediction_points : array_like (m, 2) or DataFrame, optional
        Where the map predicts (kNNDM; required when ``"knndm"`` is in ``schemes``).
    seed : int
        Seeds the folds and the models.
    model_params : mapping, optional
        Per-model overrides of :func:`fungi_ssl.validation.models.make_model`'s defaults,
        e.g. :meth:`CVSizes.model_params`.
    block_size_m : float
        Side of the spatial blocks.
    n_jobs : int
        Worker threads.
    progress : bool
        A progress bar over the runs.

    Returns
    -------
    CVSchemeComparison

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> plots = rng.uniform([0, 45], [10, 55], size=(40, 2))
    >>> t = pd.DataFrame(np.repeat(plots, 3, axis=0), columns=["longitude", "latitude"])
    >>> cov = pd.DataFrame({"CGIAR_PET": t["latitude"] + rng.normal(0, 1, 120)})
    >>> t["y"] = np.repeat(rng.normal(size=40), 3) + 0.1 * t["latitude"]
    >>> res = compare_cv_schemes(t, cov, "y", runs=[("ridge", "climate")],
    ...                          schemes=["random", "site_grouped"], progress=False)
    >>> res.leakage()["same_site_share"].round(2).to_dict()
    {'random': 0.98, 'site_grouped': 0.0}
    """
    schemes = list(schemes)
    unknown = [s for s in schemes if s not in SCHEMES]
    if unknown or not schemes:
        raise ValueError(f"schemes: unknown or none {unknown}; choose from {list(SCHEMES)}")
    if target not in samples.columns:
        raise ValueError(f"samples: no target column {target!r}")
    if len(covariates) != len(samples):
        raise ValueError(
            f"covariates: {len(covariates)} rows for {len(samples)} samples; one row per sample"
        )
    if (
        covariates.index.name == "sample_id"
        and "sample_id" in samples.columns
        and not np.array_equal(covariates.index.astype(str), samples["sample_id"].astype(str))
    ):
        raise ValueError(
            "covariates: its sample_id index is not in the order of samples['sample_id']; "
            "reorder it, e.g. covariates.loc[samples['sample_id']]"
        )
    runs = [tuple(r) for r in runs]
    if not runs:
        raise ValueError("runs is empty; give (model, predictor set) pairs")
    for model, _ in runs:
        if model not in MODEL_NAMES:
            raise ValueError(f"runs: unknown model {model!r}; choose from {list(MODEL_NAMES)}")
    y = samples[target].to_numpy(dtype=float)
    sites = _site_codes(samples)
    matrices = {s: design_matrix(covariates, s) for s in dict.fromkeys(r[1] for r in runs)}
    xy = samples[["longitude", "latitude"]].to_numpy(dtype=float)

    folds: dict[str, np.ndarray] = {}
    knndm_result = None
    for scheme in schemes:
        folds[scheme], res = scheme_folds(
            samples, scheme, n_splits, seed, prediction_points, block_size_m
        )
        knndm_result = res if res is not None else knndm_result
    test_train = {
        s: (knndm_result.gjstar if s == "knndm" else fold_nearest_distances(xy, folds[s]))
        for s in schemes
    }

    params = {m: dict((model_params or {}).get(m, {})) for m, _ in runs}
    tasks = [(model, pset, scheme) for model, pset in runs for scheme in schemes]
    cost = {"rf": 0, "xgboost": 1, "lightgbm": 1, "ridge": 2}
    order = sorted(range(len(tasks)), key=lambda i: cost.get(tasks[i][0], 3))

    def run(model: str, pset: str, scheme: str) -> pd.DataFrame:
        res = evaluate_cv(
            matrices[pset],
            y,
            model,
            PredefinedSplit(folds[scheme]),
            seed=seed,
            val_size=0.0,
            predictor_set=pset,
            model_params=params[model],
            n_jobs=1,
            nan_policy="allow",
            progress=False,
        )
        return res.assign(scheme=scheme)

    start = time.perf_counter()
    jobs = (delayed(run)(*tasks[i]) for i in order)
    with single_threaded_workers():
        runner = Parallel(n_jobs=n_jobs, backend="threading", return_as="generator")
        done = list(tqdm(runner(jobs), total=len(tasks), desc="CV schemes", disable=not progress))
    seconds = time.perf_counter() - start
    parts = [done[order.index(i)] for i in range(len(tasks))]
    scores = pd.concat(parts, ignore_index=True)
    columns = ["scheme", "set", "model", "scope", "fold", "n_train", "n_test"]
    scores = scores[columns + ["r2", "rmse", "mae", "medae", "me"]]
    return CVSchemeComparison(
        scores=scores,
        folds=folds,
        knndm=knndm_result,
        test_train_m=test_train,
        y=y,
        site_ids=np.asarray(sites),
        target=target,
        seconds=seconds,
    )


