"""Chapter 06's scores: each map against the truth, the product map's criteria and the regions' levels.

* per map and region: :func:`r2`, :func:`squared_correlation`,
  :func:`within_cell_r2` (the share of the truth's within-cell variance a map
  recovers) and :func:`pixel_ratio`;
* pooled over the held-out regions: :func:`score_products` (every pixel,
  1 km means, within-cell variance, per-region mean error),
  :func:`region_scores` (one row per region) and :func:`bootstrap_scores`
  (percentile intervals, :data:`CI_LEVEL`, from a bootstrap over regions);
* the product map: :func:`criteria_table` (issue 18's criteria,
  :data:`CRITERIA`, with the margins :data:`PRODUCT_MARGINS` against the
  single-scale maps :data:`SINGLE_SCALE`) and :func:`pick_product`;
* regional levels: :func:`level_shares`, how much of the regions' true
  offsets each map's regional means reproduce.

The maps scored are :class:`fungi_ssl.maps.resolution.RegionProducts`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fungi_ssl.maps.resolution_regions import CELL_PX, _expand, cell_means

if TYPE_CHECKING:
    from fungi_ssl.maps.resolution import RegionProducts

__all__ = [
    "CI_LEVEL",
    "CRITERIA",
    "PRODUCT_MARGINS",
    "SINGLE_SCALE",
    "bootstrap_scores",
    "criteria_table",
    "level_shares",
    "pick_product",
    "pixel_ratio",
    "r2",
    "region_scores",
    "score_products",
    "squared_correlation",
    "within_cell_r2",
]


#: Confidence of the bootstrap intervals over regions.
CI_LEVEL = 0.9
#: The single-scale maps a product map is measured against (never a product candidate).
SINGLE_SCALE = ("10m", "1km")
#: The issue's criteria for a product map (issue 18): per-pixel R² at least this much above
#: the better single-scale map; R² of 1 km means at most this much below the 1 km map's;
#: within-cell R² at most this much below the 10 m map's; |mean error| of every region at
#: most this many log units.
PRODUCT_MARGINS: dict[str, float] = {"pixel": 0.03, "cell": 0.02, "within": 0.05, "bias": 0.25}
# --------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------

def _pairs(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t, p = np.asarray(truth, float).ravel(), np.asarray(pred, float).ravel()
    if t.shape != p.shape:
        raise ValueError(f"truth and prediction differ in size ({t.size} and {p.size})")
    ok = np.isfinite(t) & np.isfinite(p)
    return t[ok], p[ok]


def r2(truth: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination ``1 − SSE / SST`` over the pairs where both are finite.

    Examples
    --------
    >>> r2([1.0, 2.0, 3.0, np.nan], [1.0, 2.0, 4.0, 5.0])
    0.5
    """
    t, p = _pairs(truth, pred)
    if t.size < 2:
        return float("nan")
    sst = float(((t - t.mean()) ** 2).sum())
    return float(1.0 - ((t - p) ** 2).sum() / sst) if sst > 0 else float("nan")


def squared_correlation(truth: np.ndarray, pred: np.ndarray) -> float:
    """Squared Pearson correlation over the finite pairs (NaN if either is constant).

    Examples
    --------
    >>> round(squared_correlation([1.0, 2.0, 3.0], [2.0, 4.0, 6.5]), 4)
    0.9959
    """
    t, p = _pairs(truth, pred)
    if t.size < 2 or t.std() == 0 or p.std() == 0:
        return float("nan")
    return float(np.corrcoef(t, p)[0, 1] ** 2)


def _deviations(values: np.ndarray, mask: np.ndarray, f: int) -> np.ndarray:
    v = np.where(mask, values, np.nan)
    return v - _expand(cell_means(v, f), f)


