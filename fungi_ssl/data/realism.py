"""How a sample table looks: the statistics that make a study about as hard as the real one.

Chapter 00 sets the simulated study's sample table beside the real
GlobalFungi table for Europe. Both go through the same function,
:func:`sample_table_statistics`, so a difference between the two columns is a
difference between the tables, not between two pieces of code.

The real table itself is not part of the repository. Its statistics are, with
their provenance, in ``fungi_ssl/reference/globalfungi_europe_summary.json``
(package data), so the comparison is shown in every build. When a data
directory holds the real table, :func:`reference_statistics` computes them
from the table instead. The shipped file is rewritten with::

    python -m fungi_ssl.data.realism /path/to/globalfungi_ecm_richness_europe.csv

and ``tests/test_realism.py`` (with ``--real-data DIR``) recomputes it from the
table and checks that it matches.

Definitions
-----------
- Statistics of richness are computed on the rows that have a ``rarefied``
  value, as GlobalFungi's users model them.
- A *site* is the package's one definition (:func:`fungi_ssl.data.sites.site_groups`):
  samples joined by a chain of samples within 25 m of each other, which
  includes all cores that share a plot coordinate (GlobalFungi gives every
  core of a plot the plot's coordinate). ``n_coordinates`` counts the distinct
  recorded coordinates as well, as ``shared/tools/realism_report.py`` does.
- The *precision* of a coordinate is the number of decimals of the coarser of
  its longitude and latitude: ``46.5, 7.1234`` has one decimal. Coarse
  coordinates put a sample's satellite patch up to hundreds of metres from
  where it was taken.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fungi_ssl.data.reference import REFERENCE_TABLE, _sha256, write_reference_main

__all__ = [
    "QUANTILES",
    "REFERENCE_FILE",
    "STATISTICS",
    "TOLERANCES",
    "agreement",
    "compare_statistics",
    "compute_reference",
    "load_reference",
    "reference_statistics",
    "sample_table_statistics",
    "variogram_comparison",
]

#: Quantiles of rarefied richness reported (as ``rarefied_qNN``).
QUANTILES = (0.10, 0.25, 0.50, 0.75, 0.90, 0.99)

#: Every statistic :func:`sample_table_statistics` returns, in order, with its meaning.
STATISTICS: dict[str, str] = {
    "n_samples": "samples with a rarefied value",
    "share_without_value": "share of rows without a rarefied value (too shallow to rarefy)",
    "n_coordinates": "distinct recorded coordinates",
    "n_sites": "sites (samples within 25 m, fungi_ssl.cv.site_groups)",
    "samples_per_site_mean": "samples per site, mean",
    "samples_per_site_max": "samples per site, max",
    **{f"rarefied_q{round(q * 100):02d}": f"rarefied richness, {round(q * 100)}% quantile"
       for q in QUANTILES},
    "share_zero": "share of samples with rarefied richness 0",
    "within_site_share_log_variance": "within-site share of the variance of log(1 + rarefied)",
    "spearman_raw_vs_rarefied": "Spearman correlation of raw_obs_div and rarefied",
    "share_rarefied_above_raw": "share of samples whose rarefied value exceeds raw_obs_div",
    "share_coords_le2_decimals": "share of samples whose coordinate has at most 2 decimals",
    "share_coords_le1_decimals": "share of samples whose coordinate has at most 1 decimal",
}

#: Name of the shipped summary of the real European table (in ``fungi_ssl/reference``).
REFERENCE_FILE = "globalfungi_europe_summary.json"
#: Decimal places to which coordinates are compared when counting distinct coordinates.
COORDINATE_DECIMALS = 6

#: How close a simulated statistic must be to the real one to count as matching:
#: ``("relative", t)`` means within ±t of the real value times t, ``("absolute", t)``
#: within ±t. Statistics not listed here are shown but not judged (sizes,
#: the largest site, the upper tail, which the text discusses).
TOLERANCES: dict[str, tuple[str, float]] = {
    "rarefied_q25": ("relative", 0.30),
    "rarefied_q50": ("relative", 0.30),
    "rarefied_q75": ("relative", 0.30),
    "rarefied_q90": ("relative", 0.30),
    "samples_per_site_mean": ("relative", 0.25),
    "within_site_share_log_variance": ("absolute", 0.06),
    "share_without_value": ("absolute", 0.05),
    "share_coords_le2_decimals": ("absolute", 0.07),
}

_REQUIRED = ("longitude", "latitude", "rarefied")


def _numeric_column(samples: pd.DataFrame, column: str, source: str) -> pd.Series:
    values = pd.to_numeric(samples[column], errors="coerce")
    bad = values.isna() & samples[column].notna()
    if bad.any():
        rows = list(samples.index[bad][:5])
        raise ValueError(f"{source}: column {column!r} must be numeric; non-numeric at rows {rows}")
    return values.astype(float)


def coordinate_decimals(values: Any, max_decimals: int = 9) -> np.ndarray:
    """Number of decimals each coordinate was recorded with.

    The smallest ``k`` for which rounding to ``k`` decimals leaves the value
    unchanged (to 1e-10), capped at ``max_decimals``. Exact for values read
    from a CSV file (GlobalFungi records up to eight decimals); a coordinate
    computed in floating point counts as ``max_decimals``.

    Examples
    --------
    >>> coordinate_decimals([52.04222, 6.0, 21.8, 1 / 3]).tolist()
    [5, 0, 1, 9]
    """
    x = np.asarray(values, dtype=float)
    out = np.full(x.shape, max_decimals, dtype=int)
    for k in range(max_decimals - 1, -1, -1):
        exact = np.abs(np.round(x, k) - x) < 1e-10
        out[exact] = k
    return out


def sample_table_statistics(samples: pd.DataFrame, source: str = "sample table") -> dict[str, float]:
    """The realism statistics of one sample table (GlobalFungi schema).

    Parameters
    ----------
    samples : pandas.DataFrame
        Columns ``longitude``, ``latitude``, ``rarefied`` and optionally
        ``raw_obs_div``; rows without a ``rarefied`` value count only in
        ``share_without_value``. A table read with
        :func:`fungi_ssl.data.io.read_samples` has had those rows dropped; their
        number in ``samples.attrs["n_dropped_na"]`` is counted back.
    source : str
        Name of the table, used in error messages.

    Returns
    -------
    dict
        One float per key of :data:`STATISTICS` (NaN where undefined, e.g.
        the Spearman correlation without ``raw_obs_div``).

    Raises
    ------
    ValueError
        If a required column is missing or not numeric, or no row has a
        ``rarefied`` value.

    Examples
    --------
    >>> t = pd.DataFrame({"longitude": [6.02, 6.02, 7.5, 8.123],
    ...                   "latitude": [52.01, 52.01, 50.1, 49.876],
    ...                   "raw_obs_div": [3, 5, 0, 9], "rarefied": [4.0, 6.0, 0.0, float("nan")]})
    >>> s = sample_table_statistics(t)
    >>> s["n_samples"], s["n_sites"], s["samples_per_site_max"], s["share_zero"]
    (3.0, 2.0, 2.0, 0.3333333333333333)
    >>> s["share_without_value"], s["share_coords_le1_decimals"]
    (0.25, 0.3333333333333333)
    """
    if not isinstance(samples, pd.DataFrame):
        raise TypeError(f"{source}: expected a pandas DataFrame, got {type(samples).__name__}")
    missing = [c for c in _REQUIRED if c not in samples.columns]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; expected {list(_REQUIRED)}")
    rarefied = _numeric_column(samples, "rarefied", source)
    has_value = rarefied.notna().to_numpy()
    n_rows = len(samples) + int(samples.attrs.get("n_dropped_na", 0))
    if not has_value.any():
        raise ValueError(f"{source}: no row has a 'rarefied' value")
    lon = _numeric_column(samples, "longitude", source).to_numpy()[has_value]
    lat = _numeric_column(samples, "latitude", source).to_numpy()[has_value]
    r = rarefied.to_numpy()[has_value]

    from fungi_ssl.data.sites import site_groups

    coordinates = pd.MultiIndex.from_arrays(
        [np.round(lon, COORDINATE_DECIMALS), np.round(lat, COORDINATE_DECIMALS)]
    )
    codes = site_groups(np.column_stack([lon, lat]))
    per_site = np.bincount(codes)
    log_r = np.log1p(r)
    site_mean = np.bincount(codes, weights=log_r) / per_site
    total_ss = float(np.sum((log_r - log_r.mean()) ** 2))
    within_ss = float(np.sum((log_r - site_mean[codes]) ** 2))

    if "raw_obs_div" in samples.columns:
        raw = _numeric_column(samples, "raw_obs_div", source).to_numpy()[has_value]
        both = np.isfinite(raw)
        rho = float(pd.Series(raw[both]).corr(pd.Series(r[both]), method="spearman"))
        above = float(np.mean(r[both] > raw[both])) if both.any() else float("nan")
    else:
        rho = above = float("nan")

    decimals = np.minimum(coordinate_decimals(lon), coordinate_decimals(lat))
    quantiles = np.quantile(r, QUANTILES)  # linear interpolation, as pandas
    out: dict[str, float] = {
        "n_samples": float(len(r)),
        "share_without_value": float(1.0 - len(r) / n_rows),
        "n_coordinates": float(coordinates.nunique()),
        "n_sites": float(len(per_site)),
        "samples_per_site_mean": float(per_site.mean()),
        "samples_per_site_max": float(per_site.max()),
        **{f"rarefied_q{round(q * 100):02d}": float(v) for q, v in zip(QUANTILES, quantiles)},
        "share_zero": float(np.mean(r == 0)),
        "within_site_share_log_variance": within_ss / total_ss if total_ss > 0 else float("nan"),
        "spearman_raw_vs_rarefied": rho,
        "share_rarefied_above_raw": above,
        "share_coords_le2_decimals": float(np.mean(decimals <= 2)),
        "share_coords_le1_decimals": float(np.mean(decimals <= 1)),
    }
    assert list(out) == list(STATISTICS)
    return out


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"sample table {path} not found")
    return pd.read_csv(path)


def compute_reference(path: str | Path, today: _dt.date | None = None) -> dict[str, Any]:
    """Statistics of the real European table with their provenance: the shipped JSON's content.

    Parameters
    ----------
    path : str or pathlib.Path
        ``globalfungi_ecm_richness_europe.csv``.
    today : datetime.date, optional
        Date recorded as ``computed`` (default: today).

    Returns
    -------
    dict
        ``statistics`` (:func:`sample_table_statistics`) and ``provenance``:
        file name, its sha256, whether that equals the published checksum
        (:data:`fungi_ssl.data.download.REAL_TABLES`), the date and the command.

    Raises
    ------
    FileNotFoundError
        If ``path`` is missing.
    """
    from fungi_ssl.data.download import REAL_TABLES

    path = Path(path)
    table = _read_table(path)
    sha = _sha256(path)
    published = REAL_TABLES["globalfungi_europe"]
    return {
        "statistics": sample_table_statistics(table, source=str(path.name)),
        "descriptions": dict(STATISTICS),
        "provenance": {
            "source_file": path.name,
            "source": published.url,
            "sha256": sha,
            "sha256_matches_published": sha == published.sha256,
            "n_rows": len(table),
            "computed": (today or _dt.date.today()).isoformat(),
            "function": "fungi_ssl.realism.sample_table_statistics",
            "command": f"python -m fungi_ssl.data.realism {path.name}",
        },
    }


def load_reference() -> dict[str, Any]:
    """The shipped summary of the real European table (see :func:`compute_reference`).

    Examples
    --------
    >>> ref = load_reference()
    >>> ref["provenance"]["source_file"]
    'globalfungi_ecm_richness_europe.csv'
    >>> sorted(ref["statistics"]) == sorted(STATISTICS)
    True
    """
    text = resources.files("fungi_ssl").joinpath("reference", REFERENCE_FILE).read_text()
    return json.loads(text)


def reference_statistics(data_dir: str | Path | None = None) -> tuple[dict[str, float], str]:
    """The real European table's statistics: from the table if ``data_dir`` holds it, else shipped.

    Parameters
    ----------
    data_dir : str or pathlib.Path, optional
        A real data directory; empty or None means none.

    Returns
    -------
    statistics : dict
        As :func:`sample_table_statistics`.
    origin : str
        ``"table"`` when computed from ``<data_dir>/globalfungi_ecm_richness_europe.csv``
        in this call, ``"shipped"`` when read from the package's summary.

    Examples
    --------
    >>> stats, origin = reference_statistics(None)
    >>> origin, stats["n_samples"] > 8000
    ('shipped', True)
    """
    if data_dir:
        path = Path(data_dir) / REFERENCE_TABLE
        if path.is_file():
            return sample_table_statistics(_read_table(path), source=path.name), "table"
    return {k: float(v) if v is not None else float("nan")
            for k, v in load_reference()["statistics"].items()}, "shipped"


def compare_statistics(
    columns: Mapping[str, Mapping[str, float]], keys: Sequence[str] | None = None
) -> pd.DataFrame:
    """Statistics of several tables side by side, one row per statistic.

    Parameters
    ----------
    columns : mapping
        Column name (e.g. ``"simulated"``, ``"real"``) to a statistics dict.
    keys : sequence of str, optional
        Statistics to show, in order (default: all of :data:`STATISTICS`).

    Examples
    --------
    >>> t = compare_statistics({"a": {"n_samples": 3.0}, "b": {"n_samples": 4.0}}, ["n_samples"])
    >>> t.index[0], t.iloc[0].tolist()
    ('n_samples (samples with a rarefied value)', [3.0, 4.0])
    """
    keys = list(keys) if keys is not None else list(STATISTICS)
    frame = pd.DataFrame({name: [stats.get(k, np.nan) for k in keys]
                          for name, stats in columns.items()}, index=keys)
    frame.index = pd.Index([f"{k} ({STATISTICS[k]})" for k in keys], name="statistic")
    return frame


def agreement(
    simulated: Mapping[str, float], real: Mapping[str, float],
    tolerances: Mapping[str, tuple[str, float]] | None = None,
) -> pd.DataFrame:
    """Which statistics of a simulated table lie within tolerance of the real table's.

    Parameters
    ----------
    simulated, real : mapping
        Statistics from :func:`sample_table_statistics` (or the shipped reference).
    tolerances : mapping, optional
        Default :data:`TOLERANCES`.

    Returns
    -------
    pandas.DataFrame
        Indexed by statistic: ``simulated``, ``real``, ``low``, ``high`` (the
        accepted range) and ``matches`` (bool).

    Examples
    --------
    >>> a = agreement({"rarefied_q50": 44.0, "samples_per_site_mean": 3.5},
    ...               {"rarefied_q50": 40.0, "samples_per_site_mean": 2.3})
    >>> a["matches"].to_dict()
    {'rarefied_q50': True, 'samples_per_site_mean': False}
    """
    tolerances = TOLERANCES if tolerances is None else tolerances
    rows = {}
    for key, (kind, tol) in tolerances.items():
        if key not in simulated or key not in real:
            continue
        if kind not in ("relative", "absolute"):
            raise ValueError(f"tolerance kind for {key!r} must be 'relative' or 'absolute'")
        ref = float(real[key])
        half = abs(ref) * tol if kind == "relative" else tol
        sim = float(simulated[key])
        rows[key] = {"simulated": sim, "real": ref, "low": ref - half, "high": ref + half,
                     "matches": bool(ref - half <= sim <= ref + half)}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("statistic")


def variogram_comparison(samples: pd.DataFrame, data_dir: str | Path | None = None,
                         target: str = "rarefied") -> dict[str, Any]:
    """The semivariograms of a (simulated) sample table and of the real European table, band by band.

    The real one is computed from ``<data_dir>/globalfungi_ecm_richness_europe.csv``
    when that exists, and read from the shipped summary
    (:func:`fungi_ssl.data.variogram.load_variogram_reference`) otherwise, so the
    comparison is in every build.

    Parameters
    ----------
    samples : pandas.DataFrame
        The table to compare (for the simulated study: its European samples,
        as the real table is European).

    Returns
    -------
    dict
        ``variogram``: list of ``{band_m: [lo, hi], gamma_real, gamma_simulated,
        pairs_real, pairs_simulated}``; ``simulated`` and ``real``: the two
        :func:`fungi_ssl.data.variogram.variogram_summary` dicts; ``origin``
        (``"table"`` or ``"shipped"``).
    """
    from fungi_ssl.data.variogram import reference_variogram, variogram_summary

    sim = variogram_summary(samples, target)
    real, origin = reference_variogram(data_dir)
    rows = [{"band_m": s["band_m"], "gamma_real": r["gamma_over_var"],
             "gamma_simulated": s["gamma_over_var"], "pairs_real": r["pairs"],
             "pairs_simulated": s["pairs"]}
            for s, r in zip(sim["bands"], real["bands"])]
    return {"variogram": rows, "simulated": sim, "real": real, "origin": origin}


def main(argv: Sequence[str] | None = None) -> int:
    """Write the shipped summary from the real table: ``python -m fungi_ssl.data.realism CSV``."""
    return write_reference_main(argv, module="fungi_ssl.data.realism",
                                output_name=REFERENCE_FILE, compute=compute_reference)


if __name__ == "__main__":
    sys.exit(main())
