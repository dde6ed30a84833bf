"""``teeny export RUN --format lm-eval|evalplus|csv`` on a run directory whose records teeny-bench graded.

The evalplus export is graded by the real evalplus package (``evalplus.evaluate``, run as a subprocess on a
tiny HumanEval+ file via its ``HUMANEVAL_OVERRIDE_PATH``); the samples are known code written here, so it is
safe to let evalplus execute them outside Teeny's sandbox.
"""

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from teeny_core.store import MemoryContext
from teeny_core.testing import answering_model

ADD = {"task_id": "HumanEval/0", "entry_point": "add", "atol": 0,
       "prompt": 'def add(a: int, b: int) -> int:\n    """Return a + b."""\n',
       "canonical_solution": "    return a + b\n",
       "base_input": [[1, 2], [3, 4]], "plus_input": [[10**20, 1], [-5, 5], [0, 0]]}
MEAN = {"task_id": "HumanEval/1", "entry_point": "mean", "atol": 0,
        "prompt": 'from typing import List\n\n\ndef mean(xs: List[float]) -> float:\n    """Arithmetic mean."""\n',
        "canonical_solution": "    return sum(xs) / len(xs)\n",
        "base_input": [[[1.0, 2.0, 4.0]]], "plus_input": [[[0.1] * 10], [[1e-3, 2e-3]]]}
VOWELS = {"task_id": "HumanEval/2", "entry_point": "vowels", "atol": 0,
          "prompt": 'def vowels(s: str) -> int:\n    """How many of the letters of s are vowels."""\n',
          "canonical_solution": "    return sum(c in 'aeiouAEIOU' for c in s)\n",
          "base_input": [["hello"], ["sky"]], "plus_input": [["AEIOU xyz"], [""]]}
PROBLEMS = (ADD, MEAN, VOWELS)
ANSWERS = {
    "original": {p["prompt"]: p["canonical_solution"] for p in PROBLEMS},
    # passes the base tests of add but not the plus ones (big ints), passes mean, fails vowels outright
    "w4": {ADD["prompt"]: "    return a + b if abs(a) < 1000 else 0\n", MEAN["prompt"]: MEAN["canonical_solution"],
           VOWELS["prompt"]: "    return len(s)\n"},
}


@pytest.fixture(scope="module")
def graded_run(tmp_path_factory):
    """runs/exp/ with two variants whose humaneval-plus records teeny-bench generated and graded (sandboxed)."""
    from teeny_bench.humaneval import HumanEvalPlus

    root = tmp_path_factory.mktemp("export")
    plus = root / "HumanEvalPlus.jsonl"
    plus.write_text("".join(json.dumps({**p, "test": "", "contract": ""}) + "\n" for p in PROBLEMS))
    run_dir = root / "runs" / "exp"
    variants = []
    for name, answers in ANSWERS.items():
        evaluator = HumanEvalPlus()
        options = HumanEvalPlus.Options.from_mapping({"path": str(plus)}, where="humaneval-plus")
        ctx = MemoryContext(cache_dir=root / "cache")
        evaluator.evaluate(answering_model(answers), options, ctx)
        metrics = evaluator.summarize(ctx.records, options)
        (run_dir / name).mkdir(parents=True)
        (run_dir / name / "samples.jsonl").write_text(
            "".join(json.dumps({**r, "evaluator": "humaneval-plus"}) + "\n" for r in ctx.records))
        variants.append({"name": name, "method": "none" if name == "original" else "rtn",
                         "describe": {"bits": 4} if name == "w4" else {}, "metrics": {"humaneval-plus": metrics}})
    (run_dir / "results.json").write_text(json.dumps({"experiment": "exp", "baseline": "original",
                                                      "variants": variants}))
    return run_dir, plus, {v["name"]: v["metrics"]["humaneval-plus"] for v in variants}


@pytest.fixture
def teeny_cli():
    from teeny_core.cli import cli, plugins

    plugins().add_commands(cli)
    return cli


def export(cli, run_dir, fmt, out):
    result = CliRunner().invoke(cli, ["export", str(run_dir), "--format", fmt, "-o", str(out)])
    assert result.exit_code == 0, result.output
    return [Path(line) for line in result.output.splitlines()]