def within_cell_r2(truth: np.ndarray, pred: np.ndarray, f: int = CELL_PX) -> float:
    """The share of the truth's within-cell variance a map recovers.

    R² of the within-cell deviations: each map's pixels minus its own cell
    mean, over the pixels where both are finite,
    ``1 − Σ (d_truth − d_pred)² / Σ d_truth²``. A map constant within each
    cell (a 1 km map) scores 0; one that reproduces the truth up to a
    per-cell offset scores 1.

    Examples
    --------
    >>> t = np.array([[1.0, 3.0], [2.0, 6.0]])
    >>> within_cell_r2(t, t + 10.0, f=2), within_cell_r2(t, np.full((2, 2), 3.0), f=2)
    (1.0, 0.0)
    """
    t, p = np.asarray(truth, float), np.asarray(pred, float)
    if t.shape != p.shape:
        raise ValueError(f"within_cell_r2: truth {t.shape} and prediction {p.shape} differ")
    mask = np.isfinite(t) & np.isfinite(p)
    dt, dp = _deviations(t, mask, f), _deviations(p, mask, f)
    dt, dp = dt[mask], dp[mask]
    ss = float((dt ** 2).sum())
    return float(1.0 - ((dt - dp) ** 2).sum() / ss) if ss > 0 else float("nan")


def pixel_ratio(n_fine: int, n_coarse: int) -> float:
    """How many fine pixels a map has for each coarse one over the same area.

    Examples
    --------
    >>> pixel_ratio(1_000_000, 100)
    10000.0
    """
    if n_coarse <= 0 or n_fine < 0:
        raise ValueError(f"pixel_ratio: need n_coarse > 0 and n_fine ≥ 0, got {n_coarse}, {n_fine}")
    return float(n_fine) / float(n_coarse)


def _map_layers(p: RegionProducts) -> dict[str, np.ndarray]:
    """Every candidate map of a region on its 10 m pixels (``log1p`` scale)."""
    out = {"10m": p.map_10m, "1km": p.map_1km_pixels}
    if p.map_product is not None:
        out["product"] = p.map_product
    out.update(p.alternatives)
    return out


def _region_sums(p: RegionProducts, min_valid: float) -> dict[str, Any]:
    """Sums from which every score of :func:`score_products` follows, for one region.

    Pixels: land pixels where every candidate map has a value. Cells: cells
    with at least ``min_valid`` of their pixels scored.
    """
    maps = _map_layers(p)
    ok = np.isfinite(p.truth)
    for v in maps.values():
        ok &= np.isfinite(v)
    t = np.where(ok, p.truth, np.nan)
    tc = cell_means(t, min_valid=min_valid)
    keep = np.isfinite(tc)
    dt = _deviations(t, ok, CELL_PX)[ok]
    tv = t[ok]
    out: dict[str, Any] = {"n": int(ok.sum()), "st": tv.sum(), "stt": (tv ** 2).sum(),
                           "nc": int(keep.sum()), "sct": tc[keep].sum(),
                           "sctt": (tc[keep] ** 2).sum(), "sdd_t": (dt ** 2).sum(), "maps": {}}
    for name, v in maps.items():
        pv = v[ok]
        pc = cell_means(np.where(ok, v, np.nan))[keep]
        dp = _deviations(np.asarray(v, float), ok, CELL_PX)[ok]
        out["maps"][name] = {
            "sp": pv.sum(), "spp": (pv ** 2).sum(), "stp": (tv * pv).sum(),
            "scp": pc.sum(), "scpp": (pc ** 2).sum(), "sctp": (tc[keep] * pc).sum(),
            "sdd": ((dt - dp) ** 2).sum(), "bias": float(np.mean(pv - tv)) if pv.size else np.nan}
    return out


def _r2_sums(n, st, stt, sp, spp, stp) -> tuple[float, float]:
    """R² and squared correlation from sums (NaN where undefined)."""
    if n < 2:
        return float("nan"), float("nan")
    sst = stt - st * st / n
    spp_c = spp - sp * sp / n
    stp_c = stp - st * sp / n
    sse = stt - 2 * stp + spp
    r2v = 1.0 - sse / sst if sst > 0 else float("nan")
    corr = stp_c * stp_c / (sst * spp_c) if sst > 0 and spp_c > 1e-12 * max(spp, 1.0) else float("nan")
    return float(r2v), float(corr)


