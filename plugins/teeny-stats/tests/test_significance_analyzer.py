"""The ``significance`` analyzer on synthetic variants: verdicts, flips, Holm across variants, clustering."""

import json
import random

import pytest

from teeny_core import OptionsError, VariantResult
from teeny_core.plugins import Plugins
from teeny_core.testing import AnalyzerContract, flipped
from teeny_stats import stats
from teeny_stats.analyzer import SignificanceAnalyzer, SignificanceOptions


class TestSignificanceContract(AnalyzerContract):
    analyzer = "significance"
    options = {"resamples": 200}


def bench_records(outcomes, samples=1, evaluator="humaneval"):
    """Pass/fail records: outcomes[i] is the verdict of item i = (problem i // samples, sample i % samples)."""
    return [{"key": f"HumanEval/{i // samples}#{i % samples}", "task_id": f"HumanEval/{i // samples}",
             "sample": i % samples, "passed": bool(p), "evaluator": evaluator, "seconds": 1.0 + 0.01 * (i % 7)}
            for i, p in enumerate(outcomes)]


def variant(name, records, method="rtn"):
    return VariantResult(name=name, method=method, describe={"bits": 4}, records=records, metrics={}, profile={})


def baseline_outcomes(n=120, seed=0):
    rng = random.Random(seed)
    return [rng.random() < 0.6 for _ in range(n)]


def analyze(base, variants, **opts):
    options = SignificanceOptions.from_mapping({"resamples": 2000, **opts})
    out = SignificanceAnalyzer().analyze(base, variants, options)
    # what results.json stores: strict JSON, plain Python numbers only (no numpy scalars, NaN or inf)
    assert json.loads(json.dumps(out, allow_nan=False)) == out
    return out


def test_flipping_many_items_is_worse_and_identical_is_no_difference():
    b = baseline_outcomes()
    base = variant("original", {"humaneval": bench_records(b)}, method="none")
    bad = variant("q2", {"humaneval": bench_records(flipped(b, 20, 2))})
    same = variant("q8", {"humaneval": bench_records(b)})
    out = analyze(base, [bad, same], fields=[])
    worse = out["q2"]["humaneval"]["passed"]
    assert worse["flips"] == {"right_to_wrong": 20, "wrong_to_right": 2}
    assert worse["test"] == "mcnemar-exact"
    assert worse["p_value"] == pytest.approx(stats.mcnemar_exact(20, 2))
    assert worse["p_adjusted"] < 0.05 and worse["verdict"] == "worse"
    assert worse["delta"] == pytest.approx(-18 / 120)
    assert worse["delta_ci"][0] < -18 / 120 < worse["delta_ci"][1] < 0
    assert worse["baseline"]["ci"] == pytest.approx(list(stats.wilson_interval(sum(b), 120, 0.95)))
    equal = out["q8"]["humaneval"]["passed"]
    assert equal["p_value"] == 1.0 and equal["flips"] == {"right_to_wrong": 0, "wrong_to_right": 0}
    # nothing flipped: the MDE is the difference whose one-way flips the exact test catches 80% of the time
    assert equal["mde"] == pytest.approx(stats.mcnemar_mde(120, 0.0))
    assert equal["verdict"] == f"no significant difference (MDE {100 * equal['mde']:.1f} pp)"
    assert 0.05 < equal["mde"] < 0.08  # at least 6 of 120 items must flip one way for p < 0.05
    assert out["_experiment"]["comparisons"] == 2


def test_more_wins_than_losses_is_better():
    b = baseline_outcomes()
    base = variant("original", {"humaneval": bench_records(b)})
    good = variant("awq", {"humaneval": bench_records(flipped(b, 1, 15))})
    r = analyze(base, [good], fields=[])["awq"]["humaneval"]["passed"]
    assert r["verdict"] == "better" and r["delta"] > 0


def test_holm_is_applied_across_variants():
    b = baseline_outcomes(200, seed=1)
    base = variant("original", {"humaneval": bench_records(b)})
    variants = [variant(f"v{i}", {"humaneval": bench_records(flipped(b, rw, 0))}) for i, rw in enumerate((7, 9, 3))]
    out = analyze(base, variants, fields=[])
    raw = [stats.mcnemar_exact(rw, 0) for rw in (7, 9, 3)]
    expected = stats.holm(raw)
    got = [out[f"v{i}"]["humaneval"]["passed"]["p_adjusted"] for i in range(3)]
    assert got == pytest.approx(expected)
    # 7 flips: raw p = 2/128 = 0.0156 < 0.05 but Holm (x2) = 0.031 still < 0.05; 9 flips -> x3
    assert got[0] == pytest.approx(2 * raw[0]) and got[1] == pytest.approx(3 * raw[1])
    unadjusted = analyze(base, variants, fields=[], correction="none")
    assert [unadjusted[f"v{i}"]["humaneval"]["passed"]["p_adjusted"] for i in range(3)] == pytest.approx(raw)


