"""Every statistic against a hand computation that does not use scipy or statsmodels."""

import functools
import itertools
import math
from fractions import Fraction

import pytest

from teeny_core import TeenyError
from teeny_stats import stats


def brute_mcnemar(b: int, c: int) -> Fraction:
    """Two-sided exact p by enumerating all 2^n sign sequences of the discordant pairs (fair coin under H0)."""
    n = b + c
    observed = abs(b - Fraction(n, 2))
    extreme = sum(1 for seq in itertools.product((0, 1), repeat=n) if abs(sum(seq) - Fraction(n, 2)) >= observed)
    return Fraction(extreme, 2**n)


@pytest.mark.parametrize("b,c", [(8, 2), (2, 8), (0, 6), (0, 5), (5, 5), (1, 0), (7, 3), (0, 12), (9, 1)])
def test_mcnemar_exact_matches_enumeration(b, c):
    assert stats.mcnemar_exact(b, c) == pytest.approx(float(brute_mcnemar(b, c)), abs=1e-15)


def test_mcnemar_known_values():
    assert stats.mcnemar_exact(8, 2) == 112 / 1024  # 2 * (1 + 10 + 45) / 2^10
    assert stats.mcnemar_exact(0, 0) == 1.0
    assert stats.mcnemar_exact(0, 6) == 2 / 64
    assert stats.mcnemar_exact(0, 5) == 0.0625 and stats.mcnemar_exact(0, 6) == 0.03125
    with pytest.raises(TeenyError, match="flip counts"):
        stats.mcnemar_exact(-1, 2)


def test_flip_counts():
    base = [True, True, False, False, True, False]
    var = [True, False, True, False, False, False]
    assert stats.flip_counts(base, var) == (2, 1)
    with pytest.raises(TeenyError, match="3 baseline outcomes but 2"):
        stats.flip_counts([True] * 3, [True] * 2)


def test_pass_at_k_matches_subset_enumeration():
    for n in range(1, 9):
        for c in range(n + 1):
            outcomes = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(range(n), k))
                expected = Fraction(sum(1 for s in subsets if any(outcomes[i] for i in s)), len(subsets))
                assert stats.pass_at_k(n, c, k) == pytest.approx(float(expected), abs=1e-12), (n, c, k)
    with pytest.raises(TeenyError, match="k=5"):
        stats.pass_at_k(3, 1, 5)


def test_wilson_closed_form_by_hand():
    z = 1.959963984540054
    for successes, n in [(8, 10), (0, 10), (10, 10), (37, 164), (1, 3)]:
        p = successes / n
        center = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        lo, hi = stats.wilson_interval(successes, n)
        assert lo == pytest.approx(max(0.0, center - half), abs=1e-12)
        assert hi == pytest.approx(min(1.0, center + half), abs=1e-12)
    # published values: 8/10 -> (0.4902, 0.9433); 0/10 upper = z^2 / (n + z^2) = 0.2775
    assert stats.wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert stats.wilson_interval(0, 10)[1] == pytest.approx(3.8415 / 13.8415, abs=1e-4)
    lo90, hi90 = stats.wilson_interval(8, 10, confidence=0.90)
    assert 0.4902 < lo90 and hi90 < 0.9433


def test_holm_known_list():
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # monotone step-down: the later, larger raw p cannot get a smaller adjusted p; capped at 1
    assert stats.holm([0.5, 0.2, None, 0.3]) == [pytest.approx(0.6), pytest.approx(0.6), None, pytest.approx(0.6)]
    assert stats.holm([0.9, 0.8]) == [1.0, 1.0]
    assert stats.holm([]) == []


def test_clustered_se_by_hand():
    # mean 0.5; residual sums per cluster a: 0, b: +1, c: -1 -> Var = 3/2 * 2 / 36 = 1/12
    se = stats.clustered_se([1, 0, 1, 1, 0, 0], ["a", "a", "b", "b", "c", "c"])
    assert se == pytest.approx(math.sqrt(1 / 12), abs=1e-12)
    # equal cluster sizes: equals the SE of the cluster means (0.5, 1, 0) -> s^2 = 0.25, / 3
    assert se == pytest.approx(math.sqrt(0.25 / 3), abs=1e-12)
    # one value per cluster: the ordinary s / sqrt(n)
    values = [0.3, 1.2, -0.4, 2.2, 0.9]
    mean = sum(values) / 5
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / 4)
    assert stats.clustered_se(values, list(range(5))) == pytest.approx(s / math.sqrt(5), abs=1e-12)


