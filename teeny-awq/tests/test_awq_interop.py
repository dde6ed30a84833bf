"""Our hf-awq checkpoints in other AWQ implementations: AutoAWQ's GEMM modules and transformers + GPTQModel.

AutoAWQ pins its own torch, so it usually lives in a separate environment: point TEENY_AWQ_REFERENCE_PYTHON at a
Python that can ``import awq`` (or install autoawq next to Teeny). Skipped with the reason when neither exists.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from teeny_core import CalibrationSet, ModelSource

IDS = [[5, 17, 80, 3, 44, 250, 9, 31, 120, 7, 66, 2, 300, 41, 18, 95]]


def awq_python() -> str | None:
    if importlib.util.find_spec("awq") is not None:
        return sys.executable
    return os.environ.get("TEENY_AWQ_REFERENCE_PYTHON") or None


@pytest.fixture(scope="module")
def awq_interop_checkpoint(tiny_model, tiny_tokenizer, teeny_plugins, tmp_path_factory):
    """A 4-bit g32 hf-awq checkpoint of the tiny Qwen2 model (biases, tied embeddings) and our logits for IDS."""
    from teeny_core.testing import corpus_windows

    if awq_python() is None and importlib.util.find_spec("gptqmodel") is None:
        pytest.skip("neither autoawq (or TEENY_AWQ_REFERENCE_PYTHON) nor gptqmodel is available")
    calibration = CalibrationSet(name="corpus", samples=corpus_windows(tiny_tokenizer, 4, 64))
    cls = teeny_plugins.get("quantizer", "awq")
    out = tmp_path_factory.mktemp("awq-interop")
    artifact = cls().quantize(ModelSource(str(tiny_model("qwen2"))), calibration,
                              cls.Options.from_mapping({"group_size": 32, "device": "cpu"}), out)
    runtime = teeny_plugins.runtime_for("hf-awq")
    loaded = runtime().load(artifact, runtime.Options.from_mapping({"device": "cpu", "dtype": "float32",
                                                                    "kernels": "dequant"}))
    ours = loaded.logprobs(IDS)
    loaded.close()
    return artifact.path, ours


def test_autoawq_gemm_modules_give_our_logits(awq_interop_checkpoint, tmp_path):
    python = awq_python()
    if python is None:
        pytest.skip("autoawq is not importable here and TEENY_AWQ_REFERENCE_PYTHON is not set")
    path, ours = awq_interop_checkpoint
    script = Path(__file__).with_name("awq_reference_logits.py")
    out = tmp_path / "logits.pt"
    proc = subprocess.run([python, str(script), str(path), json.dumps(IDS), str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    theirs = torch.load(out).log_softmax(-1)
    # AutoAWQ multiplies in fp16, so agreement is to fp16 precision, not bit for bit
    assert torch.allclose(theirs, ours, atol=2e-2, rtol=0), float((theirs - ours).abs().max())
    assert torch.equal(theirs.argmax(-1), ours.argmax(-1))


def test_transformers_with_gptqmodel_gives_our_logits(awq_interop_checkpoint):
    if importlib.util.find_spec("gptqmodel") is None:
        pytest.skip("gptqmodel is not installed (transformers loads AWQ checkpoints through it)")
    from transformers import AutoModelForCausalLM

    path, ours = awq_interop_checkpoint
    model = AutoModelForCausalLM.from_pretrained(path, device_map="cpu").eval()
    with torch.no_grad():
        theirs = model(torch.tensor(IDS)).logits.float().log_softmax(-1)
    assert torch.allclose(theirs, ours, atol=2e-2, rtol=0), float((theirs - ours).abs().max())


def test_gptqmodel_reads_a_quantized_lm_head_with_our_logits(tiny_model, tiny_tokenizer, teeny_plugins, tmp_path):
    """``skip=[]`` (the demo's AWQ w4, as a Q4_K_M file quantizes its output matrix) writes lm_head packed with
    ``lm_head: true`` in the config; GPTQModel builds a quantized lm_head from it and gives our logits."""
    if importlib.util.find_spec("gptqmodel") is None:
        pytest.skip("gptqmodel is not installed")
    from gptqmodel import BACKEND, GPTQModel

    from teeny_core.testing import tiny_corpus

    ids = tiny_tokenizer.encode("".join(tiny_corpus()))[: 4 * 64]
    calibration = CalibrationSet(name="corpus", samples=[ids[i:i + 64] for i in range(0, len(ids), 64)])
    cls = teeny_plugins.get("quantizer", "awq")
    artifact = cls().quantize(ModelSource(str(tiny_model("qwen2"))), calibration,
                              cls.Options.from_mapping({"group_size": 32, "device": "cpu", "skip": []}), tmp_path)
    config = json.loads((artifact.path / "config.json").read_text())
    assert config["quantization_config"]["lm_head"] is True and "lm_head" in artifact.meta["quantized_layers"]
    runtime = teeny_plugins.runtime_for("hf-awq")
    loaded = runtime().load(artifact, runtime.Options.from_mapping({"device": "cpu", "dtype": "float32",
                                                                    "kernels": "dequant"}))
    ours = loaded.logprobs(IDS)
    loaded.close()
    model = GPTQModel.load(str(artifact.path), device="cpu", backend=BACKEND.TORCH).model
    assert hasattr(model.lm_head, "qweight")
    with torch.no_grad():
        theirs = model(torch.tensor(IDS)).logits.float().log_softmax(-1)
    assert torch.allclose(theirs, ours, atol=2e-2, rtol=0), float((theirs - ours).abs().max())
