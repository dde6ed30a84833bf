"""`kill -9` a run mid-quantization and mid-evaluation, run it again: every item exactly once, nothing lost,
no partial artifact used, and the same numbers as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from teeny_core.testing import experiment_toml

CHUNKS = 24


def write_experiment(root: Path, model: Path) -> Path:
    exp = root / "exp.toml"
    exp.write_text(experiment_toml("resume", model, root / "runs", chunks=CHUNKS, chunk_len=128, body='''[[variants]]
name = "w4"
method = "rtn"
bits = 4
group_size = 64
[[variants]]
name = "w3"
method = "rtn"
bits = 3
group_size = 64
'''))
    return exp


def start(exp: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "teeny_core.cli", "run", str(exp)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def kill_when(proc: subprocess.Popen, condition, timeout: float = 240) -> bool:
    """SIGKILL the run's process group as soon as condition() holds; False if the run ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        if condition():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("run neither finished nor reached the kill point")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer):
    from teeny_core.testing import build_tiny_model

    return build_tiny_model("llama", tmp_path_factory.mktemp("resume-model"), hidden=256, layers=4,
                            tokenizer=tiny_tokenizer)


def test_killed_runs_resume_exactly_once(tmp_path, model_dir):
    exp = write_experiment(tmp_path, model_dir)
    runs = tmp_path / "runs" / "resume"
    kills = [
        lambda: lines(runs / "original" / "samples.jsonl") >= 3,          # mid-evaluation of the baseline
        lambda: any(runs.glob("w4/.staging-artifact-*")),                   # mid-quantization
        lambda: 2 <= lines(runs / "w4" / "samples.jsonl") < CHUNKS,         # mid-evaluation of a variant
    ]
    killed = 0
    for condition in kills:
        killed += kill_when(start(exp), condition)
    assert killed >= 2, "the run was too fast to interrupt"
    proc = start(exp)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out.decode()
    assert not list(runs.rglob(".staging-*"))
    for variant in ("original", "w4", "w3"):
        records = [json.loads(line) for line in (runs / variant / "samples.jsonl").read_text().splitlines()]
        keys = [r["key"] for r in records]
        assert sorted(keys) == sorted(f"chunk-{i}" for i in range(CHUNKS)), variant

    # the same numbers as a run that was never interrupted
    clean = tmp_path / "clean"
    clean.mkdir()
    proc = start(write_experiment(clean, model_dir))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out.decode()
    for variant in ("original", "w4", "w3"):
        got = json.loads((runs / variant / "metrics.json").read_text())["fidelity"]
        want = json.loads((clean / "runs" / "resume" / variant / "metrics.json").read_text())["fidelity"]
        assert got == pytest.approx(want, rel=1e-9), variant
