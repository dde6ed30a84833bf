"""compressed-tensors checkpoints (llm-compressor's outputs, Teeny's w8a8): detected, read and executed packed.

``quantization_config.quant_method: compressed-tensors``. Schemes a runtime here executes:

- ``pack-quantized`` integer weights (2/3/4/8 bits, per group or channel, symmetric or not) with float
  activations (W4A16 and friends): unpacked with the library, run by the CPU int4 kernel of
  :mod:`teeny_core.packed` (``q_ct + 2**(bits-1)`` is the core's unsigned code, ``zero_ct + 2**(bits-1)`` its zero);
- ``int-quantized`` int8 weights (per channel or tensor, symmetric) with int8 input activations, dynamic per
  token or static per tensor (W8A8): :class:`teeny_core.int8.Int8Linear` (``torch._int_mm``, CPU and CUDA);
- ``float-quantized`` FP8 E4M3 weights and activations: :class:`teeny_core.int8.Fp8Linear` on CUDA 8.9+ only.

Everything else (asymmetric or grouped activations, 4-bit activations, NVFP4/MXFP4, sparsity, a quantized KV
cache) is refused with one line naming the value and what is supported. Detection reads config.json only (no
torch); loading uses the ``compressed-tensors`` library (the format's own package) for the config, the target
matching and the unpacking.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from teeny_core.errors import TeenyError

FORMAT = "compressed-tensors"
SUPPORTED = ("pack-quantized int weights with float activations (W4A16), int-quantized int8 weights with int8 "
             "per-token dynamic or per-tensor static activations (W8A8), float-quantized FP8 (CUDA 8.9+)")
COMPRESSIONS = ("pack-quantized", "int-quantized", "float-quantized", "naive-quantized")


def _schemes(qcfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    groups = qcfg.get("config_groups") or {}
    if not isinstance(groups, dict) or not groups:
        raise TeenyError(f"quantization_config.config_groups={groups!r}; expected at least one scheme")
    return {name: scheme for name, scheme in groups.items() if isinstance(scheme, dict)}


def scheme_kind(scheme: dict[str, Any], compression: str, where: str) -> str:
    """``"w4a16"`` (integer weights, float activations), ``"int8"`` or ``"fp8"`` for one config group, or a
    one-line refusal naming the value no runtime here executes."""
    weights = scheme.get("weights") or {}
    acts = scheme.get("input_activations")

    def refuse(what: str) -> TeenyError:
        return TeenyError(f"{where}: {what} is not executable here; supported: {SUPPORTED}")

    if scheme.get("output_activations"):
        raise refuse("output_activations quantization")
    wtype, wbits, wstrategy = weights.get("type", "int"), int(weights.get("num_bits", 8)), weights.get("strategy")
    if acts is None:
        if wtype != "int" or compression != "pack-quantized":
            raise refuse(f"weights type={wtype!r} format={compression!r} with float activations")
        if wstrategy not in ("group", "channel"):
            raise refuse(f"weights.strategy={wstrategy!r}")
        return "w4a16"
    atype, abits = acts.get("type", "int"), int(acts.get("num_bits", 8))
    astrategy, dynamic = acts.get("strategy"), acts.get("dynamic")
    if (atype, abits) != (wtype, wbits) or abits != 8:
        raise refuse(f"weights {wtype}{wbits} with input_activations {atype}{abits}")
    if not acts.get("symmetric", True) or not weights.get("symmetric", True):
        raise refuse("asymmetric 8-bit quantization")
    if wstrategy not in ("channel", "tensor"):
        raise refuse(f"weights.strategy={wstrategy!r} for 8-bit weights and activations")
    if not ((astrategy == "token" and dynamic is True) or (astrategy == "tensor" and dynamic is False)):
        raise refuse(f"input_activations strategy={astrategy!r} dynamic={dynamic!r} (expected token dynamic or "
                     "tensor static)")
    if wtype == "int" and compression in ("int-quantized", "naive-quantized"):
        return "int8"
    if wtype == "float" and compression in ("float-quantized", "naive-quantized"):
        return "fp8"
    raise refuse(f"weights type={wtype!r} in format={compression!r}")


def describe(qcfg: dict[str, Any], where: str) -> dict[str, Any]:
    """Facts of a compressed-tensors ``quantization_config`` (``scheme``: w4a16, int8 or fp8), or a one-line
    refusal of a scheme no runtime here executes. Reads the dict only (no torch)."""
    compression = str(qcfg.get("format", ""))
    if compression not in COMPRESSIONS:
        raise TeenyError(f"{where}.format={compression!r} is not supported; expected one of {COMPRESSIONS}")
    if qcfg.get("kv_cache_scheme"):
        raise TeenyError(f"{where}.kv_cache_scheme is set: a quantized KV cache is not executable here; supported: "
                         f"{SUPPORTED}")
    if qcfg.get("sparsity_config"):
        raise TeenyError(f"{where}.sparsity_config is set: sparse checkpoints are not executable here")
    kinds = {scheme_kind(s, compression, f"{where}.config_groups.{n}") for n, s in _schemes(qcfg).items()}
    if len(kinds) != 1:
        raise TeenyError(f"{where}: config groups mix schemes {sorted(kinds)}; one scheme per checkpoint is supported")
    kind = kinds.pop()
    first = next(iter(_schemes(qcfg).values()))
    facts: dict[str, Any] = {"scheme": kind, "compression": compression,
                             "bits": int((first.get("weights") or {}).get("num_bits", 8))}
    if kind == "w4a16":
        facts["group_size"] = first["weights"].get("group_size") or -1
    else:
        facts["activations"] = "dynamic" if first["input_activations"].get("dynamic") else "static"
    return facts


def read_config(directory: Path) -> dict[str, Any]:
    return json.loads((Path(directory) / "config.json").read_text())["quantization_config"]


def _module_state(tensors: dict[str, Any], name: str) -> dict[str, Any]:
    """Pop every tensor of module ``name`` (``name.weight_scale`` -> ``weight_scale``)."""
    head = f"{name}."
    keys = [k for k in tensors if k.startswith(head) and "." not in k[len(head):]]
    return {k[len(head):]: tensors.pop(k) for k in keys}


def quantized_linear(state: dict[str, Any], scheme):
    """The core's :class:`~teeny_core.quant.QuantizedLinear` of a pack-quantized module's tensors."""
    import torch
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    from teeny_core.quant import QuantizedLinear

    args = scheme.weights
    bits = int(args.num_bits)
    shape = torch.Size([int(v) for v in state["weight_shape"].tolist()])
    offset = 2 ** (bits - 1)
    codes = unpack_from_int32(state["weight_packed"], bits, shape).to(torch.int32) + offset
    scale = state["weight_scale"].float().reshape(shape[0], -1)
    if "weight_zero_point" in state and not args.symmetric:
        zp = unpack_from_int32(state["weight_zero_point"], bits, torch.Size(scale.shape), packed_dim=0)
        zero = zp.float() + offset
    else:
        zero = torch.full_like(scale, float(offset))
    g_idx = state.get("weight_g_idx")
    if g_idx is None:
        g_idx = torch.arange(shape[1]) // (shape[1] // scale.shape[1])
    return QuantizedLinear(q=codes, scale=scale, zero=zero, g_idx=g_idx.long(), bits=bits, bias=state.get("bias"))


def read_linears(directory: Path, model) -> tuple[dict[str, tuple[str, dict[str, Any], Any]], dict[str, Any]]:
    """``({linear name: (kind, its tensors, its QuantizationScheme)}, {every other tensor})`` of a checkpoint
    for the (skeleton) ``model`` whose linears the config groups' targets and ``ignore`` select."""
    from compressed_tensors.quantization import QuantizationConfig
    from compressed_tensors.utils import match_named_modules

    from teeny_core.formats.checkpoint import read_safetensors
    from teeny_core.formats.gptq import safetensors_files

    qcfg = read_config(directory)
    where = f"{directory / 'config.json'}: quantization_config"
    describe(qcfg, where)
    config = QuantizationConfig.model_validate(qcfg)
    tensors: dict[str, Any] = {}
    for f in safetensors_files(directory):
        tensors.update(read_safetensors(f))
    linears: dict[str, tuple[str, dict[str, Any], Any]] = {}
    for group, scheme in config.config_groups.items():
        kind = scheme_kind(scheme.model_dump(), config.format, f"{where}.config_groups.{group}")
        for name, _ in match_named_modules(model, scheme.targets, config.ignore):
            if name in linears:
                continue
            state = _module_state(tensors, name)
            if not state:
                raise TeenyError(f"{directory}: no tensors for {name}, which config group {group} targets")
            linears[name] = (kind, state, scheme)
    return linears, tensors