#: Score name templates and the map each applies to, for :func:`_scores_from_sums`.
_NAMES = {"10m": ("r2_10m_vs_truth", "r2corr_10m_vs_truth", "r2_10m_aggregated_vs_truth_1km",
                  "r2corr_10m_aggregated_vs_truth_1km", "within_cell_variance_captured"),
          "1km": ("r2_1km_vs_truth", "r2corr_1km_vs_truth", "r2_1km_vs_truth_1km",
                  "r2corr_1km_vs_truth_1km", "within_cell_variance_captured_1km")}


def _names(name: str) -> tuple[str, ...]:
    return _NAMES.get(name, (f"r2_{name}_vs_truth", f"r2corr_{name}_vs_truth",
                             f"r2_{name}_aggregated_vs_truth_1km",
                             f"r2corr_{name}_aggregated_vs_truth_1km",
                             f"within_cell_variance_captured_{name}"))


def _scores_from_sums(sums: Sequence[dict[str, Any]], weights: np.ndarray | None = None
                      ) -> dict[str, float]:
    """Pooled scores of regions (each counted ``weights`` times) from :func:`_region_sums`."""
    w = np.ones(len(sums)) if weights is None else np.asarray(weights, float)

    def tot(key, name=None):
        return float(sum(wi * (s[key] if name is None else s["maps"][name][key])
                         for wi, s in zip(w, sums)))

    n, st, stt = tot("n"), tot("st"), tot("stt")
    nc, sct, sctt = tot("nc"), tot("sct"), tot("sctt")
    sdd_t = tot("sdd_t")
    out: dict[str, float] = {}
    for name in sums[0]["maps"]:
        a, b, c, d, e = _names(name)
        out[a], out[b] = _r2_sums(n, st, stt, tot("sp", name), tot("spp", name), tot("stp", name))
        out[c], out[d] = _r2_sums(nc, sct, sctt, tot("scp", name), tot("scpp", name),
                                  tot("sctp", name))
        out[e] = 1.0 - tot("sdd", name) / sdd_t if sdd_t > 0 else float("nan")
    sst = stt - st * st / n if n else float("nan")
    out["within_cell_share_of_truth"] = sdd_t / sst if n and sst > 0 else float("nan")
    return out


def bootstrap_scores(products: Sequence[RegionProducts], n_boot: int = 2000, seed: int = 0,
                     level: float = CI_LEVEL, min_valid: float = 0.5) -> dict[str, list[float]]:
    """Percentile intervals of every pooled score from a bootstrap over regions.

    Regions are drawn with replacement ``n_boot`` times; each draw pools the
    drawn regions' pixels (a region drawn twice counts twice) and recomputes
    the scores of :func:`score_products` from per-region sums, so a draw costs
    no pass over the pixels. The regions, not the pixels, are the units of
    replication: the pixels of one region share its level error.

    Returns
    -------
    dict
        ``<score>_ci``: ``[lower, upper]`` for every score of
        :func:`score_products` that depends on the maps, and for
        ``within_cell_share_of_truth``; draws where a score is undefined are
        left out.
    """
    if len(products) < 2:
        raise ValueError(f"bootstrap_scores: need at least 2 regions, got {len(products)}")
    sums = [_region_sums(p, min_valid) for p in products]
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(sums), np.full(len(sums), 1.0 / len(sums)), size=int(n_boot))
    rows = [_scores_from_sums(sums, d) for d in draws]
    tab = pd.DataFrame(rows)
    a = (1.0 - float(level)) / 2
    return {f"{k}_ci": [float(np.nanquantile(tab[k], a)), float(np.nanquantile(tab[k], 1 - a))]
            for k in tab.columns}


