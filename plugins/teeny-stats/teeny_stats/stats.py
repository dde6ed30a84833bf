"""Paired statistics for comparing a model variant with its original, item by item.

Pass/fail items: McNemar's exact test on the discordant pairs, flip counts, Wilson intervals, the
unbiased pass@k estimator, standard errors clustered by problem when a problem has several samples.
Continuous items (log-likelihoods, latencies): paired bootstrap CIs and the Wilcoxon signed-rank test.
Across an experiment: Holm's step-down correction. For a "no significant difference", the minimum
detectable effect (MDE) at the chosen power says how small a difference the data could have seen.

numpy and scipy are imported inside the functions that need them.
"""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist
from typing import Hashable, Sequence

from teeny_core import TeenyError


def _z(q: float) -> float:
    """The standard normal quantile."""
    return NormalDist().inv_cdf(q)


# -- pass/fail ----------------------------------------------------------------------------------------------
def flip_counts(baseline: Sequence[bool], variant: Sequence[bool]) -> tuple[int, int]:
    """(right->wrong, wrong->right): items the baseline passed and the variant failed, and the reverse."""
    if len(baseline) != len(variant):
        raise TeenyError(f"flip_counts: {len(baseline)} baseline outcomes but {len(variant)} variant outcomes")
    right_to_wrong = sum(1 for b, v in zip(baseline, variant) if b and not v)
    wrong_to_right = sum(1 for b, v in zip(baseline, variant) if v and not b)
    return right_to_wrong, wrong_to_right


def mcnemar_exact(right_to_wrong: int, wrong_to_right: int) -> float:
    """Two-sided exact McNemar p-value: a binomial(b + c, 1/2) test on the discordant pairs.

    ``p = min(1, 2 * sum_{i <= min(b, c)} C(b + c, i) / 2^(b + c))``, computed in exact integers.
    """
    if right_to_wrong < 0 or wrong_to_right < 0:
        raise TeenyError(f"mcnemar_exact: flip counts must be >= 0, got {right_to_wrong}, {wrong_to_right}")
    n = right_to_wrong + wrong_to_right
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(right_to_wrong, wrong_to_right) + 1))
    return min(1.0, 2 * tail / 2**n)


def mcnemar_mde_normal(n: int, discordant: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Connor's (1987) normal-approximation MDE for McNemar's test, in closed form.

    Connor's sample size ``n = (z_a sqrt(psi) + z_b sqrt(psi - d^2))^2 / d^2`` (``psi`` the discordant
    proportion, ``z_a = z(1 - alpha/2)``, ``z_b = z(power)``) solved for ``d``:
    ``d = sqrt(psi) (z_a sqrt(n) + z_b sqrt(n + z_b^2 - z_a^2)) / (n + z_b^2)``. It ignores the exact test's
    discreteness (slightly optimistic) and gives 0 when ``psi`` is 0; :func:`mcnemar_mde` has neither flaw.
    """
    if n <= 0:
        return float("nan")
    za, zb = _z(1 - alpha / 2), _z(power)
    root = max(n + zb * zb - za * za, 0.0)
    return math.sqrt(discordant) * (za * math.sqrt(n) + zb * math.sqrt(root)) / (n + zb * zb)


def mcnemar_power(n: int, discordant: float, delta: float, alpha: float = 0.05) -> float:
    """Exact power of the two-sided exact McNemar test (reject when p < alpha) with ``n`` paired items.

    Model: the discordant count ``D ~ Binomial(n, psi)`` with ``psi = max(discordant, |delta|)`` (a difference
    ``delta = p10 - p01`` needs at least that much discordance), and right->wrong flips
    ``b | D ~ Binomial(D, (psi + delta) / (2 psi))``. Summed exactly over D and the rejection region.
    """
    import numpy as np
    from scipy import stats as sps

    psi = max(discordant, abs(delta))
    if n <= 0 or psi <= 0:
        return 0.0
    d = np.arange(n + 1)
    # largest k with 2 * P(Bin(D, 1/2) <= k) < alpha; the test rejects iff min(b, D - b) <= k
    k = sps.binom.ppf(alpha / 2, d, 0.5) - 1
    q = min(1.0, (psi + abs(delta)) / (2 * psi))
    reject = sps.binom.cdf(k, d, q) + sps.binom.sf(d - k - 1, d, q)
    return float(np.sum(sps.binom.pmf(d, n, psi) * np.where(k >= 0, reject, 0.0)))


def mcnemar_mde(n: int, discordant: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest difference in pass rate ``|p10 - p01|`` the exact McNemar test detects with ``power``.

    Bisection on :func:`mcnemar_power` (monotone in the difference) given ``n`` items and the observed
    discordant proportion; with no observed discordance this is the difference whose flips alone the test
    would catch. ``inf`` when no difference is detectable with so few items.
    """
    if n <= 0:
        return float("nan")
    if not 0.0 <= discordant <= 1.0:
        raise TeenyError(f"mcnemar_mde: discordant proportion must be in [0, 1], got {discordant}")
    if mcnemar_power(n, discordant, 1.0, alpha) < power:
        return float("inf")
    lo, hi = 0.0, 1.0
    while hi - lo > 1e-6:
        mid = (lo + hi) / 2
        if mcnemar_power(n, discordant, mid, alpha) >= power:
            hi = mid
        else:
            lo = mid
    return hi


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``n`` samples of which ``c`` passed (Chen et al. 2021).

    ``1 - C(n - c, k) / C(n, k)``, evaluated as a stable product.
    """
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise TeenyError(f"pass_at_k: need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion."""
    if n <= 0:
        return (float("nan"), float("nan"))
    if not 0 <= successes <= n:
        raise TeenyError(f"wilson_interval: successes={successes} is outside 0..n={n}")
    z = _z(1 - (1 - confidence) / 2)
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, center - half), min(1.0, center + half))


