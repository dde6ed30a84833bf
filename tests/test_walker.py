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


def load_all(directory):
    from safetensors.torch import load_file

    tensors = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


def rtn(teeny_plugins, path, out, **options):
    from teeny_core.modeling import ModelSource

    cls = teeny_plugins.get("quantizer", "rtn")
    out.mkdir()
    return cls().quantize(ModelSource(str(path)), None, cls.Options.from_mapping(options), out)


@pytest.mark.parametrize("arch", ARCHS)
def test_streamed_rtn_equals_rounding_the_whole_model(teeny_plugins, tiny_model, tmp_path, arch):
    """Reference: the whole transformers model, every linear but a 1-output gate rounded in memory, and each
    routed expert's gate, up and down rounded on their own."""
    from transformers import AutoModelForCausalLM

    from teeny_core.arch import spec_for
    from teeny_core.quant import dequantize_weight, quantize_weight
    from teeny_core.walker import split_experts

    def rounded(w):
        return dequantize_weight(*quantize_weight(w, 4, "sym", "group", 32))

    path = tiny_model(arch)
    art = rtn(teeny_plugins, path, tmp_path / "rtn", bits=4, group_size=32, skip=[], format="hf")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    if model.config.tie_word_embeddings:
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.out_features > 1:
                module.weight.copy_(rounded(module.weight))
    expected = model.state_dict()
    spec = spec_for(model.config.model_type)
    if spec.experts:
        for i, layer in enumerate(model.model.layers):
            prefix = f"{spec.layer_prefix(i)}."
            own = {k[len(prefix):]: v for k, v in expected.items() if k.startswith(prefix)}
            own = {k: rounded(v) if ".experts." in k else v for k, v in split_experts(own, spec).items()}
            expected = {k: v for k, v in expected.items() if not k.startswith(prefix)}
            expected.update({prefix + k: v for k, v in own.items()})
        assert "model.layers.0.mlp.shared_expert_gate" in art.meta["kept_full_precision"]
    streamed = load_all(tmp_path / "rtn")
    assert sorted(streamed) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(streamed[key], value), key
    assert json.loads((tmp_path / "rtn" / "config.json").read_text())["tie_word_embeddings"] is False


def test_rtn_packs_a_moe_model_as_hf_gptq_with_its_gates_in_full_precision(teeny_plugins, tiny_model, tmp_path):
    """The 1-output shared-expert gate and the router are not grouped: they stay float with the reason in the
    meta, the rest packs (routed experts one linear each), and the core's runtime runs it packed."""
    from teeny_core.builtin.transformers_runtime import TransformersRuntime
    from teeny_core.formats.gptq import read_quantized
    from teeny_core.modeling import Artifact
    from teeny_core.quant import quantize_weight

    path = tiny_model("qwen2_moe")
    packed = rtn(teeny_plugins, path, tmp_path / "packed", bits=4, group_size=32)
    floats = rtn(teeny_plugins, path, tmp_path / "floats", bits=4, group_size=32, format="hf")
    assert packed.format == "hf-gptq" and "hf_gptq_misfit" not in packed.meta
    kept = packed.meta["kept_full_precision"]
    assert kept["model.layers.1.mlp.shared_expert_gate"].startswith("1 output feature")
    assert kept["model.layers.1.mlp.gate"].startswith("the router")
    source, written = load_all(path), load_all(tmp_path / "packed")
    for name in kept:
        assert torch.equal(written[f"{name}.weight"], source[f"{name}.weight"]), name
    rules = json.loads((tmp_path / "packed" / "config.json").read_text())["quantization_config"]["dynamic"]
    assert r"-:^model\.layers\.0\.mlp\.shared_expert_gate$" in rules
    linears, _ = read_quantized(tmp_path / "packed")
    codes = dict(linears)
    assert packed.meta["zero_points_lifted"] == 0
    for name in ("model.layers.0.mlp.experts.3.up_proj", "model.layers.1.self_attn.k_proj"):
        q, _, _ = quantize_weight(source[f"{name}.weight"], 4, "sym", "group", 32)
        assert torch.equal(codes[name].q, q), name

    def logprobs(artifact, **options):
        runtime = TransformersRuntime().load(Artifact.open(artifact.path),
                                             TransformersRuntime.Options.from_mapping({"device": "cpu", **options}))
        return runtime.logprobs([[(7 * i + 3) % 500 + 1 for i in range(48)]])

    reference = logprobs(floats)  # the same codes, float32 scales instead of float16
    for options in ({"kernels": "dequant"}, {"packed_compute": "float32"}):
        assert float((logprobs(packed, **options) - reference).abs().max()) <= 2e-3, options


