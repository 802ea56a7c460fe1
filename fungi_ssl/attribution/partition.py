"""Commonality analysis: unique and shared cross-validated R² of predictor groups.

For k predictor groups (``ssl``, ``climate``, ``soil``, …) a model is fitted on
each of the 2^k − 1 non-empty subsets of groups and scored by cross-validated
R². Writing R²(A) for the score of the groups in A, the *commonality* of a set
S of groups is the part of the full model's R² that S's groups share with each
other and with no other group (Seibold & McPhee 1979; Nimon et al. 2008):

.. math::

    C(S) = \\sum_{T \\subseteq S} (-1)^{|S|-|T|}\\, g(T), \\qquad
    g(T) = R^2(K) - R^2(K \\setminus T),

with K all groups and R²(∅) = 0. For one group C({G}) is G's *unique*
fraction, R²(K) − R²(K∖{G}); for two groups A, B of k = 2 it is
R²(A) + R²(B) − R²(AB). The fractions sum to R²(K) exactly, and a group's R²
alone is the sum of every fraction that contains it. A negative commonality
means suppression: together the groups explain more than the sum of what they
explain apart.

Cross-validated R² keeps the analysis honest about over-fitting. Every subset
is scored on the same folds: the splitter is evaluated once.

References
----------
Seibold, D. R. & McPhee, R. D. (1979) Commonality analysis: a method for
decomposing explained variance in multiple regression analyses. Human
Communication Research 5:355-365.
Nimon, K., Lewis, M., Kane, R. & Haynes, R. M. (2008) An R package to compute
commonality coefficients in the multiple regression case. Behavior Research
Methods 40:457-466.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.base import clone
from sklearn.model_selection import KFold
from tqdm import tqdm

#: Largest number of groups accepted (2^k − 1 models are fitted).
MAX_GROUPS = 10


def subset_name(groups: Iterable[str]) -> str:
    """Name of a subset of groups: the group names joined by ``+``.

    Examples
    --------
    >>> subset_name(("ssl", "climate"))
    'ssl+climate'
    """
    return "+".join(groups)


def fraction_name(groups: Sequence[str]) -> str:
    """Name of a commonality fraction: ``unique:G`` or ``shared:A+B…``.

    Examples
    --------
    >>> fraction_name(["ssl"]), fraction_name(["ssl", "soil"])
    ('unique:ssl', 'shared:ssl+soil')
    """
    return ("unique:" if len(groups) == 1 else "shared:") + subset_name(groups)


def _subsets(groups: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset, by size, each in the groups' own order."""
    return [s for r in range(1, len(groups) + 1) for s in itertools.combinations(groups, r)]


def commonality_from_r2(
    subset_r2: Mapping[str, float] | Mapping[frozenset, float], groups: Sequence[str]
) -> dict[str, float]:
    """Unique and shared fractions from the R² of every subset of groups.

    Parameters
    ----------
    subset_r2 : mapping
        R² of each non-empty subset, keyed by ``"a+b"`` (any order) or by a
        frozenset of group names.
    groups : sequence of str
        The k groups; names order the fraction names.

    Returns
    -------
    dict
        ``fraction_name(S) -> C(S)`` for all 2^k − 1 subsets S, in subset order
        (uniques first). The values sum to the R² of all groups.

    Examples
    --------
    >>> f = commonality_from_r2({"a": 0.3, "b": 0.2, "a+b": 0.4}, ["a", "b"])
    >>> {k: round(v, 3) for k, v in f.items()}
    {'unique:a': 0.2, 'unique:b': 0.1, 'shared:a+b': 0.1}
    """
    groups = list(groups)
    if len(set(groups)) != len(groups) or not groups:
        raise ValueError(f"groups must be distinct and non-empty, got {groups}")
    r2: dict[frozenset, float] = {}
    for key, value in subset_r2.items():
        fs = frozenset(key.split("+")) if isinstance(key, str) else frozenset(key)
        r2[fs] = float(value)
    full = frozenset(groups)
    missing = [subset_name(s) for s in _subsets(groups) if frozenset(s) not in r2]
    if missing:
        raise ValueError(f"subset_r2 lacks the R² of subsets {missing}")
    r2[frozenset()] = 0.0

    def gain(t: frozenset) -> float:  # g(T) = R²(K) − R²(K \ T)
        return r2[full] - r2[full - t]

    out: dict[str, float] = {}
    for s in _subsets(groups):
        total = 0.0
        for r in range(len(s) + 1):
            for t in itertools.combinations(s, r):
                total += (-1) ** (len(s) - r) * gain(frozenset(t))
        out[fraction_name(s)] = total
    return out


