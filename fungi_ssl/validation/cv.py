"""Cross-validation splitters: the study's random protocol and spatial CV.

Every splitter subclasses :class:`sklearn.model_selection.BaseCrossValidator`,
like verde's ``BlockKFold``, so it plugs into ``cross_val_score``,
``cross_validate`` and ``GridSearchCV``. All distances are in metres.

Where the coordinates go
------------------------
``X`` holds the predictors, not the coordinates, so the spatial splitters take
the sample coordinates in one of two ways:

1. **at construction**: ``SiteGroupKFold(coords=samples[["longitude",
   "latitude"]])``; then ``split(X)`` needs nothing else, and the splitter can
   be handed to ``cross_val_score(model, X, y, cv=splitter)`` directly;
2. **as ``groups``**: ``cross_val_score(model, X, y, groups=lonlat,
   cv=SiteGroupKFold())``. scikit-learn passes ``groups`` through to
   ``split``, and the spatial splitters read it as ``(n, 2)`` coordinates
   (not as group labels).

Coordinates given at construction win; giving both is an error. They are an
``(n, 2)`` array, or a DataFrame with ``longitude``/``latitude`` columns (or
``x``/``y`` with ``coordinates="metres"``).

Distances
---------
With ``coordinates="lonlat"`` (the default) the coordinates are WGS84 degrees
and every distance is measured on the ground, the same on every continent:

* site linking and buffers use geodesic distances on the WGS84 ellipsoid
  (:func:`fungi_ssl.data.coordinates.geodesic_pairs_within`,
  :func:`fungi_ssl.data.coordinates.nearest_distance_m`);
* blocks are squares of ``block_size_m`` in the UTM zone of each site
  (:func:`fungi_ssl.data.coordinates.utm_grid_cells`). A zone's transverse
  Mercator keeps scale within 0.9996-1.001, so a 50 km block is 50 km on the
  ground to 0.1% anywhere; a single projection cannot (one centred on Europe
  stretches Australia by up to x2.4). UTM zones were preferred over an
  equal-area projection centred on each cluster of samples because they need
  no clustering choice and are the same for any subset of the samples (a
  sample's block does not depend on which other samples are in the table);
  the price is that blocks end at zone boundaries, every 6° of longitude.

With ``coordinates="metres"`` the coordinates are planar x/y in metres (a
projected CRS) and distances are Euclidean, blocks aligned on the origin.

The splitters
-------------
:class:`RandomTrainValTest`
    The study's protocol: a random 70/10/20 train/validation/test split for
    each of ``n_seeds`` seeds. ``split`` yields (train + val, test) for
    scikit-learn; :meth:`RandomTrainValTest.split_train_val_test` yields the
    triples.
:func:`site_groups`
    The package's one definition of a site: samples within ``distance_m``
    (25 m geodesic, as in the study's supplement) of each other join one site,
    by single linkage. :func:`fungi_ssl.data.io.derive_site_ids` names these sites.
:class:`SiteGroupKFold`
    K-fold over those sites, balanced by sample count.
:class:`BlockKFold`
    K-fold over square blocks of ``block_size_m`` (in each site's UTM zone
    for lon/lat); sites are kept whole.
:class:`BufferedKFold`
    Either of the two above, with training samples closer than ``buffer_m``
    to any test sample removed.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree
from sklearn.model_selection import BaseCrossValidator

from fungi_ssl.data.coordinates import (
    nearest_distance_m,
    utm_grid_cells,
)
from fungi_ssl.data.sites import (
    SITE_DISTANCE_M,
    CoordinateKind,
    _site_centres,
    check_coords,
    site_groups,
)

__all__ = [
    "BLOCK_SIZE_LADDER_M",
    "BlockKFold",
    "BufferedKFold",
    "RandomTrainValTest",
    "SiteGroupKFold",
    "SpatialKFold",
    "fitting_block_size",
]


# --------------------------------------------------------------------------
# fold assignment
# --------------------------------------------------------------------------
def _assign_folds(
    unit_sizes: np.ndarray, n_splits: int, shuffle: bool, seed: int, balance: bool, what: str
) -> np.ndarray:
    """Fold number for each unit (site or block).

    With ``balance``, units are placed largest first into the fold with the
    fewest samples so far (ties in size broken by the, possibly shuffled,
    unit order); otherwise the (possibly shuffled) units are cut into
    ``n_splits`` runs of near-equal unit count.
    """
    n_units = len(unit_sizes)
    if n_units < n_splits:
        raise ValueError(
            f"n_splits={n_splits} is more than the {n_units} {what} in the data; "
            f"lower n_splits or make the {what} smaller"
        )
    order = np.arange(n_units)
    if shuffle:
        order = np.random.default_rng(seed).permutation(n_units)
    folds = np.empty(n_units, dtype=np.int64)
    if not balance:
        for k, part in enumerate(np.array_split(order, n_splits)):
            folds[part] = k
        return folds
    order = order[np.argsort(-unit_sizes[order], kind="stable")]
    load = np.zeros(n_splits, dtype=np.int64)
    for u in order:
        k = int(np.argmin(load))  # first fold among equals: deterministic
        folds[u] = k
        load[k] += unit_sizes[u]
    return folds


def _check_n_splits(n_splits: int) -> None:
    if not isinstance(n_splits, (int, np.integer)) or n_splits < 2:
        raise ValueError(f"n_splits must be an integer ≥ 2, got {n_splits!r}")


# --------------------------------------------------------------------------
# random protocol
# --------------------------------------------------------------------------
class RandomTrainValTest(BaseCrossValidator):
    """The study's protocol: random train/validation/test splits, one per seed.

    Split ``i`` uses seed ``seed + i``, so seeds ``seed … seed + n_seeds - 1``
    name the splits, and the same seed gives the same split whatever the
    predictor set: that is what makes per-seed scores *paired*.

    Parameters
    ----------
    n_seeds : int
        Number of splits (the study used 50).
    seed : int
        Seed of the first split.
    val_size, test_size : float
        Fractions of the samples in the validation and test parts (0.1 and
        0.2, the study's 70/10/20). Part sizes are rounded; training gets the rest.

    Examples
    --------
    >>> cv = RandomTrainValTest(n_seeds=2, seed=0)
    >>> [tuple(len(p) for p in parts) for parts in cv.split_train_val_test(range(100))]
    [(70, 10, 20), (70, 10, 20)]
    >>> [(len(tr), len(te)) for tr, te in cv.split(range(100))]   # sklearn view
    [(80, 20), (80, 20)]
    """

    def __init__(
        self, n_seeds: int = 10, seed: int = 0, val_size: float = 0.1, test_size: float = 0.2
    ) -> None:
        if not isinstance(n_seeds, (int, np.integer)) or n_seeds < 1:
            raise ValueError(f"n_seeds must be an integer ≥ 1, got {n_seeds!r}")
        if not (0 <= val_size < 1 and 0 < test_size < 1 and val_size + test_size < 1):
            raise ValueError(
                "val_size and test_size must be fractions with 0 ≤ val_size, 0 < test_size "
                f"and val_size + test_size < 1, got {val_size} and {test_size}"
            )
        self.n_seeds = int(n_seeds)
        self.seed = int(seed)
        self.val_size = float(val_size)
        self.test_size = float(test_size)

    @property
    def seeds(self) -> list[int]:
        """The seed of each split, in order."""
        return [self.seed + i for i in range(self.n_seeds)]

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        """Number of splits, ``n_seeds``."""
        return self.n_seeds

    def split_train_val_test(
        self, X, y=None, groups=None
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield ``(train, val, test)`` index arrays, one triple per seed.

        Parameters
        ----------
        X : array_like
            Only its length is used.
        """
        n = _n_samples(X)
        n_test = round(self.test_size * n)
        n_val = round(self.val_size * n)
        if n - n_test - n_val < 1 or n_test < 1:
            raise ValueError(
                f"X: {n} samples are too few for val_size={self.val_size}, "
                f"test_size={self.test_size}"
            )
        for s in self.seeds:
            perm = np.random.default_rng(s).permutation(n)
            test = np.sort(perm[:n_test])
            val = np.sort(perm[n_test : n_test + n_val])
            train = np.sort(perm[n_test + n_val :])
            yield train, val, test

    def split(self, X, y=None, groups=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(train + val, test)`` index arrays, for scikit-learn."""
        for train, val, test in self.split_train_val_test(X):
            yield np.sort(np.concatenate([train, val])), test


def _n_samples(X) -> int:
    if hasattr(X, "shape") and len(X.shape) > 0:
        return int(X.shape[0])
    try:
        return len(X)
    except TypeError as err:
        raise ValueError(f"X: expected an array-like with a length, got {type(X)}") from err


# --------------------------------------------------------------------------
# spatial splitters
# --------------------------------------------------------------------------
class SpatialKFold(BaseCrossValidator):
    """Base of the spatial splitters: coordinate handling and ``split``.

    Subclasses implement ``_folds(coords)``, returning a fold number per
    sample from the validated ``(n, 2)`` coordinates (lon/lat or metres, as
    ``self.coordinates`` says), and may override ``_split_coords``.
    """

    # Like sklearn's GroupsConsumerMixin: ``groups`` (here, coordinates) is used.
    __metadata_request__split: ClassVar[dict[str, bool]] = {"groups": True}

    def _set_coords(self, coords, coordinates: CoordinateKind) -> None:
        if coordinates not in ("lonlat", "metres"):
            raise ValueError(f"coordinates must be 'lonlat' or 'metres', got {coordinates!r}")
        self.coordinates = coordinates
        self.coords = coords
        # validated (n, 2) copy, in the units of ``coordinates``
        self._xy = None if coords is None else check_coords(coords, coordinates, "coords")

    def with_coords(self, coords) -> SpatialKFold:
        """A copy of this splitter holding other coordinates (e.g. after dropping rows).

        Examples
        --------
        >>> cv = SiteGroupKFold(n_splits=2).with_coords([[0.0, 0.0], [9.0, 9.0]])
        >>> cv.coords
        [[0.0, 0.0], [9.0, 9.0]]
        """
        new = copy.copy(self)
        new._set_coords(coords, self.coordinates)
        return new

    def sample_coords(self, X=None, groups=None) -> np.ndarray:
        """The validated ``(n, 2)`` coordinates that ``split`` uses, checked against ``X``.

        Lon/lat degrees or metres, as ``coordinates`` says.

        Examples
        --------
        >>> SiteGroupKFold(2, coords=[[10.0, 52.0], [11.0, 52.0]]).sample_coords()
        array([[10., 52.],
               [11., 52.]])
        """
        if self._xy is not None and groups is not None:
            raise ValueError(
                "coordinates given twice: the splitter was built with coords=..., "
                "so do not also pass groups= (split reads groups as coordinates)"
            )
        if self._xy is not None:
            xy = self._xy
            source = "coords"
        elif groups is not None:
            xy = check_coords(groups, self.coordinates, "groups")
            source = "groups"
        else:
            raise ValueError(
                f"{type(self).__name__} needs sample coordinates: build it with "
                "coords=(n, 2) lon/lat, or pass them as groups= to split/cross_val_score"
            )
        if X is not None and _n_samples(X) != len(xy):
            raise ValueError(
                f"{source}: {len(xy)} coordinates for {_n_samples(X)} samples in X; "
                "they must have one row per sample"
            )
        return xy

    def _folds(self, xy: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _split_coords(self, xy: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        folds = self._folds(xy)
        idx = np.arange(len(xy))
        for k in range(self.n_splits):
            yield idx[folds != k], idx[folds == k]

    def fold_labels(self, X=None, groups=None) -> np.ndarray:
        """Test-fold number of every sample (``0 … n_splits - 1``).

        Examples
        --------
        >>> xy = [[0.0, 0.0], [10.0, 0.0], [1000.0, 0.0], [1010.0, 0.0]]
        >>> SiteGroupKFold(n_splits=2, coords=xy, coordinates="metres").fold_labels()
        array([0, 0, 1, 1])
        """
        return self._folds(self.sample_coords(X, groups))

    def split(self, X=None, y=None, groups=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(train, test)`` index arrays.

        Parameters
        ----------
        X : array_like, optional
            The predictors; only their number of rows is used (checked against
            the coordinates).
        y : ignored
        groups : array_like of shape (n, 2), optional
            The sample coordinates, when the splitter was built without
            ``coords`` (this is how ``cross_val_score(..., groups=coords)``
            reaches it).
        """
        yield from self._split_coords(self.sample_coords(X, groups))

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        """Number of folds, ``n_splits``."""
        return self.n_splits

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._param_names())
        coords = "None" if self._xy is None else f"<{len(self._xy)} points>"
        return f"{type(self).__name__}({inner}, coords={coords})"

    def _param_names(self) -> list[str]:
        return [
            p
            for p in inspect.signature(type(self).__init__).parameters
            if p not in ("self", "coords")
        ]


class SiteGroupKFold(SpatialKFold):
    """K-fold over sites: samples within ``distance_m`` of each other stay together.

    Sites come from :func:`site_groups` (single linkage at ``distance_m``).
    Folds are balanced by sample count: sites go, largest first, to the fold
    with the fewest samples so far.

    Parameters
    ----------
    n_splits : int
        Number of folds (≥ 2).
    distance_m : float
        Site linkage distance in metres (default 25 m).
    shuffle : bool
        Shuffle the sites before assigning them (decides ties between sites of
        equal size, and so which sites share a fold). Default True.
    seed : int
        Seed of the shuffle.
    coords : array_like of shape (n, 2) or DataFrame, optional
        Sample coordinates; otherwise pass them as ``groups`` to ``split``.
    coordinates : {"lonlat", "metres"}
        What the coordinates hold.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> plots = rng.uniform(0, 10_000, size=(20, 2))
    >>> xy = np.repeat(plots, 3, axis=0) + rng.normal(0, 2, size=(60, 2))  # 3 cores per plot
    >>> cv = SiteGroupKFold(n_splits=4, coords=xy, coordinates="metres", seed=1)
    >>> [len(test) for _, test in cv.split(np.zeros((60, 5)))]
    [15, 15, 15, 15]
    """

    def __init__(
        self,
        n_splits: int = 5,
        distance_m: float = SITE_DISTANCE_M,
        shuffle: bool = True,
        seed: int = 0,
        coords: np.ndarray | pd.DataFrame | None = None,
        coordinates: CoordinateKind = "lonlat",
    ) -> None:
        _check_n_splits(n_splits)
        if not np.isfinite(distance_m) or distance_m < 0:
            raise ValueError(
                f"distance_m must be a finite distance ≥ 0 in metres, got {distance_m}"
            )
        self.n_splits = int(n_splits)
        self.distance_m = float(distance_m)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self._set_coords(coords, coordinates)

    def _folds(self, xy: np.ndarray) -> np.ndarray:
        sites = site_groups(xy, self.distance_m, self.coordinates)
        sizes = np.bincount(sites)
        site_fold = _assign_folds(sizes, self.n_splits, self.shuffle, self.seed, True, "sites")
        return site_fold[sites]


class BlockKFold(SpatialKFold):
    """K-fold over square spatial blocks of ``block_size_m`` metres.

    For lon/lat, each UTM zone is cut into squares of side ``block_size_m``
    (:func:`fungi_ssl.data.coordinates.utm_grid_cells`: the same ground size on
    every continent, to 0.1%; blocks end at zone boundaries); for metres, the
    plane is cut into squares aligned on the origin. Each block's samples
    share a fold. Sites (samples within ``site_distance_m`` of each other) are
    never cut by a block edge: a whole site goes to the block that holds its
    centre.

    Parameters
    ----------
    block_size_m : float
        Side of the blocks in metres.
    n_splits : int
        Number of folds (≥ 2).
    shuffle : bool
        Shuffle the blocks before assigning them to folds. Default True;
        without it, an unbalanced split cuts the blocks, in row-major order,
        into strips.
    seed : int
        Seed of the shuffle.
    balance : bool
        Balance the folds by sample count (blocks go, largest first, to the
        fold with the fewest samples); otherwise each fold gets about the
        same number of blocks.
    site_distance_m : float or None
        Keep samples within this distance in one block (default 25 m); None
        lets block edges cut sites.
    coords, coordinates
        As in :class:`SiteGroupKFold`.

    Examples
    --------
    >>> xy = np.array([[x, y] for x in range(0, 4000, 100) for y in range(0, 4000, 100)], float)
    >>> cv = BlockKFold(block_size_m=1000, n_splits=4, coords=xy, coordinates="metres")
    >>> [len(test) for _, test in cv.split(xy)]
    [400, 400, 400, 400]
    """

    def __init__(
        self,
        block_size_m: float,
        n_splits: int = 5,
        shuffle: bool = True,
        seed: int = 0,
        balance: bool = True,
        site_distance_m: float | None = SITE_DISTANCE_M,
        coords: np.ndarray | pd.DataFrame | None = None,
        coordinates: CoordinateKind = "lonlat",
    ) -> None:
        _check_n_splits(n_splits)
        if not (np.isfinite(block_size_m) and block_size_m > 0):
            raise ValueError(
                f"block_size_m must be a positive distance in metres, got {block_size_m}"
            )
        if site_distance_m is not None and not (
            np.isfinite(site_distance_m) and site_distance_m >= 0
        ):
            raise ValueError(
                f"site_distance_m must be None or a distance ≥ 0, got {site_distance_m}"
            )
        self.block_size_m = float(block_size_m)
        self.n_splits = int(n_splits)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.balance = bool(balance)
        self.site_distance_m = None if site_distance_m is None else float(site_distance_m)
        self._set_coords(coords, coordinates)

    def block_labels(self, coords: np.ndarray | pd.DataFrame) -> np.ndarray:
        """Block number (``0 … n_blocks - 1``) of each sample.

        Parameters
        ----------
        coords : array_like of shape (n, 2) or DataFrame
            Sample coordinates, in the splitter's ``coordinates`` units.

        Examples
        --------
        >>> BlockKFold(1000, site_distance_m=None, coordinates="metres").block_labels(
        ...     np.array([[10.0, 10.0], [990.0, 20.0], [1010.0, 20.0]]))
        array([0, 0, 1])
        >>> BlockKFold(50_000).block_labels([[9.0, 52.0], [9.5, 52.0], [9.9, 52.0]])
        array([0, 0, 1])
        """
        pos = self._block_positions(coords)
        return _block_cells(pos, self.block_size_m, self.coordinates)

    def _block_positions(self, coords: np.ndarray | pd.DataFrame) -> np.ndarray:
        """Where each sample counts for its block: its site's centre (or itself)."""
        xy = check_coords(coords, self.coordinates, "coords")
        if self.site_distance_m is None:
            return xy
        sites = site_groups(xy, self.site_distance_m, self.coordinates)
        return _site_centres(xy, sites, self.coordinates)[sites]

    def _folds(self, xy: np.ndarray) -> np.ndarray:
        blocks = self.block_labels(xy)
        sizes = np.bincount(blocks)
        block_fold = _assign_folds(
            sizes, self.n_splits, self.shuffle, self.seed, self.balance, "blocks"
        )
        return block_fold[blocks]


def _block_cells(pos: np.ndarray, block_size_m: float, coordinates: CoordinateKind) -> np.ndarray:
    if coordinates == "lonlat":
        cells = utm_grid_cells(pos[:, 0], pos[:, 1], block_size_m)
    else:
        cells = np.floor(pos / block_size_m).astype(np.int64)
    _, blocks = np.unique(cells, axis=0, return_inverse=True)
    return blocks.ravel()


#: Block sides (metres) tried, largest first, when the requested blocks are too few
#: for the folds (:func:`fitting_block_size`).
BLOCK_SIZE_LADDER_M = (50_000.0, 25_000.0, 20_000.0, 10_000.0, 5_000.0, 2_000.0, 1_000.0, 500.0,
                       200.0, 100.0)


def fitting_block_size(
    coords: np.ndarray | pd.DataFrame,
    block_size_m: float,
    n_splits: int,
    coordinates: CoordinateKind = "lonlat",
    site_distance_m: float | None = SITE_DISTANCE_M,
) -> tuple[float, int, int]:
    """A block side and fold count that the data can fill: ``(block_size_m, n_splits, n_blocks)``.

    The requested blocks when they are at least ``n_splits``; otherwise the
    largest side of :data:`BLOCK_SIZE_LADDER_M` below the requested one that
    gives ``n_splits`` blocks; when even 100 m blocks are too few, 100 m blocks
    with one fold per block.

    Raises
    ------
    ValueError
        When the samples fill a single 100 m block: no spatial CV is possible.

    Examples
    --------
    >>> xy = np.array([[x, y] for x in range(0, 20_000, 500) for y in range(0, 20_000, 500)], float)
    >>> fitting_block_size(xy, 50_000, 5, coordinates="metres")   # a 20 km square
    (5000.0, 5, 16)
    >>> fitting_block_size(xy, 50_000, 2, coordinates="metres")
    (10000.0, 2, 4)
    """
    _check_n_splits(n_splits)
    pos = BlockKFold(block_size_m, site_distance_m=site_distance_m,
                     coordinates=coordinates)._block_positions(coords)
    sizes = [float(block_size_m), *(s for s in BLOCK_SIZE_LADDER_M if s < block_size_m)]
    n_blocks = 0
    for size in sizes:
        n_blocks = int(_block_cells(pos, size, coordinates).max()) + 1 if len(pos) else 0
        if n_blocks >= n_splits:
            return size, int(n_splits), n_blocks
    if n_blocks >= 2:
        return sizes[-1], n_blocks, n_blocks
    raise ValueError(
        f"the {len(pos)} samples lie in a single {sizes[-1]:g} m block, so spatial "
        "block CV cannot hold any of them apart; use site-grouped CV instead")


class BufferedKFold(SpatialKFold):
    """Spatial K-fold with a distance buffer around each test fold.

    Folds come from a :class:`BlockKFold` (when ``block_size_m`` is given) or
    a :class:`SiteGroupKFold`; then every training sample within ``buffer_m``
    (inclusive) of any test sample is dropped from that fold's training set,
    so each training sample lies *farther* than ``buffer_m`` from every test
    sample (geodesic distance for lon/lat). Dropped samples are neither
    trained nor tested on in that fold.

    Parameters
    ----------
    buffer_m : float
        Buffer distance in metres.
    n_splits : int
        Number of folds (≥ 2).
    block_size_m : float or None
        Block side for block folds; None (default) uses site-group folds.
    distance_m : float
        Site linkage distance (site-group folds) or the distance within which
        blocks keep sites whole (block folds). Default 25 m.
    shuffle, seed, balance
        As in :class:`BlockKFold` (``balance`` applies to blocks only; site
        folds are always balanced).
    coords, coordinates
        As in :class:`SiteGroupKFold`.

    Examples
    --------
    >>> xy = np.column_stack([np.arange(0, 10_000, 100.0), np.zeros(100)])
    >>> cv = BufferedKFold(buffer_m=250, n_splits=5, block_size_m=2000, coords=xy,
    ...                    coordinates="metres", shuffle=False, balance=False)
    >>> train, test = next(cv.split(xy))
    >>> float(test.max() * 100), float(train.min() * 100)   # nothing within 250 m of the test fold
    (1900.0, 2200.0)
    """

    def __init__(
        self,
        buffer_m: float,
        n_splits: int = 5,
        block_size_m: float | None = None,
        distance_m: float = SITE_DISTANCE_M,
        shuffle: bool = True,
        seed: int = 0,
        balance: bool = True,
        coords: np.ndarray | pd.DataFrame | None = None,
        coordinates: CoordinateKind = "lonlat",
    ) -> None:
        _check_n_splits(n_splits)
        if not (np.isfinite(buffer_m) and buffer_m >= 0):
            raise ValueError(f"buffer_m must be a distance ≥ 0 in metres, got {buffer_m}")
        self.buffer_m = float(buffer_m)
        self.n_splits = int(n_splits)
        self.block_size_m = None if block_size_m is None else float(block_size_m)
        self.distance_m = float(distance_m)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.balance = bool(balance)
        if self.block_size_m is None:
            self.folds: SpatialKFold = SiteGroupKFold(
                n_splits, distance_m, shuffle, seed, coordinates=coordinates
            )
        else:
            self.folds = BlockKFold(
                self.block_size_m,
                n_splits,
                shuffle,
                seed,
                balance,
                distance_m,
                coordinates=coordinates,
            )
        self._set_coords(coords, coordinates)

    def _folds(self, xy: np.ndarray) -> np.ndarray:
        return self.folds._folds(xy)

    def _split_coords(self, xy: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for train, test in super()._split_coords(xy):
            if len(train):
                if self.coordinates == "lonlat":  # geodesic
                    dist = nearest_distance_m(xy[train, 0], xy[train, 1], xy[test, 0], xy[test, 1])
                else:
                    dist, _ = cKDTree(xy[test]).query(
                        xy[train], k=1, distance_upper_bound=self.buffer_m * (1 + 1e-9) + 1e-9
                    )
                train = train[dist > self.buffer_m]
            if len(train) == 0:
                raise ValueError(
                    f"buffer_m={self.buffer_m:g} leaves no training samples in a fold; "
                    "use a smaller buffer or more folds"
                )
            yield train, test