# -- clustered standard errors ---------------------------------------------------------------------------------
def clustered_se(values: Sequence[float], clusters: Sequence[Hashable]) -> float:
    """Cluster-robust (CR1) standard error of the mean of ``values`` grouped by ``clusters``.

    ``Var = G / (G - 1) * sum_g (sum_{i in g} (y_i - mean))^2 / N^2`` for N values in G clusters. With one
    value per cluster this is the usual ``s / sqrt(N)``; with equal cluster sizes it equals the standard
    error of the mean of the cluster means.
    """
    if len(values) != len(clusters):
        raise TeenyError(f"clustered_se: {len(values)} values but {len(clusters)} cluster labels")
    n = len(values)
    if n == 0:
        return float("nan")
    mean = sum(values) / n
    resid: dict[Hashable, float] = {}
    for v, g in zip(values, clusters):
        resid[g] = resid.get(g, 0.0) + (v - mean)
    groups = len(resid)
    if groups < 2:
        return float("nan")
    return math.sqrt(groups / (groups - 1) * sum(r * r for r in resid.values()) / (n * n))


@dataclasses.dataclass
class MeanTest:
    """A test of "mean difference = 0" with a (clustered) standard error and Student-t reference."""

    mean: float
    se: float
    df: int
    p_value: float
    mde: float


def clustered_mean_test(differences: Sequence[float], clusters: Sequence[Hashable], alpha: float = 0.05,
                        power: float = 0.8) -> MeanTest:
    """Two-sided t-test of the mean paired difference with a CR1 clustered SE and G - 1 degrees of freedom.

    The MDE is ``(t(1 - alpha/2, G-1) + t(power, G-1)) * SE``, the usual normal-theory power formula.
    """
    from scipy import stats

    n = len(differences)
    mean = sum(differences) / n if n else float("nan")
    se = clustered_se(differences, clusters)
    df = len(set(clusters)) - 1
    if df < 1 or math.isnan(se):
        return MeanTest(mean, se, max(df, 0), float("nan"), float("nan"))
    mde = (stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * se
    if se == 0:
        return MeanTest(mean, se, df, 1.0 if mean == 0 else 0.0, mde)
    p = float(2 * stats.t.sf(abs(mean / se), df))
    return MeanTest(mean, se, df, p, float(mde))


def paired_mean_mde(differences: Sequence[float], alpha: float = 0.05, power: float = 0.8) -> float:
    """MDE of a paired mean difference: ``(t(1 - alpha/2, n-1) + t(power, n-1)) * sd(d) / sqrt(n)``."""
    from scipy import stats

    n = len(differences)
    if n < 2:
        return float("nan")
    mean = sum(differences) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    return float((stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1)) * sd / math.sqrt(n))


# -- bootstrap ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class BootstrapResult:
    """Percentile CIs from one set of paired resamples: baseline, variant and their difference."""

    baseline: float
    variant: float
    delta: float
    baseline_ci: tuple[float, float]
    variant_ci: tuple[float, float]
    delta_ci: tuple[float, float]
    resamples: int


