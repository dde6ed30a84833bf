"""The public plugin API: every name plugins need imports from ``teeny_core`` itself, without pulling torch."""

import subprocess
import sys

import teeny_core


def test_every_public_name_resolves_to_its_defining_object():
    import teeny_core.errors, teeny_core.executor, teeny_core.options, teeny_core.types  # noqa: E401

    for name in teeny_core.__all__:
        value = getattr(teeny_core, name)
        assert value is not None, name
    assert teeny_core.Quantizer is teeny_core.types.Quantizer
    assert teeny_core.Executor is teeny_core.executor.Executor
    assert teeny_core.option is teeny_core.options.option


def test_an_unknown_name_is_an_attribute_error():
    try:
        teeny_core.walk  # noqa: B018  (internal: not part of the API)
    except AttributeError as exc:
        assert "walk" in str(exc)
    else:
        raise AssertionError("teeny_core.walk should not be public")


def test_importing_the_api_does_not_import_torch():
    code = ("import sys; from teeny_core import hookimpl, Quantizer, Calibrator, Evaluator, Runtime, "
            "HardwareProfiler, Analyzer, Executor, Options, option, TeenyError; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_helpers_quantizer_plugins_share_are_public_and_match_skips():
    import teeny_core.formats.checkpoint, teeny_core.formats.gptq, teeny_core.quant, teeny_core.walker  # noqa: E401

    assert teeny_core.stored_dtype is teeny_core.walker.stored_dtype
    assert teeny_core.lm_head_outside is teeny_core.quant.lm_head_outside
    assert teeny_core.safetensors_files is teeny_core.formats.gptq.safetensors_files
    assert teeny_core.write_checkpoint_config is teeny_core.formats.checkpoint.write_checkpoint_config
    assert teeny_core.skipped("model.layers.3.mlp.down_proj", ["*.mlp.*"])
    assert teeny_core.skipped("lm_head", ["lm_head"]) and not teeny_core.skipped("lm_head", ["*.lm_head"])


def _plugin_imports_of_core():
    """(file, line, module, name) of every ``from teeny_core... import name`` in a plugin distribution."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for folder in ("teeny-gptq", "teeny-awq", "teeny-gguf", "teeny-bench", "plugins"):
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("teeny_core"):
                    for alias in node.names:
                        yield path.relative_to(root), node.lineno, node.module, alias.name


def test_plugins_import_no_private_core_name_and_public_names_from_teeny_core():
    private = [f"{f}:{n} {m}.{name}" for f, n, m, name in _plugin_imports_of_core() if name.startswith("_")]
    assert private == []
    roundabout = [f"{f}:{n} {m}.{name}" for f, n, m, name in _plugin_imports_of_core()
                  if m != "teeny_core" and name in teeny_core.__all__]
    assert roundabout == [], "import these from teeny_core itself"
