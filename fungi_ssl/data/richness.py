"""Richness estimates from OTU count tables: rarefaction, extrapolation, Chao1.

A count table holds reads per OTU: one sample as a 1-D vector, or several as a
2-D ``(samples, OTUs)`` array (numpy, ``scipy.sparse`` or a pandas DataFrame).
Every function here takes any of these forms and never modifies its input.

ECM richness is rarefied from the *whole fungal community*: a sample of ``N``
fungal reads is subsampled to ``d`` reads, and the ECM OTUs among them are
counted. A table that lists only the ECM OTUs therefore needs the sample's
total read count, passed as ``total_reads``; the reads of the unlisted OTUs
act as one big "other" class that is drawn from but never counted.

The expected richness of a subsample of ``d`` reads drawn without replacement
(Hurlbert 1971; Heck et al. 1975) is

.. math:: E[S_d] = \\sum_i \\left[1 - \\binom{N - n_i}{d} \\Big/ \\binom{N}{d}\\right]

computed here in log space with :func:`scipy.special.gammaln`, so reads in the
millions are exact to float precision. Beyond the observed depth,
:func:`extrapolated_richness` follows Chao et al. 2014 (Ecol. Monogr. 84:45).

Conventions: a sample with zero reads has no defined richness and gives
``NaN``; a depth above a sample's read count is an error in
:func:`rarefied_richness` (use :func:`extrapolated_richness` to go beyond it)
and ``NaN`` in :func:`rarefaction_curve`, where curves stop at each sample's depth.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.special import gammaln
from tqdm import tqdm

__all__ = [
    "CHAO1_FORMS",
    "chao1",
    "drop_shallow_samples",
    "extrapolated_richness",
    "rarefaction_curve",
    "rarefied_richness",
    "rarefy_counts",
    "sequencing_depth",
]


# ---------------------------------------------------------------------------
# Input handling
# ---------------------------------------------------------------------------


class _Table:
    """A count table reduced to its non-zero entries (row, value) plus shape.

    Working on non-zero entries only makes dense and sparse input one code
    path: an OTU with zero reads contributes nothing to any estimator here.
    """

    def __init__(self, counts: Any, name: str = "counts") -> None:
        self.index = None
        self.kind = "numpy"
        if isinstance(counts, pd.DataFrame):
            self.index = counts.index
            self.columns = counts.columns
            self.kind = "dataframe"
            counts = counts.to_numpy()
        elif isinstance(counts, pd.Series):
            self.index = None
            counts = counts.to_numpy()
        if sp.issparse(counts):
            self.kind = "sparse"
            csr = sp.csr_array(counts)
            if csr.ndim != 2:
                raise ValueError(f"{name}: expected a 1-D or 2-D table, got ndim={csr.ndim}")
            self.one_d = False
            self.shape = csr.shape
            values = np.asarray(csr.data, dtype=float)
            rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
            cols = np.asarray(csr.indices)
        else:
            arr = np.asarray(counts)
            if arr.dtype == object or not (
                np.issubdtype(arr.dtype, np.number) or arr.dtype == bool
            ):
                raise ValueError(f"{name}: expected numeric read counts, got dtype {arr.dtype}")
            if arr.ndim not in (1, 2):
                raise ValueError(
                    f"{name}: expected a 1-D (one sample) or 2-D (samples x OTUs) table, "
                    f"got shape {arr.shape}"
                )
            self.one_d = arr.ndim == 1
            arr2 = arr.reshape(1, -1) if self.one_d else arr
            self.shape = arr2.shape
            rows, cols = np.nonzero(arr2)
            values = np.asarray(arr2[rows, cols], dtype=float)
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{name}: read counts must be finite (found NaN or inf)")
        if np.any(values < 0):
            raise ValueError(f"{name}: read counts must be >= 0 (found {values.min():g})")
        if np.any(values != np.round(values)):
            bad = values[values != np.round(values)][0]
            raise ValueError(f"{name}: read counts must be whole numbers (found {bad:g})")
        keep = values > 0
        self.rows = rows[keep]
        self.cols = cols[keep]
        self.values = values[keep]
        self.n_samples = self.shape[0]
        self.listed_reads = np.bincount(self.rows, weights=self.values, minlength=self.n_samples)

    def total(self, total_reads: Any) -> np.ndarray:
        """Per-sample community size N (listed reads, or ``total_reads``)."""
        if total_reads is None:
            return self.listed_reads.copy()
        tot = np.asarray(total_reads, dtype=float)
        if tot.ndim == 0:
            tot = np.full(self.n_samples, float(tot))
        tot = tot.reshape(-1)
        if tot.shape[0] != self.n_samples:
            raise ValueError(
                f"total_reads: expected a scalar or one value per sample "
                f"({self.n_samples}), got {tot.shape[0]} values"
            )
        if not np.all(np.isfinite(tot)) or np.any(tot != np.round(tot)):
            raise ValueError("total_reads: expected finite whole read counts")
        short = np.flatnonzero(tot < self.listed_reads)
        if short.size:
            i = short[0]
            raise ValueError(
                f"total_reads: must be >= the reads listed in the table for every sample; "
                f"sample {i} lists {self.listed_reads[i]:g} reads but total_reads is {tot[i]:g} "
                f"({short.size} samples affected)"
            )
        return tot

    def wrap(self, per_sample: np.ndarray, name: str) -> Any:
        """Return a scalar for 1-D input, a Series for a DataFrame, else an array."""
        if self.one_d:
            return float(per_sample[0])
        if self.index is not None:
            return pd.Series(per_sample, index=self.index, name=name)
        return per_sample


def _check_depth(depth: Any, name: str = "depth") -> int:
    d = np.asarray(depth)
    if d.ndim != 0 or not np.isfinite(d) or d != np.round(d) or d < 1:
        raise ValueError(f"{name}: expected a whole number of reads >= 1, got {depth!r}")
    return int(d)


#: Below this many factors, C(N-n, d)/C(N, d) is computed as an exact product;
#: above it with log-gamma (see :func:`_log_choose_ratio`).
_EXACT_PRODUCT_TERMS = 32


def _log_choose_ratio(n_other: np.ndarray, total: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """log[C(N - n, d) / C(N, d)] with ``n_other = N - n``; -inf where N - n < d.

    The ratio equals prod_{j<k} (1 - x / (N - j)) with k = min(n, d) and
    x = max(n, d). Where k is small (rare OTUs, shallow depths: the terms whose
    probabilities are small and need relative precision) the product is summed
    exactly with log1p. Elsewhere log-gamma differences are used; their
    absolute error is about 1e-16 * N log N, i.e. ~1e-8 at a million reads.
    """
    shape = np.broadcast(n_other, total, depth).shape
    a = np.broadcast_to(np.asarray(n_other, dtype=float), shape)
    N = np.broadcast_to(np.asarray(total, dtype=float), shape)
    d = np.broadcast_to(np.asarray(depth, dtype=float), shape)
    out = np.full(shape, -np.inf)
    ok = a >= d
    n = N - a
    k = np.minimum(n, d)
    x = np.maximum(n, d)
    exact = ok & (k <= _EXACT_PRODUCT_TERMS)
    if exact.any():
        ke, xe, Ne = k[exact], x[exact], N[exact]
        acc = np.zeros(ke.shape)
        for j in range(int(ke.max()) if ke.size else 0):
            use = ke > j
            acc[use] += np.log1p(-xe[use] / (Ne[use] - j))
        out[exact] = acc
    big = ok & ~exact
    if big.any():
        ab, Nb, db = a[big], N[big], d[big]
        out[big] = gammaln(ab + 1) - gammaln(ab - db + 1) - gammaln(Nb + 1) + gammaln(Nb - db + 1)
    return out


def _expected_richness(tab: _Table, total: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Hypergeometric expected richness per sample at per-sample ``depth``.

    Assumes ``depth <= total`` wherever total > 0.
    """
    N = total[tab.rows]
    d = depth[tab.rows]
    log_ratio = _log_choose_ratio(N - tab.values, N, d)
    # 1 - exp(x) computed as -expm1(x) keeps precision for rare OTUs at small depth
    prob_seen = -np.expm1(log_ratio)
    out = np.bincount(tab.rows, weights=prob_seen, minlength=tab.n_samples)
    out[total <= 0] = np.nan
    return out


# ---------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------


def sequencing_depth(counts: Any) -> Any:
    """Reads per sample (row sums) of a count table.

    Parameters
    ----------
    counts : array_like, scipy.sparse matrix or pandas.DataFrame
        Read counts, 1-D (one sample) or 2-D ``(samples, OTUs)``.

    Returns
    -------
    float, numpy.ndarray or pandas.Series
        A float for 1-D input, a Series for a DataFrame, else an array.

    Examples
    --------
    >>> sequencing_depth([[2, 1, 1], [0, 5, 0]])
    array([4., 5.])
    """
    tab = _Table(counts)
    return tab.wrap(tab.listed_reads, "reads")


def rarefied_richness(counts: Any, depth: int, total_reads: Any = None) -> Any:
    """Expected number of OTUs in a random subsample of ``depth`` reads.

    The subsample is drawn without replacement from ``N`` reads, so the
    expectation is the hypergeometric rarefaction formula
    ``E[S_d] = sum_i [1 - C(N - n_i, d) / C(N, d)]`` over the listed OTUs,
    evaluated in log space with log-gamma.

    Parameters
    ----------
    counts : array_like, scipy.sparse matrix or pandas.DataFrame
        Read counts per OTU, 1-D (one sample) or 2-D ``(samples, OTUs)``.
        Whole, non-negative numbers.
    depth : int
        Subsample size ``d`` in reads (>= 1).
    total_reads : int or array_like, optional
        Community size ``N`` per sample (scalar or one per sample) when the
        table lists only some OTUs, e.g. only the ECM OTUs of a fungal sample:
        the subsample is drawn from all ``N`` reads and only the listed OTUs
        are counted. Defaults to the row sums of ``counts``. Must be at least
        the reads listed for each sample.

    Returns
    -------
    float, numpy.ndarray or pandas.Series
        Expected richness: a float for 1-D input, a Series (same index) for a
        DataFrame, else an array with one value per sample. ``NaN`` for a
        sample with zero reads (N = 0).

    Raises
    ------
    ValueError
        If ``depth`` exceeds ``N`` for any sample with reads (rarefaction
        cannot go beyond the data; see :func:`extrapolated_richness`), or if
        the counts are negative, fractional or not finite.

    Examples
    --------
    Two OTUs seen once and one seen twice; one read shows exactly one OTU,
    all four reads show all three:

    >>> round(rarefied_richness([2, 1, 1], depth=1), 12)
    1.0
    >>> round(rarefied_richness([2, 1, 1], depth=2), 4)     # 5/6 + 1/2 + 1/2
    1.8333
    >>> round(rarefied_richness([2, 1, 1], depth=4), 12)
    3.0

    ECM OTUs ``[2, 1]`` inside a community of 10 reads, rarefied to 5 reads:

    >>> round(rarefied_richness([2, 1], depth=5, total_reads=10), 4)
    1.2778
    """
    d = _check_depth(depth)
    tab = _Table(counts)
    total = tab.total(total_reads)
    too_deep = np.flatnonzero((total > 0) & (total < d))
    if too_deep.size:
        i = too_deep[0]
        raise ValueError(
            f"depth: {d} reads exceeds the reads of {too_deep.size} sample(s) "
            f"(first: sample {i} with N = {total[i]:g}); drop them with "
            f"drop_shallow_samples(table, min_reads={d}) or use extrapolated_richness"
        )
    out = _expected_richness(tab, total, np.full(tab.n_samples, float(d)))
    return tab.wrap(out, f"rarefied_richness_{d}")


