"""After `teeny run`, each pass/fail verdict is printed with both scores, the number of problems and,
when nothing significant was found, the minimum detectable effect the sample allowed."""

from teeny_core.cli import print_verdicts


def test_pass_fail_verdicts_are_printed_with_scores_and_problem_counts(capsys):
    results = {"analysis": {"significance": {
        "_experiment": {"alpha": 0.05},
        "gguf-q2_k": {"humaneval": {"pass@1": {"kind": "pass/fail", "metric": "pass@1", "n_problems": 20,
                                               "baseline": {"score": 0.8}, "variant": {"score": 0.25},
                                               "verdict": "worse"}},
                      "fidelity": {"nll": {"kind": "continuous", "metric": "nll", "verdict": "worse"}}},
        "gguf-q3_k_m": {"humaneval": {"pass@1": {"kind": "pass/fail", "metric": "pass@1", "n_problems": 20,
                                                 "baseline": {"score": 0.8}, "variant": {"score": 0.75},
                                                 "verdict": "no significant difference (MDE 36.6 pp)"}}},
        "awq-w4-g128": {},
    }}}
    print_verdicts(results)
    assert capsys.readouterr().out.splitlines() == [
        "gguf-q2_k: humaneval pass@1 0.8 -> 0.25 over 20 problems: worse",
        "gguf-q3_k_m: humaneval pass@1 0.8 -> 0.75 over 20 problems: no significant difference (MDE 36.6 pp)",
    ]


def test_nothing_is_printed_without_an_analyzer(capsys):
    print_verdicts({"analysis": {}})
    print_verdicts({})
    assert capsys.readouterr().out == ""
