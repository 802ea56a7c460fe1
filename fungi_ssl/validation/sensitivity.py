"""How hard the simulated world is, and when satellite features win (chapters 00 and 11).

Two questions about the simulated study, answered with the book's own models:

1. **Are the 1 km sets as weak as in reality, and no weaker?** On the real
   SPUN table restricted to Europe, LightGBM on the 1 km climate, soil and
   land-cover sets does well under random folds (samples cluster at sites)
   and poorly under 50 km spatial blocks. :func:`one_km_skill` measures the
   same numbers on any table; chapter 00 sets the simulated study's beside the
   SPUN table's (computed from the table when a data directory holds it, from
   the shipped summary :func:`spun_reference` otherwise).
2. **When do satellite features win?** (chapter 11) The simulator's true log
   richness is the sum of *visible* terms (hosts, stand age and continuity,
   soil pH, change), *coarse* terms (climate and nitrogen deposition, which
   vary over tens to hundreds of km) and *invisible* terms (regional anomaly,
   fine noise, hidden host identity, fine-scale nitrogen) that no predictor
   observes. Scaling the coarse and invisible coefficients of the richness
   model moves two shares of the variance of true richness: the share below
   1 km and the share no satellite can see. :func:`solve_gains` finds the
   scalings that give target shares, :func:`sensitivity_grid` redraws the
   samples' richness at each (the sites, their satellite patches and their
   1 km covariates do not change, so nothing is re-embedded) and scores
   ``ssl``, the 1 km sets together and ``all`` under spatial blocks, and
   :func:`crossover` finds where ``ssl`` and the 1 km sets score the same.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "EUROPE_BOX",
    "ONE_KM_SETS",
    "SPUN_REFERENCE_FILE",
    "SWEEP_GRID",
    "SWEEP_SETS",
    "compute_spun_reference",
    "crossover",
    "one_km_skill",
    "plot_sensitivity",
    "richness_with_gains",
    "sensitivity_grid",
    "sensitivity_json",
    "shares_at",
    "solve_gains",
    "spun_europe",
    "spun_reference",
]

#: Longitude/latitude box of "Europe" for the SPUN table (lon_min, lat_min, lon_max,
#: lat_max): 3,478 samples at 672 one-km pixels.
EUROPE_BOX = (-25.0, 34.0, 45.0, 72.0)
#: The 1 km predictor sets compared, and the name of the three together.
ONE_KM_SETS = ("climate", "soil", "landcover", "climate+soil+landcover")
#: LightGBM trees in the 1 km comparison (no early stopping).
ONE_KM_TREES = 300
#: Side of the spatial blocks (m).
BLOCK_M = 50_000.0
#: Shipped summary of the SPUN-Europe comparison (``fungi_ssl/reference``).
SPUN_REFERENCE_FILE = "spun_europe_1km_skill.json"
SPUN_TABLE = "spun_ecm_samples_1km_covariates.csv"


# --------------------------------------------------------------------------- #
# How weak the 1 km sets are
# --------------------------------------------------------------------------- #

def one_km_skill(frame: pd.DataFrame, target: str, sets: Sequence[str] = ONE_KM_SETS,
                 seed: int = 0, n_splits: int = 5, n_estimators: int = ONE_KM_TREES,
                 block_m: float = BLOCK_M) -> pd.DataFrame:
    """Pooled out-of-fold R² of LightGBM on 1 km predictor sets, random folds and spatial blocks.

    The comparison the SPUN figures of issue 8 were made with: LightGBM with
    the book's defaults and ``n_estimators`` trees (no early stopping), five
    random folds (samples shuffled, so cores of one site fall on both sides)
    and five folds of ``block_m`` spatial blocks
    (:class:`fungi_ssl.validation.cv.BlockKFold`).

    Parameters
    ----------
    frame : pandas.DataFrame
        One row per sample: ``longitude``, ``latitude``, ``target`` and the
        1 km covariates (SPUN names).
    target : str
        Column to predict (log richness).
    sets : sequence of str
        Predictor sets (:func:`fungi_ssl.predictors.features.select_predictors` names).

    Returns
    -------
    pandas.DataFrame
        Index ``set``, columns ``random`` and ``blocks`` (pooled R²).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> n = 400
    >>> t = pd.DataFrame({"longitude": rng.uniform(0, 8, n), "latitude": rng.uniform(45, 50, n)})
    >>> t["CHELSA_BIO_Annual_Mean_Temperature"] = 10 * t["latitude"]
    >>> t["y"] = 0.3 * t["latitude"] + rng.normal(0, 0.3, n)
    >>> s = one_km_skill(t, "y", sets=["climate"], n_estimators=50)
    >>> bool(s.loc["climate", "random"] > 0.5)
    True
    """
    from sklearn.model_selection import KFold

    from fungi_ssl.predictors.features import select_predictors
    from fungi_ssl.validation.cv import BlockKFold
    from fungi_ssl.validation.models import evaluate_cv

    data = frame.dropna(subset=[target]).reset_index(drop=True)
    y = data[target].to_numpy(dtype=float)
    xy = data[["longitude", "latitude"]].to_numpy(dtype=float)
    schemes = {
        "random": KFold(n_splits, shuffle=True, random_state=seed),
        "blocks": BlockKFold(block_size_m=block_m, n_splits=n_splits, seed=seed, coords=xy),
    }
    rows = {}
    for name in sets:
        columns, _ = select_predictors(data, name)
        X = data[columns]
        rows[name] = {}
        for scheme, splitter in schemes.items():
            res = evaluate_cv(X, y, "lightgbm", splitter, seed=seed, val_size=0.0,
                              model_params={"n_estimators": n_estimators}, n_jobs=1,
                              nan_policy="allow", progress=False, predictor_set=name)
            rows[name][scheme] = float(res.loc[res["scope"] == "pooled", "r2"].iloc[0])
    out = pd.DataFrame.from_dict(rows, orient="index")[["random", "blocks"]]
    out.index.name = "set"
    return out


def spun_europe(data_dir: str | Path) -> pd.DataFrame:
    """The SPUN 1 km table restricted to Europe (:data:`EUROPE_BOX`), samples and covariates joined.

    Raises
    ------
    FileNotFoundError
        If ``data_dir`` holds no ``spun_ecm_samples_1km_covariates.csv``.
    """
    from fungi_ssl.data.io import read_spun_covariates

    path = Path(data_dir) / SPUN_TABLE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the SPUN covariate table is not there")
    samples, cov = read_spun_covariates(path)
    lon0, lat0, lon1, lat1 = EUROPE_BOX
    keep = (samples["longitude"].between(lon0, lon1)
            & samples["latitude"].between(lat0, lat1)).to_numpy()
    samples = samples[keep].reset_index(drop=True)
    cov = cov.loc[samples["sample_id"].to_numpy()].reset_index(drop=True)
    cov = cov.drop(columns=[c for c in cov.columns if c in samples.columns])
    return pd.concat([samples, cov], axis=1)


def compute_spun_reference(data_dir: str | Path, seed: int = 0,
                           today: _dt.date | None = None) -> dict[str, Any]:
    """:func:`one_km_skill` on the SPUN-Europe table, with its provenance (the shipped JSON)."""
    path = Path(data_dir) / SPUN_TABLE
    table = spun_europe(data_dir)
    skill = one_km_skill(table, "log_richness", seed=seed)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {
        "r2": {scheme: skill[scheme].to_dict() for scheme in skill.columns},
        "n_samples": len(table),
        "n_sites": int(table["site_id"].nunique()),
        "provenance": {
            "source_file": SPUN_TABLE, "sha256": digest, "europe_box": list(EUROPE_BOX),
            "seed": seed, "n_estimators": ONE_KM_TREES, "block_m": BLOCK_M,
            "computed": (today or _dt.date.today()).isoformat(),
            "function": "fungi_ssl.sensitivity.one_km_skill",
            "command": "python -m fungi_ssl.validation.sensitivity DATA_DIR",
        },
    }


def spun_reference(data_dir: str | Path | None = None, seed: int = 0
                   ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The SPUN-Europe 1 km skill: from the table if ``data_dir`` holds it, else shipped.

    Returns
    -------
    skill : pandas.DataFrame
        As :func:`one_km_skill`.
    info : dict
        ``origin`` (``"table"`` or ``"shipped"``), ``n_samples``, ``n_sites``
        and, when shipped, ``provenance``.

    Examples
    --------
    >>> skill, info = spun_reference(None)
    >>> info["origin"], list(skill.columns)
    ('shipped', ['random', 'blocks'])
    """
    if data_dir and (Path(data_dir) / SPUN_TABLE).is_file():
        ref = compute_spun_reference(data_dir, seed=seed)
        origin = "table"
    else:
        text = resources.files("fungi_ssl").joinpath("reference", SPUN_REFERENCE_FILE).read_text()
        ref = json.loads(text)
        origin = "shipped"
    skill = pd.DataFrame(ref["r2"])[["random", "blocks"]]
    skill.index.name = "set"
    info = {"origin": origin, "n_samples": ref["n_samples"], "n_sites": ref["n_sites"],
            "provenance": ref["provenance"]}
    return skill, info



