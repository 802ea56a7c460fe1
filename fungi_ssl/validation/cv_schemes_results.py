"""Chapter 09's results file and figures, from a :class:`~fungi_ssl.validation.cv_schemes.CVSchemeComparison`.

:func:`chapter_results` gives the numbers ``book/results/09_*.json`` keeps
(:data:`HEADLINE_KEYS` first), :func:`skipped_results` the file of a chapter
that could not run, and :func:`plot_tables` and :func:`plot_r2_by_scheme` its
figures. :mod:`fungi_ssl.validation.cv_schemes` describes the comparison.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fungi_ssl.validation.cv_schemes import (
    SCHEME_LABELS,
    SCHEMES,
    SPUN_PUBLISHED,
    CVSchemeComparison,
)

if TYPE_CHECKING:  # pragma: no cover
    import matplotlib.axes
    import matplotlib.figure

__all__ = [
    "HEADLINE_KEYS",
    "chapter_results",
    "plot_r2_by_scheme",
    "plot_tables",
    "skipped_results",
]


# --------------------------------------------------------------------------
# results file
# --------------------------------------------------------------------------
#: Keys of the chapter's JSON that hold the headline figures (null when skipped).
HEADLINE_KEYS = ("n_samples", "n_sites", *(f"r2_{s}" for s in SCHEMES))


def skipped_results(reason: str, **extra: Any) -> dict[str, Any]:
    """The chapter's JSON when its analysis cannot run: the reason, and null figures.

    Examples
    --------
    >>> out = skipped_results("no real data directory")
    >>> out["skipped"], out["r2_knndm"], out["n_samples"]
    ('no real data directory', None, None)
    """
    return {
        "skipped": reason,
        **{k: None for k in HEADLINE_KEYS},
        "spun_published": {k: SPUN_PUBLISHED[k] for k in ("r2_random", "r2_knndm", "source")},
        **extra,
    }


def chapter_results(
    comparison: CVSchemeComparison,
    model: str = "lightgbm",
    predictor_set: str = "all",
    **extra: Any,
) -> dict[str, Any]:
    """The chapter's JSON: headline R² of one run by scheme, and what explains them.

    ``r2_random``, ``r2_site_grouped``, ``r2_spatial_block``, ``r2_knndm``
    are the pooled out-of-fold R² of ``model`` on ``predictor_set``;
    ``r2_by_run`` holds every run; ``leakage`` the numbers of
    :meth:`CVSchemeComparison.leakage`; ``knndm`` kNNDM's choice and
    distances; ``spun_published`` the figures compared with.
    """
    headline = comparison.r2(model, predictor_set)
    table = comparison.r2_table()
    out: dict[str, Any] = {
        "skipped": None,
        "n_samples": len(comparison.y),
        "n_sites": len(np.unique(comparison.site_ids)),
        **{f"r2_{s}": headline.get(s) for s in SCHEMES},
        "model": model,
        "predictor_set": predictor_set,
        "target": comparison.target,
        "r2_by_run": {
            f"{m}/{s}": {scheme: float(v) for scheme, v in row.items()}
            for (m, s), row in table.iterrows()
        },
        "leakage": comparison.leakage().to_dict(orient="index"),
        "fit_seconds": comparison.seconds,
        "spun_published": {k: SPUN_PUBLISHED[k] for k in ("r2_random", "r2_knndm", "source")},
    }
    res = comparison.knndm
    if res is not None:
        out["knndm"] = {
            "w_km": res.w / 1000.0,
            "n_clusters": res.n_clusters,
            "n_folds": res.n_folds,
            "random_cv": res.random_cv,
            "ks_pvalue": res.ks_pvalue,
            "n_prediction_points": len(res.gij),
            "median_gij_km": float(np.median(res.gij) / 1000.0),
            "median_gj_km": float(np.median(res.gj) / 1000.0),
            "median_gjstar_km": float(np.median(res.gjstar) / 1000.0),
        }
    out.update(extra)
    return out


# --------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------
def plot_tables(
    tables: Mapping[str, pd.DataFrame], axes: Sequence[matplotlib.axes.Axes] | None = None,
    guild: str = "ECM",
) -> matplotlib.figure.Figure:
    """Richness distribution and site sizes of one or more sample tables, side by side.

    Left: histogram (density) of rarefied richness on a log(1 + x) axis.
    Right: the share of samples at sites of at most a given number of
    samples (sites from ``site_id``).

    Parameters
    ----------
    tables : mapping of label to DataFrame
        Sample tables with ``rarefied`` and ``site_id``.
    guild : str
        The guild whose rarefied richness the tables hold (axis label).
    axes : two matplotlib Axes, optional

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> t = pd.DataFrame({"rarefied": [0.0, 5, 50, 100], "site_id": ["a", "a", "b", "c"]})
    >>> fig = plot_tables({"demo": t})
    >>> len(fig.axes)
    2
    """
    import matplotlib.pyplot as plt

    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.4), layout="constrained")
    fig = axes[0].figure
    edges = np.linspace(0, np.log1p(max(float(t["rarefied"].max()) for t in tables.values())), 41)
    for label, t in tables.items():
        log_r = np.log1p(t["rarefied"].to_numpy(dtype=float))
        axes[0].hist(log_r, bins=edges, density=True, histtype="step", linewidth=1.6, label=label)
        size = t.groupby("site_id")["site_id"].transform("size").to_numpy()
        axes[1].ecdf(size, label=label)
    ticks = np.array([0, 1, 3, 10, 30, 100, 300, 1000])
    ticks = ticks[np.log1p(ticks) <= edges[-1] + 1e-9]
    axes[0].set_xticks(np.log1p(ticks), [str(v) for v in ticks])
    axes[0].set(xlabel=f"rarefied {guild} richness (log(1 + x) axis)", ylabel="density")
    axes[0].legend(fontsize="small")
    axes[1].set(xscale="log", xlabel="samples at the sample's site", ylabel="share of samples")
    return fig


def plot_r2_by_scheme(
    comparison: CVSchemeComparison,
    published: Mapping[str, Any] | None = SPUN_PUBLISHED,
    ax: matplotlib.axes.Axes | None = None,
) -> matplotlib.axes.Axes:
    """Pooled R² of every run, grouped by run, one bar per scheme; SPUN's figures as lines.

    Examples
    --------
    >>> from fungi_ssl.validation.cv_schemes import compare_cv_schemes
    >>> import matplotlib; matplotlib.use("Agg")
    >>> rng = np.random.default_rng(0)
    >>> t = pd.DataFrame({"longitude": rng.uniform(0, 10, 60), "latitude": rng.uniform(45, 55, 60)})
    >>> cov = pd.DataFrame({"CGIAR_PET": t["latitude"] + rng.normal(0, 1, 60)})
    >>> t["y"] = 0.1 * t["latitude"] + rng.normal(0, 0.1, 60)
    >>> res = compare_cv_schemes(t, cov, "y", runs=[("ridge", "climate")],
    ...                          schemes=["random", "site_grouped"], progress=False)
    >>> len(plot_r2_by_scheme(res).patches)
    2
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(9.0, 3.6), layout="constrained")
    table = comparison.r2_table()
    schemes = list(table.columns)
    width = 0.8 / len(schemes)
    x = np.arange(len(table))
    for i, s in enumerate(schemes):
        ax.bar(
            x + (i - (len(schemes) - 1) / 2) * width,
            table[s].to_numpy(),
            width,
            label=SCHEME_LABELS[s],
        )
    if published:
        # SPUN's figures are a random forest on all covariates: drawn over that run if present
        at = list(table.index).index(("rf", "all")) if ("rf", "all") in table.index else None
        span = (-0.5, len(table) - 0.5) if at is None else (at - 0.45, at + 0.45)
        for key, style in (("r2_random", "--"), ("r2_knndm", ":")):
            scheme = key.removeprefix("r2_")
            ax.hlines(
                published[key],
                *span,
                color="black",
                linestyles=style,
                linewidth=1.4,
                label=f"SPUN published, {SCHEME_LABELS[scheme]}",
            )
    ax.set_xticks(x, [f"{m}\n{s}" for m, s in table.index])
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_ylabel("pooled out-of-fold R²")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax
