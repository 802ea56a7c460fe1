"""SHAP attributions of tree models, per feature and per predictor group.

:func:`tree_shap` runs ``shap.TreeExplainer`` (exact, path-dependent Tree SHAP,
no background sample) on a LightGBM, random-forest or other tree model, or on
the last step of a :class:`~sklearn.pipeline.Pipeline` whose earlier steps
(e.g. :class:`fungi_ssl.predictors.features.PatchReducer`) are applied first. SHAP values
are additive: for every sample, ``expected_value + values.sum(axis=1)`` is the
model's prediction.

:func:`shap_by_group` attributes each prediction to the predictor groups
(``ssl``, ``climate``, ``soil``, …; see :mod:`fungi_ssl.predictors.features`).

Group attribution: |Σ φ| rather than Σ |φ|
------------------------------------------
Two ways to turn per-feature SHAP values φ_j into one number per group are
in use. The default here, ``how="abs_sum"``, takes for every sample the
group's **summed** SHAP value, Σ_{j∈G} φ_j, which is the group's own
additive part of that prediction (the prediction is the base value plus
the groups' sums), and averages its absolute value over samples. The other,
``how="sum_abs"``, averages Σ_{j∈G} |φ_j|, as summing blocks of per-feature
importances does.

``sum_abs`` grows with the number of columns a group is spread over: the
|φ_j| of a group's columns add up even where they cancel in the
prediction, so a group of many columns collects attribution that a group of
two columns carrying the same signal cannot. In this book the SSL group
enters as 32 principal components and climate as two columns, so under
``sum_abs`` part of ``ssl``'s share comes from its column count alone. ``abs_sum`` does not depend on
how a group's information is split over its columns when the contributions
add up the same: one column, or the same signal split into many that
partly cancel, give the same group value. For a group of one column both
are the usual mean |SHAP|.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from tqdm import tqdm

from fungi_ssl.predictors.features import group_of


@dataclass
class ShapValues:
    """SHAP values of one model on one table.

    Attributes
    ----------
    values : pandas.DataFrame
        One row per sample (the index of ``X``), one column per model feature.
    expected_value : float
        The model's mean output over its training data (the SHAP base value).
    data : pandas.DataFrame
        The feature values the model saw (after any pipeline transforms),
        aligned with ``values``.
    """

    values: pd.DataFrame
    expected_value: float
    data: pd.DataFrame

    @property
    def predictions(self) -> pd.Series:
        """Model output rebuilt from the attributions: base value + row sums."""
        return self.expected_value + self.values.sum(axis=1)

    def mean_abs(self) -> pd.Series:
        """Mean |SHAP| per feature, largest first."""
        return self.values.abs().mean().sort_values(ascending=False)


def _split_pipeline(model: Any, X: pd.DataFrame) -> tuple[Any, pd.DataFrame]:
    """Apply every step but the last of a Pipeline; return the final estimator and its input."""
    steps = getattr(model, "steps", None)
    if not steps:
        return model, X
    data = X
    for _, step in steps[:-1]:
        if step is None or step == "passthrough":
            continue
        transformed = step.transform(data)
        if not isinstance(transformed, pd.DataFrame):
            names = (
                step.get_feature_names_out()
                if hasattr(step, "get_feature_names_out")
                else [f"f{i}" for i in range(np.shape(transformed)[1])]
            )
            transformed = pd.DataFrame(
                np.asarray(transformed), index=data.index, columns=[str(n) for n in names]
            )
        data = transformed
    return steps[-1][1], data


def tree_shap(
    model: Any,
    X: pd.DataFrame,
    *,
    max_samples: int | None = None,
    seed: int = 0,
    chunk_size: int = 2000,
    progress: bool = True,
) -> ShapValues:
    """Exact Tree SHAP values of a fitted tree model (or tree-ending Pipeline).

    Parameters
    ----------
    model : fitted estimator
        LightGBM, sklearn random forest / gradient boosting, XGBoost, or a
        fitted :class:`~sklearn.pipeline.Pipeline` ending in one of them.
    X : pandas.DataFrame
        Samples to explain, with the columns the model was fitted on.
    max_samples : int, optional
        Explain a random subset of this many rows (drawn with ``seed``); Tree
        SHAP costs time proportional to rows × trees × leaves.
    seed : int
        Seed of the row subset.
    chunk_size : int
        Rows per call to the explainer (a tqdm bar advances per chunk).
    progress : bool
        Show the progress bar.

    Returns
    -------
    ShapValues

    Examples
    --------
    >>> from sklearn.ensemble import RandomForestRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = pd.DataFrame(rng.normal(size=(100, 2)), columns=["SG_pH", "CGIAR_PET"])
    >>> y = 2 * X["SG_pH"] + rng.normal(size=100)
    >>> rf = RandomForestRegressor(n_estimators=10, random_state=0).fit(X, y)
    >>> sv = tree_shap(rf, X, progress=False)
    >>> bool(np.allclose(sv.predictions, rf.predict(X)))
    True
    >>> sv.mean_abs().index[0]
    'SG_pH'
    """
    import shap

    if not isinstance(X, pd.DataFrame):
        raise TypeError(f"X must be a pandas DataFrame with the model's columns, got {type(X)}")
    if len(X) == 0:
        raise ValueError("X has no rows to explain")
    if max_samples is not None:
        if max_samples < 1:
            raise ValueError(f"max_samples must be a positive integer, got {max_samples}")
        if max_samples < len(X):
            rows = np.sort(np.random.default_rng(seed).choice(len(X), max_samples, replace=False))
            X = X.iloc[rows]
    final, data = _split_pipeline(model, X)
    try:
        explainer = shap.TreeExplainer(final)
    except ValueError as err:  # shap.utils.InvalidModelError for unsupported models
        raise ValueError(
            f"tree_shap needs a tree model (LightGBM, random forest, …); "
            f"shap.TreeExplainer refused {type(final).__name__}: {err}"
        ) from None
    starts = range(0, len(data), max(int(chunk_size), 1))
    parts = []
    for start in tqdm(starts, desc="tree SHAP", unit="chunk", disable=not progress):
        chunk = data.iloc[start : start + chunk_size]
        vals = explainer.shap_values(chunk)
        if isinstance(vals, list):  # multi-output models
            if len(vals) != 1:
                raise ValueError(f"tree_shap explains single-output regressors; got {len(vals)}")
            vals = vals[0]
        vals = np.asarray(vals, dtype=float)
        if vals.ndim == 3:
            if vals.shape[2] != 1:
                raise ValueError("tree_shap explains single-output regressors only")
            vals = vals[:, :, 0]
        parts.append(vals)
    expected = np.ravel(np.asarray(explainer.expected_value, dtype=float))
    if expected.size != 1:
        raise ValueError("tree_shap explains single-output regressors only")
    values = pd.DataFrame(
        np.vstack(parts), index=data.index, columns=[str(c) for c in data.columns]
    )
    return ShapValues(values=values, expected_value=float(expected[0]), data=data)


def _resolve_groups(
    columns: Sequence[str], column_groups: Mapping[str, str] | None
) -> dict[str, str]:
    mapping = dict(column_groups or {})
    out: dict[str, str] = {}
    missing = []
    for c in columns:
        g = mapping.get(c) or group_of(c)
        if g is None:
            missing.append(c)
        else:
            out[c] = g
    if missing:
        raise ValueError(
            f"no predictor group for columns {missing[:5]}{' …' if len(missing) > 5 else ''}: "
            f"pass them in column_groups or name them with a fungi_ssl.predictors.features prefix"
        )
    return out


def shap_by_group(
    shap_values: ShapValues | pd.DataFrame,
    column_groups: Mapping[str, str] | None = None,
    how: Literal["abs_sum", "sum_abs"] = "abs_sum",
) -> pd.DataFrame:
    """Attribution of each predictor group: mean |group SHAP| and its share.

    Parameters
    ----------
    shap_values : ShapValues or DataFrame
        Per-sample SHAP values, one column per feature.
    column_groups : mapping, optional
        Column -> group. Columns not in it are grouped by their prefix
        (:func:`fungi_ssl.predictors.features.group_of`), so reduced SSL columns
        (``ssl_pca_00`` …) need no entry.
    how : {"abs_sum", "sum_abs"}
        ``"abs_sum"`` (default): mean over samples of |Σφ_j| over the group's
        features, the size of the group's own additive contribution to each
        prediction, where opposite attributions within a group cancel.
        ``"sum_abs"``: mean over samples of Σ|φ_j| (as blocks of feature
        importances are summed), which grows with the group's number of
        columns. The module docstring compares the two.

    Returns
    -------
    pandas.DataFrame
        Indexed by group, largest first, with columns ``mean_abs_shap``
        (the mean over samples defined by ``how``), ``share`` (sums to 1)
        and ``n_features``; ``attrs["how"]`` records ``how``.

    Examples
    --------
    Two SSL columns that partly cancel, one climate column:

    >>> sv = pd.DataFrame({"ssl_pca_00": [1.0, -1.0], "ssl_pca_01": [-0.5, 0.5],
    ...                    "CGIAR_PET": [0.5, 0.5]})
    >>> shap_by_group(sv)["share"].round(2).to_dict()
    {'ssl': 0.5, 'climate': 0.5}
    >>> shap_by_group(sv, how="sum_abs")["share"].round(2).to_dict()
    {'ssl': 0.75, 'climate': 0.25}
    """
    values = shap_values.values if isinstance(shap_values, ShapValues) else shap_values
    if not isinstance(values, pd.DataFrame):
        raise TypeError("shap_values must be a ShapValues or a DataFrame with feature columns")
    if how not in ("sum_abs", "abs_sum"):
        raise ValueError(f"how must be 'sum_abs' or 'abs_sum', got {how!r}")
    mapping = _resolve_groups([str(c) for c in values.columns], column_groups)
    rows = {}
    for g in dict.fromkeys(mapping.values()):
        cols = [c for c in values.columns if mapping[str(c)] == g]
        block = values[cols].to_numpy(dtype=float)
        per_sample = np.abs(block).sum(axis=1) if how == "sum_abs" else np.abs(block.sum(axis=1))
        rows[g] = {"mean_abs_shap": float(per_sample.mean()), "n_features": len(cols)}
    table = pd.DataFrame.from_dict(rows, orient="index")
    total = table["mean_abs_shap"].sum()
    table["share"] = table["mean_abs_shap"] / total if total > 0 else np.nan
    table.index.name = "group"
    table = table[["mean_abs_shap", "share", "n_features"]].sort_values(
        "mean_abs_shap", ascending=False
    )
    table.attrs["how"] = how
    return table


def plot_shap_groups(
    group_table: pd.DataFrame,
    ax: Any = None,
    value: Literal["share", "mean_abs_shap"] = "share",
    title: str | None = None,
) -> Any:
    """Horizontal bar chart of the SHAP attribution per predictor group.

    Parameters
    ----------
    group_table : DataFrame
        The output of :func:`shap_by_group`.
    ax : matplotlib Axes, optional
    value : {"share", "mean_abs_shap"}
        Plot the share of the total (default) or the mean |SHAP| itself.
    title : str, optional
        Axes title; default names the table's ``how``.

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> t = shap_by_group(pd.DataFrame({"ssl_pca_00": [1.0], "CGIAR_PET": [0.5]}))
    >>> plot_shap_groups(t).get_xlabel()
    'share of mean |group SHAP|'
    """
    import matplotlib.pyplot as plt

    if value not in ("share", "mean_abs_shap") or value not in group_table:
        raise ValueError(f"value must be a column of the shap_by_group table, got {value!r}")
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 1.0 + 0.4 * len(group_table)), layout="constrained")
    table = group_table.sort_values(value)
    pos = np.arange(len(table))
    ax.barh(pos, table[value], color="#1b6f8a")
    for p, v, n in zip(pos, table[value], table["n_features"], strict=True):
        label = f" {v:.0%}" if value == "share" else f" {v:.3g}"
        ax.text(v, p, f"{label} ({n} feature{'s' if n != 1 else ''})", va="center", fontsize=8)
    ax.set_yticks(pos, table.index)
    ax.set_xlim(0, float(table[value].max()) * 1.35 if len(table) else 1)
    how = group_table.attrs.get("how", "abs_sum")
    what = "mean |group SHAP|" if how == "abs_sum" else "mean Σ|SHAP| over a group's columns"
    ax.set_xlabel(f"share of {what}" if value == "share" else f"{what} (target units)")
    if title is None:
        title = "SHAP attribution by predictor group" + (
            "" if how == "abs_sum" else " (per-column |SHAP| summed)"
        )
    ax.set_title(title)
    return ax


def plot_dependence(
    shap_values: ShapValues,
    X: pd.DataFrame | None = None,
    features: Sequence[str] | None = None,
    n_features: int = 4,
    ncols: int = 2,
    max_points: int = 5000,
    seed: int = 0,
) -> Any:
    """SHAP dependence plots: feature value against its SHAP value.

    Parameters
    ----------
    shap_values : ShapValues
    X : DataFrame, optional
        Feature values aligned with the SHAP rows; default ``shap_values.data``.
    features : list of str, optional
        Features to draw; default the ``n_features`` with the largest mean |SHAP|.
    n_features : int
    ncols : int
        Panels per row.
    max_points : int
        Draw at most this many random samples (seeded) per panel.
    seed : int

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> v = pd.DataFrame({"a": [0.1, -0.1, 0.3], "b": [0.0, 0.0, 0.01]})
    >>> fig = plot_dependence(ShapValues(v, 0.0, v * 10), n_features=1)
    >>> fig.axes[0].get_xlabel()
    'a'
    """
    import matplotlib.pyplot as plt

    data = shap_values.data if X is None else X
    values = shap_values.values
    if len(data) != len(values):
        raise ValueError(f"X has {len(data)} rows but the SHAP values have {len(values)}")
    if features is None:
        features = list(shap_values.mean_abs().index[:n_features])
    unknown = [f for f in features if f not in values.columns or f not in data.columns]
    if unknown:
        raise ValueError(f"features {unknown} are not columns of both the SHAP values and X")
    rows = np.arange(len(values))
    if len(rows) > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(len(rows), max_points, replace=False))
    nrows = int(np.ceil(len(features) / ncols))
    fig, axes = plt.subplots(
        nrows,
        min(ncols, len(features)),
        figsize=(3.4 * min(ncols, len(features)), 2.8 * nrows),
        squeeze=False,
        layout="constrained",
    )
    for ax, feat in zip(axes.ravel(), features, strict=False):
        ax.scatter(data[feat].to_numpy()[rows], values[feat].to_numpy()[rows], s=4, alpha=0.4, lw=0)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel(feat)
        ax.set_ylabel("SHAP value")
    for ax in axes.ravel()[len(features) :]:
        ax.set_visible(False)
    return fig