def build_module(kind: str, state: dict[str, Any], scheme, device: str, compute: str):
    """The module executing one quantized linear as deployed, or ``(None, why)`` where none exists here."""
    import torch

    from teeny_core.int8 import Fp8Linear, Int8Linear, fp8_device_problem, int8_available
    from teeny_core.packed import available, pack_linear

    if kind == "int8":
        if not int8_available():
            return None, "no torch._int_mm in this torch"
        scale = state["weight_scale"]
        return Int8Linear(state["weight"].to(torch.int8), scale, state.get("input_scale"), state.get("bias")), ""
    if kind == "fp8":
        problem = fp8_device_problem(device)
        if problem:
            raise TeenyError(problem)
        return Fp8Linear(state["weight"], state["weight_scale"], state.get("input_scale"), state.get("bias")), ""
    if not available(device):
        return None, f"no int4 packed kernel for {device} in this torch"
    return pack_linear(quantized_linear(state, scheme), compute, device)


def dequantize(kind: str, state: dict[str, Any], scheme):
    """The float32 weight of one quantized linear, decompressed by the compressed-tensors library."""
    from compressed_tensors.compressors import BaseCompressor

    name = {"w4a16": "pack-quantized", "int8": "int-quantized", "fp8": "float-quantized"}[kind]
    compressor = BaseCompressor.get_value_from_registry(name)
    return compressor.decompress(dict(state), scheme)["weight"].float()