def test_teeny_graded_the_fixture_as_intended(graded_run):
    _, _, metrics = graded_run
    assert metrics["original"]["pass@1"] == 1.0
    assert metrics["w4"]["pass@1"] == pytest.approx(1 / 3) and metrics["w4"]["passed_base_rate"] == pytest.approx(2 / 3)


@pytest.mark.slow
def test_evalplus_grades_the_export_with_the_pass_at_1_teeny_printed(graded_run, teeny_cli, tmp_path):
    pytest.importorskip("evalplus", reason="evalplus is in the test extra (pip install -e '.[test]')")
    run_dir, plus, metrics = graded_run
    files = export(teeny_cli, run_dir, "evalplus", tmp_path / "out")
    assert sorted(f.relative_to(tmp_path / "out").as_posix() for f in files) == \
        ["original/samples.jsonl", "w4/samples.jsonl"]
    # each evalplus.evaluate lasts at least 20 s (its stuck-sample watcher sleeps that long): run both at once
    graders = {}
    for name in ("original", "w4"):
        env = {**os.environ, "HUMANEVAL_OVERRIDE_PATH": str(plus), "XDG_CACHE_HOME": str(tmp_path / f"cache-{name}")}
        graders[name] = subprocess.Popen([sys.executable, "-m", "evalplus.evaluate", "--dataset", "humaneval",
                                          "--samples", str(tmp_path / "out" / name / "samples.jsonl"),
                                          "--parallel", "1"], env=env, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True)
    for name, grader in graders.items():
        output = grader.communicate(timeout=300)[0]
        assert grader.returncode == 0, output
        graded = json.loads((tmp_path / "out" / name / "samples_eval_results.json").read_text())["eval"]
        assert len(graded) == 3 and all(len(samples) == 1 for samples in graded.values())
        base = sum(s[0]["base_status"] == "pass" for s in graded.values()) / 3
        plus_rate = sum(s[0]["base_status"] == s[0]["plus_status"] == "pass" for s in graded.values()) / 3
        assert plus_rate == pytest.approx(metrics[name]["pass@1"])  # HumanEval+ (base + plus tests)
        assert base == pytest.approx(metrics[name]["passed_base_rate"])  # base tests
        assert f"pass@1:\t{metrics[name]['pass@1']:.3f}" in output  # what evalplus printed

    # evalplus's own results files, compared by teeny compare (teeny-stats)
    graded = [tmp_path / "out" / name / "samples_eval_results.json" for name in ("original", "w4")]
    result = CliRunner().invoke(teeny_cli, ["compare", *map(str, graded), "--json", str(tmp_path / "f.json")])
    assert result.exit_code == 0, result.output
    findings = json.loads((tmp_path / "f.json").read_text())["w4"]
    assert findings["evalplus base"]["passed"]["flips"] == {"right_to_wrong": 1, "wrong_to_right": 0}
    assert findings["evalplus plus"]["passed"]["flips"] == {"right_to_wrong": 2, "wrong_to_right": 0}