def rarefy_counts(counts: Any, depth: int, seed: int, total_reads: Any = None) -> Any:
    """Draw one random subsample of ``depth`` reads per sample, without replacement.

    Parameters
    ----------
    counts : array_like, scipy.sparse matrix or pandas.DataFrame
        Read counts per OTU, 1-D or 2-D ``(samples, OTUs)``.
    depth : int
        Reads kept per sample.
    seed : int
        Seed of the random generator; the same seed gives the same subsample.
    total_reads : int or array_like, optional
        Community size per sample when the table lists only some OTUs (see
        :func:`rarefied_richness`). The unlisted reads are drawn from but
        dropped, so a row of the result may sum to less than ``depth``.

    Returns
    -------
    numpy.ndarray, scipy.sparse.csr_array or pandas.DataFrame
        Subsampled counts (int64) with the input's shape and kind; the input
        is not modified.

    Raises
    ------
    ValueError
        If any sample has fewer than ``depth`` reads.

    Examples
    --------
    >>> sub = rarefy_counts([5, 3, 0, 2], depth=4, seed=0)
    >>> int(sub.sum()), bool((sub <= [5, 3, 0, 2]).all())
    (4, True)
    """
    d = _check_depth(depth)
    tab = _Table(counts)
    total = tab.total(total_reads)
    short = np.flatnonzero(total < d)
    if short.size:
        i = short[0]
        raise ValueError(
            f"depth: {d} reads exceeds the reads of {short.size} sample(s) "
            f"(first: sample {i} with N = {total[i]:g}); drop them first with drop_shallow_samples"
        )
    rng = np.random.default_rng(seed)
    order = np.argsort(tab.rows, kind="stable")
    rows, cols, vals = tab.rows[order], tab.cols[order], tab.values[order].astype(np.int64)
    bounds = np.searchsorted(rows, np.arange(tab.n_samples + 1))
    new_vals = np.zeros_like(vals)
    iterator = range(tab.n_samples)
    if tab.n_samples > 1000:
        iterator = tqdm(iterator, desc="rarefying", unit="sample")
    for i in iterator:
        lo, hi = bounds[i], bounds[i + 1]
        other = int(total[i]) - int(vals[lo:hi].sum())
        colors = np.append(vals[lo:hi], other)
        draw = rng.multivariate_hypergeometric(colors, d, method="marginals")
        new_vals[lo:hi] = draw[:-1]
    if tab.kind == "sparse":
        out = sp.csr_array((new_vals, (rows, cols)), shape=tab.shape, dtype=np.int64)
        out.eliminate_zeros()
        return out
    dense = np.zeros(tab.shape, dtype=np.int64)
    dense[rows, cols] = new_vals
    if tab.one_d:
        return dense[0]
    if tab.kind == "dataframe":
        return pd.DataFrame(dense, index=tab.index, columns=tab.columns)
    return dense