# --------------------------------------------------------------------------- #
# When satellite features win: the richness model's knobs
# --------------------------------------------------------------------------- #

#: Targets swept by chapter 11: share of true-richness variance below 1 km, and
#: share that no predictor observes. Infeasible pairs are skipped.
SWEEP_GRID: dict[str, dict[str, tuple[float, ...]]] = {
    "quick": {"below_1km": (0.2, 0.5, 0.7), "invisible": (0.0, 0.3, 0.6)},
    "full": {"below_1km": (0.1, 0.3, 0.5, 0.7), "invisible": (0.0, 0.2, 0.4, 0.6)},
}
#: Largest gain a setting may use: beyond it the rescaled world is no longer this
#: one with other proportions but a different one (the visible terms vanish).
MAX_GAIN = 10.0


def richness_with_gains(model, coarse_gain: float, invisible_gain: float,
                        means: Sequence[float] | None = None):
    """The richness model with its coarse and invisible coefficients scaled.

    ``coarse_gain`` multiplies the coefficients of the coarse terms
    (:data:`fungi_ssl.simulate.COARSE_TERMS`: temperature, precipitation,
    nitrogen deposition), ``invisible_gain`` those of the invisible terms
    (:data:`fungi_ssl.simulate.INVISIBLE_TERMS`). The terms are linear in
    these coefficients, so the log richness becomes ``visible + coarse_gain *
    coarse + invisible_gain * invisible``. Given the groups' ``means``
    (``visible, coarse, invisible``, from
    :func:`fungi_ssl.simulate.richness_variance`), ``s_max`` is moved so that
    the mean log richness stays where it was: only the variance changes.

    Examples
    --------
    >>> from fungi_ssl.simulate import RichnessModel
    >>> rm = richness_with_gains(RichnessModel(), 2.0, 0.0)
    >>> rm.precip_slope == 2 * RichnessModel().precip_slope, rm.fine_sd
    (True, 0.0)
    >>> round(richness_with_gains(RichnessModel(), 2.0, 1.0, means=(0, -0.5, 0)).s_max, 1)
    626.5
    """
    from fungi_ssl.simulate.communities import COARSE_TERMS, INVISIBLE_TERMS, TERM_COEFFICIENTS

    if coarse_gain < 0 or invisible_gain < 0:
        raise ValueError(f"gains must be >= 0, got {coarse_gain}, {invisible_gain}")
    changes = {TERM_COEFFICIENTS[t]: getattr(model, TERM_COEFFICIENTS[t]) * coarse_gain
               for t in COARSE_TERMS}
    changes.update({TERM_COEFFICIENTS[t]: getattr(model, TERM_COEFFICIENTS[t]) * invisible_gain
                    for t in INVISIBLE_TERMS})
    if means is not None:
        shift = (coarse_gain - 1.0) * means[1] + (invisible_gain - 1.0) * means[2]
        changes["s_max"] = model.s_max * float(np.exp(-shift))
    return replace(model, **changes)


