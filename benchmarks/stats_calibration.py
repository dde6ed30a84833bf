"""Are teeny-stats' tests calibrated, and how long does the analysis take? Prints a table.

By simulation with known truth: the false-positive rate of McNemar's exact test under no difference,
the power of the exact test at the reported MDE (should be near 80%), the coverage of the paired bootstrap
CI of the pass@1 difference, and the false-positive rate of the clustered vs the naive (i.i.d.) test when
a problem has several correlated samples. Then the analyzer's wall time on HumanEval- and LiveCodeBench-sized
inputs. Usage: ``python benchmarks/stats_calibration.py [--sims 2000]``; the last output is kept in
``benchmarks/results/stats_calibration.txt``.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from teeny_core.types import VariantResult
from teeny_stats import stats
from teeny_stats.analyzer import SignificanceAnalyzer, SignificanceOptions


def paired_outcomes(rng, n, base_rate, p10, p01):
    """Baseline outcomes and a variant that flips right->wrong with prob p10 and wrong->right with p01 (marginal)."""
    base = rng.random(n) < base_rate
    u = rng.random(n)
    var = base.copy()
    var[base & (u < p10 / base_rate)] = False
    var[~base & (u < p01 / (1 - base_rate))] = True
    return base, var


def mcnemar_rejection_rate(rng, sims, n, psi, delta, alpha=0.05):
    p10, p01 = (psi + delta) / 2, (psi - delta) / 2
    hits = 0
    for _ in range(sims):
        b, v = paired_outcomes(rng, n, 0.6, p10, p01)
        rw, wr = int(np.sum(b & ~v)), int(np.sum(~b & v))
        hits += stats.mcnemar_exact(rw, wr) < alpha
    return hits / sims


def bootstrap_coverage(rng, sims, n, psi, delta, resamples):
    p10, p01 = (psi + delta) / 2, (psi - delta) / 2
    covered = 0
    for s in range(sims):
        b, v = paired_outcomes(rng, n, 0.6, p10, p01)
        res = stats.paired_bootstrap(b.astype(float), v.astype(float), resamples=resamples, seed=s)
        covered += res.delta_ci[0] <= -delta <= res.delta_ci[1]
    return covered / sims


def clustered_false_positives(rng, sims, problems, samples, alpha=0.05):
    """No true difference, but each problem has its own variant effect: samples of a problem are correlated."""
    naive = clustered = 0
    clusters = np.repeat(np.arange(problems), samples)
    for _ in range(sims):
        rate = rng.beta(1, 1, problems)
        shift = rng.normal(0, 0.25, problems)  # per-problem effect, mean zero
        b = rng.random((problems, samples)) < rate[:, None]
        v = rng.random((problems, samples)) < np.clip(rate + shift, 0, 1)[:, None]
        d = (v.astype(float) - b.astype(float)).ravel()
        test = stats.clustered_mean_test(d.tolist(), clusters.tolist(), alpha)
        clustered += test.p_value < alpha
        se_iid = d.std(ddof=1) / math.sqrt(d.size)
        z = abs(d.mean()) / se_iid if se_iid > 0 else 0.0
        naive += math.erfc(z / math.sqrt(2)) < alpha
    return naive / sims, clustered / sims


def analyzer_seconds(problems, samples, resamples=10_000):
    rng = np.random.default_rng(0)
    def records(outcomes):
        return [{"key": f"p{i // samples}#{i % samples}", "task_id": f"p{i // samples}", "sample": i % samples,
                 "passed": bool(x), "seconds": float(1 + rng.random())} for i, x in enumerate(outcomes)]
    b, v = paired_outcomes(rng, problems * samples, 0.6, 0.06, 0.04)
    base = VariantResult("original", "none", {}, {"bench": records(b)}, {}, {})
    variant = VariantResult("q4", "rtn", {}, {"bench": records(v)}, {}, {})
    options = SignificanceOptions.from_mapping({"resamples": resamples})
    t0 = time.perf_counter()
    SignificanceAnalyzer().analyze(base, [variant], options)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=2000)
    args = parser.parse_args()
    rng = np.random.default_rng(2026)
    n, psi = 164, 0.12
    mde = stats.mcnemar_mde(n, psi)
    rows = [
        ("McNemar exact: false-positive rate, no difference (n=164, 12% discordant)", "<= 0.050",
         f"{mcnemar_rejection_rate(rng, args.sims, n, psi, 0.0):.3f}"),
        (f"McNemar exact: power at the reported MDE {100 * mde:.1f} pp (n=164, 12% discordant)", "~0.80",
         f"{mcnemar_rejection_rate(rng, args.sims, n, psi, mde):.3f}"),
        ("paired bootstrap 95% CI of the pass@1 difference: coverage (n=164, true delta -3 pp)", "~0.95",
         f"{bootstrap_coverage(rng, max(args.sims // 4, 100), n, psi, 0.03, 2000):.3f}"),
    ]
    naive, clustered = clustered_false_positives(rng, max(args.sims // 2, 200), 40, 10)
    rows += [("40 problems x 10 correlated samples, no difference: naive i.i.d. z-test false positives", "0.05 wanted",
              f"{naive:.3f}"),
             ("  same data, t-test with SE clustered by problem", "~0.05", f"{clustered:.3f}")]
    for problems, samples, label in ((164, 1, "HumanEval, 1 sample"), (164, 10, "HumanEval, 10 samples"),
                                     (880, 5, "LiveCodeBench-size, 5 samples")):
        rows.append((f"analyzer wall time, {label} (pass/fail + seconds, 10k resamples)", "",
                     f"{analyzer_seconds(problems, samples):.2f} s"))
    width = max(len(r[0]) for r in rows)
    print(f"{'check':<{width}}  {'expected':>11}  {'measured':>9}")
    for name, expected, measured in rows:
        print(f"{name:<{width}}  {expected:>11}  {measured:>9}")
    print(f"({args.sims} simulations per McNemar rate: standard error about "
          f"{math.sqrt(0.8 * 0.2 / args.sims):.3f} near 0.80 and {math.sqrt(0.05 * 0.95 / args.sims):.3f} near 0.05; "
          f"a quarter as many for coverage and half for the clustered rates)")


if __name__ == "__main__":
    main()
