"""Linear probes: what an embedding makes linearly readable.

A *linear probe* fits a linear model on frozen embeddings and scores it on
held-out data. It is the standard test of a self-supervised encoder: if land
cover or richness can be read off the embedding by a linear model, the
encoder has put that information there, without ever seeing a label.

Held-out pixels must not share a neighbourhood with the training pixels, or
the probe rewards memorising places. Pixels drawn by
:meth:`fungi_ssl.simulate.SimulatedStudy.random_pixels` come in 8 × 8
clusters (``index["cluster"]``), so :func:`probe_split` splits by cluster.

The module also holds the linear read-outs of chapter 03, which ask the same
question of the SSL patch features at field samples: principal components of
the embeddings (:func:`embedding_pcs`), their Spearman correlations with each
environmental covariate (:func:`pc_env_spearman`, the study's Tables S3–S5),
and how much of each covariate a linear model on the components explains
under site-grouped cross-validation (:func:`env_r2_from_ssl`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import GroupKFold, GroupShuffleSplit
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

__all__ = [
    "EmbeddingPCs",
    "ProbeSplit",
    "embedding_pcs",
    "encoder_probes",
    "env_r2_from_ssl",
    "linear_probe_classification",
    "linear_probe_regression",
    "pc_env_spearman",
    "probe_split",
]

#: Ridge penalties tried (by efficient leave-one-out on the training part).
RIDGE_ALPHAS: tuple[float, ...] = tuple(np.logspace(-3, 4, 15))


def _check_xy(name: str, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n, features), got shape {X.shape}")
    if y.ndim != 1 or len(y) != len(X):
        raise ValueError(
            f"{name}: the target must be 1-D with one value per row of X "
            f"({len(X)} rows), got shape {y.shape}"
        )
    if not np.isfinite(X).all():
        raise ValueError(f"{name} holds NaN or infinite values; drop those rows first")
    return X, y


def linear_probe_classification(
    train_X: Any, train_y: Any, test_X: Any, test_y: Any, C: float = 1.0, max_iter: int = 500
) -> float:
    """Accuracy of a multinomial logistic regression on standardised features.

    Parameters
    ----------
    train_X, test_X : array_like
        ``(n, d)`` features (e.g. embeddings); no NaN.
    train_y, test_y : array_like
        Class labels.
    C : float
        Inverse L2 penalty of the logistic regression.
    max_iter : int
        L-BFGS iterations.

    Returns
    -------
    float
        Share of ``test_y`` predicted correctly.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, 400)
    >>> X = rng.normal(size=(400, 5)) + 3 * np.eye(5)[y]
    >>> linear_probe_classification(X[:300], y[:300], X[300:], y[300:])
    0.94
    """
    Xtr, ytr = _check_xy("linear_probe_classification: train_X", train_X, train_y)
    Xte, yte = _check_xy("linear_probe_classification: test_X", test_X, test_y)
    if Xtr.shape[1] != Xte.shape[1]:
        raise ValueError(
            f"linear_probe_classification: train_X has {Xtr.shape[1]} features, "
            f"test_X {Xte.shape[1]}"
        )
    if len(np.unique(ytr)) < 2:
        raise ValueError("linear_probe_classification: train_y holds a single class")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    model.fit(Xtr, ytr)
    return float(accuracy_score(yte, model.predict(Xte)))


def linear_probe_regression(
    train_X: Any, train_y: Any, test_X: Any, test_y: Any,
    alphas: Sequence[float] = RIDGE_ALPHAS,
) -> float:
    """Held-out R² of a ridge regression on standardised features.

    The ridge penalty is chosen among ``alphas`` by efficient leave-one-out
    cross-validation on the training part only.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(500, 4))
    >>> y = X @ [1.0, -2.0, 0.5, 0.0] + 0.5 * rng.normal(size=500)
    >>> round(linear_probe_regression(X[:400], y[:400], X[400:], y[400:]), 2)
    0.96
    """
    Xtr, ytr = _check_xy("linear_probe_regression: train_X", train_X, train_y)
    Xte, yte = _check_xy("linear_probe_regression: test_X", test_X, test_y)
    if Xtr.shape[1] != Xte.shape[1]:
        raise ValueError(
            f"linear_probe_regression: train_X has {Xtr.shape[1]} features, test_X {Xte.shape[1]}"
        )
    ytr, yte = ytr.astype(np.float64), yte.astype(np.float64)
    if not (np.isfinite(ytr).all() and np.isfinite(yte).all()):
        raise ValueError("linear_probe_regression: the target holds NaN or infinite values")
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=list(alphas)))
    model.fit(Xtr, ytr)
    return float(r2_score(yte, model.predict(Xte)))


@dataclass
class ProbeSplit:
    """Row positions of the probe's training and test pixels.

    Attributes
    ----------
    train, test : numpy.ndarray
        Integer positions (``iloc``) into the probe pixels.
    n_train_clusters, n_test_clusters : int
    """

    train: np.ndarray
    test: np.ndarray
    n_train_clusters: int
    n_test_clusters: int


def probe_split(
    index: pd.DataFrame, test_size: float = 0.3, seed: int = 0, group: str = "cluster"
) -> ProbeSplit:
    """Split pixels into probe train and test parts by spatial cluster.

    All pixels of a cluster fall on the same side, so no test pixel has a
    training pixel among its 8 × 8 neighbours.

    Parameters
    ----------
    index : pandas.DataFrame
        One row per pixel with a ``group`` column (``random_pixels``' index).
    test_size : float
        Share of clusters held out, in (0, 1).
    seed : int
        Seed of the cluster draw.
    group : str
        Column naming each pixel's cluster.

    Examples
    --------
    >>> idx = pd.DataFrame({"cluster": np.repeat(np.arange(10), 64)})
    >>> s = probe_split(idx, test_size=0.3)
    >>> s.n_test_clusters, len(s.test), bool(set(idx.cluster[s.train]) & set(idx.cluster[s.test]))
    (3, 192, False)
    """
    if group not in index.columns:
        raise ValueError(f"probe_split: index has no {group!r} column (got {list(index.columns)})")
    if not 0 < test_size < 1:
        raise ValueError(f"probe_split: test_size must lie in (0, 1), got {test_size}")
    groups = index[group].to_numpy()
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise ValueError(f"probe_split: need at least 2 clusters in {group!r}, got {n_groups}")
    gss = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
    train, test = next(gss.split(np.zeros(len(groups)), groups=groups))
    return ProbeSplit(np.sort(train), np.sort(test),
                      len(np.unique(groups[train])), len(np.unique(groups[test])))


def encoder_probes(
    embeddings: dict[str, np.ndarray], labels: pd.DataFrame, test_size: float = 0.3,
    seed: int = 0,
) -> pd.DataFrame:
    """Land-cover and richness probes for several encoders on the same pixels.

    Every encoder is probed on the same cluster split, and only on pixels that
    every encoder embedded (a pixel cloudy on every date has a NaN embedding;
    those are counted in ``attrs["n_dropped"]``).

    Parameters
    ----------
    embeddings : dict
        Encoder name → ``(n, d)`` embeddings of the same ``n`` pixels.
    labels : pandas.DataFrame
        ``cluster``, ``landcover`` and ``true_richness`` per pixel.
    test_size, seed
        As :func:`probe_split`.

    Returns
    -------
    pandas.DataFrame
        One row per encoder: ``landcover_accuracy`` (logistic probe) and
        ``richness_r2`` (ridge probe of ``log1p(true_richness)``).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> lab = pd.DataFrame({"cluster": np.repeat(np.arange(40), 16),
    ...                     "landcover": rng.integers(0, 3, 640)})
    >>> lab["true_richness"] = 10.0 * lab["landcover"] + rng.random(640)
    >>> good = np.eye(3)[lab["landcover"]] + 0.1 * rng.normal(size=(640, 3))
    >>> out = encoder_probes({"good": good, "noise": rng.normal(size=(640, 3))}, lab)
    >>> out.loc["good", "landcover_accuracy"] > 0.95 > out.loc["noise", "landcover_accuracy"]
    np.True_
    """
    missing = {"cluster", "landcover", "true_richness"} - set(labels.columns)
    if missing:
        raise ValueError(f"encoder_probes: labels lack columns {sorted(missing)}")
    n = len(labels)
    ok = np.ones(n, bool)
    for name, emb in embeddings.items():
        emb = np.asarray(emb)
        if emb.ndim != 2 or len(emb) != n:
            raise ValueError(f"encoder_probes: embeddings[{name!r}] must be ({n}, d), got {emb.shape}")
        ok &= np.isfinite(emb).all(axis=1)
    lab = labels[ok].reset_index(drop=True)
    split = probe_split(lab, test_size=test_size, seed=seed)
    lc = lab["landcover"].to_numpy()
    lr = np.log1p(lab["true_richness"].to_numpy(np.float64))
    tr, te = split.train, split.test
    rows = {}
    for name, emb in embeddings.items():
        X = np.asarray(emb, np.float64)[ok]
        rows[name] = {
            "landcover_accuracy": linear_probe_classification(X[tr], lc[tr], X[te], lc[te]),
            "richness_r2": linear_probe_regression(X[tr], lr[tr], X[te], lr[te]),
        }
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.attrs.update(n_dropped=int((~ok).sum()), n_train=len(tr), n_test=len(te),
                     n_test_clusters=split.n_test_clusters)
    return out


# --------------------------------------------------------------------------
# chapter 03: embedding PCs against the environment
# --------------------------------------------------------------------------


@dataclass
class EmbeddingPCs:
    """Principal components of SSL features at samples.

    Attributes
    ----------
    scores : pandas.DataFrame
        ``PC1 … PCn`` per row of the input (NaN where the embedding is missing).
    explained_variance_ratio : numpy.ndarray
        Share of the embedding variance each component carries.
    pixels : str
        Which part of the patch was used (``"centre"`` or ``"mean"``).
    """

    scores: pd.DataFrame
    explained_variance_ratio: np.ndarray
    pixels: str


def embedding_pcs(
    features: pd.DataFrame, n_components: int = 10,
    pixels: Literal["centre", "mean"] = "mean", dim: int = 128, seed: int = 0,
) -> EmbeddingPCs:
    """First principal components of the SSL patch features.

    Each sample's k×k×128 patch (``ssl_0000 …``, (row, col, dim) order) is
    reduced to one 128-d vector, the centre pixel or the mean over the
    patch, and the vectors are projected on their first principal components.
    Rows with a missing embedding are left out of the fit and get NaN.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> cols = [f"ssl_{i:04d}" for i in range(9 * 128)]
    >>> f = pd.DataFrame(rng.normal(size=(30, 1152)), columns=cols)
    >>> pcs = embedding_pcs(f, n_components=3)
    >>> list(pcs.scores.columns), pcs.explained_variance_ratio.shape
    (['PC1', 'PC2', 'PC3'], (3,))
    """
    from fungi_ssl.predictors.features import PatchReducer

    if pixels not in ("centre", "mean"):
        raise ValueError(f"embedding_pcs: pixels must be 'centre' or 'mean', got {pixels!r}")
    reducer = PatchReducer(method="none", pixels=pixels, dim=dim).fit(features)
    if not reducer.ssl_columns_:
        raise ValueError("embedding_pcs: features hold no ssl_ columns")
    vectors = reducer.transform(features)[reducer.ssl_names_out_].to_numpy(np.float64)
    ok = np.isfinite(vectors).all(axis=1)
    if ok.sum() < 2:
        raise ValueError(f"embedding_pcs: need ≥ 2 rows with an embedding, got {int(ok.sum())}")
    n = int(min(n_components, vectors.shape[1], ok.sum() - 1))
    pca = PCA(n_components=n, random_state=seed).fit(vectors[ok])
    scores = np.full((len(vectors), n), np.nan)
    scores[ok] = pca.transform(vectors[ok])
    cols = [f"PC{i + 1}" for i in range(n)]
    return EmbeddingPCs(pd.DataFrame(scores, index=features.index, columns=cols),
                        pca.explained_variance_ratio_, pixels)


def _aligned(pcs: pd.DataFrame, env: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    common = pcs.index.intersection(env.index)
    if len(common) == 0:
        raise ValueError("the PCs and the environment table share no index values (sample_id)")
    p, e = pcs.loc[common], env.loc[common]
    ok = np.isfinite(p.to_numpy(float)).all(axis=1)
    return p[ok], e[ok]


def pc_env_spearman(pcs: pd.DataFrame, env: pd.DataFrame) -> pd.DataFrame:
    """Spearman correlation of every PC with every environmental variable.

    Rows are aligned on the index; rows with a missing PC are dropped, and
    each correlation uses the rows where its variable is known.

    Returns
    -------
    pandas.DataFrame
        Variables × PCs of Spearman ρ (NaN for a constant variable).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> pcs = pd.DataFrame({"PC1": rng.normal(size=100), "PC2": rng.normal(size=100)})
    >>> env = pd.DataFrame({"temp": pcs["PC1"] ** 3, "noise": rng.normal(size=100)})
    >>> pc_env_spearman(pcs, env).round(2).loc["temp", "PC1"]
    np.float64(1.0)
    """
    p, e = _aligned(pcs, env)
    out = pd.DataFrame(np.nan, index=pd.Index(e.columns, name="variable"), columns=p.columns)
    for var in e.columns:
        v = e[var].to_numpy(float)
        ok = np.isfinite(v)
        if ok.sum() < 3 or np.nanstd(v) == 0:
            continue
        for pc in p.columns:
            out.loc[var, pc] = spearmanr(p[pc].to_numpy()[ok], v[ok]).statistic
    return out


def env_r2_from_ssl(
    pcs: pd.DataFrame, env: pd.DataFrame, groups: Sequence[Any] | pd.Series,
    n_splits: int = 5, alphas: Sequence[float] = RIDGE_ALPHAS,
) -> pd.Series:
    """Cross-validated R² of each environmental variable from the SSL PCs.

    A ridge regression on the standardised PCs predicts each variable; folds
    are grouped (``groups``, e.g. ``site_id``), so cores of one site are
    never split between training and test. R² is computed on the pooled
    out-of-fold predictions.

    Parameters
    ----------
    pcs : pandas.DataFrame
        Predictors (e.g. :attr:`EmbeddingPCs.scores`).
    env : pandas.DataFrame
        Variables to explain, same index as ``pcs``.
    groups : sequence
        Group label per row of ``pcs``.
    n_splits : int
        Folds of :class:`sklearn.model_selection.GroupKFold`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> pcs = pd.DataFrame(rng.normal(size=(300, 3)), columns=["PC1", "PC2", "PC3"])
    >>> env = pd.DataFrame({"a": pcs["PC1"] + 0.1 * rng.normal(size=300),
    ...                     "b": rng.normal(size=300)})
    >>> r2 = env_r2_from_ssl(pcs, env, groups=np.arange(300) // 3)
    >>> bool(r2["a"] > 0.95), bool(r2["b"] < 0.05)
    (True, True)
    """
    g = pd.Series(np.asarray(groups), index=pcs.index)
    if len(g) != len(pcs):
        raise ValueError(f"env_r2_from_ssl: {len(g)} groups for {len(pcs)} rows of pcs")
    p, e = _aligned(pcs, env)
    g = g.loc[p.index].to_numpy()
    if len(np.unique(g)) < n_splits:
        raise ValueError(
            f"env_r2_from_ssl: n_splits={n_splits} but only {len(np.unique(g))} groups"
        )
    X = p.to_numpy(np.float64)
    out = {}
    for var in e.columns:
        y = e[var].to_numpy(np.float64)
        ok = np.isfinite(y)
        if ok.sum() < 2 * n_splits or np.std(y[ok]) == 0:
            out[var] = np.nan
            continue
        Xv, yv, gv = X[ok], y[ok], g[ok]
        pred = np.empty_like(yv)
        for tr, te in GroupKFold(n_splits=n_splits).split(Xv, yv, gv):
            model = make_pipeline(StandardScaler(), RidgeCV(alphas=list(alphas)))
            pred[te] = model.fit(Xv[tr], yv[tr]).predict(Xv[te])
        out[var] = float(r2_score(yv, pred))
    return pd.Series(out, name="r2_from_ssl").rename_axis("variable")