def score_products(products: Sequence[RegionProducts], min_valid: float = 0.5,
                   seconds: float | None = None) -> dict[str, Any]:
    """Score the 10 m and the 1 km maps of every region against the truth (``log1p`` scale).

    Every score uses the same pixels: land pixels where every candidate map
    has a value. 1 km scores use the cells with at least ``min_valid`` of their
    pixels scored; a cell's truth and 10 m value are the means of those
    pixels, its 1 km value the 1 km map's. Scores pool the regions' pixels;
    they are computed from per-region sums, which :func:`bootstrap_scores`
    reweights.

    Returns
    -------
    dict
        ``r2_10m_vs_truth``, ``r2_1km_vs_truth`` (every pixel),
        ``r2corr_10m_vs_truth``, ``r2corr_1km_vs_truth`` (squared correlations),
        ``r2_10m_aggregated_vs_truth_1km``, ``r2_1km_vs_truth_1km`` and their
        squared correlations, ``within_cell_variance_captured`` (10 m map;
        the 1 km map scores 0 by construction), ``within_cell_share_of_truth``
        (share of the truth's variance that lies within cells),
        ``pixel_ratio``, ``n_cells_1km`` (whole cells mapped),
        ``n_cells_scored``, ``n_pixels`` (10 m pixels mapped),
        ``n_pixels_scored``, ``n_regions``, ``pixels_per_second``
        (pixels over the seconds of :func:`predict_region_map`, or over
        ``seconds`` if given). For every other candidate map ``c`` present
        (``product``, ``deviations``, ``residual``): ``r2_<c>_vs_truth``,
        ``r2corr_<c>_vs_truth``, ``r2_<c>_aggregated_vs_truth_1km``,
        ``r2corr_<c>_aggregated_vs_truth_1km``, ``within_cell_variance_captured_<c>``.
    """
    if not products:
        raise ValueError("score_products: no regions to score")
    sums = [_region_sums(p, min_valid) for p in products]
    n_pixels = int(sum(p.region.n_pixels for p in products))
    n_cells = int(sum(p.region.n_cells for p in products))
    secs = float(seconds) if seconds is not None else float(sum(p.run.seconds for p in products))
    return {
        **_scores_from_sums(sums),
        "pixel_ratio": pixel_ratio(n_pixels, n_cells),
        "n_cells_1km": n_cells,
        "n_cells_scored": int(sum(s["nc"] for s in sums)),
        "n_pixels": n_pixels,
        "n_pixels_scored": int(sum(s["n"] for s in sums)),
        "n_regions": len(products),
        "pixels_per_second": n_pixels / secs if secs > 0 else float("nan"),
    }


def region_scores(products: Sequence[RegionProducts]) -> pd.DataFrame:
    """:func:`score_products` of each region alone, one row per region (which landscapes
    each map wins in).

    Besides the scores: ``truth_mean`` and ``truth_sd`` of the region's scored
    pixels, and ``bias_<map>`` for every candidate (``bias_10m``, ``bias_1km``,
    ``bias_product`` …), each map's mean error (map − truth) over them: a map
    can follow the pattern inside a region (high r²) and still miss its level
    (negative R²). ``n_withheld``: samples its models were fitted without.
    """
    rows = []
    for p in products:
        sc = score_products([p])
        s = _region_sums(p, 0.5)
        ok = _scored_mask(p)
        row = {"region": p.region.name, "landscape": f"{p.region.continent}, {p.region.focus}",
               "campaign": p.region.campaign, "woodland_share": p.region.woodland_share}
        for name in s["maps"]:
            row.update({k: sc[k] for k in _names(name)})
        row.update({"n_pixels_scored": sc["n_pixels_scored"],
                    "truth_mean": float(np.mean(p.truth[ok])),
                    **{f"bias_{name}": m["bias"] for name, m in s["maps"].items()},
                    "truth_sd": float(np.std(p.truth[ok]))})
        hm = p.extra.get("models")
        if hm is not None:
            row.update(n_withheld=hm.n_withheld, campaigns_withheld=hm.campaigns_withheld)
        rows.append(row)
    return pd.DataFrame(rows).set_index("region")


