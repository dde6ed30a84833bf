"""``teeny compare`` on lm-evaluation-harness ``--log_samples`` files and evalplus ``*_eval_results.json`` files.

The files are written in the layouts lm-eval 0.4.x (``lm_eval/evaluator.py`` and ``loggers/evaluation_tracker.py``)
and evalplus 0.3.1 (``evalplus/evaluate.py``) write; expected p-values are computed here by hand.
"""

import hashlib
import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner


REAL = Path(__file__).parent / "data" / "lm-eval-0.4.13"  # real lm-eval output, see its README.md


@pytest.fixture
def teeny_cli():
    from teeny_core.cli import cli, plugins

    plugins().add_commands(cli)
    return cli


def sha(text):
    return hashlib.sha256(text.encode()).hexdigest()


def lm_eval_samples(directory, outcomes, task="humaneval", metric="pass@1", filter_name="create_test",
                    date="2026-12-04T20-11-05.123456", extra=None):
    """A samples file as ``lm_eval --log_samples`` writes it: one line per doc, the metric's value per line."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for doc_id, value in enumerate(outcomes):
        doc = {"task_id": f"HumanEval/{doc_id}", "prompt": f"def f{doc_id}():\n", "entry_point": f"f{doc_id}"}
        line = {"doc_id": doc_id, "doc": doc, "target": f"check(f{doc_id})",
                "arguments": {"gen_args_0": {"arg_0": doc["prompt"], "arg_1": {"until": ["\ndef"]}}},
                "resps": [["    return 1\n"]], "filtered_resps": [[doc["prompt"] + "    return 1\n"]],
                "filter": filter_name, "metrics": [metric], "doc_hash": sha(json.dumps(doc, indent=2)),
                "prompt_hash": sha(doc["prompt"]), "target_hash": sha(f"check(f{doc_id})"), metric: value}
        line.update(extra or {})
        lines.append(line)
    path = directory / f"samples_{task}_{date}.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def evalplus_results(path, statuses, dataset_hash="1a2b3c"):
    """An evalplus eval_results.json: ``statuses[task] = [(base_status, plus_status), ...]`` per sample."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"date": "2026-12-04 20:11", "hash": dataset_hash, "eval": {
        task: [{"task_id": task, "solution": "def f():\n    return 1\n", "base_status": base, "plus_status": plus,
                "base_fail_tests": [] if base == "pass" else [[1]], "plus_fail_tests": []} for base, plus in samples]
        for task, samples in statuses.items()}}))
    return path


def run(cli, *args):
    return CliRunner().invoke(cli, ["compare", *map(str, args)])


def one_error_line(result, *fragments):
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith("Error: ")
    for fragment in fragments:
        assert fragment in result.output, result.output


def test_lm_eval_samples_b_loses_12_of_40_passes(tmp_path, teeny_cli):
    a = lm_eval_samples(tmp_path / "Qwen__original", [1.0] * 40)
    b = lm_eval_samples(tmp_path / "Qwen__gptq-w4", [0.0] * 12 + [1.0] * 28)
    out_json = tmp_path / "findings.json"
    result = CliRunner().invoke(teeny_cli, ["compare", str(a), str(b), "-o", "resamples=500", "--json", str(out_json)])
    assert result.exit_code == 0, result.output
    assert "Qwen__gptq-w4 (B) vs Qwen__original (A, baseline)" in result.output
    assert "pass@1,create_test" in result.output
    assert "100.0% [91.2, 100.0]" in result.output  # Wilson 95% interval of 40/40
    assert "70.0% [54.6, 81.9]" in result.output  # and of 28/40 (computed by hand)
    assert "-30.0 pp" in result.output and "-12 / +0" in result.output and "worse" in result.output
    assert "mcnemar-exact" in result.output and "0.000488" in result.output
    findings = json.loads(out_json.read_text())
    passed = findings["Qwen__gptq-w4"]["pass@1,create_test"]["passed"]
    assert passed["p_value"] == pytest.approx(2 * 0.5 ** 12, rel=1e-12)  # exact McNemar: 2 * P(Bin(12, 1/2) = 0)
    assert round(passed["p_value"], 5) == 0.00049
    assert passed["delta"] == pytest.approx(-0.30) and passed["n_items"] == 40
    assert passed["mde"] is not None and 0 < passed["mde"] < 0.30


