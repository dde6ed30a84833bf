"""Streamed GPTQ (the core's layer walker) against a whole-model reference, bit for bit, on every spec'd
architecture. The reference loads the full transformers model and, per layer and group, runs the *whole*
model forward to collect the group's inputs, so it shares none of the walker's loading, positional inputs,
activation passing or writing."""

import pytest
import torch

from teeny_core.modeling import ModelSource
from teeny_core.types import CalibrationSet


def whole_model_reference(path, ids, batch_size, bits, group_size, sym):
    from transformers import AutoModelForCausalLM

    from teeny_core.arch import spec_for
    from teeny_core.formats.gptq import pack_linear
    from teeny_core.walker import split_experts
    from teeny_gptq.gptq import HessianAccumulator, gptq_quantize

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    spec = spec_for(model.config.model_type)
    out = {}
    for index, layer in enumerate(model.model.layers):
        for group in spec.groups:
            modules = {n: layer.get_submodule(n) for n in group.linears}
            acc = {n: HessianAccumulator(m.in_features) for n, m in modules.items()}
            handles = [m.register_forward_pre_hook(lambda mod, inp, n=n: acc[n].add(inp[0]))
                       for n, m in modules.items()]
            with torch.no_grad():
                for batch in torch.split(ids, batch_size):
                    model(input_ids=batch, use_cache=False)
            for h in handles:
                h.remove()
            for name, module in modules.items():
                r = gptq_quantize(module.weight, acc[name].H, bits=bits, group_size=group_size, sym=sym)
                with torch.no_grad():
                    module.weight.copy_(r.w_hat)
                for suffix, t in pack_linear(r.q, r.scale, r.zero, r.g_idx, bits, "gptq").items():
                    out[f"{spec.layer_prefix(index)}.{name}.{suffix}"] = t
        if spec.experts:  # routed: each expert's Hessian from the tokens the router's top-k sends it
            experts = layer.get_submodule(spec.experts.module)
            inter = experts.gate_up_proj.shape[1] // 2
            for stage, param, parts in (("gate_up", experts.gate_up_proj, ("gate_proj", "up_proj")),
                                        ("down", experts.down_proj, ("down_proj",))):
                acc = [HessianAccumulator(param.shape[2]) for _ in range(param.shape[0])]

                def routed(mod, args, output, stage=stage, acc=acc):
                    x_all, selected = args[0], output[2]
                    for e in range(len(acc)):
                        x = x_all[(selected == e).any(-1)]
                        if stage == "down":
                            gate, up = torch.nn.functional.linear(x, experts.gate_up_proj[e]).chunk(2, dim=-1)
                            x = experts.act_fn(gate) * up
                        acc[e].add(x)

                handle = layer.get_submodule(spec.experts.router).register_forward_hook(routed)
                with torch.no_grad():
                    for batch in torch.split(ids, batch_size):
                        model(input_ids=batch, use_cache=False)
                handle.remove()
                for e in range(param.shape[0]):
                    H = acc[e].H if acc[e].rows else torch.eye(param.shape[2])
                    r = gptq_quantize(param[e], H, bits=bits, group_size=group_size, sym=sym)
                    with torch.no_grad():
                        param[e].copy_(r.w_hat)
                    rows = [slice(0, inter), slice(inter, None)] if stage == "gate_up" else [slice(None)]
                    for part, sl in zip(parts, rows):
                        packed = pack_linear(r.q[sl], r.scale[sl], r.zero[sl], r.g_idx, bits, "gptq")
                        for suffix, t in packed.items():
                            out[f"{spec.layer_prefix(index)}.{spec.experts.module}.{e}.{part}.{suffix}"] = t
    state = {k: v for k, v in model.state_dict().items()}
    if spec.experts:
        for index in range(len(model.model.layers)):
            prefix = f"{spec.layer_prefix(index)}."
            own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            state = {k: v for k, v in state.items() if not k.startswith(prefix)}
            state.update({prefix + k: v for k, v in split_experts(own, spec).items()})
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        if not (leaf == "weight" and f"{module}.qweight" in out) and not (key == "lm_head.weight"
                                                                    and model.config.tie_word_embeddings):
            out[key] = value
    return out


def load_all(directory):
    from safetensors.torch import load_file

    tensors = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "mistral", "phi3", "qwen2_moe"])
def test_streamed_gptq_is_bit_identical_to_the_whole_model_reference(tiny_model, tmp_path, arch):
    from teeny_gptq.quantizer import GPTQOptions, quantize_native

    path = tiny_model(arch)
    torch.manual_seed(0)
    ids = torch.randint(3, 300, (12, 32))
    opts = GPTQOptions.from_mapping({"bits": 4, "group_size": 32, "sym": False, "batch_size": 4,
                                     "device": "cpu"})
    artifact = quantize_native(ModelSource(str(path)), CalibrationSet("ids", ids.tolist()), opts, tmp_path)
    streamed = load_all(tmp_path)
    reference = whole_model_reference(path, ids, 4, 4, 32, False)
    assert sorted(streamed) == sorted(reference)
    for key, expected in reference.items():  # the tiny models are stored in float32, as the reference holds them
        assert streamed[key].dtype == expected.dtype and torch.equal(streamed[key], expected), key
    assert len(artifact.meta["quantized_layers"]) == sum(k.endswith(".qweight") for k in reference)