# --------------------------------------------------------------------------
# The product map: the criteria for every candidate, and the winner
# --------------------------------------------------------------------------

#: The criteria of :func:`criteria_table` as chapter 06 and its JSON name them.
CRITERIA: dict[str, str] = {
    "pixel": "R² every pixel ≥ max(10 m, 1 km) + 0.03",
    "cell": "R² of 1 km means ≥ 1 km map's − 0.02",
    "within": "within-cell R² ≥ 10 m map's − 0.05",
    "bias": "largest |mean error| of a region ≤ 0.25 log units",
}


def criteria_table(scores: dict[str, Any], per_region: pd.DataFrame,
                   candidates: Sequence[str] | None = None,
                   margins: dict[str, float] | None = None) -> pd.DataFrame:
    """The issue's four criteria for a product map, for every candidate map.

    Parameters
    ----------
    scores : dict
        :func:`score_products` of the held-out regions (pooled scores).
    per_region : pandas.DataFrame
        :func:`region_scores` of the same regions (``bias_<map>`` columns).
    candidates : sequence of str, optional
        Maps to check (default every map with scores and a bias column).
    margins : dict, optional
        Default :data:`PRODUCT_MARGINS`.

    Returns
    -------
    pandas.DataFrame
        One row per candidate: ``r2_vs_truth``, ``r2_aggregated_vs_truth_1km``,
        ``within_cell_variance_captured``, ``max_abs_bias`` and ``worst_region``
        (its value), the target each is held to (``target_<criterion>`` for
        ``pixel``, ``cell``, ``within``, ``bias``), ``met_<criterion>`` and
        ``n_met``. Targets come from the 10 m and 1 km maps' own scores.

    Examples
    --------
    >>> sc = {"r2_10m_vs_truth": 0.4, "r2_1km_vs_truth": 0.2, "r2_1km_vs_truth_1km": 0.5,
    ...       "r2_10m_aggregated_vs_truth_1km": 0.4, "within_cell_variance_captured": 0.4,
    ...       "within_cell_variance_captured_1km": 0.0, "r2_x_vs_truth": 0.45,
    ...       "r2_x_aggregated_vs_truth_1km": 0.49, "within_cell_variance_captured_x": 0.36}
    >>> pr = pd.DataFrame({"bias_10m": [0.3, -0.1], "bias_1km": [0.2, 0.1],
    ...                    "bias_x": [0.2, -0.26]}, index=["R1", "R2"])
    >>> t = criteria_table(sc, pr)
    >>> [bool(t.loc["x", f"met_{k}"]) for k in CRITERIA], int(t.loc["x", "n_met"])
    ([True, True, True, False], 3)
    >>> t.loc["x", "worst_region"]
    'R2'
    """
    m = {**PRODUCT_MARGINS, **(margins or {})}
    if candidates is None:
        biased = [c[len("bias_"):] for c in per_region.columns if c.startswith("bias_")]
        candidates = list(dict.fromkeys([*SINGLE_SCALE, *(c for c in biased
                                                          if _names(c)[0] in scores)]))
    targets = {"pixel": max(scores["r2_10m_vs_truth"], scores["r2_1km_vs_truth"]) + m["pixel"],
               "cell": scores["r2_1km_vs_truth_1km"] - m["cell"],
               "within": scores["within_cell_variance_captured"] - m["within"],
               "bias": m["bias"]}
    rows = []
    for c in candidates:
        a, _, agg, _, wc = _names(c)
        missing = [k for k in (a, agg, wc) if k not in scores]
        if missing or f"bias_{c}" not in per_region:
            raise ValueError(f"criteria_table: candidate {c!r} has no scores {missing} or no "
                             f"bias_{c} column")
        bias = per_region[f"bias_{c}"].astype(float)
        row = {"candidate": c, "r2_vs_truth": scores[a], "r2_aggregated_vs_truth_1km": scores[agg],
               "within_cell_variance_captured": scores[wc],
               "max_abs_bias": float(bias.abs().max()), "worst_region": str(bias.abs().idxmax())}
        values = {"pixel": scores[a], "cell": scores[agg], "within": scores[wc],
                  "bias": row["max_abs_bias"]}
        for k, v in values.items():
            row[f"target_{k}"] = targets[k]
            row[f"met_{k}"] = bool(v <= targets[k] if k == "bias" else v >= targets[k])
        row["n_met"] = sum(row[f"met_{k}"] for k in CRITERIA)
        rows.append(row)
    return pd.DataFrame(rows).set_index("candidate")