def shares_at(variance: dict, coarse_gain: float, invisible_gain: float) -> tuple[float, float]:
    """Share below 1 km and invisible share of true-richness variance under gains.

    ``variance`` is :func:`fungi_ssl.simulate.richness_variance`'s result
    (groups ``visible``, ``coarse``, ``invisible``); scaling a group scales
    its rows and columns of the covariance matrices.

    Examples
    --------
    >>> v = {"cov_total": np.diag([1.0, 1.0, 1.0]), "cov_within": np.diag([0.5, 0.0, 1.0])}
    >>> shares_at(v, 1.0, 1.0)
    (0.5, 0.3333333333333333)
    >>> shares_at(v, 0.0, 0.0)
    (0.5, 0.0)
    """
    d = np.array([1.0, coarse_gain, invisible_gain])
    total = d @ np.asarray(variance["cov_total"]) @ d
    within = d @ np.asarray(variance["cov_within"]) @ d
    inv = invisible_gain ** 2 * float(np.asarray(variance["cov_total"])[2, 2])
    return float(within / total), float(inv / total)


def solve_gains(variance: dict, below_1km: float, invisible: float,
                tol: float = 0.01, max_gain: float = MAX_GAIN) -> tuple[float, float]:
    """Coarse and invisible gains that give target shares, or ``(nan, nan)`` if none does.

    Not every pair of targets is reachable: with no invisible variance the
    share below 1 km can be no larger than that of the visible terms alone,
    and gains above ``max_gain`` are not allowed.

    Examples
    --------
    >>> v = {"cov_total": np.diag([1.0, 1.0, 1.0]), "cov_within": np.diag([0.5, 0.0, 1.0])}
    >>> gc, gi = solve_gains(v, 0.5, 1 / 3)
    >>> round(gc, 3), round(gi, 3)
    (1.0, 1.0)
    >>> solve_gains(v, 0.9, 0.0)
    (nan, nan)
    """
    from scipy.optimize import least_squares

    if not (0 < below_1km < 1 and 0 <= invisible < 1):
        raise ValueError(f"targets must be shares: below_1km in (0, 1), invisible in [0, 1); "
                         f"got {below_1km}, {invisible}")
    top = float(np.log(max_gain))
    if invisible == 0:
        def res1(x):
            return [shares_at(variance, np.exp(x[0]), 0.0)[0] - below_1km]
        fit = least_squares(res1, [0.0], bounds=([-12.0], [top]))
        gains = (float(np.exp(fit.x[0])), 0.0)
    else:
        def res2(x):
            b, i = shares_at(variance, np.exp(x[0]), np.exp(x[1]))
            return [b - below_1km, i - invisible]
        best = None
        for start in ([0.0, 0.0], [-3.0, 0.0], [min(2.0, top), min(1.0, top)], [-6.0, -1.0]):
            fit = least_squares(res2, start, bounds=([-12.0, -12.0], [top, top]))
            if best is None or fit.cost < best.cost:
                best = fit
        gains = (float(np.exp(best.x[0])), float(np.exp(best.x[1])))
    b, i = shares_at(variance, *gains)
    if abs(b - below_1km) > tol or abs(i - invisible) > tol:
        return float("nan"), float("nan")
    return gains