def _t_cdf_df3(t: float) -> float:
    """Closed-form Student t CDF with 3 degrees of freedom."""
    return 0.5 + (t / (math.sqrt(3) * (1 + t * t / 3)) + math.atan(t / math.sqrt(3))) / math.pi


def test_clustered_mean_test_by_hand():
    diffs = [0, -1, 0, -1, 1, 0, -1, -1]
    clusters = [1, 1, 2, 2, 3, 3, 4, 4]
    # mean -0.375; cluster residual sums -0.25, -0.25, 1.75, -1.25 -> Var = 4/3 * 4.75 / 64
    se = math.sqrt(4 / 3 * 4.75 / 64)
    res = stats.clustered_mean_test(diffs, clusters)
    assert res.mean == -0.375 and res.df == 3
    assert res.se == pytest.approx(se, abs=1e-12)
    assert res.p_value == pytest.approx(2 * (1 - _t_cdf_df3(0.375 / se)), abs=1e-9)
    # MDE = (t(0.975, 3) + t(0.8, 3)) * SE with the tabulated quantiles 3.18245 and 0.97847
    assert res.mde == pytest.approx((3.182446 + 0.978472) * se, rel=1e-5)


def test_paired_mean_mde_by_hand():
    diffs = [1.0, 2.0, 3.0, 4.0]  # sd = sqrt(5/3)
    assert stats.paired_mean_mde(diffs) == pytest.approx((3.182446 + 0.978472) * math.sqrt(5 / 3) / 2, rel=1e-5)


def test_connor_closed_form_solves_the_sample_size_formula():
    za, zb = 1.959963984540054, 0.8416212335729143
    for n, psi in [(164, 0.1), (500, 0.3), (80, 0.5)]:
        d = stats.mcnemar_mde_normal(n, psi)
        assert (za * math.sqrt(psi) + zb * math.sqrt(psi - d * d)) ** 2 / (d * d) == pytest.approx(n, rel=1e-9)


@functools.lru_cache(maxsize=None)
def rejected_splits(disc, alpha=0.05):
    """The right->wrong counts b for which the exact test rejects a table with ``disc`` discordant pairs."""
    return tuple(b for b in range(disc + 1) if stats.mcnemar_exact(b, disc - b) < alpha)


def exact_power_by_hand(n, psi, delta, alpha=0.05):
    """Power of the exact test: sum over the discordant count and its split, with exact rejection per table."""
    psi = max(psi, delta)
    q = (psi + delta) / (2 * psi)
    power = 0.0
    for disc in range(n + 1):
        p_disc = math.comb(n, disc) * psi**disc * (1 - psi) ** (n - disc)
        power += p_disc * sum(math.comb(disc, b) * q**b * (1 - q) ** (disc - b) for b in rejected_splits(disc, alpha))
    return power


@pytest.mark.parametrize("n,psi,delta", [(60, 0.2, 0.1), (100, 0.1, 0.05), (40, 0.0, 0.15), (30, 0.3, 0.3)])
def test_mcnemar_power_matches_the_exact_sum(n, psi, delta):
    assert stats.mcnemar_power(n, psi, delta) == pytest.approx(exact_power_by_hand(n, psi, delta), abs=1e-9)


def test_mcnemar_mde_has_the_promised_power():
    for n, psi in [(164, 0.12), (120, 0.0), (300, 0.2)]:
        d = stats.mcnemar_mde(n, psi)
        assert exact_power_by_hand(n, psi, d) >= 0.8 > exact_power_by_hand(n, psi, d - 1e-4)
    # close to Connor's approximation when discordance is plentiful, never 0 when none was observed
    assert stats.mcnemar_mde(300, 0.2) == pytest.approx(stats.mcnemar_mde_normal(300, 0.2), rel=0.05)
    assert stats.mcnemar_mde_normal(164, 0.0) == 0.0 < 6 / 164 < stats.mcnemar_mde(164, 0.0)
    # with 5 items even 5 flips the same way give p = 0.0625: nothing is detectable
    assert stats.mcnemar_mde(5, 0.5) == math.inf


