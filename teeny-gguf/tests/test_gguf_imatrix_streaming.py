"""The importance matrix streamed through the core's layer walker against the whole-model computation it
replaced. The reference (kept only here) loads the whole model in float32 through transformers, hooks every
decoder linear that gguf-py's own tensor-name map names, and runs each calibration window through the model;
it shares no code with the walker or the architecture spec's GGUF names."""

import numpy as np
import pytest
import torch

RTOL = 1e-6
"""Both run float32 forwards and accumulate in float64; the reference runs one window at a time, the walker
here four, so the float32 matmuls may round differently (measured: at most 2.1e-7 relative, on qwen2_moe;
with one window per batch the sums are identical, see the last test)."""


def whole_model_imatrix(path, calibration):
    from transformers import AutoModelForCausalLM

    import gguf

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    arch = {"llama": "LLAMA", "qwen2": "QWEN2", "gemma3_text": "GEMMA3", "phi3": "PHI3",
            "qwen2_moe": "QWEN2MOE"}[model.config.model_type]
    name_map = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch), model.config.num_hidden_layers)
    modules = dict(model.named_modules())
    names = {n: name_map.get_name(f"{n}.weight", try_suffixes=(".weight",)) for n, m in modules.items()
             if isinstance(m, torch.nn.Linear) and n.startswith("model.layers.")}
    names = {n: g for n, g in names.items() if g}
    sums = {g: torch.zeros(modules[n].in_features, dtype=torch.float64) for n, g in names.items()}
    counts = dict.fromkeys(names.values(), 0)

    def hook(gguf_name):
        def accumulate(_module, inputs, _output):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            sums[gguf_name] += (x * x).sum(dim=0)
            counts[gguf_name] += x.shape[0]
        return accumulate

    handles = [modules[n].register_forward_hook(hook(g)) for n, g in names.items()]
    ids = calibration.tensor()
    with torch.no_grad():
        for start in range(ids.shape[0]):
            model.model(input_ids=ids[start:start + 1])
    for h in handles:
        h.remove()
    return {k: v.numpy() for k, v in sums.items()}, counts


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "phi3", "qwen2_moe"])
def test_streamed_imatrix_matches_the_whole_model_one(arch, gguf_tiny_hf, gguf_calibration):
    from teeny_gguf.imatrix import compute_imatrix

    path = gguf_tiny_hf(arch)
    streamed = compute_imatrix(path, gguf_calibration, batch_size=4, progress=False)
    sums, counts = whole_model_imatrix(path, gguf_calibration)
    assert sums and set(sums) <= set(streamed.sums)
    for name, expected in sums.items():
        np.testing.assert_allclose(streamed.sums[name], expected, rtol=RTOL, err_msg=name)
        assert list(streamed.counts[name]) == [counts[name]], name
    tokens = gguf_calibration.tensor().numel()
    extra = set(streamed.sums) - set(sums)
    if arch == "qwen2_moe":  # routed experts, which the whole-model computation never saw: one row per expert
        assert extra == {f"blk.{i}.ffn_{p}_exps.weight" for i in range(2) for p in ("gate", "up", "down")}
        for name in extra:
            assert streamed.counts[name].shape == (4,) and streamed.counts[name].sum() == 2 * tokens  # top-2
    else:
        assert not extra


def test_one_window_per_batch_gives_the_whole_model_sums_exactly(gguf_tiny_hf, gguf_calibration):
    from teeny_gguf.imatrix import compute_imatrix

    streamed = compute_imatrix(gguf_tiny_hf("llama"), gguf_calibration, batch_size=1, progress=False)
    sums, _ = whole_model_imatrix(gguf_tiny_hf("llama"), gguf_calibration)
    for name, expected in sums.items():
        assert np.array_equal(streamed.sums[name], expected), name
