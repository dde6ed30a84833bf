"""Interoperability: GPTQModel loads our hf-gptq checkpoint and computes the same next-token distributions.

Runs only where gptqmodel is importable (the optional extra teeny-gptq[gptqmodel], usually its own venv):
    /work/venvs/gptqmodel/bin/python -m pytest teeny-gptq/tests/test_gptq_gptqmodel_crosscheck.py -q
"""

import importlib.util

import pytest
import torch

from teeny_core.types import Artifact, ModelSource

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gptqmodel") is None,
                                reason="gptqmodel is not installed (optional extra teeny-gptq[gptqmodel])")


@pytest.mark.parametrize("sym,desc_act", [(True, False), (False, True)])
def test_gptqmodel_loads_our_checkpoint_with_matching_logits(teeny_plugins, tiny_model, tmp_path, sym, desc_act):
    from gptqmodel import BACKEND, GPTQModel

    path = tiny_model("llama")
    source = ModelSource(str(path))
    code = teeny_plugins.get("calibrator", "code")
    tokenizer = source.load_tokenizer()
    cal = code().samples(tokenizer, code.Options.from_mapping({"samples": 8, "seq_len": 64}), seed=0)
    gptq = teeny_plugins.get("quantizer", "gptq")
    out = tmp_path / "artifact"
    out.mkdir()
    artifact = gptq().quantize(source, cal, gptq.Options.from_mapping(
        {"bits": 4, "group_size": 32, "sym": sym, "desc_act": desc_act}), out)

    runtime = teeny_plugins.get("runtime", "transformers")
    ours = runtime().load(Artifact.open(artifact.path), runtime.Options.from_mapping({"device": "cpu"}))
    ids = cal.samples[:2]
    expected = ours.logprobs(ids).double()
    ours.close()

    theirs = GPTQModel.load(str(artifact.path), device="cpu", backend=BACKEND.TORCH)
    with torch.no_grad():
        logits = theirs.model(input_ids=torch.tensor(ids)).logits
    got = torch.log_softmax(logits.double(), dim=-1)
    # GPTQModel computes in float16/bfloat16 on the CPU: same distributions up to that precision
    assert (got.argmax(-1) == expected.argmax(-1)).double().mean() > 0.97
    kl = (expected.exp() * (expected - got)).sum(-1).mean()
    assert kl < 1e-3