@dataclass
class CommonalityResult:
    """Cross-validated commonality analysis of predictor groups.

    Attributes
    ----------
    groups : list of str
        The predictor groups, in the order given.
    fractions : dict
        ``"unique:G"`` and ``"shared:A+B…"`` -> commonality (R² units).
        They sum to ``full_r2`` (up to float rounding, ~1e-15).
    subset_r2 : dict
        ``"A+B…"`` -> cross-validated R² of the model on those groups.
    full_r2 : float
        R² of the model on all groups.
    scoring : str
        ``"pooled"`` (R² of the pooled out-of-fold predictions) or
        ``"fold_mean"`` (mean of the per-fold R²).
    n_folds : int
        Number of train/test folds each model was scored on.
    """

    groups: list[str]
    fractions: dict[str, float]
    subset_r2: dict[str, float]
    full_r2: float
    scoring: str = "pooled"
    n_folds: int = 0
    fold_r2: dict[str, list[float]] = field(default_factory=dict, repr=False)

    def fraction(self, *groups: str) -> float:
        """The commonality of exactly these groups, in any order.

        Examples
        --------
        >>> r = CommonalityResult(["a", "b"], {"unique:a": .2, "unique:b": .1, "shared:a+b": .1},
        ...                       {"a": .3, "b": .2, "a+b": .4}, .4)
        >>> r.fraction("b", "a")
        0.1
        """
        wanted = set(groups)
        for s in _subsets(self.groups):
            if set(s) == wanted:
                return self.fractions[fraction_name(s)]
        raise ValueError(f"no fraction for groups {list(groups)}; groups are {self.groups}")

    def table(self) -> pd.DataFrame:
        """One row per fraction: its groups, their number, the value and its share of full R².

        Examples
        --------
        >>> r = CommonalityResult(["a", "b"], {"unique:a": .2, "unique:b": .1, "shared:a+b": .1},
        ...                       {"a": .3, "b": .2, "a+b": .4}, .4)
        >>> r.table()["share_of_full"].round(2).tolist()
        [0.5, 0.25, 0.25]
        """
        rows = []
        for s in _subsets(self.groups):
            value = self.fractions[fraction_name(s)]
            rows.append(
                {
                    "fraction": fraction_name(s),
                    "groups": subset_name(s),
                    "n_groups": len(s),
                    "r2": value,
                    "share_of_full": value / self.full_r2 if self.full_r2 != 0 else np.nan,
                }
            )
        return pd.DataFrame(rows).set_index("fraction")

    def group_table(self) -> pd.DataFrame:
        """Per group: unique part, shared parts (positive, negative) and R² alone.

        ``unique + shared_positive + shared_negative == r2_alone``: the group's
        R² on its own, split into what only it explains and what it shares.

        Examples
        --------
        >>> r = CommonalityResult(["a", "b"], {"unique:a": .2, "unique:b": .1, "shared:a+b": .1},
        ...                       {"a": .3, "b": .2, "a+b": .4}, .4)
        >>> r.group_table()["r2_alone"].round(2).tolist()
        [0.3, 0.2]
        """
        rows = []
        for g in self.groups:
            shared = [
                self.fractions[fraction_name(s)]
                for s in _subsets(self.groups)
                if g in s and len(s) > 1
            ]
            rows.append(
                {
                    "group": g,
                    "unique": self.fractions[fraction_name((g,))],
                    "shared_positive": float(sum(v for v in shared if v > 0)),
                    "shared_negative": float(sum(v for v in shared if v < 0)),
                    "r2_alone": self.subset_r2[g],
                }
            )
        return pd.DataFrame(rows).set_index("group")


