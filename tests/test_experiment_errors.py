"""Every bad input listed in docs/experiment-format.md gives its one-line error (read from the doc's table)."""

import re
import tomllib
from pathlib import Path

import pytest

from teeny_core.errors import TeenyError
from teeny_core.experiment import build_experiment
from teeny_core.plugins import Plugins

DOC = Path(__file__).resolve().parents[1] / "docs" / "experiment-format.md"
VALID = {"name": "t", "model": "some/model", "variants": [{"name": "w4", "method": "rtn", "bits": 4}]}


def doc_rows() -> list[tuple[str, str]]:
    section = DOC.read_text().split("## Bad input and its error", 1)[1]
    rows = []
    for line in section.splitlines():
        m = re.match(r"^\| `(.+)` \| `(.+)` \|$", line)
        if m:
            rows.append((m.group(1), m.group(2).replace("\\|", "|")))
    return rows


@pytest.fixture(scope="module")
def core_only():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEENY_LOAD_PLUGINS", "")  # the core's built-ins only, so "installed: ..." is stable
        yield Plugins.load()


def test_the_doc_lists_bad_inputs():
    assert len(doc_rows()) >= 25


@pytest.mark.parametrize("snippet,expected", doc_rows())
def test_bad_input_gives_its_one_line_error(core_only, snippet, expected):
    data = {**VALID, **tomllib.loads(snippet.replace("\\|", "|"))}
    with pytest.raises(TeenyError) as info:
        build_experiment(data, core_only, where="exp.toml")
    message = str(info.value)
    assert expected in message
    assert message.startswith("exp.toml: ") and "\n" not in message


def test_valid_experiment_fills_defaults(core_only):
    exp = build_experiment(VALID, core_only)
    data = exp.to_dict()
    assert data["evaluators"] == {"fidelity": {"path": "", "chunks": 16, "chunk_len": 256, "kl_top_k": 256}}
    assert data["profilers"] == {"system": {"interval": 0.02, "benchmark": True, "prompt_tokens": 128,
                                            "new_tokens": 32, "batch": 0}}
    assert (exp.executor, exp.executor_options) == ("local", {})
    assert exp.variants[0].options.bits == 4 and exp.variants[0].options.group_size == 128
    assert [v.name for v in exp.all_variants()] == ["original", "w4"]
    assert exp.config_hash() == build_experiment(VALID, core_only).config_hash()
    assert exp.config_hash() != build_experiment({**VALID, "seed": 1}, core_only).config_hash()


def test_experiment_file_errors(tmp_path, core_only):
    from teeny_core.experiment import load_experiment

    with pytest.raises(TeenyError, match="experiment file '.*nope.toml' does not exist"):
        load_experiment(tmp_path / "nope.toml", core_only)
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(TeenyError, match="bad.toml: not valid TOML"):
        load_experiment(bad, core_only)