def _site_holdout(train: np.ndarray, sites: np.ndarray, share: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split training rows into (fit, early-stopping) rows, whole sites to the latter."""
    uniq, inverse = np.unique(sites[train], return_inverse=True)
    order = np.random.default_rng(seed).permutation(len(uniq))
    sizes = np.bincount(inverse)[order]
    n_held = min(int(np.searchsorted(np.cumsum(sizes), share * len(train)) + 1), len(uniq) - 1)
    held = np.zeros(len(uniq), bool)
    held[order[:n_held]] = True
    return train[~held[inverse]], train[held[inverse]]


class _FoldFeatures:
    """Per-fold features shared by every setting: the SSL patch's PCA is fitted once
    on each fold's fitting rows, since only the target changes between settings."""

    def __init__(self, frame: pd.DataFrame, folds: list[tuple[np.ndarray, ...]], seed: int,
                 n_components: int):
        from fungi_ssl.predictors.features import PatchReducer, select_predictors

        ssl_cols, _ = select_predictors(frame, "ssl")
        km_cols, _ = select_predictors(frame, "climate+soil+landcover")
        self.km = frame[km_cols].to_numpy(dtype=np.float32)
        self.ssl = []
        for fit_rows, _, _ in folds:
            red = PatchReducer(n_components=n_components, seed=seed)
            red.fit(frame[ssl_cols].iloc[fit_rows])
            self.ssl.append(red.transform(frame[ssl_cols]).to_numpy(dtype=np.float32))

    def matrix(self, fold: int, predictor_set: str) -> np.ndarray:
        if predictor_set == "ssl":
            return self.ssl[fold]
        if predictor_set == "1km":
            return self.km
        return np.hstack([self.ssl[fold], self.km])


#: The three sets chapter 11 compares under spatial blocks.
SWEEP_SETS = ("ssl", "1km", "all")
#: LightGBM of the grid: the book's, with larger steps and smaller trees so that a
#: grid of a few dozen worlds x 16 fits stays within the chapter's time budget.
SWEEP_MODEL_PARAMS: dict[str, Any] = {"learning_rate": 0.1, "num_leaves": 15, "max_bin": 63,
                                      "colsample_bytree": 0.5, "n_estimators": 400}
#: Rounds without improvement before the grid's LightGBM stops.
SWEEP_EARLY_STOPPING = 30


def sensitivity_grid(frame: pd.DataFrame, study, *, profile: str = "quick", seed: int = 0,
                     grid: dict[str, Sequence[float]] | None = None,
                     n_components: int = 32, n_splits: int = 5, block_m: float = BLOCK_M,
                     n_cells: int = 300, progress: bool = True) -> pd.DataFrame:
    """LightGBM R² of ``ssl``, the 1 km sets and ``all`` over a grid of simulated worlds.

    For each target pair (share of true-richness variance below 1 km, share
    no predictor observes) in ``grid`` (default :data:`SWEEP_GRID` of the
    profile), :func:`solve_gains` finds the richness model, the study's
    samples are redrawn under it (:meth:`~fungi_ssl.simulate.SimulatedStudy.with_richness`:
    same sites, patches, covariates and sequencing depths; ``s_max`` moved so
    that the mean log richness stays the study's), and the target
    ``log1p(rarefied)`` of the rows of ``frame`` is replaced by the new one.
    The study's own richness model is evaluated too (``setting="study"``).

    Each set is scored by the mean R² over ``n_splits`` folds of
    ``block_m`` spatial blocks (as Table 1), with a lighter LightGBM
    (:data:`SWEEP_MODEL_PARAMS`) early-stopped on a tenth of the training
    sites; ``ssl`` is also scored on the study's
    first random 70/10/20 split (``r2_ssl_random``), which marks the
    settings that reproduce the study's figure (R² > 0.5).

    Parameters
    ----------
    frame : pandas.DataFrame
        The predictor table (:func:`fungi_ssl.predictors.tables.predictor_table`)
        of ``study``: ``sample_id``, ``site_id``, ``longitude``, ``latitude``,
        the 1 km covariates and the SSL patch columns.
    study : fungi_ssl.simulate.SimulatedStudy
        The study the table was built from.

    Returns
    -------
    pandas.DataFrame
        One row per setting: ``setting`` ("grid" or "study"),
        ``below_1km_target``, ``invisible_target``, ``coarse_gain``,
        ``invisible_gain``, ``below_1km``, ``invisible`` (realised shares),
        ``r2_ssl``, ``r2_1km``, ``r2_all``, ``r2_ssl_random``,
        ``sub_km_index`` (:func:`fungi_ssl.data.variogram.sub_km_index` of that
        world's own samples, the rows of ``frame``), ``n_samples``, ``seconds``. Infeasible targets have NaN gains and scores.
    """
    import time
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from fungi_ssl.simulate import richness_variance
    from fungi_ssl.validation.cv import BlockKFold, RandomTrainValTest
    from fungi_ssl.validation.models import fit_model, make_model, regression_metrics

    grid = dict(grid or SWEEP_GRID[profile])
    data = frame.reset_index(drop=True)
    sites = data["site_id"].astype(str).to_numpy()
    xy = data[["longitude", "latitude"]].to_numpy(dtype=float)
    blocks = BlockKFold(block_size_m=block_m, n_splits=n_splits, seed=seed, coords=xy)
    folds = []
    for k, (train, test) in enumerate(blocks.split(np.zeros((len(data), 1)))):
        fit_rows, val_rows = _site_holdout(train, sites, 0.1, seed + k)
        folds.append((fit_rows, val_rows, test))
    r_train, r_val, r_test = next(iter(
        RandomTrainValTest(1, seed).split_train_val_test(np.zeros(len(data)))))
    feats = _FoldFeatures(data, folds + [(r_train, r_val, r_test)], seed, n_components)

    variance = richness_variance(study, n_cells=n_cells, seed=0)
    settings = [("study", np.nan, np.nan, 1.0, 1.0)]
    for inv in grid["invisible"]:
        for below in grid["below_1km"]:
            settings.append(("grid", below, inv, *solve_gains(variance, below, inv)))

    ids = data["sample_id"].to_numpy()
    base_rm = study.config.richness
    # pairs of samples within 30 km: the same in every world, only their richness changes
    from dataclasses import replace as _replace

    from fungi_ssl.data.variogram import REFERENCE_BAND, sample_pairs, sub_km_index

    pairs = sample_pairs(data.assign(_z=0.0), "_z", REFERENCE_BAND[1])

    def index_of(y: np.ndarray) -> float:
        ok = np.isfinite(y)
        keep = ok[pairs.i] & ok[pairs.j]
        world = _replace(pairs, i=pairs.i[keep], j=pairs.j[keep],
                         distance_m=pairs.distance_m[keep],
                         half_sq_diff=0.5 * (y[pairs.i[keep]] - y[pairs.j[keep]]) ** 2,
                         variance=float(np.nanvar(y)))
        return sub_km_index(data, pairs=world) if keep.any() else float("nan")

    def target(gc: float, gi: float) -> np.ndarray:
        rm = richness_with_gains(base_rm, gc, gi, means=variance["mean"])
        other = study.with_richness(rm)
        rarefied = other.samples.set_index("sample_id").loc[ids, "rarefied"].to_numpy(float)
        return np.log1p(rarefied)

    def score(y: np.ndarray, fold: int, predictor_set: str, rows: tuple) -> float:
        fit_rows, val_rows, test = rows
        X = feats.matrix(fold, predictor_set)
        model = make_model("lightgbm", seed=seed, n_jobs=1, **SWEEP_MODEL_PARAMS)
        model = fit_model(model, X[fit_rows], y[fit_rows], X[val_rows], y[val_rows],
                          early_stopping_rounds=SWEEP_EARLY_STOPPING)
        return regression_metrics(y[test], model.predict(X[test]))["r2"]

    out = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for kind, below, inv, gc, gi in tqdm(settings, desc="settings", disable=not progress):
            t0 = time.perf_counter()
            row = {"setting": kind, "below_1km_target": below, "invisible_target": inv,
                   "coarse_gain": gc, "invisible_gain": gi}
            if np.isfinite(gc):
                row["below_1km"], row["invisible"] = shares_at(variance, gc, gi)
                y = target(gc, gi)
                row["sub_km_index"] = index_of(y)
                jobs = {(s, k): pool.submit(score, y, k, s, folds[k])
                        for s in SWEEP_SETS for k in range(len(folds))}
                jobs[("random", 0)] = pool.submit(score, y, len(folds), "ssl",
                                                  (r_train, r_val, r_test))
                for s in SWEEP_SETS:
                    row[f"r2_{s}"] = float(np.mean([jobs[(s, k)].result()
                                                    for k in range(len(folds))]))
                row["r2_ssl_random"] = float(jobs[("random", 0)].result())
            row["n_samples"] = len(data)
            row["seconds"] = time.perf_counter() - t0
            out.append(row)
    return pd.DataFrame(out)


def crossover(results: pd.DataFrame, a: str = "ssl", b: str = "1km") -> list[dict[str, float]]:
    """Settings where sets ``a`` and ``b`` score the same R², interpolated on the grid.

    Along each row of the grid (fixed invisible share) and each column
    (fixed share below 1 km), wherever ``r2_a - r2_b`` changes sign between
    two neighbouring feasible settings, the crossing is placed by linear
    interpolation of the difference.

    Returns
    -------
    list of dict
        ``below_1km``, ``invisible`` and ``r2`` (the interpolated common R²)
        of each crossing, and ``along`` (``"below_1km"`` or ``"invisible"``).

    Examples
    --------
    >>> g = pd.DataFrame({"setting": "grid", "below_1km_target": [0.1, 0.5, 0.1, 0.5],
    ...                   "invisible_target": [0.0, 0.0, 0.4, 0.4],
    ...                   "r2_ssl": [0.2, 0.6, 0.1, 0.3], "r2_1km": [0.4, 0.2, 0.3, 0.1]})
    >>> [(round(c["below_1km"], 2), c["invisible"]) for c in crossover(g) if c["along"] == "below_1km"]
    [(0.23, 0.0), (0.3, 0.4)]
    """
    g = results[results["setting"] == "grid"].dropna(subset=[f"r2_{a}", f"r2_{b}"])
    g = g.assign(diff=g[f"r2_{a}"] - g[f"r2_{b}"])
    out = []
    for along, fixed in (("below_1km", "invisible"), ("invisible", "below_1km")):
        for value, line in g.groupby(f"{fixed}_target"):
            line = line.sort_values(f"{along}_target")
            x = line[f"{along}_target"].to_numpy()
            d = line["diff"].to_numpy()
            r = line[f"r2_{b}"].to_numpy()
            for j in range(len(x) - 1):
                if d[j] == 0 or d[j] * d[j + 1] < 0:
                    t = d[j] / (d[j] - d[j + 1]) if d[j] != d[j + 1] else 0.0
                    out.append({along: float(x[j] + t * (x[j + 1] - x[j])),
                                fixed: float(value),
                                "r2": float(r[j] + t * (r[j + 1] - r[j])), "along": along})
    return out


def index_crossover(results: pd.DataFrame, a: str = "ssl", b: str = "1km") -> list[dict[str, float]]:
    """Where ``a`` and ``b`` score the same, in terms of the observable sub-km index.

    Along each row of the grid (fixed invisible share), the feasible worlds
    are ordered by their own ``sub_km_index`` and the difference
    ``r2_a - r2_b`` is interpolated linearly in the index; each sign change
    gives one crossing.

    Returns
    -------
    list of dict
        ``invisible`` (the row), ``sub_km_index`` and ``r2`` (interpolated
        common R²) of each crossing.

    Examples
    --------
    >>> g = pd.DataFrame({"setting": "grid", "invisible_target": 0.2,
    ...                   "sub_km_index": [0.2, 0.6], "r2_ssl": [0.1, 0.3], "r2_1km": [0.2, 0.2]})
    >>> [round(c["sub_km_index"], 2) for c in index_crossover(g)]
    [0.4]
    """
    g = results[results["setting"] == "grid"].dropna(subset=[f"r2_{a}", f"r2_{b}", "sub_km_index"])
    out = []
    for value, line in g.groupby("invisible_target"):
        line = line.sort_values("sub_km_index")
        x = line["sub_km_index"].to_numpy()
        d = (line[f"r2_{a}"] - line[f"r2_{b}"]).to_numpy()
        r = line[f"r2_{b}"].to_numpy()
        for j in range(len(x) - 1):
            if d[j] == 0 or d[j] * d[j + 1] < 0:
                t = d[j] / (d[j] - d[j + 1]) if d[j] != d[j + 1] else 0.0
                out.append({"invisible": float(value), "sub_km_index": float(x[j] + t * (x[j + 1] - x[j])),
                            "r2": float(r[j] + t * (r[j + 1] - r[j]))})
    return out


def predicted_winner(results: pd.DataFrame, index: float, ci: Sequence[float],
                     a: str = "ssl", b: str = "1km") -> str:
    """Which set the grid predicts to win at an observed sub-km index, given its interval.

    Along each row of the grid (fixed invisible share, which no field table
    reveals), ``r2_a - r2_b`` is interpolated linearly in the worlds' own
    sub-km index (held at the row's end values outside its range) and read
    at the interval's ends and at the index. ``a`` is predicted when every
    one of these readings favours it, ``b`` when every one favours ``b``,
    and ``"undecided"`` otherwise: the interval, or the unknown invisible
    share, straddles a crossover.

    Returns
    -------
    str
        ``a``, ``b`` or ``"undecided"`` (also when no row has two scored worlds).

    Examples
    --------
    >>> g = pd.DataFrame({"setting": "grid", "invisible_target": 0.2,
    ...                   "sub_km_index": [0.2, 0.6], "r2_ssl": [0.1, 0.3], "r2_1km": [0.2, 0.2]})
    >>> predicted_winner(g, 0.25, [0.2, 0.3]), predicted_winner(g, 0.4, [0.3, 0.5])
    ('1km', 'undecided')
    """
    g = results[results["setting"] == "grid"].dropna(subset=[f"r2_{a}", f"r2_{b}", "sub_km_index"])
    points = [float(index), *map(float, ci)]
    if not all(np.isfinite(points)):
        return "undecided"
    readings = []
    for _, line in g.groupby("invisible_target"):
        if len(line) < 2:
            continue
        line = line.sort_values("sub_km_index")
        d = (line[f"r2_{a}"] - line[f"r2_{b}"]).to_numpy()
        readings += list(np.interp(points, line["sub_km_index"].to_numpy(), d))
    if not readings:
        return "undecided"
    readings = np.asarray(readings)
    if (readings > 0).all():
        return a
    if (readings < 0).all():
        return b
    return "undecided"



def sensitivity_json(results: pd.DataFrame, threshold: float = 0.5) -> dict[str, Any]:
    """Chapter 11's results file: the grid, each set's R² at each setting, and the crossover.

    Returns
    -------
    dict
        ``grid`` (one entry per setting: targets, gains, realised shares,
        ``r2`` of ``ssl``, ``1km`` and ``all`` under spatial blocks,
        ``r2_ssl_random`` and ``reproduces_study``: random-split ``ssl`` R²
        above ``threshold``; infeasible targets have ``null`` scores),
        ``study`` (the same for the study's own richness model),
        ``crossover`` (:func:`crossover` of ``ssl`` and ``1km``), ``sets``,
        ``metric`` and ``threshold``.
    """
    def entry(row: pd.Series) -> dict[str, Any]:
        ok = bool(np.isfinite(row.get("r2_ssl", np.nan)))
        return {
            "below_1km_target": row["below_1km_target"], "invisible_target": row["invisible_target"],
            "coarse_gain": row["coarse_gain"], "invisible_gain": row["invisible_gain"],
            "below_1km": row.get("below_1km"), "invisible": row.get("invisible"),
            "feasible": ok,
            "r2": {s: (row[f"r2_{s}"] if ok else None) for s in SWEEP_SETS},
            "r2_ssl_random": row["r2_ssl_random"] if ok else None,
            "reproduces_study": bool(ok and row["r2_ssl_random"] > threshold),
            "sub_km_index": (float(row["sub_km_index"])
                             if ok and np.isfinite(row.get("sub_km_index", np.nan)) else None),
        }

    grid = results[results["setting"] == "grid"]
    own = results[results["setting"] == "study"]
    return {
        "grid": [entry(r) for _, r in grid.iterrows()],
        "study": entry(own.iloc[0]) if len(own) else None,
        "crossover": crossover(results),
        "sets": list(SWEEP_SETS),
        "metric": "mean R² over 5 folds of 50 km spatial blocks (LightGBM, early stopping)",
        "model_params": dict(SWEEP_MODEL_PARAMS),
        "threshold": threshold,
    }


def plot_sensitivity(results: pd.DataFrame, threshold: float = 0.5, axes: Any = None,
                     block_m: float = BLOCK_M) -> Any:
    """Chapter 11's figure: R² of ``ssl`` and of the 1 km sets over the grid, and where they cross.

    Both panels share the axes (share of true-richness variance below 1 km,
    share no predictor sees). The black line is where ``ssl`` and the 1 km
    sets score the same (the zero contour of their difference); open circles
    mark settings where ``ssl`` reaches R² > ``threshold`` under random
    splits, as in the study; the star is this study's own world.
    """
    import matplotlib.pyplot as plt

    g = results[results["setting"] == "grid"]
    xs = np.sort(g["below_1km_target"].unique())
    ys = np.sort(g["invisible_target"].unique())

    def surface(col: str) -> np.ndarray:
        z = np.full((len(ys), len(xs)), np.nan)
        for _, r in g.iterrows():
            z[np.searchsorted(ys, r["invisible_target"]),
              np.searchsorted(xs, r["below_1km_target"])] = r[col]
        return z

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True, constrained_layout=True)
    vals = np.concatenate([surface("r2_ssl").ravel(), surface("r2_1km").ravel()])
    vmin, vmax = np.nanmin(vals), np.nanmax(vals)
    diff = surface("r2_ssl") - surface("r2_1km")
    own = results[results["setting"] == "study"]
    wins = g[g["r2_ssl_random"] > threshold]
    for ax, col, title in zip(axes, ("r2_ssl", "r2_1km"),
                              ("ssl (satellite patch)", "climate + soil + land cover (1 km)")):
        im = ax.pcolormesh(xs, ys, surface(col), vmin=vmin, vmax=vmax, cmap="viridis",
                           shading="nearest")
        if np.isfinite(diff).sum() >= 4 and np.nanmin(diff) < 0 < np.nanmax(diff):
            ax.contour(xs, ys, diff, levels=[0.0], colors="k", linewidths=2)
        ax.scatter(wins["below_1km_target"], wins["invisible_target"], s=90,
                   facecolors="none", edgecolors="w", linewidths=1.5)
        if len(own):
            ax.scatter(own["below_1km"], own["invisible"], marker="*", s=220, c="tab:red",
                       edgecolors="w")
        ax.set(title=f"{title}: R² under {block_m / 1000:g} km blocks", xlabel="share of variance below 1 km")
    axes[0].set_ylabel("share no predictor sees")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="o", mfc="none", mec="0.3", ms=9,
                      label=f"ssl R² > {threshold:g} (random splits)"),
               Line2D([], [], ls="", marker="*", mfc="tab:red", mec="0.3", ms=13,
                      label="this study's world"),
               Line2D([], [], color="k", lw=2, label="ssl = 1 km sets")]
    axes[0].legend(handles=handles, loc="upper left", fontsize=8, framealpha=0.85)
    plt.colorbar(im, ax=axes, label="R²", shrink=0.9)
    return axes

