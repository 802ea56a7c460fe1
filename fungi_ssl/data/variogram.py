"""Empirical semivariogram of a sample table, and the observable sub-km index.

How much richness varies below 1 km decides whether 10 m satellite features
can beat 1 km covariates. A field table cannot say so directly, but its
semivariogram can: for pairs of samples in a distance band, the semivariance
is the mean of ``0.5 (z_i - z_j)^2`` with ``z = log1p(target)``. Divided by the
variance of ``z`` it reads as the share of the variance that two samples that
far apart do not have in common.

:func:`semivariogram` gives that curve in fixed bands (:data:`BANDS`, from
"same coordinate" to 300 km). :func:`sub_km_index` condenses it to one number
that any field table has, with no covariates or embeddings::

    sub_km_index = (γ̄[100 m, 1 km) − γ₀) / (γ̄[3 km, 30 km) − γ₀)

where γ₀ is the semivariance over pairs at one coordinate (< 1 m). 0 means
samples a few hundred metres apart are as alike as cores of one plot (little
variation below 1 km); 1 means they are as different as samples 3–30 km apart
(the variation is all below 1 km). Its interval resamples 50 km blocks of
sites (:func:`sub_km_index_interval`), because pairs within a block are not
independent.

Distances are geodesic on the WGS84 ellipsoid
(:func:`fungi_ssl.data.coordinates.geodesic_pairs_within`), so the index means the
same on every continent; in Europe they agree with distances in EPSG:3035 to
well under 1% in every band used here.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from fungi_ssl.data.coordinates import geodesic_distance_m, geodesic_pairs_within, utm_grid_cells
from fungi_ssl.data.reference import write_reference_main

#: Distance bands of the semivariogram, in metres: ``[lo, hi)``.
BANDS: tuple[tuple[float, float], ...] = (
    (0.0, 1.0), (1.0, 100.0), (100.0, 300.0), (300.0, 1_000.0), (1_000.0, 3_000.0),
    (3_000.0, 10_000.0), (10_000.0, 30_000.0), (30_000.0, 100_000.0), (100_000.0, 300_000.0),
)
#: Numerator band, reference band and same-coordinate band of the sub-km index (m).
SUB_KM_BAND = (100.0, 1_000.0)
REFERENCE_BAND = (3_000.0, 30_000.0)
SAME_COORDINATE_BAND = (0.0, 1.0)


@dataclass(frozen=True)
class SamplePairs:
    """Pairs of samples with their distance and half squared difference.

    Attributes
    ----------
    i, j : numpy.ndarray
        Row positions of the two samples of each pair (``i < j``).
    distance_m : numpy.ndarray
        Geodesic distance of each pair (m).
    half_sq_diff : numpy.ndarray
        ``0.5 (z_i - z_j)^2`` with ``z = log1p(target)``.
    variance : float
        Variance of ``z`` over the samples (population variance).
    """

    i: np.ndarray
    j: np.ndarray
    distance_m: np.ndarray
    half_sq_diff: np.ndarray
    variance: float

    def in_band(self, lo: float, hi: float) -> np.ndarray:
        """Boolean mask of the pairs with ``lo <= distance < hi``."""
        return (self.distance_m >= lo) & (self.distance_m < hi)


def _log_target(samples: pd.DataFrame, target: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    for column in ("longitude", "latitude", target):
        if column not in samples.columns:
            raise ValueError(f"sample table has no column '{column}' (needed for the semivariogram)")
    rows = samples.dropna(subset=[target])
    z = np.log1p(rows[target].to_numpy(dtype=float))
    return rows["longitude"].to_numpy(dtype=float), rows["latitude"].to_numpy(dtype=float), z


def sample_pairs(samples: pd.DataFrame, target: str = "rarefied",
                 max_distance_m: float = BANDS[-1][1]) -> SamplePairs:
    """Every pair of samples closer than ``max_distance_m``.

    Rows without a target value are left out.

    Parameters
    ----------
    samples : pandas.DataFrame
        A sample table with ``longitude``, ``latitude`` (WGS84) and ``target``.
    target : str
        Richness column; the semivariogram is of ``log1p(target)``.
    max_distance_m : float
        Largest pair distance kept (m).
    """
    lon, lat, z = _log_target(samples, target)
    pairs, d = geodesic_pairs_within(lon, lat, max_distance_m, return_distances=True)
    i, j = pairs[:, 0], pairs[:, 1]
    keep = d < max_distance_m
    i, j, d = i[keep], j[keep], d[keep]
    return SamplePairs(i=i, j=j, distance_m=d, half_sq_diff=0.5 * (z[i] - z[j]) ** 2,
                       variance=float(z.var()) if z.size else float("nan"))


def semivariogram(samples: pd.DataFrame, target: str = "rarefied",
                  bands: Sequence[tuple[float, float]] = BANDS,
                  pairs: SamplePairs | None = None) -> pd.DataFrame:
    """Semivariance of ``log1p(target)`` per distance band, over the variance.

    Parameters
    ----------
    samples : pandas.DataFrame
        Sample table (``longitude``, ``latitude``, ``target``).
    target : str
        Richness column.
    bands : sequence of (lo, hi)
        Distance bands in metres, ``[lo, hi)``.
    pairs : SamplePairs, optional
        Pairs already computed by :func:`sample_pairs` for this table.

    Returns
    -------
    pandas.DataFrame
        One row per band: ``lo_m``, ``hi_m``, ``pairs`` and ``gamma_over_var``
        (NaN where a band holds no pair).

    Examples
    --------
    >>> t = pd.DataFrame({"longitude": [10.0, 10.0, 10.001, 10.3],
    ...                   "latitude": [52.0, 52.0, 52.0, 52.0],
    ...                   "rarefied": [10.0, 12.0, 30.0, 80.0]})
    >>> semivariogram(t, bands=[(0, 1), (1, 1000)])["pairs"].tolist()
    [1, 2]
    """
    if pairs is None:
        pairs = sample_pairs(samples, target, max(hi for _, hi in bands))
    rows = []
    for lo, hi in bands:
        m = pairs.in_band(lo, hi)
        n = int(m.sum())
        gamma = float(pairs.half_sq_diff[m].mean()) / pairs.variance if n else float("nan")
        rows.append({"lo_m": float(lo), "hi_m": float(hi), "pairs": n, "gamma_over_var": gamma})
    return pd.DataFrame(rows)


def band_rows(sv: pd.DataFrame) -> list[dict[str, object]]:
    """A :func:`semivariogram` table as JSON-ready rows: ``band_m``, ``gamma_over_var`` and ``pairs``.

    A band without pairs has ``gamma_over_var = None``.

    Examples
    --------
    >>> sv = pd.DataFrame({"lo_m": [0.0], "hi_m": [1.0], "pairs": [0],
    ...                    "gamma_over_var": [float("nan")]})
    >>> band_rows(sv)
    [{'band_m': [0.0, 1.0], 'gamma_over_var': None, 'pairs': 0}]
    """
    return [{"band_m": [float(r.lo_m), float(r.hi_m)],
             "gamma_over_var": None if np.isnan(r.gamma_over_var) else float(r.gamma_over_var),
             "pairs": int(r.pairs)} for r in sv.itertuples()]


def _index_from_sums(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Index from band sums/counts shaped ``(..., 3)``: same coordinate, sub-km, reference."""
    with np.errstate(invalid="ignore", divide="ignore"):
        g = sums / counts
        return (g[..., 1] - g[..., 0]) / (g[..., 2] - g[..., 0])