def test_an_expert_calibration_never_reaches_is_rounded_on_the_same_grid_and_recorded(tiny_model, tmp_path,
                                                                                      caplog):
    """qwen2_moe with expert 3's router row at -1000 on a hidden dimension every token holds large and positive
    (set in the embeddings): its router never picks it, so GPTQ has no Hessian for it."""
    import logging

    from safetensors.torch import load_file, save_file

    from teeny_core.formats.gptq import read_quantized
    from teeny_gptq.quantizer import GPTQOptions, quantize_native

    src = tmp_path / "src"
    src.mkdir()
    for f in tiny_model("qwen2_moe").iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    tensors = load_file(str(src / "model.safetensors"))
    tensors["model.embed_tokens.weight"][:, 0] = 100.0
    for i in range(2):  # the other experts ignore that dimension, so it does not pick them either
        router = tensors[f"model.layers.{i}.mlp.gate.weight"]
        router[:, 0] = 0.0
        router[3] = 0.0
        router[3, 0] = -1000.0
    save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})

    torch.manual_seed(0)
    ids = torch.randint(3, 300, (8, 32))
    picked = set()  # independent of the quantizer: which experts the source model's routers choose
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    hooks = [layer.mlp.gate.register_forward_hook(lambda m, a, out: picked.update(out[2].unique().tolist()))
             for layer in model.model.layers]
    with torch.no_grad():
        model(input_ids=ids)
    for h in hooks:
        h.remove()
    assert picked == {0, 1, 2}

    opts = GPTQOptions.from_mapping({"bits": 4, "group_size": 32, "sym": False, "device": "cpu"})
    with caplog.at_level(logging.WARNING, logger="teeny_gptq"):
        artifact = quantize_native(ModelSource(str(src)), CalibrationSet("ids", ids.tolist()), opts, tmp_path / "q")
    dead = {f"model.layers.{i}.mlp.experts.3.{p}" for i in range(2) for p in ("gate_proj", "up_proj", "down_proj")}
    assert set(artifact.meta["rtn_fallback"]) == dead
    assert all("no calibration token" in why for why in artifact.meta["rtn_fallback"].values())
    said = [r.getMessage() for r in caplog.records if "calibration never reached" in r.getMessage()]
    assert len(said) == 1 and "6 linear(s)" in said[0]

    linears, _ = read_quantized(tmp_path / "q")
    codes = dict(linears)
    for name in ("model.layers.1.mlp.experts.3.down_proj", "model.layers.0.mlp.experts.1.up_proj"):
        w = tensors[f"{name}.weight"].float()
        q = codes[name]
        scale = q.scale.repeat_interleave(32, dim=1)
        zero = q.zero.repeat_interleave(32, dim=1)
        rounded = torch.clamp(torch.round(w / scale) + zero, 0, 15)
        groups = w.reshape(w.shape[0], -1, 32)
        minmax = (groups.amax(-1).clamp(min=0) - groups.amin(-1).clamp(max=0)) / 15
        if name in dead:  # round to nearest on the min/max grid (scales stored as float16)
            assert torch.equal(q.q.float(), rounded), name
            torch.testing.assert_close(q.scale, minmax, rtol=1e-3, atol=0)
        else:  # a routed expert is solved: GPTQ moves some codes off the nearest grid point
            assert not torch.equal(q.q.float(), rounded), name


def test_an_attention_whose_output_is_not_its_o_proj_is_recomputed_not_served_from_the_memo(tiny_model, tmp_path,
                                                                                           monkeypatch):
    """The solver serves ``self_attn``'s output to the gate/up and down replays from ``o_proj`` of its recorded
    inputs, after checking it against the real module. An attention that adds something after ``o_proj`` fails
    that check: the replays must recompute it, so the artifact still equals the whole-model reference run with
    the same attention."""
    from transformers.models.llama import modeling_llama

    from teeny_gptq.quantizer import GPTQOptions, quantize_native

    path = tiny_model("llama")
    torch.manual_seed(0)
    ids = torch.randint(3, 300, (12, 32))
    plain = whole_model_reference(path, ids, 4, 4, 32, False)
    forward = modeling_llama.LlamaAttention.forward

    def shifted(self, *args, **kwargs):
        out, *rest = forward(self, *args, **kwargs)
        return (out + 0.25, *rest)

    monkeypatch.setattr(modeling_llama.LlamaAttention, "forward", shifted)
    reference = whole_model_reference(path, ids, 4, 4, 32, False)
    down = "model.layers.0.mlp.down_proj.qweight"
    assert not torch.equal(reference[down], plain[down])  # the shift changes what the MLP is calibrated on
    opts = GPTQOptions.from_mapping({"bits": 4, "group_size": 32, "sym": False, "batch_size": 4, "device": "cpu"})
    quantize_native(ModelSource(str(path)), CalibrationSet("ids", ids.tolist()), opts, tmp_path)
    streamed = load_all(tmp_path)
    for key, expected in reference.items():
        assert torch.equal(streamed[key], expected), key
