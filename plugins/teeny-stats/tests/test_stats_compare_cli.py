"""``teeny compare RUN_A RUN_B`` on two synthetic variant run directories, through the real ``teeny`` CLI."""

import json

import pytest
from click.testing import CliRunner

from teeny_stats import stats


def write_run(directory, outcomes, nll, method="rtn"):
    directory.mkdir(parents=True)
    lines = [{"evaluator": "humaneval", "key": f"HumanEval/{i}#0", "task_id": f"HumanEval/{i}", "sample": 0,
              "passed": p} for i, p in enumerate(outcomes)]
    lines += [{"evaluator": "fidelity", "key": f"chunk-{i}", "chunk": i, "nll": x, "tokens": 255}
              for i, x in enumerate(nll)]
    (directory / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (directory / "variant.json").write_text(json.dumps({"name": directory.name, "method": method,
                                                        "describe": {"bits": 4}}))
    return directory


@pytest.fixture
def teeny_cli():
    from teeny_core.cli import cli, plugins

    plugins().add_commands(cli)
    return cli


def test_compare_prints_the_paired_table(tmp_path, teeny_cli):
    base = [i % 3 != 0 for i in range(60)]
    var = list(base)
    flipped = [i for i, p in enumerate(base) if p][:12]
    for i in flipped:
        var[i] = False
    a = write_run(tmp_path / "exp" / "original", base, [2.0 + 0.01 * i for i in range(20)], method="none")
    b = write_run(tmp_path / "exp" / "q2", var, [2.5 + 0.01 * i for i in range(20)])
    out_json = tmp_path / "findings.json"
    result = CliRunner().invoke(teeny_cli, ["compare", str(a), str(b), "-o", "resamples=500",
                                            "--json", str(out_json)])
    assert result.exit_code == 0, result.output
    assert "q2 (B) vs original (A, baseline)" in result.output
    assert "-12 / +0" in result.output and "worse" in result.output
    findings = json.loads(out_json.read_text())
    passed = findings["q2"]["humaneval"]["passed"]
    assert passed["p_value"] == pytest.approx(stats.mcnemar_exact(12, 0))
    assert findings["q2"]["fidelity"]["nll"]["verdict"] == "worse"
    assert findings["_experiment"]["comparisons"] == 2


def test_compare_same_variant_name_in_two_experiments(tmp_path, teeny_cli):
    a = write_run(tmp_path / "exp1" / "q4", [True, False] * 10, [1.0] * 5)
    b = write_run(tmp_path / "exp2" / "q4", [True, False] * 10, [1.0] * 5)
    result = CliRunner().invoke(teeny_cli, ["compare", str(a), str(b)])
    assert result.exit_code == 0, result.output
    assert "exp2/q4 (B) vs exp1/q4 (A, baseline)" in result.output
    assert "no significant difference" in result.output


def test_compare_errors_are_one_line(tmp_path, teeny_cli):
    empty = tmp_path / "empty"
    empty.mkdir()
    good = write_run(tmp_path / "exp" / "v", [True], [1.0])
    result = CliRunner().invoke(teeny_cli, ["compare", str(empty), str(good)])
    assert result.exit_code != 0 and "has no samples.jsonl" in result.output
    result = CliRunner().invoke(teeny_cli, ["compare", str(good), str(good), "-o", "alpha=3"])
    assert result.exit_code != 0 and "alpha=3" in result.output
    other = tmp_path / "other" / "w"
    other.mkdir(parents=True)
    (other / "samples.jsonl").write_text(json.dumps({"evaluator": "mmlu", "key": "a", "passed": True}) + "\n")
    result = CliRunner().invoke(teeny_cli, ["compare", str(good), str(other)])
    assert result.exit_code != 0 and "share no evaluator" in result.output


def test_compare_shows_pass_at_k_with_several_samples(tmp_path, teeny_cli):
    def write(directory, outcomes):
        directory.mkdir(parents=True)
        lines = [{"evaluator": "humaneval", "key": f"HumanEval/{i // 10}#{i % 10}", "task_id": f"HumanEval/{i // 10}",
                  "sample": i % 10, "passed": p} for i, p in enumerate(outcomes)]
        (directory / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        return directory

    base = [(i * 7) % 10 < 6 for i in range(200)]
    var = [p and i % 4 != 0 for i, p in enumerate(base)]
    a, b = write(tmp_path / "e" / "original", base), write(tmp_path / "e" / "q3", var)
    result = CliRunner().invoke(teeny_cli, ["compare", str(a), str(b), "-o", "resamples=300", "-o", "fields=[]"])
    assert result.exit_code == 0, result.output
    assert "paired t, SE" in result.output
    for k in ("pass@5", "pass@10"):
        assert k in result.output


def test_compare_against_a_null_or_disjoint_run_is_one_error_line(tmp_path, teeny_cli):
    good = write_run(tmp_path / "exp" / "v", [True, False], [1.0, 2.0])
    null = tmp_path / "null" / "v"
    null.mkdir(parents=True)
    (null / "samples.jsonl").write_text("null\n")
    result = CliRunner().invoke(teeny_cli, ["compare", str(good), str(null)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith("Error: ") and "samples.jsonl:1 is not a record" in result.output
    disjoint = write_run(tmp_path / "other" / "v", [True], [1.0])
    for name in ("samples.jsonl",):
        text = (disjoint / name).read_text().replace("HumanEval/", "Other/").replace("chunk-", "window-")
        (disjoint / name).write_text(text)
    result = CliRunner().invoke(teeny_cli, ["compare", str(good), str(disjoint)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "share no item" in result.output and "e.g. A 'chunk-0', B 'window-0'" in result.output


def test_compare_counts_a_duplicated_key_once(tmp_path, teeny_cli):
    a = write_run(tmp_path / "a" / "v", [True] * 6, [1.0] * 6)
    b = write_run(tmp_path / "b" / "v", [True] * 6, [1.0] * 6)
    with open(b / "samples.jsonl", "a") as f:  # a second copy of every record with the opposite outcome
        for i in range(6):
            f.write(json.dumps({"evaluator": "humaneval", "key": f"HumanEval/{i}#0", "passed": False}) + "\n")
    result = CliRunner().invoke(teeny_cli, ["compare", str(a), str(b), "--json", str(tmp_path / "f.json")])
    assert result.exit_code == 0, result.output
    findings = json.loads((tmp_path / "f.json").read_text())
    passed = next(v for k, v in findings.items() if k != "_experiment")["humaneval"]["passed"]
    assert passed["unpaired"] == {"baseline_only": 0, "variant_only": 0, "skipped": 0}
    assert passed["n_items"] == 6 and passed["variant"]["score"] == 1.0  # the first copy of each key counted
    assert passed["flips"] == {"right_to_wrong": 0, "wrong_to_right": 0}


def test_a_variant_dir_counts_only_records_of_its_current_options(tmp_path):
    """The store keeps records of earlier evaluator options (another ``config``) in samples.jsonl; like the
    store, compare counts only those of the options the variant was last evaluated with."""
    from teeny_stats.cli import load_variant_dir

    run = tmp_path / "exp" / "q4"
    run.mkdir(parents=True)
    old = [{"evaluator": "humaneval", "config": "humaneval-old", "key": f"HumanEval/{i}#0", "passed": True}
           for i in range(10)]
    new = [{"evaluator": "humaneval", "config": "humaneval-new", "key": f"HumanEval/{i}#0", "passed": i % 2 == 0}
           for i in range(6)]
    fid = [{"evaluator": "fidelity", "config": "fidelity-1", "key": f"chunk-{i}", "nll": 1.0} for i in range(3)]
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old + fid + new))
    loaded = load_variant_dir(run)
    assert [r["key"] for r in loaded.records["humaneval"]] == [f"HumanEval/{i}#0" for i in range(6)]
    assert [r["passed"] for r in loaded.records["humaneval"]] == [True, False] * 3
    assert len(loaded.records["fidelity"]) == 3


def test_a_variant_dir_has_the_artifact_size_its_run_recorded(tmp_path):
    from teeny_stats.cli import load_variant_dir

    run = write_run(tmp_path / "exp" / "q4", [True, False], [1.0])
    assert load_variant_dir(run).artifact_bytes is None  # nothing recorded, no artifact/: unknown, not guessed
    (tmp_path / "exp" / "results.json").write_text(json.dumps({"variants": [
        {"name": "original", "artifact_bytes": 999}, {"name": "q4", "artifact_bytes": 12345}]}))
    assert load_variant_dir(run).artifact_bytes == 12345
    assert load_variant_dir(run, name="shown as B").artifact_bytes == 12345


@pytest.mark.slow
def test_a_real_run_store_loads_as_the_run_counted_it(tiny_model, tmp_path):
    """`teeny run` twice with other fidelity options: compare reads the second run's records and the artifact
    size results.json holds (measured from artifact/ when results.json is gone)."""
    from teeny_core.cli import cli
    from teeny_stats.cli import load_variant_dir

    def run(chunks):
        lines = ['name = "store"', f'model = "{tiny_model("llama")}"', f'output_dir = "{tmp_path}"',
                 'device = "cpu"', "[evaluators.fidelity]", f"chunks = {chunks}", "chunk_len = 16",
                 "[profilers.system]", "benchmark = false",
                 "[[variants]]", 'name = "w8"', 'method = "rtn"', "bits = 8", 'granularity = "channel"']
        (tmp_path / "exp.toml").write_text("\n".join(lines) + "\n")
        out = CliRunner().invoke(cli, ["run", str(tmp_path / "exp.toml")])
        assert out.exit_code == 0, out.output

    run(3)
    run(5)
    store = tmp_path / "store"
    results = json.loads((store / "results.json").read_text())
    w8 = next(v for v in results["variants"] if v["name"] == "w8")
    lines = [json.loads(line) for line in (store / "w8" / "samples.jsonl").read_text().splitlines()]
    assert len({r["config"] for r in lines}) == 2 and len(lines) == 8  # both runs' records are in the store
    loaded = load_variant_dir(store / "w8")
    assert len(loaded.records["fidelity"]) == 5 == w8["metrics"]["fidelity"]["chunks"]
    assert {r["config"] for r in loaded.records["fidelity"]} == {lines[-1]["config"]}  # none of the first run's
    assert loaded.artifact_bytes == w8["artifact_bytes"] > 0
    (store / "results.json").unlink()
    assert load_variant_dir(store / "w8").artifact_bytes == w8["artifact_bytes"]


def test_compare_json_into_a_read_only_directory_is_one_line_before_work(tmp_path, teeny_cli, read_only):
    a = write_run(tmp_path / "exp" / "original", [True, False] * 10, [1.0] * 5, method="none")
    b = write_run(tmp_path / "exp" / "q4", [True, True] * 10, [1.5] * 5)
    (tmp_path / "ro").mkdir()
    read_only(tmp_path / "ro")
    result = CliRunner().invoke(teeny_cli, ["compare", str(a), str(b), "--json", str(tmp_path / "ro" / "f.json")])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --json") and "is not writable" in lines[0], result.output
    assert list((tmp_path / "ro").iterdir()) == []