def plot_index_comparison(results: pd.DataFrame, real_index: float, real_ci: Sequence[float],
                          real_label: str = "real European table", ax: Any = None) -> Any:
    """``ssl`` minus the 1 km sets against each world's observable sub-km index.

    One line per invisible share of the grid (worlds ordered by their own
    index), the study's world as a star, and the real table's index with its
    interval as a vertical line and band: where the lines cross zero inside
    the band, the real table does not decide the winner.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6.2, 4.2), constrained_layout=True)
    g = results[results["setting"] == "grid"].dropna(subset=["r2_ssl", "r2_1km", "sub_km_index"])
    levels = sorted(g["invisible_target"].unique())
    cmap = plt.get_cmap("viridis")
    for k, (value, line) in enumerate(g.groupby("invisible_target")):
        line = line.sort_values("sub_km_index")
        ax.plot(line["sub_km_index"], line["r2_ssl"] - line["r2_1km"], "-o", ms=4,
                color=cmap(k / max(1, len(levels) - 1)), label=f"invisible share {value:.0%}")
    own = results[results["setting"] == "study"].dropna(subset=["sub_km_index"])
    if len(own):
        ax.scatter(own["sub_km_index"], own["r2_ssl"] - own["r2_1km"], marker="*", s=220,
                   c="tab:red", edgecolors="w", zorder=5, label="this study's world")
    lo, hi = real_ci
    if np.isfinite([real_index, lo, hi]).all():
        ax.axvspan(lo, hi, color="0.6", alpha=0.3, lw=0)
        ax.axvline(real_index, color="0.3", ls="--", label=f"{real_label} (90% interval)")
    ax.axhline(0.0, color="k", lw=1)
    ax.set(xlabel="sub-km index of the samples (observable)",
           ylabel="R² of ssl minus R² of 1 km sets (50 km blocks)")
    ax.legend(fontsize=8, loc="best")
    return ax



def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite the shipped SPUN-Europe summary: ``python -m fungi_ssl.validation.sensitivity DATA_DIR``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m fungi_ssl.validation.sensitivity",
        description=f"Recompute fungi_ssl/reference/{SPUN_REFERENCE_FILE} from the SPUN table.")
    parser.add_argument("data_dir", type=Path, help=f"directory holding {SPUN_TABLE}")
    args = parser.parse_args(argv)
    ref = compute_spun_reference(args.data_dir)
    out = Path(__file__).resolve().parent.parent / "reference" / SPUN_REFERENCE_FILE
    out.write_text(json.dumps(ref, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
