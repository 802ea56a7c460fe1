"""Tests for fungi_ssl.data.richness: rarefaction, extrapolation, Chao1, filters."""

from __future__ import annotations

from math import comb

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from fungi_ssl.data.richness import (
    chao1,
    drop_shallow_samples,
    extrapolated_richness,
    rarefaction_curve,
    rarefied_richness,
    rarefy_counts,
    sequencing_depth,
)


def exact_rarefaction(counts, depth, total=None):
    """Reference: the rarefaction formula with exact integer binomials."""
    n_total = sum(counts) if total is None else total
    return sum(1 - comb(n_total - n, depth) / comb(n_total, depth) for n in counts if n > 0)


# --- rarefied_richness: hand cases ------------------------------------------


@pytest.mark.parametrize(
    "depth, expected",
    [
        (1, 1.0),  # one read always shows one OTU
        (2, 5 / 6 + 1 / 2 + 1 / 2),  # C(4,2)=6; OTU(2): 1-1/6; OTU(1): 1-3/6 each
        (3, 1.0 + 3 / 4 + 3 / 4),  # C(4,3)=4; OTU(2): 1-0; OTU(1): 1-1/4 each
        (4, 3.0),  # depth = N: observed richness
    ],
)
def test_rarefied_richness_hand_cases(depth, expected):
    assert rarefied_richness([2, 1, 1], depth) == pytest.approx(expected, abs=1e-12)


def test_rarefied_richness_matches_exact_binomials_on_random_tables():
    rng = np.random.default_rng(1)
    for _ in range(20):
        counts = rng.integers(0, 30, size=12)
        depth = int(rng.integers(1, counts.sum() + 1))
        assert rarefied_richness(counts, depth) == pytest.approx(
            exact_rarefaction(counts.tolist(), depth), rel=1e-10
        )


def test_rarefied_richness_is_stable_for_millions_of_reads():
    # Exact big-integer reference; a naive comb() in floats would overflow.
    counts = [2_000_000, 1_500, 3, 1]
    got = rarefied_richness(counts, 10_000)
    assert got == pytest.approx(exact_rarefaction(counts, 10_000), rel=1e-9)
    assert 1.0 < got < 4.0


def test_depth_equal_to_reads_gives_observed_richness():
    table = np.array([[5, 0, 1, 9, 2], [0, 0, 7, 1, 0]])
    got = rarefied_richness(table, 3)  # just to exercise 2-D
    assert got.shape == (2,)
    for row in table:
        assert rarefied_richness(row, int(row.sum())) == pytest.approx(
            np.count_nonzero(row), abs=1e-9
        )


def test_depth_one_gives_one_for_every_sample():
    table = np.random.default_rng(0).integers(0, 50, size=(6, 40))
    np.testing.assert_allclose(rarefied_richness(table, 1), 1.0, atol=1e-12)


def test_rarefaction_is_monotone_in_depth():
    counts = np.random.default_rng(2).geometric(0.05, size=60)
    depths = np.arange(1, counts.sum() + 1, 7)
    curve = rarefaction_curve(counts, depths)
    assert np.all(np.diff(curve) >= -1e-9)
    assert curve[0] == pytest.approx(1.0)
    assert curve[-1] <= len(counts) + 1e-9


def test_mean_of_subsamples_matches_formula():
    # 2,000 draws; per-draw sd of richness is ~2, so the standard error of the
    # mean is ~0.05. Tolerance 0.2 is 4 standard errors.
    counts = np.random.default_rng(3).geometric(0.02, size=80)
    depth = 200
    draws = np.stack([rarefy_counts(counts, depth, seed=s) for s in range(2000)])
    assert np.all(draws.sum(axis=1) == depth)
    assert np.all(draws <= counts)
    mean_richness = np.count_nonzero(draws, axis=1).mean()
    assert mean_richness == pytest.approx(rarefied_richness(counts, depth), abs=0.2)


