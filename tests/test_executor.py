"""The executor seam: every variant in a worker process of its own. A worker that segfaults mid-evaluation is a
failed variant (with the reason) while the others finish; running again completes it with every item once;
the worker-process results equal those of the in-process path; the profile holds the worker's memory, the
runtime and the weights it held; tasks are plain picklable data run by a module-level function."""

import dataclasses
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

CHUNKS = 6

# A third-party runtime that loads like `transformers` but kills its own process with SIGSEGV on the third
# scored window, until the file named by TP_SEGV_HEALED exists (a "fixed kernel").
SEGV_PLUGIN = '''
    import os
    import signal

    from teeny_core import hookimpl
    from teeny_core.builtin.transformers_runtime import TransformersRuntime


    class SegvRuntime(TransformersRuntime):
        """transformers, with a kernel that segfaults on the third window."""

        name = "tp-segv"
        native = {}

        def load(self, artifact, options):
            model = super().load(artifact, options)
            scored = model.logprobs
            calls = []

            def logprobs(token_ids):
                calls.append(1)
                if len(calls) == 3 and not os.path.exists(os.environ["TP_SEGV_HEALED"]):
                    os.kill(os.getpid(), signal.SIGSEGV)
                return scored(token_ids)
            model.logprobs = logprobs
            return model


    @hookimpl
    def teeny_register_runtimes(register):
        register(SegvRuntime)
'''