def test_several_lm_eval_files_give_holm_corrected_verdicts(tmp_path, teeny_cli):
    a = lm_eval_samples(tmp_path / "original", [1.0] * 40, metric="acc", filter_name="none", task="arc_easy")
    b = lm_eval_samples(tmp_path / "w4", [0.0] * 12 + [1.0] * 28, metric="acc", filter_name="none", task="arc_easy")
    c = lm_eval_samples(tmp_path / "w8", [0.0] + [1.0] * 39, metric="acc", filter_name="none", task="arc_easy")
    out_json = tmp_path / "findings.json"
    result = CliRunner().invoke(teeny_cli, ["compare", str(a), str(b), str(c), "-o", "resamples=300",
                                            "--json", str(out_json)])
    assert result.exit_code == 0, result.output
    assert "w4 (B) vs original (A, baseline)" in result.output and "w8 (B) vs original (A, baseline)" in result.output
    assert "holm (experiment) over 2 comparisons" in result.output
    findings = json.loads(out_json.read_text())
    w4, w8 = findings["w4"]["acc,none"]["passed"], findings["w8"]["acc,none"]["passed"]
    # Holm over {2^-11, 1}: the smaller is doubled, the larger stays 1
    assert w4["p_adjusted"] == pytest.approx(2 * 2 * 0.5 ** 12) and w8["p_adjusted"] == pytest.approx(1.0)
    assert w4["verdict"] == "worse" and w8["verdict"].startswith("no significant difference (MDE")


def test_lm_eval_filters_are_separate_comparisons_and_fractions_are_continuous(tmp_path, teeny_cli):
    def write(directory, strict, flexible):
        path = lm_eval_samples(directory, strict, task="gsm8k", metric="exact_match", filter_name="strict-match")
        flex = lm_eval_samples(tmp_path / "scratch" / directory.name, flexible, task="gsm8k", metric="exact_match",
                               filter_name="flexible-extract")
        with open(path, "a") as f:
            f.write(flex.read_text())
        return path

    a = write(tmp_path / "a", [1.0] * 30, [1.0] * 30)
    b = write(tmp_path / "b", [1.0] * 30, [0.0] * 10 + [1.0] * 20)
    result = CliRunner().invoke(teeny_cli, ["compare", str(a), str(b), "-o", "resamples=300", "--json",
                                            str(tmp_path / "f.json")])
    assert result.exit_code == 0, result.output
    findings = json.loads((tmp_path / "f.json").read_text())["b"]
    assert findings["exact_match,strict-match"]["passed"]["delta"] == 0
    assert findings["exact_match,flexible-extract"]["passed"]["flips"] == {"right_to_wrong": 10, "wrong_to_right": 0}

    # pass@1 over several generations per doc is a fraction: compared as a continuous, higher-is-better metric
    c = lm_eval_samples(tmp_path / "c", [0.5 + 0.01 * i for i in range(20)], task="humaneval_64")
    d = lm_eval_samples(tmp_path / "d", [0.3 + 0.01 * i for i in range(20)], task="humaneval_64")
    result = CliRunner().invoke(teeny_cli, ["compare", str(c), str(d), "-o", "resamples=300", "--json",
                                            str(tmp_path / "g.json")])
    assert result.exit_code == 0, result.output
    fraction = json.loads((tmp_path / "g.json").read_text())["d"]["pass@1,create_test"]["pass@1"]
    assert fraction["kind"] == "continuous" and fraction["higher_is_better"] is True
    assert fraction["delta"] == pytest.approx(-0.2) and fraction["verdict"] == "worse"


def exact_mcnemar(b, c):
    """Two-sided exact McNemar p by hand: 2 P(Binomial(b + c, 1/2) <= min(b, c)), at most 1."""
    return min(1.0, 2 * sum(math.comb(b + c, i) for i in range(min(b, c) + 1)) / 2 ** (b + c))


def test_real_lm_eval_output_folders(tmp_path, teeny_cli):
    a, b = REAL / "dummy-seed1", REAL / "dummy-seed2"
    result = CliRunner().invoke(teeny_cli, ["compare", str(a), str(b), "-o", "resamples=300", "--json",
                                            str(tmp_path / "f.json")])
    assert result.exit_code == 0, result.output
    findings = json.loads((tmp_path / "f.json").read_text())["dummy-seed2"]
    assert sorted(findings) == ["teeny_gen exact_match,none", "teeny_mc acc,none", "teeny_mc acc_norm,none"]
    p_values = {}
    for evaluator, (task, metric) in {"teeny_mc acc,none": ("teeny_mc", "acc"),
                                      "teeny_mc acc_norm,none": ("teeny_mc", "acc_norm"),
                                      "teeny_gen exact_match,none": ("teeny_gen", "exact_match")}.items():
        lines = [[json.loads(line) for line in next(d.glob(f"samples_{task}_*.jsonl")).read_text().splitlines()]
                 for d in (a, b)]
        by_id = [{x["doc_id"]: x[metric] for x in side} for side in lines]
        lost = sum(by_id[0][i] == 1 and by_id[1][i] == 0 for i in by_id[0])
        gained = sum(by_id[0][i] == 0 and by_id[1][i] == 1 for i in by_id[0])
        passed = findings[evaluator]["passed"]
        assert passed["n_items"] == len(by_id[0])
        assert passed["flips"] == {"right_to_wrong": lost, "wrong_to_right": gained}
        assert passed["p_value"] == pytest.approx(exact_mcnemar(lost, gained), rel=1e-12)
        assert passed["delta"] == pytest.approx((gained - lost) / len(by_id[0]))
        p_values[evaluator] = passed["p_value"]
    assert findings["teeny_mc acc,none"]["passed"]["flips"] == {"right_to_wrong": 14, "wrong_to_right": 6}
    # Holm over the three: the smallest p times 3
    smallest = min(p_values, key=p_values.get)
    assert findings[smallest]["passed"]["p_adjusted"] == pytest.approx(min(1.0, 3 * p_values[smallest]))

    # one task's two files: the same comparison
    files = [next(d.glob("samples_teeny_mc_*.jsonl")) for d in (a, b)]
    result = CliRunner().invoke(teeny_cli, ["compare", *map(str, files), "-o", "resamples=300", "--json",
                                            str(tmp_path / "g.json")])
    assert result.exit_code == 0, result.output
    single = json.loads((tmp_path / "g.json").read_text())["dummy-seed2"]
    assert single["acc,none"]["passed"]["p_value"] == pytest.approx(exact_mcnemar(14, 6))