def _fresh_model(model_factory: Any) -> Any:
    if hasattr(model_factory, "fit") and not isinstance(model_factory, type):
        return clone(model_factory)
    model = model_factory()
    if not hasattr(model, "fit") or not hasattr(model, "predict"):
        raise ValueError(
            f"model_factory must return an sklearn regressor (fit/predict), got {type(model).__name__}"
        )
    return model


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    sst = float(np.sum((y - y.mean()) ** 2))
    if sst == 0:
        return float("nan")
    return 1.0 - float(np.sum((y - pred) ** 2)) / sst


def _score_subset(
    subset: tuple[str, ...],
    arrays: Mapping[str, np.ndarray],
    names: Mapping[str, list[str]],
    y: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    model_factory: Any,
    scoring: str,
) -> tuple[float, list[float]]:
    X = pd.DataFrame(
        np.hstack([arrays[g] for g in subset]),
        columns=[c for g in subset for c in names[g]],
    )
    pred = np.full(len(y), np.nan)
    fold_scores = []
    for train, test in folds:
        model = _fresh_model(model_factory)
        model.fit(X.iloc[train], y[train])
        p = np.asarray(model.predict(X.iloc[test]), dtype=float).ravel()
        fold_scores.append(_r2(y[test], p))
        pred[test] = p
    if scoring == "pooled":
        done = ~np.isnan(pred)
        return _r2(y[done], pred[done]), fold_scores
    return float(np.nanmean(fold_scores)), fold_scores


def _as_arrays(
    X_groups: Mapping[str, pd.DataFrame | np.ndarray], n: int | None
) -> tuple[dict[str, np.ndarray], dict[str, list[str]], int]:
    arrays: dict[str, np.ndarray] = {}
    names: dict[str, list[str]] = {}
    for g, block in X_groups.items():
        if "+" in g or ":" in g:
            raise ValueError(f"group names may not contain '+' or ':', got {g!r}")
        if isinstance(block, pd.Series):
            block = block.to_frame()
        if isinstance(block, pd.DataFrame):
            cols = [str(c) for c in block.columns]
            try:
                arr = block.to_numpy(dtype=float)
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"X_groups[{g!r}] must be numeric; convert or one-hot its columns first ({err})"
                ) from None
        else:
            arr = np.asarray(block, dtype=float)
            if arr.ndim == 1:
                arr = arr[:, None]
            cols = [f"{g}:{i}" for i in range(arr.shape[1])]
        if arr.ndim != 2 or arr.shape[1] == 0:
            raise ValueError(f"X_groups[{g!r}] must be a 2-D table with columns, got {arr.shape}")
        if n is None:
            n = arr.shape[0]
        if arr.shape[0] != n:
            raise ValueError(f"X_groups[{g!r}] has {arr.shape[0]} rows, expected {n}")
        arrays[g], names[g] = arr, cols
    if n is None:
        raise ValueError("X_groups is empty: give at least one predictor group")
    return arrays, names, n