def test_wilcoxon_exact_by_enumeration():
    base = [1, 2, 3, 4, 5, 6]
    var = [2.5, 1.5, 5, 7, 4, 8.5]  # differences 1.5, -0.5, 2, 3, -1, 2.5: no ties
    diffs = [v - b for b, v in zip(base, var)]
    ranks = {abs(d): r for r, d in enumerate(sorted(diffs, key=abs), 1)}
    w_plus = sum(ranks[abs(d)] for d in diffs if d > 0)
    assert w_plus == 18
    sums = [sum(r for r, s in zip(range(1, 7), signs) if s) for signs in itertools.product((0, 1), repeat=6)]
    mean = 21 / 2
    p = Fraction(sum(1 for s in sums if abs(s - mean) >= abs(w_plus - mean)), 64)
    assert p == Fraction(10, 64)
    res = stats.wilcoxon_signed_rank(base, var)
    assert res.p_value == pytest.approx(float(p), abs=1e-12)
    assert res.statistic == 3 and res.n == 6 and res.method == "exact"


def test_wilcoxon_ties_and_zeros_by_enumeration():
    base = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    var = [1.0, -1.0, 2.0, 2.0, 3.0, 0.0]  # one zero (dropped), ties at |1| and |2| -> midranks
    midranks = [1.5, 1.5, 3.5, 3.5, 5.0]
    signs_obs = [1, 0, 1, 1, 1]
    w_obs = sum(r for r, s in zip(midranks, signs_obs) if s)
    mean = sum(midranks) / 2
    sums = [sum(r for r, s in zip(midranks, signs) if s) for signs in itertools.product((0, 1), repeat=5)]
    p = sum(1 for s in sums if abs(s - mean) >= abs(w_obs - mean) - 1e-12) / 32
    res = stats.wilcoxon_signed_rank(base, var)
    assert res.n == 5 and res.method == "permutation (ties)"
    assert res.p_value == pytest.approx(p, abs=1e-12)
    assert stats.wilcoxon_signed_rank([1, 2], [1, 2]).p_value == 1.0


def _exact_bootstrap_cdf(base, var, counts=None):
    """All G^G equally likely resamples of G units: P(delta <= x) for each attained delta."""
    g = len(base)
    counts = counts or [1] * g
    outcomes = []
    for idx in itertools.product(range(g), repeat=g):
        w = sum(counts[i] for i in idx)
        outcomes.append(round(sum(var[i] for i in idx) / w - sum(base[i] for i in idx) / w, 9))
    return {x: sum(1 for o in outcomes if o <= x) / len(outcomes) for x in set(outcomes)}


@pytest.mark.parametrize("counts", [None, [2, 1, 3]])
def test_bootstrap_matches_exact_resampling_distribution(counts):
    import numpy as np

    base, var = [1.0, 0.0, 2.0], [0.0, 0.0, 3.0]
    exact = _exact_bootstrap_cdf(base, var, counts)
    rb, rv = stats.bootstrap_replicates(base, var, counts, resamples=40_000, seed=7)
    delta = np.round(rv - rb, 9)
    for x, cdf in exact.items():
        assert float(np.mean(delta <= x)) == pytest.approx(cdf, abs=0.01), x


def test_paired_bootstrap_ci_is_seeded_and_paired():
    base = [1, 0, 1, 1, 0, 1, 1, 0, 1, 1] * 3
    var = [1, 0, 0, 1, 0, 1, 0, 0, 1, 1] * 3
    a = stats.paired_bootstrap(base, var, resamples=2000, seed=3)
    b = stats.paired_bootstrap(base, var, resamples=2000, seed=3)
    assert a == b
    assert a.delta == pytest.approx(-0.2)
    assert a.delta_ci[0] < -0.2 < a.delta_ci[1] <= 0.0  # never positive: the variant never wins an item
    same = stats.paired_bootstrap(base, base, resamples=500, seed=0)
    assert same.delta_ci == (0.0, 0.0)
    with pytest.raises(TeenyError, match="equal-length"):
        stats.paired_bootstrap([1, 2], [1], resamples=100)
