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