def pick_product(table: pd.DataFrame) -> str:
    """The book's product map by the issue's criteria: among the maps that use both scales
    (not :data:`SINGLE_SCALE`), the one that meets most criteria of :func:`criteria_table`,
    ties broken by R² over every pixel.

    Examples
    --------
    >>> t = pd.DataFrame({"n_met": [1, 3, 3, 2], "r2_vs_truth": [0.9, 0.5, 0.55, 0.6]},
    ...                  index=["10m", "a", "b", "c"])
    >>> pick_product(t)
    'b'
    """
    cand = table.loc[[c for c in table.index if c not in SINGLE_SCALE]]
    if cand.empty:
        raise ValueError("pick_product: no candidate uses both scales")
    order = cand.sort_values(["n_met", "r2_vs_truth"], ascending=False, kind="stable")
    return str(order.index[0])


# --------------------------------------------------------------------------
# Regional levels: why no map reaches |mean error| ≤ 0.25 in every region
# --------------------------------------------------------------------------

def level_shares(per_region: pd.DataFrame, names: Sequence[str] | None = None) -> pd.DataFrame:
    """How well each map places the regions' levels: its mean errors per region against the
    spread of the regions' true means.

    ``level_r2`` is ``1 − Σ bias² / Σ (truth_mean − mean of truth_means)²``
    over the regions: the share of the regions' true offsets from their
    common mean that a map's regional means reproduce (1: every region's
    level right; 0: no better than giving every region the same level;
    negative: worse).

    Parameters
    ----------
    per_region : pandas.DataFrame
        :func:`region_scores` (``truth_mean`` and ``bias_<map>`` columns), or
        any table with them.
    names : sequence of str, optional
        Maps (default every ``bias_<map>`` column).

    Returns
    -------
    pandas.DataFrame
        One row per map: ``level_r2``, ``rms_bias``, ``max_abs_bias``,
        ``regions_within`` (regions with ``|bias| ≤`` :data:`PRODUCT_MARGINS`'s
        ``bias``) and ``n_regions``.

    Examples
    --------
    >>> pr = pd.DataFrame({"truth_mean": [1.0, 2.0, 3.0], "bias_a": [0.0, 0.5, 0.0]})
    >>> t = level_shares(pr)
    >>> float(t.loc["a", "level_r2"]), int(t.loc["a", "regions_within"])
    (0.875, 2)
    """
    if names is None:
        names = [c[len("bias_"):] for c in per_region.columns if c.startswith("bias_")]
    t = per_region["truth_mean"].to_numpy(float)
    sst = float(((t - t.mean()) ** 2).sum())
    rows = []
    for n in names:
        b = per_region[f"bias_{n}"].to_numpy(float)
        rows.append({"map": n, "level_r2": 1.0 - float((b ** 2).sum()) / sst if sst > 0 else np.nan,
                     "rms_bias": float(np.sqrt(np.mean(b ** 2))),
                     "max_abs_bias": float(np.abs(b).max()),
                     "regions_within": int((np.abs(b) <= PRODUCT_MARGINS["bias"]).sum()),
                     "n_regions": len(b)})
    return pd.DataFrame(rows).set_index("map")


def _scored_mask(p: RegionProducts) -> np.ndarray:
    ok = np.isfinite(p.truth)
    for v in _map_layers(p).values():
        ok &= np.isfinite(v)
    return ok
