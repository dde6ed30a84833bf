"""The ``ray`` executor on a local Ray cluster (2 CPUs, tiny models): the same metrics as the local executor, a
worker killed with ``kill -9`` mid-evaluation resumes with every item exactly once, a variant that fails in its task
is reported failed while the others finish, and a worker that cannot see the run directory says so."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from teeny_core.testing import ExecutorContract, experiment_toml

ray = pytest.importorskip("ray", reason="ray is not installed (pip install teeny-ray)")

BOOM = '''
    """A quantizer that always fails: its variant must be reported failed, the others must finish."""
    import dataclasses
    from teeny_core import hookimpl, Quantizer
    from teeny_core.options import NoOptions

    class Boom(Quantizer):
        name = "boom"
        Options = NoOptions

        def quantize(self, source, calibration, options, out_dir):
            raise RuntimeError("boom: this quantizer always fails")

    @hookimpl
    def teeny_register_quantizers(register):
        register(Boom)
'''


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray cluster whose workers can import the test's plugin (PYTHONPATH is inherited by the raylet)."""
    site = tmp_path_factory.mktemp("ray-site")
    (site / "teeny_tp_boom.py").write_text(textwrap.dedent(BOOM).lstrip())
    info = site / "teeny_tp_boom-1.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: teeny-tp-boom\nVersion: 1.0.0\n")
    (info / "entry_points.txt").write_text("[teeny]\ntp-boom = teeny_tp_boom\n")
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), old) if p)
    try:
        context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        yield {"address": context.address_info["gcs_address"], "env": dict(os.environ)}
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


class TestRayExecutorContract(ExecutorContract):
    executor = "ray"

    @pytest.fixture(autouse=True)
    def _on_the_cluster(self, cluster):
        """The contract's tasks run on this module's local cluster."""


def experiment(root: Path, model: Path, name: str, chunks: int, boom: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    exp = root / f"{name}.toml"
    variants = "".join(f'''
[[variants]]
name = "w{bits}"
method = "rtn"
bits = {bits}
group_size = 64
''' for bits in (8, 4))
    if boom:
        variants += '\n[[variants]]\nname = "boom"\nmethod = "boom"\n'
    exp.write_text(experiment_toml(name, model, root / "runs", chunks=chunks, chunk_len=64,
                                   body="[executor.ray]\ncpus_per_variant = 1\n" + variants))
    return exp


def teeny(env: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "teeny_core.cli", *args], env={**env, "COLUMNS": "200"},
                          capture_output=True, text=True, timeout=timeout)


def metrics(results: Path) -> dict[str, dict]:
    data = json.loads(results.read_text())
    return {v["name"]: v["metrics"] for v in data["variants"]}


def keys(samples: Path) -> list[str]:
    return [json.loads(line)["key"] for line in samples.read_text().splitlines() if line.strip()]


def test_ray_gives_the_local_executors_metrics(cluster, tiny_model, tmp_path):
    model = tiny_model("llama")
    local = teeny(cluster["env"], "run", str(experiment(tmp_path / "local", model, "same", 6)))
    assert local.returncode == 0, local.stderr + local.stdout
    remote = teeny(cluster["env"], "run", str(experiment(tmp_path / "ray", model, "same", 6)),
                   "--executor", "ray", "--address", cluster["address"])
    assert remote.returncode == 0, remote.stderr + remote.stdout
    expected = metrics(tmp_path / "local" / "runs" / "same" / "results.json")
    got = metrics(tmp_path / "ray" / "runs" / "same" / "results.json")
    assert set(got) == set(expected) == {"original", "w8", "w4"}
    for variant, values in expected.items():
        for name, value in values["fidelity"].items():
            if isinstance(value, float):
                assert got[variant]["fidelity"][name] == pytest.approx(value, rel=1e-5, abs=1e-7, nan_ok=True), (variant, name)
    assert got["w4"]["fidelity"]["kl_mean"] > got["w8"]["fidelity"]["kl_mean"]


