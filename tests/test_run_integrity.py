"""Runs that lose nothing and count nothing twice: a garbled line, two runs on one directory, duplicated
records, a bad model or output path, a full disk. Each failure is one ``Error:`` line and leaves finished
results as they were."""

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from teeny_core.cli import cli

CHUNKS = 6


def experiment(root: Path, model, **extra) -> Path:
    exp = root / "exp.toml"
    top = "".join(f"{k} = {json.dumps(v)}\n" for k, v in {"name": "t", "model": str(model),
                                                          "output_dir": str(root / "runs"), "device": "cpu",
                                                          **extra}.items())
    exp.write_text(top + f'''[evaluators.fidelity]
chunks = {CHUNKS}
chunk_len = 32
[profilers.system]
benchmark = false
[analyzers]
[[variants]]
name = "w4"
method = "rtn"
bits = 4
group_size = 64
''')
    return exp


def run(*args: str):
    return CliRunner().invoke(cli, ["run", *map(str, args)])


def one_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def keys(path: Path) -> list[str]:
    return [json.loads(line)["key"] for line in path.read_text().splitlines()]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model):
    """A finished run, copied fresh for each test that changes it."""
    root = tmp_path_factory.mktemp("finished")
    result = run(experiment(root, tiny_model("llama")))
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture
def done_run(finished, tmp_path, tiny_model):
    subprocess.run(["cp", "-a", str(finished / "runs"), str(tmp_path)], check=True)
    exp = experiment(tmp_path, tiny_model("llama"))
    return exp, tmp_path / "runs" / "t"


def test_a_garbled_middle_line_is_quarantined_and_only_that_item_redone(done_run):
    exp, root = done_run
    samples = root / "w4" / "samples.jsonl"
    lines = samples.read_text().splitlines()
    lines[2] = "garbage"
    samples.write_text("\n".join(lines) + "\n")
    result = run(exp)
    assert result.exit_code == 0, result.output
    assert "1 unreadable line(s) of samples.jsonl moved to" in result.output and "already complete" not in result.output.split("w4")[-1]
    assert sorted(keys(samples)) == sorted(f"chunk-{i}" for i in range(CHUNKS))
    assert keys(samples)[:2] == ["chunk-0", "chunk-1"] and keys(samples)[-1] == "chunk-2"  # only chunk-2 redone
    assert (root / "w4" / "samples.jsonl.quarantine").read_text() == "garbage\n"
    assert json.loads((root / "w4" / "metrics.json").read_text())["fidelity"]["chunks"] == CHUNKS


@pytest.mark.parametrize("line", ["[" * 100_000 + "]" * 100_000, '{"key": "chunk-2", "kl": ' + "9" * 5000 + "}"],
                         ids=["nested 100,000 deep", "a 5,000-digit int"])
def test_a_hostile_middle_line_is_quarantined_and_redone(done_run, line):
    """JSON that Python refuses (RecursionError, the 4300-digit int limit) was a traceback from run and report."""
    exp, root = done_run
    samples = root / "w4" / "samples.jsonl"
    lines = samples.read_text().splitlines()
    lines[2] = line
    samples.write_text("\n".join(lines) + "\n")
    result = run(exp)
    assert result.exit_code == 0, result.output
    assert "1 unreadable line(s) of samples.jsonl moved to" in result.output
    assert sorted(keys(samples)) == sorted(f"chunk-{i}" for i in range(CHUNKS))
    assert (root / "w4" / "samples.jsonl.quarantine").read_text() == line + "\n"
    report = CliRunner().invoke(cli, ["report", str(root)])
    assert report.exit_code == 0, report.output


def test_duplicated_records_are_counted_once(done_run):
    exp, root = done_run
    samples = root / "w4" / "samples.jsonl"
    want = json.loads((root / "w4" / "metrics.json").read_text())["fidelity"]
    samples.write_text(samples.read_text() * 2)  # what two unlocked runs used to leave behind
    (root / "w4" / "done.json").unlink()  # make the run recompute the metrics from the file
    result = run(exp)
    assert result.exit_code == 0, result.output
    assert json.loads((root / "w4" / "metrics.json").read_text())["fidelity"] == pytest.approx(want, rel=1e-12)


def test_a_second_run_on_a_locked_directory_fails_naming_the_holder(done_run):
    from teeny_core.store import RunLock

    exp, root = done_run
    before = snapshot(root)
    with RunLock(root):
        one_error(run(exp), f"pid {os.getpid()} on host {socket.gethostname()}", str(root))
        one_error(run(exp, "--fresh"), "is in use by another teeny run")
    assert snapshot(root) == {**before, ".lock": b""}


def test_nothing_on_disk_changes_when_the_model_is_wrong(done_run, tmp_path, monkeypatch):
    exp, root = done_run
    before = snapshot(root)
    typo = experiment(tmp_path, tmp_path / "no-such-model")
    one_error(run(typo, "--fresh"), "no-such-model' not found")
    one_error(run(typo), "not found")
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    offline = experiment(tmp_path, "nobody-teeny/no-such-model")
    one_error(run(offline), "'nobody-teeny/no-such-model' cannot be resolved as a hub id")
    assert snapshot(root) == before  # manifest.json too; no original.stale-*, nothing deleted by --fresh


def test_output_dir_that_is_a_file(tmp_path, tiny_model):
    (tmp_path / "runs").write_text("not a directory")
    one_error(run(experiment(tmp_path, tiny_model("llama"))), f"{tmp_path / 'runs'} is a file; expected a directory")