def sub_km_index(samples: pd.DataFrame, target: str = "rarefied",
                 pairs: SamplePairs | None = None) -> float:
    """The observable sub-km index of a sample table.

    ``(γ̄[100 m, 1 km) − γ₀) / (γ̄[3 km, 30 km) − γ₀)``, with γ̄ the mean
    semivariance of ``log1p(target)`` over the pairs in a band and γ₀ that
    over pairs at one coordinate (< 1 m). NaN when a band holds no pair.

    Examples
    --------
    Two cores at one coordinate, one plot 500 m away, one 10 km away:

    >>> t = pd.DataFrame({"longitude": [10.0, 10.0, 10.0073, 10.146],
    ...                   "latitude": [52.0, 52.0, 52.0, 52.0],
    ...                   "rarefied": np.expm1([1.0, 1.2, 2.0, 3.0])})
    >>> round(sub_km_index(t), 3)   # (0.41 - 0.02) / (1.373 - 0.02)
    0.288
    """
    if pairs is None:
        pairs = sample_pairs(samples, target, REFERENCE_BAND[1])
    sums, counts = _band_sums(pairs, np.ones(pairs.i.size))
    return float(_index_from_sums(sums, counts))


def _band_sums(pairs: SamplePairs, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    masks = [pairs.in_band(*b) for b in (SAME_COORDINATE_BAND, SUB_KM_BAND, REFERENCE_BAND)]
    sums = np.array([np.sum(weights[m] * pairs.half_sq_diff[m]) for m in masks])
    counts = np.array([np.sum(weights[m]) for m in masks])
    return sums, counts


def sub_km_index_interval(samples: pd.DataFrame, target: str = "rarefied", *,
                          level: float = 0.90, block_km: float = 50.0, n_boot: int = 1000,
                          seed: int = 0, pairs: SamplePairs | None = None) -> dict[str, object]:
    """The sub-km index with a block-bootstrap interval.

    Sites are resampled in square blocks of ``block_km`` (per UTM zone,
    :func:`fungi_ssl.data.coordinates.utm_grid_cells`): each bootstrap draws as
    many blocks as there are, with replacement. A pair inside one block then
    counts once per copy of its block, and a pair across two blocks once per
    combination of their copies; pairs of a sample with its own copy are never
    formed. All three bands of the index lie well within one block, so this
    keeps the pairs that carry the index together.

    Parameters
    ----------
    samples : pandas.DataFrame
        Sample table.
    target : str
        Richness column.
    level : float
        Coverage of the percentile interval.
    block_km : float
        Side of the resampled blocks (km).
    n_boot : int
        Bootstrap replicates.
    seed : int
        Seed of the resampling.
    pairs : SamplePairs, optional
        Pairs within 30 km, from :func:`sample_pairs` on the same table.

    Returns
    -------
    dict
        ``index``, ``ci`` (``[lo, hi]``), ``level``, ``block_km``, ``n_blocks``,
        ``n_boot`` and ``pairs`` (per band of the index: same coordinate,
        sub-km, reference).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    lon, lat, _ = _log_target(samples, target)
    if pairs is None:
        pairs = sample_pairs(samples, target, REFERENCE_BAND[1])
    index = sub_km_index(samples, target, pairs=pairs)
    _, block = np.unique(utm_grid_cells(lon, lat, block_km * 1000.0), axis=0, return_inverse=True)
    block = np.asarray(block).ravel()
    n_blocks = int(block.max()) + 1 if block.size else 0
    masks = [pairs.in_band(*b) for b in (SAME_COORDINATE_BAND, SUB_KM_BAND, REFERENCE_BAND)]
    keep = masks[0] | masks[1] | masks[2]
    band_of = np.select([m[keep] for m in masks], [0, 1, 2])
    bi, bj = block[pairs.i[keep]], block[pairs.j[keep]]
    same = bi == bj
    hsd = pairs.half_sq_diff[keep]
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot)
    for k in range(n_boot):
        mult = np.bincount(rng.integers(0, n_blocks, n_blocks), minlength=n_blocks).astype(float)
        w = np.where(same, mult[bi], mult[bi] * mult[bj])
        sums = np.bincount(band_of, weights=w * hsd, minlength=3)
        counts = np.bincount(band_of, weights=w, minlength=3)
        draws[k] = _index_from_sums(sums, counts)
    finite = draws[np.isfinite(draws)]
    alpha = (1 - level) / 2
    ci = [float(np.quantile(finite, alpha)), float(np.quantile(finite, 1 - alpha))] if finite.size \
        else [float("nan"), float("nan")]
    return {"index": index, "ci": ci, "level": level, "block_km": block_km,
            "n_blocks": n_blocks, "n_boot": n_boot,
            "pairs": [int(np.sum(band_of == b)) for b in range(3)]}


def share_at_busy_coordinates(samples: pd.DataFrame, min_samples: int = 20,
                              target: str = "rarefied") -> float:
    """Share of samples at coordinates that hold ``min_samples`` or more.

    Coordinates are compared to 6 decimals (about 0.1 m).

    Examples
    --------
    >>> t = pd.DataFrame({"longitude": [1.0] * 3 + [2.0], "latitude": 50.0, "rarefied": 5.0})
    >>> share_at_busy_coordinates(t, min_samples=3)
    0.75
    """
    lon, lat, _ = _log_target(samples, target)
    key = pd.MultiIndex.from_arrays([np.round(lon, 6), np.round(lat, 6)])
    counts = pd.Series(1, index=key).groupby(level=[0, 1]).size()
    return float(counts[counts >= min_samples].sum() / counts.sum()) if counts.size else float("nan")


#: A new inferred study starts where GlobalFungi sample ids jump by more than this
#: (:func:`inferred_studies`).
STUDY_ID_GAP = 5
#: ... or where two consecutive samples lie more than this far apart (km).
STUDY_JUMP_KM = 150.0


def inferred_studies(samples: pd.DataFrame, id_gap: int = STUDY_ID_GAP,
                     jump_km: float = STUDY_JUMP_KM) -> np.ndarray:
    """A study label per row, inferred from GlobalFungi's sample ids.

    GlobalFungi numbers its samples study by study (``GF00123``, ``FMS00238v3``),
    and a table of its samples carries no study column. A study is taken here as
    a run of ids with one letter prefix, each at most ``id_gap`` above the last,
    whose consecutive samples lie at most ``jump_km`` apart. It is an inference:
    two studies numbered back to back in one region are one run.

    Parameters
    ----------
    samples : pandas.DataFrame
        ``sample_id``, ``longitude`` and ``latitude``.
    id_gap : int
    jump_km : float

    Returns
    -------
    numpy.ndarray
        Integer labels aligned with the rows of ``samples``.

    Examples
    --------
    >>> t = pd.DataFrame({"sample_id": ["GF1", "GF2", "GF30", "FMS1"],
    ...                   "longitude": [10.0, 10.1, 10.1, 10.1], "latitude": 50.0})
    >>> inferred_studies(t).tolist()
    [1, 1, 2, 0]
    """
    if "sample_id" not in samples.columns:
        raise ValueError("sample table has no column 'sample_id' (needed to infer studies)")
    ids = samples["sample_id"].astype(str)
    prefix = ids.str.extract(r"^([A-Za-z]*)")[0].fillna("").to_numpy()
    number = pd.to_numeric(ids.str.extract(r"(\d+)")[0], errors="coerce").fillna(-1).to_numpy()
    order = np.lexsort((number, prefix))
    lon = samples["longitude"].to_numpy(dtype=float)[order]
    lat = samples["latitude"].to_numpy(dtype=float)[order]
    step_m = np.zeros(max(len(order) - 1, 0))
    known = np.isfinite(lon[1:] + lat[1:] + lon[:-1] + lat[:-1])  # no coordinate: no jump
    if known.any():
        step_m[known] = geodesic_distance_m(lon[1:][known], lat[1:][known],
                                            lon[:-1][known], lat[:-1][known])
    new = np.r_[True, (prefix[order][1:] != prefix[order][:-1])
                | (np.diff(number[order]) > id_gap) | (step_m > jump_km * 1000.0)]
    labels = np.empty(len(samples), dtype=int)
    labels[order] = np.cumsum(new) - 1
    return labels


def study_split(samples: pd.DataFrame, study: np.ndarray, target: str = "rarefied",
                pairs: SamplePairs | None = None) -> list[dict[str, object]]:
    """Each band of the semivariogram split into pairs within one study and pairs of two.

    Parameters
    ----------
    samples : pandas.DataFrame
        Sample table (``longitude``, ``latitude``, ``target``).
    study : array-like
        A study (or campaign) label per row of ``samples``.
    target : str
    pairs : SamplePairs, optional
        Pairs already computed by :func:`sample_pairs` for this table.

    Returns
    -------
    list of dict
        Per band of :data:`BANDS`: ``band_m``, ``pairs``, ``share_between`` (of
        the pairs, those that join two studies) and ``gamma_within`` and
        ``gamma_between`` (semivariance over the variance, ``None`` without pairs).

    Examples
    --------
    >>> t = pd.DataFrame({"longitude": [10.0, 10.0, 10.0, 10.0], "latitude": 50.0,
    ...                   "rarefied": [10.0, 12.0, 40.0, 44.0]})
    >>> rows = study_split(t, np.array([0, 0, 1, 1]))
    >>> rows[0]["pairs"], round(rows[0]["share_between"], 2)
    (6, 0.67)
    >>> rows[0]["gamma_within"] < rows[0]["gamma_between"]
    True
    """
    if pairs is None:
        pairs = sample_pairs(samples, target)
    label = np.asarray(study)[samples[target].notna().to_numpy()]
    between = label[pairs.i] != label[pairs.j]
    rows = []
    for lo, hi in BANDS:
        m = pairs.in_band(lo, hi)

        def gamma(mask: np.ndarray) -> float | None:
            return float(pairs.half_sq_diff[mask].mean() / pairs.variance) if mask.any() else None

        rows.append({"band_m": [float(lo), float(hi)], "pairs": int(m.sum()),
                     "share_between": float(between[m].mean()) if m.any() else None,
                     "gamma_within": gamma(m & ~between), "gamma_between": gamma(m & between)})
    return rows


def real_study_split(data_dir: str | Path | None = None) -> tuple[dict[str, object], str]:
    """The real European table's bands split by inferred study: from the table, else shipped.

    Returns
    -------
    split : dict
        ``bands`` (:func:`study_split`), ``n_studies``, ``id_gap`` and ``jump_km``.
    origin : str
        ``"table"`` or ``"shipped"``.
    """
    table = _real_table(data_dir)
    if table is not None:
        return _study_split_summary(table), "table"
    return dict(load_variogram_reference()["study_split"]), "shipped"


def _study_split_summary(table: pd.DataFrame) -> dict[str, object]:
    study = inferred_studies(table)
    return {"bands": study_split(table, study), "n_studies": int(study.max() + 1),
            "id_gap": STUDY_ID_GAP, "jump_km": STUDY_JUMP_KM}


#: Name of the shipped semivariogram summary of the real European table (``fungi_ssl/reference``).
VARIOGRAM_REFERENCE_FILE = "globalfungi_europe_variogram.json"


def variogram_summary(samples: pd.DataFrame, target: str = "rarefied", *, n_boot: int = 1000,
                      seed: int = 0) -> dict[str, object]:
    """Everything the book reports of a table's spatial structure, in one dict.

    Parameters
    ----------
    samples : pandas.DataFrame
        Sample table (``longitude``, ``latitude``, ``target``).
    target : str
        Richness column.
    n_boot, seed : int
        Bootstrap replicates and seed of the index's interval
        (:func:`sub_km_index_interval`, 90%, 50 km blocks).

    Returns
    -------
    dict
        ``bands`` (list of ``{band_m: [lo, hi], gamma_over_var, pairs}``, one per
        :data:`BANDS`), ``sub_km_index``, ``sub_km_index_ci``, ``ci_level``,
        ``block_km``, ``share_at_busy_coordinates`` (coordinates holding 20 or
        more samples), ``n_samples`` and ``variance_log1p``.
    """
    pairs = sample_pairs(samples, target, BANDS[-1][1])
    sv = semivariogram(samples, target, pairs=pairs)
    near = pairs.in_band(0.0, REFERENCE_BAND[1])
    near_pairs = SamplePairs(i=pairs.i[near], j=pairs.j[near], distance_m=pairs.distance_m[near],
                             half_sq_diff=pairs.half_sq_diff[near], variance=pairs.variance)
    interval = sub_km_index_interval(samples, target, n_boot=n_boot, seed=seed, pairs=near_pairs)
    n = int(samples[target].notna().sum())
    return {
        "bands": band_rows(sv),
        "sub_km_index": float(interval["index"]),
        "sub_km_index_ci": [float(v) for v in interval["ci"]],
        "ci_level": float(interval["level"]),
        "block_km": float(interval["block_km"]),
        "share_at_busy_coordinates": share_at_busy_coordinates(samples, 20, target),
        "n_samples": n,
        "variance_log1p": float(pairs.variance),
    }


def compute_variogram_reference(path: str | Path, today: _dt.date | None = None) -> dict[str, object]:
    """The semivariogram summary of the real European table, with its provenance.

    The content of the shipped :data:`VARIOGRAM_REFERENCE_FILE`; rewrite it with
    ``python -m fungi_ssl.data.variogram /path/to/globalfungi_ecm_richness_europe.csv``.

    Raises
    ------
    FileNotFoundError
        If ``path`` is missing.
    """
    from fungi_ssl.data.download import REAL_TABLES
    from fungi_ssl.data.reference import _sha256

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sample table {path} not found")
    table = pd.read_csv(path)
    sha = _sha256(path)
    return {
        **variogram_summary(table),
        "study_split": _study_split_summary(table),
        "provenance": {
            "source_file": path.name,
            "source": REAL_TABLES["globalfungi_europe"].url,
            "sha256": sha,
            "sha256_matches_published": sha == REAL_TABLES["globalfungi_europe"].sha256,
            "n_rows": len(table),
            "computed": (today or _dt.date.today()).isoformat(),
            "function": "fungi_ssl.data.variogram.variogram_summary",
            "how": "semivariance of log1p(rarefied) over pairs of samples in each distance band "
                   "(geodesic WGS84 distances), over the variance of log1p(rarefied); "
                   "sub_km_index 90% interval from 1000 bootstraps of 50 km blocks of sites; "
                   "study_split: each band's pairs within one study and between two, studies "
                   "inferred from runs of consecutive sample ids (inferred_studies)",
            "command": f"python -m fungi_ssl.data.variogram {path.name}",
        },
    }


def load_variogram_reference() -> dict[str, object]:
    """The shipped semivariogram summary of the real European table.

    Examples
    --------
    >>> ref = load_variogram_reference()
    >>> ref["provenance"]["source_file"], len(ref["bands"]) == len(BANDS)
    ('globalfungi_ecm_richness_europe.csv', True)
    """
    text = resources.files("fungi_ssl").joinpath("reference", VARIOGRAM_REFERENCE_FILE).read_text()
    return json.loads(text)


def reference_variogram(data_dir: str | Path | None = None) -> tuple[dict[str, object], str]:
    """The real European table's semivariogram summary: from the table if ``data_dir`` holds it, else shipped.

    Returns
    -------
    summary : dict
        As :func:`variogram_summary` (the shipped one adds ``provenance``).
    origin : str
        ``"table"`` or ``"shipped"``.
    """
    table = _real_table(data_dir)
    if table is not None:
        return variogram_summary(table), "table"
    return load_variogram_reference(), "shipped"


def _real_table(data_dir: str | Path | None) -> pd.DataFrame | None:
    """The real European table in ``data_dir``, or ``None`` when it is not there."""
    from fungi_ssl.data.reference import REFERENCE_TABLE

    if data_dir:
        path = Path(data_dir) / REFERENCE_TABLE
        if path.is_file():
            return pd.read_csv(path)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Write the shipped summary: ``python -m fungi_ssl.data.variogram CSV``."""
    return write_reference_main(argv, module="fungi_ssl.data.variogram",
                                output_name=VARIOGRAM_REFERENCE_FILE,
                                compute=compute_variogram_reference)


if __name__ == "__main__":
    sys.exit(main())