def test_a_worker_killed_mid_evaluation_is_retried_and_every_item_counted_once(cluster, tiny_model, tmp_path):
    import psutil

    chunks = 200  # long enough that a fast machine is still evaluating when the worker is killed
    exp = experiment(tmp_path, tiny_model("llama"), "killed", chunks)
    samples = tmp_path / "runs" / "killed" / "w4" / "samples.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "teeny_core.cli", "run", str(exp), "--executor", "ray",
                             "--address", cluster["address"]], env=cluster["env"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    killed = []
    deadline = time.time() + 400
    while not killed and time.time() < deadline and proc.poll() is None:
        if samples.exists() and samples.read_bytes().count(b"\n") >= 3:
            for p in psutil.process_iter(["cmdline"]):
                if any("_run_on_worker" in part for part in (p.info["cmdline"] or [])):
                    p.send_signal(signal.SIGKILL)
                    killed.append(p.pid)
        time.sleep(0.02)
    out, _ = proc.communicate(timeout=600)
    assert killed, "the run ended before a worker could be killed: make the evaluation longer"
    assert proc.returncode == 0, out
    for variant in ("original", "w8", "w4"):
        found = keys(tmp_path / "runs" / "killed" / variant / "samples.jsonl")
        assert len(found) == len(set(found)) == chunks, variant
    results = json.loads((tmp_path / "runs" / "killed" / "results.json").read_text())
    assert all(v.get("status") != "failed" for v in results["variants"])
    assert {v["name"]: v["metrics"]["fidelity"]["chunks"] for v in results["variants"]} == \
        {"original": chunks, "w8": chunks, "w4": chunks}


def test_a_variant_that_fails_in_its_task_is_reported_while_the_others_finish(cluster, tiny_model, tmp_path):
    exp = experiment(tmp_path, tiny_model("llama"), "boom", 4, boom=True)
    out = teeny(cluster["env"], "run", str(exp), "--executor", "ray", "--address", cluster["address"])
    assert "boom: this quantizer always fails" in out.stdout + out.stderr
    results = json.loads((tmp_path / "runs" / "boom" / "results.json").read_text())
    by_name = {v["name"]: v for v in results["variants"]}
    assert by_name["boom"]["status"] == "failed"
    assert "boom: this quantizer always fails" in by_name["boom"]["error"]
    assert by_name["w4"]["metrics"]["fidelity"]["chunks"] == 4
    assert by_name["w8"]["metrics"]["fidelity"]["chunks"] == 4


def test_a_worker_that_cannot_see_the_run_directory_fails_with_one_line(tmp_path):
    from teeny_ray.executor import _run_on_worker

    task = {"run_dir": str(tmp_path / "elsewhere"), "experiment": {}, "variant": "w4", "prepare": False}
    outcome = _run_on_worker(task, ".teeny-ray-0123", events=None)
    assert outcome["ok"] is False
    assert "cannot see the run directory" in outcome["error"] and "\n" not in outcome["error"]


def test_address_is_refused_for_an_executor_without_one(tiny_model, tmp_path):
    exp = experiment(tmp_path, tiny_model("llama"), "addr", 2)
    out = teeny(dict(os.environ), "run", str(exp), "--executor", "local", "--address", "auto")
    assert out.returncode == 2
    assert "takes no cluster address" in out.stderr + out.stdout


def test_ctrl_c_on_the_driver_cancels_the_tasks_and_leaves_a_resumable_run(cluster, tiny_model, tmp_path):
    import psutil

    def workers() -> list:
        return [p for p in psutil.process_iter(["cmdline"])
                if any("_run_on_worker" in part for part in (p.info["cmdline"] or []))]

    chunks = 200  # long enough that a fast machine is still evaluating when the driver gets Ctrl-C
    exp = experiment(tmp_path, tiny_model("llama"), "interrupted", chunks)
    samples = tmp_path / "runs" / "interrupted" / "original" / "samples.jsonl"
    args = [sys.executable, "-m", "teeny_core.cli", "run", str(exp), "--executor", "ray", "--address",
            cluster["address"]]
    # default SIGINT in the child, as on a terminal: a CI job started in the background inherits it ignored
    proc = subprocess.Popen(args, env=cluster["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if samples.exists() and samples.read_bytes().count(b"\n") >= 3:
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.02)
    proc.communicate(timeout=120)
    assert proc.returncode != 0, "the run ended before it could be interrupted: make the evaluation longer"
    deadline = time.time() + 30
    while workers() and time.time() < deadline:
        time.sleep(0.5)
    assert not workers(), "a cancelled variant's Ray worker is still running"
    done_before = len(keys(samples))
    assert 3 <= done_before < chunks
    again = teeny(cluster["env"], *args[3:])
    assert again.returncode == 0, again.stdout + again.stderr
    found = keys(samples)
    assert len(found) == len(set(found)) == chunks
