"""The README opens with exactly two commands, install+demo and install+tests, and CI runs the second."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def first_block() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def test_the_readme_starts_with_two_commands_that_install_everything():
    demo, tests = first_block()
    assert demo == "bash .ci/install && .venv/bin/teeny run"
    assert tests == "bash .ci/install && .venv/bin/python -m pytest -q"


def test_ci_runs_the_readmes_test_command_after_a_fresh_venv():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "python3 -m venv --clear .venv" in ci
    assert first_block()[1] in ci and ci.index("python3 -m venv --clear .venv") < ci.index(first_block()[1])


def test_the_install_script_pins_torch_first_then_toolchains_llama_cpp_and_every_plugin():
    lines = (ROOT / ".ci" / "install").read_text().splitlines()
    order = [next(i for i, line in enumerate(lines) if needle in line) for needle in
             ('TORCH="${TEENY_TORCH:-torch==2.13.0}"', 'pip install -q "$TORCH"', "install-toolchains.sh",
              "install-llama-cpp.sh", '-e ".[models,demo,test]"')]
    assert order == sorted(order)
    end = next(i for i in range(order[-1], len(lines)) if not lines[i].rstrip().endswith("\\"))
    editable = " ".join(lines[order[-1]:end + 1])
    plugins = sorted({p.parent for p in [*ROOT.glob("teeny-*/pyproject.toml"), *ROOT.glob("plugins/*/pyproject.toml")]})
    assert len(plugins) >= 8
    for path in plugins:  # every plugin distribution of the repository is installed, so its tests run in CI
        assert f"-e ./{path.relative_to(ROOT)}" in editable, path
