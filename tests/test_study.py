"""Several models in one experiment (`models = [...]`): each model a resumable sub-run, one index and one report
with the paired pass@1 drop and the KL against parameter count, and `teeny recommend` across models."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest

from teeny_core.errors import TeenyError
from teeny_core.study import build_study, check_study, recommend_across, reuses_token_ids

DOC = Path(__file__).resolve().parents[1] / "docs" / "experiment-format.md"
VALID = {"name": "t", "models": ["org/a", "org/b"], "variants": [{"name": "w4", "method": "rtn", "bits": 4}]}
ITEMS = 40

# A pass/fail evaluator whose outcomes depend on the model: item i passes when the model's most likely next
# token at position i of a fixed text is even. Installed the way pip installs a plugin.
PROBE = '''
    import dataclasses

    from teeny_core import Evaluator, Metric, Options, hookimpl

    TEXT = "def add(a, b):\\n    return a + b\\n\\nclass Point:\\n    x: int = 0\\n" * 8


    @dataclasses.dataclass
    class ProbeOptions(Options):
        pass


    class Probe(Evaluator):
        """Pass/fail items decided by the model's argmax over a fixed text."""

        name = "probe"
        Options = ProbeOptions
        metrics = {"pass@1": Metric("pass@1", higher_is_better=True, item_field="passed")}
        headline = "pass@1"

        def evaluate(self, model, options, ctx):
            ids = model.tokenizer(TEXT)["input_ids"][:ITEMS + 1]
            top = model.logprobs([ids])[0].argmax(-1)
            done = ctx.done()
            for i in range(ITEMS):
                if f"probe-{i}" not in done:
                    ctx.write({"key": f"probe-{i}", "task_id": f"probe/{i}", "sample": 0,
                               "passed": int(top[i]) % 2 == 0})

        def summarize(self, records, options):
            return {"pass@1": sum(r["passed"] for r in records) / len(records)} if records else {}


    @hookimpl
    def teeny_register_evaluators(register):
        register(Probe)
'''.replace("ITEMS", str(ITEMS))


def doc_rows() -> list[tuple[str, str]]:
    text = DOC.read_text()
    section = text.split("### Several models: bad input and its error", 1)[1].split("## Bad input and its error")[0]
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^\| `(.+)` \| `(.+)` \|$", section, re.M)]


@pytest.fixture(scope="module")
def core_only():
    from teeny_core.plugins import Plugins

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEENY_LOAD_PLUGINS", "")
        yield Plugins.load()


def test_the_doc_lists_the_bad_inputs_of_models():
    assert len(doc_rows()) >= 10


@pytest.mark.parametrize("snippet,expected", doc_rows())
def test_bad_models_input_gives_its_one_line_error(core_only, snippet, expected):
    data = {**VALID, **tomllib.loads(snippet)}
    with pytest.raises(TeenyError) as info:
        build_study(data, core_only, where="exp.toml")
    message = str(info.value)
    assert expected in message and message.startswith("exp.toml: ") and "\n" not in message


def test_each_model_gets_the_same_experiment_under_the_run(core_only, tmp_path):
    study = build_study({**VALID, "output_dir": str(tmp_path), "models": ["org/a", {"name": "big", "path": "x/b"}],
                         "limit": 7, "seed": 3}, core_only)
    assert [m.name for m in study.models] == ["a", "big"]
    assert [e.model for e in study.experiments] == ["org/a", "x/b"]
    assert [e.root for e in study.experiments] == [tmp_path / "t" / "models" / "a", tmp_path / "t" / "models" / "big"]
    a, b = (e.to_dict() for e in study.experiments)
    assert {k: v for k, v in a.items() if k not in ("name", "model")} == \
        {k: v for k, v in b.items() if k not in ("name", "model")}
    assert a["limit"] == 7 and a["seed"] == 3 and a["variants"][0]["options"]["bits"] == 4


def test_one_model_experiments_refuse_models_in_build_experiment(core_only):
    from teeny_core.experiment import build_experiment

    with pytest.raises(TeenyError, match="'models' lists several models"):
        build_experiment(VALID, core_only)


def test_which_calibrators_give_token_ids(core_only):
    assert reuses_token_ids(core_only, {"method": "random-tokens"})
    assert not any(reuses_token_ids(core_only, {"method": m}) for m in ("code", "text-file", "jsonl"))


@pytest.fixture(scope="module")
def two_tokenizer_models(tmp_path_factory, tiny_tokenizer):
    from teeny_core.testing import build_tiny_model, build_tokenizer

    root = tmp_path_factory.mktemp("tok")
    return (build_tiny_model("llama", root / "a", hidden=64, tokenizer=build_tokenizer(400)),
            build_tiny_model("llama", root / "b", hidden=64, tokenizer=tiny_tokenizer))


def test_token_id_calibration_across_different_tokenizers_is_refused_before_work(core_only, two_tokenizer_models,
                                                                                 tmp_path):
    a, b = two_tokenizer_models
    data = {"name": "t", "output_dir": str(tmp_path / "runs"), "models": [str(a), str(b)],
            "calibration": {"method": "random-tokens", "samples": 2, "seq_len": 16},
            "variants": [{"name": "mixed", "method": "rtn", "target_bits": 3.5, "group_size": 32}]}
    with pytest.raises(TeenyError) as info:
        check_study(build_study(data, core_only), core_only)
    assert str(info.value) == (
        "models 'a' and 'b' have different tokenizers (400 and 512 tokens), but calibration method 'random-tokens' "
        "gives token ids that every model reuses; use a calibrator that reads text (code, text-file, jsonl) or "
        "models with one tokenizer")
    assert not (tmp_path / "runs").exists()
    # text calibrators tokenize the same text for each model; a variant that does not calibrate reuses nothing
    check_study(build_study({**data, "calibration": {"method": "code", "samples": 2, "seq_len": 16}}, core_only),
                core_only)
    check_study(build_study({**data, "variants": [{"name": "w4", "method": "rtn", "group_size": 32}]}, core_only),
                core_only)


# -- end to end: two tiny models of different sizes, one RTN variant --------------------------------

@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("probe") / "site"
    site.mkdir()
    (site / "teeny_probe.py").write_text(textwrap.dedent(PROBE).lstrip())
    info = site / "teeny_probe-1.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: teeny-probe\nVersion: 1.0.0\n")
    (info / "entry_points.txt").write_text("[teeny]\nprobe = teeny_probe\n")
    return site


@pytest.fixture(scope="module")
def sized_models(tmp_path_factory, tiny_tokenizer):
    from teeny_core.testing import build_tiny_model

    root = tmp_path_factory.mktemp("sizes")
    return (build_tiny_model("llama", root / "small", hidden=64, tokenizer=tiny_tokenizer),
            build_tiny_model("llama", root / "large", hidden=128, layers=3, seed=1, tokenizer=tiny_tokenizer))


def write_study(root: Path, small: Path, large: Path, chunks: int = 4) -> Path:
    exp = root / "exp.toml"
    exp.write_text(f'''name = "sizes"