def commonality_partition(
    X_groups: Mapping[str, pd.DataFrame | np.ndarray],
    y: np.ndarray | pd.Series,
    model_factory: Callable[[], Any] | Any,
    cv: int | Any | Iterable[tuple[np.ndarray, np.ndarray]] = 5,
    *,
    cv_groups: np.ndarray | pd.Series | None = None,
    split_X: Any = None,
    scoring: Literal["auto", "pooled", "fold_mean"] = "auto",
    n_jobs: int = 2,
    seed: int = 0,
    progress: bool = True,
) -> CommonalityResult:
    """Commonality analysis of predictor groups with cross-validated R².

    Fits ``model_factory()`` on every non-empty subset of the groups (2^k − 1
    models, each on every fold), in parallel over subsets, and turns the
    subsets' R² into unique and shared fractions (see the module docstring).

    Parameters
    ----------
    X_groups : mapping of str to DataFrame or array
        One numeric block of columns per predictor group, rows aligned with
        ``y`` (e.g. ``select_predictors(table, "ssl+climate").split(table)``).
        DataFrames keep their column names, so a pipeline step such as
        :class:`fungi_ssl.predictors.features.PatchReducer` sees the ``ssl_`` columns.
    y : array-like
        The target (e.g. log rarefied richness); must be finite.
    model_factory : callable or sklearn estimator
        Returns a fresh unfitted regressor; an estimator instance is cloned.
        Use a :class:`~sklearn.pipeline.Pipeline` to fit feature reduction in-fold.
    cv : int, splitter or iterable of (train, test)
        An int gives a shuffled ``KFold`` seeded by ``seed``. Any object with a
        ``split(X, y, groups)`` method works (sklearn splitters, the spatial
        splitters of ``fungi_ssl.validation.cv``); it is called once, so every subset sees
        the same folds. Explicit index pairs are used as given.
    cv_groups : array-like, optional
        Passed as ``groups`` to ``cv.split`` (e.g. site ids for ``GroupKFold``).
    split_X : array-like, optional
        Passed as ``X`` to ``cv.split`` instead of the predictors (e.g. sample
        coordinates for a spatial block splitter).
    scoring : {"auto", "pooled", "fold_mean"}
        ``"pooled"``: R² of all out-of-fold predictions together (needs
        disjoint test folds); ``"fold_mean"``: mean per-fold R²; ``"auto"``:
        pooled when test folds are disjoint, else fold mean.
    n_jobs : int
        joblib workers across subsets (2 on this machine's 2 cores).
    seed : int
        Seed of the ``KFold`` made when ``cv`` is an int.
    progress : bool
        Show a tqdm bar over subsets.

    Returns
    -------
    CommonalityResult

    Examples
    --------
    >>> from sklearn.linear_model import LinearRegression
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.normal(size=(2, 400))
    >>> y = a + b + rng.normal(size=400)
    >>> res = commonality_partition({"a": a[:, None], "b": b[:, None]}, y, LinearRegression,
    ...                             cv=4, n_jobs=1, progress=False)
    >>> sorted(res.fractions)
    ['shared:a+b', 'unique:a', 'unique:b']
    >>> bool(abs(sum(res.fractions.values()) - res.full_r2) < 1e-9)
    True
    """
    if not isinstance(X_groups, Mapping) or not X_groups:
        raise ValueError("X_groups must be a non-empty mapping of group name -> columns")
    groups = [str(g) for g in X_groups]
    if len(groups) > MAX_GROUPS:
        raise ValueError(
            f"{len(groups)} groups need {2 ** len(groups) - 1} models; at most {MAX_GROUPS} "
            f"groups are accepted: merge some"
        )
    if scoring not in ("auto", "pooled", "fold_mean"):
        raise ValueError(f"scoring must be 'auto', 'pooled' or 'fold_mean', got {scoring!r}")
    y_arr = np.asarray(y, dtype=float).ravel()
    arrays, names, n = _as_arrays(X_groups, len(y_arr))
    if not np.isfinite(y_arr).all():
        raise ValueError("y has NaN or infinite values: drop those samples first")

    if isinstance(cv, int | np.integer):
        if cv < 2:
            raise ValueError(f"cv must be at least 2 folds, got {cv}")
        cv = KFold(n_splits=int(cv), shuffle=True, random_state=seed)
    if hasattr(cv, "split"):
        on = split_X
        if on is None:
            on = pd.DataFrame(
                np.hstack([arrays[g] for g in groups]),
                columns=[c for g in groups for c in names[g]],
            )
        splits = cv.split(on, y_arr) if cv_groups is None else cv.split(on, y_arr, cv_groups)
    else:
        splits = cv
    folds = [(np.asarray(tr, dtype=int), np.asarray(te, dtype=int)) for tr, te in splits]
    if not folds or any(len(tr) == 0 or len(te) == 0 for tr, te in folds):
        raise ValueError("cv gave no folds, or a fold with an empty train or test part")

    counts = np.bincount(np.concatenate([te for _, te in folds]), minlength=n)
    disjoint = bool(counts.max() <= 1)
    if scoring == "auto":
        scoring = "pooled" if disjoint else "fold_mean"
    elif scoring == "pooled" and not disjoint:
        raise ValueError(
            "scoring='pooled' needs disjoint test folds, but some samples are tested twice; "
            "use scoring='fold_mean'"
        )

    subsets = _subsets(groups)
    jobs = (
        delayed(_score_subset)(s, arrays, names, y_arr, folds, model_factory, scoring)
        for s in subsets
    )
    runner = Parallel(n_jobs=n_jobs, return_as="generator")
    scores = list(
        tqdm(
            runner(jobs),
            total=len(subsets),
            desc=f"commonality: {len(subsets)} models x {len(folds)} folds",
            disable=not progress,
        )
    )
    subset_r2 = {subset_name(s): r2 for s, (r2, _) in zip(subsets, scores, strict=True)}
    fold_r2 = {subset_name(s): f for s, (_, f) in zip(subsets, scores, strict=True)}
    bad = [k for k, v in subset_r2.items() if not math.isfinite(v)]
    if bad:
        raise ValueError(f"R² is undefined for subsets {bad}: is y constant in a test fold?")
    fractions = commonality_from_r2(subset_r2, groups)
    return CommonalityResult(
        groups=groups,
        fractions=fractions,
        subset_r2=subset_r2,
        full_r2=subset_r2[subset_name(groups)],
        scoring=scoring,
        n_folds=len(folds),
        fold_r2=fold_r2,
    )