def test_rarefy_counts_is_reproducible_and_keeps_input():
    table = np.array([[10, 5, 0, 3], [2, 2, 2, 2]])
    before = table.copy()
    a = rarefy_counts(table, 6, seed=7)
    b = rarefy_counts(table, 6, seed=7)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(table, before)
    assert a.shape == table.shape
    np.testing.assert_array_equal(a.sum(axis=1), [6, 6])


def test_rarefy_counts_sparse_and_dataframe_keep_their_kind():
    dense = np.array([[10, 0, 3, 0], [1, 4, 0, 5]])
    out_sp = rarefy_counts(sp.csr_matrix(dense), 5, seed=0)
    assert sp.issparse(out_sp)
    np.testing.assert_array_equal(out_sp.toarray().sum(axis=1), [5, 5])
    df = pd.DataFrame(dense, index=["s1", "s2"], columns=list("abcd"))
    out_df = rarefy_counts(df, 5, seed=0)
    assert list(out_df.index) == ["s1", "s2"] and list(out_df.columns) == list("abcd")
    np.testing.assert_array_equal(out_df.to_numpy(), out_sp.toarray())


def test_rarefy_counts_rejects_shallow_samples():
    with pytest.raises(ValueError, match="depth"):
        rarefy_counts([[3, 1], [1, 0]], 3, seed=0)


# --- input kinds and errors -------------------------------------------------


def test_dense_sparse_dataframe_agree():
    table = np.random.default_rng(4).poisson(1.5, size=(5, 30))
    table[:, 0] += 10  # every sample gets enough reads
    dense = rarefied_richness(table, 10)
    np.testing.assert_allclose(rarefied_richness(sp.csr_array(table), 10), dense)
    series = rarefied_richness(pd.DataFrame(table, index=list("abcde")), 10)
    assert list(series.index) == list("abcde")
    np.testing.assert_allclose(series.to_numpy(), dense)


def test_zero_read_sample_gives_nan():
    got = rarefied_richness([[0, 0, 0], [3, 1, 0]], 2)
    assert np.isnan(got[0]) and got[1] == pytest.approx(exact_rarefaction([3, 1], 2))


def test_depth_above_reads_is_an_error_naming_depth():
    with pytest.raises(ValueError, match="depth: 5 reads exceeds"):
        rarefied_richness([2, 1, 1], 5)


@pytest.mark.parametrize(
    "counts, message",
    [
        ([2, -1, 1], ">= 0"),
        ([2.5, 1, 1], "whole numbers"),
        ([np.nan, 1, 1], "finite"),
        (np.ones((2, 2, 2)), "1-D"),
    ],
)
def test_bad_counts_are_rejected(counts, message):
    with pytest.raises(ValueError, match=message):
        rarefied_richness(counts, 1)


@pytest.mark.parametrize("depth", [0, -3, 2.5, np.nan])
def test_bad_depth_is_rejected(depth):
    with pytest.raises(ValueError, match="depth"):
        rarefied_richness([5, 5], depth)


def test_sequencing_depth():
    np.testing.assert_array_equal(sequencing_depth(np.array([[1, 2], [0, 0]])), [3.0, 0.0])


# --- total_reads: ECM OTUs inside the whole fungal community -----------------


def test_total_reads_agrees_with_explicit_other_otu():
    ecm = np.array([[5, 3, 1, 1, 0], [12, 0, 2, 1, 1]])
    total = np.array([500, 90])
    other = total - ecm.sum(axis=1)
    explicit = np.column_stack([ecm, other])  # the big "other" OTU
    depth = 60
    full = rarefied_richness(explicit, depth)
    # P(the "other" OTU is seen) at this depth, to be removed from the total
    p_other = np.array(
        [1 - comb(int(t - o), depth) / comb(int(t), depth) for t, o in zip(total, other)]
    )
    got = rarefied_richness(ecm, depth, total_reads=total)
    np.testing.assert_allclose(got, full - p_other, rtol=1e-10)
    # And against the exact reference restricted to the ECM OTUs
    for row, t, g in zip(ecm, total, got):
        assert g == pytest.approx(exact_rarefaction(row.tolist(), depth, int(t)), rel=1e-10)