def rarefaction_curve(counts: Any, depths: Any, total_reads: Any = None) -> Any:
    """Expected richness at each of several depths, for rarefaction curves.

    Parameters
    ----------
    counts : array_like, scipy.sparse matrix or pandas.DataFrame
        Read counts per OTU, 1-D or 2-D ``(samples, OTUs)``.
    depths : array_like of int
        Depths in reads (>= 1).
    total_reads : int or array_like, optional
        Community size per sample (see :func:`rarefied_richness`).

    Returns
    -------
    numpy.ndarray or pandas.DataFrame
        Shape ``(len(depths),)`` for 1-D input, else ``(samples, len(depths))``;
        a DataFrame with the depths as columns for DataFrame input. ``NaN``
        where a depth exceeds a sample's reads (the curve ends at the sample's
        own depth) and for samples with zero reads.

    Examples
    --------
    >>> rarefaction_curve([2, 1, 1], [1, 2, 4, 10])
    array([1.        , 1.83333333, 3.        ,        nan])
    """
    depth_arr = np.atleast_1d(np.asarray(depths))
    if depth_arr.ndim != 1 or depth_arr.size == 0:
        raise ValueError(f"depths: expected a non-empty 1-D list of depths, got {depths!r}")
    depth_list = [_check_depth(d, "depths") for d in depth_arr]
    tab = _Table(counts)
    total = tab.total(total_reads)
    out = np.empty((tab.n_samples, len(depth_list)))
    for j, d in enumerate(depth_list):
        dd = np.minimum(float(d), np.maximum(total, 1.0))
        col = _expected_richness(tab, total, dd)
        col[total < d] = np.nan
        out[:, j] = col
    if tab.one_d:
        return out[0]
    if tab.index is not None:
        return pd.DataFrame(out, index=tab.index, columns=pd.Index(depth_list, name="depth"))
    return out


#: The Chao1 forms :func:`chao1` computes.
CHAO1_FORMS = ("bias-corrected", "classic", "chao2014")


