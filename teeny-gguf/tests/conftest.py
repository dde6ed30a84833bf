"""Fixtures for teeny-gguf tests: tiny models with hidden size 256 (k-quant rows need multiples of 256)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def gguf_tiny_hf(tmp_path_factory, tiny_tokenizer):
    """Factory: ``gguf_tiny_hf("qwen2")`` -> HF directory of a 2-layer, hidden-256 model.

    Biases are randomised too (a fresh Qwen2 has all-zero q/k/v biases, which would hide a bias bug).
    """
    import torch
    from transformers import AutoModelForCausalLM

    from teeny_core.testing import build_tiny_model

    built: dict[str, Path] = {}

    def make(arch: str) -> Path:
        if arch not in built:
            out = build_tiny_model(arch, tmp_path_factory.mktemp(f"gguf-{arch}"), hidden=256, tokenizer=tiny_tokenizer)
            model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
            gen = torch.Generator().manual_seed(1)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name.endswith(".bias"):
                        p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            model.save_pretrained(out, safe_serialization=True)
            built[arch] = out
        return built[arch]

    return make


@pytest.fixture(scope="session")
def gguf_calibration(tiny_tokenizer):
    """A small seeded calibration set from the core's random-tokens calibrator."""
    from teeny_core.plugins import Plugins

    cls = Plugins.load().get("calibrator", "random-tokens")
    return cls().samples(tiny_tokenizer, cls.Options.from_mapping({"samples": 4, "seq_len": 64}), seed=0)