def test_lm_eval_export_layout_and_values(graded_run, teeny_cli, tmp_path):
    run_dir, _, metrics = graded_run
    metrics_w4 = metrics["w4"]
    files = export(teeny_cli, run_dir, "lm-eval", tmp_path / "out")
    results_file = next(f for f in files if f.parent.name == "w4" and f.name.startswith("results_"))
    data = json.loads(results_file.read_text())
    for key in ("results", "configs", "versions", "n-shot", "higher_is_better", "n-samples", "config"):
        assert key in data, key
    row = data["results"]["humaneval-plus"]
    assert row["alias"] == "humaneval-plus" and row["pass@1,none"] == pytest.approx(1 / 3)
    # lm-eval's stderr of a mean: sample standard deviation / sqrt(n), over the per-doc values 0, 1, 0
    assert row["pass@1_stderr,none"] == pytest.approx(math.sqrt((2 * (1 / 3) ** 2 + (2 / 3) ** 2) / 2 / 3))
    assert row["passed_base_rate,none"] == pytest.approx(2 / 3) and row["passed_base_rate_stderr,none"] == "N/A"
    assert "pass@1_se,none" not in row  # Teeny's own standard error is the stderr above, not a metric
    assert row["pass@1_stderr,none"] == pytest.approx(metrics_w4["pass@1_se"])
    assert data["configs"]["humaneval-plus"]["task"] == "humaneval-plus"
    assert data["n-samples"]["humaneval-plus"] == {"original": 3, "effective": 3}
    assert data["model_name"] == "w4" and data["config"]["teeny"]["describe"] == {"bits": 4}

    # the same layout as a results file lm-eval 0.4.13 wrote (tests/data, made with its dummy model)
    real = json.loads((Path(__file__).parent / "data" / "lm_eval_0.4.13_results.json").read_text())
    for key in ("results", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better", "n-samples",
                "config", "date", "model_name", "model_name_sanitized"):
        assert type(data[key]) is type(real[key]), key
    real_row = real["results"]["teeny_mc"]
    assert set(real_row) == {"name", "alias", "sample_len", "acc,none", "acc_stderr,none", "acc_norm,none",
                             "acc_norm_stderr,none"}
    assert {"name", "alias", "sample_len", "pass@1,none", "pass@1_stderr,none"} <= set(row)
    assert type(data["config"]["model_args"]) is type(real["config"]["model_args"])
    assert set(data["n-samples"]["humaneval-plus"]) == set(real["n-samples"]["teeny_mc"])
    assert set(data["higher_is_better"]["humaneval-plus"]) == {"pass@1"}
    # and lm-eval's stderr is the one computed above: 40 docs, acc 0.7
    assert real_row["acc,none"] == 0.7 and real_row["acc_stderr,none"] == pytest.approx(math.sqrt(0.7 * 0.3 / 39))

    # the samples files are lm-eval --log_samples files: teeny compare reads them back, same flips
    samples = sorted(f for f in files if f.name.startswith("samples_humaneval-plus_"))
    assert [f.parent.name for f in samples] == ["original", "w4"]
    lines = [json.loads(line) for line in samples[1].read_text().splitlines()]
    assert [(x["doc_id"], x["doc"]["task_id"], x["pass@1"]) for x in lines] == \
        [(0, "HumanEval/0", 0.0), (1, "HumanEval/1", 1.0), (2, "HumanEval/2", 0.0)]
    result = CliRunner().invoke(teeny_cli, ["compare", *map(str, samples), "--json", str(tmp_path / "f.json")])
    assert result.exit_code == 0, result.output
    passed = json.loads((tmp_path / "f.json").read_text())["w4"]["pass@1,none"]["passed"]
    assert passed["flips"] == {"right_to_wrong": 2, "wrong_to_right": 0}


def test_csv_export_is_the_reports_tables(graded_run, teeny_cli, tmp_path):
    run_dir, _, _ = graded_run
    files = export(teeny_cli, run_dir, "csv", tmp_path / "out")
    assert [f.name for f in files][0] == "results.csv"
    rows = list(csv.reader(open(files[0], newline="")))
    assert rows[0][:3] == ["variant", "method", "bits"]
    assert [r[0] for r in rows[1:]] == ["original", "w4"]
    assert not (run_dir / "plots").exists()  # the tables only: no plot drawn


def test_export_errors_are_one_line(graded_run, teeny_cli, tmp_path):
    run_dir, _, _ = graded_run
    result = CliRunner().invoke(teeny_cli, ["export", str(tmp_path), "--format", "csv"])
    assert result.exit_code == 2 and "has no results.json" in result.output
    result = CliRunner().invoke(teeny_cli, ["export", str(run_dir), "--format", "xml"])
    assert result.exit_code == 2 and "'xml' is not one of 'lm-eval', 'evalplus', 'csv'" in result.output
    result = CliRunner().invoke(teeny_cli, ["export", str(run_dir), "--format", "evalplus", "--evaluator", "mbpp",
                                            "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no records to export as evalplus" in result.output
    result = CliRunner().invoke(teeny_cli, ["export", str(run_dir), "--format", "csv", "--evaluator", "humaneval"])
    assert result.exit_code == 2 and "--evaluator humaneval applies to --format evalplus only" in result.output

    # a garbled record in the second variant: one line naming it, and nothing written for the first either
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    with open(broken / "w4" / "samples.jsonl", "a") as f:
        f.write("{not json\n")
    lines = (broken / "w4" / "samples.jsonl").read_text().count("\n")
    result = CliRunner().invoke(teeny_cli, ["export", str(broken), "--format", "lm-eval", "-o", str(tmp_path / "x")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert f"samples.jsonl:{lines} is not a record" in result.output
    assert not (tmp_path / "x").exists()