def bootstrap_replicates(baseline: Sequence[float], variant: Sequence[float], counts: Sequence[float] | None = None,
                         *, resamples: int = 10_000, seed: int = 0):
    """Replicates ``(baseline_stat, variant_stat)`` as two numpy arrays of length ``resamples``.

    Each replicate draws G units (problems) with replacement, the same units for both sides (paired). The
    statistic is ``sum(values) / sum(counts)`` over the drawn units: with ``counts`` None (one value per
    unit) the plain mean; with per-unit sums and counts the pooled mean of a cluster bootstrap.
    """
    import numpy as np

    b = np.asarray(baseline, dtype=np.float64)
    v = np.asarray(variant, dtype=np.float64)
    w = np.ones_like(b) if counts is None else np.asarray(counts, dtype=np.float64)
    if not (b.shape == v.shape == w.shape) or b.ndim != 1:
        raise TeenyError(f"bootstrap: baseline, variant and counts must be equal-length vectors, "
                         f"got shapes {b.shape}, {v.shape}, {w.shape}")
    units = b.shape[0]
    if units == 0:
        raise TeenyError("bootstrap: no paired units to resample")
    rng = np.random.default_rng(seed)
    out_b = np.empty(resamples)
    out_v = np.empty(resamples)
    block = max(1, 2_000_000 // units)  # bound memory: block x units indices at a time
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        idx = rng.integers(0, units, size=(stop - start, units))
        weight = w[idx].sum(axis=1)
        out_b[start:stop] = b[idx].sum(axis=1) / weight
        out_v[start:stop] = v[idx].sum(axis=1) / weight
    return out_b, out_v


def paired_bootstrap(baseline: Sequence[float], variant: Sequence[float], counts: Sequence[float] | None = None,
                     *, resamples: int = 10_000, seed: int = 0, confidence: float = 0.95) -> BootstrapResult:
    """Paired percentile bootstrap (seeded) of both statistics and of their difference (variant - baseline)."""
    import numpy as np

    rb, rv = bootstrap_replicates(baseline, variant, counts, resamples=resamples, seed=seed)
    lo, hi = (1 - confidence) / 2, 1 - (1 - confidence) / 2
    w = np.ones(len(baseline)) if counts is None else np.asarray(counts, dtype=np.float64)
    base = float(np.sum(baseline) / w.sum())
    var = float(np.sum(variant) / w.sum())

    def ci(x) -> tuple[float, float]:
        q = np.quantile(x, [lo, hi])
        return (float(q[0]), float(q[1]))

    return BootstrapResult(base, var, var - base, ci(rb), ci(rv), ci(rv - rb), resamples)


# -- continuous paired tests ----------------------------------------------------------------------------------
@dataclasses.dataclass
class WilcoxonResult:
    """Wilcoxon signed-rank test: statistic (smaller rank sum), p-value, non-zero pairs and the method used."""

    statistic: float
    p_value: float
    n: int
    method: str


def wilcoxon_signed_rank(baseline: Sequence[float], variant: Sequence[float]) -> WilcoxonResult:
    """Two-sided Wilcoxon signed-rank test of ``variant - baseline``; zero differences are dropped.

    Differences are rounded to 12 significant digits so float noise does not break ties. The p-value comes
    from scipy's ``method="auto"``: the exact null distribution for up to 50 pairs without ties, exhaustive
    permutations for up to 13 pairs with ties, otherwise the normal approximation with the tie correction.
    """
    from scipy import stats

    if len(baseline) != len(variant):
        raise TeenyError(f"wilcoxon: {len(baseline)} baseline values but {len(variant)} variant values")
    diffs = [float(f"{v - b:.12g}") for b, v in zip(baseline, variant)]
    nonzero = [d for d in diffs if d != 0]
    n = len(nonzero)
    if n == 0:
        return WilcoxonResult(0.0, 1.0, 0, "all differences zero")
    ties = len(set(abs(d) for d in nonzero)) < n
    if n <= 50 and not ties:
        method = "exact"
    elif n <= 13:
        method = "permutation (ties)"
    else:
        method = "normal approximation"
    res = stats.wilcoxon(nonzero, zero_method="wilcox", alternative="two-sided", method="auto")
    return WilcoxonResult(float(res.statistic), float(res.pvalue), n, method)


# -- multiplicity -----------------------------------------------------------------------------------------
def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values, in the input order; None/NaN entries are skipped and stay None.

    Sorted ascending, ``adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))`` for the m real p-values.
    """
    real = [(p, i) for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    real.sort()
    m = len(real)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(real):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out