def _chao1_parts(tab: _Table, total: np.ndarray, form: str):
    if form not in CHAO1_FORMS:
        raise ValueError(f"chao1: form must be one of {list(CHAO1_FORMS)}, got {form!r}")
    s_obs = np.bincount(tab.rows, minlength=tab.n_samples).astype(float)
    f1 = np.bincount(tab.rows, weights=(tab.values == 1), minlength=tab.n_samples)
    f2 = np.bincount(tab.rows, weights=(tab.values == 2), minlength=tab.n_samples)
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(total > 0, (total - 1) / total, np.nan)
        if form == "classic":
            factor = np.where(total > 0, 1.0, np.nan)
        # f1 (f1 - 1) / (2 (f2 + 1)): the bias-corrected term, and the f2 = 0 case of the others
        f0 = factor * f1 * (f1 - 1) / (2 * (f2 + 1))
        if form != "bias-corrected":
            f0 = np.where(f2 > 0, factor * f1**2 / (2 * np.where(f2 > 0, f2, 1)), f0)
    f0 = np.where(total > 0, f0, np.nan)
    return s_obs, f1, f2, f0


def chao1(counts: Any, form: str = "bias-corrected", total_reads: Any = None) -> Any:
    """Chao1 lower-bound estimate of total richness from singletons and doubletons.

    With ``S_obs`` observed OTUs, ``f1`` singletons, ``f2`` doubletons and
    ``n`` reads, ``Chao1 = S_obs + f0`` where the undetected richness ``f0`` is

    * ``"bias-corrected"`` (default; Chao 2005, *Species estimation and
      applications*, Encyclopedia of Statistical Sciences; vegan's
      ``estimateR``): ``(n-1)/n * f1 (f1-1) / (2 (f2+1))``, finite for every
      sample;
    * ``"classic"`` (Chao 1984, Scand. J. Stat. 11:265): ``f1^2 / (2 f2)``.
      It is infinite when ``f2 = 0``; then ``f1 (f1-1) / 2`` is used;
    * ``"chao2014"`` (Chao et al. 2014, Ecol. Monogr. 84:45, eq. for
      abundance data; Chiu et al. 2014, Biometrics 70:671; iNEXT):
      the classic form times the small-sample factor ``(n-1)/n``,
      ``(n-1)/n * f1^2 / (2 f2)``, and ``(n-1)/n * f1 (f1-1) / 2`` when
      ``f2 = 0``.

    Parameters
    ----------
    counts : array_like, scipy.sparse matrix or pandas.DataFrame
        Read counts per OTU, 1-D or 2-D ``(samples, OTUs)``.
    form : {"bias-corrected", "classic", "chao2014"}
        Which estimator (see above).
    total_reads : int or array_like, optional
        Community size ``n`` per sample when the table lists only some OTUs.

    Returns
    -------
    float, numpy.ndarray or pandas.Series
        ``NaN`` for samples with zero reads.

    Examples
    --------
    ``[1, 1, 1, 2, 2, 5]``: S_obs = 6, f1 = 3, f2 = 2, n = 12.

    >>> counts = [1, 1, 1, 2, 2, 5]
    >>> chao1(counts, form="classic")                 # 6 + 9/4
    8.25
    >>> round(chao1(counts, form="chao2014"), 4)       # 6 + 11/12 * 9/4
    8.0625
    >>> round(chao1(counts), 4)                        # 6 + 11/12 * 3*2/(2*3)
    6.9167
    """
    tab = _Table(counts)
    total = tab.total(total_reads)
    s_obs, _, _, f0 = _chao1_parts(tab, total, form)
    return tab.wrap(s_obs + f0, "chao1")