def test_holm_can_turn_a_raw_significance_into_no_difference():
    b = baseline_outcomes(200, seed=2)
    base = variant("original", {"humaneval": bench_records(b)})
    # 6 one-way flips: raw p = 0.03125; with two more comparisons in the family Holm gives 3 x 0.03125 > 0.05
    variants = [variant("a", {"humaneval": bench_records(flipped(b, 6, 0))}),
                variant("b", {"humaneval": bench_records(b)}), variant("c", {"humaneval": bench_records(b)})]
    out = analyze(base, variants, fields=[])
    r = out["a"]["humaneval"]["passed"]
    assert r["p_value"] < 0.05 < r["p_adjusted"]
    assert r["verdict"].startswith("no significant difference (MDE")
    alone = analyze(base, variants[:1], fields=[])["a"]["humaneval"]["passed"]
    assert alone["verdict"] == "worse"


def test_multiple_samples_per_problem_cluster_and_pass_at_k():
    rng = random.Random(5)
    problems, n = 30, 10
    rates = [rng.random() for _ in range(problems)]
    b = [rng.random() < rates[i // n] for i in range(problems * n)]
    v = [x if rng.random() < 0.8 else (rng.random() < rates[i // n] - 0.3) for i, x in enumerate(b)]
    base = variant("original", {"humaneval": bench_records(b, samples=n)})
    var = variant("q3", {"humaneval": bench_records(v, samples=n)})
    r = analyze(base, [var], fields=[])["q3"]["humaneval"]["passed"]
    assert r["n_problems"] == problems and r["samples_per_problem"] == n and r["n_items"] == problems * n
    assert r["test"] == "paired t, SE clustered by problem"
    diffs = [float(y) - float(x) for x, y in zip(b, v)]
    clusters = [i // n for i in range(problems * n)]
    assert r["delta_se"] == pytest.approx(stats.clustered_se(diffs, clusters))
    # clustering matters here: the naive i.i.d. SE is smaller than the clustered one
    naive = stats.clustered_se(diffs, list(range(len(diffs))))
    assert r["delta_se"] > naive
    # pass@k by hand for k = 5, 10 from the per-problem counts
    for k in (5, 10):
        expected_b = sum(stats.pass_at_k(n, sum(b[p * n:(p + 1) * n]), k) for p in range(problems)) / problems
        expected_v = sum(stats.pass_at_k(n, sum(v[p * n:(p + 1) * n]), k) for p in range(problems)) / problems
        got = r["pass_at_k"][f"pass@{k}"]
        assert got["baseline"] == pytest.approx(expected_b) and got["variant"] == pytest.approx(expected_v)
        assert got["delta_ci"][0] <= got["delta"] <= got["delta_ci"][1]
    assert "pass@100" not in r["pass_at_k"]
    assert r["baseline"]["score"] == pytest.approx(sum(b) / len(b))


def test_continuous_fields_and_direction():
    rng = random.Random(3)
    chunks = 40
    base_recs = [{"key": f"chunk-{i}", "chunk": i, "nll": 2.0 + rng.random(), "top1": 1.0} for i in range(chunks)]
    worse_recs = [{**r, "nll": r["nll"] + 0.05 + 0.01 * rng.random(), "top1": 0.9 + 0.01 * rng.random()}
                  for r in base_recs]
    base = variant("original", {"fidelity": base_recs})
    var = variant("q4", {"fidelity": worse_recs})
    out = analyze(base, [var], fields=["nll", "top1", "missing"])["q4"]["fidelity"]
    assert set(out) == {"nll", "top1"}
    nll = out["nll"]
    assert nll["kind"] == "continuous" and nll["n_items"] == chunks
    # every difference positive: exact Wilcoxon p = 2 / 2^40
    assert nll["p_value"] == pytest.approx(2 / 2**40, rel=1e-6) and nll["test"].endswith("(exact)")
    assert nll["verdict"] == "worse"  # higher NLL is worse
    assert out["top1"]["verdict"] == "worse" and out["top1"]["higher_is_better"]  # lower agreement is worse
    assert nll["delta_ci"][0] > 0.05
    same = analyze(base, [variant("copy", {"fidelity": base_recs})], fields=["nll"])["copy"]["fidelity"]["nll"]
    assert same["p_value"] == 1.0 and same["verdict"].startswith("no significant difference")


def test_five_items_cannot_show_a_continuous_difference():
    base = variant("original", {"fidelity": [{"key": f"chunk-{i}", "nll": 2.0 + i} for i in range(5)]})
    worse = variant("q2", {"fidelity": [{"key": f"chunk-{i}", "nll": 3.0 + i} for i in range(5)]})
    r = analyze(base, [worse], fields=["nll"])["q2"]["fidelity"]["nll"]
    assert r["p_value"] == 2 / 32  # all five differences positive: the smallest p the test can give
    assert r["mde"] is None and r["verdict"] == "no significant difference (too few items, n=5, to detect any)"
    six = variant("original", {"fidelity": [{"key": f"chunk-{i}", "nll": 2.0 + i} for i in range(6)]})
    r6 = analyze(six, [variant("q2", {"fidelity": [{"key": f"chunk-{i}", "nll": 3.0 + i} for i in range(6)]})],
                 fields=["nll"])["q2"]["fidelity"]["nll"]
    assert r6["p_value"] == 2 / 64 and r6["verdict"] == "worse"


def test_a_difference_at_the_tests_floor_that_holm_takes_away_does_not_quote_a_smaller_mde():
    """8 windows all worse give p = 2/256, the signed-rank test's smallest; among 30 such comparisons Holm
    lifts it above alpha. The verdict says more items are needed instead of quoting an MDE smaller than the
    difference it did not call significant."""
    base = variant("original", {"fidelity": [{"key": f"chunk-{i}", "nll": 2.0 + i} for i in range(8)]})
    worse = [variant(f"q{j}", {"fidelity": [{"key": f"chunk-{i}", "nll": 3.0 + i + 0.1 * i * i} for i in range(8)]})
             for j in range(30)]
    r = analyze(base, worse, fields=["nll"])["q0"]["fidelity"]["nll"]
    assert r["p_value"] == pytest.approx(2 / 256) and r["p_adjusted"] > 0.05
    assert r["mde"] < r["delta"]
    assert r["verdict"] == ("no significant difference (all 8 items moved one way, p 0.0078, the smallest this "
                            f"test gives, which is {r['p_adjusted']:.2g} after the correction for multiple "
                            "comparisons: more items are needed)")
    alone = analyze(base, worse[:1], fields=["nll"])["q0"]["fidelity"]["nll"]
    assert alone["p_adjusted"] == pytest.approx(2 / 256) and alone["verdict"] == "worse"


def test_a_difference_holm_takes_away_is_not_shown_beside_a_smaller_mde():
    """Run C's cross-model row: -12.5 points, p 0.035 alone, above alpha after Holm, and an MDE (at the
    uncorrected alpha) of 12.2 points. The verdict names the correction instead of quoting that MDE."""
    from teeny_stats.analyzer import verdict

    row = {"kind": "pass/fail", "delta": -0.125, "mde": 0.122, "p_value": 0.035, "p_adjusted": 0.14,
           "n_items": 80}
    assert verdict(row, 0.05) == ("no significant difference after the correction for multiple comparisons "
                                  "(p 0.035, 0.14 corrected; the MDE 12.2 pp is at the uncorrected level)")
    assert verdict({**row, "mde": 0.15}, 0.05) == "no significant difference (MDE 15.0 pp)"  # larger MDE
    assert verdict({**row, "p_value": 0.2, "p_adjusted": 0.6}, 0.05) == "no significant difference (MDE 12.2 pp)"
    assert verdict({**row, "p_adjusted": 0.035}, 0.05) == "worse"


def test_pairing_by_key_ignores_unpaired_and_non_boolean_records():
    b = [True, False, True, True]
    base = variant("original", {"humaneval": bench_records(b)})
    var_records = bench_records([False, False, True, True, True])  # one extra item only the variant has
    var_records[1]["passed"] = None  # e.g. a skipped language: not a pass/fail outcome
    r = analyze(base, [variant("v", {"humaneval": var_records})], fields=[])["v"]["humaneval"]["passed"]
    assert r["n_items"] == 3
    assert r["unpaired"] == {"baseline_only": 0, "variant_only": 1, "skipped": 0}
    assert r["flips"] == {"right_to_wrong": 1, "wrong_to_right": 0}


def test_too_few_items_to_detect_anything():
    base = variant("original", {"humaneval": bench_records([True, False, True])})
    r = analyze(base, [variant("v", {"humaneval": bench_records([False, False, True])})], fields=[])
    result = r["v"]["humaneval"]["passed"]
    assert result["mde"] is None
    assert result["verdict"] == "no significant difference (too few items, n=3, to detect any)"


def test_skipped_items_are_left_out_and_languages_are_separate_problems():
    """teeny-bench's humaneval-mul: the same task_id in two languages, a language whose toolchain is missing."""
    def mul_records(outcomes_by_language):
        out = []
        for lang, outcomes in outcomes_by_language.items():
            for i, p in enumerate(outcomes):
                task, sample = f"HumanEval_{i // 2}", i % 2
                record = {"key": f"{lang}/{task}/{sample}", "task_id": task, "language": lang, "sample": sample,
                          "passed": bool(p), "category": "passed" if p else "wrong_answer"}
                if p is None:
                    record.update(passed=False, category="skipped_toolchain")
                out.append(record)
        return out

    base = variant("original", {"humaneval-mul": mul_records({"python": [1, 1, 0, 1], "java": [1, 0, 1, 1],
                                                              "php": [None] * 4})})
    var = variant("q4", {"humaneval-mul": mul_records({"python": [1, 0, 0, 1], "java": [1, 0, 1, 0],
                                                       "php": [None] * 4})})
    r = analyze(base, [var], fields=[])["q4"]["humaneval-mul"]["passed"]
    assert r["n_items"] == 8 and r["unpaired"]["skipped"] == 4
    assert r["n_problems"] == 4 and r["samples_per_problem"] == 2  # python/HumanEval_0 != java/HumanEval_0
    assert r["flips"] == {"right_to_wrong": 2, "wrong_to_right": 0}
    assert r["baseline"]["score"] == pytest.approx(6 / 8) and r["variant"]["score"] == pytest.approx(4 / 8)


def test_one_problem_with_many_samples_has_no_clustered_test():
    base = variant("original", {"humaneval": bench_records([True, False, True, True], samples=4)})
    r = analyze(base, [variant("v", {"humaneval": bench_records([False, False, True, True], samples=4)})],
                fields=["seconds"])["v"]["humaneval"]
    assert r["passed"]["p_value"] is None and r["passed"]["delta_se"] is None
    assert r["passed"]["verdict"].startswith("no significant difference")


def test_flips_by_category():
    base_recs = bench_records([True, True, True, False, False, True])
    var_recs = bench_records([False, False, True, True, False, False])
    for r, cat in zip(var_recs, ["timeout", "syntax_error", "passed", "passed", "wrong_answer", "syntax_error"]):
        r["category"] = cat
    for r, cat in zip(base_recs, ["passed", "passed", "passed", "name_error", "wrong_answer", "passed"]):
        r["category"] = cat
    r = analyze(variant("original", {"humaneval": base_recs}), [variant("v", {"humaneval": var_recs})],
                fields=[])["v"]["humaneval"]["passed"]
    assert r["flips"] == {"right_to_wrong": 3, "wrong_to_right": 1}
    assert r["flips_by_category"] == {"right_to_wrong": {"timeout": 1, "syntax_error": 2},
                                      "wrong_to_right": {"name_error": 1}}
    plain = analyze(variant("original", {"humaneval": bench_records([True])}),
                    [variant("v", {"humaneval": bench_records([False])})], fields=[])["v"]["humaneval"]["passed"]
    assert "flips_by_category" not in plain


def test_evaluator_missing_from_variant_is_skipped():
    base = variant("original", {"humaneval": bench_records([True, False]), "fidelity": []})
    out = analyze(base, [variant("v", {"fidelity": []})], fields=["nll"])
    assert out["v"] == {}


def test_bad_options_give_one_line_errors():
    with pytest.raises(OptionsError, match="alpha"):
        SignificanceOptions.from_mapping({"alpha": 2})
    with pytest.raises(OptionsError, match="correction"):
        SignificanceOptions.from_mapping({"correction": "bonferroni"})


def test_registered_through_the_entry_point():
    plugins = Plugins.load()
    assert plugins.get("analyzer", "significance") is SignificanceAnalyzer
    assert plugins.infos["stats"].error is None
