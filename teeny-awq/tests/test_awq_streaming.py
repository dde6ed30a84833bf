"""Streamed AWQ (the solver on the core's layer walker) against the whole-model AWQ it replaced, bit for bit.

The reference below is the former teeny-awq driver, kept here only as the reference: it loads the whole
model in float32 through transformers, captures every layer's inputs with its own recorder, names the Llama
modules itself, probes whether a norm computes ``x * (1 + w)``, and writes the hf-awq checkpoint from the
model's state dict. It shares with the solver only the numerical searches (scales, clipping, the grid); the
walker's loading, positional inputs, activation passing, spec-driven folding and writing are all checked.
The former driver knew Llama-style layers only (llama, mistral, qwen2, gemma3); phi3 and qwen2_moe, which it
refused, are covered by test_awq_method.py (scaling keeps the float model, AWQ beats RTN) and
test_awq_checkpoint.py (the packed checkpoint holds exactly the fake-quant weights).
"""

import json

import pytest
import torch

from teeny_awq.algorithm import AwqSettings, _clip_tokens, _Group, quantize_grouped, search_clip, search_scales
from teeny_core import CalibrationSet, ModelSource


class _Stop(Exception):
    pass


def _capture_layer_inputs(model, layers, input_ids, batch_size):
    hidden, kwargs = [], [[] for _ in layers]

    def recorder(i):
        def forward(*args, **kw):
            h = args[0] if args else kw.pop("hidden_states")
            kwargs[i].append(kw)
            if i == 0:
                hidden.append(h.detach().float())
            if i == len(layers) - 1:
                raise _Stop
            return h
        return forward

    try:
        for i, layer in enumerate(layers):
            layer.forward = recorder(i)
        with torch.no_grad():
            for start in range(0, input_ids.shape[0], batch_size):
                try:
                    model(input_ids=input_ids[start:start + batch_size], use_cache=False)
                except _Stop:
                    pass
    finally:
        for layer in layers:
            layer.__dict__.pop("forward", None)
    return hidden, kwargs


def _norm_offset(norm):
    w = norm.weight
    saved = w.detach().clone()
    probe = torch.linspace(-1.0, 1.0, w.numel(), dtype=w.dtype).reshape(1, -1) + 0.5
    with torch.no_grad():
        w.zero_()
        out = norm(probe)
        w.copy_(saved)
    return 0.0 if float(out.abs().max()) == 0.0 else 1.0


def _run_layer(layer, h, kw):
    out = layer(h, **kw)
    return out[0] if isinstance(out, tuple) else out