@pytest.mark.parametrize("method", ["rtn", "gptq", "awq"])
def test_streamed_artifacts_carry_the_source_tokenizer_byte_for_byte(teeny_plugins, tiny_model, tmp_path, method):
    """The walker's quantizers copy the tokenizer files (not load and re-save them), so the artifact tokenizes
    exactly like its source."""
    from teeny_core.modeling import ModelSource
    from teeny_core.types import CalibrationSet
    from teeny_core.walker import TOKENIZER_FILES

    path = tiny_model("llama")
    cls = teeny_plugins.get("quantizer", method)
    options = cls.Options.from_mapping({"bits": 4, "group_size": 32})
    calibration = CalibrationSet("ids", [[5, 6, 7, 8] * 8] * 2) if cls.needs_calibration(options) else None
    out = tmp_path / method
    cls().quantize(ModelSource(str(path)), calibration, options, out)
    copied = [name for name in TOKENIZER_FILES if (path / name).is_file()]
    assert "tokenizer.json" in copied
    for name in copied:
        assert (out / name).read_bytes() == (path / name).read_bytes(), name


def test_a_source_without_a_tokenizer_fails_before_any_layer_is_quantized(teeny_plugins, tiny_model, tmp_path):
    import shutil

    from teeny_core.modeling import ModelSource
    from teeny_core.walker import TOKENIZER_FILES

    source = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_model("llama"), source)
    for name in TOKENIZER_FILES:
        (source / name).unlink(missing_ok=True)
    cls = teeny_plugins.get("quantizer", "rtn")
    with pytest.raises(TeenyError, match="no tokenizer files") as err:
        cls().quantize(ModelSource(str(source)), None, cls.Options.from_mapping({"bits": 4, "group_size": 32}),
                       tmp_path / "out")
    assert str(source) in str(err.value) and "\n" not in str(err.value)
    assert not list((tmp_path / "out").glob("*.safetensors"))


def test_a_walk_killed_midway_resumes_at_the_next_layer_with_the_same_inputs_and_output(tiny_model, tmp_path):
    from teeny_core.walker import ShardWriter, Solved, walk

    path = tiny_model("llama")
    ids = torch.randint(0, 300, (4, 16), generator=torch.Generator().manual_seed(0))
    seen: dict[str, list] = {}

    def solver(run: str, die_at: int | None = None):
        def solve(work):
            if work.index == die_at:
                raise KeyboardInterrupt
            seen.setdefault(run, []).append((work.index, torch.cat(list(work.inputs))))
            with torch.no_grad():  # changes what the next layer sees, so its inputs must come from the kept ones
                work.layer.mlp.down_proj.weight.mul_(0.5)
            return Solved(error=float(work.index))
        return solve

    def run(name: str, keep, die_at=None):
        writer = ShardWriter(tmp_path / name)
        facts = walk(path, solver(name, die_at), writer, calibration_ids=ids, batch_size=2, keep=keep, progress=False)
        writer.close()
        return facts, (tmp_path / name / "model.safetensors").read_bytes()

    whole, whole_bytes = run("whole", None)
    with pytest.raises(KeyboardInterrupt):
        run("killed", tmp_path / "kept", die_at=1)
    resumed, resumed_bytes = run("resumed", tmp_path / "kept")
    assert [i for i, _ in seen["resumed"]] == [1]  # layer 0 was not solved again
    assert torch.equal(seen["resumed"][0][1], seen["whole"][1][1])
    assert resumed_bytes == whole_bytes
    assert resumed["layer_errors"] == whole["layer_errors"] == [0.0, 1.0] and resumed["params"] == whole["params"]