def test_lm_eval_output_folders_compare_every_shared_task_in_one_holm_family(tmp_path, teeny_cli):
    a, b = tmp_path / "org__original", tmp_path / "org__w4"
    lm_eval_samples(a, [1.0] * 40)
    lm_eval_samples(a, [1.0] * 30, task="mbpp", metric="pass_at_1", filter_name="none")
    lm_eval_samples(b, [1.0] * 40, date="2026-12-01T08-00-00.000001")  # an older run of the task: not read
    lm_eval_samples(b, [0.0] * 12 + [1.0] * 28)
    lm_eval_samples(b, [1.0] * 29 + [0.0], task="mbpp", metric="pass_at_1", filter_name="none")
    lm_eval_samples(b, [1.0] * 5, task="only_in_b", metric="acc", filter_name="none")
    (a / "results_2026-12-04T20-11-05.123456.json").write_text("{}")  # lm-eval's aggregate file: ignored
    result = CliRunner().invoke(teeny_cli, ["compare", str(a), str(b), "-o", "resamples=300", "--json",
                                            str(tmp_path / "f.json")])
    assert result.exit_code == 0, result.output
    assert "org__w4 (B) vs org__original (A, baseline)" in result.output
    assert "holm (experiment) over 2 comparisons" in result.output
    findings = json.loads((tmp_path / "f.json").read_text())["org__w4"]
    assert sorted(findings) == ["humaneval pass@1,create_test", "mbpp pass_at_1,none"]
    humaneval, mbpp = findings["humaneval pass@1,create_test"]["passed"], findings["mbpp pass_at_1,none"]["passed"]
    assert humaneval["flips"]["right_to_wrong"] == 12 and mbpp["flips"]["right_to_wrong"] == 1
    assert humaneval["p_adjusted"] == pytest.approx(2 * 2 * 0.5 ** 12) and mbpp["p_adjusted"] == pytest.approx(1.0)


def test_evalplus_results_base_and_plus(tmp_path, teeny_cli):
    tasks = [f"HumanEval/{i}" for i in range(30)]
    a = evalplus_results(tmp_path / "original" / "samples_eval_results.json",
                         {t: [("pass", "pass")] for t in tasks})
    # B: 3 tasks fail the base tests, 6 more pass base but fail the plus tests
    b_status = {t: [("fail" if i < 3 else "pass", "fail" if i < 9 else "pass")] for i, t in enumerate(tasks)}
    b = evalplus_results(tmp_path / "w3" / "samples_eval_results.json", b_status)
    result = CliRunner().invoke(teeny_cli, ["compare", str(a), str(b), "-o", "resamples=300", "--json",
                                            str(tmp_path / "f.json")])
    assert result.exit_code == 0, result.output
    assert "evalplus base" in result.output and "evalplus plus" in result.output
    findings = json.loads((tmp_path / "f.json").read_text())["w3"]
    base, plus = findings["evalplus base"]["passed"], findings["evalplus plus"]["passed"]
    assert base["flips"] == {"right_to_wrong": 3, "wrong_to_right": 0} and base["delta"] == pytest.approx(-0.1)
    assert plus["flips"] == {"right_to_wrong": 9, "wrong_to_right": 0} and plus["delta"] == pytest.approx(-0.3)
    assert base["p_value"] == pytest.approx(2 * 0.5 ** 3) and plus["p_value"] == pytest.approx(2 * 0.5 ** 9)