def load(artifact, dtype, device: str, compute: str):
    """Build the model of a compressed-tensors checkpoint with its quantized linears executed as deployed
    (int8/FP8 products, int4 kernel); a linear no kernel here executes is dequantized, with the reason in the
    facts. Returns ``(model, facts)``."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    from teeny_core.formats.checkpoint import config_without_quantization, load_state
    from teeny_core.int8 import fp8_device_problem

    scheme = describe(read_config(artifact.path), f"{artifact.path / 'config.json'}: quantization_config")["scheme"]
    if scheme == "fp8" and fp8_device_problem(device):  # refused before any tensor is read
        raise TeenyError(f"{artifact.path}: {fp8_device_problem(device)}")
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config_without_quantization(artifact), dtype=dtype)
    linears, rest = read_linears(artifact.path, model)
    kernels: dict[str, int] = {}
    reasons: dict[str, str] = {}
    for name, (kind, state, qscheme) in linears.items():
        module, why = build_module(kind, state, qscheme, device, compute)
        if module is None:
            reasons[name] = why
            rest[f"{name}.weight"] = dequantize(kind, state, qscheme)
            if state.get("bias") is not None:
                rest[f"{name}.bias"] = state["bias"]
            continue
        kernel = getattr(module, "kernel", "torch.ops.aten._weight_int4pack_mm_for_cpu")
        kernels[kernel] = kernels.get(kernel, 0) + 1
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, module.to(device))
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in rest.items()}
    replaced = set(linears) - set(reasons)
    load_state(model, state, artifact, replaced, True)
    meta = [n for n, p in model.named_parameters() if p.is_meta]
    if meta:
        raise TeenyError(f"{artifact.path}: no weights in the checkpoint for {meta[:3]}")
    model.to(device)
    facts = {"kernels": "packed" if kernels else "dequant", "kernel_layers": kernels,
             "scheme": scheme, "float_layers": reasons}
    if torch.device(device).type == "cpu":
        facts["packed_compute"] = compute
    return model.eval(), facts