def subsumed_share(result: CommonalityResult, by: str = "ssl", group: str = "climate") -> float:
    """How much of ``group``'s explained variance ``by`` also carries.

    The sum of the commonalities that contain both ``group`` and ``by``
    (their shared part, alone or together with other groups), divided by
    ``group``'s R² on its own. 1 means everything ``group`` explains, ``by``
    explains too; 0 means none of it. NaN when ``group`` alone has R² ≤ 0.

    Examples
    --------
    >>> r = CommonalityResult(["ssl", "climate"],
    ...     {"unique:ssl": .3, "unique:climate": .05, "shared:ssl+climate": .15},
    ...     {"ssl": .45, "climate": .2, "ssl+climate": .5}, .5)
    >>> round(subsumed_share(r, by="ssl", group="climate"), 2)
    0.75
    """
    for name in (by, group):
        if name not in result.groups:
            raise ValueError(f"{name!r} is not a group of this result; groups: {result.groups}")
    alone = result.subset_r2[group]
    if not alone > 0:
        return float("nan")
    shared = sum(
        result.fractions[fraction_name(s)]
        for s in _subsets(result.groups)
        if group in s and by in s
    )
    return float(shared / alone)


_COLOURS = {
    "unique": "#1b6f8a",
    "shared": "#9ccbd9",
    "negative": "#c4533a",
}


