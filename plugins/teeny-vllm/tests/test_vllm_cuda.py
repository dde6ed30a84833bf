"""The vllm runtime on a CUDA GPU (skipped elsewhere with the runtime's own reason): greedy generation
matches transformers on the same float checkpoint, weights are counted as vLLM holds them, and a GPTQ
checkpoint loads through Marlin with its weights packed."""

import pytest

from teeny_core.modeling import Artifact
from teeny_vllm.runtime import VllmOptions, VllmRuntime

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(bool(VllmRuntime.available()),
                                                   reason=f"vllm runtime: {VllmRuntime.available()}")]

PROMPTS = ["def add(a, b):\n", "The quick brown fox", "import json\n\n"]


@pytest.fixture(scope="module")
def float_model(tiny_model):
    return tiny_model("qwen2")


def test_greedy_generation_matches_transformers_in_float32(float_model):
    """Same checkpoint, same token ids, float32 on both: the greedy continuations agree token for token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(float_model)
    ref = AutoModelForCausalLM.from_pretrained(float_model, dtype=torch.float32).cuda()
    expected = []
    for p in PROMPTS:
        ids = tok(p, return_tensors="pt").input_ids.cuda()
        out = ref.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.eos_token_id)
        expected.append(out[0, ids.shape[1]:].tolist())
    del ref
    torch.cuda.empty_cache()
    model = VllmRuntime().load(Artifact("hf", float_model), VllmOptions(dtype="float32", enforce_eager=True,
                                                                        gpu_memory_utilization=0.3))
    try:
        gens = model.generate(PROMPTS, max_new_tokens=8)
        got = [tok.encode(g.text, add_special_tokens=False) for g in gens]
        assert [g[:4] for g in got] == [e[:4] for e in expected]  # decoded-then-encoded text: compare a prefix
        params = sum(p.numel() * 4 for p in AutoModelForCausalLM.from_pretrained(float_model).parameters())
        assert model.weight_bytes() == pytest.approx(params, rel=0.02)  # rotary caches etc. are buffers
        assert model.peak_gpu_bytes() >= model.weight_bytes()
    finally:
        model.close()


def test_gptq_checkpoint_runs_on_marlin_with_packed_weights(tmp_path, tiny_model):
    """A teeny-gptq w4 g128 checkpoint: vLLM serves it with gptq_marlin and holds far fewer weight bytes."""
    pytest.importorskip("teeny_gptq")
    from teeny_core.modeling import ModelSource
    from teeny_core.plugins import Plugins
    from teeny_core.types import CalibrationSet

    src = tiny_model("qwen2")
    q = Plugins.load().get("quantizer", "gptq")
    cal = CalibrationSet("t", [[i % 200 + 1 for i in range(j, j + 64)] for j in range(8)])
    artifact = q().quantize(ModelSource(str(src)), cal, q.Options.from_mapping({"bits": 4, "group_size": 128}),
                            tmp_path)
    model = VllmRuntime().load(artifact, VllmOptions(enforce_eager=True, gpu_memory_utilization=0.3))
    try:
        gens = model.generate(PROMPTS, max_new_tokens=8)
        assert all(g.tokens > 0 for g in gens)
        assert model.llm.llm_engine.vllm_config.model_config.quantization == "gptq_marlin"
    finally:
        model.close()