def test_total_reads_subsample_mean_matches_formula():
    # 3,000 draws; sd of ECM richness ~1.2 so the s.e. is ~0.02; tolerance 0.1.
    ecm = np.array([40, 12, 5, 3, 2, 1, 1, 1])
    draws = [rarefy_counts(ecm, 300, seed=s, total_reads=2_000) for s in range(3000)]
    assert all(d.sum() <= 300 for d in draws)
    mean = np.mean([np.count_nonzero(d) for d in draws])
    assert mean == pytest.approx(rarefied_richness(ecm, 300, total_reads=2_000), abs=0.1)


def test_total_reads_below_listed_reads_is_an_error():
    with pytest.raises(ValueError, match="total_reads"):
        rarefied_richness([5, 5], 2, total_reads=9)
    with pytest.raises(ValueError, match="one value per sample"):
        rarefied_richness([[5, 5], [1, 1]], 2, total_reads=[20, 20, 20])


# --- Chao1 and extrapolation -------------------------------------------------


def test_chao1_hand_case():
    # worked by hand: S_obs = 6, f1 = 3, f2 = 2, n = 1+1+1+2+2+5 = 12
    counts = [1, 1, 1, 2, 2, 5]
    assert chao1(counts, form="classic") == 8.25                      # Chao 1984: 6 + 3**2 / (2*2)
    assert chao1(counts, form="chao2014") == pytest.approx(8.0625)    # 6 + 11/12 * 9/4
    assert chao1(counts) == pytest.approx(6 + 11 / 12)                # 6 + 11/12 * 3*2 / (2*3)
    # the same sample listed with ECM OTUs only: n comes from total_reads and
    # changes only the (n-1)/n forms
    assert chao1([1, 1, 1, 2, 2], form="classic", total_reads=12) == 7.25
    assert chao1([1, 1, 1, 2, 2], form="chao2014", total_reads=12) == pytest.approx(5 + 33 / 16)
    # S_obs = 5, f1 = 3, f2 = 1, n = 9
    assert chao1([1, 1, 1, 2, 4]) == pytest.approx(5 + (8 / 9) * 3 * 2 / (2 * 2))
    assert chao1([1, 1, 1, 2, 4], form="classic") == pytest.approx(5 + 9 / 2)
    # f2 = 0: the classic form would be infinite; f1 (f1-1) / 2 keeps it finite
    assert chao1([1, 1, 5], form="classic") == pytest.approx(3 + 2 / 2)
    assert chao1([1, 1, 5], form="chao2014") == pytest.approx(3 + (6 / 7) * 2 / 2)
    # no singletons: nothing is missing, in every form
    for form in ("bias-corrected", "classic", "chao2014"):
        assert chao1([2, 3, 4], form=form) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="form must be one of"):
        chao1(counts, form="Chao1984")


def test_chao1_forms_order_and_zero_reads():
    table = np.random.default_rng(6).poisson(0.6, size=(40, 60))
    table[0] = 0
    bc, classic, c14 = (chao1(table, form=f) for f in ("bias-corrected", "classic", "chao2014"))
    assert np.isnan(bc[0]) and np.isnan(classic[0]) and np.isnan(c14[0])
    ok = slice(1, None)
    # bias-corrected <= (n-1)/n classic <= classic
    assert np.all(bc[ok] <= c14[ok] + 1e-12) and np.all(c14[ok] <= classic[ok] + 1e-12)


def test_chao1_at_least_observed_and_vectorised():
    table = np.random.default_rng(5).poisson(0.8, size=(10, 50))
    est = chao1(table)
    assert np.all(est >= np.count_nonzero(table, axis=1) - 1e-12)