def plot_commonality(
    result: CommonalityResult,
    ax: Any = None,
    kind: Literal["groups", "fractions"] = "groups",
) -> Any:
    """Draw a commonality analysis.

    ``kind="groups"``: one horizontal bar per group, as long as its R² alone,
    split into the part only it explains (dark) and the part it shares with
    other groups (light). Negative shared parts (suppression) are drawn left
    of zero in red, and a tick marks the net R² alone. A dashed line gives the
    R² of all groups together.

    ``kind="fractions"``: every unique and shared fraction as its own bar,
    largest first, negative ones in red.

    Parameters
    ----------
    result : CommonalityResult
    ax : matplotlib Axes, optional
        Drawn into a new figure when not given.
    kind : {"groups", "fractions"}

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> r = CommonalityResult(["ssl", "climate"],
    ...     {"unique:ssl": .3, "unique:climate": .05, "shared:ssl+climate": .15},
    ...     {"ssl": .45, "climate": .2, "ssl+climate": .5}, .5)
    >>> plot_commonality(r).get_xlabel()
    'cross-validated R²'
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if kind not in ("groups", "fractions"):
        raise ValueError(f"kind must be 'groups' or 'fractions', got {kind!r}")
    if ax is None:
        n_rows = len(result.groups) if kind == "groups" else len(result.fractions)
        _, ax = plt.subplots(figsize=(6.5, 1.6 + 0.45 * n_rows), layout="constrained")

    if kind == "groups":
        table = result.group_table().sort_values("r2_alone")
        pos = np.arange(len(table))
        ax.barh(pos, table["unique"].clip(lower=0), color=_COLOURS["unique"])
        ax.barh(
            pos,
            table["shared_positive"],
            left=table["unique"].clip(lower=0),
            color=_COLOURS["shared"],
        )
        ax.barh(
            pos,
            table["shared_negative"] + table["unique"].clip(upper=0),
            color=_COLOURS["negative"],
            hatch="//",
            edgecolor="white",
        )
        ax.scatter(table["r2_alone"], pos, marker="|", s=300, color="black", zorder=3)
        for p, value in zip(pos, table["r2_alone"], strict=True):
            right = max(value, 0) + 0.01
            ax.text(right, p, f"{value:.2f}", va="center", fontsize=8)
        ax.set_yticks(pos, table.index)
        ax.axvline(result.full_r2, color="grey", ls="--", lw=1)
        ax.text(
            result.full_r2,
            len(table) - 0.45,
            f" all groups: {result.full_r2:.2f}",
            fontsize=8,
            color="grey",
            va="bottom",
        )
        ax.set_ylim(-0.6, len(table) - 0.1)
        handles = [
            Patch(color=_COLOURS["unique"], label="unique to the group"),
            Patch(color=_COLOURS["shared"], label="shared with other groups"),
            Patch(facecolor=_COLOURS["negative"], hatch="//", label="negative (suppression)"),
            Line2D([], [], color="black", marker="|", ls="", ms=12, label="R² of the group alone"),
        ]
        ax.legend(
            handles=handles,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.22),
            ncol=2,
            fontsize=8,
            frameon=False,
        )
        right = max(result.full_r2, float(table["r2_alone"].max()), 0.0)
        left = min(0.0, float((table["shared_negative"] + table["unique"].clip(upper=0)).min()))
        ax.set_xlim(left - 0.05 * (right - left) if left < 0 else 0, right + 0.2 * (right - left))
        ax.set_title("What each predictor group explains: alone and shared")
    else:
        table = result.table().sort_values("r2")
        labels = [
            g.replace("+", " ∩ ") if n > 1 else f"{g} only"
            for g, n in zip(table["groups"], table["n_groups"], strict=True)
        ]
        colours = [
            _COLOURS["negative"] if v < 0 else _COLOURS["unique"] if n == 1 else _COLOURS["shared"]
            for v, n in zip(table["r2"], table["n_groups"], strict=True)
        ]
        pos = np.arange(len(table))
        ax.barh(pos, table["r2"], color=colours)
        for p, value in zip(pos, table["r2"], strict=True):
            ax.text(
                value,
                p,
                f" {value:.3f} ",
                va="center",
                fontsize=7,
                ha="left" if value >= 0 else "right",
            )
        ax.set_yticks(pos, labels)
        ax.set_title(f"Commonality fractions (sum = full R² {result.full_r2:.2f})")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("cross-validated R²")
    return ax