def _process_layer(layer, prefix, hidden, kwargs, settings, results):
    attn, mlp = layer.self_attn, layer.mlp
    q, k, v, o = (getattr(attn, f"{n}_proj") for n in "qkvo")
    gate, up, down = mlp.gate_proj, mlp.up_proj, mlp.down_proj
    in_norm = layer.input_layernorm
    mlp_norm = getattr(layer, "pre_feedforward_layernorm", None) or layer.post_attention_layernorm
    full = {m: f"{prefix}.{n}" for n, m in layer.named_modules()}

    def attention(i, x):
        out = attn(hidden_states=x, **kwargs[i])
        return out[0] if isinstance(out, tuple) else out

    groups = [(in_norm, _Group("qkv", [(full[m], m) for m in (q, k, v)], attention)),
              (v, _Group("o", [(full[o], o)], lambda i, x: o(x))),
              (mlp_norm, _Group("gate_up", [(full[gate], gate), (full[up], up)], lambda i, x: mlp(x))),
              (up, _Group("down", [(full[down], down)], lambda i, x: down(x)))]
    feats = {g.name: [] for _, g in groups}
    handles = [g.linears[0][1].register_forward_hook(
        lambda mod, args, out, name=g.name: feats[name].append(args[0].detach())) for _, g in groups]
    with torch.no_grad():
        for h, kw in zip(hidden, kwargs):
            _run_layer(layer, h, kw)
    for handle in handles:
        handle.remove()
    with torch.no_grad():
        for prev, group in groups:
            kv_heads = None
            if group.name == "o" and v.out_features != o.in_features:
                kv_heads = (o.in_features // v.out_features, attn.head_dim)
            s, _ = search_scales(group, feats[group.name], settings, kv_heads)
            prev_s = s.reshape(-1, kv_heads[0], kv_heads[1])[:, 0, :].reshape(-1) if kv_heads else s
            if isinstance(prev, torch.nn.Linear):
                prev.weight.div_(prev_s.view(-1, 1))
                if prev.bias is not None:
                    prev.bias.div_(prev_s)
            else:
                offset = _norm_offset(prev)
                prev.weight.copy_((prev.weight + offset) / prev_s - offset)
            for _, m in group.linears:
                m.weight.mul_(s.view(1, -1))
            feats[group.name] = [f / s for f in feats[group.name]]
        for _, group in groups:
            x = _clip_tokens(feats[group.name])
            for name, m in group.linears:
                w = m.weight.float()
                clip = search_clip(w, x, settings) if not name.endswith(("q_proj", "k_proj")) else None
                qw = quantize_grouped(w, settings.bits, settings.group_size, settings.zero_point, clip)
                m.weight.copy_(qw.weight())
                results[name] = qw
        return [_run_layer(layer, h, kw) for h, kw in zip(hidden, kwargs)]


def whole_model_reference(path, ids, settings):
    """The former whole-model AWQ: tensors of its hf-awq checkpoint (float32 source) and its config.json."""
    from transformers import AutoModelForCausalLM

    from teeny_core.formats.awq import pack_awq, pack_scales, pack_zeros

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    layers = list(model.model.layers)
    results = {}
    hidden, layer_kwargs = _capture_layer_inputs(model, layers, ids, settings.batch_size)
    for index, layer in enumerate(layers):
        hidden = _process_layer(layer, f"model.layers.{index}", hidden, layer_kwargs[index], settings, results)
    tensors = {}
    tied = model.config.tie_word_embeddings
    for key, value in model.state_dict().items():
        if (key.rsplit(".", 1)[0] in results and key.endswith(".weight")) or (tied and key == "lm_head.weight"):
            continue
        tensors[key] = value
    for name, qw in results.items():
        tensors.update({f"{name}.qweight": pack_awq(qw.q, 4), f"{name}.qzeros": pack_zeros(qw.zero, 4),
                        f"{name}.scales": pack_scales(qw.scale)})
    config = model.config.to_dict()
    config.pop("torch_dtype", None)
    config["dtype"] = "float32"
    not_converted = sorted(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in results)
    config["quantization_config"] = {"quant_method": "awq", "version": "gemm", "bits": 4,
                                     "group_size": settings.group_size, "zero_point": settings.zero_point,
                                     "modules_to_not_convert": not_converted, "lm_head": False}
    return tensors, json.loads(json.dumps(config, default=str))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "mistral"])
def test_streamed_awq_is_bit_identical_to_the_whole_model_awq(arch, tiny_model, teeny_plugins, tmp_path):
    from safetensors.torch import load_file

    torch.manual_seed(0)
    ids = torch.randint(3, 300, (12, 32))
    cls = teeny_plugins.get("quantizer", "awq")
    opts = cls.Options.from_mapping({"group_size": 32, "batch_size": 4, "grid": 10, "device": "cpu"})
    artifact = cls().quantize(ModelSource(str(tiny_model(arch))), CalibrationSet("ids", ids.tolist()), opts, tmp_path)
    streamed = load_file(str(artifact.path / "model.safetensors"))
    reference, config = whole_model_reference(tiny_model(arch), ids, AwqSettings(group_size=32, grid=10, batch_size=4))
    assert sorted(streamed) == sorted(reference)
    for key, expected in reference.items():  # the tiny models are stored in float32, as the reference holds them
        assert streamed[key].dtype == expected.dtype and torch.equal(streamed[key], expected), key
    assert json.loads((artifact.path / "config.json").read_text()) == config
