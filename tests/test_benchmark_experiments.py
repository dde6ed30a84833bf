"""The experiment files shipped in benchmarks/ (the ones docs/findings.md tells users to run) stay valid as the
plugins' options change: each is validated the way `teeny run` validates it, before any work."""

from pathlib import Path

import pytest

from teeny_core import checkpoints
from teeny_core.experiment import read_experiment_file
from teeny_core.study import Study, load_run

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted((ROOT / "benchmarks").glob("*.toml"))


def test_there_are_experiment_files_to_check():
    assert {"findings-qwen05.toml", "findings-sizes.toml", "findings-sizes-pass.toml"} <= {p.name for p in FILES}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_each_shipped_experiment_validates_with_the_installed_plugins(path, teeny_plugins, monkeypatch):
    # checkpoint variants point at files benchmarks/qat.py makes on the user's machine
    monkeypatch.setattr(checkpoints, "check_location", lambda location: None)
    run = load_run(path, teeny_plugins)  # what `teeny run FILE` validates
    data = read_experiment_file(path)
    variants = run.experiments[0].variants if isinstance(run, Study) else run.variants
    assert [v.name for v in variants] == [v["name"] for v in data["variants"]]
    assert f"teeny run benchmarks/{path.name}" in path.read_text()  # its header says how to run it