def install(site: Path, source: str) -> None:
    """What `pip install` leaves: the module and a dist-info naming it as a `teeny` entry point."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "teeny_tp_segv.py").write_text(textwrap.dedent(source).lstrip())
    info = site / "teeny_tp_segv-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: teeny-tp-segv\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[teeny]\ntp-segv = teeny_tp_segv\n")


def experiment(root: Path, model: Path, name: str, variants: str, extra: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{name}.toml"
    path.write_text(f'''name = "{name}"
model = "{model}"
output_dir = "{root / 'runs'}"
device = "cpu"
{extra}
[evaluators.fidelity]
chunks = {CHUNKS}
chunk_len = 32
[profilers.system]
benchmark = false
''' + textwrap.dedent(variants))
    return path


def teeny(site: Path, *args: str, healed: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEENY_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    env["TP_SEGV_HEALED"] = str(healed)
    return subprocess.run([sys.executable, "-m", "teeny_core.cli", *args], env=env, capture_output=True,
                          text=True, timeout=600)


def keys(run: Path, variant: str) -> list[str]:
    return [json.loads(line)["key"] for line in (run / variant / "samples.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_segfaulting_worker_fails_its_variant_only_and_a_rerun_completes_it(tmp_path, tiny_model):
    site, healed = tmp_path / "site", tmp_path / "healed"
    install(site, SEGV_PLUGIN)
    exp = experiment(tmp_path, tiny_model("llama"), "crash", '''
        [[variants]]
        name = "crashy"
        method = "rtn"
        bits = 8
        runtime = "tp-segv"
        [[variants]]
        name = "w4"
        method = "rtn"
        bits = 4
        group_size = 32
        ''')
    run = tmp_path / "runs" / "crash"
    out = teeny(site, "run", str(exp), healed=healed)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert "1 variant(s) failed: crashy" in out.stderr
    results = json.loads((run / "results.json").read_text())
    by_name = {v["name"]: v for v in results["variants"]}
    crashy = by_name["crashy"]
    assert crashy["status"] == "failed" and crashy["error"] == "worker killed by SIGSEGV", crashy
    assert crashy["failed_stage"] == "fidelity" and crashy["metrics"] == {}
    assert by_name["w4"]["status"] == "ok" and by_name["original"]["status"] == "ok"
    assert by_name["w4"]["metrics"]["fidelity"]["chunks"] == CHUNKS
    assert "w4" in results["analysis"]["significance"] and "crashy" not in results["analysis"]["significance"]
    assert keys(run, "crashy") == ["chunk-0", "chunk-1"]  # what finished before the crash is kept
    report = (run / "report.md").read_text()
    assert "## Failed variants" in report and "| crashy | fidelity | worker killed by SIGSEGV |" in report
    w4_samples = (run / "w4" / "samples.jsonl").read_bytes()

    healed.touch()
    out = teeny(site, "run", str(exp), healed=healed)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert all(v["status"] == "ok" for v in results["variants"])
    assert keys(run, "crashy") == [f"chunk-{i}" for i in range(CHUNKS)]  # resumed: every window once
    assert (run / "w4" / "samples.jsonl").read_bytes() == w4_samples  # the finished variant was not redone
    crashy = next(v for v in results["variants"] if v["name"] == "crashy")
    assert crashy["profile"]["runtime"] == "tp-segv" and crashy["metrics"]["fidelity"]["chunks"] == CHUNKS


@pytest.mark.slow
def test_worker_processes_give_the_results_of_the_in_process_path(tmp_path, tiny_model):
    from click.testing import CliRunner

    from teeny_core.cli import cli

    model = tiny_model("llama")
    variants = '''
        [[variants]]
        name = "w4"
        method = "rtn"
        bits = 4
        group_size = 32
        '''
    metrics, profiles = {}, {}
    for executor in ("inline", "local"):
        exp = experiment(tmp_path / executor, model, "same", variants)
        out = CliRunner().invoke(cli, ["run", str(exp), "--executor", executor])
        assert out.exit_code == 0, out.output
        results = json.loads((tmp_path / executor / "runs" / "same" / "results.json").read_text())
        metrics[executor] = {v["name"]: v["metrics"] for v in results["variants"]}
        profiles[executor] = {v["name"]: v["profile"] for v in results["variants"]}
    assert metrics["local"].keys() == metrics["inline"].keys() == {"original", "w4"}
    for name in ("original", "w4"):
        assert metrics["local"][name]["fidelity"] == pytest.approx(metrics["inline"][name]["fidelity"], rel=1e-9)
    workers = {name: p["worker"]["pid"] for name, p in profiles["local"].items()}
    assert os.getpid() not in workers.values() and len(set(workers.values())) == 2  # a process per variant
    assert {p["worker"]["pid"] for p in profiles["inline"].values()} == {os.getpid()}


def test_profile_holds_the_worker_memory_runtime_and_weights(tmp_path, tiny_model):
    from safetensors import safe_open

    from teeny_core.executor import VariantTask
    from teeny_core.worker import run_variant_task
    from teeny_core.experiment import load_experiment
    from teeny_core.plugins import Plugins

    model = tiny_model("llama")
    plugins = Plugins.load()
    exp = load_experiment(experiment(tmp_path, model, "prof", "", extra=""), plugins)
    exp.profilers = {"system": dataclasses.replace(exp.profilers["system"], benchmark=True, prompt_tokens=8,
                                                   new_tokens=3, batch=2)}
    task = VariantTask(str(exp.root.resolve()), exp.to_dict(), "original", prepare=True)
    events = []
    outcome = run_variant_task(pickle.loads(pickle.dumps(task)), events.append)
    assert outcome.ok, outcome
    profile = json.loads((exp.root / "original" / "profile.json").read_text())
    assert profile["runtime"] == "transformers"
    worker = profile["worker"]
    assert worker["pid"] == os.getpid()
    assert 0 < worker["baseline_rss_bytes"] <= worker["peak_rss_bytes"]
    # the float32 model's tensors, read from its safetensors file (an independent count); the runtime also
    # holds the rotary-embedding frequencies (head_dim / 2 float32 per layer type: well under 4 KiB)
    with safe_open(str(model / "model.safetensors"), "pt") as f:
        stored = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys())
    assert stored <= profile["load"]["weight_bytes"] <= stored + 4096
    bench = profile["benchmark"]
    assert bench["throughput_batch"] == 2 and bench["throughput_tokens_per_s"] > 0 and bench["ttft_s"] > 0
    progress = [e for e in events if e.get("stage") == "fidelity"]
    assert progress[-1] == {"variant": "original", "stage": "fidelity", "done": CHUNKS, "total": CHUNKS}
    assert all(e["variant"] == "original" for e in events)


def test_a_task_is_plain_data_and_its_function_is_importable_by_name():
    """What a Ray executor relies on: the task pickles, the function pickles by reference, the outcome too."""
    from teeny_core.executor import Outcome, VariantTask
    from teeny_core.worker import run_variant_task

    task = VariantTask("/shared/runs/x", {"name": "x", "variants": []}, "w4")
    assert pickle.loads(pickle.dumps(task)) == task
    assert pickle.loads(pickle.dumps(run_variant_task)) is run_variant_task
    outcome = Outcome("w4", False, "worker killed by SIGKILL (out of memory?)", "load")
    assert pickle.loads(pickle.dumps(outcome)) == outcome


def test_describe_exit_names_the_signal():
    from teeny_core.worker import describe_exit

    assert describe_exit(-11) == "worker killed by SIGSEGV"
    assert describe_exit(-9) == "worker killed by SIGKILL (out of memory?)"
    assert describe_exit(3) == "worker exited with status 3 without a result"


def test_unknown_executor_on_the_command_line_is_a_one_line_error(tmp_path, tiny_model):
    from click.testing import CliRunner

    from teeny_core.cli import cli

    exp = experiment(tmp_path, tiny_model("llama"), "bad", "")
    out = CliRunner().invoke(cli, ["run", str(exp), "--executor", "slurm"])
    assert out.exit_code == 2
    assert out.output.startswith("Error: unknown executor 'slurm'; installed executors: inline, local")
    assert out.output.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_a_variant_that_raises_is_a_one_line_failure_with_its_traceback_kept(tmp_path, tiny_model):
    from teeny_core.executor import VariantTask
    from teeny_core.worker import run_variant_task
    from teeny_core.experiment import load_experiment
    from teeny_core.plugins import Plugins

    exp = load_experiment(experiment(tmp_path, tiny_model("llama"), "raises", '''
        [[variants]]
        name = "g48"
        method = "rtn"
        bits = 4
        group_size = 48
        '''), Plugins.load())
    events = []
    outcome = run_variant_task(VariantTask(str(exp.root.resolve()), exp.to_dict(), "g48"), events.append)
    assert not outcome.ok and outcome.stage == "quantize"
    assert "group_size=48 does not divide" in outcome.error and "\n" not in outcome.error
    log = (exp.root / "g48" / "error.log").read_text()
    assert "Traceback (most recent call last)" in log and "group_size=48 does not divide" in log
    assert not (exp.root / "g48" / "artifact").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM and the inherited ru_maxrss are Linux's")
def test_a_process_started_by_a_big_one_reports_its_own_peak_rss():
    """Benchmarks, quantizer metadata and tests start measuring children from big parents (a loaded model);
    getrusage's ru_maxrss would give each child at least the parent's size."""
    held = bytearray(600 * 2**20)
    held[::4096] = b"\x01" * len(held[::4096])  # touch every page: the parent's RSS holds 600 MiB
    code = ("import resource; from teeny_core.modeling import peak_rss_bytes; "
            "print(peak_rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)")
    own, inherited = map(int, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                             check=True).stdout.split())
    assert inherited >= 600 * 2**20  # the bug this guards against, still present in the kernel's counter
    assert own < 200 * 2**20
    del held