def extrapolated_richness(counts: Any, depth: int, total_reads: Any = None) -> Any:
    """Richness standardised to ``depth`` reads by interpolation or extrapolation.

    Chao et al. 2014 (Ecol. Monogr. 84:45-67), abundance data, sample-size
    based. For a sample of ``n`` reads and a standard size ``m``:

    * ``m <= n``: hypergeometric interpolation, as :func:`rarefied_richness`;
    * ``m > n``: ``S_obs + f0 * [1 - (1 - f1 / (n f0 + f1))^(m - n)]``, with
      ``f0`` the bias-corrected Chao1 estimate of undetected OTUs
      (:func:`chao1`'s default form; Chao et al. 2014 use their
      ``"chao2014"`` form, which is larger when ``f1 > 0`` and ``f2 > 0``).

    The curve is continuous at ``m = n`` (both give ``S_obs``) and rises
    towards bias-corrected Chao1 as ``m`` grows. With ``f1 = 0`` or ``f0 = 0``
    nothing is left undetected and the extrapolation stays at ``S_obs``.
    Extrapolation is reliable to about twice the sample size (Chao et al. 2014).

    Parameters
    ----------
    counts : array_like, scipy.sparse matrix or pandas.DataFrame
        Read counts per OTU, 1-D or 2-D ``(samples, OTUs)``.
    depth : int
        Standard sample size ``m`` in reads.
    total_reads : int or array_like, optional
        Community size ``n`` per sample when the table lists only some OTUs.

    Returns
    -------
    float, numpy.ndarray or pandas.Series
        ``NaN`` for samples with zero reads.

    Examples
    --------
    >>> counts = [1, 1, 2, 3]                   # n = 7, S_obs = 4
    >>> extrapolated_richness(counts, 7)        # m = n: the observed richness
    4.0
    >>> round(extrapolated_richness(counts, 14), 4)   # 4 + 3/7 * (1 - 0.6**7)
    4.4166
    >>> round(extrapolated_richness(counts, 10**6), 4) == round(chao1(counts), 4)
    True
    """
    m = _check_depth(depth)
    tab = _Table(counts)
    n = tab.total(total_reads)
    s_obs, f1, _, f0 = _chao1_parts(tab, n, form="bias-corrected")
    interp = n >= m
    out = np.full(tab.n_samples, np.nan)
    if interp.any():
        dd = np.where(interp, float(m), np.maximum(n, 1.0))
        out_i = _expected_richness(tab, n, dd)
        out[interp] = out_i[interp]
    extra = (~interp) & (n > 0)
    if extra.any():
        ne, f1e, f0e, se = n[extra], f1[extra], f0[extra], s_obs[extra]
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(f0e > 0, f1e / (ne * f0e + f1e), 0.0)
            # (1 - q)^(m - n) via log1p for precision when q is small
            remain = np.exp((m - ne) * np.log1p(-q))
        out[extra] = se + np.where(f0e > 0, f0e * (1.0 - remain), 0.0)
    return tab.wrap(out, f"extrapolated_richness_{m}")


def drop_shallow_samples(table: Any, min_reads: int, total_reads: Any = None) -> tuple[Any, int]:
    """Keep only samples with at least ``min_reads`` reads.

    Rarefying to a depth ``d`` requires every sample to have ``d`` reads;
    this is the usual filter before it.

    Parameters
    ----------
    table : array_like, scipy.sparse matrix or pandas.DataFrame
        Read counts, 2-D ``(samples, OTUs)``.
    min_reads : int
        Minimum reads per sample.
    total_reads : array_like, optional
        Reads per sample when the table lists only some OTUs; the filter then
        applies to these totals.

    Returns
    -------
    kept : same kind as ``table``
        The kept rows (a new object; ``table`` is not modified). For a
        DataFrame, the index tells which samples were kept.
    n_dropped : int
        Number of samples dropped.

    Examples
    --------
    >>> kept, n_dropped = drop_shallow_samples([[5, 5], [1, 0], [3, 7]], min_reads=10)
    >>> kept.tolist(), n_dropped
    ([[5, 5], [3, 7]], 1)
    """
    if np.asarray(min_reads).ndim != 0 or min_reads < 0:
        raise ValueError(f"min_reads: expected a number >= 0, got {min_reads!r}")
    tab = _Table(table, name="table")
    if tab.one_d:
        raise ValueError("table: expected a 2-D (samples x OTUs) table, got 1-D counts")
    keep = tab.total(total_reads) >= min_reads
    n_dropped = int((~keep).sum())
    if isinstance(table, pd.DataFrame):
        return table.loc[keep].copy(), n_dropped
    if sp.issparse(table):
        return table.tocsr()[np.flatnonzero(keep)], n_dropped
    return np.array(table)[keep], n_dropped
