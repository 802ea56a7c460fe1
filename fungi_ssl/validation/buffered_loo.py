"""Spatial leave-one-out with a buffer, batched, and the skill-against-distance curve.

SPUN (Van Nuland et al. 2025) report a map's spatial skill as a curve: the R²
of spatial leave-one-out cross-validation (SLOO) with a buffer around each
test sample, for buffers from 1 km to 2,000 km. Each test sample is predicted
by a model trained on every sample farther than the buffer from it. Done
literally that costs one fit per sample and buffer (9,000 × 12 fits on the
SPUN table); this module gets the same quantity from tens of fits.

Batching
--------
A random draw of ``n_test`` test samples is dealt into *batches*; one model
is fitted per batch, on every sample farther than the buffer from **every**
test sample of the batch, and predicts all of them. So no training sample
ever lies within the buffer of a test sample. The price of batching is that
a test sample's training set also loses the other members' buffer zones. A
test sample joins a batch only while that loss stays small:

    for every member ``t`` of a batch,
    ``|zones of the batch| − |zone of t| ≤ max_extra_share × n``

where the zone of ``t`` is the set of samples within the buffer of ``t``
(itself and its site-mates included) and ``n`` the number of samples. Each
test sample is therefore trained on its own leave-one-out training set less
at most ``max_extra_share`` of the table. Test samples whose zones coincide
(close together) batch freely, and so do test samples far apart whose zones
are small; two test samples in dense regions a buffer or two apart do not.
Batches are filled first-fit in the random order of the draw.

Scores
------
The test samples are a random draw from the table, so each repetition's R²
is ``1 − mean squared error / variance of the target over the whole table``:
in expectation the ``r2_score`` over every sample that a full SLOO computes,
and stable when a draw is small. The curve reports its mean and standard
deviation over repetitions (new draws), the number of fits, the median
distance from a test sample to its nearest training sample (never below the
buffer) and ``train_share``, the mean ratio of a test sample's training set to
the one it would have had alone.

Distances are geodesic on the WGS84 ellipsoid for lon/lat
(:func:`fungi_ssl.data.coordinates.geodesic_distance_m`), Euclidean for metres.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from tqdm import tqdm

from fungi_ssl.core.worker_threads import single_threaded_workers
from fungi_ssl.data.coordinates import geodesic_distance_m
from fungi_ssl.data.sites import CoordinateKind
from fungi_ssl.validation.cv import SpatialKFold
from fungi_ssl.validation.models import make_model

__all__ = [
    "DEFAULT_BUFFERS_KM",
    "DEFAULT_MAX_EXTRA_SHARE",
    "BufferedLeaveOneOut",
    "SLOOCurve",
    "batch_test_samples",
    "distances_to_samples",
    "sloo_curve",
]

#: SPUN's buffers (km), from their published SLOO curve.
DEFAULT_BUFFERS_KM: tuple[float, ...] = (
    1.0, 2.5, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 1500.0, 2000.0,
)
#: Largest share of the table a test sample may lose to the other zones of its batch.
DEFAULT_MAX_EXTRA_SHARE = 0.25


def distances_to_samples(coords: np.ndarray, test: np.ndarray,
                   coordinates: CoordinateKind = "lonlat") -> np.ndarray:
    """``(len(test), n)`` distances (metres) from each test sample to every sample.

    Examples
    --------
    >>> xy = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    >>> distances_to_samples(xy, np.array([1]), "metres").tolist()
    [[5.0, 0.0, 5.0]]
    """
    xy = np.asarray(coords, dtype=float)
    test = np.asarray(test, dtype=np.int64).ravel()
    if coordinates == "metres":
        diff = xy[test][:, None, :] - xy[None, :, :]
        return np.hypot(diff[..., 0], diff[..., 1])
    n = len(xy)
    out = np.empty((len(test), n))
    for row, t in enumerate(test):
        out[row] = geodesic_distance_m(np.full(n, xy[t, 0]), np.full(n, xy[t, 1]),
                                       xy[:, 0], xy[:, 1])
    return out


def batch_test_samples(dist: np.ndarray, buffer_m: float,
                       max_extra_share: float = DEFAULT_MAX_EXTRA_SHARE) -> list[np.ndarray]:
    """Deal test samples into batches, first-fit in their given order.

    Parameters
    ----------
    dist : numpy.ndarray
        ``(n_test, n)`` distances from each test sample to every sample
        (:func:`distances_to_samples`), rows in the order of the draw.
    buffer_m : float
        Buffer (metres): a sample at most this far from a test sample is in
        its zone (never trained on).
    max_extra_share : float
        A test sample joins a batch only if, for it and every member, the
        batch's zones hold at most ``max_extra_share × n`` samples outside
        that member's own zone.

    Returns
    -------
    list of numpy.ndarray
        Row numbers of ``dist`` in each batch.

    Examples
    --------
    Four test samples on a line of 100 samples 1 m apart, buffer 10 m (zones of
    21 samples): 20 and 25 share most of their zones and batch together; 80
    would cost them 21 more samples, so it opens a batch, which 85 joins.

    >>> xy = np.column_stack([np.arange(100.0), np.zeros(100)])
    >>> d = distances_to_samples(xy, np.array([20, 25, 80, 85]), "metres")
    >>> [b.tolist() for b in batch_test_samples(d, 10.0, max_extra_share=0.1)]
    [[0, 1], [2, 3]]
    """
    if not (np.isfinite(buffer_m) and buffer_m >= 0):
        raise ValueError(f"buffer_m must be a distance ≥ 0 in metres, got {buffer_m}")
    if not 0 <= max_extra_share <= 1:
        raise ValueError(f"max_extra_share must lie in [0, 1], got {max_extra_share}")
    zones = np.asarray(dist) <= buffer_m
    n = zones.shape[1]
    limit = max_extra_share * n
    own = zones.sum(axis=1)
    batches: list[list[int]] = []
    unions: list[np.ndarray] = []
    smallest: list[int] = []
    for t in range(len(zones)):
        for k in range(len(batches)):
            union = unions[k] | zones[t]
            if union.sum() - min(smallest[k], own[t]) <= limit:
                batches[k].append(t)
                unions[k] = union
                smallest[k] = min(smallest[k], int(own[t]))
                break
        else:
            batches.append([t])
            unions.append(zones[t].copy())
            smallest.append(int(own[t]))
    return [np.asarray(b, dtype=np.int64) for b in batches]


class BufferedLeaveOneOut(SpatialKFold):
    """Spatial leave-one-out with a buffer, batched, as a scikit-learn splitter.

    ``n_test`` samples are drawn at random (``seed``) and dealt into batches
    (:func:`batch_test_samples`); each split is one batch: its test samples,
    and as training every sample farther than ``buffer_m`` from all of them.
    ``get_n_splits`` is the number of batches, known once the coordinates are.

    Parameters
    ----------
    buffer_m : float
        Buffer around each test sample (metres).
    n_test : int
        Test samples to draw (all samples when larger than the table).
    max_extra_share : float
        See :func:`batch_test_samples`.
    seed : int
        Seed of the draw.
    test_indices : array_like, optional
        The test samples, in dealing order, instead of a draw.
    coords : array_like of shape (n, 2), optional
        Sample coordinates (or pass them as ``groups`` to ``split``).
    coordinates : {"lonlat", "metres"}

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> xy = rng.uniform(0, 100_000, size=(400, 2))
    >>> cv = BufferedLeaveOneOut(5_000, n_test=40, coords=xy, coordinates="metres")
    >>> gaps = [np.hypot(*(xy[tr][:, None] - xy[te][None]).T).min() for tr, te in cv.split()]
    >>> bool(min(gaps) > 5_000), sum(len(te) for _, te in cv.split())
    (True, 40)
    """

    def __init__(
        self,
        buffer_m: float,
        n_test: int = 200,
        max_extra_share: float = DEFAULT_MAX_EXTRA_SHARE,
        seed: int = 0,
        test_indices: Any = None,
        coords: np.ndarray | pd.DataFrame | None = None,
        coordinates: CoordinateKind = "lonlat",
    ) -> None:
        if not (np.isfinite(buffer_m) and buffer_m >= 0):
            raise ValueError(f"buffer_m must be a distance ≥ 0 in metres, got {buffer_m}")
        if not isinstance(n_test, (int, np.integer)) or n_test < 1:
            raise ValueError(f"n_test must be an integer ≥ 1, got {n_test!r}")
        if not 0 <= max_extra_share <= 1:
            raise ValueError(f"max_extra_share must lie in [0, 1], got {max_extra_share}")
        self.buffer_m = float(buffer_m)
        self.n_test = int(n_test)
        self.max_extra_share = float(max_extra_share)
        self.seed = int(seed)
        self.test_indices = test_indices
        self._set_coords(coords, coordinates)

    def draw(self, n: int) -> np.ndarray:
        """The test samples, in dealing order, for a table of ``n`` samples."""
        if self.test_indices is not None:
            idx = np.asarray(self.test_indices, dtype=np.int64).ravel()
            if idx.size == 0 or idx.min() < 0 or idx.max() >= n or len(np.unique(idx)) != idx.size:
                raise ValueError(f"test_indices must be distinct row numbers in [0, {n})")
            return idx
        return np.random.default_rng(self.seed).permutation(n)[: min(self.n_test, n)]

    def batches(self, X=None, groups=None) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(train, test)`` of every batch (what ``split`` yields)."""
        return self._batches(self.sample_coords(X, groups))

    def _batches(self, xy: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        test = self.draw(len(xy))
        dist = distances_to_samples(xy, test, self.coordinates)
        out = []
        for rows in batch_test_samples(dist, self.buffer_m, self.max_extra_share):
            train = np.flatnonzero((dist[rows] > self.buffer_m).all(axis=0))
            if train.size == 0:
                raise ValueError(
                    f"buffer_m={self.buffer_m:g} leaves no training sample for a batch; "
                    "use a smaller buffer"
                )
            out.append((train, test[rows]))
        return out

    def _split_coords(self, xy: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        yield from self._batches(xy)

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        """Number of batches (needs the coordinates)."""
        return len(self.batches(X, groups))


# --------------------------------------------------------------------------
# the curve
# --------------------------------------------------------------------------
@dataclass
class SLOOCurve:
    """R² of buffered spatial leave-one-out against the buffer.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per buffer: ``buffer_km, r2_mean, r2_sd, n_test, n_reps,
        n_fits, median_test_train_km, train_share``.
    reps : pandas.DataFrame
        One row per (buffer, repetition): ``buffer_km, rep, r2, n_test,
        n_fits``.
    seconds : float
        Wall time of the fits.
    """

    table: pd.DataFrame
    reps: pd.DataFrame
    seconds: float

    def records(self) -> list[dict[str, Any]]:
        """The curve as JSON-ready records (``sloo_curve`` of chapter 09)."""
        out = []
        for row in self.table.to_dict(orient="records"):
            out.append({k: (int(v) if k in ("n_test", "n_reps", "n_fits") else float(v))
                        for k, v in row.items()})
        return out


def sloo_curve(
    X: pd.DataFrame | np.ndarray,
    y: Any,
    coords: Any,
    buffers_km: Sequence[float] = DEFAULT_BUFFERS_KM,
    model: str = "lightgbm",
    model_params: Mapping[str, Any] | None = None,
    n_test: int = 200,
    n_reps: int = 3,
    max_extra_share: float = DEFAULT_MAX_EXTRA_SHARE,
    seed: int = 0,
    coordinates: CoordinateKind = "lonlat",
    n_jobs: int = 2,
    progress: bool = True,
) -> SLOOCurve:
    """The buffered spatial leave-one-out curve: R² against the buffer.

    Each repetition draws ``n_test`` test samples (seed ``seed + rep``) and
    uses the same draw at every buffer, so the curve's steps come from the
    buffer, not from the draw. Per buffer, the draw is batched
    (:class:`BufferedLeaveOneOut`) and one model per batch is fitted,
    single-threaded, on ``n_jobs`` worker threads.

    Parameters
    ----------
    X : DataFrame or array (n, p)
        Predictors.
    y : array_like (n,)
        Target.
    coords : array_like (n, 2)
        Sample coordinates (lon/lat degrees, or metres).
    buffers_km : sequence of float
        Buffers (km).
    model : str
        A model of :func:`fungi_ssl.validation.models.make_model`.
    model_params : mapping, optional
        Its parameters (e.g. the number of trees).
    n_test, n_reps, max_extra_share, seed, coordinates
        As above.
    n_jobs : int
        Worker threads.
    progress : bool
        A progress bar over the fits.

    Returns
    -------
    SLOOCurve

    Examples
    --------
    A target that is a smooth field plus noise: skill falls as the buffer grows.

    >>> rng = np.random.default_rng(1)
    >>> xy = rng.uniform(0, 100_000, size=(600, 2))
    >>> X = np.column_stack([np.sin(xy[:, 0] / 20_000), rng.normal(size=600)])
    >>> y = np.sin(xy[:, 0] / 8_000) + X[:, 0] + rng.normal(0, 0.2, 600)
    >>> c = sloo_curve(X, y, xy, [0.1, 30], "ridge", n_test=60, n_reps=2,
    ...                coordinates="metres", progress=False)
    >>> c.table[["buffer_km", "n_reps"]].values.tolist()
    [[0.1, 2.0], [30.0, 2.0]]
    >>> bool(c.table["median_test_train_km"].iloc[1] > 30)
    True
    """
    yv = np.asarray(y, dtype=float).ravel()
    xy = np.asarray(coords, dtype=float)
    n = len(yv)
    if len(X) != n or len(xy) != n:
        raise ValueError(f"X, y and coords need one row per sample: {len(X)}, {n}, {len(xy)}")
    if not np.isfinite(yv).all():
        raise ValueError("y: values must be finite")
    if n_reps < 1:
        raise ValueError(f"n_reps must be ≥ 1, got {n_reps}")
    buffers = [float(b) for b in buffers_km]
    if not buffers or min(buffers) < 0:
        raise ValueError(f"buffers_km must be distances ≥ 0 in km, got {buffers_km}")
    params = dict(model_params or {})
    make_model(model, **params)  # fail early on a bad model or parameter
    Xf = X if isinstance(X, pd.DataFrame) else np.asarray(X, dtype=float)

    tasks = []  # (buffer index, rep, test rows of the draw, train, test)
    draws, dists = [], []
    for rep in range(n_reps):
        cv = BufferedLeaveOneOut(0.0, n_test, max_extra_share, seed + rep, coords=xy,
                                 coordinates=coordinates)
        test = cv.draw(n)
        dist = distances_to_samples(cv.sample_coords(), test, coordinates)
        draws.append(test)
        dists.append(dist)
        for b, buffer_km in enumerate(buffers):
            buffer_m = buffer_km * 1000.0
            for rows in batch_test_samples(dist, buffer_m, max_extra_share):
                train = np.flatnonzero((dist[rows] > buffer_m).all(axis=0))
                if train.size == 0:
                    raise ValueError(f"a {buffer_km:g} km buffer leaves no training sample")
                tasks.append((b, rep, rows, train))

    def take(idx: np.ndarray):
        return Xf.iloc[idx] if isinstance(Xf, pd.DataFrame) else Xf[idx]

    def fit(task_no: int) -> np.ndarray:
        _, rep, rows, train = tasks[task_no]
        m = make_model(model, seed=seed, n_jobs=1, **params)
        m.fit(take(train), yv[train])
        return np.asarray(m.predict(take(draws[rep][rows])), dtype=float)

    start = time.perf_counter()
    with single_threaded_workers():
        runner = Parallel(n_jobs=n_jobs, backend="threading", return_as="generator")
        preds = list(tqdm(runner(delayed(fit)(i) for i in range(len(tasks))),
                          total=len(tasks), desc="buffered LOO", disable=not progress))
    seconds = time.perf_counter() - start

    variance = float(np.var(yv))
    rep_rows, table_rows = [], []
    for b, buffer_km in enumerate(buffers):
        buffer_m = buffer_km * 1000.0
        r2s, gaps, shares, n_fit, n_tested = [], [], [], 0, []
        for rep in range(n_reps):
            mine = [(t, p) for t, p in zip(tasks, preds) if t[0] == b and t[1] == rep]
            err, count = 0.0, 0
            dist = dists[rep]
            alone = n - (dist <= buffer_m).sum(axis=1)
            for (_, _, rows, train), p in mine:
                test = draws[rep][rows]
                err += float(np.sum((yv[test] - p) ** 2))
                count += len(test)
                gaps.extend(dist[rows][:, train].min(axis=1) / 1000.0)
                shares.extend(len(train) / alone[rows])
            r2 = 1.0 - err / count / variance if variance > 0 else float("nan")
            r2s.append(r2)
            n_fit += len(mine)
            n_tested.append(count)
            rep_rows.append({"buffer_km": buffer_km, "rep": rep, "r2": r2, "n_test": count,
                             "n_fits": len(mine)})
        table_rows.append({
            "buffer_km": buffer_km,
            "r2_mean": float(np.mean(r2s)),
            "r2_sd": float(np.std(r2s, ddof=1)) if n_reps > 1 else float("nan"),
            "n_test": int(np.max(n_tested)),
            "n_reps": n_reps,
            "n_fits": n_fit,
            "median_test_train_km": float(np.median(gaps)),
            "train_share": float(np.mean(shares)),
        })
    return SLOOCurve(pd.DataFrame(table_rows), pd.DataFrame(rep_rows), seconds)