def test_extrapolation_continuous_at_sample_size_and_bounded_by_chao1():
    counts = np.random.default_rng(6).geometric(0.3, size=40)
    n = int(counts.sum())
    s_obs = np.count_nonzero(counts)
    assert extrapolated_richness(counts, n) == pytest.approx(s_obs, abs=1e-9)
    # the first step beyond n stays within one singleton probability of S_obs
    step = extrapolated_richness(counts, n + 1) - s_obs
    f1 = int(np.sum(counts == 1))
    assert 0 <= step <= f1 / n + 1e-12
    # below n it is exactly rarefaction
    assert extrapolated_richness(counts, n // 2) == pytest.approx(rarefied_richness(counts, n // 2))
    # monotone and bounded by bias-corrected Chao1, reached in the limit
    ms = [n, 2 * n, 5 * n, 50 * n, 10**7]
    values = [extrapolated_richness(counts, m) for m in ms]
    assert np.all(np.diff(values) >= -1e-12)
    assert max(values) <= chao1(counts) + 1e-9
    assert values[-1] == pytest.approx(chao1(counts), rel=1e-6)


def test_extrapolation_hand_case():
    # n = 7, S_obs = 4, f1 = 2, f2 = 1, f0 = 6/7 * 2/4 = 3/7; q = 2 / (7 * 3/7 + 2) = 0.4
    got = extrapolated_richness([1, 1, 2, 3], 10)
    assert got == pytest.approx(4 + (3 / 7) * (1 - 0.6**3))


def test_extrapolation_mixes_interpolation_and_extrapolation_per_sample():
    table = np.array([[30, 10, 1, 1, 2], [2, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
    got = extrapolated_richness(table, 20)
    assert got[0] == pytest.approx(rarefied_richness(table[0], 20))
    assert got[1] == pytest.approx(extrapolated_richness(table[1], 20))
    assert got[1] > 3  # beyond S_obs: there are singletons
    assert np.isnan(got[2])


def test_rarefaction_curve_marks_depths_beyond_each_sample_as_nan():
    table = pd.DataFrame([[5, 5, 0], [1, 1, 1]], index=["deep", "shallow"])
    curve = rarefaction_curve(table, [1, 3, 10])
    assert list(curve.columns) == [1, 3, 10]
    assert np.isnan(curve.loc["shallow", 10])
    assert curve.loc["deep", 10] == pytest.approx(2.0)
    assert curve.loc["shallow", 3] == pytest.approx(3.0)


# --- drop_shallow_samples ----------------------------------------------------


def test_drop_shallow_samples_all_kinds():
    table = np.array([[5, 5], [1, 0], [3, 7], [0, 0]])
    kept, n_dropped = drop_shallow_samples(table, 10)
    np.testing.assert_array_equal(kept, [[5, 5], [3, 7]])
    assert n_dropped == 2
    kept_sp, n_sp = drop_shallow_samples(sp.csr_matrix(table), 10)
    assert sp.issparse(kept_sp) and kept_sp.shape == (2, 2) and n_sp == 2
    df = pd.DataFrame(table, index=["a", "b", "c", "d"])
    kept_df, n_df = drop_shallow_samples(df, 10)
    assert list(kept_df.index) == ["a", "c"] and n_df == 2
    assert len(df) == 4  # input untouched
    # against community totals instead of the listed (ECM) reads
    kept_t, n_t = drop_shallow_samples(table, 10, total_reads=[10, 50, 10, 5])
    assert n_t == 1 and kept_t.shape == (3, 2)


def test_drop_shallow_samples_rejects_1d_and_negative_threshold():
    with pytest.raises(ValueError, match="2-D"):
        drop_shallow_samples([1, 2, 3], 2)
    with pytest.raises(ValueError, match="min_reads"):
        drop_shallow_samples([[1, 2]], -1)