def test_evalplus_several_samples_per_task_are_clustered(tmp_path, teeny_cli):
    tasks = [f"Mbpp/{i}" for i in range(12)]
    a = evalplus_results(tmp_path / "a" / "r_eval_results.json",
                         {t: [("pass", "pass")] * 4 for t in tasks})
    b = evalplus_results(tmp_path / "b" / "r_eval_results.json",
                         {t: [("pass", "pass")] * 3 + [("fail", "fail")] for t in tasks})
    result = CliRunner().invoke(teeny_cli, ["compare", str(a), str(b), "-o", "resamples=300", "--json",
                                            str(tmp_path / "f.json")])
    assert result.exit_code == 0, result.output
    base = json.loads((tmp_path / "f.json").read_text())["b"]["evalplus base"]["passed"]
    assert base["n_items"] == 48 and base["n_problems"] == 12 and base["samples_per_problem"] == 4
    assert base["test"] == "paired t, SE clustered by problem" and base["delta"] == pytest.approx(-0.25)


def test_bad_foreign_files_are_one_line(tmp_path, teeny_cli):
    a = lm_eval_samples(tmp_path / "a", [1.0] * 5)
    other_task = lm_eval_samples(tmp_path / "b", [1.0] * 5, task="mbpp")
    one_error_line(run(teeny_cli, a, other_task), "two different tasks", "task humaneval vs mbpp")

    renamed = tmp_path / "c" / "results.jsonl"  # no task in the name: the documents themselves differ
    renamed.parent.mkdir()
    mbpp = [json.loads(line) for line in other_task.read_text().splitlines()]
    for line in mbpp:
        line["doc"]["task_id"] = line["doc"]["task_id"].replace("HumanEval/", "Mbpp/")
        line["doc_hash"] = sha(json.dumps(line["doc"], indent=2))
    renamed.write_text("".join(json.dumps(line) + "\n" for line in mbpp))
    one_error_line(run(teeny_cli, a, renamed), "two different tasks", "doc_id 0 is a different document")

    disjoint = tmp_path / "d" / "results.jsonl"
    disjoint.parent.mkdir()
    disjoint.write_text("".join(json.dumps({"doc_id": 100 + i, "filter": "create_test", "metrics": ["pass@1"],
                                            "pass@1": 1.0}) + "\n" for i in range(3)))
    one_error_line(run(teeny_cli, a, disjoint), "share no item id", "A has 5 ids: 0, 1, 2, ...", "B has 3 ids: 100")

    no_metric = lm_eval_samples(tmp_path / "e", [1.0] * 3, extra={"metrics": ["bleu"], "bleu": [["ref"], ["pred"]]})
    one_error_line(run(teeny_cli, a, no_metric), f"{no_metric}:1 (doc_id 0) has no per-sample metric",
                   '["bleu"]')

    garbled = tmp_path / "f" / a.name
    garbled.parent.mkdir()
    lines = a.read_text().splitlines(keepends=True)
    garbled.write_text("".join(lines[:2]) + lines[2][:50] + "\n" + "".join(lines[3:]))
    one_error_line(run(teeny_cli, garbled, a), f"{garbled}:3 is not valid JSON")
    not_a_sample = tmp_path / "g" / a.name
    not_a_sample.parent.mkdir()
    not_a_sample.write_text(lines[0] + "[1, 2]\n")
    one_error_line(run(teeny_cli, a, not_a_sample), f"{not_a_sample}:2 is not an lm-eval sample")

    plus = evalplus_results(tmp_path / "h" / "x_eval_results.json", {"HumanEval/0": [("pass", "pass")]})
    one_error_line(run(teeny_cli, a, plus), "holds lm-eval results but", "holds evalplus results")
    one_error_line(run(teeny_cli, a, tmp_path / "b"), "holds lm-eval results but", "holds lm-eval folder results")
    other_dataset = evalplus_results(tmp_path / "i" / "x_eval_results.json", {"HumanEval/0": [("pass", "pass")]},
                                     dataset_hash="ffff")
    one_error_line(run(teeny_cli, plus, other_dataset), "two different tasks (dataset hash 1a2b3c vs ffff)")
    broken = tmp_path / "j" / "x_eval_results.json"
    broken.parent.mkdir()
    broken.write_text('{"hash": "1a2b3c",\n "eval": {"HumanEval/0": [\n')
    one_error_line(run(teeny_cli, plus, broken), f"{broken}:3 is not valid JSON")
    not_evalplus = tmp_path / "k" / "x.json"
    not_evalplus.parent.mkdir()
    not_evalplus.write_text('{"results": {}}')
    one_error_line(run(teeny_cli, plus, not_evalplus), "is not an evalplus eval_results.json")

    run_dir = tmp_path / "run" / "v"
    run_dir.mkdir(parents=True)
    one_error_line(run(teeny_cli, a, run_dir), "is lm-eval or evalplus results but", "is a Teeny run directory")
    one_error_line(run(teeny_cli, a), "needs a baseline and at least one result")