@pytest.mark.parametrize("name,content,fragment", [
    ("w4/variant.json", "{garbled", "variant.json: not valid JSON"),
    ("w4/done.json", "{garbled", "done.json: not valid JSON"),
    ("w4/profile.json", "[]", "profile.json: expected a JSON object, found []"),
    ("w4/artifact/teeny-artifact.json", "garbage", "teeny-artifact.json: not valid JSON"),
    ("w4/artifact/config.json", "garbage", "config.json: not valid JSON"),
])
def test_a_garbled_file_in_a_finished_run_is_one_error_and_kept(done_run, name, content, fragment):
    exp, root = done_run
    (root / name).write_text(content)
    before = snapshot(root)
    one_error(run(exp), str(root / name.split("/")[0]), fragment)
    assert snapshot(root) == {**before, ".lock": b""}


def test_a_null_samples_file_is_quarantined_and_redone(done_run):
    exp, root = done_run
    (root / "w4" / "samples.jsonl").write_text("null\n")
    result = run(exp)
    assert result.exit_code == 0, result.output
    assert len(keys(root / "w4" / "samples.jsonl")) == CHUNKS
    assert (root / "w4" / "samples.jsonl.quarantine").read_text() == "null\n"


def test_disk_full_while_writing_an_artifact_or_a_cache_then_the_rerun_recovers(tmp_path, tiny_model):
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        model = str(tiny_model("llama"))
        quantize = ["quantize", model, "-m", "rtn", "-o", "group_size=64", "--out", str(disk / "art")]
        one_error(CliRunner().invoke(cli, quantize), "no space left on the device while writing", str(disk / "art"))
        assert list(disk.iterdir()) == []  # no partial artifact, no staging directory
        exp = experiment(tmp_path, model, output_dir=str(disk))
        result = run(exp)  # fails writing the fidelity reference cache or a record, after some progress lines
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1 and "no space left on the device while writing" in errors[0], result.output
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        assert CliRunner().invoke(cli, quantize).exit_code == 0
        result = run(exp)
        assert result.exit_code == 0, result.output
        for variant in ("original", "w4"):
            assert sorted(keys(disk / "t" / variant / "samples.jsonl")) == sorted(f"chunk-{i}" for i in range(CHUNKS))
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)  # lazy: a failed write may still hold a file


def test_a_torn_last_line_of_a_finished_variant_is_quarantined_and_redone(done_run):
    exp, root = done_run
    samples = root / "w4" / "samples.jsonl"
    data = samples.read_bytes()
    last = data.rstrip(b"\n").rsplit(b"\n", 1)[1]
    kept = last[:len(last) // 2]
    samples.write_bytes(data[:len(data) - len(last) - 1] + kept)  # the last record cut in half
    result = run(exp)
    assert result.exit_code == 0, result.output
    assert "1 unreadable line(s) of samples.jsonl moved to" in result.output
    assert "w4: already complete" not in result.output
    assert sorted(keys(samples)) == sorted(f"chunk-{i}" for i in range(CHUNKS))
    assert (root / "w4" / "samples.jsonl.quarantine").read_bytes() == kept + b"\n"
    assert json.loads((root / "w4" / "metrics.json").read_text())["fidelity"]["chunks"] == CHUNKS


def test_a_samples_file_that_is_a_directory_is_one_error_and_kept(done_run):
    exp, root = done_run
    (root / "w4" / "samples.jsonl").unlink()
    (root / "w4" / "samples.jsonl").mkdir()
    before = snapshot(root)
    one_error(run(exp), "samples.jsonl: is a directory; expected the JSONL file of finished records")
    assert snapshot(root) == before and (root / "w4" / "samples.jsonl").is_dir()


def test_a_finished_run_on_a_read_only_mount_is_one_error_for_run_and_report(done_run, read_only):
    exp, root = done_run
    before = snapshot(root)
    read_only(root.parent)
    one_error(run(exp), "is not writable (a read-only file system or no permission)")
    one_error(run(exp, "--fresh"), "is not writable")
    one_error(CliRunner().invoke(cli, ["report", str(root)]), "RUN_DIR", "is not writable")
    assert snapshot(root) == before


def test_a_new_run_under_a_read_only_directory_is_one_error(tmp_path, tiny_model, read_only):
    (tmp_path / "ro").mkdir()
    read_only(tmp_path / "ro")
    exp = experiment(tmp_path, tiny_model("llama"), output_dir=str(tmp_path / "ro" / "runs"))
    one_error(run(exp), f"{tmp_path / 'ro'} is not writable")
    assert list((tmp_path / "ro").iterdir()) == []


@pytest.mark.parametrize("where", ["name", "variant"])
def test_a_300_character_name_is_one_error(tmp_path, tiny_model, where):
    exp = experiment(tmp_path, tiny_model("llama"), **({"name": "a" * 300} if where == "name" else {}))
    if where == "variant":
        exp.write_text(exp.read_text().replace('name = "w4"', f'name = "{"w" * 300}"'))
    one_error(run(exp), "... (300 characters) is not valid", "at most 100 characters")
    assert not (tmp_path / "runs").exists()


def test_an_unavailable_runtime_is_caught_before_any_work(tmp_path, tiny_model):
    exp = experiment(tmp_path, tiny_model("llama"))
    exp.write_text(exp.read_text() + 'runtime = "vllm"\n')  # the w4 variant's; this machine has no GPU
    one_error(run(exp), "variant 'w4': runtime 'vllm' is unavailable here")
    assert not (tmp_path / "runs").exists()


def test_a_cuda_device_on_a_machine_without_one_is_caught_before_any_work(tmp_path, tiny_model):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    one_error(run(experiment(tmp_path, tiny_model("llama"), device="cuda")), "CUDA is not available")
    assert not (tmp_path / "runs").exists()