models = ["{small}", "{large}"]
output_dir = "{root / 'runs'}"
device = "cpu"
[executor]
name = "inline"
[evaluators.fidelity]
chunks = {chunks}
chunk_len = 64
[evaluators.probe]
[analyzers.significance]
resamples = 2000
[profilers.system]
benchmark = false
[[variants]]
name = "w2"
method = "rtn"
bits = 2
group_size = 32
''')
    return exp


def teeny(site: Path, *args: str, popen: bool = False):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEENY_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    env["COLUMNS"] = "250"
    cmd = [sys.executable, "-m", "teeny_core.cli", *args]
    if popen:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


def stored_parameters(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for shard in model_dir.glob("*.safetensors"):
        with safe_open(str(shard), "pt") as f:
            total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return total


def passed(run: Path, variant: str) -> dict[str, bool]:
    records = [json.loads(line) for line in (run / variant / "samples.jsonl").read_text().splitlines()]
    return {r["key"]: r["passed"] for r in records if r["evaluator"] == "probe"}


@pytest.fixture(scope="module")
def study_run(tmp_path_factory, site, sized_models):
    root = tmp_path_factory.mktemp("study")
    out = teeny(site, "run", str(write_study(root, *sized_models)))
    assert out.returncode == 0, out.stdout + out.stderr
    return root / "runs" / "sizes", out.stdout


@pytest.mark.slow
def test_the_variant_runs_on_both_models_with_its_own_baseline(study_run, sized_models):
    run, _ = study_run
    index = json.loads((run / "study.json").read_text())
    assert [(m["name"], m["run"]) for m in index["models"]] == [("small", "models/small"), ("large", "models/large")]
    assert [m["parameters"] for m in index["models"]] == [stored_parameters(d) for d in sized_models]
    assert index["models"][0]["parameters"] < index["models"][1]["parameters"] and index["reference"] == "large"
    for model in ("small", "large"):
        results = json.loads((run / "models" / model / "results.json").read_text())
        assert [(v["name"], v["status"]) for v in results["variants"]] == [("original", "ok"), ("w2", "ok")]
        w2 = results["variants"][1]
        assert w2["metrics"]["fidelity"]["kl_mean"] > 0 and set(w2["metrics"]) == {"fidelity", "probe"}
        assert len(passed(run / "models" / model, "w2")) == ITEMS


@pytest.mark.slow
def test_the_degradation_figure_and_section_hold_the_paired_drop_and_the_kl(study_run):
    from teeny_core.study import load_study
    from teeny_core.study_report import degradation_rows
    from teeny_stats.stats import paired_bootstrap

    run, stdout = study_run
    png = run / "plots" / "degradation.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    index, per_model = load_study(run)
    rows = degradation_rows(index, per_model)
    assert [(r["family"], r["model"]) for r in rows] == [("w2", "small"), ("w2", "large")]
    for row in rows:
        base, var = passed(run / "models" / row["model"], "original"), passed(run / "models" / row["model"], "w2")
        keys = list(base)  # in the order the records were written, as the analyzer pairs them
        want = paired_bootstrap([float(base[k]) for k in keys], [float(var[k]) for k in keys], resamples=2000,
                                seed=0, confidence=0.95)  # an independent call on the records as stored
        assert row["delta"] == pytest.approx(sum(var.values()) / ITEMS - sum(base.values()) / ITEMS, abs=1e-12)
        assert row["delta_ci"] == pytest.approx(list(want.delta_ci), abs=1e-12)
        assert row["mde"] > 0 and row["verdict"]
        metrics = json.loads((run / "models" / row["model"] / "w2" / "metrics.json").read_text())
        assert row["kl"] == metrics["fidelity"]["kl_mean"]
        assert f"w2 on {row['model']}" in stdout
    report = (run / "report.md").read_text()
    assert "## Degradation against size" in report and "![degradation](plots/degradation.png)" in report
    assert "| w2 | small |" in report and "| w2 | large |" in report


@pytest.mark.slow
def test_across_models_items_pair_with_the_largest_models_original(study_run):
    run, _ = study_run
    combined = json.loads((run / "study.json").read_text())["combined"]
    assert combined["baseline"] == "large/original"
    assert [v["name"] for v in combined["variants"]] == ["small/original", "small/w2", "large/original", "large/w2"]
    sig = combined["analysis"]["significance"]
    ref = passed(run / "models" / "large", "original")
    for name in ("small/original", "small/w2", "large/w2"):
        model, variant = name.split("/")
        other = passed(run / "models" / model, variant)
        r = sig[name]["probe"]["passed"]
        assert r["delta"] == pytest.approx((sum(other.values()) - sum(ref.values())) / ITEMS, abs=1e-12)
        flips = {"right_to_wrong": sum(ref[k] and not other[k] for k in ref),
                 "wrong_to_right": sum(other[k] and not ref[k] for k in ref)}
        assert r["flips"] == flips
        assert "fidelity" not in sig[name]  # different models' text windows are not the same items


@pytest.mark.slow
def test_recommend_across_the_run(study_run, site):
    run, _ = study_run
    out = teeny(site, "recommend", str(run), "--memory", "100GiB", "--within", "100")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("small/")  # everything keeps within 100 points: the smallest model wins
    out = teeny(site, "recommend", str(run), "--memory", "100GiB")
    assert out.returncode == 2 and "give --within N" in out.stderr
    out = teeny(site, "report", str(run))
    assert out.returncode == 0 and "degradation" in out.stdout


@pytest.mark.slow
def test_resume_after_a_kill_redoes_nothing_for_a_finished_model(tmp_path, site, sized_models):
    exp = write_study(tmp_path, *sized_models, chunks=24)
    run = tmp_path / "runs" / "sizes"
    proc = teeny(site, "run", str(exp), popen=True)
    deadline = time.time() + 600
    while not ((run / "models" / "small" / "results.json").exists() and (run / "models" / "large").exists()):
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.time() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "study.json").exists()
    small = run / "models" / "small"
    kept = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in [*small.glob("*/samples.jsonl"),
                                                                *small.glob("*/done.json"),
                                                                *small.glob("*/artifact/*"), *small.glob("_cache/**/*")]
            if p.is_file()}
    assert any(p.name == "samples.jsonl" for p in kept) and any(p.parent.name == "artifact" for p in kept)
    out = teeny(site, "run", str(exp))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "small: original: already complete" in out.stdout and "small: w2: already complete" in out.stdout
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in kept} == kept
    assert len(passed(run / "models" / "large", "w2")) == ITEMS and (run / "plots" / "degradation.png").exists()


# -- the recommendation policy across models, on results whose intervals are known ------------------

MiB = 2**20


def entry(name: str, params: int, memory: int, status: str = "ok") -> dict:
    return {"name": name, "method": "rtn", "describe": {"bits": 4}, "status": status, "parameters": params,
            "metrics": {"probe": {"pass@1": 0.5}}, "profile": {"worker": {"peak_rss_bytes": memory}}}


def paired(delta: float, ci: list[float], verdict: str, mde: float | None) -> dict:
    return {"probe": {"passed": {"kind": "pass/fail", "metric": "pass@1", "delta": delta, "delta_ci": ci,
                                 "verdict": verdict, "mde": mde, "n_problems": 40, "p_adjusted": 0.5,
                                 "baseline": {"score": 0.6, "ci": [0.45, 0.74]},
                                 "variant": {"score": 0.6 + delta, "ci": [0.4 + delta, 0.75 + delta]}}}}


@pytest.fixture
def index() -> dict:
    """Small model 100M, large 1B (the reference). small/original keeps within 8 points (MDE 8); small/w4 has a
    wide interval (not significantly different, but down to -30 points); small/w8 has the interval [0, 0] of too
    few problems to detect anything; large/w4 keeps within 3 points (MDE 4)."""
    return {"combined": {
        "baseline": "large/original",
        "evaluators": {"probe": {"headline": "pass@1", "metrics": {
            "pass@1": {"label": "pass@1", "higher_is_better": True, "item_field": "passed"}}}},
        "variants": [entry("small/original", 10**8, 600 * MiB), entry("small/w4", 10**8, 300 * MiB),
                     entry("small/w8", 10**8, 200 * MiB),
                     entry("large/original", 10**9, 2048 * MiB), entry("large/w4", 10**9, 900 * MiB)],
        "analysis": {"significance": {
            "small/original": paired(-0.05, [-0.08, 0.0], "no significant difference (MDE 8.0 pp)", 0.08),
            "small/w4": paired(-0.10, [-0.30, 0.05], "no significant difference (MDE 30.0 pp)", 0.3),
            "small/w8": paired(0.0, [0.0, 0.0], "no significant difference (too few items, n=2, to detect any)",
                               None),
            "large/w4": paired(-0.01, [-0.03, 0.0], "no significant difference (MDE 4.0 pp)", 0.04)}}}}


def test_the_smallest_model_shown_within_the_margin_wins_not_a_wide_interval(index):
    best, why = recommend_across(index, "4GiB", 10)
    assert best["name"] == "small/original"
    assert "paired difference -5.0 pp [-8.0, +0.0]" in why and "this run detects drops of 8 points" in why
    assert "small/w4 (lower end -30.0 pp, MDE 30 pp)" in why
    assert "small/w8 (lower end +0.0 pp, too few problems to detect any drop)" in why and "\n" not in why
    # a run whose smallest detectable drop is larger than the margin shows nothing for the smaller model
    assert recommend_across(index, "4GiB", 7)[0]["name"] == "large/w4"


def test_a_tighter_margin_moves_to_the_larger_model_and_its_smallest_variant(index):
    assert recommend_across(index, "4GiB", 5)[0]["name"] == "large/w4"
    assert recommend_across(index, "1GiB", 5)[0]["name"] == "large/w4"
    best, why = recommend_across(index, "4GiB", 1)
    assert best["name"] == "large/original" and "it is the reference" in why


def test_nothing_under_the_budget_that_keeps_the_margin_is_one_line(index):
    with pytest.raises(TeenyError) as info:
        recommend_across(index, "800MiB", 5)
    assert str(info.value) == ("no model and variant under 800.0 MiB is shown to keep pass@1 within 5 points of "
                               "large/original; those that keep it: large/original (2.0 GiB), large/w4 (900.0 MiB)")


def test_failed_variants_and_bad_margins_are_never_recommended(index):
    index["combined"]["variants"][0]["status"] = "failed"
    best, why = recommend_across(index, "4GiB", 10)
    assert best["name"] == "large/w4" and "not considered (failed): small/original" in why
    for bad in (0, -5, 101):
        with pytest.raises(TeenyError, match=f"--within {bad:g} is not valid; expected percentage points"):
            recommend_across(index, "4GiB", bad)
    index["combined"]["evaluators"] = {"fidelity": {"headline": "perplexity", "metrics": {
        "perplexity": {"label": "perplexity", "higher_is_better": False, "item_field": "nll"}}}}
    with pytest.raises(TeenyError, match="this study has no pass/fail benchmark"):
        recommend_across(index, "4GiB", 10)


def test_within_is_refused_for_a_run_of_one_model(tmp_path):
    from click.testing import CliRunner

    from teeny_core.cli import cli

    (tmp_path / "results.json").write_text(json.dumps({"experiment": "one", "baseline": "original", "variants": [
        {"name": "original", "method": "none", "metrics": {}, "profile": {}}]}))
    out = CliRunner().invoke(cli, ["recommend", str(tmp_path), "--memory", "1GiB", "--within", "5"])
    assert out.exit_code == 2 and f"--within applies to a run of several models; {tmp_path} is a run of one" \
        in out.output
