"""The core's architecture specs and streaming layer walker (GPTQ's tests cover the walk itself)."""

import json

import pytest
import torch

from teeny_core.errors import TeenyError

ARCHS = ["llama", "qwen2", "gemma3", "mistral", "phi3", "qwen2_moe"]


def test_activations_spill_to_disk_beyond_the_budget_and_read_back_exactly():
    from teeny_core.walker import Activations

    acts = Activations(budget=3 * 64 * 4)  # room for three [1, 64] float32 tensors
    tensors = [torch.randn(1, 64) for _ in range(5)]
    for t in tensors:
        acts.append(t)
    assert acts.spilled == 2
    acts[0] = tensors[0] * 2  # replacing one in RAM keeps the budget
    assert acts.spilled == 2 and torch.equal(acts[0], tensors[0] * 2)
    assert all(torch.equal(a, b) for a, b in zip(list(acts)[1:], tensors[1:]))
    acts.close()


def test_writer_splits_shards_and_indexes_them(tmp_path):
    from teeny_core.walker import ShardReader, ShardWriter

    writer = ShardWriter(tmp_path, shard_bytes=1000)
    tensors = {f"t{i}": torch.full((100,), float(i)) for i in range(5)}  # 400 bytes each: two per shard
    for key, value in tensors.items():
        writer.add(key, value)
    assert writer.close() == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    reader = ShardReader(tmp_path)
    assert all(torch.equal(reader.get(k), v) for k, v in tensors.items())
    assert not list(tmp_path.glob(".part-*"))


def test_unsupported_architecture_is_one_line_naming_the_supported_ones():
    from teeny_core.arch import spec_for

    with pytest.raises(TeenyError, match=r"^architecture 'gpt2' is not supported .*; supported: gemma3, gemma3_text, "
                                         r"llama, mistral, phi3, qwen2, qwen2_moe$"):
        spec_for("gpt2")


@pytest.mark.parametrize("arch", ARCHS)
def test_spec_gguf_names_agree_with_gguf_py(tiny_model, arch):
    gguf = pytest.importorskip("gguf")
    from safetensors import safe_open

    from teeny_core.arch import spec_for

    path = tiny_model(arch)
    config = json.loads((path / "config.json").read_text())
    spec = spec_for(config["model_type"])
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, spec.gguf_arch), config["num_hidden_layers"])
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    for key in keys:
        if ".experts." in key:  # gguf-py maps the merged expert tensors, not the per-expert ones
            continue
        assert spec.gguf_name(key) == names.get_name(key, try_suffixes=(".weight", ".bias")), key
